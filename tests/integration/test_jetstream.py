"""S3_SYNC_EVENTS=jetstream against real processes: MinIO publishing to a NATS
JetStream target (with its queue_dir), nats-server, the sidecar, and a destination.

What the durable path adds over the listen stream, and is tested here: events
published while replicator is down are delivered when it is back; a configuration
that would lose every event is refused with a message naming the cause."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import subprocess
import time

import nats
from minio import Minio
from minio.notificationconfig import NotificationConfig, QueueConfig

from tests.conftest import DEST_PASSWORD, DEST_USER, SOURCE_PASSWORD, SOURCE_USER, boto_client, run_cli, unique_bucket
from tests.integration.conftest import SUBJECT
from tests.servers import MinioServer, NatsServer, find_tool, minio_nats_env
from tests.sidecar import wait_for

ARN = "arn:minio:sqs::PRIMARY:nats"


class Setup:
    def __init__(self, minio: MinioServer, dest_server: MinioServer, nats_server: NatsServer, tmp_path, *,
                 rule: bool = True):
        self.source = Minio(minio.host, SOURCE_USER, SOURCE_PASSWORD, secure=False)
        self.bucket = unique_bucket("src-js")
        self.source.make_bucket(self.bucket)
        if rule:
            self.source.set_bucket_notification(self.bucket, NotificationConfig(queue_config_list=[
                QueueConfig(queue=ARN, events=["s3:ObjectCreated:*", "s3:ObjectRemoved:*"])]))
        self.dest = boto_client(dest_server.endpoint, DEST_USER, DEST_PASSWORD)
        self.dest_bucket = unique_bucket("dst-js")
        self.dest.create_bucket(Bucket=self.dest_bucket)
        self.stream = "minio-events"  # one per subject: JetStream refuses two streams taking one subject
        self.env = {
            "S3_SYNC_ACCESS_KEY": DEST_USER, "S3_SYNC_SECRET_KEY": DEST_PASSWORD, "S3_SYNC_BUCKET": self.dest_bucket,
            "S3_SYNC_ENDPOINT": dest_server.endpoint, "MINIO_ENDPOINT": minio.endpoint,
            "MINIO_ACCESS_KEY": SOURCE_USER, "MINIO_SECRET_KEY": SOURCE_PASSWORD, "MINIO_BUCKET": self.bucket,
            "S3_SYNC_RETRY_DELAY": "0.05", "S3_SYNC_CONNECT_TIMEOUT": "2", "S3_SYNC_READ_TIMEOUT": "10",
            "S3_SYNC_STATE_DIR": str(tmp_path / "state"),
            "S3_SYNC_EVENTS": "jetstream", "S3_SYNC_NATS_URL": nats_server.url, "S3_SYNC_NATS_SUBJECT": SUBJECT,
            "S3_SYNC_NATS_STREAM": self.stream,
        }

    def put(self, key: str, data: bytes) -> None:
        self.source.put_object(self.bucket, key, io.BytesIO(data), len(data))

    def dest_keys(self) -> set[str]:
        found: set[str] = set()
        for page in self.dest.get_paginator("list_objects_v2").paginate(Bucket=self.dest_bucket):
            found.update(item["Key"] for item in page.get("Contents", ()))
        return found

    def body(self, key: str) -> bytes:
        return self.dest.get_object(Bucket=self.dest_bucket, Key=key)["Body"].read()


def events_received(sidecar) -> float:
    return sum(value for name, value in sidecar.metrics().items()
               if name.startswith("replicator_events_received_total"))


def test_events_arrive_through_the_stream_odd_keys_included(publishing_minio, minio_dest, nats_server, tmp_path,
                                                            sidecars):
    setup = Setup(publishing_minio, minio_dest, nats_server, tmp_path)
    sidecar = sidecars(setup.env)
    wait_for(sidecar.ready, timeout=60, what="readiness")
    keys = ["plain.txt", "with space/and+plus%20.txt", "ünïcode/ключ.bin"]
    for key in keys:
        setup.put(key, key.encode() * 2)
    # No reconcile runs in this window (interval 3600 s): only the stream's events can do this.
    wait_for(lambda: setup.dest_keys() == set(keys), timeout=30, what="the copies by event")
    assert {k: setup.body(k) for k in keys} == {k: k.encode() * 2 for k in keys}
    setup.source.remove_object(setup.bucket, keys[0])
    wait_for(lambda: setup.dest_keys() == set(keys[1:]), timeout=30, what="the delete by event")
    metrics = sidecar.metrics()
    assert metrics['replicator_objects_copied_total{trigger="event"}'] >= 3
    assert "replicator_events_pending" in metrics


def test_events_published_while_replicator_was_down_are_delivered_when_it_is_back(
        publishing_minio, minio_dest, nats_server, tmp_path, sidecars):
    setup = Setup(publishing_minio, minio_dest, nats_server, tmp_path)
    first = sidecars(setup.env)
    wait_for(first.ready, timeout=60, what="readiness")
    setup.put("before.txt", b"before")
    wait_for(lambda: "before.txt" in setup.dest_keys(), timeout=30, what="the first copy")
    first.signal(signal.SIGKILL)
    first.wait()
    down = [f"while-down/{n:03d}.txt" for n in range(40)]
    for key in down:
        setup.put(key, key.encode())
    time.sleep(4)  # MinIO's queue_dir hands them to the stream within its 3 s poll
    second = sidecars(setup.env)
    # Delivered from the durable consumer, which kept its place across the kill: every
    # one of them arrives as an event (the initial reconcile may copy some first; the
    # events still come, and find those in sync).
    wait_for(lambda: events_received(second) >= len(down), timeout=60, what="the stream's replay of the events")
    wait_for(lambda: setup.dest_keys() >= set(down), timeout=60, what="the copies")


def test_a_stream_that_does_not_take_minios_subject_is_refused(publishing_minio, minio_dest, nats_server, tmp_path,
                                                               sidecars):
    setup = Setup(publishing_minio, minio_dest, nats_server, tmp_path)
    setup.env["S3_SYNC_NATS_STREAM"] = setup.stream = "OTHER_EVENTS"

    async def make() -> None:
        connection = await nats.connect(nats_server.url)
        await connection.jetstream().add_stream(name=setup.stream, subjects=["other.subject"])
        await connection.close()

    asyncio.run(make())
    sidecar = sidecars(setup.env)
    wait_for(lambda: "the stream takes other.subject, not S3_SYNC_NATS_SUBJECT=minio.events" in sidecar.log(),
             timeout=30, what="the refusal")
    assert not sidecar.ready()
    assert "every event would be lost" in sidecar.status()["detail"]


def test_a_bucket_that_publishes_nothing_to_nats_is_named(publishing_minio, minio_dest, nats_server, tmp_path,
                                                          sidecars):
    setup = Setup(publishing_minio, minio_dest, nats_server, tmp_path, rule=False)
    sidecar = sidecars(setup.env)
    wait_for(lambda: f"bucket {setup.bucket} publishes nothing to NATS" in sidecar.log(), timeout=30,
             what="the refusal")
    assert not sidecar.ready()
    checked = run_cli(setup.env, "check")
    assert checked.code == 1 and "publishes nothing to NATS" in checked.output


def test_the_lease_over_a_real_key_value_bucket(nats_server):
    """A second holder is refused; once the holder stops renewing for the bucket's TTL,
    another takes over, and the stale holder's renewal is refused."""
    import threading

    from replicator import config
    from replicator.jetstream import JetStream
    from replicator.lease import Lease

    settings = config.load({"S3_SYNC_BUCKET": "b-1", "S3_SYNC_EVENTS": "jetstream", "S3_SYNC_NATS_URL": nats_server.url,
                            "S3_SYNC_NATS_STREAM": "minio-events", "S3_SYNC_NATS_SUBJECT": SUBJECT})
    jetstream = JetStream(settings, threading.Event())
    jetstream.start()
    try:
        jetstream.connect()
        store = jetstream.key_value(unique_bucket("leases"), ttl=2.0)
        first, second = Lease(store, "photos-aws", "first"), Lease(store, "photos-aws", "second")
        assert first.hold() and not second.hold()
        token = first.revision
        assert first.hold() and first.revision > token
        assert store.get("photos-aws") == b"first"
        time.sleep(3.5)  # first stops renewing: the key ages out
        assert second.hold()
        assert not first.hold()  # stale: its revision isn't the key's any more
        assert store.get("photos-aws") == b"second"
        second.release()
        assert store.get("photos-aws") is None
    finally:
        jetstream.stop()


