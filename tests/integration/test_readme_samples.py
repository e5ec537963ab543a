"""The README's sample logs are what the code prints today.

Each sample block in README.md follows a ``<!-- sample: NAME ... -->`` comment. Its test
makes the same run against real servers and compares the lines, once both are
normalised: timestamps, endpoints, the test's bucket names and measured figures
(durations, rates, sizes in MiB) vary from run to run; every word and every count is
compared as printed."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import replicator_environ
from tests.sidecar import wait_for

ROOT = Path(__file__).resolve().parents[2]
LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ")


def readme_sample(name: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- sample: {name}\b[^>]*-->\n```\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no sample block named {name}"
    return m.group(1).splitlines()


def normalised(lines: list[str], buckets: dict[str, str] | None = None) -> list[str]:
    out = []
    for line in lines:
        if not LOG_LINE.match(line):
            continue
        line = LOG_LINE.sub("[TS] ", line)
        line = re.sub(r"https?://[\w.:-]+", "<endpoint>", line)
        for ours, shown in (buckets or {}).items():
            line = line.replace(ours, shown)
        line = re.sub(r"\d+\.\d+(?=s\b| MiB)", "<n>", line)  # measured: durations, rates, sizes
        line = re.sub(r":\d{2,5} \(/healthz", ":<port> (/healthz", line)
        out.append(line)
    return out


def test_the_quickstart_sample_is_its_log():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "quickstart.py")], cwd=ROOT,
                          env=replicator_environ(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert normalised(readme_sample("quickstart")) == normalised(proc.stderr.splitlines()), proc.stderr


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_the_start_sample_is_a_starts_log(pair, sidecars):
    pair.source.put_object(pair.source_bucket, "relic.txt", io.BytesIO(b"old"), 3)
    # The sample's settings, where they differ from the tests' defaults.
    sidecar = sidecars(pair.env, S3_SYNC_INTERVAL="1800", S3_SYNC_MAX_RETRIES="3", S3_SYNC_RETRY_DELAY="60",
                       S3_SYNC_LOG_LEVEL="info", S3_SYNC_REGION="us-east-1")
    wait_for(lambda: "Next sync in" in sidecar.log(), timeout=60, what="the initial sync's end")
    buckets = {pair.dest_bucket: "relics-backup", pair.source_bucket: "relics"}
    # The metadata sweep starts in a thread of its own after the initial reconcile, so its
    # lines fall before or after the schedule's; the sample leaves them out.
    actual = [line for line in normalised(sidecar.log().splitlines(), buckets) if "etadata sweep" not in line]
    actual = actual[:next(i for i, line in enumerate(actual) if "Next sync in" in line) + 1]
    assert normalised(readme_sample("run")) == actual, "\n".join(actual)
