"""Event workers: take a key off the queue and converge it (converge.py: the same
one operation per key the reconcile uses), then say what happened. Converging reads
the source as it is *now*, which makes the order of events irrelevant: a delete event
for a key uploaded again since copies it, and a create event for a key deleted since
deletes it (when S3_SYNC_DELETE allows).

A failure after the retries is logged, counted and left for the next reconcile; it is
never dropped silently. Metadata-only changes (tags, retention, legal hold, and the
attributes any write may change) are the exception, because a reconcile can't see
them: one that failed for a reason that can pass (the destination down, a timeout)
waits in the ``WaitingRoom`` and goes back on the queue after the next reconcile that
completes; one the destination refused for good is logged and counted as final.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from loguru import logger

from .converge import Converger, Hint, Outcome, Result
from .copier import Abandoned, abandoning
from .errors import PermanentError, ReplicatorError, log_fields
from .observability import metrics
from .observability.context import inherit
from .retry import Stopped
from .workqueue import Closed, KeyedQueue, WorkItem, hand_back, lapsed, settle


class KeyLocks(Protocol):
    """Per-key locks across processes (S3_SYNC_EVENTS=jetstream: keylocks.py)."""

    retry_after: float  # seconds a message waits whose key another process holds

    def take(self, key: str) -> bool:
        """Hold ``key``'s lock (at once if held already); False if another process does."""

    def release(self, key: str) -> None:
        """Give ``key``'s lock up, if held; without waiting."""


class WaitingRoom:
    """Metadata changes waiting for a reconcile to show the destination answers again:
    per key, like the queue, and bounded by the queue's size."""

    def __init__(self, queue: KeyedQueue):
        self.queue = queue
        self.lost = 0  # metadata changes given up: past the bound, or cut by shutdown
        self._waiting: dict[str, WorkItem] = {}
        self._lock = threading.Lock()

    def keep(self, item: WorkItem, why: object) -> None:
        """Hold the item's metadata change (tags, retention, legal hold, or the
        attributes any write may change: drift.py) until the next reconcile completes
        (``retry``): a worker failed on it, or the listener couldn't queue it. Its
        content, if that changed too, needs nothing from here: the reconcile repairs
        it, so what is kept is the metadata change only. Past the bound it is left to
        the next metadata sweep, and said to be."""
        if not item.metadata:
            return
        item = replace(item, content=False, removed=False, kept=True)
        with self._lock:
            full = item.key not in self._waiting and len(self._waiting) >= self.queue.maxsize
            if not full:
                self._hold(item)
            held = len(self._waiting)
        if not full:
            logger.error("{}: {}; its metadata is checked again after the next reconcile", item.key, why)
            return
        lost = self.count_lost()
        if lost == 1 or lost % 1000 == 0:
            logger.error("{}: {}; {} others already wait for the next reconcile, so a metadata change in it waits "
                         "for the next metadata sweep ({} so far)", item.key, why, held, lost)

    def retry(self) -> None:
        """Queue the waiting refreshes again: a reconcile just completed, so the
        destination answers. What the queue can't take now waits for the next one."""
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        queued = 0
        for item in waiting.values():
            if not self.queue.put(item, timeout=0):
                with self._lock:
                    self._hold(item)
                continue
            queued += 1
        if queued:
            logger.info("{} tag, retention or legal-hold refreshes queued again after the reconcile", queued)

    def _hold(self, item: WorkItem) -> None:
        """Fold ``item`` into the one waiting for its key (the caller holds the lock)."""
        other = self._waiting.get(item.key)
        self._waiting[item.key] = other.merge(item) if other else item

    def count_lost(self) -> int:
        with self._lock:
            self.lost += 1
            return self.lost

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)