def test_two_processes_read_one_consumer_and_one_of_them_reconciles(publishing_minio, minio_dest, nats_server,
                                                                   tmp_path, sidecars):
    setup = Setup(publishing_minio, minio_dest, nats_server, tmp_path)
    for n in range(5):
        setup.put(f"before/{n}.txt", b"before")
    first, second = sidecars(setup.env), sidecars(setup.env)
    wait_for(lambda: first.ready() and second.ready(), timeout=90, what="both ready")
    assert setup.dest_keys() >= {f"before/{n}.txt" for n in range(5)}
    logs = [first.log(), second.log()]
    holders = [log for log in logs if "holding the reconcile lease" in log]
    assert len(holders) == 1, "exactly one process reconciles"
    assert any("(holder of the lease)" in log for log in logs if log is not holders[0])
    keys = [f"shared/{n:03d}.txt" for n in range(60)]
    for key in keys:
        setup.put(key, key.encode())
    wait_for(lambda: setup.dest_keys() >= set(keys), timeout=60, what="the copies by event")
    # One durable consumer, two readers: each message went to one of them, so together
    # they saw every event once (two consumers would have seen each twice).
    received = events_received(first) + events_received(second)
    assert len(keys) <= received < 2 * len(keys), received


class Reader:
    """One process's end of a consumer, without the sidecar around it: the test takes
    the queue's items and settles them itself."""

    def __init__(self, nats_server: NatsServer, name: str, **settings: str):
        import threading

        from replicator import config, jetstream
        from replicator.events import Intake
        from replicator.workqueue import KeyedQueue

        self.url, self.subject = nats_server.url, f"{name}.events"
        self.settings = config.load({"S3_SYNC_BUCKET": "b-1", "MINIO_BUCKET": name, "S3_SYNC_EVENTS": "jetstream",
                                     "S3_SYNC_NATS_URL": nats_server.url, "S3_SYNC_NATS_STREAM": name,
                                     "S3_SYNC_NATS_SUBJECT": self.subject, **settings})
        self.stopping = threading.Event()
        self.js = jetstream.JetStream(self.settings, self.stopping)
        self.js.start()
        self.js.connect()
        self.queue = KeyedQueue(self.settings.queue_size)
        self.consumer = jetstream.Consumer(self.settings, self.queue, Intake(self.queue, lambda reason: None),
                                           lambda reason: None)
        self.js.subscribe(self.consumer)

    def publish(self, keys: list[str]) -> None:
        import json

        async def publish() -> None:
            connection = await nats.connect(self.url)
            js = connection.jetstream()
            for key in keys:
                record = {"eventName": "s3:ObjectCreated:Put", "eventTime": "2026-12-07T15:00:00Z",
                          "s3": {"bucket": {"name": self.settings.source_bucket}, "object": {"key": key, "size": 1}}}
                await js.publish(self.subject, json.dumps({"Records": [record]}).encode())
            await connection.close()

        asyncio.run(publish())

    def close(self) -> None:
        self.stopping.set()
        self.js.stop()


