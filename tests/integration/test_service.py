"""The sidecar (`python -m replicator run`) against real MinIO processes.

Every test runs the real service as a subprocess and watches it from outside: the
destination's contents, /readyz, /status and /metrics, its exit code and log.
"""

from __future__ import annotations

import io
import os
import random
import signal
import threading

import pytest

from tests.servers import MinioServer
from tests.sidecar import TcpProxy, wait_for

MiB = 1024 * 1024


def put(pair, key: str, data: bytes, **kwargs) -> None:
    pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data), **kwargs)


def dest_has(pair, key: str) -> bool:
    try:
        pair.dest.head_object(Bucket=pair.dest_bucket, Key=key)
        return True
    except pair.dest.exceptions.ClientError:
        return False


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def in_sync(pair) -> bool:
    return pair.dest_snapshot() == pair.source_snapshot()


def test_uploads_and_deletes_replicate_by_event(pair, sidecars):
    sidecar = sidecars(pair.env)
    wait_for(sidecar.ready, what="readiness")
    keys = ["plain.txt", "with space/and+plus%20.txt", "ünïcode/ключ.bin"]
    for key in keys:
        put(pair, key, key.encode() * 3)
    # No reconcile runs in this window (interval 3600 s): only events can do this.
    wait_for(lambda: all(dest_has(pair, k) for k in keys), timeout=15, what="event copies")
    assert {k: pair.dest_body(k) for k in keys} == {k: k.encode() * 3 for k in keys}
    pair.source.remove_object(pair.source_bucket, keys[0])
    wait_for(lambda: not dest_has(pair, keys[0]), timeout=15, what="event delete")
    metrics = sidecar.metrics()
    assert metrics['replicator_objects_copied_total{trigger="event"}'] >= 3
    assert metrics["replicator_objects_deleted_total"] >= 1
    assert metrics["replicator_replication_lag_seconds_count"] >= 4


