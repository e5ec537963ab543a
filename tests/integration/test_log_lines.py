"""The sidecar's text log keeps the old ``mc mirror`` sidecar's lines, which users'
monitors match on, in its shape: ``[YYYY-MM-DD HH:MM:SS] message``.

tests/data/old-sidecar-example.log is the example output from the old sidecar's
README, verbatim. A real ``run`` against real MinIO servers must print each of the
lines below as the old sidecar did (with our bucket names for its ``relics`` and
``relics-backup``), in the same order, and may add counts after them."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from tests.sidecar import wait_for

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "old-sidecar-example.log"
LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] (.*)$")
# The old sidecar's lines of the sync itself, in their order. (Its alias lines are mc's
# own set-up, which replicator has no equivalent of.)
KEPT = [
    "Checking bucket accessibility...",
    "✓ Source bucket accessible: relics",
    "✓ Destination bucket accessible: relics-backup",
    "Performing initial sync...",
    "Starting sync (attempt 1/3)...",
    "✓ Sync completed successfully",
    "Starting continuous sync loop...",
    "Next sync in 1800 seconds...",
]
# Its configuration block: the same labels, aligned the same way.
CONFIGURATION = ["Configuration:", "  Source:      ", "  Destination: ", "  Interval:    1800 seconds",
                 "  Max Retries: 3"]


def example_messages() -> list[str]:
    return [m.group(2) for line in EXAMPLE.read_text().splitlines() if (m := LINE.match(line))]


def test_the_example_holds_the_lines_we_keep():
    messages = example_messages()
    assert [m for m in messages if m in KEPT] == KEPT
    text = EXAMPLE.read_text()
    assert all(label in text for label in CONFIGURATION)


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_run_prints_the_old_sidecars_lines_in_its_shape(pair, sidecars):
    pair.source.put_object(pair.source_bucket, "relic.txt", io.BytesIO(b"old"), 3)
    sidecar = sidecars(pair.env, S3_SYNC_INTERVAL="1800", S3_SYNC_MAX_RETRIES="3", S3_SYNC_LOG_LEVEL="info")
    wait_for(lambda: "Next sync in" in sidecar.log(), timeout=60, what="the initial sync's end")
    lines = sidecar.log().splitlines()
    messages = [m.group(2) for line in lines if (m := LINE.match(line))]
    ours = {"relics": pair.source_bucket, "relics-backup": pair.dest_bucket}
    wanted = [re.sub(r"(?<=: )relics(-backup)?$", lambda m: ours[m.group(0)], line) for line in KEPT]
    # Each kept line, in order, as a whole message or followed by ": <counts>".
    position = 0
    for want in wanted:
        found = next((i for i in range(position, len(messages))
                      if messages[i] == want or messages[i].startswith(want + ": ")), None)
        assert found is not None, f"{want!r} not found after line {position}:\n" + "\n".join(messages)
        position = found + 1
    assert any(m.startswith("✓ Sync completed successfully: 1 copied, ") for m in messages)
    for label in CONFIGURATION:
        assert any(m.startswith(label) for m in messages), label
    # Every line of the log is in the old shape: a timestamp, then the message.
    assert all(LINE.match(line) for line in lines if line), [line for line in lines if line and not LINE.match(line)]
