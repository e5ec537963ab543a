"""stores/http_client.py against a scripted loopback peer, and transport.map_transport_error.

What is covered: the bytes a request puts on the wire (one write for a small body, the
head encoded UTF-8), keep-alive reuse, every way a response can be delimited
(Content-Length, read into its buffer across reads; chunked, trailers kept out of the
headers; the connection's end; no body), a second message in the same read ignored,
header lookup and decoding (UTF-8, else latin-1); idle connections the server closed or
sent an unsolicited answer to, dropped before use; the race of a close just as a
connection is reused: an idempotent request resent once, on a new connection (the pool
emptied), a POST not at all; a PUT answered before its body was read; broken and garbage
answers, timeouts, refused connections, header injection; release/read semantics (read
after a failed read or an unread release raises), a response freed without the cyclic
collector, and the idle-pool bound.

Why a scripted peer and not MinIO (tests/integration/test_http_client.py covers the
client against MinIO): these are the answers a well-behaved server never gives, or
gives only by timing luck: a body cut short, a close between two requests, a header
split across reads, garbage. The peer is a plain socket server on 127.0.0.1 that plays
one script per accepted connection and records exactly which bytes it received, so
each test can also say what the client did *not* do (resend, reconnect).
"""

from __future__ import annotations

import gc
import hashlib
import http.client
import io
import os
import re
import select
import socket
import ssl
import threading
import time
import weakref

import pytest

from replicator.errors import FatalError, TransientError
from replicator.stores.http_client import (
    _ONE_WRITE_MAX,
    ConnectFailed,
    ConnectionLost,
    HttpClient,
    MalformedResponse,
)
from replicator.stores.transport import map_transport_error

# -- the scripted peer ----------------------------------------------------------
#
# A script is a sequence of steps, played on one accepted connection:
#   bytes       receive one request, answer with these bytes
#   tuple       receive one request, answer with each piece in turn, pausing between
#               them so the client's recv() sees the answer in parts
#   SILENT      receive one request, never answer it
#   DROP        receive one request, then close without answering: the race of a
#               server closing a keep-alive connection just as the client reuses it
#   CLOSE       close the connection now, without reading anything more
#   HANG_UP     shut down the sending side only: the client sees the server's close,
#               and the peer still records whatever the client sends after it
#   Unasked     send these bytes, with no request to answer, once the test calls go()
#   Early       receive only the next request's headers, answer with these bytes and
#               close, the body unread (a server refusing a PUT before its body)
# When a script ends without CLOSE the peer holds the connection open, recording any
# further request (unanswered) until the client closes it.

CLOSE = object()
SILENT = object()
DROP = object()
HANG_UP = object()
PAUSE = 0.02  # between the pieces of an answer: long enough for the client to read each apart


class Unasked:
    def __init__(self, data: bytes):
        self.data = data
        self._go = threading.Event()

    def go(self) -> None:
        """Send now. Called once the client is idle, so the bytes can't arrive with
        the answer before them (that is another test)."""
        self._go.set()


class Early:
    def __init__(self, answer: bytes):
        self.answer = answer


class Seen:
    """What the peer saw on one accepted connection."""

    def __init__(self):
        self.requests: list[bytes] = []  # each request, exactly as received
        self.recv_calls: list[int] = []  # recv() calls each request took to arrive
        self.eof = threading.Event()  # the client closed its end
        self.done = threading.Event()  # the peer closed its end


