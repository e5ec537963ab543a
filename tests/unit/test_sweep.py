"""drift.differences and the metadata sweep, over the in-memory fake: what differs is
found, queued as a metadata work item, and repaired by the event workers; what the
reconcile repairs (missing or other bytes) is left to it."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from replicator import config, drift
from replicator.converge import Converger
from replicator.copier import Copier
from replicator.errors import TransientError
from replicator.filters import KeyFilter, parse_rules
from replicator.model import NO_LOCK, SOURCE_ETAG_META, ObjectLock, SourceObject
from replicator.retry import RetryPolicy, Stopped
from replicator.stores.memory import MemoryStore
from replicator.sweep import MetadataSweep, Pacer
from replicator.workers import Workers
from replicator.workqueue import KeyedQueue

UNTIL = datetime(2031, 1, 1, tzinfo=timezone.utc)


def obj(**fields) -> SourceObject:
    base = {"key": "k", "size": 1, "etag": "e", "content_type": "text/plain",
            "headers": {"Cache-Control": "max-age=60"}, "metadata": {"color": "red"}, "tag_count": 0, "lock": NO_LOCK}
    return SourceObject(**{**base, **fields})


def copy_of(source: SourceObject, **fields) -> SourceObject:
    return obj(**{"content_type": source.content_type, "headers": source.headers,
                  "metadata": {**source.metadata, SOURCE_ETAG_META: source.etag}, "tag_count": source.tag_count,
                  "lock": source.lock, **fields})


SOURCE = obj()


@pytest.mark.parametrize(("copy", "lock", "expected"), [
    (copy_of(SOURCE), NO_LOCK, set()),
    (copy_of(SOURCE, content_type="application/octet-stream"), NO_LOCK, {drift.ATTRIBUTES}),
    (copy_of(SOURCE, content_type=None), NO_LOCK, {drift.ATTRIBUTES}),
    (copy_of(SOURCE, metadata={"color": "blue", SOURCE_ETAG_META: "e"}), NO_LOCK, {drift.ATTRIBUTES}),
    (copy_of(SOURCE, metadata={"color": "red"}), NO_LOCK, set()),  # the ETag record is not the user's
    (copy_of(SOURCE, metadata={"color": "red", "extra": "1", SOURCE_ETAG_META: "e"}), NO_LOCK, {drift.ATTRIBUTES}),
    (copy_of(SOURCE, headers={}), NO_LOCK, {drift.ATTRIBUTES}),
    (copy_of(SOURCE, headers={"Cache-Control": "max-age=60 "}), NO_LOCK, set()),
    (copy_of(SOURCE, tag_count=2), NO_LOCK, {drift.TAGS}),
    (copy_of(SOURCE), ObjectLock("GOVERNANCE", UNTIL), {drift.RETENTION}),
    (copy_of(SOURCE), ObjectLock(legal_hold=True), {drift.LEGAL_HOLD}),
    (copy_of(SOURCE, lock=ObjectLock("GOVERNANCE", UNTIL, True)), ObjectLock("GOVERNANCE", UNTIL, True), set()),
    # A destination that takes no lock settings: not compared, or it would differ for ever.
    (copy_of(SOURCE, lock=NO_LOCK), None, set()),
    (copy_of(SOURCE, content_type="x/y", tag_count=1), NO_LOCK, {drift.ATTRIBUTES, drift.TAGS}),
])
def test_differences(copy, lock, expected):
    assert drift.differences(SOURCE, copy, lock=lock) == expected


def test_an_expires_date_written_another_way_is_the_same_date():
    source = obj(headers={"Expires": "Thu, 01 Dec 2030 16:00:00 GMT"})
    assert drift.same_attributes(source, copy_of(source, headers={"Expires": "Sun, 01 Dec 2030 16:00:00 +0000"}))
    assert not drift.same_attributes(source, copy_of(source, headers={"Expires": "Sun, 01 Dec 2030 16:00:01 GMT"}))


# --- the sweep over the fake stores ---------------------------------------------------

class Harness:
    def __init__(self):
        self.source = MemoryStore("source")
        self.dest = MemoryStore("destination")
        settings = config.replace(config.load({"S3_SYNC_ACCESS_KEY": "a", "S3_SYNC_SECRET_KEY": "b",
                                               "S3_SYNC_BUCKET": "mirror"}), workers=1, max_retries=2,
                                  retry_delay=0.0)
        self.stop = threading.Event()
        policy = RetryPolicy(settings.max_retries, settings.retry_delay, stop=self.stop)
        self.copier = Copier(self.source, self.dest, settings, policy)
        converger = Converger(self.source, self.dest, self.copier, policy, threshold=settings.multipart_threshold)
        self.queue = KeyedQueue(100)
        self.workers = Workers(converger, self.queue, threads=1, delete=settings.delete)
        self.sweep = MetadataSweep(self.source, self.dest, self.queue, policy, interval=3600, rate=10_000,
                                   concurrency=2)

    def mirror(self, key: str, data: bytes, **fields) -> None:
        """The object at the source, and its faithful copy at the destination."""
        self.source.add(key, data, **fields)
        self.copier.copy(key)

    def drain(self) -> None:
        while (item := self.queue.get(timeout=0)) is not None:
            self.workers.handle(item)
            self.queue.done(item.key)


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.copier.close()


def test_a_pass_over_a_faithful_mirror_queues_nothing(h):
    for n in range(5):
        h.mirror(f"k{n}", b"data", content_type="text/plain", tags={"t": str(n)}, metadata={"m": "1"})
    stats = h.sweep.sweep("test")
    assert (stats.checked, stats.found, stats.failed) == (5, {}, 0)
    assert h.queue.depth() == 0
    assert h.sweep.last["checked"] == 5 and h.sweep.passes == 1


def test_what_differs_is_queued_and_the_workers_repair_it(h):
    h.mirror("attrs", b"a", content_type="text/plain", metadata={"m": "1"})
    h.mirror("tags", b"t", tags={"team": "blue"})
    h.mirror("same-count", b"s", tags={"team": "blue"})
    h.mirror("hold", b"h")
    h.mirror("fine", b"f", tags={"x": "1"})
    # Changed at the source while nobody listened: an event the sidecar never saw.
    h.source.objects["attrs"].content_type = "application/json"
    h.source.objects["attrs"].metadata = {"m": "2"}
    h.source.objects["tags"].tags = {}
    h.source.objects["same-count"].tags = {"team": "red"}
    h.source.objects["hold"].lock = ObjectLock(legal_hold=True)
    stats = h.sweep.sweep("test")
    assert stats.found == {drift.ATTRIBUTES: 1, drift.TAGS: 2, drift.LEGAL_HOLD: 1}
    assert sorted(item.key for item in h.queue.pending()) == ["attrs", "hold", "same-count", "tags"]
    h.drain()
    assert h.dest.objects["attrs"].content_type == "application/json"
    assert {k: v for k, v in h.dest.objects["attrs"].metadata.items() if k != SOURCE_ETAG_META} == {"m": "2"}
    assert h.dest.objects["tags"].tags == {}
    assert h.dest.objects["same-count"].tags == {"team": "red"}
    assert h.dest.objects["hold"].lock.legal_hold is True
    assert h.sweep.sweep("again").found == {}  # repaired: the next pass finds nothing


def test_what_the_reconcile_repairs_is_left_to_it(h):
    h.source.add("not-copied-yet", b"n", tags={"t": "1"})
    h.mirror("other-bytes", b"old")
    h.source.add("other-bytes", b"new", content_type="text/x")
    h.dest.add("only-at-destination", b"o")
    stats = h.sweep.sweep("test")
    assert stats.found == {} and h.queue.depth() == 0
    assert h.dest.ops("put") == ["other-bytes"]  # the one copy of mirror(); the sweep copies nothing


def test_a_failing_key_is_counted_and_the_pass_goes_on(h):
    for key in ("a", "b", "c"):
        h.mirror(key, b"x", tags={"t": "1"})
    h.source.objects["c"].tags = {"t": "2"}
    h.dest.fail("stat", "a", TransientError("destination", "stat", "a", "SlowDown (HTTP 503)"))
    stats = h.sweep.sweep("test")
    assert (stats.checked, stats.failed, stats.found) == (2, 1, {drift.TAGS: 1})


def test_a_stop_ends_the_pass(h):
    h.mirror("k", b"x")
    h.stop.set()
    with pytest.raises(Stopped):
        h.sweep.sweep("test")


def test_the_pacer_spaces_calls_by_the_rate():
    now = [100.0]
    waits = []

    class Stop:
        def wait(self, seconds):
            waits.append(round(seconds, 6))
            now[0] += seconds
            return False

    pacer = Pacer(4, Stop(), clock=lambda: now[0])
    for _ in range(5):
        pacer.wait()
    assert waits == [0.25, 0.25, 0.25, 0.25]  # the first goes at once; then one every 1/4 s


def test_a_pass_compares_only_the_keys_of_the_filter(h):
    for key in ("p/a", "p/b.tmp", "q/c"):
        h.mirror(key, b"data", tags={"t": "1"})
        h.source.objects[key].tags = {"t": "2"}  # every one differs
    h.sweep.key_filter = KeyFilter("p/", parse_rules(["- *.tmp"]))
    h.source.calls.clear()
    stats = h.sweep.sweep("test")
    assert (stats.checked, stats.found) == (1, {drift.TAGS: 1})
    assert [item.key for item in h.queue.pending()] == ["p/a"]
    assert {key for op, key in h.source.calls if op != "list"} == {"p/a"}
