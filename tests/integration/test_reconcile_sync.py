"""The reconcile against real servers, for each destination: what a user sees in the
destination bucket after a run."""

from __future__ import annotations

import gzip
import io
import os
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode

import pytest
from minio.commonconfig import Tags

from replicator.errors import PermanentError
from replicator.model import SOURCE_ETAG_META
from tests.conftest import SOURCE_PASSWORD, SOURCE_USER, boto_client

MiB = 1024 * 1024


def put(pair, key: str, data: bytes, *, content_type: str = "application/octet-stream",
        headers: dict[str, str] | None = None, metadata: dict[str, str] | None = None,
        tags: dict[str, str] | None = None, part_size: int = 0) -> str:
    """PUT to the MinIO source; returns the source ETag."""
    object_tags = None
    if tags:
        object_tags = Tags.new_object_tags()
        object_tags.update(tags)
    result = pair.source.put_object(
        pair.source_bucket, key, io.BytesIO(data), len(data), content_type=content_type,
        metadata={**(headers or {}), **(metadata or {})} or None, tags=object_tags, part_size=part_size)
    return result.etag.strip('"')


def put_with_expires(pair, key: str, data: bytes, *, content_type: str, headers: dict[str, str],
                     metadata: dict[str, str], tags: dict[str, str]) -> str:
    """PUT through the S3 API: minio-py sends Expires as user metadata, not as the header."""
    source = boto_client(pair.servers["source"].endpoint, SOURCE_USER, SOURCE_PASSWORD)
    params = {"CacheControl": headers["Cache-Control"], "ContentDisposition": headers["Content-Disposition"],
              "ContentLanguage": headers["Content-Language"], "Expires": parsedate_to_datetime(headers["Expires"])}
    result = source.put_object(Bucket=pair.source_bucket, Key=key, Body=data, ContentType=content_type,
                               Metadata=metadata, Tagging=urlencode(tags), **params)
    return result["ETag"].strip('"')


def long_key() -> str:
    # MinIO stores keys as paths: every segment stays under 255 bytes.
    key = "/".join(["L" * 250] * 4) + "/" + "é" * 10
    assert len(key.encode()) == 1024
    return key


PLAIN_KEYS = [
    "empty",
    "folder/",
    "with space/a file.txt",
    "unicode/ünïcødé-日本語-😀.txt",
    "a+plus",
    "100%25 percent%",
    "question?mark=1&x",
    "hash#fragment",
    "UPPER/lower/MiXeD",
    long_key(),
]

HEADERS = {
    "Cache-Control": "max-age=3600, public",
    "Content-Disposition": 'attachment; filename="report.pdf"',
    "Content-Language": "de-DE",
    "Expires": "Thu, 01 Jan 2037 00:00:00 GMT",
}
METADATA = {"owner": "alice", "project": "relics"}
TAGS = {"team": "data", "tier": "gold", "note": "a b+c=d/e:f@g_1.0-x"}  # MinIO allows ASCII only
GZIPPED = gzip.compress(b'{"hello": "world"}\n' * 500, mtime=0)


def body(key: str) -> bytes:
    return b"" if key in ("empty", "folder/") else f"content of {key}\n".encode() * 3


@pytest.fixture
def mixed(pair) -> dict[str, str]:
    """The mixed set at the source; returns {key: source ETag}."""
    etags = {key: put(pair, key, body(key)) for key in PLAIN_KEYS}
    etags["meta/report.pdf"] = put_with_expires(pair, "meta/report.pdf", b"%PDF-1.4 pretend",
                                                content_type="application/pdf", headers=HEADERS, metadata=METADATA,
                                                tags=TAGS)
    etags["meta/data.json.gz"] = put(pair, "meta/data.json.gz", GZIPPED, content_type="application/json",
                                     headers={"Content-Encoding": "gzip"})
    big = os.urandom(21 * MiB)
    etags["big/multipart.bin"] = put(pair, "big/multipart.bin", big, content_type="application/x-big",
                                     metadata={"kind": "large"}, tags={"size": "big"}, part_size=5 * MiB)
    assert etags["big/multipart.bin"].endswith("-5")  # the source ETag is a multipart one
    return etags


def dest_head(pair, key: str) -> dict:
    return pair.dest.head_object(Bucket=pair.dest_bucket, Key=key)


def dest_tags(pair, key: str) -> dict[str, str]:
    tag_set = pair.dest.get_object_tagging(Bucket=pair.dest_bucket, Key=key)["TagSet"]
    return {t["Key"]: t["Value"] for t in tag_set}


def count_calls(app) -> dict[str, list[str]]:
    """Wrap the stores' per-object calls to record which keys cost a request."""
    calls: dict[str, list[str]] = {"get": [], "put": [], "head": []}
    for store, name, label in ((app.source, "open", "get"), (app.dest, "put", "put"),
                               (app.dest, "start_multipart", "put"), (app.dest, "head_source_etag", "head")):
        real = getattr(store, name)

        def wrapper(key, *args, _real=real, _label=label, **kwargs):
            calls[_label].append(key)
            return _real(key, *args, **kwargs)

        setattr(store, name, wrapper)
    return calls


