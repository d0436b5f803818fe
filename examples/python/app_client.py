#!/usr/bin/env python3
"""The guide's application client: sends one request and prints the answer.

    usage: app_client.py [--tls] [--ca FILE] <host> <port> <action> <value>

The action `search` sends a `text/json` search for <value>; any other action
sends <action><value> as binary (`binary/custom-client-binary-type`).

With --tls the connection is wrapped with Python's `ssl` module, as the guide
suggests for anything beyond a trusted network: the server's certificate must
be valid for <host> and signed by a CA the system trusts, or by one in FILE
(--ca).
"""

import selectors
import socket
import ssl
import sys
import traceback

import libapp

sel = selectors.DefaultSelector()


def create_request(action, value):
    if action == "search":
        return dict(type="text/json", encoding="utf-8", content=dict(action=action, value=value))
    return dict(type="binary/custom-client-binary-type", encoding="binary", content=bytes(action + value, encoding="utf-8"))


def start_connection(host, port, request, tls=None):
    addr = (host, port)
    print("starting connection to", addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    if tls is not None:
        # The handshake cannot finish before the connection is up: the
        # message runs it from the selector loop (ClientMessage.handshake).
        sock = tls.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    # connect_ex() returns EINPROGRESS instead of raising: the selector says
    # when the connection is up (writable) or has failed.
    sock.connect_ex(addr)
    events = selectors.EVENT_READ | selectors.EVENT_WRITE
    message = libapp.ClientMessage(sel, sock, addr, request)
    sel.register(sock, events, data=message)


def parse_options(args):
    """Takes --tls and --ca FILE out of args; returns the TLS context, or None."""
    tls, ca = False, None
    while args and args[0].startswith("--"):
        option = args.pop(0)
        if option == "--tls":
            tls = True
        elif option == "--ca" and args:
            ca = args.pop(0)
        else:
            return None, False
    if ca is not None and not tls:
        return None, False
    return (ssl.create_default_context(cafile=ca) if tls else None), True


def main():
    args = sys.argv[1:]
    tls, ok = parse_options(args)
    if not ok or len(args) != 4:
        print(f"usage: {sys.argv[0]} [--tls] [--ca FILE] <host> <port> <action> <value>")
        sys.exit(1)

    host, port = args[0], int(args[1])
    action, value = args[2], args[3]
    start_connection(host, port, create_request(action, value), tls)

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