def test_a_message_held_longer_than_the_ack_wait_is_not_delivered_again(nats_server, monkeypatch):
    """A long copy: its message is told to NATS as in progress, so NATS doesn't hand it to
    another reader at the ack wait; once settled, it is gone for good."""
    from replicator import jetstream
    from replicator.workqueue import settle

    monkeypatch.setattr(jetstream, "ACK_WAIT", 2.0)  # heartbeats every 2/3 s
    reader = Reader(nats_server, "heartbeat", S3_SYNC_QUEUE_SIZE="10")
    try:
        reader.publish(["big.bin"])
        item = wait_for(lambda: reader.queue.get(timeout=0), timeout=10, what="the delivery")
        time.sleep(6)  # three ack waits: without the heartbeats, delivered again twice by now
        assert reader.queue.depth() == 0, "delivered again while held"
        assert item.receipts[0].message.metadata.num_delivered == 1
        settle(item, True)
        reader.queue.done(item.key)
        time.sleep(3)
        assert reader.queue.depth() == 0 and not reader.js.outstanding
    finally:
        reader.close()


def test_a_process_holds_only_what_its_workers_start_soon_and_the_stream_keeps_the_rest(nats_server):
    """A backlog is shared by the processes reading it: each holds a few messages per
    worker, not as many as its queue could take, and fetches more as they settle."""
    from replicator import jetstream
    from replicator.workqueue import settle

    reader = Reader(nats_server, "prefetch", S3_SYNC_WORKERS="2")  # its queue takes 10,000
    held = 2 * jetstream.PREFETCH_PER_WORKER
    try:
        reader.publish([f"k/{n}" for n in range(50)])
        wait_for(lambda: reader.queue.depth() == held, timeout=10, what="the first fetch")
        time.sleep(2)  # two fetch waits: nothing more comes while nothing settles
        assert reader.queue.depth() == held and len(reader.consumer.held) == held
        taken = 0
        while taken < 50:
            item = wait_for(lambda: reader.queue.get(timeout=0), timeout=10, what=f"message {taken + 1}")
            assert len(reader.consumer.held) <= held
            settle(item, True)
            reader.queue.done(item.key)
            taken += 1
        time.sleep(1)
        assert reader.queue.depth() == 0 and not reader.consumer.held
    finally:
        reader.close()


