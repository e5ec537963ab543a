"""The pure parts of S3_SYNC_EVENTS=jetstream, and how a durable message is settled:
acknowledged once its key has converged, handed back otherwise, never both."""

from __future__ import annotations

import threading
import time
from urllib.parse import unquote

import pytest

from replicator.errors import TransientError
from replicator.events import Intake, to_item
from replicator.jetstream import (
    DEAD_LETTER_ERROR_MAX,
    NAK_DELAY_MAX,
    _subject_matches,
    dead_letter_headers,
    dead_letter_stream,
    dead_letter_subject,
    durable_name,
    nak_delay,
    past_age,
    publishes,
)
from replicator.observability.logging import Redactor
from replicator.workqueue import KeyedQueue, WorkItem
from tests.unit.test_workers import Harness


class FakeReceipt:
    def __init__(self):
        self.settled: list[bool] = []
        self.why: list[str | None] = []

    def settle(self, converged: bool, why: str | None = None) -> None:
        self.settled.append(converged)
        self.why.append(why)

    def lapsed(self) -> bool:
        return False


def durable(key: str, receipt: FakeReceipt, **flags) -> WorkItem:
    return WorkItem(key, **{"content": True, "tags": False, **flags}, event_time=0.0, receipts=(receipt,))


@pytest.mark.parametrize(("pattern", "subject", "takes"), [
    ("minio.events", "minio.events", True),
    ("minio.*", "minio.events", True),
    ("minio.>", "minio.events", True),
    (">", "minio.events", True),
    ("minio.events.>", "minio.events", False),
    ("minio", "minio.events", False),
    ("other.events", "minio.events", False),
    ("*.events.x", "minio.events", False),
])
def test_a_stream_subject_takes_minios_subject_as_nats_matches_them(pattern, subject, takes):
    assert _subject_matches(pattern, subject) is takes