class Peer:
    def __init__(self, *scripts):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.conns: list[Seen] = []  # one per accepted connection, in order
        self._scripts = scripts
        self._socks: list[socket.socket] = []
        self._players: list[threading.Thread] = []
        self._wake_address = None
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        """Stop accepting, having counted every connection made so far: the backlog is
        accepted in order, so once a connection of our own made now comes out of it,
        every client connection made before is in ``conns``. Then end the players."""
        if self._wake_address is not None:
            return
        with socket.socket() as wake:
            wake.bind(("127.0.0.1", 0))
            self._wake_address = wake.getsockname()
            wake.connect(("127.0.0.1", self.port))
            self._acceptor.join(2)
        self._listener.close()
        for script in self._scripts:
            for step in script:
                if isinstance(step, Unasked):
                    step.go()  # a player still waiting for it would hold up the join
        for sock in self._socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a player blocked in recv()
            except OSError:
                pass  # already closed by its player
        for player in self._players:
            player.join(2)

    def _accept(self) -> None:
        while True:
            sock, address = self._listener.accept()
            if address == self._wake_address:
                sock.close()
                return
            seen = Seen()
            script = self._scripts[len(self.conns)] if len(self.conns) < len(self._scripts) else [CLOSE]
            self.conns.append(seen)
            self._socks.append(sock)
            player = threading.Thread(target=self._play, args=(sock, script, seen), daemon=True)
            self._players.append(player)
            player.start()

    def _play(self, sock: socket.socket, script, seen: Seen) -> None:
        pending = bytearray()  # bytes received beyond the last request
        try:
            for step in script:
                if step is CLOSE:
                    return
                if step is HANG_UP:
                    sock.shutdown(socket.SHUT_WR)
                    continue
                if isinstance(step, Unasked):
                    if not step._go.wait(5):
                        return
                    sock.sendall(step.data)
                    continue
                if isinstance(step, Early):
                    if _receive(sock, seen, pending, headers_only=True):
                        sock.sendall(step.answer)
                    return  # closed with the body unread: the kernel resets the connection
                if not _receive(sock, seen, pending):
                    return
                if step is SILENT:
                    continue
                if step is DROP:
                    return
                for i, piece in enumerate(step if isinstance(step, tuple) else (step,)):
                    if i:
                        time.sleep(PAUSE)
                    sock.sendall(piece)
            while _receive(sock, seen, pending):
                pass
        except OSError:
            pass
        finally:
            sock.close()
            seen.done.set()


def _receive(sock: socket.socket, seen: Seen, pending: bytearray, *, headers_only: bool = False) -> bool:
    """Read one request (headers, then a Content-Length body) into ``seen``; False at
    the end of the stream. ``headers_only``: record the headers and read no further."""
    calls = 0

    def more() -> bool:
        nonlocal calls
        calls += 1
        try:
            data = sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            seen.eof.set()
            return False
        pending.extend(data)
        return True

    while b"\r\n\r\n" not in pending:
        if not more():
            return False
    end = pending.index(b"\r\n\r\n") + 4
    length = re.search(rb"(?im)^content-length:\s*(\d+)\r$", bytes(pending[:end]))
    end += int(length.group(1)) if length and not headers_only else 0
    while len(pending) < end:
        if not more():
            return False
    seen.requests.append(bytes(pending[:end]))
    seen.recv_calls.append(calls)
    del pending[:end]
    return True


# -- helpers ----------------------------------------------------------------------

def ok(body: bytes = b"ok", *headers: str) -> bytes:
    """A 200 with a Content-Length body."""
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body


def get(client: HttpClient, path: str = "/k"):
    return client.request("GET", path, {"Host": "peer"})


def request_bytes(method: str, path: str = "/k", body: bytes | None = None) -> bytes:
    """What the client should send for ``method path`` with only a Host header."""
    length = f"Content-Length: {len(body)}\r\n" if body is not None else ""
    return f"{method} {path} HTTP/1.1\r\nHost: peer\r\n{length}\r\n".encode() + (body or b"")