def test_events_that_aged_out_of_the_stream_unread_bring_a_reconcile(nats_server, minio_dest, tmp_path, sidecars):
    """A replicator down longer than the stream keeps events: their keys come by the
    reconcile the consumer's check asks for, though another process's (here: its own
    predecessor's) recent result would otherwise stand for one."""
    subject = "aging.events"

    async def make() -> None:
        connection = await nats.connect(nats_server.url)
        await connection.jetstream().add_stream(name="aging", subjects=[subject], max_age=3.0)
        await connection.close()

    asyncio.run(make())
    minio = MinioServer("source-aging", SOURCE_USER, SOURCE_PASSWORD,
                        env=minio_nats_env(nats_server, subject, tmp_path / "queue")).start()
    try:
        setup = Setup(minio, minio_dest, nats_server, tmp_path)
        setup.env.update(S3_SYNC_NATS_STREAM="aging", S3_SYNC_NATS_SUBJECT=subject, S3_SYNC_INTERVAL="604800")
        first = sidecars(setup.env)
        wait_for(first.ready, timeout=60, what="readiness")
        first.signal(signal.SIGKILL)
        first.wait()
        keys = [f"aged/{n}.txt" for n in range(10)]
        for key in keys:
            setup.put(key, b"aged")
        time.sleep(8)  # into the stream within MinIO's 3 s poll, out of it 3 s later
        second = sidecars(setup.env)
        wait_for(lambda: setup.dest_keys() >= set(keys), timeout=90, what="the reconcile's copies")
        assert "aged out before they were replicated" in second.log()
    finally:
        minio.close()


