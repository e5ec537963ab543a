"""The data path's HTTP/1.1 client: keep-alive connections to one origin, a small
request (body up to 256 KiB) sent in one write, responses parsed by httptools (Node's
llhttp, in C).

Why not urllib3 and http.client, which carry everything else: a small copy is one
GET and one PUT, and their per-request machinery (the connection-drop poll,
http.client's header parsing through the email package, urllib3's response object)
cost twice the CPU of the exchange itself. Measured single-threaded against MinIO:
a 4 KiB GET took 404 µs of CPU and now 163 µs, a 4 KiB PUT 533 µs and now 219 µs,
signing included.

What it does, and no more:
- requests with a bytes body (or none), headers given in full by the caller;
- responses delimited by Content-Length, chunked encoding or the connection's end;
- connections reused LIFO, each polled first (one with something to read was closed
  by the server, or holds an answer nobody asked for: dropped); a reused one that
  fails with any error but a timeout before a byte of the answer arrives is replaced
  and the request sent once more, for idempotent methods only (RFC 9110 §9.2.2). That
  covers the race with a server closing an idle connection; it also resends when the
  server received the request and then failed without answering, which an idempotent
  request tolerates;
- no retries beyond that (retry.py owns them), no redirects, no proxies, no content
  decoding (a gzip-encoded object is copied as its stored bytes).
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httptools

if TYPE_CHECKING:
    from hashlib import _Hash as Hash  # typeshed's name for a hashlib object

_RECV = 256 * 1024
# Bodies up to this size leave in the same write as the headers (one send, one wake-up
# of the server); larger ones follow the headers in 1 MiB slices rather than be copied.
_ONE_WRITE_MAX = 256 * 1024
_SEND_SLICE = 1024 * 1024
_RECV_DIRECT = 4 * 1024 * 1024  # per recv_into() of a body into its own buffer
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})


class ConnectFailed(ConnectionError):
    """The connection could not be opened: refused, unreachable or unresolvable.
    (A connect timeout is a TimeoutError, a TLS failure an ssl.SSLError.)"""


class ConnectionLost(ConnectionError):
    """The server closed the connection before the response was complete."""


class MalformedResponse(ConnectionError):
    """The server's answer is not HTTP/1.1 that llhttp can parse."""


