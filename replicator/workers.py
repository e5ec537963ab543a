"""Event workers: take a key off the queue, look at the source as it is *now*, and
make the destination match, with the same copier the reconcile uses.

Acting on the source's current state rather than on the event makes the order of
events irrelevant: a delete event for a key that was re-uploaded since copies it,
and a create event for a key deleted since deletes it (when S3_SYNC_DELETE allows).
A failure after the copier's retries is logged, counted and left for the next
reconcile; it is never dropped silently. Retention and legal holds are the exception:
a reconcile can't see them, so a failure to mirror them is logged and counted as
final (see ``_lock_failed``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from loguru import logger

from .app import App
from .errors import NotFound, ReplicatorError, StoreError
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
        self._threads: list[threading.Thread] = []

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
                self.process(item)
            except Stopped:
                logger.info("{}: interrupted by shutdown; left for the next reconcile", item.key)
            except ReplicatorError as error:
                self.failed += 1
                metrics.failures.labels(metrics.failure_reason(error)).inc()
                logger.error("{}: {}; left for the next reconcile", item.key, error)
                self.on_failure("event copies failed")
            except Exception as error:  # noqa: BLE001 - a bug must not kill the worker
                self.failed += 1
                metrics.failures.labels(type(error).__name__).inc()
                logger.exception("{}: unexpected error; left for the next reconcile", item.key)
                self.on_failure("event copies failed")
            finally:
                self.queue.done(item.key)

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
        if item.content:
            # Large objects (and re-uploads after a delete event) are checked first: a
            # redundant multipart copy is expensive.
            recorded = app.policy.call(lambda: app.dest.head_source_etag(key))
            if recorded != current.etag:
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
            except StoreError as error:
                self._lock_failed(item, error)
                return
            both = item.retention and item.legal_hold
            self._done(item, "retention and legal hold refreshed" if both
                       else "retention refreshed" if item.retention else "legal hold refreshed")

    def _lock_failed(self, item: WorkItem, error: StoreError) -> None:
        """Unlike a failed copy, this isn't left for the next reconcile, which can't see
        retention or legal holds (nor is one requested): the destination keeps what it
        has until the source's settings change again or the object is copied again. A
        refusal to shorten a COMPLIANCE retention is permanent anyway."""
        self.failed += 1
        metrics.failures.labels(metrics.failure_reason(error)).inc()
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
        failed = self.app.copier.delete_batch([item.key])
        if failed:
            raise ReplicatorError(f"destination: delete {item.key}: {failed[item.key]}")
        self._done(item, "deleted")

    @staticmethod
    def _done(item: WorkItem, what: str) -> None:
        lag = max(0.0, time.time() - item.event_time)
        metrics.replication_lag.observe(lag)
        logger.debug("{}: {} {:.3f}s after the event", item.key, what, lag)
