"""The metadata sweep: object by object, what a listing can't see, compared and repaired.

Why: a reconcile compares listings, sizes and ETags, so it repairs any change of an
object's bytes and none of these: tags, Content-Type and user metadata rewritten over
the same bytes, retention, legal hold (drift.py). Events carry them, but events are
hints: a change made while the listener was down or the process stopped or killed, or
one MinIO dropped for a slow reader, stayed wrong for ever without a word. In the
audit of issue 10, 30 objects ended with stale tags and 7 with a stale Content-Type.

What: one pass walks the source listing and, for every key both sides have with the
same bytes, HEADs both sides, and reads both tag sets where the counts can't tell.
What differs goes on the work queue as a metadata work item, and the event workers
repair it with the same per-key operation events use: the sweep decides when, the
workers how. A pass runs once after the service's initial reconcile, after every gap
the listener reports, and every ``S3_SYNC_METADATA_SWEEP_INTERVAL`` seconds from the end
of the last (0 turns the sweep off), at most ``S3_SYNC_METADATA_SWEEP_RATE`` objects per
second.

Cost, per object: two HEADs, plus two tag reads for an object with tags (a HEAD gives
the tag count; equal non-zero counts need the sets). A million objects cost 2,000,000
requests, plus 2 per tagged one, and take 2.8 hours at 100 objects/s.

A pass walks only the mirror's keys (``key_filter``, filters.py): the source listing
under its prefix, and of that what its rules let through.

A pass never deletes or copies anything itself, and a failure on one key (counted,
logged at most ``MAX_LOGGED`` times a pass) never stops the others; only stopping does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from loguru import logger

from . import drift
from .app import App
from .errors import FatalError, ReplicatorError
from .filters import EVERYTHING, KeyFilter
from .observability import metrics
from .pool import BoundedExecutor
from .progress import iso
from .reconcile import list_with
from .retry import RetryPolicy, Stopped
from .scheduler import Trigger
from .stores.base import DestinationStore, SourceStore
from .workqueue import KeyedQueue, WorkItem

MAX_LOGGED = 20
QUEUE_WAIT = 1.0  # seconds per try to put a repair on a full queue, between stop checks


class Pacer:
    """At most ``rate`` calls of ``wait()`` per second, across threads; the stop event
    cuts a wait short."""

    def __init__(self, rate: float, stop: threading.Event, clock: Callable[[], float] = time.monotonic):
        self.interval = 1.0 / rate
        self.stop = stop
        self.clock = clock
        self._next = clock()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self.clock()
            at = max(now, self._next)
            self._next = at + self.interval
        if at > now and self.stop.wait(at - now):
            raise Stopped()


class PassStats:
    def __init__(self) -> None:
        self.checked = 0
        self.failed = 0
        self.found: dict[str, int] = {}
        self.lock = threading.Lock()


class MetadataSweep:
    def __init__(self, source: SourceStore, dest: DestinationStore, queue: KeyedQueue, policy: RetryPolicy, *,
                 interval: float, rate: float, concurrency: int, min_gap: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, key_filter: KeyFilter = EVERYTHING):
        self.source = source
        self.key_filter = key_filter
        self.dest = dest
        self.queue = queue
        self.policy = policy
        self.stop = policy.stop
        self.interval = interval
        self.rate = rate
        self.concurrency = concurrency
        # No pass until one is requested (after the initial reconcile); requested ones at
        # least min_gap apart.
        self.trigger = Trigger(self.stop, first_at=float("inf"), min_gap=min_gap, clock=clock)
        self.running = False
        self.passes = 0
        self.last_completed: float | None = None  # epoch seconds
        self.last: dict | None = None  # the last pass's counters, for /status

    def status(self) -> dict:
        """For /status: whether a pass runs now, and the last one's counters."""
        return {"running": self.running, "passes": self.passes, "last": self.last}

    def request(self, reason: str) -> None:
        """Ask for a pass soon (after the one running, if any). Requests fold together."""
        self.trigger.request(reason)

    def run(self) -> None:
        """The thread's target: passes when requested and every interval."""
        while True:
            try:
                reason = self.trigger.next()
                self.sweep(reason or "scheduled")
            except Stopped:
                return
            except Exception:  # a bug must not end the sweeps for good
                logger.exception("metadata sweep crashed; the next one runs on schedule")
            self.trigger.after(self.interval)

    def sweep(self, reason: str) -> PassStats:
        """One pass over the bucket; returns its counters."""
        started = time.monotonic()
        stats = PassStats()
        pacer = Pacer(self.rate, self.stop)
        self.running = True
        logger.info("Metadata sweep ({}): comparing tags, Content-Type, user metadata, retention and legal "
                    "hold, up to {:g} objects/s", reason, self.rate)
        try:
            with BoundedExecutor(self.concurrency, name="sweep") as pool:
                keep = self.key_filter
                for obj in self.policy.resumable(list_with(self.source.list_from, prefix=keep.prefix),
                                                 lambda item: item.key):
                    if self.stop.is_set():
                        raise Stopped()
                    if not keep(obj.key):
                        continue
                    pacer.wait()
                    pool.submit(self._check, obj.key, stats)
        except FatalError as error:
            logger.error("metadata sweep stopped: {}", error)
            stats.failed += 1
        except ReplicatorError as error:  # the listing failed after its retries
            logger.error("metadata sweep: the source listing failed ({}); the next sweep starts over", error)
            stats.failed += 1
        finally:
            self.running = False
        if self.stop.is_set():
            raise Stopped()
        self.passes += 1
        self.last_completed = time.time()
        found = sum(stats.found.values())
        self.last = {"reason": reason, "checked": stats.checked, "differed": found, "failed": stats.failed,
                     "by_kind": dict(stats.found), "duration_seconds": round(time.monotonic() - started, 3),
                     "finished_at": iso(self.last_completed)}
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(stats.found.items()))
        log = logger.warning if found or stats.failed else logger.info
        log("Metadata sweep done: {} objects compared, {} differed{}, {} failed; {:.1f}s", stats.checked, found,
            f" ({kinds}), queued for repair" if kinds else "", stats.failed, time.monotonic() - started)
        return stats

    def _check(self, key: str, stats: PassStats) -> None:
        """Compare ``key`` on both sides; queue what differs. Runs on a pool thread."""
        try:
            found = self._differences(key)
            with stats.lock:
                stats.checked += 1
                for kind in found:
                    stats.found[kind] = stats.found.get(kind, 0) + 1
            metrics.sweep_objects.inc()
            if found:
                for kind in found:
                    metrics.sweep_repairs.labels(kind).inc()
                logger.info("{}: metadata sweep: {} differ from the source; queued for repair", key,
                            ", ".join(sorted(found)))
                self._queue(WorkItem(key, content=False, tags=drift.TAGS in found,
                                     attributes=drift.ATTRIBUTES in found, retention=drift.RETENTION in found,
                                     legal_hold=drift.LEGAL_HOLD in found, event_time=time.time()))
        except Stopped:
            return
        except ReplicatorError as error:
            with stats.lock:
                stats.failed += 1
                count = stats.failed
            metrics.failures.labels(metrics.failure_reason(error)).inc()
            if count <= MAX_LOGGED:
                logger.error("{}: metadata sweep: {}", key, error)

    def _differences(self, key: str) -> frozenset[str]:
        call = self.policy.call
        source = call(lambda: self.source.stat(key))
        if source is None:
            return frozenset()  # deleted since the listing: the reconcile's business
        copy = call(lambda: self.dest.stat(key))
        if copy is None or not drift.same_bytes(source, copy):
            return frozenset()  # not copied yet, or other bytes: the reconcile's, and a copy carries all
        found = set(drift.differences(source, copy, lock=self.dest.mirrored_lock(source)))
        if (drift.TAGS not in found and source.tag_count
                and drift.tags_differ(call(lambda: self.source.get_tags(key)), call(lambda: self.dest.get_tags(key)))):
            found.add(drift.TAGS)
        return frozenset(found)

    def _queue(self, item: WorkItem) -> None:
        while not self.queue.put(item, timeout=QUEUE_WAIT):
            if self.stop.is_set():
                raise Stopped()


def sweep_and_repair(app: App, queue: KeyedQueue) -> tuple[PassStats, int]:
    """One pass outside the service (``replicator sweep``): event workers repair what it
    finds, then stop. ``app`` must have been built with ``key_lock=queue.claim``.
    Returns the pass's counters and the repairs that failed."""
    settings = app.settings
    workers = app.workers(queue)
    sweep = MetadataSweep(app.source, app.dest, queue, app.policy, interval=settings.metadata_sweep_interval,
                          rate=settings.metadata_sweep_rate, concurrency=min(settings.workers, 16),
                          key_filter=settings.key_filter)
    workers.start()
    try:
        stats = sweep.sweep("by hand")
        while (queue.depth() or queue.in_flight()) and not app.stop.wait(0.1):
            pass
    finally:
        queue.close()
        workers.join(time.monotonic() + settings.shutdown_timeout)
    return stats, workers.failed
