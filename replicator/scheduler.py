"""The reconcile schedule: one at start, then every ``S3_SYNC_INTERVAL`` seconds, plus
one soon after anything that may have lost events (a listener reconnect, a queue
overflow). Runs in one thread, so two reconciles never overlap.

A failed run is retried with exponential backoff from ``S3_SYNC_RETRY_DELAY``, in
the established sidecar's log shape ("Starting sync (attempt 2/3)..."). Unlike the
shell sidecar it doesn't then sit out a whole interval: the backoff keeps growing,
capped at ``S3_SYNC_INTERVAL``, so an outage is repaired soon after it ends. A run
whose deletions a guard refused is not retried early: it needs a person, not a retry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from loguru import logger

from .errors import ReplicatorError
from .model import RunStats
from .retry import Stopped


class Trigger:
    """When a periodic job runs next: at its time, or soon after a request, but never
    sooner than ``min_gap`` after its last start, so a flapping listener can't turn into
    back-to-back runs. The job's thread sleeps in ``next``; the reconcile schedule and the
    metadata sweep each have one."""

    def __init__(self, stop: threading.Event, *, first_at: float, min_gap: float,
                 clock: Callable[[], float] = time.monotonic):
        self.stop = stop
        self.clock = clock
        self.min_gap = min_gap
        self.next_at = first_at
        self.last_start = float("-inf")
        self._wake = threading.Event()
        self._requested: str | None = None
        self._lock = threading.Lock()

    def request(self, reason: str) -> None:
        """A run soon. Requests made while one is pending fold into it."""
        with self._lock:
            if self._requested is None:
                self._requested = reason
        self._wake.set()

    def next(self) -> str | None:
        """Wait until a run is due, and return why: the request's reason, or None for
        one on schedule. Raises Stopped once the stop event is set."""
        while not self.stop.is_set():
            now = self.clock()
            with self._lock:
                requested = self._requested is not None
            if requested:
                self.next_at = min(self.next_at, max(now, self.last_start + self.min_gap))
            if now < self.next_at:
                self._wake.clear()
                # Wake for a request, for the stop event (checked every second), or on time.
                self._wake.wait(min(1.0, self.next_at - now))
                continue
            with self._lock:
                reason, self._requested = self._requested, None
            self.last_start = self.clock()
            return reason
        raise Stopped()

    def after(self, seconds: float) -> None:
        """The next run on schedule: ``seconds`` from now."""
        self.next_at = self.clock() + seconds


class Deferred(Exception):
    """This run belongs to another process (the holder of the reconcile lease, which has
    not reported one yet): try again after the cooldown."""


class Scheduler:
    def __init__(self, reconcile: Callable[[], RunStats], *, interval: float, max_retries: int,
                 retry_delay: float, stop: threading.Event, min_gap: float = 30.0,
                 on_result: Callable[[RunStats | None, BaseException | None], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.reconcile = reconcile
        self.interval = interval
        self.max_retries = max(1, max_retries)
        self.retry_delay = retry_delay
        self.stop = stop
        self.on_result = on_result
        self.clock = clock
        # The initial reconcile now; early (requested) ones never closer together than
        # min_gap, itself never more than the interval.
        self.trigger = Trigger(stop, first_at=clock(), min_gap=min(min_gap, interval), clock=clock)
        self.runs = 0

    def request(self, reason: str) -> None:
        """Ask for a reconcile soon. Requests made while one is pending fold into it."""
        self.trigger.request(reason)

    def run(self) -> None:
        attempt = 1
        while True:
            try:
                reason = self.trigger.next()
            except Stopped:
                return
            try:
                stats, error = self._run_once(attempt, reason)
            except Deferred as deferred:
                logger.info("{}; asking again in {:g} seconds", deferred, self.trigger.min_gap)
                self.trigger.after(self.trigger.min_gap)
                continue
            if self.stop.is_set():
                return
            if self.runs == 1:  # the old sidecar's line after its initial sync, which monitors match
                logger.info("Starting continuous sync loop...")
            if error is None and stats is not None and not stats.failed:
                attempt = 1
                self.trigger.after(self.interval)
                logger.info("Next sync in {:g} seconds...", self.interval)
            elif stats is not None and stats.guard:
                attempt = 1
                self.trigger.after(self.interval)
                logger.error("Deletions refused by a guard; next sync in {:g} seconds", self.interval)
            else:
                # Keep backing off, capped at the interval: after an outage the mirror
                # should catch up minutes after the endpoint returns, not an interval later.
                delay = min(self.interval, self.retry_delay * 2 ** min(attempt - 1, 30))
                attempt += 1
                self.trigger.after(delay)
                if attempt <= self.max_retries:
                    logger.warning("Sync failed; retrying in {:g} seconds (attempt {}/{})",
                                   delay, attempt, self.max_retries)
                else:
                    logger.error("Sync failed {} times; retrying in {:g} seconds", attempt - 1, delay)

    def _run_once(self, attempt: int, reason: str | None) -> tuple[RunStats | None, BaseException | None]:
        why = f" ({reason})" if reason else ""
        logger.info("Starting sync (attempt {}/{}){}...", attempt, max(attempt, self.max_retries), why)
        self.runs += 1
        stats: RunStats | None = None
        error: BaseException | None = None
        try:
            stats = self.reconcile()
        except (Stopped, Deferred) as exc:
            if isinstance(exc, Deferred):
                self.runs -= 1  # none was made
                raise
            return None, None
        except ReplicatorError as exc:
            logger.error("{}", exc)
            error = exc
        except Exception as exc:  # a bug must not end the schedule
            logger.exception("reconcile crashed")
            error = exc
        if self.on_result:
            self.on_result(stats, error)
        return stats, error