def idle_becomes_readable(client: HttpClient, timeout: float = 2.0) -> bool:
    """Wait until the most recently pooled connection (the next one taken) has
    something to read: the peer's close, or bytes. Sent is not yet arrived: only then
    can the client's check before use see it, and the test not depend on timing."""
    poller = select.poll()
    poller.register(client._idle[-1].sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


# An unsolicited answer: what servers send to a connection left idle too long, often
# before they close it (RFC 9110 §15.5.9).
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"


@pytest.fixture
def serve():
    """serve(*scripts, **client_options) -> (peer, client); both closed afterwards."""
    made: list[tuple[Peer, HttpClient]] = []

    def start(*scripts, read_timeout: float = 1.0, **options) -> tuple[Peer, HttpClient]:
        peer = Peer(*scripts)
        client = HttpClient(peer.origin, connect_timeout=1, read_timeout=read_timeout, **options)
        made.append((peer, client))
        return peer, client

    yield start
    for peer, client in made:
        client.close()
        peer.stop()


# -- the request on the wire ------------------------------------------------------

def test_a_small_put_goes_out_in_one_write(serve):
    peer, client = serve([ok()])
    body = b"x" * 1000
    response = client.request("PUT", "/path", {"Host": "peer", "X-Amz-Meta-Colour": "blue"}, body)
    assert response.read() == b"ok"
    # Content-Length is the client's own; the caller's headers go out as given, in order.
    assert peer.conns[0].requests == [
        b"PUT /path HTTP/1.1\r\nHost: peer\r\nX-Amz-Meta-Colour: blue\r\nContent-Length: 1000\r\n\r\n" + body]
    # Headers and body in one write: a single send of ~1 KiB on loopback is one segment,
    # so the peer's first recv() gets all of it. Two writes could arrive apart.
    assert peer.conns[0].recv_calls == [1]


@pytest.mark.parametrize("size", [_ONE_WRITE_MAX, _ONE_WRITE_MAX + 1, 3 * _ONE_WRITE_MAX + 7])
def test_a_put_body_arrives_whole_whatever_its_size(serve, size):
    peer, client = serve([ok()])
    body = os.urandom(size)  # above _ONE_WRITE_MAX, the body follows the headers in a write of its own
    assert client.request("PUT", "/k", {"Host": "peer"}, body).read() == b"ok"
    assert peer.conns[0].requests == [request_bytes("PUT", "/k", body)]


def test_a_get_has_no_content_length(serve):
    peer, client = serve([ok()])
    get(client).read()
    assert peer.conns[0].requests == [b"GET /k HTTP/1.1\r\nHost: peer\r\n\r\n"]


def test_an_empty_body_is_sent_as_content_length_0(serve):
    peer, client = serve([ok()])
    client.request("PUT", "/k", {"Host": "peer"}, b"").read()
    assert peer.conns[0].requests == [b"PUT /k HTTP/1.1\r\nHost: peer\r\nContent-Length: 0\r\n\r\n"]


@pytest.mark.parametrize("headers", [
    {"X-Meta": "a\r\nInjected: 1"},
    {"X-Meta": "a\nb"},
    {"X-Meta": "a\rb"},
    {"X-Meta\r\nInjected": "1"},
    {"X-Meta\n": "1"},
])
def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(serve, headers):
    peer, client = serve()
    with pytest.raises(ValueError):
        client.request("PUT", "/k", {"Host": "peer", **headers}, b"body")
    peer.stop()
    assert peer.conns == []  # not even a connection


# -- keep-alive -------------------------------------------------------------------

def test_sequential_requests_share_one_connection(serve):
    peer, client = serve([ok(b"a"), ok(b"b")])
    assert get(client, "/a").read() == b"a"
    assert get(client, "/b").read() == b"b"
    peer.stop()
    assert len(peer.conns) == 1
    assert peer.conns[0].requests == [request_bytes("GET", "/a"), request_bytes("GET", "/b")]


# -- response framing -----------------------------------------------------------------

def test_a_content_length_body_is_read_and_the_connection_kept(serve):
    peer, client = serve([ok(b"hello")])
    response = get(client)
    assert response.status == 200
    assert response.read() == b"hello"
    assert len(client._idle) == 1


def test_a_chunked_body_in_several_reads_is_read_whole_and_the_connection_reused(serve):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # a chunk split mid-data
               b"lo\r\n7\r\n, world\r\n",
               b"1\r\n!\r\n0\r\n\r\n")
    peer, client = serve([chunked, ok(b"next")])
    assert get(client).read() == b"hello, world!"
    assert get(client).read() == b"next"  # the chunked end was found: the connection is clean
    peer.stop()
    assert len(peer.conns) == 1


@pytest.mark.parametrize("split", [1000, 0], ids=["part-with-the-headers", "headers-alone"])
def test_a_content_length_body_in_several_reads_is_read_exactly(serve, split):
    # The body is filled into a buffer of the announced length when read() is called:
    # what came with the headers first, then each read in place. Larger than the
    # client's 256 KiB receive buffer, so some pieces take more than one recv().
    body = os.urandom(600 * 1024)
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    answer = (head + body[:split], body[split:300_000], body[300_000:])
    peer, client = serve([answer, ok(b"next")])
    response = get(client)
    data = response.read()
    assert isinstance(data, bytearray)  # the preallocated buffer, not a join of chunks
    assert len(data) == len(body) and data == body
    # Filled to its end and no further: the next answer on the connection is whole.
    assert get(client).read() == b"next"
    peer.stop()
    assert len(peer.conns) == 1


