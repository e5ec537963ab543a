"""Run the real sidecar (``python -m replicator run``) as a subprocess, and a TCP
proxy that can cut connections: a network fault injector between the sidecar and a
real server (the server stays real; only the wire misbehaves)."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.servers import HOST, free_port, replicator_environ


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy; return its value. Fails the test on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Sidecar:
    def __init__(self, env: dict[str, str], **overrides):
        self.port = free_port()
        # A configuration file holds the per-destination settings itself (the test's
        # file sets the interval and the cooldown); beside it they would be refused.
        per_destination = {} if "S3_SYNC_CONFIG" in env else {"S3_SYNC_INTERVAL": "3600",
                                                                "S3_SYNC_RECONCILE_COOLDOWN": "1"}
        self.env = {
            **replicator_environ(),
            **env,
            "S3_SYNC_ENABLED": "true",
            "S3_SYNC_HTTP_HOST": HOST,
            "S3_SYNC_HTTP_PORT": str(self.port),
            **per_destination,
            "S3_SYNC_LOG_LEVEL": "debug",
            **{k: str(v) for k, v in overrides.items()},
        }
        # The registry of uploads in flight: a throwaway one unless the test gives its
        # own (to restart on), never the machine's /var/lib/replicator.
        self._state = None
        if "S3_SYNC_STATE_DIR" not in self.env:
            self._state = self.env["S3_SYNC_STATE_DIR"] = tempfile.mkdtemp(prefix="sidecar-state-")
        self.logfile = Path(tempfile.mkstemp(prefix="sidecar-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Sidecar:
        with open(self.logfile, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "replicator", "run"], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.get("/healthz") is not None, timeout=30, what="sidecar /healthz")
        return self

    def get(self, path: str) -> tuple[int, bytes] | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited with {self.proc.returncode}:\n{self.log()}") from None
            return None

    def status(self) -> dict:
        result = self.get("/status")
        assert result is not None and result[0] == 200
        return json.loads(result[1])

    def ready(self) -> bool:
        result = self.get("/readyz")
        return result is not None and result[0] == 200

    def metrics(self) -> dict[str, float]:
        result = self.get("/metrics")
        assert result is not None and result[0] == 200
        values: dict[str, float] = {}
        for line in result[1].decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def idle(self) -> bool:
        """No queued or in-flight event work."""
        queue = self.status()["queue"]
        return queue["depth"] == 0 and queue["in_flight"] == 0

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.logfile.unlink(missing_ok=True)
        if self._state is not None:
            shutil.rmtree(self._state, ignore_errors=True)


class TcpProxy:
    """Forwards 127.0.0.1:port to a target. ``cut()`` drops every open connection (with
    ``reset=True`` as a TCP RST instead of a FIN); ``hold()`` makes new connections wait
    until ``release()``; ``freeze_on(pattern)`` freezes each connection that sends
    ``pattern``, before the bytes reach the target; ``delay(outbound, inbound)`` adds
    latency to every byte, per direction, on open connections too."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._server = socket.create_server((HOST, self.port))
        self._server.settimeout(0.2)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self._gate.set()
        self._frozen: set[socket.socket] = set()
        self._reset: set[socket.socket] = set()  # closed by an RST: no FIN before it
        self._freeze_on: bytes | None = None
        self.froze = threading.Event()  # set once freeze_on has frozen a connection
        self.outbound_delay = 0.0  # seconds added to bytes going to the target
        self.inbound_delay = 0.0  # seconds added to bytes coming back
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        while not self._gate.wait(0.1):
            if self._closed.is_set():
                client.close()
                return
        try:
            upstream = socket.create_connection((HOST, self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
        for a, b, outbound in ((client, upstream, True), (upstream, client, False)):
            threading.Thread(target=self._pipe, args=(a, b, outbound), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        """Read ``src``; a sender thread writes to ``dst`` each chunk once its delay has
        passed. Reading doesn't wait for the delay, so latency never caps throughput."""
        chunks: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()
        threading.Thread(target=self._send, args=(chunks, src, dst), daemon=True).start()
        tail = b""  # the end of the bytes before, so a pattern split between two reads is seen
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                pattern = self._freeze_on
                if outbound and pattern:
                    if pattern in tail + data:
                        with self._lock:
                            self._frozen.add(src)
                        self.froze.set()
                    tail = (tail + data)[-(len(pattern) - 1):] if len(pattern) > 1 else b""
                if src in self._frozen:
                    continue  # swallowed: the peer sees a silent connection that is still open
                chunks.put((time.monotonic() + (self.outbound_delay if outbound else self.inbound_delay), data))
        except OSError:
            pass
        finally:
            chunks.put(None)

    def _send(self, chunks: queue.SimpleQueue, src: socket.socket, dst: socket.socket) -> None:
        try:
            while (chunk := chunks.get()) is not None:
                due, data = chunk
                time.sleep(max(0.0, due - time.monotonic()))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                if s not in self._reset:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                s.close()
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
                self._reset.discard(src)
                self._reset.discard(dst)

    def delay(self, outbound: float = 0.0, inbound: float = 0.0) -> None:
        """Add ``outbound`` seconds to bytes going to the target and ``inbound`` to those
        coming back, from now on; 0 and 0 (the default) turns latency off."""
        self.outbound_delay, self.inbound_delay = outbound, inbound

    def freeze(self) -> None:
        """Half-open every current connection: it stays up, but no byte gets through.
        Connections made afterwards flow normally."""
        with self._lock:
            self._frozen.update(self._open)

    def freeze_on(self, pattern: bytes | None) -> None:
        """From now on, a connection that sends ``pattern`` is frozen (see ``freeze``)
        before those bytes get through: with ``b"uploadId="``, no request of a
        multipart upload already started (a part, its completion, its abort) ever
        reaches the server. A client sends a request only once it has the answer to
        the one before, so nothing else of the connection is held back. None stops it;
        connections frozen stay so."""
        self._freeze_on = pattern

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def cut(self, reset: bool = False) -> None:
        """Close every open connection: with a FIN, or with ``reset`` an RST, as a
        crashed peer or a firewall that forgot the connection sends."""
        with self._lock:
            sockets = list(self._open)
            if reset:
                self._reset.update(sockets)
        for s in sockets:
            try:
                if reset:
                    # Linger 0 makes close() send an RST; SHUT_RD only wakes the reader
                    # (it sends nothing), whose sender then closes the socket.
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.shutdown(socket.SHUT_RD)
                else:
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        self.release()
        self.cut()
        self._server.close()
