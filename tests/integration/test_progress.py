"""Progress of a long reconcile, against real servers: the log's progress lines,
``/status``'s ``reconcile.in_progress``, and the live display on a terminal.

The destination sits behind a TCP proxy that adds a few milliseconds to each
direction, so that a reconcile of a couple of thousand small objects lasts several
seconds on any machine, long enough for progress to be reported more than once."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time
from itertools import pairwise

import pytest
from minio.commonconfig import SnowballObject

from tests.conftest import REPO_ROOT, run_cli
from tests.servers import replicator_environ
from tests.sidecar import TcpProxy, wait_for

OBJECTS = 2000
PROGRESS = re.compile(r"^\[[\d-]+ [\d:]+\] Progress: listed ([\d,]+) source / ([\d,]+) destination.*; "
                      r"copied ([\d,]+) of ([\d,]+) ", re.M)
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def slow_pair(pair, tmp_path):
    """``pair`` (MinIO to MinIO) with OBJECTS small objects at the source, and its
    destination reached through a proxy adding 4 ms each way."""
    chunk = [SnowballObject(f"d{i // 500}/o{i:05d}", data=io.BytesIO(b"x" * (100 + i % 50)), length=100 + i % 50)
             for i in range(OBJECTS)]
    pair.source.upload_snowball_objects(pair.source_bucket, chunk, staging_filename=str(tmp_path / "s.tar"))
    proxy = TcpProxy(pair.servers["dest"].port)
    proxy.outbound_delay = proxy.inbound_delay = 0.004
    env = {**pair.env, "S3_SYNC_ENDPOINT": proxy.endpoint, "S3_SYNC_WORKERS": "4", "S3_SYNC_PROGRESS_INTERVAL": "1"}
    yield pair, env
    proxy.close()


def numbers(match: re.Match) -> tuple[int, ...]:
    return tuple(int(group.replace(",", "")) for group in match.groups())


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_long_reconcile_logs_progress_lines_as_it_goes(slow_pair):
    _, env = slow_pair
    result = run_cli(env, "reconcile")
    assert result.code == 0, result.stderr
    lines = list(PROGRESS.finditer(result.stderr))
    assert len(lines) >= 2, result.stderr
    counts = [numbers(m) for m in lines]
    assert all(all(b >= a for a, b in zip(earlier, later, strict=True)) for earlier, later in pairwise(counts)), counts
    assert counts[-1][2] > counts[0][2]  # copies went on between two lines
    assert all(listed <= OBJECTS and copied <= to_copy for listed, _, copied, to_copy in counts), counts
    assert f"✓ Sync completed successfully: {OBJECTS} copied" in result.stderr
    # The summary comes after the last progress line, and nothing reports progress after it.
    assert result.stderr.rindex("Progress:") < result.stderr.index("✓ Sync completed successfully")


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_progress_lines_can_be_turned_off(pair):
    pair.source.put_object(pair.source_bucket, "a", io.BytesIO(b"1"), 1)
    result = run_cli({**pair.env, "S3_SYNC_PROGRESS_INTERVAL": "0"}, "reconcile")
    assert result.code == 0 and "Progress:" not in result.stderr


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_status_shows_the_reconcile_in_progress(slow_pair, sidecars):
    _, env = slow_pair
    sidecar = sidecars(env)
    running = wait_for(lambda: (sidecar.status()["reconcile"]["in_progress"] or {}).get("copied", {}).get("objects"),
                       timeout=60, what="a reconcile in progress with copies done")
    assert 0 < running < OBJECTS
    status = sidecar.status()["reconcile"]
    now = status["in_progress"]
    if now is not None:  # it may have ended in between
        assert ISO_UTC.match(now["started_at"]), now
        assert now["listed"]["source"] > 0 and now["to_copy"]["objects"] >= now["copied"]["objects"]
        assert set(now) >= {"compared", "failed", "to_delete", "rate_bytes_per_second", "eta_seconds",
                            "elapsed_seconds"}
    done = wait_for(lambda: sidecar.status()["reconcile"]["last"], timeout=120, what="the reconcile's end")
    status = sidecar.status()["reconcile"]
    assert status["in_progress"] is None
    assert done["ok"] and done["copied"] == OBJECTS
    assert ISO_UTC.match(done["finished_at"]) and ISO_UTC.match(status["last_success"])


def run_on_a_terminal(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str]:
    """``python -m replicator *args`` with stdout and stderr on a pseudo-terminal, as a
    person at a shell runs it. Returns the exit code and all it wrote."""
    leader, follower = os.openpty()
    os.set_blocking(leader, False)
    proc = subprocess.Popen([sys.executable, "-m", "replicator", *args], cwd=REPO_ROOT,
                            env={**replicator_environ(), "COLUMNS": "120", "TERM": "xterm", **env},
                            stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            if not data and proc.poll() is not None:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    code = proc.wait(timeout=10)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_terminal_gets_a_live_display_and_no_progress_lines(slow_pair, tmp_path):
    _, env = slow_pair
    env = {**env, "S3_SYNC_STATE_DIR": str(tmp_path / "state")}
    code, out = run_on_a_terminal(env, "reconcile")
    assert code == 0, out
    assert "Reconciling" in out and "Listed" in out and "Elapsed" in out, out
    assert f"{OBJECTS:,} / {OBJECTS:,} objects" in out  # the last frame: everything found was copied
    assert "\x1b[" in out  # drawn in place with the terminal's escape sequences
    assert "Progress:" not in out  # the display replaces the log's lines
    assert "✓ Sync completed successfully" in out


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_no_progress_gives_a_terminal_the_plain_lines(slow_pair, tmp_path):
    _, env = slow_pair
    env = {**env, "S3_SYNC_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1"}
    code, out = run_on_a_terminal(env, "reconcile", "--no-progress")
    assert code == 0, out
    assert "Elapsed" not in out and len(re.findall(r"Progress: listed", out)) >= 2, out
    assert "\x1b[" not in out  # NO_COLOR: plain text, even on a terminal
