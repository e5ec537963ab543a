"""Real servers on 127.0.0.1 for tests, the quickstart and the benchmarks.

MinIO runs from the binary that ``scripts/install-tools.sh`` builds; moto runs in its
server mode as a separate process, the AWS-flavoured destination; Prometheus comes
from Debian's package, which the setup installs for its promtool. Each server gets a
free port and its own temporary directory, and is ready when its health endpoint
answers. Nothing here ever binds or contacts anything but loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
TOOLS_DIR = Path(os.environ.get("REPLICATOR_TOOLS_DIR", Path.home() / ".cache" / "replicator-tools"))


class ServerError(RuntimeError):
    pass


def find_tool(name: str) -> str:
    """The binary built by scripts/install-tools.sh (or on PATH). Missing is an error,
    never a skip: CI installs it."""
    candidate = TOOLS_DIR / "bin" / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ServerError(f"{name} not found in {TOOLS_DIR / 'bin'} or on PATH: run scripts/install-tools.sh")


def replicator_environ() -> dict[str, str]:
    """This process's environment without anything replicator reads: its settings,
    AWS credentials, and proxies (a machine's own HTTPS_PROXY would send every test's
    requests through it). A test adds back exactly what it means to give."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("S3_SYNC_", "MINIO_", "AWS_")) and k.lower() not in PROXY_VARIABLES}


PROXY_VARIABLES = ("https_proxy", "http_proxy", "no_proxy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float, ok=(200,),
               cafile: str | None = None) -> None:
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as response:
                if response.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise ServerError(f"{url} not ready after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Signal a server still running, and kill it if it hasn't exited within ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class MinioServer:
    """One single-drive MinIO server. ``stop()``/``start()`` keep port and data, so a
    restart looks to clients like the same server going away and coming back. With
    ``tls`` (tests/tls.py) it serves HTTPS with that certificate; ``env`` adds MinIO
    settings (``MINIO_SITE_REGION``, say)."""

    def __init__(self, name: str, user: str = "minioadmin", password: str = "minioadmin",
                 workdir: str | None = None, tls=None, env: dict[str, str] | None = None):
        self.name = name
        self.tls = tls
        self.extra_env = dict(env or {})
        self.user = user
        self.password = password
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"replicator-{name}-"))
        self.data = self.dir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "minio.log"

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def host(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, timeout: float = 60) -> MinioServer:
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.user,
            "MINIO_ROOT_PASSWORD": self.password,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CI_CD": "1",
            **self.extra_env,
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [find_tool("minio"), "server", str(self.data), "--quiet", "--address", self.host,
                 "--console-address", f"{HOST}:{free_port()}",
                 *(["--certs-dir", str(self.tls.certs_dir)] if self.tls else [])],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        _wait_http(f"{self.endpoint}/minio/health/cluster", self.proc, self.log, timeout,
                   cafile=str(self.tls.ca_file) if self.tls else None)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.proc, sig, timeout=15)
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class MotoServer:
    """moto's standalone server: an S3 with AWS's behaviours and error shapes."""

    def __init__(self):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="replicator-moto-"))
        self.log = self.dir / "moto.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60) -> MotoServer:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
            )
        _wait_http(f"{self.endpoint}/moto-api/", self.proc, self.log, timeout, ok=(200, 404))
        return self

    def close(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrometheusServer:
    """A real Prometheus that scrapes ``targets`` (host:port) and evaluates
    ``rule_files`` every second: for asserting that the dashboard's queries return data
    and which alerts fire, over what a real sidecar exports."""

    def __init__(self, targets: list[str], rule_files: list[str] = ()):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="replicator-prometheus-"))
        self.log = self.dir / "prometheus.log"
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": "replicator", "static_configs": [{"targets": targets}]}],
        }))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60) -> PrometheusServer:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [find_tool("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address={HOST}:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        _wait_http(f"{self.url}/-/ready", self.proc, self.log, timeout)
        return self

    def _api(self, path: str, **params: str):
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's series, now."""
        return self._api("query", query=expr)["result"]

    def alerts(self) -> list[dict]:
        """The alerts pending or firing now."""
        return self._api("alerts")["alerts"]

    def close(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class StubS3:
    """A scripted HTTP server on loopback that answers like a (broken) S3, counting the
    requests it gets: for asserting how often a client really tries. ``respond(method,
    path, query)`` returns ``(status, headers, body)``."""

    def __init__(self, respond):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.requests: list[tuple[str, str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                stub.requests.append((self.command, parts.path, parts.query))
                status, headers, body = respond(self.command, parts.path, parts.query)
                self.send_response(status)
                for name, value in {"Content-Type": "application/xml", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="stub-s3", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def count(self, method: str, query_contains: str = "") -> int:
        return sum(1 for m, _, q in self.requests if m == method and query_contains in q)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def s3_error(code: str, status: int, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code}</Message>'
            f"<RequestId>stub</RequestId></Error>").encode()
    return status, dict(headers or {}), body


class NatsServer:
    """nats-server with JetStream, on a free port, its store in a temp dir (the issue's
    `nats-server -js -a 127.0.0.1 -p -1 -sd <tmp> --ports_file_dir <tmp>`). ``stop()``
    and ``start()`` keep the port and the store: a restart is the same server back,
    streams, consumers and messages included."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="replicator-nats-"))
        self.log = self.dir / "nats.log"
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, timeout: float = 30) -> NatsServer:
        ports = self.dir / "ports"
        ports.mkdir(exist_ok=True)
        for old in ports.iterdir():
            old.unlink()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [find_tool("nats-server"), "-js", "-a", HOST, "-p", str(self.port or -1), "-m", "-1",
                 "-sd", str(self.dir / "store"), "--ports_file_dir", str(ports)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"nats-server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            written = list(ports.glob("*.ports"))
            if written and written[0].read_text().strip():
                # {"nats": ["nats://127.0.0.1:PORT"], ...}: the port the server chose.
                self.port = int(json.loads(written[0].read_text())["nats"][0].rsplit(":", 1)[1])
                try:
                    with socket.create_connection((HOST, self.port), timeout=1) as connection:
                        if connection.recv(4).startswith(b"INFO"):
                            return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise ServerError(f"nats-server not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.proc, sig)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def minio_nats_env(nats: NatsServer, subject: str, queue_dir: Path | None, target: str = "PRIMARY") -> dict[str, str]:
    """MinIO's settings for a NATS JetStream notification target ``target``, with a
    queue_dir, so events published while NATS is down are kept and sent later; with
    ``queue_dir`` None, without one: MinIO fails to send those, and counts them."""
    env = {
        f"MINIO_NOTIFY_NATS_ENABLE_{target}": "on",
        f"MINIO_NOTIFY_NATS_ADDRESS_{target}": nats.address,
        f"MINIO_NOTIFY_NATS_SUBJECT_{target}": subject,
        f"MINIO_NOTIFY_NATS_JETSTREAM_{target}": "on",
    }
    if queue_dir is not None:
        env[f"MINIO_NOTIFY_NATS_QUEUE_DIR_{target}"] = str(queue_dir)
        env[f"MINIO_NOTIFY_NATS_QUEUE_LIMIT_{target}"] = "100000"
    return env
