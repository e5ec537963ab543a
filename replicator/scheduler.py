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
        # Early (requested) runs start at least this long after the previous run
        # started: a flapping listener must not turn into back-to-back full reconciles.
        self.min_gap = min(min_gap, interval)
        self.on_result = on_result
        self.clock = clock
        self._wake = threading.Event()
        self._requested: str | None = None
        self._lock = threading.Lock()
        self.runs = 0

    def request(self, reason: str) -> None:
        """Ask for a reconcile soon. Requests made while one is pending fold into it."""
        with self._lock:
            if self._requested is None:
                self._requested = reason
        self._wake.set()

    def run(self) -> None:
        next_at = self.clock()  # the initial reconcile: now
        last_start = float("-inf")
        attempt = 1
        while not self.stop.is_set():
            now = self.clock()
            with self._lock:
                reason = self._requested
            if reason is not None:
                next_at = min(next_at, max(now, last_start + self.min_gap))
            if now < next_at:
                self._wake.clear()
                # Wake for a request, for the stop event (checked every second), or on time.
                self._wake.wait(min(1.0, next_at - now))
                continue
            with self._lock:
                reason, self._requested = self._requested, None
            last_start = self.clock()
            stats, error = self._run_once(attempt, reason)
            if self.stop.is_set():
                return
            if error is None and stats is not None and not stats.failed:
                attempt = 1
                next_at = self.clock() + self.interval
                logger.info("Next sync in {:g} seconds...", self.interval)
            elif stats is not None and stats.guard:
                attempt = 1
                next_at = self.clock() + self.interval
                logger.error("Deletions refused by a guard; next sync in {:g} seconds", self.interval)
            else:
                # Keep backing off, capped at the interval: after an outage the mirror
                # should catch up minutes after the endpoint returns, not an interval later.
                delay = min(self.interval, self.retry_delay * 2 ** min(attempt - 1, 30))
                attempt += 1
                next_at = self.clock() + delay
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
        except Stopped:
            return None, None
        except ReplicatorError as exc:
            logger.error("{}", exc)
            error = exc
        except Exception as exc:  # noqa: BLE001 - a bug must not end the schedule
            logger.exception("reconcile crashed")
            error = exc
        if self.on_result:
            self.on_result(stats, error)
        return stats, error