@pytest.mark.parametrize("answer", [
    ok(b"small, with its headers"),
    (f"HTTP/1.1 200 OK\r\nContent-Length: {600 * 1024}\r\n\r\n".encode() + bytes(range(256)) * 1000,
     bytes(range(256)) * 1400),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", b"lo\r\n0\r\n\r\n"),
], ids=["arrived-with-headers", "announced-length-in-pieces", "chunked"])
def test_read_feeds_each_hash_the_body_exactly_once(serve, answer):
    # The copy's digests are taken as the body arrives: whichever way it arrives, each
    # hash must see the body, all of it, once (a digest of anything else would make the
    # destination refuse the PUT, or worse, sign bytes that are not the body).
    peer, client = serve([answer])
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    data = get(client).read((sha256, md5))
    assert sha256.digest() == hashlib.sha256(data).digest()
    assert md5.digest() == hashlib.md5(data).digest()


def test_chunked_trailers_are_not_taken_for_headers(serve):
    # Trailers arrive after the body, while read() runs: merged into the headers, a
    # trailer could override or extend one (here Content-Type) after the caller read it.
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTrailer: X-Checksum\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
               b"0\r\nX-Checksum: abc\r\nContent-Type: text/html\r\n\r\n")
    peer, client = serve([chunked, ok(b"next")])
    response = get(client)
    assert response.read() == b"hello"
    assert dict(response.headers) == {"content-type": "text/plain", "trailer": "X-Checksum",
                                      "transfer-encoding": "chunked"}
    assert get(client).read() == b"next"  # the trailers were consumed: the connection is clean
    peer.stop()
    assert len(peer.conns) == 1


@pytest.mark.parametrize("answer", [
    ok(b"first") + TIMED_OUT,
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"first" + TIMED_OUT),
], ids=["with-the-headers", "with-the-body"])
def test_a_second_message_in_the_same_read_is_ignored_and_the_connection_dropped(serve, answer):
    # One sendall: the 408 reaches the client right behind the end of the answer. Not
    # ours: neither its headers nor its body belong to the answer, and a connection
    # that had it can't carry the next request. (Read with the headers, the parser sees
    # it and the connection is closed at once; behind a body of known length, which is
    # received without the parser, it stays in the socket until the idle check drops
    # the connection before its next use.)
    peer, client = serve([answer], [ok(b"second")])
    response = get(client)
    assert response.status == 200
    assert response.read() == b"first"
    assert dict(response.headers) == {"content-length": "5"}  # not "5, 0"
    assert get(client).read() == b"second"
    assert peer.conns[0].eof.wait(2)  # closed by the client
    peer.stop()
    assert len(peer.conns) == 2 and len(peer.conns[0].requests) == 1


@pytest.mark.parametrize("answer", [
    ok(b"first") + b"garbage\r\n\r\n",
    ok(b"first", "Connection: close") + TIMED_OUT,  # llhttp refuses any message after a close
], ids=["garbage", "after-connection-close"])
def test_bytes_the_parser_refuses_after_a_whole_answer_do_not_fail_it(serve, answer):
    # In the same read as the end of the answer, but not part of it: the answer stands
    # (a PUT that succeeded is not reported failed, to be sent again), and the
    # connection is not reused.
    peer, client = serve([answer], [ok(b"second")])
    response = get(client)
    assert response.status == 200
    assert response.read() == b"first"
    assert len(client._idle) == 0
    assert get(client).read() == b"second"
    peer.stop()
    assert len(peer.conns) == 2 and len(peer.conns[0].requests) == 1


def test_a_body_ended_by_the_close_is_read_whole_and_the_connection_dropped(serve):
    # No Content-Length, no chunking: the body is whatever comes until the server closes.
    unframed = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ", b"second part")
    peer, client = serve([unframed, CLOSE], [ok(b"fresh")])
    assert get(client).read() == b"first part, second part"
    assert len(client._idle) == 0  # a closed connection is never pooled
    assert get(client).read() == b"fresh"
    peer.stop()
    assert len(peer.conns) == 2