def test_metadata_only_change_refreshes_tags(pair, sidecars):
    from minio.commonconfig import Tags

    put(pair, "tagged.txt", b"x")
    sidecar = sidecars(pair.env)
    wait_for(sidecar.ready, what="readiness")
    tags = Tags.new_object_tags()
    tags["colour"] = "blue"
    pair.source.set_object_tags(pair.source_bucket, "tagged.txt", tags)

    def dest_tags():
        tag_set = pair.dest.get_object_tagging(Bucket=pair.dest_bucket, Key="tagged.txt")["TagSet"]
        return {t["Key"]: t["Value"] for t in tag_set}

    wait_for(lambda: dest_tags() == {"colour": "blue"}, timeout=15, what="tags at the destination")


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_overwrite_bursts_end_with_the_final_content(pair, sidecars):
    sidecar = sidecars(pair.env, S3_SYNC_WORKERS=4)
    wait_for(sidecar.ready, what="readiness")
    rng = random.Random(7)
    keys = [f"burst/{i}" for i in range(5)]

    def writer(seed: int) -> None:
        local = random.Random(seed)
        for n in range(40):
            key = local.choice(keys)
            if local.random() < 0.15:
                pair.source.remove_object(pair.source_bucket, key)
            else:
                put(pair, key, f"{seed}-{n}-".encode() * local.randint(1, 200))

    threads = [threading.Thread(target=writer, args=(rng.randint(0, 1 << 30),)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: sidecar.idle() and in_sync(pair), timeout=30, what="destination == source")
    metrics = sidecar.metrics()
    # 120 writes to 5 keys: coalescing means far fewer copies than events.
    assert metrics['replicator_objects_copied_total{trigger="event"}'] < 120
    assert metrics.get('replicator_objects_copied_total{trigger="reconcile"}', 0) == 0


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_gap_in_the_event_stream_is_repaired_by_a_reconcile(pair, sidecars):
    """Deterministic missed events: a proxy holds the listener's reconnect while
    objects are uploaded straight to the (real) source."""
    source = pair.servers["source"]
    proxy = TcpProxy(source.port)
    try:
        env = {**pair.env, "MINIO_ENDPOINT": proxy.endpoint}
        sidecar = sidecars(env)
        wait_for(sidecar.ready, what="readiness")
        proxy.hold()
        proxy.cut()
        wait_for(lambda: not sidecar.ready(), what="not ready while the listener is cut off")
        assert "listener" in sidecar.get("/readyz")[1].decode()
        missed = [f"missed/{i}" for i in range(5)]
        for key in missed:
            put(pair, key, b"while nobody listened")
        proxy.release()
        wait_for(sidecar.ready, timeout=30, what="readiness after reconnect")
        wait_for(lambda: all(dest_has(pair, k) for k in missed), timeout=60, what="repair of missed objects")
        metrics = sidecar.metrics()
        assert metrics["replicator_listener_reconnects_total"] >= 1
        assert metrics["replicator_reconcile_repaired_objects_total"] >= len(missed)
        assert "listener reconnected" in sidecar.log()
    finally:
        proxy.close()


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_silent_half_open_stream_is_noticed_and_replaced(pair, sidecars):
    source = pair.servers["source"]
    proxy = TcpProxy(source.port)
    try:
        env = {**pair.env, "MINIO_ENDPOINT": proxy.endpoint}
        sidecar = sidecars(env, S3_SYNC_LISTEN_TIMEOUT=3)
        wait_for(sidecar.ready, what="readiness")
        proxy.freeze()  # no FIN, no RST: only silence tells
        wait_for(lambda: sidecar.metrics()["replicator_listener_reconnects_total"] >= 1, timeout=30,
                 what="a reconnect after the stream went silent")
        put(pair, "after-silence.txt", b"heard")
        wait_for(lambda: dest_has(pair, "after-silence.txt"), timeout=30, what="events flowing again")
        assert "ReadTimeoutError" in sidecar.log()
    finally:
        proxy.close()


def test_source_restart_reconnects_and_catches_up(minio_dest, sidecars, tmp_path):
    """Restart a real source MinIO under the running sidecar."""
    from minio import Minio

    from tests.conftest import DEST_PASSWORD, DEST_USER, boto_client, unique_bucket

    source = MinioServer("restart-src", workdir=str(tmp_path)).start()
    try:
        client = Minio(source.host, source.user, source.password, secure=False)
        client.make_bucket("restart-src")
        dest_bucket = unique_bucket("restart-dst")
        env = {
            "S3_SYNC_ACCESS_KEY": DEST_USER, "S3_SYNC_SECRET_KEY": DEST_PASSWORD,
            "S3_SYNC_BUCKET": dest_bucket, "S3_SYNC_ENDPOINT": minio_dest.endpoint,
            "MINIO_ENDPOINT": source.endpoint, "MINIO_ACCESS_KEY": source.user,
            "MINIO_SECRET_KEY": source.password, "MINIO_BUCKET": "restart-src",
            "S3_SYNC_RETRY_DELAY": "0.2",
        }
        sidecar = sidecars(env)
        wait_for(sidecar.ready, what="readiness")
        source.stop()
        wait_for(lambda: not sidecar.ready(), what="not ready while the source is down")
        source.start()
        for i in range(3):
            client.put_object("restart-src", f"after/{i}", io.BytesIO(b"back"), 4)
        dest = boto_client(minio_dest.endpoint, DEST_USER, DEST_PASSWORD)

        def copied() -> bool:
            listed = dest.list_objects_v2(Bucket=dest_bucket).get("Contents", [])
            return {o["Key"] for o in listed} >= {f"after/{i}" for i in range(3)}

        wait_for(copied, timeout=60, what="objects after the restart")
        wait_for(sidecar.ready, timeout=30, what="readiness after the restart")
        assert sidecar.metrics()["replicator_listener_reconnects_total"] >= 1
    finally:
        source.close()


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_destination_outage_backlog_drains_without_loss(pair, sidecars):
    dest_server: MinioServer = pair.servers["dest"]
    proxy = TcpProxy(dest_server.port)
    try:
        env = {**pair.env, "S3_SYNC_ENDPOINT": proxy.endpoint}
        sidecar = sidecars(env, S3_SYNC_QUEUE_SIZE=20, S3_SYNC_RETRY_DELAY=0.2, S3_SYNC_MAX_RETRIES=2,
                           S3_SYNC_CONNECT_TIMEOUT=1, S3_SYNC_READ_TIMEOUT=1, S3_SYNC_WORKERS=2)
        wait_for(sidecar.ready, what="readiness")
        rss_before = _rss_kib(sidecar.proc.pid)
        proxy.hold()  # the destination stops answering: connections hang, then time out
        proxy.cut()
        keys = [f"outage/{i:03d}" for i in range(150)]
        depths = []
        for key in keys:
            put(pair, key, key.encode() * 100)
            depths.append(sidecar.status()["queue"]["depth"])

        def failures() -> float:
            return sum(v for k, v in sidecar.metrics().items() if k.startswith("replicator_failures_total"))

        wait_for(lambda: failures() >= 1, timeout=60, what="the outage to be noticed")
        depths.extend(sidecar.status()["queue"]["depth"] for _ in range(10))
        rss_during = _rss_kib(sidecar.proc.pid)
        proxy.release()
        wait_for(lambda: set(keys) <= set(pair.dest_keys()), timeout=120, what="backlog drained")
        wait_for(lambda: in_sync(pair), timeout=30, what="destination == source")
        assert max(depths) <= 20  # bounded: S3_SYNC_QUEUE_SIZE distinct keys, never more
        assert rss_during < rss_before + 50 * 1024  # memory flat while the destination is down
    finally:
        proxy.close()


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_tag_change_during_a_destination_outage_arrives_after_it(pair, sidecars):
    # A reconcile can't see tag changes: a refresh that failed must not be "left" to it.
    from minio.commonconfig import Tags

    put(pair, "tagged.txt", b"x")
    dest_server: MinioServer = pair.servers["dest"]
    proxy = TcpProxy(dest_server.port)
    try:
        env = {**pair.env, "S3_SYNC_ENDPOINT": proxy.endpoint}
        sidecar = sidecars(env, S3_SYNC_RETRY_DELAY=0.2, S3_SYNC_MAX_RETRIES=2, S3_SYNC_CONNECT_TIMEOUT=1,
                           S3_SYNC_READ_TIMEOUT=1, S3_SYNC_RECONCILE_COOLDOWN=1)
        wait_for(sidecar.ready, what="readiness")
        wait_for(lambda: dest_has(pair, "tagged.txt"), what="the initial copy")
        proxy.hold()
        proxy.cut()
        tags = Tags.new_object_tags()
        tags["colour"] = "blue"
        pair.source.set_object_tags(pair.source_bucket, "tagged.txt", tags)
        wait_for(lambda: sidecar.status()["queue"]["metadata_waiting"] == 1, timeout=60,
                 what="the failed refresh to wait for the destination")
        assert "checked again after the next reconcile" in sidecar.log()
        proxy.release()

        def dest_tags():
            tag_set = pair.dest.get_object_tagging(Bucket=pair.dest_bucket, Key="tagged.txt")["TagSet"]
            return {t["Key"]: t["Value"] for t in tag_set}

        wait_for(lambda: dest_tags() == {"colour": "blue"}, timeout=60, what="tags after the outage")
        # The sweep (on by default) may have queued the same change while the destination
        # was away: that copy of it waits for a reconcile too, and goes once one completes.
        wait_for(lambda: sidecar.status()["queue"]["metadata_waiting"] == 0, timeout=60, what="nothing kept")
    finally:
        proxy.close()


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_sigterm_during_multipart_copies_leaves_no_partial_objects(pair, sidecars):
    blobs = {f"large/{i}": os.urandom(48 * MiB) for i in range(2)}
    sidecar = sidecars(pair.env, S3_SYNC_SHUTDOWN_TIMEOUT=0.2, S3_SYNC_MULTIPART_THRESHOLD="5MiB",
                       S3_SYNC_MULTIPART_CHUNK_SIZE="5MiB", S3_SYNC_MULTIPART_CONCURRENCY=1)
    wait_for(sidecar.ready, what="readiness")
    for key, data in blobs.items():
        put(pair, key, data, part_size=16 * MiB)

    def uploads() -> list:
        return pair.dest.list_multipart_uploads(Bucket=pair.dest_bucket).get("Uploads", [])

    wait_for(uploads, timeout=30, interval=0.01, what="a multipart copy in flight")
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(30) == 0
    assert uploads() == []  # aborted, not orphaned
    for key in pair.dest_keys():  # anything that did land is whole
        assert pair.dest_body(key) == blobs[key]
    assert "aborting copies in flight" in sidecar.log()


def test_second_signal_exits_at_once(pair, sidecars):
    sidecar = sidecars(pair.env)
    wait_for(sidecar.ready, what="readiness")
    sidecar.signal(signal.SIGINT)
    sidecar.signal(signal.SIGINT)
    assert sidecar.wait(10) in (0, 1)
    assert sidecar.proc.returncode == 1 or "Stopped" in sidecar.log()


def test_disabled_sidecar_idles_and_says_so(pair, sidecars):
    put(pair, "never.txt", b"not copied")
    sidecar = sidecars(pair.env, S3_SYNC_ENABLED="false")
    status = sidecar.status()
    assert status["state"] == "disabled"
    assert sidecar.get("/healthz")[0] == 200
    assert sidecar.get("/readyz")[0] == 503
    assert "disabled" in sidecar.log()
    assert pair.dest_keys() == []
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(15) == 0


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_readiness_follows_the_endpoints(pair, sidecars, tmp_path):
    """Not ready while the source is unreachable at start (no crash loop), ready once it
    answers, not ready again when the listener loses it."""
    late = MinioServer("late", pair.servers["source"].user, pair.servers["source"].password,
                       workdir=str(tmp_path))
    try:
        env = {**pair.env, "MINIO_ENDPOINT": late.endpoint, "MINIO_BUCKET": "late-bucket",
               "S3_SYNC_RETRY_DELAY": "0.2"}
        sidecar = sidecars(env)
        wait_for(lambda: sidecar.status()["state"] == "waiting-for-endpoints", what="waiting state")
        assert sidecar.get("/readyz")[0] == 503
        assert sidecar.proc.poll() is None
        late.start()
        from minio import Minio

        Minio(late.host, late.user, late.password, secure=False).make_bucket("late-bucket")
        wait_for(sidecar.ready, timeout=90, what="ready once the source answers")
        late.stop()
        wait_for(lambda: not sidecar.ready(), timeout=30, what="not ready after losing the source")
        assert sidecar.get("/healthz")[0] == 200  # alive throughout
    finally:
        late.close()


def test_metrics_are_exposed_and_move(pair, sidecars):
    put(pair, "before.txt", b"reconciled")
    sidecar = sidecars(pair.env)
    wait_for(sidecar.ready, what="readiness")
    before = sidecar.metrics()
    for name in ("replicator_queue_depth", "replicator_in_flight", "replicator_listener_connected",
                 "replicator_reconcile_last_success_timestamp_seconds", "replicator_bytes_copied_total",
                 "replicator_reconcile_duration_seconds_count", "replicator_listener_reconnects_total"):
        assert name in before, name
    assert before["replicator_listener_connected"] == 1
    assert before['replicator_objects_copied_total{trigger="reconcile"}'] == 1
    assert before["replicator_reconcile_last_success_timestamp_seconds"] > 0
    put(pair, "after.txt", b"by event")
    wait_for(lambda: dest_has(pair, "after.txt"), timeout=15, what="event copy")
    after = sidecar.metrics()
    assert after['replicator_events_received_total{kind="created"}'] >= 1
    assert after["replicator_bytes_copied_total"] > before["replicator_bytes_copied_total"]
    assert after["replicator_replication_lag_seconds_count"] > before.get(
        "replicator_replication_lag_seconds_count", 0)