def test_events_minio_failed_to_send_bring_a_reconcile(minio_dest, tmp_path, sidecars):
    """A NATS target without a queue_dir, and NATS down: MinIO fails to send the uploads'
    events (the uploads succeed) and counts them. The count's rise brings a reconcile,
    though the interval is a week and nothing else tells of the loss."""
    own_nats = NatsServer().start()  # this test's own: it stops it
    minio = MinioServer("source-unqueued", SOURCE_USER, SOURCE_PASSWORD,
                        env=minio_nats_env(own_nats, SUBJECT, None)).start()
    try:
        setup = Setup(minio, minio_dest, own_nats, tmp_path)
        setup.env["S3_SYNC_INTERVAL"] = "604800"
        sidecar = sidecars(setup.env)
        wait_for(sidecar.ready, timeout=60, what="readiness")
        own_nats.stop()
        keys = [f"unsent/{n}.txt" for n in range(5)]
        for key in keys:
            setup.put(key, b"unsent")
        own_nats.start()
        # MinIO refreshes its counts every 10 s; replicator reads them every 30 s.
        wait_for(lambda: setup.dest_keys() >= set(keys), timeout=90, interval=0.5, what="the reconcile's copies")
        log = sidecar.log()
        assert re.search(r"MinIO's minio_notify_target_failed_events\{target=PRIMARY:nats\} rose by [1-5]: events "
                         r"MinIO failed to send are lost; reconciling ", log), log[-3000:]
        assert "unreadable" not in log
        assert SOURCE_PASSWORD not in log and "Bearer" not in log
    finally:
        minio.close()
        own_nats.close()


def test_check_tells_whether_minios_count_of_failed_events_is_readable(publishing_minio, minio_dest, nats_server,
                                                                       tmp_path):
    """Read with the source's keys: the root user's are let in; a user for replicating
    (readwrite) but not for reading metrics is refused, which check warns of and passes."""
    setup = Setup(publishing_minio, minio_dest, nats_server, tmp_path)
    checked = run_cli(setup.env, "check")
    assert checked.code == 0, checked.output
    assert "✓ MinIO's count of failed events readable" in checked.output
    reader, password = "metrics-less", "metrics-less-secret-Kq73"
    mc_env = {**os.environ, "MC_HOST_src": f"http://{SOURCE_USER}:{SOURCE_PASSWORD}@{publishing_minio.host}"}
    for args in (("admin", "user", "add", "src", reader, password),
                 ("admin", "policy", "attach", "src", "readwrite", "--user", reader)):
        subprocess.run([find_tool("mc"), "--quiet", *args], env=mc_env, check=True, capture_output=True, timeout=30)
    checked = run_cli({**setup.env, "MINIO_ACCESS_KEY": reader, "MINIO_SECRET_KEY": password}, "check")
    assert checked.code == 0, checked.output
    assert ("MinIO's count of failed events unreadable (source: read metrics: AccessDenied (HTTP 403): check "
            "MINIO_ACCESS_KEY, MINIO_SECRET_KEY and their permissions: Access Denied.") in checked.output
    assert "needs admin:Prometheus, or MinIO MINIO_PROMETHEUS_AUTH_TYPE=public" in checked.output
    assert password not in checked.output


def dead_letters(nats_url: str, stream: str, durable: str) -> list:
    """The dead letters of one destination's consumer, oldest first."""
    from replicator.jetstream import dead_letter_stream, dead_letter_subject

    async def read() -> list:
        connection = await nats.connect(nats_url)
        try:
            js = connection.jetstream()
            name = dead_letter_stream(stream)[0]
            subscription = await js.pull_subscribe(dead_letter_subject(stream, durable), stream=name)
            try:
                found = await subscription.fetch(10, timeout=1)
            except nats.errors.TimeoutError:
                found = []
            await subscription.unsubscribe()
            return found
        finally:
            await connection.close()

    return asyncio.run(read())


