"""The guide's application protocol, one message per connection.

A message is a 2-byte big-endian length, then a UTF-8 JSON header of that
length (byteorder, content-type, content-encoding, content-length), then
content-length bytes of content. Both ends read a message in three steps,
each waiting until enough bytes are in the receive buffer:

    process_protoheader()  -> self._jsonheader_len
    process_jsonheader()   -> self.jsonheader
    process_request() / process_response()  -> the content

The sockets are non-blocking and driven by a selector: `process_events()` is
called whenever the socket is ready, and only `read()` and `write()` look at
the state, as the guide recommends.

Written from the guide's description of the protocol, with the standard
library only, so that wasmux can be checked against it.
"""

import io
import json
import selectors
import ssl
import struct
import sys

# The guide's search dictionary.
request_search = {
    "morpheus": "Follow the white rabbit. \U0001f430",
    "ring": "In the caves beneath the Misty Mountains. \U0001f48d",
    "\U0001f436": "\U0001f43e Playing ball! \U0001f3d0",
}

REQUIRED_HEADERS = ("byteorder", "content-length", "content-type", "content-encoding")


class Message:
    """What the client's and the server's messages share: buffers, framing
    and the reading of a message's three parts."""

    def __init__(self, selector, sock, addr):
        self.selector = selector
        self.sock = sock
        self.addr = addr
        self._recv_buffer = b""
        self._send_buffer = b""
        self._jsonheader_len = None
        self.jsonheader = None

    def _set_selector_events_mask(self, mode):
        """Set the selector to listen for events: mode is 'r', 'w', or 'rw'."""
        events = {
            "r": selectors.EVENT_READ,
            "w": selectors.EVENT_WRITE,
            "rw": selectors.EVENT_READ | selectors.EVENT_WRITE,
        }[mode]
        self.selector.modify(self.sock, events, data=self)

    def _read(self):
        try:
            # Should be ready to read.
            data = self.sock.recv(4096)
            # TLS: what is already decrypted is not in the socket any more,
            # so the selector will not report it: take it now.
            while isinstance(self.sock, ssl.SSLSocket) and data and self.sock.pending():
                data += self.sock.recv(self.sock.pending())
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            # Resource temporarily unavailable (errno EWOULDBLOCK), or TLS
            # bytes that hold no data yet (a session ticket): try later.
            pass
        else:
            if data:
                self._recv_buffer += data
            else:
                raise RuntimeError("Peer closed.")

    def _send(self):
        """Sends what the socket takes now; returns how many bytes that was."""
        print("sending", repr(self._send_buffer), "to", self.addr)
        try:
            # Should be ready to write.
            sent = self.sock.send(self._send_buffer)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            # Resource temporarily unavailable (errno EWOULDBLOCK): try later.
            return 0
        self._send_buffer = self._send_buffer[sent:]
        return sent

    @staticmethod
    def _json_encode(obj, encoding):
        return json.dumps(obj, ensure_ascii=False).encode(encoding)

    @staticmethod
    def _json_decode(json_bytes, encoding):
        with io.TextIOWrapper(io.BytesIO(json_bytes), encoding=encoding, newline="") as tiow:
            return json.load(tiow)

    def _create_message(self, *, content_bytes, content_type, content_encoding):
        jsonheader = {
            "byteorder": sys.byteorder,
            "content-type": content_type,
            "content-encoding": content_encoding,
            "content-length": len(content_bytes),
        }
        jsonheader_bytes = self._json_encode(jsonheader, "utf-8")
        message_hdr = struct.pack(">H", len(jsonheader_bytes))
        return message_hdr + jsonheader_bytes + content_bytes

    def process_events(self, mask):
        if mask & selectors.EVENT_READ:
            self.read()
        if mask & selectors.EVENT_WRITE:
            self.write()

    def read(self):
        self._read()

        if self._jsonheader_len is None:
            self.process_protoheader()

        if self._jsonheader_len is not None:
            if self.jsonheader is None:
                self.process_jsonheader()

        if self.jsonheader and self.content_pending():
            self.process_content()

    def process_protoheader(self):
        hdrlen = 2
        if len(self._recv_buffer) >= hdrlen:
            self._jsonheader_len = struct.unpack(">H", self._recv_buffer[:hdrlen])[0]
            self._recv_buffer = self._recv_buffer[hdrlen:]

    def process_jsonheader(self):
        hdrlen = self._jsonheader_len
        if len(self._recv_buffer) >= hdrlen:
            self.jsonheader = self._json_decode(self._recv_buffer[:hdrlen], "utf-8")
            self._recv_buffer = self._recv_buffer[hdrlen:]
            for reqhdr in REQUIRED_HEADERS:
                if reqhdr not in self.jsonheader:
                    raise ValueError(f'Missing required header "{reqhdr}".')

    def take_content(self):
        """The content, once all content-length bytes are here, else None."""
        content_len = self.jsonheader["content-length"]
        if len(self._recv_buffer) < content_len:
            return None
        data = self._recv_buffer[:content_len]
        self._recv_buffer = self._recv_buffer[content_len:]
        return data

    def close(self):
        print("closing connection to", self.addr)
        try:
            self.selector.unregister(self.sock)
        except Exception as e:
            print(f"error: selector.unregister() exception for {self.addr}: {e!r}")
        try:
            self.sock.close()
        except OSError as e:
            print(f"error: socket.close() exception for {self.addr}: {e!r}")
        finally:
            # Delete reference to socket object for garbage collection.
            self.sock = None