def test_a_connection_close_response_is_not_reused(serve):
    peer, client = serve([ok(b"bye", "Connection: close")], [ok(b"fresh")])
    assert get(client).read() == b"bye"
    assert len(client._idle) == 0
    # The peer did not close: the client did, because the server said it would.
    assert peer.conns[0].eof.wait(2)
    assert get(client).read() == b"fresh"
    peer.stop()
    assert len(peer.conns) == 2 and len(peer.conns[0].requests) == 1


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",  # 304 never has a body, whatever the length says
], ids=["204", "content-length-0", "304"])
def test_a_response_without_a_body_completes_at_once(serve, answer):
    peer, client = serve([answer])  # the peer then holds the connection open: waiting for more would hang
    started = time.monotonic()
    response = get(client)
    assert response.read() == b""
    assert time.monotonic() - started < 0.5  # well under read_timeout (1 s)
    assert len(client._idle) == 1


def test_a_head_response_has_no_body_whatever_its_content_length(serve):
    peer, client = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", ok(b"next")])
    response = client.request("HEAD", "/k", {"Host": "peer"})
    assert response.headers["content-length"] == "100"
    assert response.read() == b""
    # Reused, and the next response parsed on its own: nothing of the HEAD's is left over.
    assert get(client).read() == b"next"
    peer.stop()
    assert len(peer.conns) == 1


@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
], ids=["100", "103"])
def test_an_interim_response_is_skipped_for_the_final_one(serve, interim):
    # A client must accept 1xx answers it did not ask for (RFC 9110 §15.2). Taken for
    # the answer, the final one would be left in the socket, to be read as the answer
    # to the next request on the connection.
    peer, client = serve([(interim, ok(b"first")), ok(b"second")])
    response = get(client)
    assert response.status == 200
    assert "link" not in response.headers  # the interim response's headers are not the final one's
    assert response.read() == b"first"
    assert get(client).read() == b"second"


# -- headers ----------------------------------------------------------------------------

_HEADERS = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Amz-Meta-Tag: one\r\nx-amz-meta-tag: two\r\n"
            b"X-Amz-Meta-Name: caf\xe9 \xff\xfe\r\nContent-Length: 0\r\n\r\n")


def test_header_lookups_ignore_case(serve):
    peer, client = serve([_HEADERS])
    headers = get(client).headers
    assert headers["content-type"] == headers["Content-Type"] == headers["CONTENT-TYPE"] == "text/plain"
    assert headers.get("Content-TYPE") == "text/plain"
    assert "Content-Type" in headers and "content-type" in headers
    assert headers.get("X-Missing") is None and headers.get("X-Missing", "d") == "d"
    assert "X-Missing" not in headers and 42 not in headers


def test_a_repeated_header_is_joined_with_a_comma(serve):
    peer, client = serve([_HEADERS])
    assert get(client).headers["X-Amz-Meta-Tag"] == "one, two"


def test_utf_8_header_bytes_decode_as_utf_8(serve):
    # What MinIO returns for metadata it was given in UTF-8, and what the SigV4 signer
    # hashes when the value is sent on: decoded as latin-1 it would go out as mojibake.
    peer, client = serve([b"HTTP/1.1 200 OK\r\nX-Amz-Meta-Name: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n"])
    assert get(client).headers["x-amz-meta-name"] == "caf\u00e9"


def test_header_bytes_not_utf_8_fall_back_to_latin_1_like_http_client(serve):
    # \xe9\xff\xfe is no UTF-8: read as latin-1, where any byte is a character, rather
    # than fail the response.
    peer, client = serve([_HEADERS])
    value = get(client).headers["x-amz-meta-name"]
    assert value == "caf\u00e9 \u00ff\u00fe"
    assert value.encode("latin-1") == b"caf\xe9 \xff\xfe"
    head = _HEADERS.split(b"\r\n", 1)[1]
    assert value == http.client.parse_headers(io.BytesIO(head))["X-Amz-Meta-Name"]


def test_a_non_ascii_request_header_goes_out_as_utf_8(serve):
    # The bytes the signer hashed: the head is encoded UTF-8, not latin-1.
    peer, client = serve([ok()])
    client.request("GET", "/k", {"Host": "peer", "X-Amz-Meta-Name": "caf\u00e9 \u2603"}).read()
    assert peer.conns[0].requests == [
        b"GET /k HTTP/1.1\r\nHost: peer\r\nX-Amz-Meta-Name: caf\xc3\xa9 \xe2\x98\x83\r\n\r\n"]


