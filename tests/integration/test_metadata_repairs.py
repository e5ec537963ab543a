"""What a listing can't see, repaired for real (issue 10): a metadata-only rewrite whose
event copy failed, and changes made while no replicator was running.

Both run the real sidecar against real MinIO (and moto as the destination). A change
of Content-Type or user metadata by CopyObject with MetadataDirective=REPLACE leaves
size and ETag as they were; so do tag, retention and legal-hold changes. A reconcile
can't see any of them.
"""

from __future__ import annotations

import io
import signal

import pytest
from minio.commonconfig import REPLACE, CopySource, Tags

from tests.servers import MinioServer
from tests.sidecar import TcpProxy, wait_for


def put(pair, key: str, data: bytes, **kwargs) -> None:
    pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data), **kwargs)


def rewrite_metadata(pair, key: str, content_type: str, metadata: dict[str, str] | None = None) -> None:
    """What `mc cp --attr` and CopyObject with MetadataDirective=REPLACE do: the same bytes,
    new attributes."""
    pair.source.copy_object(pair.source_bucket, key, CopySource(pair.source_bucket, key),
                            metadata={"Content-Type": content_type, **(metadata or {})}, metadata_directive=REPLACE)


def tags(**values) -> Tags:
    tag_set = Tags.new_object_tags()
    tag_set.update(values)
    return tag_set


def dest_head(pair, key: str) -> dict:
    return pair.dest.head_object(Bucket=pair.dest_bucket, Key=key)


def dest_tags(pair, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in pair.dest.get_object_tagging(Bucket=pair.dest_bucket, Key=key)["TagSet"]}


def test_a_metadata_rewrite_whose_copy_failed_is_repaired_after_the_next_reconcile(pair, sidecars):
    put(pair, "report.csv", b"a,b\n1,2\n", content_type="text/plain")
    dest_server: MinioServer = pair.servers["dest"]
    proxy = TcpProxy(dest_server.port)
    try:
        # The sweep is off: the repair must come from the kept event, within one reconcile.
        sidecar = sidecars({**pair.env, "S3_SYNC_ENDPOINT": proxy.endpoint}, S3_SYNC_RETRY_DELAY=0.2,
                           S3_SYNC_MAX_RETRIES=2, S3_SYNC_CONNECT_TIMEOUT=1, S3_SYNC_READ_TIMEOUT=1,
                           S3_SYNC_METADATA_SWEEP_INTERVAL=0)
        wait_for(sidecar.ready, what="readiness")
        wait_for(lambda: dest_head(pair, "report.csv")["ContentType"] == "text/plain", what="the initial copy")
        proxy.hold()  # the destination goes away: event copies and reconciles fail
        proxy.cut()
        rewrite_metadata(pair, "report.csv", "text/csv", {"x-amz-meta-owner": "finance"})
        wait_for(lambda: sidecar.status()["queue"]["metadata_waiting"] == 1, timeout=60,
                 what="the failed copy to be kept for its metadata")
        assert "report.csv: " in sidecar.log() and "checked again after the next reconcile" in sidecar.log()
        proxy.release()  # back: the next reconcile completes, and the kept change follows it
        wait_for(lambda: dest_head(pair, "report.csv")["ContentType"] == "text/csv", timeout=60,
                 what="the new Content-Type after the outage")
        assert dest_head(pair, "report.csv")["Metadata"].get("owner") == "finance"
        assert pair.dest_body("report.csv") == b"a,b\n1,2\n"
        wait_for(lambda: sidecar.status()["queue"]["metadata_waiting"] == 0, timeout=60, what="nothing kept")
    finally:
        proxy.close()


def test_changes_made_while_replicator_was_stopped_are_repaired_by_the_sweep(pair, sidecars):
    put(pair, "tagged", b"t", tags=tags(team="blue"))
    put(pair, "untagged-later", b"u", tags=tags(keep="no"))
    put(pair, "typed", b"{}", content_type="text/plain")
    put(pair, "owned", b"o", metadata={"x-amz-meta-owner": "alice"})
    put(pair, "untouched", b"n", tags=tags(x="1"))
    first = sidecars(pair.env)
    wait_for(first.ready, what="readiness")
    wait_for(lambda: len(pair.dest_keys()) == 5, what="the initial copies")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0

    # While nothing listens: events of this time are gone for good.
    pair.source.set_object_tags(pair.source_bucket, "tagged", tags(team="red"))
    pair.source.delete_object_tags(pair.source_bucket, "untagged-later")
    rewrite_metadata(pair, "typed", "application/json")
    rewrite_metadata(pair, "owned", "application/octet-stream", {"x-amz-meta-owner": "bob"})

    second = sidecars(pair.env)
    wait_for(lambda: (second.status().get("metadata_sweep") or {}).get("passes"), timeout=60,
             what="the sweep after the start")
    sweep = second.status()["metadata_sweep"]["last"]
    assert sweep["reason"] == "after the initial reconcile"
    assert (sweep["checked"], sweep["differed"], sweep["failed"]) == (5, 4, 0)
    assert sweep["by_kind"] == {"tags": 2, "attributes": 2}
    wait_for(lambda: dest_tags(pair, "tagged") == {"team": "red"}, what="tags repaired")
    wait_for(lambda: dest_tags(pair, "untagged-later") == {}, what="removed tags repaired")
    wait_for(lambda: dest_head(pair, "typed")["ContentType"] == "application/json", what="Content-Type repaired")
    wait_for(lambda: dest_head(pair, "owned")["Metadata"].get("owner") == "bob", what="user metadata repaired")
    assert dest_tags(pair, "untouched") == {"x": "1"}
    metrics = second.metrics()
    assert metrics['replicator_metadata_sweep_repairs_total{kind="tags"}'] == 2
    assert metrics['replicator_metadata_sweep_repairs_total{kind="attributes"}'] == 2
    assert metrics["replicator_metadata_sweep_objects_total"] == 5


