#!/usr/bin/env python3
"""The guide's application server: answers `text/json` searches from a small
dictionary, and anything else with the first 10 bytes of the request; one
request per connection.

    usage: app_server.py <host> <port>

An empty <host> listens on every IPv4 interface; port 0 lets the system pick
a port (the `listening on` line shows which).
"""

import selectors
import socket
import sys
import traceback

import libapp

sel = selectors.DefaultSelector()


def accept_wrapper(sock):
    conn, addr = sock.accept()  # Should be ready to read.
    print("accepted connection from", addr)
    conn.setblocking(False)
    message = libapp.ServerMessage(sel, conn, addr)
    sel.register(conn, selectors.EVENT_READ, data=message)


def main():
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} <host> <port>")
        sys.exit(1)

    host, port = sys.argv[1], int(sys.argv[2])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lsock = socket.socket(family, socket.SOCK_STREAM)
    # Avoid bind() exception: OSError: [Errno 48] Address already in use
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen()
    # The port actually bound: the one given, or the system's pick for 0.
    print("listening on", (host, lsock.getsockname()[1]), flush=True)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, data=None)

    try:
        while True:
            events = sel.select(timeout=None)
            for key, mask in events:
                if key.data is None:
                    accept_wrapper(key.fileobj)
                else:
                    message = key.data
                    try:
                        message.process_events(mask)
                    except Exception:
                        print(f"main: error: exception for {message.addr}:\n{traceback.format_exc()}")
                        message.close()
    except KeyboardInterrupt:
        print("caught keyboard interrupt, exiting")
    finally:
        sel.close()


if __name__ == "__main__":
    main()