class Headers(dict):
    """Response headers, names lower-cased; lookups ignore case. A repeated header's
    values are joined with ", " (RFC 9110 §5.3)."""

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def get(self, name: str, default=None):  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class Response:
    """One response. Status and headers are read; the body is read by ``read()``.
    ``release()`` hands the connection back for reuse when the body was read to its
    end, and closes it otherwise; it is safe to call more than once."""

    # __weakref__: for tests/unit/test_http_client.py, which checks that a response is
    # freed by reference counting alone (no parser<->response cycle left after release).
    __slots__ = ("status", "headers", "_conn", "_client", "_parser", "_chunks", "_buffer", "_filled",
                 "_headers_done", "_complete", "_keep_alive", "_delimited", "_interim", "_over", "_failed",
                 "__weakref__")

    def __init__(self, conn: _Connection, client: HttpClient):
        self._conn: _Connection | None = conn
        self._client = client
        # The parser holds this object's callbacks, and this object the parser: a cycle,
        # broken in release() so that a body is freed when its last user drops it, not at
        # the next full collection.
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers = Headers()
        self._chunks: list[bytes] = []  # body bytes that came with the headers, or of unknown length
        self._buffer: bytearray | None = None  # the body, once read() knows its length
        self._filled = 0
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._delimited = False  # Content-Length or chunked: the end is knowable
        self._interim = False  # parsing a 1xx response, which the final one follows
        self._over = False  # our answer is complete: anything more is not ours
        self._failed = False

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        if self._complete:
            # A second message in the same read (an unsolicited 408, say): never taken
            # for part of this one, and the connection is not reused.
            self._over = True
            self._keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # chunked trailers, or a message after ours
        # UTF-8, which MinIO passes through in user metadata as it was given, and which
        # the SigV4 signer hashes: a value sent on unchanged is signed as sent. (Not UTF-8:
        # read as latin-1, so nothing fails; the copy then carries it UTF-8 encoded.)
        key = name.decode("latin-1").lower()
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        self.headers[key] = f"{dict.__getitem__(self.headers, key)}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        if self._headers_done:
            return
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints: skipped, as http.client does (RFC 9110 §15.2).
            # Taken for the answer, it would leave the final one to answer the next request.
            self._interim = True
            self.headers.clear()
            return
        self._headers_done = True
        self.status = status
        self._keep_alive = parser.should_keep_alive()
        chunked = self.headers.get("transfer-encoding", "").lower().rstrip().endswith("chunked")
        self._delimited = chunked or "content-length" in self.headers

    def on_body(self, body: bytes) -> None:
        if self._over:
            return
        if self._buffer is None:
            self._chunks.append(body)
        else:
            end = self._filled + len(body)
            self._buffer[self._filled:end] = body
            self._filled = end

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif not self._over:
            self._complete = True

    # --
    @property
    def data(self) -> bytes:
        """The body as bytes, read in full (the error document, for transport.raw_error)."""
        return bytes(self.read())

    def read(self, hashes: Sequence[Hash] = ()) -> bytes | bytearray:
        """The whole body (bytes, or a bytearray filled in place when the body was still
        arriving and its length announced: a body costs its size once). Each of
        ``hashes`` (hashlib objects) is fed the body, as it arrives where it can be: the
        hashing then overlaps the transfer instead of following it. Errors leave the
        connection closed."""
        if self._failed:
            raise ConnectionLost("the response's body could not be read to its end")
        hashed = False
        if not self._complete:
            conn = self._conn
            if conn is None:
                raise ConnectionLost("the response was released before its body was read")
            self._allocate()
            try:
                if self._buffer is not None:
                    self._fill(conn, hashes)
                    hashed = True
                else:
                    self._feed(conn, body=True)
            except BaseException:
                self._failed = True
                self._conn = self._parser = None
                self._buffer, self._chunks = None, []
                conn.close()
                raise
        self.release()
        if self._buffer is not None:
            data: bytes | bytearray = self._buffer
        else:
            if len(self._chunks) != 1:
                self._chunks = [b"".join(self._chunks)]
            data = self._chunks[0]
        if not hashed:
            for h in hashes:
                h.update(data)
        return data

    def _allocate(self) -> None:
        # Only here, when the caller asked for the body: at the headers, an object too
        # large for one PUT (which the copy releases unread) would be allocated whole.
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > 0 and not self.headers.get("transfer-encoding"):
            self._buffer = bytearray(int(length))
            for chunk in self._chunks:
                self.on_body(chunk)
            self._chunks = []

    def _fill(self, conn: _Connection, hashes: Sequence[Hash]) -> None:
        """The rest of a body of announced length, received straight into its buffer,
        each piece hashed as it lands (hashlib releases the GIL, and the kernel goes on
        receiving meanwhile). llhttp has nothing left to say about the body (its end is
        the length), and passing it through the parser would copy every byte twice more:
        a sixth of a large copy's CPU. The parser is not used again: one per response."""
        buffer = self._buffer
        assert buffer is not None
        view = memoryview(buffer)
        size, filled = len(buffer), self._filled
        for h in hashes:
            h.update(view[:filled])  # what came with the headers
        while filled < size:
            try:
                n = conn.sock.recv_into(view[filled:], min(size - filled, _RECV_DIRECT))
            except ssl.SSLError as exc:
                raise ConnectionLost(f"TLS stream broken ({type(exc).__name__})") from None
            if n == 0:
                raise ConnectionLost("the server closed the connection before the response was complete")
            for h in hashes:
                h.update(view[filled:filled + n])
            filled += n
        self._filled = filled
        self._complete = True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        self._parser = None
        if conn is None:
            return
        if self._complete and self._keep_alive:
            self._client._put_back(conn)  # noqa: SLF001
        else:
            conn.close()  # unread body, or the server will close: never reuse

    def _feed(self, conn: _Connection, *, body: bool) -> None:
        """Read and parse until the headers (or, with ``body``, the whole message) are in."""
        parser = self._parser
        assert parser is not None
        while not (self._complete if body else self._headers_done):
            try:
                n = conn.sock.recv_into(conn.buffer)
            except ssl.SSLError as exc:  # mid-stream (a handshake error comes from _connect)
                raise ConnectionLost(f"TLS stream broken ({type(exc).__name__})") from None
            if n == 0:
                if self._headers_done and not self._delimited:
                    self._complete = True  # a body that ends with the connection
                    self._keep_alive = False
                    return
                raise ConnectionLost("the server closed the connection before the response was complete")
            conn.received += n
            try:
                parser.feed_data(conn.view[:n])
            except httptools.HttpParserCallbackError:
                raise  # a bug of ours, not the server's answer
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                if self._complete and isinstance(exc, httptools.HttpParserError):
                    # Our answer is whole; what llhttp refused came after it in the same
                    # read (garbage, or anything after a Connection: close answer). Not
                    # ours, as in on_message_begin: ignored, and the connection not reused.
                    self._over, self._keep_alive = True, False
                    return
                raise MalformedResponse(f"malformed HTTP response ({type(exc).__name__})") from None