class ServerMessage(Message):
    """The server's side: read one request, answer it, close."""

    def __init__(self, selector, sock, addr):
        super().__init__(selector, sock, addr)
        self.request = None
        self.response_created = False

    def content_pending(self):
        return self.request is None

    def process_content(self):
        data = self.take_content()
        if data is None:
            return
        if self.jsonheader["content-type"] == "text/json":
            encoding = self.jsonheader["content-encoding"]
            self.request = self._json_decode(data, encoding)
            print("received request", repr(self.request), "from", self.addr)
        else:
            # Binary or unknown content-type.
            self.request = data
            print(f'received {self.jsonheader["content-type"]} request from', self.addr)
        # We're done reading: listen for write events only.
        self._set_selector_events_mask("w")

    def write(self):
        if self.request is not None:
            if not self.response_created:
                self.create_response()
        self._write()

    def _write(self):
        if self._send_buffer:
            sent = self._send()
            # Close when the buffer is drained: the response has been sent.
            if sent and not self._send_buffer:
                self.close()

    def _create_response_json_content(self):
        action = self.request.get("action")
        if action == "search":
            query = self.request.get("value")
            answer = request_search.get(query) or f'No match for "{query}".'
            content = {"result": answer}
        else:
            content = {"result": f'Error: invalid action "{action}".'}
        content_encoding = "utf-8"
        return {
            "content_bytes": self._json_encode(content, content_encoding),
            "content_type": "text/json",
            "content_encoding": content_encoding,
        }

    def _create_response_binary_content(self):
        return {
            "content_bytes": b"First 10 bytes of request: " + self.request[:10],
            "content_type": "binary/custom-server-binary-type",
            "content_encoding": "binary",
        }

    def create_response(self):
        if self.jsonheader["content-type"] == "text/json":
            response = self._create_response_json_content()
        else:
            # Binary or unknown content-type.
            response = self._create_response_binary_content()
        message = self._create_message(**response)
        self.response_created = True
        self._send_buffer += message


class ClientMessage(Message):
    """The client's side: send one request, read the answer, close."""

    def __init__(self, selector, sock, addr, request):
        super().__init__(selector, sock, addr)
        self.request = request
        self._request_queued = False
        self.response = None
        self._handshake_pending = isinstance(sock, ssl.SSLSocket)

    def process_events(self, mask):
        if self._handshake_pending:
            self.handshake()
        else:
            super().process_events(mask)

    def handshake(self):
        """TLS: runs the handshake, a step each time the socket is ready,
        before the request is written."""
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_selector_events_mask("r")
        except ssl.SSLWantWriteError:
            self._set_selector_events_mask("w")
        else:
            self._handshake_pending = False
            print(f"{self.sock.version()} connection to", self.addr)
            self._set_selector_events_mask("rw")

    def content_pending(self):
        return self.response is None

    def write(self):
        if not self._request_queued:
            self.queue_request()

        if self._send_buffer:
            self._send()

        if self._request_queued and not self._send_buffer:
            # We're done writing: listen for read events only.
            self._set_selector_events_mask("r")

    def queue_request(self):
        content = self.request["content"]
        content_type = self.request["type"]
        content_encoding = self.request["encoding"]
        if content_type == "text/json":
            content_bytes = self._json_encode(content, content_encoding)
        else:
            content_bytes = content
        self._send_buffer += self._create_message(
            content_bytes=content_bytes, content_type=content_type, content_encoding=content_encoding
        )
        self._request_queued = True

    def process_content(self):
        data = self.take_content()
        if data is None:
            return
        if self.jsonheader["content-type"] == "text/json":
            encoding = self.jsonheader["content-encoding"]
            self.response = self._json_decode(data, encoding)
            print("received response", repr(self.response), "from", self.addr)
            print(f'got result: {self.response.get("result")}')
        else:
            # Binary or unknown content-type.
            self.response = data
            print(f'received {self.jsonheader["content-type"]} response from', self.addr)
            print(f"got response: {self.response!r}")
        # Close when the response has been processed.
        self.close()
