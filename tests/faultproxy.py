"""An HTTP reverse proxy on 127.0.0.1 in front of a real server, for answers that are
wrong but well-formed HTTP: a 200 with an HTML page, an S3 error document at 200, a
listing with two keys swapped, a 500, a connection cut before the answer.

The server stays real and so does every request: the proxy forwards each one as it
came, headers (Host included, so SigV4 signatures stay valid) and body verbatim. A
``rule`` sees each request and decides what the client gets instead::

    proxy = FaultProxy(minio.port)
    proxy.rule = lambda request: HTML_PAGE if request.is_listing and request.nth_listing >= 2 else None

A rule returns None (forward it), a ``Canned`` answer (not forwarded), ``CUT`` (the
connection closes before an answer), or a callable that takes the real answer and
returns what the client gets. Streaming answers (MinIO's notification stream) are
relayed as they arrive when the rule forwards them untouched.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from urllib3.util.wait import wait_for_read

from tests.servers import HOST

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "proxy-connection"})


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: dict[str, str]
    nth: int  # 1 for the proxy's first request
    nth_listing: int  # 1 for its first ListObjectsV2 request; 0 for anything else

    @property
    def is_listing(self) -> bool:
        return self.method == "GET" and self.query.get("list-type") == ["2"]

    def has(self, parameter: str) -> bool:
        return parameter in self.query


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Canned(Answer):
    """An answer the server never gave."""


class _Cut:
    def __repr__(self) -> str:
        return "CUT"


CUT = _Cut()

Rule = Callable[[Request], "Canned | _Cut | Callable[[Answer], Answer] | None"]


def html_page(status: int = 200) -> Canned:
    """What a captive portal or a misrouted load balancer answers."""
    body = (b"<!DOCTYPE html>\n<html><head><title>Network login</title></head>"
            b"<body><h1>Please sign in</h1><p>Your session has expired.</p></body></html>\n")
    return Canned(status, {"Content-Type": "text/html; charset=utf-8"}, body)


def s3_error_document(code: str = "InternalError", status: int = 200) -> Canned:
    """An S3 error, at whatever status (some providers send them with 200)."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{code} from the fault proxy</Message><RequestId>fault</RequestId></Error>").encode()
    return Canned(status, {"Content-Type": "application/xml"}, body)


@dataclass
class _Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    listings: int = 0


class FaultProxy:
    def __init__(self, target_port: int, rule: Rule | None = None):
        self.target_port = target_port
        self.rule: Rule = rule or (lambda request: None)
        self.seen: list[Request] = []
        self.faulted: list[Request] = []
        self._counters = _Counters()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream: http.client.HTTPConnection | None = None

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def finish(self) -> None:
                if self.upstream is not None:
                    self.upstream.close()
                super().finish()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def listings(self) -> list[Request]:
        return [r for r in self.seen if r.is_listing]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- one request ------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        if handler.headers.get("Transfer-Encoding"):
            raise NotImplementedError("the fault proxy forwards bodies of announced length only")
        body = handler.rfile.read(length) if length else b""
        query = parse_qs(parts.query, keep_blank_values=True)
        with self._counters.lock:
            self._counters.requests += 1
            listing = handler.command == "GET" and query.get("list-type") == ["2"]
            if listing:
                self._counters.listings += 1
            request = Request(handler.command, parts.path, query, dict(handler.headers.items()),
                              self._counters.requests, self._counters.listings if listing else 0)
            self.seen.append(request)
        decision = self.rule(request)
        if decision is not None:
            self.faulted.append(request)
        if decision is CUT:
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if isinstance(decision, Canned):
            self._send(handler, decision)
            return
        upstream = self._upstream(handler)
        upstream.putrequest(handler.command, handler.path, skip_host=True, skip_accept_encoding=True)
        for name, value in handler.headers.items():
            if name.lower() not in ("connection", "proxy-connection", "keep-alive"):
                upstream.putheader(name, value)
        upstream.endheaders(body if body or length else None)
        response = upstream.getresponse()
        headers = {name: value for name, value in response.getheaders() if name.lower() not in _HOP_BY_HOP}
        if decision is None and response.getheader("Content-Length") is None and handler.command != "HEAD":
            headers.pop("Content-Length", None)
            self._relay_stream(handler, response, headers)
            return
        answer = Answer(response.status, headers, response.read())
        self._send(handler, decision(answer) if decision is not None else answer, head=handler.command == "HEAD")

    def _upstream(self, handler) -> http.client.HTTPConnection:
        upstream = handler.upstream
        if upstream is not None and upstream.sock is not None and wait_for_read(upstream.sock, timeout=0):
            # Readable while idle: the server closed it (MinIO does after 30 s). Sent
            # into it, the next request would fail in the proxy, a fault nobody asked for.
            upstream.close()
        if handler.upstream is None:
            handler.upstream = http.client.HTTPConnection(HOST, self.target_port, timeout=120)
        return handler.upstream

    @staticmethod
    def _send(handler, answer: Answer, head: bool = False) -> None:
        """Send ``answer``. A HEAD's Content-Length is the object's, so it is kept; any
        other answer's is that of the body sent."""
        handler.send_response(answer.status)
        for name, value in answer.headers.items():
            if name.lower() not in _HOP_BY_HOP and (head or name.lower() != "content-length"):
                handler.send_header(name, value)
        if not head:
            handler.send_header("Content-Length", str(len(answer.body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(answer.body)
        handler.wfile.flush()

    @staticmethod
    def _relay_stream(handler, response: http.client.HTTPResponse, headers: dict[str, str]) -> None:
        if response.status in (204, 304):
            # No body, and none to stream: relayed as chunked and left open, the upstream
            # answer would swallow the next request's (the server acts on it, and its
            # answer is lost to ResponseNotReady).
            response.read()
            handler.send_response(response.status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            return
        handler.send_response(response.status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            while chunk := response.read1(65536):
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                handler.wfile.flush()
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True
