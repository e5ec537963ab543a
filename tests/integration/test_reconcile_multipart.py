"""An object overwritten at the source while its multipart copy runs: the destination
ends with one whole version, never a mix of two, and no multipart upload is left behind.
Rewritten during every attempt, it is "changed while copying" (converge.py): a failed
key for the reconcile, a key queued again for the event workers."""

from __future__ import annotations

import io
import os
import time

import pytest

from replicator.model import SOURCE_ETAG_META
from replicator.workqueue import KeyedQueue, WorkItem

MiB = 1024 * 1024
KEY = "video/raw.bin"
MULTIPART = {"S3_SYNC_MULTIPART_THRESHOLD": "5MiB", "S3_SYNC_MULTIPART_CHUNK_SIZE": "5MiB"}


def put(pair, data: bytes) -> str:
    result = pair.source.put_object(pair.source_bucket, KEY, io.BytesIO(data), len(data))
    return result.etag.strip('"')


def pending_uploads(pair) -> list:
    return pair.dest.list_multipart_uploads(Bucket=pair.dest_bucket, Prefix=KEY).get("Uploads", [])


def recorded_etag(pair) -> str:
    return pair.dest.head_object(Bucket=pair.dest_bucket, Key=KEY)["Metadata"][SOURCE_ETAG_META]


def overwrite_during_copy(app, pair, versions: list[bytes]) -> list[tuple[int, str]]:
    """After each of the first len(versions) part reads, overwrite the source with the next
    version. Returns (offset, pinned ETag) of every part read attempted."""
    real = app.source.read_range
    reads: list[tuple[int, str]] = []
    pending = list(versions)

    def read_range(key, offset, length, etag):
        reads.append((offset, etag))
        data = real(key, offset, length, etag)
        if pending:
            put(pair, pending.pop(0))
        return data

    app.source.read_range = read_range
    return reads


def test_overwrite_between_parts_restarts_the_copy(pair, make_app):
    old, new = os.urandom(12 * MiB), os.urandom(12 * MiB)  # same size: only the ETag tells
    old_etag = put(pair, old)
    app = make_app(**MULTIPART, S3_SYNC_MULTIPART_CONCURRENCY="1")
    reads = overwrite_during_copy(app, pair, [new])
    stats = app.reconciler.run()

    assert (stats.copied, stats.failed) == (1, 0)
    assert pair.dest_body(KEY) == new
    new_etag = pair.source.stat_object(pair.source_bucket, KEY).etag.strip('"')
    assert recorded_etag(pair) == new_etag
    assert pending_uploads(pair) == []
    # Part 2 was refused (its pinned ETag no longer matched), and the copy started over:
    # every part of the new version read once, each pinned to the new ETag.
    assert reads[:2] == [(0, old_etag), (5 * MiB, old_etag)]
    assert {etag for _, etag in reads} == {old_etag, new_etag}
    assert [r for r in reads if r[1] == new_etag] == [(0, new_etag), (5 * MiB, new_etag), (10 * MiB, new_etag)]


def test_overwrite_with_parts_in_parallel_leaves_one_whole_version(pair, make_app):
    old, new = os.urandom(16 * MiB), os.urandom(16 * MiB)
    old_etag = put(pair, old)
    app = make_app(**MULTIPART, S3_SYNC_MULTIPART_CONCURRENCY="4")
    overwrite_during_copy(app, pair, [new])
    stats = app.reconciler.run()
    new_etag = pair.source.stat_object(pair.source_bucket, KEY).etag.strip('"')
    assert stats.failed == 0
    # Whichever version won the race (all parts read before the overwrite, or a restart),
    # the destination holds all of it, labelled as such.
    body = pair.dest_body(KEY)
    assert body in (old, new)
    assert recorded_etag(pair) == (old_etag if body == old else new_etag)
    assert pending_uploads(pair) == []
    # And the next run converges on the current version.
    make_app(**MULTIPART).reconciler.run()
    assert pair.dest_body(KEY) == new