def test_headers_split_across_reads_are_parsed_whole(serve):
    # The pieces cut a header name, a value and the blank line: llhttp reports each
    # piece separately and the client must not take a piece for a whole header.
    pieces = (b"HTTP/1.1 200 OK\r\nX-Amz-Me", b"ta-Key: some va", b"lue\r\nContent-Len", b"gth: 2\r\n\r", b"\nok")
    peer, client = serve([pieces])
    response = get(client)
    assert response.headers["x-amz-meta-key"] == "some value"
    assert response.read() == b"ok"


# -- a connection the server closed while idle ----------------------------------------

@pytest.mark.parametrize("method, body", [("GET", None), ("PUT", b"data"), ("POST", b"data")])
def test_a_connection_closed_while_idle_is_dropped_before_use(serve, method, body):
    # The server's close (its keep-alive timeout) arrived while the connection sat in
    # the pool: the client sees it before use and sends on a new connection, whatever
    # the method (nothing was sent on the dead one, so even a POST is safe).
    peer, client = serve([ok(b"first"), HANG_UP], [ok(b"again")])
    assert get(client).read() == b"first"
    assert idle_becomes_readable(client)  # the close has arrived
    response = client.request(method, "/k", {"Host": "peer"}, body)
    assert response.status == 200 and response.read() == b"again"
    # HANG_UP keeps the peer listening: the dead connection got nothing more, and the
    # client closed it.
    assert peer.conns[0].eof.wait(2)
    peer.stop()
    assert peer.conns[0].requests == [request_bytes("GET")]
    assert len(peer.conns) == 2
    assert peer.conns[1].requests == [request_bytes(method, "/k", body)]


def test_an_idle_connection_holding_an_unsolicited_answer_is_not_used(serve):
    # A 408 sent to the idle connection: taken for the answer to the next request, it
    # would be that request's answer, and the real one the next's.
    timed_out = Unasked(TIMED_OUT)
    peer, client = serve([ok(b"first"), timed_out], [ok(b"second")])
    assert get(client).read() == b"first"
    timed_out.go()
    assert idle_becomes_readable(client)  # the 408 has arrived
    response = get(client)
    assert response.status == 200 and response.read() == b"second"
    assert peer.conns[0].eof.wait(2)  # closed by the client
    peer.stop()
    assert peer.conns[0].requests == [request_bytes("GET")]
    assert len(peer.conns) == 2 and peer.conns[1].requests == [request_bytes("GET")]


# -- a connection the server closed just as it was reused ------------------------------
#
# The close comes after the client took the connection (it looked alive) and sent the
# request: the server read it and closed without answering. (DROP waits for the request,
# so the check before use can't see this coming.)

@pytest.mark.parametrize("method, body", [("GET", None), ("PUT", b"data")])
def test_an_idempotent_request_dropped_unanswered_is_sent_once_more_on_a_new_connection(serve, method, body):
    peer, client = serve([ok(b"first"), DROP], [ok(b"again")])
    assert get(client).read() == b"first"
    response = client.request(method, "/k", {"Host": "peer"}, body)
    assert response.status == 200 and response.read() == b"again"
    peer.stop()
    assert peer.conns[0].requests == [request_bytes("GET"), request_bytes(method, "/k", body)]
    assert len(peer.conns) == 2
    assert peer.conns[1].requests == [request_bytes(method, "/k", body)]


def test_a_post_dropped_unanswered_is_not_sent_again(serve):
    peer, client = serve([ok(b"first"), DROP], [ok(b"again")])
    assert get(client).read() == b"first"
    # The server may have acted on a POST before the connection broke: not ours to resend.
    with pytest.raises(ConnectionError):
        client.request("POST", "/k", {"Host": "peer"}, b"data")
    peer.stop()
    assert len(peer.conns) == 1  # no new connection: the POST went nowhere else
    assert peer.conns[0].requests == [request_bytes("GET"), request_bytes("POST", "/k", b"data")]


def test_a_resend_dropped_too_raises_and_is_not_sent_a_third_time(serve):
    peer, client = serve([ok(b"first"), DROP], [DROP], [ok(b"third")])
    assert get(client).read() == b"first"
    with pytest.raises(ConnectionLost):
        get(client)
    peer.stop()
    assert len(peer.conns) == 2  # one resend, then the error is retry.py's
    assert peer.conns[1].requests == [request_bytes("GET")]


