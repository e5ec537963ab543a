"""Event workers over the in-memory fake: what a retention or legal-hold event does at
the destination. No thread is started; ``process`` is called directly."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from replicator import config
from replicator.app import App
from replicator.copier import Copier
from replicator.errors import PermanentError
from replicator.model import NO_LOCK, ObjectLock
from replicator.retry import RetryPolicy
from replicator.stores.memory import MemoryStore
from replicator.workers import Workers
from replicator.workqueue import KeyedQueue, WorkItem

BASE = config.load({"S3_SYNC_ACCESS_KEY": "a", "S3_SYNC_SECRET_KEY": "b", "S3_SYNC_BUCKET": "mirror"})
EARLY = datetime(2030, 1, 1, tzinfo=timezone.utc)
LATE = datetime(2031, 1, 1, tzinfo=timezone.utc)


class Harness:
    def __init__(self):
        self.source = MemoryStore("source")
        self.dest = MemoryStore("destination")
        settings = config.replace(BASE, workers=1, max_retries=2, retry_delay=0.0)
        stop = threading.Event()
        policy = RetryPolicy(settings.max_retries, settings.retry_delay, stop=stop)
        self.copier = Copier(self.source, self.dest, settings, policy)
        app = App(settings, self.source, self.dest, policy, self.copier, None, stop, threading.Event())
        self.reconciles: list[str] = []
        self.workers = Workers(app, KeyedQueue(10), on_failure=self.reconciles.append)

    def event(self, key: str, **flags) -> None:
        self.workers.process(WorkItem(key, **{"content": False, "tags": False, **flags}, event_time=0.0))


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.copier.close()


def test_a_retention_event_sets_the_retention_and_nothing_else(h):
    h.source.add("k", b"data", lock=ObjectLock("GOVERNANCE", LATE, True))
    h.dest.add("k", b"data", lock=ObjectLock("GOVERNANCE", EARLY, False))
    h.event("k", retention=True)
    assert h.dest.objects["k"].lock == ObjectLock("GOVERNANCE", LATE, False)  # the hold is another event's
    assert h.source.ops("get") == [] and h.dest.ops("put") == []  # no copy
    assert h.dest.ops("put retention") == ["k"]


def test_a_legal_hold_event_sets_the_hold_and_nothing_else(h):
    h.source.add("k", b"data", lock=ObjectLock("COMPLIANCE", LATE, True))
    h.dest.add("k", b"data", lock=ObjectLock("COMPLIANCE", EARLY, False))
    h.event("k", legal_hold=True)
    assert h.dest.objects["k"].lock == ObjectLock("COMPLIANCE", EARLY, True)
    assert h.dest.ops("put retention") == [] and h.dest.ops("put legal hold") == ["k"]


def test_the_source_as_it_is_now_decides_not_the_event(h):
    # The hold was set and lifted again before the worker got to it: it is lifted.
    h.source.add("k", b"data", lock=ObjectLock("GOVERNANCE", LATE, False))
    h.dest.add("k", b"data", lock=ObjectLock("GOVERNANCE", LATE, True))
    h.event("k", legal_hold=True, retention=True)
    assert h.dest.objects["k"].lock == ObjectLock("GOVERNANCE", LATE, False)


def test_a_removed_retention_is_removed(h):
    h.source.add("k", b"data")
    h.dest.add("k", b"data", lock=ObjectLock("GOVERNANCE", LATE, False))
    h.event("k", retention=True)
    assert h.dest.objects["k"].lock == NO_LOCK


def test_an_object_the_destination_lacks_is_copied_whole_with_its_settings(h):
    h.source.add("k", b"data", lock=ObjectLock("GOVERNANCE", LATE, True), metadata={"m": "1"})
    h.event("k", retention=True)
    assert h.dest.contents() == {"k": b"data"}
    assert h.dest.objects["k"].lock == ObjectLock("GOVERNANCE", LATE, True)


def test_an_event_for_a_key_gone_from_the_source_deletes_it(h):
    h.dest.add("k", b"data")
    h.event("k", retention=True)
    assert h.dest.contents() == {}


def test_a_refused_change_is_a_failure_but_no_reconcile_is_asked_for(h):
    # A reconcile can't see retention, so asking for one would only cost a full run.
    h.source.add("k", b"data", lock=ObjectLock("COMPLIANCE", EARLY, False))
    h.dest.add("k", b"data", lock=ObjectLock("COMPLIANCE", LATE, False))
    h.dest.fail("put retention", "k", PermanentError("destination", "put retention", "k", "InvalidRequest",
                                                     code="InvalidRequest"))
    h.event("k", retention=True)
    assert h.workers.failed == 1
    assert h.reconciles == []
    assert h.dest.objects["k"].lock == ObjectLock("COMPLIANCE", LATE, False)  # untouched
    assert h.dest.ops("put") == []  # and no copy either


def test_tags_and_lock_settings_of_one_item_are_both_refreshed(h):
    h.source.add("k", b"data", tags={"t": "1"}, lock=ObjectLock(None, None, True))
    h.dest.add("k", b"data")
    h.event("k", tags=True, legal_hold=True)
    assert h.dest.objects["k"].tags == {"t": "1"}
    assert h.dest.objects["k"].lock == ObjectLock(None, None, True)
