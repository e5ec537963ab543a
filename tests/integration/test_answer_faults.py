"""Every answer replicator relies on is proven, not only listing pages (issue 10).

A fault-injecting proxy (tests/faultproxy.py) in front of a real MinIO answers one kind
of request with a 200 that is not S3's answer: an HTML page, or an S3 error document.
An SDK would read either as an empty result: an upload started with no id, a
completed upload that never completed, no failed deletes, no tags. Each case asserts
what the user would see: the run fails (exit 1) naming the operation and the cause,
and the destination holds nothing it shouldn't, and loses nothing it had.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from minio.commonconfig import Tags

from tests.conftest import run_cli
from tests.faultproxy import Canned, FaultProxy, Request, html_page, s3_error_document

pytestmark = pytest.mark.parametrize("pair", ["minio"], indirect=True)

MiB = 1024 * 1024
LARGE = 6 * MiB  # above a 5 MiB threshold: a multipart copy


def put(pair, key: str, data: bytes, tags: dict[str, str] | None = None) -> None:
    kwargs = {}
    if tags:
        kwargs["tags"] = Tags.new_object_tags()
        kwargs["tags"].update(tags)
    pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data), **kwargs)


def object_request(request: Request) -> bool:
    """A request for an object (a key in the path), not for the bucket."""
    return request.path.strip("/").count("/") >= 1


@dataclass
class Case:
    side: str  # where the proxy stands
    matches: Callable[[Request], bool]
    setup: Callable  # (pair, make_app) -> None: the state before the faulty run
    check: Callable  # (pair, result) -> None: what must hold after it
    cause: str  # words the error must contain
    exit_code: int = 1


def large_at_source(pair, make_app):
    put(pair, "big", b"b" * LARGE)


def big_absent(pair, result):
    assert "big" not in pair.dest_keys()
    uploads = pair.dest.list_multipart_uploads(Bucket=pair.dest_bucket).get("Uploads", [])
    assert uploads == [], "a failed multipart copy left its upload behind"


def orphans_at_destination(pair, make_app):
    for key in ("keep", "gone-1", "gone-2", "gone-3"):
        put(pair, key, key.encode())
    assert make_app().reconciler.run().copied == 4
    for key in ("gone-1", "gone-2", "gone-3"):
        pair.source.remove_object(pair.source_bucket, key)


def orphans_still_there_and_not_counted(pair, result):
    assert sorted(pair.dest_keys()) == ["gone-1", "gone-2", "gone-3", "keep"]
    assert ", 0 deleted," in result.stderr


def tagged_object_rewritten_at_source(pair, make_app):
    put(pair, "tagged", b"first", {"team": "blue"})
    assert make_app().reconciler.run().copied == 1
    put(pair, "tagged", b"second version", {"team": "blue"})


def destination_keeps_its_object_and_tags(pair, result):
    assert pair.dest_body("tagged") == b"first"
    tags = pair.dest.get_object_tagging(Bucket=pair.dest_bucket, Key="tagged")["TagSet"]
    assert tags == [{"Key": "team", "Value": "blue"}]


def one_small_object(pair, make_app):
    put(pair, "small", b"small object")


def small_absent(pair, result):
    assert "small" not in pair.dest_keys()


def small_copied(pair, result):
    assert pair.dest_body("small") == b"small object"


def same_size_other_bytes(pair, make_app):
    put(pair, "same-size", b"AAAA")
    assert make_app().reconciler.run().copied == 1
    put(pair, "same-size", b"BBBB")  # same size, another ETag: the reconcile asks the destination


def same_size_not_decided_on_a_fake_head(pair, result):
    assert pair.dest_body("same-size") == b"AAAA"
    assert "1 failed" in result.stderr


CASES = {
    "start multipart: 200 + HTML": Case(
        "destination", lambda r: r.method == "POST" and r.has("uploads"), large_at_source, big_absent,
        "destination: start multipart big: http://127.0.0.1:"),
    "complete multipart: 200 + HTML": Case(
        "destination", lambda r: r.method == "POST" and r.has("uploadId"), large_at_source, big_absent,
        "destination: complete multipart big"),
    "complete multipart: 200 + <Error>": Case(
        "destination", lambda r: r.method == "POST" and r.has("uploadId"), large_at_source, big_absent,
        "destination: complete multipart big"),
    "batch delete: 200 + HTML": Case(
        "destination", lambda r: r.method == "POST" and r.has("delete"), orphans_at_destination,
        orphans_still_there_and_not_counted, "destination: delete 3 objects"),
    "batch delete: 200 + <Error>": Case(
        "destination", lambda r: r.method == "POST" and r.has("delete"), orphans_at_destination,
        orphans_still_there_and_not_counted, "destination: delete 3 objects"),  # botocore makes it a 500
    "source tags: 200 + HTML": Case(
        "source", lambda r: r.method == "GET" and r.has("tagging"), tagged_object_rewritten_at_source,
        destination_keeps_its_object_and_tags, "source: get tags tagged"),
    "source tags: 200 + <Error>": Case(
        "source", lambda r: r.method == "GET" and r.has("tagging"), tagged_object_rewritten_at_source,
        destination_keeps_its_object_and_tags, "the answer is an S3 error document"),
    "put object: 200 + HTML": Case(
        "destination", lambda r: r.method == "PUT" and object_request(r) and not r.query, one_small_object,
        small_absent, "answered 200 without an ETag: not an S3 answer"),
    "source object GET: 200 + HTML": Case(
        "source", lambda r: r.method == "GET" and object_request(r) and not r.query, one_small_object,
        small_absent, "source: get small"),
    "destination HEAD: 200 without an ETag": Case(
        "destination", lambda r: r.method == "HEAD" and object_request(r), same_size_other_bytes,
        same_size_not_decided_on_a_fake_head, "no ETag header: not an S3 answer"),
    # Not knowing whether the bucket has object lock is no reason to stop: copies go on.
    "object lock configuration: 200 + HTML": Case(
        "destination", lambda r: r.method == "GET" and r.has("object-lock"), one_small_object, small_copied,
        "", exit_code=0),
}


def canned(name: str) -> Canned:
    if "without an ETag" in name:
        return Canned(200, {"Content-Type": "text/html"}, b"")
    if "<Error>" in name:
        return s3_error_document("InternalError", 200)
    return html_page()


@pytest.mark.parametrize("name", list(CASES))
def test_an_answer_that_is_not_s3s_fails_the_operation_and_loses_nothing(pair, make_app, name):
    case = CASES[name]
    case.setup(pair, make_app)
    target = pair.servers["source" if case.side == "source" else "dest"]
    proxy = FaultProxy(target.port, lambda request: canned(name) if case.matches(request) else None)
    variable = "MINIO_ENDPOINT" if case.side == "source" else "S3_SYNC_ENDPOINT"
    env = {**pair.env, variable: proxy.endpoint, "S3_SYNC_MAX_RETRIES": "2", "S3_SYNC_RETRY_DELAY": "0",
           "S3_SYNC_MULTIPART_THRESHOLD": "5MiB", "S3_SYNC_MULTIPART_CHUNK_SIZE": "5MiB"}
    try:
        result = run_cli(env, "reconcile")
    finally:
        proxy.close()
    assert proxy.faulted, "the fault never happened: the test would prove nothing"
    assert result.code == case.exit_code, result.output
    assert case.cause in result.stderr
    assert "this is a bug" not in result.output
    case.check(pair, result)