def test_a_resend_goes_to_a_new_connection_and_closes_the_other_idle_ones(serve):
    # Two pooled connections, both of which the server drops: the resend must not take
    # the other (it likely went the same way), but a new one; and the pool is emptied.
    peer, client = serve([ok(b"a"), DROP], [ok(b"b"), DROP], [ok(b"fresh")])
    first, second = get(client, "/a"), get(client, "/b")
    assert first.read() == b"a" and second.read() == b"b"
    assert len(client._idle) == 2  # the second, pooled last, is taken next
    assert get(client).read() == b"fresh"
    assert peer.conns[0].eof.wait(2)  # the other idle one, closed by the client...
    peer.stop()
    assert peer.conns[0].requests == [request_bytes("GET", "/a")]  # ...with nothing sent on it
    assert peer.conns[1].requests == [request_bytes("GET", "/b"), request_bytes("GET")]
    assert len(peer.conns) == 3 and peer.conns[2].requests == [request_bytes("GET")]
    assert len(client._idle) == 1


def test_a_reused_connection_cut_mid_headers_is_not_sent_again(serve):
    # Part of an answer arrived: the server has seen the request; a resend is retry.py's call.
    peer, client = serve([ok(b"first"), (b"HTTP/1.1 200 OK\r\nContent-Le",), CLOSE], [ok(b"again")])
    assert get(client).read() == b"first"
    with pytest.raises(ConnectionLost):
        get(client)
    peer.stop()
    assert len(peer.conns) == 1
    assert len(peer.conns[0].requests) == 2


# -- broken answers ---------------------------------------------------------------------

def test_a_body_cut_short_raises_connection_lost_and_is_not_sent_again(serve):
    peer, client = serve([(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10,), CLOSE], [ok()])
    response = get(client)
    assert response.status == 200
    with pytest.raises(ConnectionLost):
        response.read()
    assert len(client._idle) == 0
    peer.stop()
    assert len(peer.conns) == 1 and len(peer.conns[0].requests) == 1


def test_reading_again_after_a_failed_read_raises_again(serve):
    # Never the 10 bytes that did arrive, as if they were the body.
    peer, client = serve([(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"x" * 10), CLOSE])
    response = get(client)
    with pytest.raises(ConnectionLost):
        response.read()
    with pytest.raises(ConnectionLost):
        response.read()
    with pytest.raises(ConnectionLost):
        response.data


_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
           b"<Message>Access Denied.</Message></Error>")


def test_a_put_answered_before_its_body_was_read_returns_the_answer(serve):
    # The server refuses the PUT from its headers and closes with the body unread, so
    # the kernel resets the connection and the client's send fails (8 MiB is more than
    # the socket buffers take before the close: reset or broken pipe in 50 of 50 runs).
    # The server's answer says why; the broken pipe only that something did. Should the
    # send succeed (all of it buffered in time), the answer is read as usual: 403 either way.
    answer = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_DENIED) + _DENIED)
    peer, client = serve([Early(answer)], [ok(b"not this")])
    body = bytes(8 << 20)
    response = client.request("PUT", "/k", {"Host": "peer"}, body)
    assert response.status == 403
    assert response.read() == _DENIED
    assert len(client._idle) == 0
    peer.stop()
    assert len(peer.conns) == 1  # an answer, not a failure to resend
    head = request_bytes("PUT", "/k", body)[:-len(body)]
    assert peer.conns[0].requests == [head]


def test_garbage_is_a_malformed_response(serve):
    peer, client = serve([b"NOT HTTP\r\n\r\n"])
    with pytest.raises(MalformedResponse):
        get(client)
    assert len(client._idle) == 0
    peer.stop()
    assert len(peer.conns) == 1 and len(peer.conns[0].requests) == 1


# -- timeouts and refusals --------------------------------------------------------------

def test_a_silent_server_times_out_after_read_timeout_and_is_not_asked_again(serve):
    # On a reused connection, where a failure with no answer byte could pass for a
    # stale connection: a timeout must not be resent (the server may be working on it).
    peer, client = serve([ok(b"first"), SILENT], [ok(b"again")], read_timeout=0.3)
    assert get(client).read() == b"first"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        get(client)
    assert 0.25 <= time.monotonic() - started < 1.0
    peer.stop()
    assert len(peer.conns) == 1 and len(peer.conns[0].requests) == 2