def test_initial_sync_of_a_mixed_set(pair, mixed, make_app):
    app = make_app()
    stats = app.reconciler.run()
    assert (stats.copied, stats.failed, stats.deleted) == (len(mixed), 0, 0)

    # Every key arrives, byte for byte; the listing round-trips the odd characters.
    assert sorted(pair.dest_keys()) == sorted(mixed)
    assert pair.dest_snapshot() == pair.source_snapshot()

    # Metadata and tags.
    head = dest_head(pair, "meta/report.pdf")
    http = head["ResponseMetadata"]["HTTPHeaders"]
    assert http["content-type"] == "application/pdf"
    assert http["cache-control"] == HEADERS["Cache-Control"]
    assert http["content-disposition"] == HEADERS["Content-Disposition"]
    assert http["content-language"] == HEADERS["Content-Language"]
    assert parsedate_to_datetime(http["expires"]) == parsedate_to_datetime(HEADERS["Expires"])
    assert head["Metadata"] == {**METADATA, SOURCE_ETAG_META: mixed["meta/report.pdf"]}
    assert dest_tags(pair, "meta/report.pdf") == TAGS

    # A gzip-encoded object keeps its encoding label and its compressed bytes.
    gz = dest_head(pair, "meta/data.json.gz")["ResponseMetadata"]["HTTPHeaders"]
    assert (gz["content-encoding"], gz["content-type"]) == ("gzip", "application/json")
    assert pair.dest_body("meta/data.json.gz") == GZIPPED

    # The large object went up in parts, with its metadata, tags and source identity.
    big = dest_head(pair, "big/multipart.bin")
    assert big["ContentLength"] == 21 * MiB
    assert big["ContentType"] == "application/x-big"
    assert big["Metadata"] == {"kind": "large", SOURCE_ETAG_META: mixed["big/multipart.bin"]}
    assert "-" in big["ETag"]
    assert dest_tags(pair, "big/multipart.bin") == {"size": "big"}

    # Untagged objects carry no tags, and the empty ones are really empty.
    assert dest_tags(pair, "empty") == {}
    assert dest_head(pair, "folder/")["ContentLength"] == 0


def test_second_run_is_a_no_op_costing_only_listings(pair, mixed, make_app):
    make_app().reconciler.run()
    app = make_app()
    calls = count_calls(app)
    stats = app.reconciler.run()
    assert (stats.copied, stats.updated, stats.deleted, stats.failed) == (0, 0, 0, 0)
    assert stats.unchanged == len(mixed)
    assert calls["get"] == [] and calls["put"] == []
    # The multipart object too: copied part for part, its ETag is the source's.
    assert calls["head"] == []


def test_updates_including_a_same_size_rewrite(pair, make_app):
    for key in ("grow", "same-size", "untouched"):
        put(pair, key, b"version one")
    first = make_app().reconciler.run()
    assert first.copied == 3

    put(pair, "grow", b"version one, now longer")
    put(pair, "same-size", b"version TWO")  # same length, different bytes
    assert len(b"version TWO") == len(b"version one")
    put(pair, "new", b"brand new")

    app = make_app()
    second = app.reconciler.run()
    assert (second.copied, second.updated, second.failed) == (1, 2, 0)
    assert second.unchanged == 1
    assert pair.dest_body("same-size") == b"version TWO"
    assert pair.dest_body("grow") == b"version one, now longer"
    assert pair.dest_snapshot() == pair.source_snapshot()

    third = make_app().reconciler.run()
    assert (third.copied, third.updated, third.unchanged) == (0, 0, 4)


def test_same_size_rewrite_of_a_multipart_object(pair, make_app):
    first_version = os.urandom(6 * MiB)
    put(pair, "mp", first_version, part_size=5 * MiB)
    make_app(S3_SYNC_MULTIPART_THRESHOLD="5MiB", S3_SYNC_MULTIPART_CHUNK_SIZE="5MiB").reconciler.run()
    second_version = os.urandom(6 * MiB)
    put(pair, "mp", second_version, part_size=5 * MiB)
    stats = make_app(S3_SYNC_MULTIPART_THRESHOLD="5MiB", S3_SYNC_MULTIPART_CHUNK_SIZE="5MiB").reconciler.run()
    assert (stats.updated, stats.unchanged) == (1, 0)
    assert pair.dest_body("mp") == second_version


def test_zero_byte_objects_do_not_stall_the_copies_after_them(pair, make_app):
    # botocore + a Go server (MinIO) + an empty PUT body once left the connection out of
    # step, so the next PUT on it hung for the read timeout: with one attempt, it failed.
    for i in range(4):
        put(pair, f"d{i}/", b"")
        put(pair, f"d{i}/file", b"payload")
    stats = make_app(S3_SYNC_WORKERS="1", S3_SYNC_MAX_RETRIES="1", S3_SYNC_READ_TIMEOUT="3").reconciler.run()
    assert (stats.copied, stats.failed) == (8, 0)
    assert pair.dest_snapshot() == pair.source_snapshot()


