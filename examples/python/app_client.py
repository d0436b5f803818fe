#!/usr/bin/env python3
"""The guide's application client: sends one request and prints the answer.

    usage: app_client.py <host> <port> <action> <value>

The action `search` sends a `text/json` search for <value>; any other action
sends <action><value> as binary (`binary/custom-client-binary-type`).
"""

import selectors
import socket
import sys
import traceback

import libapp

sel = selectors.DefaultSelector()


def create_request(action, value):
    if action == "search":
        return dict(type="text/json", encoding="utf-8", content=dict(action=action, value=value))
    return dict(type="binary/custom-client-binary-type", encoding="binary", content=bytes(action + value, encoding="utf-8"))


def start_connection(host, port, request):
    addr = (host, port)
    print("starting connection to", addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    # connect_ex() returns EINPROGRESS instead of raising: the selector says
    # when the connection is up (writable) or has failed.
    sock.connect_ex(addr)
    events = selectors.EVENT_READ | selectors.EVENT_WRITE
    message = libapp.ClientMessage(sel, sock, addr, request)
    sel.register(sock, events, data=message)


def main():
    if len(sys.argv) != 5:
        print(f"usage: {sys.argv[0]} <host> <port> <action> <value>")
        sys.exit(1)

    host, port = sys.argv[1], int(sys.argv[2])
    action, value = sys.argv[3], sys.argv[4]
    start_connection(host, port, create_request(action, value))

    failed = False
    try:
        while True:
            events = sel.select(timeout=1)
            for key, mask in events:
                message = key.data
                try:
                    message.process_events(mask)
                except Exception:
                    print(f"main: error: exception for {message.addr}:\n{traceback.format_exc()}")
                    message.close()
                    failed = True
            # Check for a socket being monitored to continue.
            if not sel.get_map():
                break
    except KeyboardInterrupt:
        print("caught keyboard interrupt, exiting")
    finally:
        sel.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
