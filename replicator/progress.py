"""How far a reconcile has got: one snapshot of its counters, read by the periodic
progress line in the log, by ``/status`` and by the live display on a terminal.

A first sync of millions of objects takes hours; without this the log says nothing
between "Reconciling…" and the summary. The snapshot reads the run's own counters
(``RunStats``) rather than keeping a second set, so the progress can't disagree with
the summary. The rate is the recent one (bytes over the last ``RATE_WINDOW`` seconds),
as rclone shows it: an average since the start would hide a stall for hours.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from loguru import logger

from .model import RunStats
from .observability.context import inherit

RATE_WINDOW = 30.0  # seconds


@dataclass(frozen=True)
class Snapshot:
    started: float  # epoch seconds
    elapsed: float
    source_listed: int
    dest_listed: int
    listed: bool  # both listings done: the plan's size is known
    compared: int
    to_copy: int
    bytes_to_copy: int
    copied: int  # copied and updated
    bytes_copied: int
    failed: int
    to_delete: int
    rate: float  # bytes per second, recently
    eta: float | None  # seconds; None until the plan's size is known and bytes move

    def line(self) -> str:
        """The log's progress line."""
        listing = "" if self.listed else ", listing"
        eta = f", ETA {duration(self.eta)}" if self.eta is not None else ""
        return (f"Progress: listed {self.source_listed:,} source / {self.dest_listed:,} destination{listing}; "
                f"compared {self.compared:,}; copied {self.copied:,} of {self.to_copy:,} "
                f"({size(self.bytes_copied)} of {size(self.bytes_to_copy)}), {self.failed:,} failed, "
                f"{self.to_delete:,} to delete; {size(self.rate)}/s{eta}; {duration(self.elapsed)} elapsed")

    def as_status(self) -> dict[str, object]:
        """For ``/status``: the counters, with times as ISO-8601 UTC strings."""
        return {
            "started_at": iso(self.started), "elapsed_seconds": round(self.elapsed, 3),
            "listed": {"source": self.source_listed, "destination": self.dest_listed, "done": self.listed},
            "compared": self.compared,
            "to_copy": {"objects": self.to_copy, "bytes": self.bytes_to_copy},
            "copied": {"objects": self.copied, "bytes": self.bytes_copied},
            "failed": self.failed, "to_delete": self.to_delete,
            "rate_bytes_per_second": round(self.rate, 1),
            "eta_seconds": round(self.eta, 1) if self.eta is not None else None,
        }


class Progress:
    """The live view of one run's ``RunStats``, and what only progress needs: the pairs
    the diff has compared and the copies it has found (with their bytes), whether done
    yet or not. Counters are read without the run's lock: each is an int one thread
    writes, so a snapshot is at worst a moment old."""

    def __init__(self, stats: RunStats, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.stats = stats
        self.clock = clock
        self.started_mono = clock()
        self.started = wall()
        self.listed = False
        self.done = False  # the run has ended: this is its last state
        self.compared = 0
        self.to_copy = 0
        self.bytes_to_copy = 0
        self._samples: deque[tuple[float, int]] = deque([(self.started_mono, 0)])
        self._lock = threading.Lock()

    def found_copy(self, size: int) -> None:
        self.to_copy += 1
        self.bytes_to_copy += size

    def snapshot(self) -> Snapshot:
        s = self.stats
        now = self.clock()
        copied_bytes = s.bytes_copied
        with self._lock:
            self._samples.append((now, copied_bytes))
            while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_WINDOW:
                self._samples.popleft()
            since, bytes_then = self._samples[0]
        rate = (copied_bytes - bytes_then) / (now - since) if now > since else 0.0
        left = max(0, self.bytes_to_copy - copied_bytes)
        eta: float | None = None
        if self.listed:
            eta = 0.0 if not left else left / rate if rate > 0 else None
        return Snapshot(started=self.started, elapsed=now - self.started_mono, source_listed=s.source_objects,
                        dest_listed=s.dest_objects, listed=self.listed, compared=self.compared,
                        to_copy=self.to_copy, bytes_to_copy=self.bytes_to_copy, copied=s.copied + s.updated,
                        bytes_copied=copied_bytes,
                        failed=s.failed, to_delete=s.planned_deletes, rate=rate, eta=eta)


class Reporter:
    """Logs ``progress``'s line every ``interval`` seconds while its ``with`` block runs
    (none with an interval of 0)."""

    def __init__(self, progress: Progress, interval: float):
        self.progress = progress
        self.interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=inherit(self._run), name="progress", daemon=True)

    def __enter__(self) -> Reporter:
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            snapshot = self.progress.snapshot()
            logger.info("{}", snapshot.line(), event="progress", trigger="reconcile", **snapshot.as_status())


def iso(epoch: float | None) -> str | None:
    """An epoch time as ISO-8601 UTC, to the millisecond: ``2026-12-04T18:30:00.123Z``."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def size(n: float) -> str:
    unit = "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            break
        n, unit = n / 1024, larger
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