def consumer_info(nats_url: str, stream: str, durable: str):
    async def read():
        connection = await nats.connect(nats_url)
        try:
            return await connection.jetstream().consumer_info(stream, durable)
        finally:
            await connection.close()

    return asyncio.run(read())


def test_a_poison_message_goes_to_the_dead_letter_stream_and_its_key_to_the_reconcile(
        publishing_minio, minio_dest, nats_server, tmp_path, sidecars):
    """A key the destination always refuses: once its message is past the age limit it
    is copied to the dead-letter stream with headers that say what failed, taken off the
    consumer (never delivered again), counted, shown on /status, and a reconcile asked
    for its key. Other keys go on arriving."""
    from urllib.parse import unquote

    from tests.faultproxy import FaultProxy, s3_error_document

    refused = s3_error_document("AccessDenied", 403)
    proxy = FaultProxy(minio_dest.port, lambda request: refused if "poison" in request.path else None)
    try:
        setup = Setup(publishing_minio, minio_dest, nats_server, tmp_path)
        setup.env.update(S3_SYNC_ENDPOINT=proxy.endpoint, S3_SYNC_NATS_DEAD_LETTER_AGE="1", S3_SYNC_MAX_RETRIES="1")
        sidecar = sidecars(setup.env)
        wait_for(sidecar.ready, timeout=60, what="readiness")
        section = sidecar.status()["jetstream"]
        durable = section["consumer"]
        assert durable == f"replicator-{setup.bucket}-{setup.dest_bucket}"
        assert section["connected"] is True and section["dead_lettered"] == 0
        assert section["pending"] == 0 and section["ack_pending"] == 0 and section["redelivered"] == 0
        assert section["checked_at"] is not None
        setup.put("poison/bad key.txt", b"never")
        setup.put("good.txt", b"fine")
        wait_for(lambda: "moved to the dead-letter stream" in sidecar.log(), timeout=60, what="the dead letter")
        assert "good.txt" in setup.dest_keys()
        [letter] = dead_letters(nats_server.url, setup.stream, durable)
        headers = letter.headers
        assert unquote(headers["Replicator-Key"]) == "poison/bad key.txt"
        assert headers["Replicator-Consumer"] == durable
        assert headers["Replicator-Destination"] == f"{setup.bucket}/{setup.dest_bucket}"
        assert int(headers["Replicator-Deliveries"]) >= 3
        assert "AccessDenied" in headers["Replicator-Error"] and DEST_PASSWORD not in headers["Replicator-Error"]
        assert b"poison" in letter.data  # the MinIO event, as it came
        assert 'poison/bad key.txt: its event failed' in sidecar.log()
        assert "an event was dead-lettered" in sidecar.log()  # the reconcile asked for its key
        metrics = sidecar.metrics()
        assert metrics["replicator_events_dead_lettered_total"] == 1
        assert sidecar.status()["jetstream"]["dead_lettered"] == 1
        # Off the consumer for good: nothing of it pending or delivered again.
        wait_for(lambda: consumer_info(nats_server.url, setup.stream, durable).num_ack_pending == 0, timeout=10,
                 what="the message off the consumer")
        time.sleep(3)
        assert len(dead_letters(nats_server.url, setup.stream, durable)) == 1
        assert sidecar.log().count("moved to the dead-letter stream") == 1
    finally:
        proxy.close()


