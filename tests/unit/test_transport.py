"""The one-write HTTP connection: a small request's header block and body leave in a
single send, and nothing is ever held back."""

from __future__ import annotations

import http.client
import socket
import threading

import urllib3

from replicator.stores import transport


class _Server:
    """A loopback HTTP server that records every recv() and answers 200 once it has
    the whole request."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.origin = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = bytearray()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while True:
                head, sep, rest = bytes(self.received).partition(b"\r\n\r\n")
                if sep:
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length")))
                    if len(rest) >= length:
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        return
                chunk = conn.recv(1 << 20)
                if not chunk:
                    return
                self.received += chunk


def _put(body: bytes) -> tuple[int, list[int], bytes]:
    server = _Server()
    pool = transport.coalescing_pool(urllib3.PoolManager(retries=False), server.origin)
    writes: list[int] = []  # http.client's send(): one sendall() on the socket each
    original = http.client.HTTPConnection.send

    def counting_send(self, data):
        writes.append(len(data))
        return original(self, data)

    http.client.HTTPConnection.send = counting_send  # type: ignore[method-assign]
    try:
        response = pool.urlopen("PUT", "/bucket/key", body=body, headers={"Content-Length": str(len(body))})
    finally:
        http.client.HTTPConnection.send = original  # type: ignore[method-assign]
    server.thread.join(5)
    return response.status, writes, bytes(server.received)


def test_a_small_body_goes_out_with_its_headers_in_one_write():
    status, writes, received = _put(b"x" * 3000)
    assert status == 200
    assert received.startswith(b"PUT /bucket/key HTTP/1.1\r\n")
    assert received.endswith(b"\r\n\r\n" + b"x" * 3000)
    assert len(writes) == 1 and writes[0] == len(received)


def test_large_and_empty_bodies_are_sent_as_usual():
    for body in (b"", b"y" * (transport._ONE_WRITE_MAX + 1)):
        status, writes, received = _put(body)
        assert status == 200
        assert received.endswith(b"\r\n\r\n" + body)
        assert len(writes) == (1 if not body else 2)  # headers, then the body
