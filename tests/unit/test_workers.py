"""Event workers over the in-memory fake: what a retention, legal-hold or tag event does
at the destination, and where a failed one goes. No thread is started; ``process`` and
``handle`` are called directly."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from replicator import config
from replicator.converge import Converger
from replicator.copier import Copier
from replicator.errors import PermanentError, SourceChanged, TransientError
from replicator.model import NO_LOCK, ObjectLock
from replicator.retry import RetryPolicy, Stopped
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
        converger = Converger(self.source, self.dest, self.copier, policy, threshold=settings.multipart_threshold)
        self.reconciles: list[str] = []
        self.queue = KeyedQueue(10)
        self.workers = Workers(converger, self.queue, threads=1, delete=settings.delete,
                               on_failure=self.reconciles.append)

    def event(self, key: str, **flags) -> None:
        self.workers.process(item(key, **flags))

    def handle(self, key: str, **flags) -> None:
        self.workers.handle(item(key, **flags))

    def drain(self) -> None:
        while (queued := self.queue.get(timeout=0)) is not None:
            self.workers.handle(queued)
            self.queue.done(queued.key)


def item(key: str, **flags) -> WorkItem:
    return WorkItem(key, **{"content": False, "tags": False, **flags}, event_time=0.0)


def down(side: str, op: str, key: str) -> TransientError:
    return TransientError(side, op, key, "connection refused")


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
    h.handle("k", retention=True)
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


def test_a_tag_refresh_the_destination_missed_waits_for_the_next_reconcile(h):
    # A reconcile can't see tags, so "left for the next reconcile" would lose the change.
    h.source.add("k", b"data", tags={"t": "1"})
    h.dest.add("k", b"data")
    h.dest.fail("put tags", "k", down("destination", "put tags", "k"), times=2)  # both attempts
    h.handle("k", tags=True)
    assert h.dest.objects["k"].tags == {} and len(h.workers.waiting_room) == 1
    assert h.reconciles == ["event copies failed"]  # the reconcile that brings it back
    h.workers.waiting_room.retry()  # that reconcile completed
    assert len(h.workers.waiting_room) == 0
    h.drain()
    assert h.dest.objects["k"].tags == {"t": "1"}


def test_a_retention_the_destination_missed_waits_too_and_a_refusal_does_not(h):
    h.source.add("k", b"data", lock=ObjectLock("GOVERNANCE", LATE, False))
    h.source.add("refused", b"data", lock=ObjectLock("COMPLIANCE", EARLY, False))
    h.dest.add("k", b"data")
    h.dest.add("refused", b"data", lock=ObjectLock("COMPLIANCE", LATE, False))
    h.dest.fail("put retention", "k", down("destination", "put retention", "k"), times=2)
    h.dest.fail("put retention", "refused", PermanentError("destination", "put retention", "refused",
                                                           "InvalidRequest", code="InvalidRequest"))
    h.handle("k", retention=True)
    h.handle("refused", retention=True)
    assert len(h.workers.waiting_room) == 1 and h.workers.failed == 2
    h.workers.waiting_room.retry()
    h.drain()
    assert h.dest.objects["k"].lock == ObjectLock("GOVERNANCE", LATE, False)
    assert h.dest.objects["refused"].lock == ObjectLock("COMPLIANCE", LATE, False)  # untouched, not retried
    assert h.dest.ops("put retention").count("refused") == 1


def test_waiting_refreshes_fold_per_key_and_stay_bounded(h):
    for n in range(12):
        h.source.add(f"k{n}", b"data", tags={"n": str(n)})
        h.dest.add(f"k{n}", b"data")
    h.dest.fail("put tags", None, down("destination", "put tags", None))  # the destination is down
    h.handle("k0", tags=True)
    h.handle("k0", legal_hold=True)  # the same key again: one waiting item, both changes
    for n in range(1, 12):
        h.handle(f"k{n}", tags=True)
    assert len(h.workers.waiting_room) == 10  # S3_SYNC_QUEUE_SIZE (10 here); the two beyond it are reported lost
    h.dest.heal()  # the destination is back
    h.workers.waiting_room.retry()
    h.drain()
    assert {n for n in range(12) if h.dest.objects[f"k{n}"].tags} == set(range(10))
    assert h.dest.ops("put legal hold") == ["k0"]


def test_what_the_queue_cannot_take_waits_for_the_next_reconcile(h):
    h.source.add("k", b"data", tags={"t": "1"})
    h.dest.add("k", b"data")
    h.dest.fail("put tags", "k", down("destination", "put tags", "k"), times=2)
    h.handle("k", tags=True)
    for n in range(10):  # the queue is full of new events
        assert h.queue.put(item(f"other{n}", content=True))
    h.workers.waiting_room.retry()
    assert len(h.workers.waiting_room) == 1  # not dropped: still waiting
    h.drain()
    h.workers.waiting_room.retry()
    h.drain()
    assert h.dest.objects["k"].tags == {"t": "1"}


def test_a_failed_copy_is_left_to_the_reconcile_not_kept_waiting(h):
    h.source.add("k", b"data")
    h.dest.fail("put", "k", down("destination", "put", "k"), times=2)
    h.handle("k", content=True)
    assert len(h.workers.waiting_room) == 0 and h.reconciles == ["event copies failed"]


def test_an_event_the_listener_dropped_is_kept_only_for_its_metadata(h):
    h.source.add("k", b"data", tags={"t": "1"})
    h.dest.add("k", b"data")
    h.workers.waiting_room.keep(item("new", content=True), "work queue full")  # the reconcile copies it
    h.workers.waiting_room.keep(item("k", tags=True), "work queue full")
    assert len(h.workers.waiting_room) == 1
    h.workers.waiting_room.retry()
    h.drain()
    assert h.dest.objects["k"].tags == {"t": "1"}


def test_a_change_that_fails_again_after_a_reconcile_waits_for_the_scheduled_ones(h):
    # Asking for an early reconcile each time would run a full one every cooldown, forever.
    h.source.add("k", b"data", tags={"t": "1"})
    h.dest.add("k", b"data")
    h.dest.fail("put tags", "k", down("destination", "put tags", "k"))  # lasts
    h.handle("k", tags=True)
    for _ in range(5):  # five reconciles complete
        h.workers.waiting_room.retry()
        h.drain()
    assert h.reconciles == ["event copies failed"]  # the first failure's only
    assert len(h.workers.waiting_room) == 1  # still kept, never dropped
    h.dest.heal()
    h.workers.waiting_room.retry()
    h.drain()
    assert h.dest.objects["k"].tags == {"t": "1"} and len(h.workers.waiting_room) == 0


def test_only_the_metadata_change_of_a_failed_copy_is_kept(h):
    # The reconcile repairs the bytes (its copy carries the tags); what comes back after
    # it is a tag refresh, not a second copy.
    h.source.add("k", b"data", tags={"t": "1"})
    h.dest.fail("put", "k", down("destination", "put", "k"), times=2)
    h.handle("k", content=True, tags=True)
    assert len(h.workers.waiting_room) == 1
    assert h.copier.copy("k") is not None  # the reconcile's copy
    h.workers.waiting_room.retry()
    h.drain()
    assert h.dest.ops("put") == ["k", "k", "k"]  # two failed attempts, the reconcile's copy: no fourth
    assert h.dest.objects["k"].tags == {"t": "1"}


def test_a_metadata_change_cut_by_shutdown_is_counted_as_lost(h):
    h.source.add("k", b"data", tags={"t": "1"})
    h.dest.add("k", b"data")
    h.dest.fail("put tags", "k", Stopped())
    h.handle("k", tags=True)
    assert h.workers.waiting_room.lost == 1 and len(h.workers.waiting_room) == 0


def test_a_metadata_only_rewrite_whose_copy_failed_is_repaired_after_the_next_reconcile(h):
    # A CopyObject with MetadataDirective=REPLACE: same bytes, same ETag, a new
    # Content-Type. The reconcile can't see it; before, the failed event copy was "left
    # for the next reconcile", which never repaired it (issue 10).
    h.source.add("k", b"data", content_type="text/plain")
    h.copier.copy("k")
    h.source.objects["k"].content_type = "application/json"
    h.dest.fail("put", "k", down("destination", "put", "k"), times=2)
    h.handle("k", content=True, attributes=True)
    assert len(h.workers.waiting_room) == 1
    h.workers.waiting_room.retry()  # a reconcile completed: it found the pair in sync
    h.drain()
    assert h.dest.objects["k"].content_type == "application/json"


def test_a_kept_write_whose_bytes_the_reconcile_copied_is_not_copied_again(h):
    h.source.add("k", b"data", content_type="text/plain")
    h.dest.fail("put", "k", down("destination", "put", "k"), times=2)
    h.handle("k", content=True, attributes=True)
    assert h.copier.copy("k") is not None  # the reconcile's copy carries the attributes
    h.workers.waiting_room.retry()
    h.drain()
    assert h.dest.ops("put") == ["k", "k", "k"]  # two failed attempts and the reconcile's: no fourth


def test_a_key_rewritten_during_every_copy_attempt_goes_back_on_the_queue(h):
    h.source.add("k", b"data")
    h.source.fail("get", "k", SourceChanged("source", "get", "k", "object changed during the copy",
                                            code="PreconditionFailed"), times=h.copier.policy.attempts)
    h.handle("k", content=True, size=4)
    assert h.workers.failed == 0 and h.reconciles == []
    assert [queued.key for queued in h.queue.pending()] == ["k"]
    h.drain()  # the writes stopped: the next attempt converges
    assert h.dest.contents() == {"k": b"data"} and h.queue.depth() == 0


def test_a_rewritten_key_the_queue_cannot_take_back_asks_for_a_reconcile(h):
    h.source.add("k", b"data")
    h.source.fail("get", "k", SourceChanged("source", "get", "k", "object changed during the copy",
                                            code="PreconditionFailed"))
    h.queue.close()
    h.handle("k", content=True, size=4)
    assert h.reconciles == ["a key changed during every copy attempt"] and "k" not in h.dest.objects