def test_deletes_are_mirrored(pair, make_app):
    for i in range(6):
        put(pair, f"k{i}", b"x")
    make_app().reconciler.run()
    for i in range(2):
        pair.source.remove_object(pair.source_bucket, f"k{i}")
    stats = make_app().reconciler.run()
    assert (stats.deleted, stats.unchanged, stats.failed) == (2, 4, 0)
    assert sorted(pair.dest_keys()) == [f"k{i}" for i in range(2, 6)]


def test_destination_only_keys_with_odd_names_are_deleted(pair, make_app):
    put(pair, "keep", b"x")
    odd = ["folder/", "with space", "ünï 😀", "a+b", "a%2Fb", "q?x", "h#x", long_key()]
    for key in odd:
        pair.dest.put_object(Bucket=pair.dest_bucket, Key=key, Body=b"orphan")
    stats = make_app(S3_SYNC_DELETE_GUARD_FLOOR="100").reconciler.run()
    assert (stats.deleted, stats.failed) == (len(odd), 0)
    assert pair.dest_keys() == ["keep"]


@pytest.mark.parametrize("pair", ["moto"], indirect=True)
def test_double_slash_keys_at_the_destination_are_deleted(pair, make_app):
    # MinIO refuses "//" in a key (XMinioInvalidObjectName), so such a key can only ever
    # exist at a destination that allows it; there it must be matched and deleted exactly.
    put(pair, "a/b", b"keep")
    for key in ("a//b", "//lead", "trail//"):
        pair.dest.put_object(Bucket=pair.dest_bucket, Key=key, Body=b"orphan")
    stats = make_app().reconciler.run()
    assert (stats.copied, stats.deleted, stats.failed) == (1, 3, 0)
    assert pair.dest_keys() == ["a/b"]


def test_an_object_the_source_serves_but_does_not_list_is_not_deleted(pair, make_app):
    # MinIO doesn't support an object and a prefix of the same name: once "a" exists it
    # leaves "a/b" out of listings, yet still serves it. The pre-delete re-check must see
    # that the source has it.
    put(pair, "a/b", b"nested")
    make_app().reconciler.run()
    put(pair, "a", b"flat")
    assert pair.source_keys() == ["a"]
    stats = make_app().reconciler.run()
    assert (stats.copied, stats.deleted, stats.skipped, stats.failed) == (1, 0, 1, 0)
    assert (pair.dest_body("a"), pair.dest_body("a/b")) == (b"flat", b"nested")


def test_deletes_are_kept_when_disabled(pair, make_app):
    for i in range(4):
        put(pair, f"k{i}", b"x")
    make_app().reconciler.run()
    pair.source.remove_object(pair.source_bucket, "k0")
    stats = make_app(S3_SYNC_DELETE="false").reconciler.run()
    assert (stats.deleted, stats.failed) == (0, 0)
    assert "k0" in pair.dest_keys()


def test_a_copy_failure_makes_the_run_dirty_so_nothing_is_deleted(pair, make_app):
    for key in ("a", "b", "c"):
        put(pair, key, b"data")
    pair.dest.put_object(Bucket=pair.dest_bucket, Key="orphan", Body=b"old")
    app = make_app()
    real_put = app.dest.put

    def failing_put(key, *args, **kwargs):
        if key == "b":
            raise PermanentError("destination", "put", key, "InvalidArgument (HTTP 400)", code="InvalidArgument")
        return real_put(key, *args, **kwargs)

    app.dest.put = failing_put
    stats = app.reconciler.run()
    assert (stats.copied, stats.failed, stats.deleted) == (2, 1, 0)
    assert sorted(pair.dest_keys()) == ["a", "c", "orphan"]

    # The next, clean run repairs everything, deletes included.
    clean = make_app().reconciler.run()
    assert (clean.copied, clean.deleted, clean.failed) == (1, 1, 0)
    assert pair.dest_snapshot() == pair.source_snapshot()


def test_missing_destination_bucket_is_created(pair, make_app):
    put(pair, "a", b"x")
    pair.dest.delete_bucket(Bucket=pair.dest_bucket)
    stats = make_app().reconciler.run()
    assert (stats.copied, stats.failed) == (1, 0)
    assert pair.dest_keys() == ["a"]


@pytest.mark.parametrize("pair", ["moto"], indirect=True)  # a MinIO server has one region of its own
def test_missing_destination_bucket_is_created_in_the_configured_region(pair, make_app):
    put(pair, "a", b"x")
    pair.dest.delete_bucket(Bucket=pair.dest_bucket)
    stats = make_app(S3_SYNC_REGION="eu-west-1").reconciler.run()
    assert (stats.copied, stats.failed) == (1, 0)
    location = pair.dest.get_bucket_location(Bucket=pair.dest_bucket)["LocationConstraint"]
    assert location == "eu-west-1"
