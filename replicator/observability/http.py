"""The HTTP endpoints: ``/healthz`` (alive), ``/readyz`` (replicating), ``/status``
(JSON detail) and ``/metrics`` (Prometheus). Standard library server, one thread per
request; nothing here can block replication.

An address or port that can't be bound is the configuration's fault, not a bug: it is
raised as a ConfigError naming ``S3_SYNC_HTTP_HOST`` or ``S3_SYNC_HTTP_PORT``, which
``run`` turns into exit 2."""

from __future__ import annotations

import errno
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import ConfigError
from .health import Board, Health


def _handler(health: Health | Board) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "replicator"

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, payload: dict) -> None:
            self._send(code, json.dumps(payload, default=str).encode() + b"\n", "application/json")

        def do_GET(self) -> None:  # the stdlib's name
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._json(200, {"status": "alive", "state": health.state})
            elif path == "/readyz":
                ready, why = health.ready()
                self._json(200 if ready else 503, {"ready": ready, "reason": why})
            elif path == "/status":
                self._json(200, health.status())
            elif path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._json(404, {"error": "not found", "endpoints": ["/healthz", "/readyz", "/status", "/metrics"]})

        do_HEAD = do_GET

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass  # probes every few seconds would drown the replication log

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _listen_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple]:
    """The address family and socket address to bind ``host`` with: IPv4 when ``host``
    has an IPv4 address (the stdlib server knows only IPv4, and replicator used it
    alone before), IPv6 when that is all it has (``::``, ``::1``)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = min(found, key=lambda info: info[0] != socket.AF_INET)
    return family, address


def _bind_error(host: str, port: int, exc: OSError) -> str:
    """What to tell the user when ``host``:``port`` can't be bound, naming the setting."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror):
        return f"S3_SYNC_HTTP_HOST={host!r}: can't be resolved to an address to listen on ({reason})"
    if exc.errno == errno.EADDRINUSE:
        return (f"S3_SYNC_HTTP_PORT={str(port)!r}: port {port} is already in use on {host} ({reason}); "
                "stop what listens there or choose another port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"S3_SYNC_HTTP_HOST={host!r}: not an address of this machine ({reason}); use 0.0.0.0 "
                "for every interface, or one of this machine's own addresses")
    if exc.errno == errno.EACCES and port < 1024:
        return f"S3_SYNC_HTTP_PORT={str(port)!r}: ports below 1024 need root ({reason}); use one above 1023"
    return f"S3_SYNC_HTTP_HOST={host!r}, S3_SYNC_HTTP_PORT={str(port)!r}: can't listen there ({reason})"


class HttpServer:
    def __init__(self, host: str, port: int, health: Health | Board):
        try:
            family, address = _listen_address(host, port)
            self._server = (_Server6 if family == socket.AF_INET6 else _Server)(address, _handler(health))
        except OSError as exc:
            raise ConfigError(f"Can't start the HTTP server: {_bind_error(host, port, exc)}") from exc
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
