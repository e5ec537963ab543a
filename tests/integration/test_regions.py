"""The bucket's own region: a real MinIO with MINIO_SITE_REGION=eu-central-1 refuses
any signature for another region (400 AuthorizationHeaderMalformed), as AWS does for
a bucket elsewhere. With S3_SYNC_REGION unset, replicator learns the region from the
refusal and signs for it on every path; set to another region, it warns and does the
same. The source's region is learnt too (GetBucketLocation)."""

from __future__ import annotations

import io

import pytest
from minio import Minio

from tests.conftest import run_cli, unique_bucket
from tests.servers import MinioServer

USER, PASSWORD = "region-admin", "region-secret-Lk29"
REGION = "eu-central-1"


@pytest.fixture(scope="module")
def regional():
    server = MinioServer("regional", USER, PASSWORD, env={"MINIO_SITE_REGION": REGION}).start()
    yield server
    server.close()


@pytest.fixture
def env(regional, tmp_path):
    client = Minio(regional.host, USER, PASSWORD, secure=False, region=REGION)
    source, dest = unique_bucket("region-src"), unique_bucket("region-dst")
    client.make_bucket(source)
    client.make_bucket(dest)
    for key, size in (("small.txt", 100), ("big.bin", 6 * 1024 * 1024)):  # a PUT and a multipart copy
        client.put_object(source, key, io.BytesIO(b"r" * size), size)
    return {
        "MINIO_ENDPOINT": regional.endpoint, "MINIO_ACCESS_KEY": USER, "MINIO_SECRET_KEY": PASSWORD,
        "MINIO_BUCKET": source,
        "S3_SYNC_ENDPOINT": regional.endpoint, "S3_SYNC_ACCESS_KEY": USER, "S3_SYNC_SECRET_KEY": PASSWORD,
        "S3_SYNC_BUCKET": dest, "S3_SYNC_RETRY_DELAY": "0", "S3_SYNC_MAX_RETRIES": "2",
        "S3_SYNC_MULTIPART_THRESHOLD": "5MiB", "S3_SYNC_MULTIPART_CHUNK_SIZE": "5MiB",
    }


def dest_keys(regional, env) -> list[str]:
    client = Minio(regional.host, USER, PASSWORD, secure=False, region=REGION)
    return sorted(o.object_name for o in client.list_objects(env["S3_SYNC_BUCKET"], recursive=True))


def test_with_the_region_unset_check_and_reconcile_sign_for_the_buckets_own(regional, env):
    checked = run_cli(env, "check")
    assert checked.code == 0, checked.output
    assert f"is in {REGION}: signing for {REGION}" in checked.output

    result = run_cli(env, "reconcile")
    assert result.code == 0, result.output
    assert f"signing for {REGION}" in result.output
    assert "2 copied" in result.stderr and "0 failed" in result.stderr
    assert dest_keys(regional, env) == ["big.bin", "small.txt"]
    # And the no-op after it: both listings, signed for the region, agree.
    again = run_cli(env, "reconcile")
    assert again.code == 0 and "0 copied" in again.stderr and "2 unchanged" in again.stderr, again.output


def test_a_configured_region_the_bucket_is_not_in_gets_one_warning_naming_both(regional, env):
    result = run_cli({**env, "S3_SYNC_REGION": "us-west-2"}, "reconcile")
    assert result.code == 0, result.output
    warning = f"S3_SYNC_REGION=us-west-2, but destination bucket {env['S3_SYNC_BUCKET']} is in {REGION}"
    assert result.output.count(warning) == 1
    assert dest_keys(regional, env) == ["big.bin", "small.txt"]


def test_the_configured_region_is_used_when_the_bucket_takes_it(regional, env):
    result = run_cli({**env, "S3_SYNC_REGION": REGION}, "check")
    assert result.code == 0, result.output
    assert f"signing for {REGION}" in result.output
    assert "but destination bucket" not in result.output
