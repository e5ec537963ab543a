"""A bounded, per-key coalescing work queue between the listener and the workers.

Three promises:
- **Bounded.** At most ``maxsize`` distinct keys wait. ``put`` blocks when full, so a
  dead destination slows the listener instead of growing memory; a put that still
  can't get in after its timeout is refused, and the caller schedules a reconcile
  (events are hints; the reconcile is the guarantee).
- **Coalescing.** A key waits at most once: a burst of writes to one key collapses
  into one pending item (the newest), plus at most one while a worker has the key.
- **Per-key exclusion.** A key is never handed to two workers at once, and the
  reconcile can ``claim`` keys so no worker touches them while it copies or deletes.
  Workers re-read the source before acting, so "latest state wins" and a delete can
  never overtake a later put.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WorkItem:
    key: str
    content: bool  # the object's bytes may have changed (created, overwritten, removed)
    tags: bool  # its tags may have changed (a metadata-only event)
    event_time: float  # epoch seconds of the oldest event folded into this item
    size: int | None = None
    removed: bool = False  # the newest event was a removal (a hint only; workers re-read)
    retention: bool = False  # its object lock retention may have changed (metadata-only)
    legal_hold: bool = False  # its legal hold may have changed (metadata-only)
    kept: bool = False  # a metadata change that failed before and waited for a reconcile
    # Its Content-Type, copied headers or user metadata may have changed: any write may
    # (a CopyObject with MetadataDirective=REPLACE changes them over the same bytes).
    attributes: bool = False
    # The durable messages this item stands for (JetStream mode, jetstream.Receipt), each
    # settled once the key has converged or not: acked, or handed back for later.
    receipts: tuple[Receipt, ...] = ()

    @property
    def metadata(self) -> bool:
        """It may carry a change a reconcile can't see: of tags, retention, legal hold,
        or of the attributes a write may change over the same bytes (drift.py)."""
        return self.tags or self.retention or self.legal_hold or self.attributes

    def merge(self, newer: WorkItem) -> WorkItem:
        return replace(
            newer,
            content=self.content or newer.content,
            tags=self.tags or newer.tags,
            retention=self.retention or newer.retention,
            legal_hold=self.legal_hold or newer.legal_hold,
            kept=self.kept or newer.kept,
            attributes=self.attributes or newer.attributes,
            event_time=min(self.event_time, newer.event_time),
            receipts=self.receipts + newer.receipts,
        )


class Receipt(Protocol):
    def settle(self, converged: bool, why: str | None = None) -> None:
        """Acknowledge the message (converged), or hand it back for a later delivery;
        ``why`` the key failed, where it did."""

    def hand_back(self, delay: float) -> None:
        """Have the message delivered again after ``delay`` seconds (no failure)."""

    def lapsed(self) -> bool:
        """Whether NATS may have handed the message to another process meanwhile."""


def settle(item: WorkItem, converged: bool, why: str | None = None) -> None:
    for receipt in item.receipts:
        receipt.settle(converged, why)


def hand_back(item: WorkItem, delay: float) -> None:
    for receipt in item.receipts:
        receipt.hand_back(delay)


def lapsed(item: WorkItem) -> bool:
    """Whether any message the item stands for may be another process's by now."""
    return any(receipt.lapsed() for receipt in item.receipts)


class Closed(Exception):
    """The queue is closed; no more work will be handed out."""


class KeyedQueue:
    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: dict[str, WorkItem] = {}  # pending, newest item per key
        # Pending keys nobody holds, oldest first; an ordered set, so a claim can take a
        # waiting key out in O(1) and a release can't queue a key twice.
        self._ready: OrderedDict[str, None] = OrderedDict()
        self._busy: dict[str, int] = {}  # held keys: 1 by a worker, -1 by a reconcile claim
        # One lock, one condition per kind of waiter, so each change wakes only a thread
        # that can use it: a key made ready wakes one worker, a freed slot one producer.
        # One shared condition woke every idle worker three times per event (put, get,
        # done), each wake-up a context switch and a turn at the GIL.
        self._lock = threading.Lock()
        self._ready_cond = threading.Condition(self._lock)  # workers in get()
        self._room_cond = threading.Condition(self._lock)  # producers in put()
        self._free_cond = threading.Condition(self._lock)  # reconcile claims waiting for keys
        self._closed = False

    # -- producer ------------------------------------------------------------------

    def put(self, item: WorkItem, timeout: float | None = None) -> bool:
        """Queue item, folding it into a pending item for the same key. Returns False
        if the queue stayed full for ``timeout`` seconds or is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._closed:
                    return False
                existing = self._items.get(item.key)
                if existing is not None:
                    self._items[item.key] = existing.merge(item)
                    return True
                if len(self._items) < self.maxsize:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._room_cond.wait(remaining)
            self._items[item.key] = item
            if item.key not in self._busy:
                self._ready[item.key] = None
                self._ready_cond.notify()
            return True

    # -- consumers -----------------------------------------------------------------

    def get(self, timeout: float | None = None) -> WorkItem | None:
        """The next item whose key nobody holds; the caller holds it until ``done``.
        None on timeout; raises Closed once the queue is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._closed:
                    raise Closed()  # pending items are the next reconcile's, not this shutdown's
                if self._ready:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._ready_cond.wait(remaining)
            key, _ = self._ready.popitem(last=False)
            item = self._items.pop(key)
            self._busy[key] = 1
            self._room_cond.notify()  # a slot freed for a blocked producer
            return item

    def done(self, key: str) -> None:
        with self._lock:
            self._release(key)

    @contextmanager
    def claim(self, keys: list[str]) -> Iterator[None]:
        """Hold ``keys`` (waiting for any worker on them to finish), so no worker starts
        on them until the block ends. Used by the reconcile around copies and deletes."""
        with self._lock:
            while any(k in self._busy for k in keys):
                self._free_cond.wait()
            for k in keys:
                self._busy[k] = -1  # held by the reconcile
                self._ready.pop(k, None)  # a waiting item stays pending, handed out after release
        try:
            yield
        finally:
            with self._lock:
                for k in keys:
                    self._release(k)

    def _release(self, key: str) -> None:
        if self._busy.pop(key, None) is not None and key in self._items:
            self._ready[key] = None
            self._ready_cond.notify()
        self._free_cond.notify_all()

    # -- lifecycle and introspection ------------------------------------------------------

    def close(self) -> int:
        """Stop handing out work. Returns the number of items left pending (the next
        reconcile covers them)."""
        with self._lock:
            self._closed = True
            for cond in (self._ready_cond, self._room_cond, self._free_cond):
                cond.notify_all()
            return len(self._items)

    def pending(self) -> list[WorkItem]:
        """The items waiting now (a snapshot)."""
        with self._lock:
            return list(self._items.values())

    def depth(self) -> int:
        with self._lock:
            return len(self._items)

    def waiting(self, key: str) -> bool:
        """Whether an item for ``key`` is pending (a newer event, while a worker has it)."""
        with self._lock:
            return key in self._items

    def in_flight(self) -> int:
        with self._lock:
            return sum(1 for v in self._busy.values() if v > 0)

    def oldest_event(self) -> float | None:
        with self._lock:
            return min((i.event_time for i in self._items.values()), default=None)
