"""S3_SYNC_MAX_BANDWIDTH and S3_SYNC_MAX_REQUESTS_PER_SECOND on real copies, against
both destinations: the limit holds a copy back, and the paced bodies still arrive whole,
with their Content-Length (S3 refuses a chunked upload).

Only lower bounds: a loaded machine makes a copy slower, never faster than its limit
allows. How close to the limit a copy runs is measured by scripts/bench_bandwidth.py
(docs/benchmarks.md)."""

from __future__ import annotations

import io
import os
import threading
import time

from tests.faultproxy import FaultProxy

MiB = 1024 * 1024
MULTIPART = {"S3_SYNC_MULTIPART_THRESHOLD": "5MiB", "S3_SYNC_MULTIPART_CHUNK_SIZE": "5MiB"}


def put(pair, key: str, data: bytes) -> None:
    pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data))


def timed_reconcile(app):
    started = time.monotonic()
    stats = app.reconciler.run()
    return stats, time.monotonic() - started


def test_a_bandwidth_limit_holds_a_multipart_copy_back(pair, make_app):
    data = os.urandom(6 * MiB)  # two parts, in parallel, on one budget
    put(pair, "big.bin", data)
    app = make_app(S3_SYNC_MAX_BANDWIDTH="2MiB", **MULTIPART)
    stats, elapsed = timed_reconcile(app)
    assert (stats.copied, stats.failed) == (1, 0)
    assert pair.dest_body("big.bin") == data
    # 6 MiB at 2 MiB/s, less the tenth of a second's worth it may start with: 2.9 s at least.
    assert elapsed >= 2.5


def test_a_request_rate_limit_holds_small_copies_back(pair, make_app):
    for n in range(20):
        put(pair, f"small/{n:02}", b"x" * 100)
    app = make_app(S3_SYNC_MAX_REQUESTS_PER_SECOND="5")
    stats, elapsed = timed_reconcile(app)
    assert (stats.copied, stats.failed) == (20, 0)
    # A listing page and 20 PUTs at 5 a second, one of them at once: 4 s at least.
    assert elapsed >= 3


def test_paced_bodies_go_with_their_length_not_chunked(pair, make_app):
    small, large = os.urandom(300 * 1024), os.urandom(7 * MiB)
    put(pair, "small.bin", small)
    put(pair, "large.bin", large)
    puts = []

    def record(request):
        if request.method == "PUT":
            puts.append(request)

    proxy = FaultProxy(pair.servers["dest"].port, record)
    try:
        app = make_app(S3_SYNC_ENDPOINT=proxy.endpoint, S3_SYNC_MAX_BANDWIDTH="100MiB", **MULTIPART)
        stats = app.reconciler.run()
    finally:
        proxy.close()
    assert (stats.copied, stats.failed) == (2, 0)
    assert (pair.dest_body("small.bin"), pair.dest_body("large.bin")) == (small, large)
    sizes = sorted(int(request.headers["Content-Length"]) for request in puts)
    assert sizes == [300 * 1024, 2 * MiB, 5 * MiB]  # the small PUT, then both parts
    assert not [r for r in puts if "Transfer-Encoding" in r.headers or "transfer-encoding" in r.headers]


def test_the_abort_cuts_a_paced_copy_short_and_its_upload_is_aborted(pair, make_app):
    """Shutdown past its deadline: a copy waiting on the limit is abandoned, not finished,
    and the abort of its multipart upload goes out although the limit would hold it."""
    put(pair, "big.bin", os.urandom(12 * MiB))  # 12 s at 1 MiB/s
    app = make_app(S3_SYNC_MAX_BANDWIDTH="1MiB", S3_SYNC_MAX_REQUESTS_PER_SECOND="1", **MULTIPART)

    def abort_once_the_upload_started():
        while not pair.dest.list_multipart_uploads(Bucket=pair.dest_bucket).get("Uploads"):
            time.sleep(0.05)
        time.sleep(0.5)  # parts under way
        app.stop.set()
        app.abort.set()

    aborter = threading.Thread(target=abort_once_the_upload_started, daemon=True)
    aborter.start()
    stats = app.reconciler.run()
    aborter.join()
    assert stats.copied == 0
    assert pair.dest_keys() == []
    assert pair.dest.list_multipart_uploads(Bucket=pair.dest_bucket).get("Uploads", []) == []
