"""The HTTP endpoints: ``/healthz`` (alive), ``/readyz`` (replicating), ``/status``
(JSON detail) and ``/metrics`` (Prometheus). Standard library server, one thread per
request; nothing here can block replication."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .health import Health


def _handler(health: Health) -> type[BaseHTTPRequestHandler]:
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

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
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


class HttpServer:
    def __init__(self, host: str, port: int, health: Health):
        self._server = ThreadingHTTPServer((host, port), _handler(health))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
