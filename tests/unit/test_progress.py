"""The progress snapshot of a reconcile: counters, recent rate, ETA, and how the log,
``/status`` and the terminal show them. Pure: a fake clock drives it."""

from __future__ import annotations

import pytest

from replicator.model import RunStats
from replicator.progress import RATE_WINDOW, Progress, duration, iso, size


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress_of(stats: RunStats, *, compared: int = 0, to_copy: int = 0,
                bytes_to_copy: int = 0) -> tuple[Progress, Clock]:
    clock = Clock()
    progress = Progress(stats, clock=clock, wall=lambda: 1_700_000_000.0)
    progress.compared, progress.to_copy, progress.bytes_to_copy = compared, to_copy, bytes_to_copy
    return progress, clock


def test_a_snapshot_reads_the_runs_own_counters():
    stats = RunStats(source_objects=1200, dest_objects=900, copied=100, updated=20, bytes_copied=1 << 20, failed=2,
                     planned_deletes=5)
    progress, clock = progress_of(stats, compared=950, to_copy=300, bytes_to_copy=3 << 20)
    clock.now += 10
    s = progress.snapshot()
    assert (s.source_listed, s.dest_listed, s.compared, s.to_copy, s.copied, s.failed, s.to_delete) == (
        1200, 900, 950, 300, 120, 2, 5)
    assert (s.bytes_to_copy, s.bytes_copied, s.elapsed) == (3 << 20, 1 << 20, 10)


def test_no_eta_until_both_listings_are_done():
    stats = RunStats()
    progress, clock = progress_of(stats, to_copy=10, bytes_to_copy=1000)
    clock.now += 1
    stats.bytes_copied = 100
    assert progress.snapshot().eta is None  # more to copy may still be found
    progress.listed = True
    clock.now += 1
    stats.bytes_copied = 200
    s = progress.snapshot()
    assert s.rate == pytest.approx(100.0)  # 200 bytes in 2 s
    assert s.eta == pytest.approx(8.0)  # 800 bytes left at 100 B/s


def test_eta_is_zero_when_everything_found_is_copied_and_unknown_while_nothing_moves():
    stats = RunStats()
    progress, clock = progress_of(stats, to_copy=1, bytes_to_copy=1000)
    progress.listed = True
    clock.now += 5
    assert progress.snapshot().eta is None  # nothing copied yet: no rate to go by
    stats.bytes_copied = 1000
    clock.now += 5
    assert progress.snapshot().eta == 0.0


def test_the_rate_is_the_recent_one_not_the_average_since_the_start():
    stats = RunStats()
    progress, clock = progress_of(stats, bytes_to_copy=10**9)
    for _ in range(10):  # 100 s at 1 MB/s, sampled every 10 s
        clock.now += 10
        stats.bytes_copied += 10_000_000
        progress.snapshot()
    for _ in range(6):  # then a stall of 60 s: the rate falls to 0 within the window
        clock.now += 10
        last = progress.snapshot()
    assert last.rate == 0.0
    assert RATE_WINDOW < 60


def test_the_log_line_names_every_counter():
    stats = RunStats(source_objects=12345, dest_objects=12000, copied=300, bytes_copied=2 << 20, failed=1,
                     planned_deletes=7)
    progress, clock = progress_of(stats, compared=11900, to_copy=1200, bytes_to_copy=8 << 20)
    clock.now += 65
    line = progress.snapshot().line()
    assert line.startswith("Progress: listed 12,345 source / 12,000 destination, listing; compared 11,900; "
                           "copied 300 of 1,200 (2.0 MiB of 8.0 MiB), 1 failed, 7 to delete; ")
    assert line.endswith("1m05s elapsed") and "ETA" not in line
    progress.listed = True
    assert "listing" not in progress.snapshot().line()


def test_status_gives_times_as_iso_utc_strings():
    progress, clock = progress_of(RunStats(copied=1, bytes_copied=10), to_copy=2, bytes_to_copy=20)
    clock.now += 2
    status = progress.snapshot().as_status()
    assert status["started_at"] == "2023-11-14T22:13:20.000Z"
    assert status["to_copy"] == {"objects": 2, "bytes": 20} and status["copied"] == {"objects": 1, "bytes": 10}
    assert status["listed"] == {"source": 0, "destination": 0, "done": False} and status["eta_seconds"] is None


@pytest.mark.parametrize(("value", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                             (5 * 1024**3 // 2, "2.5 GiB"), (3 * 1024**5, "3072.0 TiB")])
def test_size(value, text):
    assert size(value) == text


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3600, "1h00m"),
                                               (36000 + 125, "10h02m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_iso_of_none_is_none():
    assert iso(None) is None