@pytest.mark.parametrize("pair", ["minio"], indirect=True)  # moto's object lock is not MinIO's
def test_a_legal_hold_set_while_replicator_was_stopped_is_repaired_by_the_sweep(pair, sidecars):
    locked = pair.with_object_lock()
    put(locked, "contract.pdf", b"%PDF")
    first = sidecars(locked.env)
    wait_for(first.ready, what="readiness")
    wait_for(lambda: locked.dest_keys() == ["contract.pdf"], what="the initial copy")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    locked.source.enable_object_legal_hold(locked.source_bucket, "contract.pdf")
    second = sidecars(locked.env)

    def hold():
        return dest_head(locked, "contract.pdf").get("ObjectLockLegalHoldStatus", "OFF")

    wait_for(lambda: hold() == "ON", timeout=60, what="the legal hold repaired by the sweep")
    assert second.status()["metadata_sweep"]["last"]["by_kind"] == {"legal_hold": 1}
    locked.source.disable_object_legal_hold(locked.source_bucket, "contract.pdf")  # so the test can clean up
    wait_for(lambda: hold() == "OFF", timeout=30, what="the event that lifts it")


# --- a reconcile that sees attributes, where both sides are MinIO ------------------------

ALL_KINDS = {
    "plain": {},
    "typed": {"content_type": "text/csv"},
    "headers": {"metadata": {"Cache-Control": "max-age=60", "Content-Disposition": "attachment",
                             "Content-Language": "de", "Content-Encoding": "gzip"}},
    "user-metadata": {"metadata": {"x-amz-meta-owner": "alice", "x-amz-meta-team": "blue b"}},
    "tagged": {"tags": tags(team="blue b", x="1+2=3")},
}


def test_a_reconcile_between_minio_servers_repairs_metadata_rewrites_and_tags(pair):
    from tests.conftest import run_cli

    env = {**pair.env, "S3_SYNC_LIST_METADATA": "true"}
    for key, kwargs in ALL_KINDS.items():
        put(pair, key, key.encode(), **kwargs)
    assert run_cli(env, "reconcile").code == 0
    again = run_cli(env, "reconcile")
    # Whatever a listing carries, a faithful copy lists the same: nothing is copied twice.
    assert again.code == 0 and "0 copied, 0 updated" in again.stderr, again.stderr

    rewrite_metadata(pair, "typed", "application/json")
    pair.source.set_object_tags(pair.source_bucket, "tagged", tags(team="red"))
    repaired = run_cli(env, "reconcile")
    assert repaired.code == 0, repaired.stderr
    if pair.kind == "minio":  # both listings carry attributes: the diff sees the change
        assert "0 copied, 2 updated" in repaired.stderr
        assert dest_head(pair, "typed")["ContentType"] == "application/json"
        assert dest_tags(pair, "tagged") == {"team": "red"}
    else:  # moto lists no attributes: the sweep's work, not a reconcile's
        assert "0 copied, 0 updated" in repaired.stderr
        assert "the destination (Werkzeug" in repaired.stderr and "is not MinIO and can't list metadata" in \
            repaired.stderr


def test_replicator_sweep_repairs_by_hand_what_a_reconcile_cannot(pair):
    # For a mirror kept by `reconcile` from cron, without the sidecar: `sweep` does the
    # sweep's work once and exits, 0 when everything compared and every repair went through.
    from tests.conftest import run_cli

    put(pair, "tagged", b"t", tags=tags(team="blue"))
    put(pair, "typed", b"{}", content_type="text/plain")
    assert run_cli(pair.env, "reconcile").code == 0
    pair.source.set_object_tags(pair.source_bucket, "tagged", tags(team="red"))
    rewrite_metadata(pair, "typed", "application/json")
    assert "0 copied, 0 updated" in run_cli(pair.env, "reconcile").stderr  # invisible to a reconcile
    result = run_cli(pair.env, "sweep")
    assert result.code == 0, result.stderr
    assert "Metadata sweep done: 2 objects compared, 2 differed (attributes 1, tags 1)" in result.stderr
    assert dest_tags(pair, "tagged") == {"team": "red"}
    assert dest_head(pair, "typed")["ContentType"] == "application/json"
    again = run_cli(pair.env, "sweep")
    assert again.code == 0 and "2 objects compared, 0 differed" in again.stderr
