"""events.to_item: one notification record -> one work item (or None), by tables; what
the listener does with an item its queue can't take; and what its watch() tells.

Records are shaped like MinIO's ListenBucketNotification output."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from replicator import events
from replicator.errors import TransientError
from replicator.events import Listener, to_item
from replicator.workqueue import KeyedQueue, WorkItem


def record(name: str, key: str | None = "photos/a.jpg", *, when: str | None = "2024-05-01T12:34:56.789Z",
           etag: str | None = '"0123ABCD"', size: int | None = 1234, version: str | None = None) -> dict:
    obj: dict = {}
    if key is not None:
        obj["key"] = key
    if etag is not None:
        obj["eTag"] = etag
    if size is not None:
        obj["size"] = size
    if version is not None:
        obj["versionId"] = version
    rec: dict = {"eventName": name, "s3": {"bucket": {"name": "relics"}, "object": obj}}
    if when is not None:
        rec["eventTime"] = when
    return rec


WHEN = datetime(2024, 5, 1, 12, 34, 56, 789000, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("name", "content", "tags", "retention", "legal_hold", "removed", "attributes"),
    [
        # Any write may change Content-Type and user metadata over the same bytes.
        ("s3:ObjectCreated:Put", True, False, False, False, False, True),
        ("s3:ObjectCreated:Post", True, False, False, False, False, True),
        ("s3:ObjectCreated:Copy", True, False, False, False, False, True),
        ("s3:ObjectCreated:CompleteMultipartUpload", True, False, False, False, False, True),
        ("s3:ObjectCreated:PutTagging", False, True, False, False, False, False),
        ("s3:ObjectCreated:DeleteTagging", False, True, False, False, False, False),
        # Metadata-only too; the names are MinIO's (internal/event/name.go).
        ("s3:ObjectCreated:PutRetention", False, False, True, False, False, False),
        ("s3:ObjectCreated:PutLegalHold", False, False, False, True, False, False),
        ("s3:ObjectRemoved:Delete", True, False, False, False, True, False),
        ("s3:ObjectRemoved:DeleteMarkerCreated", True, False, False, False, True, False),
    ],
)
def test_event_kinds(name, content, tags, retention, legal_hold, removed, attributes):
    item = to_item(record(name))
    assert item is not None
    assert item.key == "photos/a.jpg"
    assert (item.content, item.tags, item.retention, item.legal_hold, item.removed, item.attributes) == (
        content, tags, retention, legal_hold, removed, attributes)


@pytest.mark.parametrize(
    "record_",
    [
        record("s3:ObjectAccessed:Get"),
        record("s3:ObjectAccessed:Head"),
        record("s3:Replication:OperationFailedReplication"),
        record(""),
        record("s3:ObjectCreated:Put", key=None),
        record("s3:ObjectCreated:Put", key=""),
        {"eventName": "s3:ObjectCreated:Put"},  # no s3 section at all
        {"eventName": "s3:ObjectCreated:Put", "s3": None},
        {},
    ],
    ids=["accessed-get", "accessed-head", "replication", "no-name", "no-key", "empty-key", "no-s3", "s3-null",
         "empty"],
)
def test_records_that_are_not_ours_give_none(record_):
    assert to_item(record_) is None


@pytest.mark.parametrize(
    "key",
    ["dir/with space.txt", "a+b.txt", "caf%20e.txt", "100%.txt", "%2Fslash", "ünï/cödé ✓.bin", "a//b", " lead"],
)
def test_keys_are_used_verbatim_never_unquoted(key):
    # MinIO's listen stream carries raw keys: "%20" is three characters of the name.
    assert to_item(record("s3:ObjectCreated:Put", key=key)).key == key


def test_details_of_a_created_event():
    item = to_item(record("s3:ObjectCreated:Put", etag='"0123ABCD"', size=1234, version="v-1"))
    assert item.size == 1234
    assert item.event_time == pytest.approx(WHEN)


def test_a_removal_carries_no_size():
    item = to_item(record("s3:ObjectRemoved:Delete", etag=None, size=None))
    assert item.size is None


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("2024-05-01T12:34:56.789Z", WHEN),
        ("2024-05-01T12:34:56Z", datetime(2024, 5, 1, 12, 34, 56, tzinfo=timezone.utc).timestamp()),
        ("2024-05-01T14:34:56.789+02:00", WHEN),
        ("2024-05-01T12:34:56.789000Z", WHEN),
    ],
)
def test_event_time_is_parsed_to_epoch_seconds(when, expected):
    assert to_item(record("s3:ObjectCreated:Put", when=when)).event_time == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("when", [None, "", "yesterday", "2024-13-45T99:00:00Z"])
def test_a_missing_or_malformed_event_time_is_the_receipt_time(when):
    before = time.time()
    item = to_item(record("s3:ObjectCreated:Put", when=when))
    after = time.time()
    assert before <= item.event_time <= after


def test_an_event_a_full_queue_cannot_take_is_handed_on_and_a_reconcile_asked_for(monkeypatch):
    monkeypatch.setattr(events, "ENQUEUE_TIMEOUT", 0.0)
    queue = KeyedQueue(1)
    gaps: list[str] = []
    dropped: list[tuple[str, str]] = []
    listener = Listener(None, queue, threading.Event(), on_gap=gaps.append,  # type: ignore[arg-type]
                        on_dropped=lambda item, why: dropped.append((item.key, why)))
    listener._enqueue(WorkItem("a", content=True, tags=False, event_time=0.0))  # noqa: SLF001
    listener._enqueue(WorkItem("b", content=False, tags=True, event_time=0.0))  # noqa: SLF001 - full
    assert queue.depth() == 1 and listener.dropped == 1
    assert dropped == [("b", "work queue full")]  # the workers keep a tag change for after the reconcile
    assert gaps == ["work queue overflowed"]


class _Session:
    """One subscription of a fake stream: runs ``during`` while connected, then breaks
    like a cut connection, or ends like a closed one once the listener is stopping."""

    def __init__(self, during, stopping: threading.Event):
        self.during, self.stopping = during, stopping

    def records(self):
        self.during()
        if not self.stopping.is_set():
            raise TransientError("source", "listen", None, "notification stream broke")
        yield from ()

    def close(self) -> None:
        pass


def test_a_watch_holds_only_while_the_subscription_it_began_on_lasts():
    stopping = threading.Event()
    listener: Listener
    seen: dict[str, bool] = {}
    watches = {}

    def first() -> None:
        watches["first"] = listener.watch()
        seen["first, still on it"] = watches["first"]()
        seen["taken before any connection"] = watches["before"]()

    def second() -> None:
        seen["first, after a reconnect"] = watches["first"]()
        watches["second"] = listener.watch()
        stopping.set()

    sessions = iter([first, second])

    class Notifications:
        bucket = "relics"

        def subscribe(self):
            return _Session(next(sessions), stopping)

    listener = Listener(Notifications(), KeyedQueue(10), stopping, on_gap=lambda reason: None,  # type: ignore[arg-type]
                        backoff_base=0.0, backoff_max=0.0)
    watches["before"] = listener.watch()
    listener.run()
    assert seen == {"first, still on it": True, "taken before any connection": False,
                    "first, after a reconnect": False}
    assert not watches["second"]()  # disconnected since
