"""A replicator SIGKILLed in the middle of a multipart copy (issue 10, §4): the next
start aborts the upload it left at the destination, and nobody else's, not even an
upload of the same key; a live process's upload is left alone.

To kill the copy at a known point, the destination sits behind a TCP proxy that
freezes every connection sending ``uploadId=``: the upload is created, and then none
of its parts (nor its completion, nor its abort) reaches the server. Once the proxy has
frozen the first part, the upload exists and is recorded, and nothing of it can end.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_cli
from tests.sidecar import Sidecar, TcpProxy, wait_for

MiB = 1024 * 1024
KEY = "video/raw.bin"
OTHER = "video/theirs.bin"
MULTIPART = {"S3_SYNC_MULTIPART_THRESHOLD": "5MiB", "S3_SYNC_MULTIPART_CHUNK_SIZE": "5MiB"}
# For the runs beside a stuck one: a single PUT, which the proxy lets through.
SINGLE_PUT = {"S3_SYNC_MULTIPART_THRESHOLD": "64MiB"}


def uploads(pair, key: str = KEY) -> set[str]:
    """The destination's incomplete uploads of ``key`` (MinIO lists them by key)."""
    answer = pair.dest.list_multipart_uploads(Bucket=pair.dest_bucket, Prefix=key)
    return {u["UploadId"] for u in answer.get("Uploads", []) if u["Key"] == key}


@pytest.fixture
def proxy(pair):
    proxy = TcpProxy(pair.servers["dest"].port)
    yield proxy
    proxy.close()


@pytest.fixture
def data(pair) -> bytes:
    body = os.urandom(40 * MiB)
    # In one piece at the source: an object uploaded in parts is copied in its parts
    # whatever the threshold, and SINGLE_PUT's runs must get past the frozen proxy.
    pair.source.put_object(pair.source_bucket, KEY, io.BytesIO(body), len(body), part_size=64 * MiB)
    return body


@pytest.fixture
def foreign(pair) -> dict[str, str]:
    """Someone else's incomplete uploads on the same bucket and credentials, started
    before replicator: one of the very key replicator copies, one of another key."""
    return {key: pair.dest.create_multipart_upload(Bucket=pair.dest_bucket, Key=key)["UploadId"]
            for key in (KEY, OTHER)}


def env_through(pair, proxy: TcpProxy, **overrides: str) -> dict[str, str]:
    """The pair's settings with the destination reached through the proxy: the same
    configuration for every process of a test, as a restart would have it."""
    return {**pair.env, "S3_SYNC_ENDPOINT": proxy.endpoint, **overrides}


class Stuck:
    """``python -m replicator reconcile`` stuck in its multipart copy of KEY."""

    def __init__(self, pair, proxy: TcpProxy):
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("S3_SYNC_", "MINIO_", "AWS_"))}
        # A long read timeout: the frozen part never times out into an abort of its own.
        env = {**clean, **env_through(pair, proxy, **MULTIPART, S3_SYNC_MULTIPART_CONCURRENCY="1",
                                      S3_SYNC_READ_TIMEOUT="240", S3_SYNC_LOG_LEVEL="debug")}
        before = uploads(pair)
        proxy.freeze_on(b"uploadId=")
        self.logfile = Path(tempfile.mkstemp(prefix="stuck-", suffix=".log")[1])
        with open(self.logfile, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "replicator", "reconcile"], env=env, cwd=REPO_ROOT,
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: proxy.froze.is_set() or self.proc.poll() is not None, timeout=60,
                 what="the copy's first part to be sent")
        assert proxy.froze.is_set(), f"reconcile exited with {self.proc.returncode}:\n{self.log()}"
        started = uploads(pair) - before
        assert len(started) == 1, started
        self.upload_id = started.pop()

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.logfile.unlink(missing_ok=True)


@pytest.fixture
def stuck(pair, proxy, data, foreign):
    made = Stuck(pair, proxy)
    yield made
    made.close()


def test_a_sigkill_mid_copy_leaves_no_upload_of_replicators_after_the_next_reconcile(pair, proxy, stuck, data,
                                                                                      foreign):
    stuck.kill()
    proxy.freeze_on(None)
    assert uploads(pair) == {foreign[KEY], stuck.upload_id}  # what the audit found

    dry = run_cli(env_through(pair, proxy, **MULTIPART), "reconcile", "--dry-run")
    assert dry.code == 0, dry.output
    assert f"{KEY}: would abort unfinished multipart upload {stuck.upload_id}" in dry.output
    assert stuck.upload_id in uploads(pair)  # a dry run changes nothing

    result = run_cli(env_through(pair, proxy, **MULTIPART), "reconcile")
    assert result.code == 0, result.output
    assert uploads(pair) == {foreign[KEY]}
    assert uploads(pair, OTHER) == {foreign[OTHER]}
    line = next(line for line in result.output.splitlines() if stuck.upload_id in line)
    assert f"{KEY}: aborted unfinished multipart upload {stuck.upload_id}" in line
    assert f"by replicator pid {stuck.proc.pid}" in line
    assert pair.dest_body(KEY) == data  # and the copy itself made, in full

    again = run_cli(env_through(pair, proxy, **MULTIPART), "reconcile")
    assert again.code == 0, again.output
    assert "aborted unfinished multipart upload" not in again.output  # forgotten once aborted


def test_the_next_run_aborts_it_before_it_replicates(pair, proxy, stuck, data, foreign):
    stuck.kill()
    proxy.freeze_on(None)
    sidecar = Sidecar(env_through(pair, proxy), **MULTIPART).start()
    try:
        wait_for(sidecar.ready, timeout=60, what="the sidecar's initial reconcile")
        assert uploads(pair) == {foreign[KEY]}
        assert uploads(pair, OTHER) == {foreign[OTHER]}
        assert f"{KEY}: aborted unfinished multipart upload {stuck.upload_id}" in sidecar.log()
        assert sidecar.metrics()["replicator_orphaned_uploads_aborted_total"] == 1
        assert pair.dest_body(KEY) == data
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait() == 0
    finally:
        sidecar.close()


def test_a_live_process_upload_is_left_alone(pair, proxy, stuck, foreign):
    # The proxy still freezes uploads: these runs copy with one PUT, which gets through.
    beside = run_cli(env_through(pair, proxy, **SINGLE_PUT), "reconcile")
    assert beside.code == 0, beside.output
    assert stuck.proc.poll() is None, stuck.log()  # still running, its upload still in flight
    assert uploads(pair) == {foreign[KEY], stuck.upload_id}
    assert stuck.upload_id not in beside.output

    stuck.kill()
    proxy.freeze_on(None)  # or the abort would be frozen too
    after = run_cli(env_through(pair, proxy, **SINGLE_PUT), "reconcile")
    assert after.code == 0, after.output
    assert uploads(pair) == {foreign[KEY]}
    assert f"aborted unfinished multipart upload {stuck.upload_id}" in after.output


def test_an_unusable_state_dir_warns_once_and_replicates_all_the_same(pair, data, tmp_path):
    (tmp_path / "a-file").write_text("")
    result = run_cli({**pair.env, **MULTIPART, "S3_SYNC_STATE_DIR": str(tmp_path / "a-file" / "state")},
                     "reconcile")
    assert result.code == 0, result.output
    assert pair.dest_body(KEY) == data
    warnings = [line for line in result.output.splitlines() if "can't be cleaned up" in line]
    assert len(warnings) == 1, result.output
    assert "S3_SYNC_STATE_DIR" in warnings[0] and "lifecycle rule" in warnings[0]
