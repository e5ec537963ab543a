"""Destination encryption and storage class against real servers: MinIO over HTTPS with
its built-in KMS key (SSE-S3, SSE-KMS and SSE-C), and moto's server (SSE-S3, SSE-KMS and
storage classes as AWS names them). What each server reports of every object, copied in
one PUT or in parts; and that a second reconcile copies nothing, at the cost of a HEAD
for exactly the pairs whose ETags the encryption made incomparable."""

from __future__ import annotations

import base64
import io
import os

import botocore.exceptions
import pytest
from minio.commonconfig import Tags

from replicator.converge import Hint, Outcome
from replicator.errors import PermanentError
from replicator.verify import Verifier
from tests.conftest import KMS_KEY_NAME, MOTO_KEY, MOTO_SECRET, boto_client, kms_pair, make_pair
from tests.integration.test_reconcile_sync import count_calls

MiB = 1024 * 1024
# Above the threshold: copied in parts of 5 MiB; "parts" is uploaded to the source in
# parts too, and is copied part for part.
MULTIPART = {"S3_SYNC_MULTIPART_THRESHOLD": "5MiB", "S3_SYNC_MULTIPART_CHUNK_SIZE": "5MiB"}
CUSTOMER_KEY = os.urandom(32)
CUSTOMER_KEY_B64 = base64.b64encode(CUSTOMER_KEY).decode()  # S3_SYNC_SSE_C_KEY
SSE_C = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": CUSTOMER_KEY}
# Each provider's own storage classes: MinIO knows two.
STORAGE_CLASS = {"minio-kms": "REDUCED_REDUNDANCY", "moto": "STANDARD_IA"}


@pytest.fixture(params=["minio-kms", "moto"])
def encrypted_pair(request, minio_source, tmp_path):
    if request.param == "minio-kms":
        return kms_pair(minio_source, request.getfixturevalue("minio_kms"), tmp_path)
    server = request.getfixturevalue("moto_server")
    return make_pair("moto", minio_source, server, boto_client(server.endpoint, MOTO_KEY, MOTO_SECRET),
                     {"S3_SYNC_ACCESS_KEY": MOTO_KEY, "S3_SYNC_SECRET_KEY": MOTO_SECRET,
                      "S3_SYNC_ENDPOINT": server.endpoint}, tmp_path)


@pytest.fixture
def build(encrypted_pair):
    from replicator.app import build as build_app

    apps = []

    def make(**overrides):
        app = build_app(encrypted_pair.settings(**MULTIPART, **overrides))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def upload(pair) -> dict[str, bytes]:
    """A small object, one above the threshold, and one uploaded in parts; tagged."""
    objects = {"small.txt": b"a small object", "large.bin": os.urandom(6 * MiB), "parts.bin": os.urandom(11 * MiB)}
    tags = Tags.new_object_tags()
    tags["kind"] = "test"
    for key, data in objects.items():
        pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data), tags=tags,
                               part_size=5 * MiB if key == "parts.bin" else 0)
    assert "-" in pair.source.stat_object(pair.source_bucket, "parts.bin").etag
    return objects


def incomparable(pair) -> list[str]:
    """The keys whose destination ETag differs from the source's: a reconcile settles
    them by the copy's recorded source ETag, one HEAD each."""
    source = {o.object_name: o.etag.strip('"') for o in pair.source.list_objects(pair.source_bucket, recursive=True)}
    listed = pair.dest.list_objects_v2(Bucket=pair.dest_bucket)["Contents"]
    return sorted(item["Key"] for item in listed if item["ETag"].strip('"') != source[item["Key"]])


def assert_second_reconcile_is_a_no_op(build, pair, keys) -> None:
    app = build()
    calls = count_calls(app)
    stats = app.reconciler.run()
    assert (stats.copied, stats.updated, stats.deleted, stats.failed, stats.unchanged) == (0, 0, 0, 0, len(keys))
    assert calls["get"] == [] and calls["put"] == []
    assert sorted(calls["head"]) == incomparable(pair)


@pytest.mark.parametrize("sse", ["AES256", "aws:kms"])
def test_server_side_encryption_and_storage_class_on_every_write(encrypted_pair, build, sse):
    pair = encrypted_pair
    objects = upload(pair)
    kms_key = {"minio-kms": KMS_KEY_NAME, "moto": "alias/replicator-test"}[pair.kind] if sse == "aws:kms" else None
    storage_class = STORAGE_CLASS[pair.kind]
    settings = {"S3_SYNC_SSE": sse, "S3_SYNC_STORAGE_CLASS": storage_class}
    if kms_key:
        settings["S3_SYNC_SSE_KMS_KEY_ID"] = kms_key
    stats = build(**settings).reconciler.run()
    assert (stats.copied, stats.failed) == (3, 0)

    for key, data in objects.items():
        head = pair.dest.head_object(Bucket=pair.dest_bucket, Key=key)
        assert head["ServerSideEncryption"] == sse, key
        assert head.get("StorageClass") == storage_class, key
        if kms_key:
            # MinIO names the key as an ARN of its own: arn:aws:kms:<name>.
            assert head["SSEKMSKeyId"].endswith(kms_key), key
        assert pair.dest_body(key) == data
    assert pair.dest.get_object_tagging(Bucket=pair.dest_bucket, Key="large.bin")["TagSet"] == [
        {"Key": "kind", "Value": "test"}]
    if pair.kind == "minio-kms" and sse == "aws:kms":
        # MinIO's SSE-KMS ETags are no MD5s, single PUT or parts: the record decides.
        assert incomparable(pair) == sorted(objects)

    assert_second_reconcile_is_a_no_op(build, pair, objects)