class _Connection:
    __slots__ = ("sock", "buffer", "view", "used", "received")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray(_RECV)
        self.view = memoryview(self.buffer)
        self.used = False  # has carried a request before: the server may have closed it since
        self.received = 0  # bytes of the current response

    def send(self, head: bytes, body: bytes | bytearray | None) -> None:
        try:
            if body and len(body) <= _ONE_WRITE_MAX:
                self.sock.sendall(head + body)
                return
            self.sock.sendall(head)
            if body:
                # In slices: sendall's timeout bounds the whole call (Python >= 3.5), and a
                # large part on a slow link must only keep moving, not finish in read_timeout.
                view = memoryview(body)
                for offset in range(0, len(view), _SEND_SLICE):
                    self.sock.sendall(view[offset:offset + _SEND_SLICE])
        except ssl.SSLError as exc:
            raise ConnectionLost(f"TLS stream broken ({type(exc).__name__})") from None

    def dropped(self) -> bool:
        """Whether the idle connection has something to read: the server's close, or an
        answer no request asked for. Either way it can't carry a request. (poll, not
        select: select fails on descriptors above 1023.)"""
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class HttpClient:
    """Connections to one origin (``http[s]://host[:port]``), at most ``maxsize`` kept
    idle. Thread-safe: a connection serves one request at a time."""

    def __init__(self, origin: str, *, connect_timeout: float, read_timeout: float, verify: bool = True,
                 ca_bundle: str | None = None, maxsize: int = 16):
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self.origin = origin
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.maxsize = maxsize
        self._tls = tls_context(verify, ca_bundle) if parts.scheme == "https" else None
        self._idle: deque[_Connection] = deque()
        self._lock = threading.Lock()

    def request(self, method: str, path: str, headers: dict[str, str],
                body: bytes | bytearray | None = None) -> Response:
        """Send one request; return once the status and headers are in. ``headers`` must
        include Host; Content-Length is added for a body. The caller reads or releases
        the response."""
        lines = [f"{method} {path} HTTP/1.1\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r}: line breaks are not allowed in HTTP header fields")
            lines.append(f"{name}: {value}\r\n")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8")  # what the signer hashed
        resent = False
        while True:
            conn = self._connect() if resent else self._get()
            reused, conn.used, conn.received = conn.used, True, 0
            response = Response(conn, self)
            try:
                self._exchange(conn, response, head, body)
            except BaseException as exc:
                conn.close()
                response._parser = None  # noqa: SLF001
                # A kept-alive connection the server closed while we took it fails at once,
                # before any byte of an answer: the request goes again, once, on a new
                # connection (RFC 9110 §9.2.2: idempotent requests may be retried). Anything
                # else is the caller's (retry.py).
                if (reused and not resent and conn.received == 0 and method in _IDEMPOTENT
                        and isinstance(exc, OSError) and not isinstance(exc, TimeoutError)):
                    resent = True
                    self.close()  # the other idle connections likely went the same way
                    continue
                raise
            if method == "HEAD":
                response._complete = True  # noqa: SLF001 - no body, whatever Content-Length says
            return response

    @staticmethod
    def _exchange(conn: _Connection, response: Response, head: bytes, body: bytes | bytearray | None) -> None:
        try:
            conn.send(head, body)
        except (BrokenPipeError, ConnectionResetError, ConnectionLost) as send_error:
            # The server may have answered before reading the whole body (a 403, a 503
            # SlowDown) and closed: that answer, if it arrived, says more than the broken
            # pipe does, as urllib3 found too.
            try:
                response._feed(conn, body=False)  # noqa: SLF001
            except OSError:
                raise send_error from None
            response._keep_alive = False  # noqa: SLF001
            return
        response._feed(conn, body=False)  # noqa: SLF001

    def _get(self) -> _Connection:
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return self._connect()
            if not conn.dropped():
                return conn
            conn.close()

    def _put_back(self, conn: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self.maxsize:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self) -> _Connection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except TimeoutError:
            raise
        except OSError as exc:  # refused, unreachable, unresolvable
            raise ConnectFailed(exc.strerror or str(exc)) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(sock, server_hostname=self.host)
                except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
                    # The server hung up mid-handshake (overloaded, restarting): not a
                    # certificate or protocol problem, so not fatal.
                    raise ConnectionLost(f"TLS handshake cut off ({type(exc).__name__})") from None
            sock.settimeout(self.read_timeout)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def close(self) -> None:
        """Close the idle connections (those in use close when released)."""
        while True:
            try:
                self._idle.pop().close()
            except IndexError:
                return


def tls_context(verify: bool, ca_bundle: str | None) -> ssl.SSLContext:
    """Verify against the CA bundle (certifi's when none is given), or not at all."""
    import certifi

    context = ssl.create_default_context(cafile=ca_bundle or certifi.where())
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
