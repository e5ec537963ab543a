"""A real forward proxy for tests: Debian's tinyproxy on 127.0.0.1, a free port, a
temp dir. Its log names every request it forwarded (``GET http://host:port/path``, and
``CONNECT host:port`` for the tunnels HTTPS goes through), which is how a test proves a
request went through it rather than around it."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers import HOST, find_tool, free_port


class Tinyproxy:
    def __init__(self, *, refuse: bool = False):
        """``refuse``: answer every client 403 Access denied, as a proxy whose ACL
        doesn't list this host would."""
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tinyproxy-"))
        self.logfile = self.dir / "tinyproxy.log"
        allowed = "192.0.2.1" if refuse else HOST  # TEST-NET-1: nobody
        # No ConnectPort line: CONNECT is allowed to any port (the servers' are random).
        (self.dir / "tinyproxy.conf").write_text(
            f"Port {self.port}\nListen {HOST}\nTimeout 120\nLogFile \"{self.logfile}\"\nLogLevel Connect\n"
            f"MaxClients 200\nAllow {allowed}\nPidFile \"{self.dir / 'tinyproxy.pid'}\"\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Tinyproxy:
        self.proc = subprocess.Popen([find_tool("tinyproxy"), "-d", "-c", str(self.dir / "tinyproxy.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"tinyproxy did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def requests(self) -> list[str]:
        """The request lines it received: ``GET http://127.0.0.1:9000/bucket?... HTTP/1.1``."""
        return re.findall(r"Request \(file descriptor \d+\): (.+)", self.log())

    def to_port(self, port: int) -> list[str]:
        """The requests it received for a server on ``port``."""
        return [r for r in self.requests() if f"{HOST}:{port}" in r.split(" ")[1]]

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