def test_a_refused_connection_is_connect_failed():
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))  # bound, never listening: a connect is refused at once
        client = HttpClient(f"http://127.0.0.1:{placeholder.getsockname()[1]}", connect_timeout=1, read_timeout=1)
        with pytest.raises(ConnectFailed):
            get(client)


# -- release and read --------------------------------------------------------------------

def test_releasing_an_unread_body_closes_the_connection(serve):
    # 10 of 100 bytes: the rest would be read as the start of the next response.
    peer, client = serve([(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10,)], [ok(b"fresh")])
    response = get(client)
    response.release()
    assert len(client._idle) == 0
    assert peer.conns[0].eof.wait(2)  # closed by the client
    response.release()  # a second release is harmless
    assert get(client).read() == b"fresh"
    peer.stop()
    assert len(peer.conns) == 2


def test_read_after_releasing_an_unread_body_raises_connection_lost(serve):
    # 10 of 100 bytes in, and release() closed the connection: the rest can't come.
    peer, client = serve([(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10,)])
    response = get(client)
    response.release()
    with pytest.raises(ConnectionLost):
        response.read()
    with pytest.raises(ConnectionLost):
        response.read()


@pytest.mark.parametrize("finish", ["read", "release"])
def test_a_response_is_freed_by_reference_counting_alone(serve, finish):
    # The parser holds the response's callbacks and the response the parser: unless
    # release() breaks that cycle, every body (up to a part's size) waits for the cyclic
    # collector, which a copy of large objects can outrun. gc disabled: only reference
    # counting can free it here.
    body = os.urandom(1000)
    answer = (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", body)
    peer, client = serve([answer])
    gc.disable()
    try:
        response = get(client)
        freed = weakref.ref(response)
        if finish == "read":
            assert response.read() == body
        else:
            response.release()
        del response
        assert freed() is None
    finally:
        gc.enable()


def test_read_twice_returns_the_same_bytes_and_pools_the_connection_once(serve):
    peer, client = serve([ok(b"body")])
    response = get(client)
    assert response.read() == b"body"
    assert response.read() == b"body"
    assert response.data == b"body"
    assert len(client._idle) == 1


def test_maxsize_bounds_the_idle_connections(serve):
    peer, client = serve([ok(b"a"), ok(b"c")], [ok(b"b")], maxsize=1)
    first, second = get(client), get(client)  # both out at once: two connections
    assert first.read() == b"a"
    assert second.read() == b"b"
    assert len(client._idle) == 1
    assert peer.conns[1].eof.wait(2)  # the second had no room and was closed
    assert get(client).read() == b"c"  # the one kept is the first
    peer.stop()
    assert len(peer.conns) == 2


# -- map_transport_error ------------------------------------------------------------------

def _certificate_error() -> ssl.SSLCertVerificationError:
    # As the ssl module raises it: the reason in args, verify_message/verify_code set after.
    exc = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)")
    exc.verify_code, exc.verify_message = 18, "self-signed certificate"
    return exc


ENDPOINT = "http://127.0.0.1:9000"


@pytest.mark.parametrize("exc, kind, detail", [
    (ConnectFailed("Connection refused"), TransientError,
     f"cannot connect to {ENDPOINT}: connection refused or unreachable"),
    (TimeoutError("timed out"), TransientError, f"{ENDPOINT} timed out (TimeoutError)"),
    (ConnectionLost("closed"), TransientError, f"connection to {ENDPOINT} broke: ConnectionLost"),
    (MalformedResponse("bad"), TransientError, f"connection to {ENDPOINT} broke: MalformedResponse"),
    # request() lets the socket's own errors through unwrapped.
    (ConnectionResetError(104, "reset"), TransientError, f"connection to {ENDPOINT} broke: ConnectionResetError"),
    (_certificate_error(), FatalError,
     f"TLS handshake with {ENDPOINT} failed: certificate verify failed: self-signed certificate"),
], ids=["connect-failed", "timeout", "connection-lost", "malformed", "reset", "certificate"])
def test_map_transport_error(exc, kind, detail):
    error = map_transport_error("source", "get", "a/b", ENDPOINT, exc)
    assert type(error) is kind  # exactly: a FatalError is no TransientError, and the reverse
    assert (error.side, error.op, error.key) == ("source", "get", "a/b")
    assert str(error).startswith(f"source: get a/b: {detail}")
