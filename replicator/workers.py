"""Event workers: take a key off the queue, look at the source as it is *now*, and
make the destination match, with the same copier the reconcile uses.

Acting on the source's current state rather than on the event makes the order of
events irrelevant: a delete event for a key that was re-uploaded since copies it,
and a create event for a key deleted since deletes it (when S3_SYNC_DELETE allows).
A failure after the copier's retries is logged, counted and left for the next
reconcile; it is never dropped silently. Metadata-only changes (tags, retention,
legal hold) are the exception, because a reconcile can't see them: one that failed
for a reason that can pass (the destination down, a timeout) is kept (``keep``) and
goes back on the queue after the next reconcile that completes; one the destination
refused for good is logged and counted as final (see ``_metadata_refused``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from loguru import logger

from . import drift
from .app import App
from .errors import NotFound, PermanentError, ReplicatorError
from .observability import metrics
from .retry import Stopped
from .workqueue import Closed, KeyedQueue, WorkItem


class Workers:
    def __init__(self, app: App, queue: KeyedQueue, on_failure: Callable[[str], None] = lambda reason: None):
        self.app = app
        self.queue = queue
        # Asks for an early reconcile: "left for the next reconcile" shouldn't mean an interval.
        self.on_failure = on_failure
        self.failed = 0
        self.lost = 0  # metadata changes given up: past the bound of those kept, or cut by shutdown
        self._counts_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Metadata refreshes waiting for a reconcile to show the destination answers
        # again; per key, like the queue, and bounded by the queue's size.
        self._waiting: dict[str, WorkItem] = {}
        self._waiting_lock = threading.Lock()

    def start(self) -> None:
        for n in range(self.app.settings.workers):
            thread = threading.Thread(target=self._loop, name=f"event-worker-{n}", daemon=True)
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
            except Exception:  # noqa: BLE001 - a dead worker would silently stop replication
                logger.exception("event worker: the queue failed; going on")
                self.on_failure("work queue error")
                time.sleep(0.5)
                continue
            if item is None:
                continue
            try:
                self.handle(item)
            finally:
                self.queue.done(item.key)

    def handle(self, item: WorkItem) -> None:
        """``process``, with a failure logged, counted and sent where it can be repaired:
        the next reconcile for an object's bytes, ``keep`` for a metadata change."""
        try:
            self.process(item)
        except Stopped:
            if not item.metadata:
                logger.info("{}: interrupted by shutdown; left for the next reconcile", item.key)
            else:
                self._count_lost()
                logger.warning("{}: interrupted by shutdown; a metadata change in it is left for the next "
                               "metadata sweep (a reconcile can't see it){}", item.key,
                               "; its content is left for the next reconcile" if item.content else "")
        except ReplicatorError as error:
            self._count_failure(metrics.failure_reason(error))
            if not item.metadata:
                logger.error("{}: {}; left for the next reconcile", item.key, error)
            elif not isinstance(error, PermanentError):
                self.keep(item, error)
                if item.kept:
                    # It failed again after a reconcile: wait for the scheduled ones,
                    # rather than ask for a full reconcile every cooldown for its sake.
                    return
            elif item.content:
                logger.error("{}: {}; the object is left for the next reconcile, a metadata change in it for "
                             "the next metadata sweep", item.key, error)
            else:
                logger.error("{}: {}; refused for good (a reconcile can't see metadata changes; the next "
                             "metadata sweep tries again)", item.key, error)
                return  # nothing a reconcile could repair
            self.on_failure("event copies failed")
        except Exception as error:  # noqa: BLE001 - a bug must not kill the worker
            self._count_failure(type(error).__name__)
            logger.exception("{}: unexpected error; left for the next reconcile", item.key)
            self.on_failure("event copies failed")

    def _count_failure(self, reason: str) -> None:
        with self._counts_lock:
            self.failed += 1
        metrics.failures.labels(reason).inc()

    def _count_lost(self) -> int:
        with self._counts_lock:
            self.lost += 1
            return self.lost

    def keep(self, item: WorkItem, why: object) -> None:
        """Hold the item's metadata change (tags, retention, legal hold, or the
        attributes any write may change: drift.py) until the next reconcile completes
        (``retry_waiting``): a worker failed on it, or the listener couldn't queue it.
        Its content, if that changed too, needs nothing from here: the reconcile repairs
        it, so what is kept is the metadata change only. Held per key and bounded by the
        queue's size; past that bound it is left to the next metadata sweep, and said
        to be."""
        if not item.metadata:
            return
        item = replace(item, content=False, removed=False, kept=True)
        with self._waiting_lock:
            full = item.key not in self._waiting and len(self._waiting) >= self.queue.maxsize
            if not full:
                self._hold(item)
            held = len(self._waiting)
        if not full:
            logger.error("{}: {}; its metadata is checked again after the next reconcile", item.key, why)
            return
        lost = self._count_lost()
        if lost == 1 or lost % 1000 == 0:
            logger.error("{}: {}; {} others already wait for the next reconcile, so a metadata change in it waits "
                         "for the next metadata sweep ({} so far)", item.key, why, held, lost)

    def retry_waiting(self) -> None:
        """Queue the waiting metadata refreshes again: a reconcile just completed, so
        the destination answers. What the queue can't take now waits for the next one."""
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, {}
        queued = 0
        for item in waiting.values():
            if not self.queue.put(item, timeout=0):
                with self._waiting_lock:
                    self._hold(item)
                continue
            queued += 1
        if queued:
            logger.info("{} tag, retention or legal-hold refreshes queued again after the reconcile", queued)

    def _hold(self, item: WorkItem) -> None:
        """Fold ``item`` into the one waiting for its key (the caller holds the lock)."""
        other = self._waiting.get(item.key)
        self._waiting[item.key] = other.merge(item) if other else item

    def waiting(self) -> int:
        with self._waiting_lock:
            return len(self._waiting)

    def process(self, item: WorkItem) -> None:
        app = self.app
        key = item.key
        if item.content and not item.removed and (item.size or 0) <= app.settings.multipart_threshold:
            # Fast path for the common case, a small upload: copy straight away. The
            # copy's own GET reads the source as it is now (a newer version, or
            # nothing), so a HEAD on each side first would only add two requests, which
            # cost more CPU than the copy's GET (profiled in docs/benchmarks-events.md).
            # The price is at most one redundant small copy when a reconcile copied the
            # same key moments before.
            if self._copy(item):
                return
            self._gone(item)
            return
        current = app.policy.call(lambda: app.source.stat(key))
        if current is None:
            self._gone(item)
            return
        if item.content or item.attributes:
            # Large objects (and re-uploads after a delete event) are checked first: a
            # redundant multipart copy is expensive. So are attribute changes kept after
            # a failure or found by the sweep: the bytes may be in sync, and a copy is
            # how Content-Type and user metadata are rewritten.
            copy = app.policy.call(lambda: app.dest.stat(key))
            if copy is None or not drift.same_bytes(current, copy) or (
                    item.attributes and not drift.same_attributes(current, copy)):
                self._copy(item)
                return  # a copy carries the tags along
            logger.debug("{}: already in sync", key)
        if item.tags:
            try:
                app.copier.refresh_tags(key)
            except NotFound:  # not at the destination yet: the whole object, then
                self._copy(item)
                return
            self._done(item, "tags refreshed")
        if item.retention or item.legal_hold:
            try:
                app.copier.refresh_lock(current, retention=item.retention, legal_hold=item.legal_hold)
            except NotFound:  # not at the destination (or only its delete marker): the whole object
                self._copy(item)
                return
            except PermanentError as error:  # anything that may pass is kept, through handle
                self._metadata_refused(item, error)
                return
            both = item.retention and item.legal_hold
            self._done(item, "retention and legal hold refreshed" if both
                       else "retention refreshed" if item.retention else "legal hold refreshed")

    def _metadata_refused(self, item: WorkItem, error: PermanentError) -> None:
        """The destination refused the retention or legal hold for good (shortening a
        COMPLIANCE retention, say): retrying can't help, and neither can a reconcile,
        which can't see these settings (so none is requested). The destination keeps
        what it has until the source's settings change again or the object is copied
        again."""
        self._count_failure(metrics.failure_reason(error))
        logger.error("{}: {}; retention and legal hold not mirrored (a reconcile can't see them)", item.key, error)

    def _copy(self, item: WorkItem) -> bool:
        """Copy the key; False if the source no longer has it."""
        result = self.app.copier.copy(item.key)
        if result is None:
            return False
        metrics.objects_copied.labels("event").inc()
        self._done(item, f"copied ({result.size} bytes)")
        return True

    def _gone(self, item: WorkItem) -> None:
        """The source doesn't have the key (any more): mirror the deletion if allowed."""
        if not self.app.settings.delete:
            logger.debug("{}: gone from the source; kept at the destination (S3_SYNC_DELETE=false)", item.key)
            return
        sent, failed = self.app.copier.delete_batch([item.key], recheck=self._still_gone)
        if failed:
            raise ReplicatorError(f"destination: delete {item.key}: {failed[item.key]}")
        if not sent:  # uploaded again while a delete was being retried: copy that
            self._copy(item)
            return
        self._done(item, "deleted")

    def _still_gone(self, keys: list[str]) -> list[str]:
        app = self.app
        return [key for key in keys if app.policy.call(lambda key=key: app.source.stat(key)) is None]

    @staticmethod
    def _done(item: WorkItem, what: str) -> None:
        lag = max(0.0, time.time() - item.event_time)
        metrics.replication_lag.observe(lag)
        logger.debug("{}: {} {:.3f}s after the event", item.key, what, lag)
