"""The notification listener: MinIO's event stream in, work items onto the queue.

Events are hints, not the truth. The listener's job is to turn each record into a
work item quickly and to be honest about gaps: any disconnect, a dead (silent)
stream, or a queue too full to take an event means events may have been lost, so it
asks the scheduler for a reconcile, which repairs whatever they were.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from urllib.parse import unquote_plus

from loguru import logger

from .errors import StoreError, TransientError
from .observability import context, metrics
from .stores.notifications import Notifications, Subscription
from .workqueue import KeyedQueue, WorkItem, settle

# Events that change only an object's metadata, not its bytes, and what they change.
# The names are MinIO's (internal/event/name.go); s3:ObjectCreated:* includes them.
METADATA_EVENTS = {
    "s3:ObjectCreated:PutTagging": "tags",
    "s3:ObjectCreated:DeleteTagging": "tags",
    "s3:ObjectCreated:PutRetention": "retention",
    "s3:ObjectCreated:PutLegalHold": "legal_hold",
}
ENQUEUE_TIMEOUT = 5.0  # how long a full queue may hold the listener before an event is dropped


def _epoch(value: str | None) -> float:
    if not value:
        return time.time()
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def to_item(record: dict, *, escaped: bool = False) -> WorkItem | None:
    """PURE: one notification record -> a work item, or None if it isn't ours. The
    listen stream sends keys as they are; a notification target (NATS) sends them
    query-escaped (``escaped``: a space as '+', a '+' as %2B)."""
    name = record.get("eventName") or ""
    obj = (record.get("s3") or {}).get("object") or {}
    key = obj.get("key")
    if not key or not isinstance(key, str):
        return None
    if escaped:
        key = unquote_plus(key)
    when = _epoch(record.get("eventTime"))
    size = obj.get("size")
    if name in METADATA_EVENTS:
        changed = METADATA_EVENTS[name]
        return WorkItem(key, content=False, tags=changed == "tags", retention=changed == "retention",
                        legal_hold=changed == "legal_hold", size=size, event_time=when)
    if name.startswith("s3:ObjectCreated:"):
        return WorkItem(key, content=True, tags=False, attributes=True, size=size, event_time=when)
    if name.startswith("s3:ObjectRemoved:"):
        return WorkItem(key, content=True, tags=False, removed=True, size=size, event_time=when)
    return None


def _kind(item: WorkItem) -> str:
    return "removed" if item.removed else ("metadata" if not item.content else "created")


def received(item: WorkItem) -> None:
    """An event has come in, from the listen stream or from JetStream: counted and logged."""
    metrics.events_received.labels(_kind(item)).inc()
    logger.debug("{}: event ({})", item.key, _kind(item))


@dataclass(eq=False)
class Intake:
    """One destination's door for events: its queue, which keys its mirror takes, and
    what to do with an event it can't take (the reconcile repairs content; the
    workers keep tag and lock changes for after it)."""

    queue: KeyedQueue
    on_gap: Callable[[str], None]
    on_dropped: Callable[[WorkItem, str], None] = lambda item, why: None
    accepts: Callable[[str], bool] = lambda key: True
    # Whose queue this is: what it drops is counted and logged as that destination's,
    # though the listener's thread does it.
    scope: context.Scope | None = None
    dropped: int = field(default=0, init=False)

    def offer(self, item: WorkItem, timeout: float, stopping: threading.Event) -> None:
        if not self.accepts(item.key):
            settle(item, True)  # not the mirror's: done with
            return
        if self.queue.put(item, timeout=timeout):
            return
        if item.receipts:
            settle(item, False)  # durable: delivered again later, no gap to repair
            return
        if stopping.is_set():
            return
        if self.scope is None:
            self._shed(item, timeout)
            return
        with context.working_for(self.scope):
            self._shed(item, timeout)

    def _shed(self, item: WorkItem, timeout: float) -> None:
        # Backpressure held for too long: drop the hint, never the guarantee.
        self.dropped += 1
        metrics.failures.labels("queue_full").inc()
        if self.dropped == 1 or self.dropped % 1000 == 0:
            held = f" for {timeout:.0f}s" if timeout else ""  # several destinations: none may hold the listener
            logger.warning("{}: work queue full{}; event dropped ({} so far), reconcile requested",
                           item.key, held, self.dropped)
        self.on_dropped(item, "work queue full")
        self.on_gap("work queue overflowed")


@dataclass(eq=False)
class Listener:
    """Runs in its own thread; ``stop()`` from any thread ends it promptly.

    Its events go to ``queue``, or, where one source bucket has several destinations,
    to each of ``intakes``: then no queue may hold the listener (a full one drops the
    event and asks its own reconcile), so a stalled destination never delays the
    events of another."""

    notifications: Notifications
    queue: KeyedQueue | None
    stopping: threading.Event
    on_gap: Callable[[str], None]  # every destination's: a reconnect may have lost anyone's events
    _: KW_ONLY
    # Gets each dropped item: the reconcile repairs content, not tag or lock changes.
    on_dropped: Callable[[WorkItem, str], None] = lambda item, why: None
    intakes: list[Intake] = field(default_factory=list)
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    connected: threading.Event = field(default_factory=threading.Event, init=False)
    reconnects: int = field(default=0, init=False)
    subscriptions: int = field(default=0, init=False)  # every one made; reconnects misses a restart's first
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _subscription: Subscription | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.intakes:
            assert self.queue is not None
            self.intakes = [Intake(self.queue, self.on_gap, self.on_dropped)]

    @property
    def dropped(self) -> int:
        return sum(intake.dropped for intake in self.intakes)

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            subscription = self._subscription
        if subscription is not None:
            subscription.close()

    def watch(self) -> Callable[[], bool]:
        """A question to ask later: has the listener stayed connected, on the subscription
        it has now, from this call until then? A reconnect in between is a no: events of
        the gap may be lost."""
        with self._lock:
            since = self.subscriptions if self.connected.is_set() else None

        def held() -> bool:
            with self._lock:
                return since is not None and self.connected.is_set() and self.subscriptions == since

        return held

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** max(0, failures - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)  # jitter: many sidecars, one MinIO restart

    def run(self) -> None:
        """The thread's target. A bug in one connection's handling must not end the
        listening for good: log it, back off, and start over."""
        while not self.stopping.is_set():
            try:
                self._listen()
            except Exception:
                logger.exception("listener: unexpected error; restarting it")
                self.connected.clear()
                metrics.listener_connected.set(0)
                self.on_gap("listener restarted")
                self.stopping.wait(self.backoff_max / 2)
        logger.debug("listener: stopped")

    def _listen(self) -> None:
        failures = 0
        ever_connected = False
        disconnected_at: float | None = None
        last_error = None
        while not self.stopping.is_set():
            try:
                subscription = self.notifications.subscribe()
            except StoreError as error:
                failures += 1
                if str(error) != last_error or failures % 10 == 0:  # rate-limit a long outage's log
                    logger.warning("listener: cannot subscribe ({}); retrying (attempt {})", error, failures)
                    last_error = str(error)
                self.stopping.wait(self._backoff(failures))
                continue
            with self._lock:
                self._subscription = subscription
            if self.stopping.is_set():
                subscription.close()
                break
            with self._lock:  # together: watch() must not see this connection under the last one's number
                self.subscriptions += 1
                self.connected.set()
            metrics.listener_connected.set(1)
            if ever_connected or failures:
                self.reconnects += 1
                metrics.listener_reconnects.inc()
                gap = f" after {time.monotonic() - disconnected_at:.1f}s" if disconnected_at else ""
                logger.info("listener: reconnected{}; scheduling a reconcile for events missed meanwhile", gap)
                self.on_gap("listener reconnected")
            else:
                logger.info("listener: subscribed to {} notifications", self.notifications.bucket)
            ever_connected, failures, last_error = True, 0, None
            try:
                for record in subscription.records():
                    item = to_item(record)
                    if item is not None:
                        self._enqueue(item)
            except TransientError as error:
                if not self.stopping.is_set():
                    logger.warning("listener: {}; reconnecting", error)
            finally:
                self.connected.clear()
                metrics.listener_connected.set(0)
                with self._lock:
                    self._subscription = None
                subscription.close()
                disconnected_at = time.monotonic()
            if not self.stopping.is_set():
                failures += 1
                self.stopping.wait(self._backoff(failures))

    def _enqueue(self, item: WorkItem) -> None:
        received(item)
        timeout = ENQUEUE_TIMEOUT if len(self.intakes) == 1 else 0.0
        for intake in self.intakes:
            intake.offer(item, timeout, self.stopping)