@pytest.mark.parametrize(("rules", "missing"), [
    ([("arn:minio:sqs::PRIMARY:nats", ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"])], None),
    ([("arn:minio:sqs::A:nats", ["s3:ObjectCreated:*"]), ("arn:minio:sqs::B:nats", ["s3:ObjectRemoved:*"])], None),
    ([], "no notification rule sends its events to a NATS target"),
    ([("arn:minio:sqs::PRIMARY:webhook", ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"])],
     "no notification rule sends its events to a NATS target"),
    ([("arn:minio:sqs::PRIMARY:nats", ["s3:ObjectCreated:*"])], "its NATS notification rules don't send "
                                                                "s3:ObjectRemoved:*"),
])
def test_what_a_bucket_lacks_to_publish_to_nats_is_said(rules, missing):
    assert publishes(rules) == missing


def test_durable_names_are_jetstreams_whatever_the_configured_names():
    assert durable_name("replicator", "photos", "aws") == "replicator-photos-aws"
    assert durable_name("replicator", "photos.v2", "s3 eu/1") == "replicator-photos_v2-s3_eu_1"


def test_a_failed_message_waits_longer_with_each_delivery_up_to_a_cap():
    delays = [nak_delay(n, 1.0) for n in range(1, 14)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert delays == sorted(delays) and max(delays) == NAK_DELAY_MAX
    assert nak_delay(1, 0.0) == 1.0  # a zero retry delay would redeliver in a tight loop


def test_a_notification_targets_keys_come_query_escaped_and_are_unescaped():
    record = {"eventName": "s3:ObjectCreated:Put", "eventTime": "2026-12-07T15:13:01.748Z",
              "s3": {"object": {"key": "with+space%2Fand%2Bplus%2520.txt", "size": 1}}}
    assert to_item(record, escaped=True).key == "with space/and+plus%20.txt"
    assert to_item(record).key == "with+space%2Fand%2Bplus%2520.txt"  # the listen stream's keys are as they are


def test_folded_items_carry_every_message_they_stand_for():
    first, second = FakeReceipt(), FakeReceipt()
    merged = durable("a", first).merge(durable("a", second))
    assert merged.receipts == (first, second)


def test_a_converged_key_acknowledges_its_messages():
    h = Harness()
    h.source.add("a.txt", b"data")
    receipt = FakeReceipt()
    h.queue.put(durable("a.txt", receipt))
    _run_one(h)
    assert receipt.settled == [True] and h.dest.stat("a.txt") is not None


def test_a_failed_copy_hands_its_messages_back(monkeypatch):
    h = Harness()
    h.source.add("a.txt", b"data")

    def refuse(*args, **kwargs):
        raise TransientError("destination", "put", "a.txt", "connection refused")

    monkeypatch.setattr(h.dest, "put", refuse)
    receipt = FakeReceipt()
    h.queue.put(durable("a.txt", receipt))
    _run_one(h)
    assert receipt.settled == [False]
    assert "connection refused" in receipt.why[0]  # what a dead letter would say of it


@pytest.mark.parametrize(("published", "deliveries", "dead"), [
    (0.0, 3, True),  # old enough, failed often enough
    (0.0, 2, False),  # a backlog delivered late: not at its first hiccups
    (950.0, 5, False),  # failing, but younger than the age
    (900.0, 3, True),  # exactly the age
])
def test_a_message_is_dead_lettered_once_old_and_failed_again(published, deliveries, dead):
    assert past_age(published, 1000.0, deliveries, 100.0) is dead


def test_dead_letters_go_where_no_stream_of_minios_subject_takes_them():
    name, subjects = dead_letter_stream("minio-events")
    subject = dead_letter_subject("minio-events", "replicator-photos-aws")
    assert name == "minio-events-dead-letter"
    assert _subject_matches(subjects, subject)
    for minio in ("minio.events", "minio.>", "minio.*"):
        assert not _subject_matches(minio, subject)


def test_a_dead_letters_headers_name_it_and_keep_no_secret_and_no_line_break():
    key = "odd key/é+%\nline"
    headers = dead_letter_headers(
        destination="photos/aws", consumer="replicator-photos-aws", key=key, stream="minio-events", sequence=42,
        deliveries=7, published=1700000000.25, redact=Redactor(("s3cret-value",)),
        error="destination: put odd key: AccessDenied for s3cret-value\n" + "x" * 2000)
    assert unquote(headers["Replicator-Key"]) == key
    assert headers["Replicator-Deliveries"] == "7" and headers["Replicator-Sequence"] == "42"
    assert headers["Replicator-Destination"] == "photos/aws"
    assert headers["Nats-Msg-Id"] == "minio-events-42-replicator-photos-aws"
    error = headers["Replicator-Error"]
    assert "s3cret-value" not in error and "***" in error and len(error) == DEAD_LETTER_ERROR_MAX
    assert not any(c in value for value in headers.values() for c in "\r\n")


def test_a_full_queue_hands_a_durable_event_back_and_asks_no_reconcile():
    queue = KeyedQueue(1)
    gaps: list[str] = []
    intake = Intake(queue, gaps.append)
    intake.offer(durable("a", FakeReceipt()), 0.0, threading.Event())
    held_back = FakeReceipt()
    intake.offer(durable("b", held_back), 0.0, threading.Event())
    assert held_back.settled == [False] and gaps == [] and intake.dropped == 0


def test_an_event_outside_the_filter_is_acknowledged_and_goes_nowhere():
    queue = KeyedQueue(10)
    receipt = FakeReceipt()
    Intake(queue, lambda reason: None, accepts=lambda key: key.startswith("photos/")).offer(
        durable("other/a", receipt), 0.0, threading.Event())
    assert receipt.settled == [True] and queue.depth() == 0


def _run_one(h: Harness) -> None:
    """One pass of a worker's loop: get, handle, settle."""
    thread = threading.Thread(target=h.workers._loop, daemon=True)  # noqa: SLF001 - the loop itself settles
    thread.start()
    deadline = time.monotonic() + 5
    while h.queue.depth() or h.queue.in_flight():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    h.queue.close()
    thread.join(5)


@pytest.mark.parametrize(("first", "floor", "lost"), [
    (0, 0, False),  # a stream that never held a message
    (1, 0, False),  # nothing acknowledged yet, nothing removed
    (6, 5, False),  # everything acknowledged, then aged out
    (7, 5, True),  # message 6 left the stream unacknowledged
    (100, 40, True),
])
def test_messages_that_left_the_stream_before_they_were_acknowledged_are_a_gap(first, floor, lost):
    from replicator.jetstream import aged_out

    assert aged_out(first, floor) is lost


# --- two processes on one key: the convergence rules that make them safe ----------------

def _two_process_converger(h: Harness):
    from replicator.converge import Converger

    return Converger(h.source, h.dest, h.copier, h.copier.policy, threshold=16 * 1024 * 1024, recheck=True)


def test_an_older_versions_copy_that_lands_last_is_found_and_copied_again(monkeypatch):
    from replicator.converge import Hint, Outcome

    h = Harness()
    converger = _two_process_converger(h)
    h.source.add("k", b"v1")
    put = h.dest.put

    def slow_put(key, data, src, tags):
        if data == b"v1":  # while this process sends v1, another copies v2 and is done first
            h.source.add("k", b"v2")
            put(key, b"v2", h.source.stat("k"), None)
        put(key, data, src, tags)

    monkeypatch.setattr(h.dest, "put", slow_put)
    assert converger.converge("k", Hint(size=2)).outcome is Outcome.CHANGED  # v1 landed last: not left standing
    assert converger.converge("k", Hint(size=2)).outcome is Outcome.COPIED  # the worker's second go
    assert h.dest.contents() == {"k": b"v2"}


def test_a_delete_that_lands_after_a_reuploads_copy_is_made_good(monkeypatch):
    from replicator.converge import Hint, Outcome

    h = Harness()
    converger = _two_process_converger(h)
    h.source.add("k", b"v1")
    assert converger.converge("k", Hint(size=2)).outcome is Outcome.COPIED
    del h.source.objects["k"]  # deleted at the source
    delete = h.dest.delete_many

    def late_delete(keys):
        # The key is uploaded again, and another process copies it, after this one's
        # re-check found it gone and before its delete lands.
        h.source.add("k", b"v3")
        h.dest.put("k", b"v3", h.source.stat("k"), None)
        return delete(keys)

    monkeypatch.setattr(h.dest, "delete_many", late_delete)
    result = converger.converge("k", Hint(removed=True, may_delete=True))
    assert result.outcome is Outcome.COPIED and h.dest.contents() == {"k": b"v3"}


def test_a_consumers_status_says_none_of_what_nats_hasnt_told_yet_and_then_its_counts():
    from nats.js.api import ConsumerConfig, ConsumerInfo

    from replicator import config
    from replicator.jetstream import Consumer

    settings = config.load({"S3_SYNC_BUCKET": "b-1", "S3_SYNC_EVENTS": "jetstream"})
    queue = KeyedQueue(10)
    consumer = Consumer(settings, queue, Intake(queue, lambda reason: None), lambda reason: None,
                        durable="replicator-relics-b-1")
    assert consumer.status() == {"consumer": "replicator-relics-b-1", "connected": False, "pending": None,
                                 "ack_pending": None, "redelivered": None, "dead_lettered": 0, "lease_holder": None,
                                 "checked_at": None}
    consumer.connected.set()
    consumer.dead_lettered = 2
    consumer.info = ConsumerInfo(name="replicator-relics-b-1", stream_name="minio-events", config=ConsumerConfig(),
                                 created=None, num_pending=5,
                                 num_ack_pending=3, num_redelivered=1)
    consumer.lease_holder, consumer.checked = "host-a-123", 1700000000.0
    status = consumer.status()
    assert (status["connected"], status["pending"], status["ack_pending"], status["redelivered"]) == (True, 5, 3, 1)
    assert (status["dead_lettered"], status["lease_holder"]) == (2, "host-a-123")
    assert status["checked_at"] == "2023-11-14T22:13:20.000Z"