@pytest.fixture
def customer_pair(minio_source, minio_kms, tmp_path):
    """MinIO over HTTPS: SSE-C needs TLS (and a KMS to be on at all)."""
    return kms_pair(minio_source, minio_kms, tmp_path)


def test_sse_c_objects_are_readable_only_with_the_key_and_stay_in_sync(customer_pair):
    from replicator.app import build as build_app

    pair = customer_pair
    env = {**MULTIPART, "S3_SYNC_SSE_C_KEY": CUSTOMER_KEY_B64,
           "S3_SYNC_STORAGE_CLASS": "REDUCED_REDUNDANCY"}
    objects = upload(pair)
    apps = []

    def build(**overrides):
        apps.append(build_app(pair.settings(**env, **overrides)))
        return apps[-1]

    try:
        stats = build().reconciler.run()
        assert (stats.copied, stats.failed) == (3, 0)
        for key, data in objects.items():
            with pytest.raises(botocore.exceptions.ClientError) as refused:
                pair.dest.head_object(Bucket=pair.dest_bucket, Key=key)
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
            head = pair.dest.head_object(Bucket=pair.dest_bucket, Key=key, **SSE_C)
            assert (head["SSECustomerAlgorithm"], head.get("StorageClass")) == ("AES256", "REDUCED_REDUNDANCY"), key
            assert pair.dest.get_object(Bucket=pair.dest_bucket, Key=key, **SSE_C)["Body"].read() == data
        # No SSE-C ETag is an MD5: every pair costs a HEAD, which must carry the key.
        assert incomparable(pair) == sorted(objects)
        assert_second_reconcile_is_a_no_op(build, pair, objects)

        app = build()
        # The event path's check of a large object: a HEAD on each side.
        assert app.converger.converge("large.bin", Hint(size=6 * MiB)).outcome == Outcome.IN_SYNC
        # verify reads both sides' bytes: the destination's GETs carry the key.
        tally = Verifier(app.source, app.dest, app.policy, app.settings, content=True, out=io.StringIO()).run()
        assert tally.in_sync and tally.read == len(objects)
        # Tags are rewritten over the encrypted object without its key.
        tags = Tags.new_object_tags()
        tags["kind"] = "retagged"
        pair.source.set_object_tags(pair.source_bucket, "parts.bin", tags)
        app.copier.refresh_tags("parts.bin")
        assert pair.dest.get_object_tagging(Bucket=pair.dest_bucket, Key="parts.bin")["TagSet"] == [
            {"Key": "kind", "Value": "retagged"}]

        # A same-size rewrite is still seen: the record, not the ETag, decides.
        rewritten = b"a small OBJECT"
        pair.source.put_object(pair.source_bucket, "small.txt", io.BytesIO(rewritten), len(rewritten))
        stats = build().reconciler.run()
        assert (stats.copied + stats.updated, stats.unchanged, stats.failed) == (1, 2, 0)
        assert pair.dest.get_object(Bucket=pair.dest_bucket, Key="small.txt", **SSE_C)["Body"].read() == rewritten
    finally:
        for app in apps:
            app.close()


def test_turning_sse_c_on_over_a_mirror_recopies_what_the_key_cant_read(customer_pair):
    """Objects copied before S3_SYNC_SSE_C_KEY was set aren't SSE-C objects, and S3
    refuses a HEAD with a key for them (400). Those a reconcile must HEAD (their ETags
    differ) are copied again, encrypted; those whose ETags agree stay as they are."""
    from replicator.app import build as build_app

    pair = customer_pair
    upload(pair)
    # Uploaded in parts above the threshold: re-cut into 5 MiB parts, its copy's ETag isn't the source's.
    pair.source.put_object(pair.source_bucket, "recut.bin", io.BytesIO(os.urandom(12 * MiB)), 12 * MiB,
                           part_size=6 * MiB)
    apps = [build_app(pair.settings(**MULTIPART))]
    assert apps[0].reconciler.run().copied == 4
    headed = incomparable(pair)
    assert headed == ["recut.bin"]
    try:
        for expected in (len(headed), 0):
            apps.append(build_app(pair.settings(**MULTIPART, S3_SYNC_SSE_C_KEY=CUSTOMER_KEY_B64)))
            stats = apps[-1].reconciler.run()
            assert (stats.copied + stats.updated, stats.failed) == (expected, 0)
        for key in headed:
            head = pair.dest.head_object(Bucket=pair.dest_bucket, Key=key, **SSE_C)
            assert head["SSECustomerAlgorithm"] == "AES256"
    finally:
        for app in apps:
            app.close()


def test_another_key_is_an_error_naming_the_setting_never_a_recopy(customer_pair):
    """An object encrypted with another key (the key was changed) answers 403 to the
    HEAD: that could as well be a missing permission, so it fails the pair, and says
    which setting to look at."""
    from replicator.app import build as build_app

    pair = customer_pair
    upload(pair)
    other = base64.b64encode(os.urandom(32)).decode()
    apps = [build_app(pair.settings(**MULTIPART, S3_SYNC_SSE_C_KEY=key)) for key in (CUSTOMER_KEY_B64, other)]
    try:
        assert apps[0].reconciler.run().copied == 3
        stats = apps[1].reconciler.run()
        assert (stats.copied, stats.failed) == (0, 3)
        with pytest.raises(PermanentError, match="another SSE-C key than S3_SYNC_SSE_C_KEY"):
            apps[1].dest.stat("small.txt")
        assert pair.dest.get_object(Bucket=pair.dest_bucket, Key="small.txt", **SSE_C)["Body"].read()
    finally:
        for app in apps:
            app.close()