class Workers:
    def __init__(self, converger: Converger, queue: KeyedQueue, *, threads: int, delete: bool,
                 on_failure: Callable[[str], None] = lambda reason: None):
        self.converger = converger
        self.queue = queue
        self.threads = threads
        self.delete = delete  # mirror deletions (S3_SYNC_DELETE)
        # Asks for an early reconcile: "left for the next reconcile" shouldn't mean an interval.
        self.on_failure = on_failure
        self.waiting_room = WaitingRoom(queue)
        # With several processes on one consumer: a durable message's key is worked on
        # by one of them at a time (set before start, in jetstream mode; None: listen mode).
        self.locks: KeyLocks | None = None
        self.failed = 0
        self._counts_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.threads):
            thread = threading.Thread(target=inherit(self._loop), name=f"event-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, deadline: float) -> bool:
        """Wait until ``deadline`` (monotonic); True if every worker finished."""
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _loop(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=0.5)
            except Closed:
                return
            except Exception:  # a dead worker would silently stop replication
                logger.exception("event worker: the queue failed; going on")
                self.on_failure("work queue error")
                time.sleep(0.5)
                continue
            if item is None:
                continue
            if not self._exclusive(item):
                continue
            converged: bool | None = False
            why: str | None = None
            try:
                # A message NATS has heard nothing of for its ack wait may be another
                # process's by now: a multipart copy for it stops (workqueue.Receipt.lapsed).
                with abandoning(functools.partial(lapsed, item)):
                    converged, why = self.handle(item)
            finally:
                if converged is not None:  # None: queued again, its messages with it
                    settle(item, converged, why)
                # Kept while a newer event for the key waits here: it folds into this
                # work. Released before the key is, so a worker taking it next asks after.
                if self.locks is not None and not self.queue.waiting(item.key):
                    self.locks.release(item.key)
                self.queue.done(item.key)

    def _exclusive(self, item: WorkItem) -> bool:
        """Whether this process may work on a durable item's key now. Not while another
        holds its lock: its messages are handed back, to come again in a moment (the
        holder re-reads the source when it is done, so nothing waits on them meanwhile)."""
        if self.locks is None or not item.receipts or self.locks.take(item.key):
            return True
        self.queue.done(item.key)
        hand_back(item, self.locks.retry_after)
        metrics.events_deferred.inc(len(item.receipts))
        logger.debug("{}: another replicator process works on it; its events come again in {:g}s", item.key,
                     self.locks.retry_after)
        return False

    def handle(self, item: WorkItem) -> tuple[bool | None, str | None]:
        """``process``, with a failure logged, counted and sent where it can be repaired:
        the next reconcile for an object's bytes, the waiting room for a metadata change.
        Whether the key converged (None if it was queued again), and why not where it
        failed (a durable message's dead letter says it; None for a stop, no failure of
        the key's)."""
        try:
            converged = self.process(item)
            return converged, None if converged is not False else "changed during every copy attempt"
        except Abandoned as error:
            logger.warning("{}: NATS heard nothing of its message for the ack wait (cut off?), so another process "
                           "may copy it now: {}, upload aborted; the message comes again", item.key, error)
        except Stopped:
            if not item.metadata:
                logger.info("{}: interrupted by shutdown; left for the next reconcile", item.key)
            else:
                self.waiting_room.count_lost()
                logger.warning("{}: interrupted by shutdown; a metadata change in it is left for the next "
                               "metadata sweep (a reconcile can't see it){}", item.key,
                               "; its content is left for the next reconcile" if item.content else "")
        except ReplicatorError as error:
            self._count_failure(metrics.failure_reason(error))
            if not item.metadata:
                logger.error("{}: {}; left for the next reconcile", item.key, error, event="failed", trigger="event",
                             **{**log_fields(error), "key": item.key})
            elif not isinstance(error, PermanentError):
                self.waiting_room.keep(item, error)
                if item.kept:
                    # It failed again after a reconcile: wait for the scheduled ones,
                    # rather than ask for a full reconcile every cooldown for its sake.
                    return False, str(error)
            elif item.content:
                logger.error("{}: {}; the object is left for the next reconcile, a metadata change in it for "
                             "the next metadata sweep", item.key, error)
            else:
                logger.error("{}: {}; refused for good (a reconcile can't see metadata changes; the next "
                             "metadata sweep tries again)", item.key, error)
                return True, None  # nothing a reconcile, or a delivery again, could repair
            self.on_failure("event copies failed")
            return False, str(error)
        except Exception as error:  # a bug must not kill the worker
            self._count_failure(type(error).__name__)
            logger.exception("{}: unexpected error; left for the next reconcile", item.key)
            self.on_failure("event copies failed")
            return False, f"unexpected error: {type(error).__name__}"
        return False, None

    def _count_failure(self, reason: str) -> None:
        with self._counts_lock:
            self.failed += 1
        metrics.failures.labels(reason).inc()

    def process(self, item: WorkItem) -> bool | None:
        hint = Hint(content=item.content, tags=item.tags, retention=item.retention, legal_hold=item.legal_hold,
                    attributes=item.attributes, removed=item.removed, size=item.size, may_delete=self.delete)
        started = time.monotonic()
        result = self.converger.converge(item.key, hint)
        if result.outcome is Outcome.CHANGED:
            # Rewritten during every attempt. The newest write's event is usually queued
            # already (the key is held, so it waits); putting the item back makes sure
            # the key is tried again when it wasn't, and costs nothing when it was.
            if self.queue.put(item, timeout=0):
                logger.info("{}: {}; queued again", item.key, result.detail)
                return None
            logger.warning("{}: {}; not queued again (the queue is full or closing), so left for the next "
                           "reconcile", item.key, result.detail)
            self.on_failure("a key changed during every copy attempt")
            return False
        if result.outcome is Outcome.COPIED:
            metrics.objects_copied.labels("event").inc()
        self._done(item, result, time.monotonic() - started)
        return True

    @staticmethod
    def _done(item: WorkItem, result: Result, duration: float) -> None:
        if result.outcome is Outcome.EXCLUDED:
            return  # not the mirror's key: converge logged it
        fields = {"event": result.outcome.name.lower(), "key": item.key, "trigger": "event",
                  "duration_s": round(duration, 3)}
        if result.outcome is Outcome.GONE:
            logger.debug("{}: gone from the source; kept at the destination", item.key, **fields)
            return
        lag = max(0.0, time.time() - item.event_time)
        metrics.replication_lag.observe(lag)
        what = f"{result.outcome.value} ({result.detail})" if result.detail else result.outcome.value
        logger.debug("{}: {} {:.3f}s after the event", item.key, what, lag, bytes=result.size,
                     lag_s=round(lag, 3), **fields)