def test_a_source_that_never_holds_still_leaves_no_torn_copy(pair, make_app):
    first = os.urandom(11 * MiB)
    put(pair, first)
    app = make_app(**MULTIPART, S3_SYNC_MULTIPART_CONCURRENCY="1", S3_SYNC_MAX_RETRIES="2")
    # A new version after every first part read: each attempt is refused at part 2.
    overwrite_during_copy(app, pair, [os.urandom(11 * MiB) for _ in range(5)])
    stats = app.reconciler.run()
    assert (stats.copied, stats.failed) == (0, 1)
    assert KEY not in pair.dest_keys()  # nothing rather than a mix
    assert pending_uploads(pair) == []


def test_an_event_for_a_source_rewritten_during_every_attempt_is_queued_again_then_copied(pair, make_app):
    put(pair, os.urandom(11 * MiB))
    app = make_app(**MULTIPART, S3_SYNC_MULTIPART_CONCURRENCY="1", S3_SYNC_MAX_RETRIES="2")
    versions = [os.urandom(11 * MiB) for _ in range(2)]  # one per attempt: both are refused at part 2
    overwrite_during_copy(app, pair, versions)
    queue = KeyedQueue(10)
    workers = app.workers(queue, on_failure=lambda reason: pytest.fail(f"asked for a reconcile: {reason}"))
    workers.handle(WorkItem(KEY, content=True, tags=False, event_time=time.time(), size=11 * MiB))
    assert workers.failed == 0 and KEY not in pair.dest_keys() and pending_uploads(pair) == []
    assert [queued.key for queued in queue.pending()] == [KEY]  # "changed while copying": again
    again = queue.get(timeout=0)
    workers.handle(again)  # the source holds still now
    queue.done(again.key)
    assert pair.dest_body(KEY) == versions[-1] and pending_uploads(pair) == []


# -- part for part: the copy's ETag is the source's ----------------------------------

def upload_in_parts(pair, key: str, parts: list[bytes]) -> str:
    """A multipart upload at the source with exactly these parts; returns its ETag."""
    import boto3

    source = boto3.client("s3", endpoint_url=pair.env["MINIO_ENDPOINT"], region_name="us-east-1",
                          aws_access_key_id=pair.env["MINIO_ACCESS_KEY"],
                          aws_secret_access_key=pair.env["MINIO_SECRET_KEY"])
    upload = source.create_multipart_upload(Bucket=pair.source_bucket, Key=key)["UploadId"]
    done = [{"PartNumber": n, "ETag": source.upload_part(Bucket=pair.source_bucket, Key=key, UploadId=upload,
                                                         PartNumber=n, Body=part)["ETag"]}
            for n, part in enumerate(parts, start=1)]
    result = source.complete_multipart_upload(Bucket=pair.source_bucket, Key=key, UploadId=upload,
                                              MultipartUpload={"Parts": done})
    return result["ETag"].strip('"')


def test_multipart_objects_copied_part_for_part_need_no_head_once_in_sync(pair, make_app):
    from tests.conftest import run_cli
    from tests.faultproxy import FaultProxy

    layouts = {
        "unequal.bin": [os.urandom(5 * MiB), os.urandom(7 * MiB), os.urandom(1000)],
        "one-part.bin": [os.urandom(2000)],  # multipart, yet below every threshold
        "equal.bin": [os.urandom(6 * MiB), os.urandom(6 * MiB), os.urandom(6 * MiB)],
    }
    etags = {key: upload_in_parts(pair, key, parts) for key, parts in layouts.items()}
    stats = make_app().reconciler.run()  # the default threshold (16 MiB) and part size (8 MiB)
    assert (stats.copied, stats.failed) == (3, 0)
    listed = {o["Key"]: o["ETag"].strip('"') for o in pair.dest.list_objects_v2(Bucket=pair.dest_bucket)["Contents"]}
    assert listed == etags  # the source's multipart ETags, as S3 computes them
    for key, parts in layouts.items():
        assert pair.dest_body(key) == b"".join(parts)

    requests = []
    proxy = FaultProxy(pair.servers["dest"].port, lambda request: requests.append(request) or None)
    try:
        result = run_cli({**pair.env, "S3_SYNC_ENDPOINT": proxy.endpoint}, "reconcile")
    finally:
        proxy.close()
    assert result.code == 0 and "3 unchanged" in result.stderr, result.output
    object_heads = [r for r in requests if r.method == "HEAD" and r.path.strip("/").count("/") >= 1]
    assert object_heads == []  # the listings decided: no HEAD per multipart object
