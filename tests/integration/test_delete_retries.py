"""A delete that is retried asks the source again first.

The reconcile and the event workers check that the source lacks a key just before they
delete it. But a delete the destination answers with a 503 is retried seconds later,
and by then the key may be back at the source: deleting it then would remove an object
the source has, and with its event lost nothing would bring it back before the next
reconcile. A fault proxy in front of the real destination answers the first batch
delete with a 503 and, at that moment, uploads the key again to the real source.
"""

from __future__ import annotations

import io
import time

import pytest

from replicator.workqueue import KeyedQueue, WorkItem
from tests.conftest import run_cli
from tests.faultproxy import Canned, FaultProxy, Request, s3_error_document

pytestmark = pytest.mark.parametrize("pair", ["minio", "moto"], indirect=True)


def put(pair, key: str, data: bytes) -> None:
    pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data))


def is_delete(request: Request) -> bool:
    return (request.method == "POST" and request.has("delete")) or request.method == "DELETE"


class UploadAgainOnFirstDelete:
    """The rule: the first delete request uploads ``key`` again at the source, then
    gets a 503 SlowDown; every later request is forwarded."""

    def __init__(self, pair, key: str, data: bytes):
        self.pair, self.key, self.data = pair, key, data
        self.deletes = 0

    def __call__(self, request: Request) -> Canned | None:
        if not is_delete(request):
            return None
        self.deletes += 1
        if self.deletes > 1:
            return None
        put(self.pair, self.key, self.data)
        return s3_error_document("SlowDown", 503)


def test_a_reconcile_does_not_retry_a_delete_the_source_made_stale(pair, make_app):
    for key in ("keep", "back"):
        put(pair, key, b"first " + key.encode())
    assert make_app().reconciler.run().copied == 2
    pair.source.remove_object(pair.source_bucket, "back")

    rule = UploadAgainOnFirstDelete(pair, "back", b"second version")
    proxy = FaultProxy(pair.servers["dest"].port, rule)
    env = {**pair.env, "S3_SYNC_ENDPOINT": proxy.endpoint, "S3_SYNC_MAX_RETRIES": "3"}
    try:
        result = run_cli(env, "reconcile")
    finally:
        proxy.close()

    assert rule.deletes >= 1, "the delete never happened: the test would prove nothing"
    assert result.code == 0, result.output
    assert "back: appeared at the source during the run; not deleted" in result.stderr
    assert ", 0 deleted," in result.stderr
    assert pair.dest_body("back") == b"first back"  # kept; the next run copies the new version
    assert make_app().reconciler.run().updated == 1
    assert pair.dest_body("back") == b"second version"


def test_an_event_worker_copies_a_key_uploaded_again_while_its_delete_was_retried(pair, make_app):
    put(pair, "back", b"first")
    assert make_app().reconciler.run().copied == 1
    pair.source.remove_object(pair.source_bucket, "back")

    rule = UploadAgainOnFirstDelete(pair, "back", b"second version")
    proxy = FaultProxy(pair.servers["dest"].port, rule)
    try:
        app = make_app(S3_SYNC_ENDPOINT=proxy.endpoint, S3_SYNC_MAX_RETRIES=3)
        workers = app.workers(KeyedQueue(10))
        workers.handle(WorkItem("back", content=True, tags=False, event_time=time.time(), removed=True))
    finally:
        proxy.close()

    assert rule.deletes >= 1, "the delete never happened: the test would prove nothing"
    assert workers.failed == 0
    assert pair.dest_body("back") == b"second version"