def _publish_event(nats_url: str, subject: str, bucket: str, key: str) -> None:
    import json

    async def publish() -> None:
        connection = await nats.connect(nats_url)
        record = {"eventName": "s3:ObjectCreated:Put", "eventTime": "2026-12-07T15:00:00Z",
                  "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 4}}}
        await connection.jetstream().publish(subject, json.dumps({"Records": [record]}).encode())
        await connection.close()

    asyncio.run(publish())


def test_a_key_another_process_holds_is_handed_back_until_it_lets_go(nats_server):
    """Two processes on one consumer, one key: while the first holds the key's lock, the
    second's worker hands the key's message back (2 s) instead of copying it; once the
    lock is released, the message comes again and is converged and acknowledged."""
    import threading

    from replicator import config, jetstream
    from replicator.events import Intake
    from replicator.workqueue import KeyedQueue, WorkItem
    from tests.unit.test_keylocks import deferred
    from tests.unit.test_workers import Harness

    subject = "locks.events"
    settings = config.load({"S3_SYNC_BUCKET": "b-1", "MINIO_BUCKET": "locked", "S3_SYNC_EVENTS": "jetstream",
                            "S3_SYNC_NATS_URL": nats_server.url, "S3_SYNC_NATS_STREAM": "locks",
                            "S3_SYNC_NATS_SUBJECT": subject})
    stopping = threading.Event()
    first, second = jetstream.JetStream(settings, stopping), jetstream.JetStream(settings, stopping)
    first.holder, second.holder = "first-1", "second-1"  # two processes, as far as NATS can tell
    h = Harness()
    h.source.add("shared.txt", b"data")
    try:
        for js in (first, second):
            js.start()
            js.connect()
        idle = KeyedQueue(1)  # the first process's own queue stays full: it fetches nothing
        idle.put(WorkItem("placeholder", content=False, tags=False, event_time=0.0))
        holding = jetstream.Consumer(settings, idle, Intake(idle, lambda reason: None), lambda reason: None)
        first.subscribe(holding)
        reading = jetstream.Consumer(settings, h.queue, Intake(h.queue, lambda reason: None), lambda reason: None)
        second.subscribe(reading)
        assert holding.durable == reading.durable  # one consumer, two processes
        held = first.key_locks(holding.durable)
        assert held.take("shared.txt")
        h.workers.locks = locks = second.key_locks(reading.durable)
        before = deferred()
        h.workers.start()
        _publish_event(nats_server.url, subject, "locked", "shared.txt")
        wait_for(lambda: deferred() >= before + 2, timeout=15, what="the message handed back while the key is held")
        assert h.dest.stat("shared.txt") is None  # the holder's work, not ours
        held.release("shared.txt")
        wait_for(lambda: h.dest.stat("shared.txt") is not None, timeout=15, what="the copy once released")
        wait_for(lambda: not second.outstanding, timeout=10, what="the message acknowledged")
        assert len(locks.locks) == 0  # released after settling
    finally:
        stopping.set()
        h.queue.close()
        for js in (first, second):
            js.stop()


HOLDER = """
import sys, threading, time
from replicator import config
from replicator.jetstream import JetStream
settings = config.load({"S3_SYNC_BUCKET": "b-1", "S3_SYNC_EVENTS": "jetstream", "S3_SYNC_NATS_URL": sys.argv[1],
                        "S3_SYNC_NATS_STREAM": "minio-events", "S3_SYNC_NATS_SUBJECT": "minio.events"})
js = JetStream(settings, threading.Event())
js.holder = "victim-1"
js.start()
js.connect()
assert js.key_locks("c", bucket=sys.argv[2], ttl=2.0).take("photos/a.jpg")
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_ages_out_after_its_holder_is_killed(nats_server):
    """A process killed holding a key's lock stops renewing it: another takes it once the
    bucket's max age (the ack wait; 2 s here) has passed, not before."""
    import subprocess
    import sys
    import threading

    from replicator import config
    from replicator.jetstream import JetStream

    bucket = unique_bucket("keys")
    victim = subprocess.Popen([sys.executable, "-c", HOLDER, nats_server.url, bucket], stdout=subprocess.PIPE,
                              text=True)
    settings = config.load({"S3_SYNC_BUCKET": "b-1", "S3_SYNC_EVENTS": "jetstream", "S3_SYNC_NATS_URL": nats_server.url,
                            "S3_SYNC_NATS_STREAM": "minio-events", "S3_SYNC_NATS_SUBJECT": SUBJECT})
    js = JetStream(settings, threading.Event())
    js.start()
    try:
        assert victim.stdout is not None and victim.stdout.readline().strip() == "held"
        js.connect()
        js.holder = "survivor-1"
        locks = js.key_locks("c", bucket=bucket, ttl=2.0)
        assert not locks.take("photos/a.jpg")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        wait_for(lambda: locks.take("photos/a.jpg"), timeout=10, what="the dead holder's lock aged out")
    finally:
        victim.kill()
        js.stop()


def test_a_copy_whose_heartbeats_stop_reaching_nats_aborts_its_upload(monkeypatch):
    """nats-server goes away while a multipart copy for one of its messages runs: past
    the ack wait with no heartbeat confirmed, NATS would hand the message to another
    process, so the copy stops before its next part and aborts its upload. NATS back,
    the message comes again and is copied whole."""
    import threading

    from replicator import config, jetstream
    from replicator.config import MiB
    from replicator.converge import Converger
    from replicator.copier import Copier
    from replicator.events import Intake
    from replicator.retry import RetryPolicy
    from replicator.stores.memory import MemoryStore
    from replicator.workers import Workers
    from replicator.workqueue import KeyedQueue

    monkeypatch.setattr(jetstream, "ACK_WAIT", 2.0)  # heartbeats every 2/3 s
    server = NatsServer().start()
    subject = "cutoff.events"
    settings = config.load({"S3_SYNC_BUCKET": "b-1", "MINIO_BUCKET": "cut", "S3_SYNC_EVENTS": "jetstream",
                            "S3_SYNC_NATS_URL": server.url, "S3_SYNC_NATS_STREAM": "cutoff",
                            "S3_SYNC_NATS_SUBJECT": subject, "S3_SYNC_MULTIPART_THRESHOLD": "5MiB",
                            "S3_SYNC_MULTIPART_CHUNK_SIZE": "5MiB", "S3_SYNC_MULTIPART_CONCURRENCY": "1",
                            "S3_SYNC_RETRY_DELAY": "0"})
    source, dest = MemoryStore("source"), MemoryStore("destination")
    source.add("big.bin", b"x" * (20 * MiB))  # four parts
    parts, aborted = [], []
    upload_part, abort_multipart = dest.upload_part, dest.abort_multipart

    def slow_part(*args):
        parts.append(args[2])
        time.sleep(1.0)  # a part to a distant destination
        return upload_part(*args)

    def abort(*args):
        aborted.append(args[1])
        return abort_multipart(*args)

    monkeypatch.setattr(dest, "upload_part", slow_part)
    monkeypatch.setattr(dest, "abort_multipart", abort)
    stopping = threading.Event()
    policy = RetryPolicy(1, 0.0, stop=stopping)
    copier = Copier(source, dest, settings, policy)
    queue = KeyedQueue(10)
    workers = Workers(Converger(source, dest, copier, policy, threshold=settings.multipart_threshold), queue,
                      threads=1, delete=True)
    js = jetstream.JetStream(settings, stopping)
    js.start()
    try:
        js.connect()
        js.subscribe(jetstream.Consumer(settings, queue, Intake(queue, lambda reason: None), lambda reason: None))
        workers.start()
        _publish_event(server.url, subject, "cut", "big.bin")
        wait_for(lambda: parts, timeout=10, what="the first part")
        server.stop(signal.SIGKILL)  # no goodbye: heartbeats go nowhere from now on
        wait_for(lambda: aborted, timeout=15, what="the upload aborted")
        assert len(parts) < 4 and dest.stat("big.bin") is None and dest.incomplete_uploads() == {}
        server.start()
        wait_for(lambda: dest.stat("big.bin") is not None, timeout=60, what="the copy once NATS is back")
        assert dest.incomplete_uploads() == {}
    finally:
        stopping.set()
        queue.close()
        js.stop()
        copier.close()
        server.close()
