"""A listing page that isn't one makes the run dirty: exit 1, "deletions skipped", and
not one delete (issue 10).

A fault-injecting proxy (tests/faultproxy.py) stands in front of a real MinIO, the
source or the destination, and spoils that side's listing pages in the ways seen in
the field: a 200 with an HTML page (a captive portal, a misrouted load balancer), an S3
error document at 200, two keys swapped inside a page, a 500, a connection cut, a 403.
Each fault runs in both listing modes (one sequence of pages, and prefixes listed in
parallel) with small pages, so that "the second page" and "the last page" exist. The
destination holds five objects the source no longer has: a run that trusted a spoiled
listing would delete them, or others.
"""

from __future__ import annotations

import io
import re

import pytest

from tests.conftest import run_cli
from tests.faultproxy import CUT, Answer, FaultProxy, Request, html_page, s3_error_document

pytestmark = pytest.mark.parametrize("pair", ["minio"], indirect=True)

KEYS = ([f"a{i}" for i in range(4)] + [f"p/{i}" for i in range(6)] + [f"q/{i}" for i in range(6)]
        + ["z0", "z1"])
GONE = ["a1", "p/2", "p/3", "q/5", "z1"]  # deleted at the source after the first sync
PAGE_SIZE = 3
MODES = {"sequential": "1", "parallel": "4"}


def swap_first_two_keys(body: bytes) -> bytes:
    entries = re.findall(rb"<Contents>.*?</Contents>", body)
    if len(entries) < 2:
        return body
    return body.replace(entries[0] + entries[1], entries[1] + entries[0], 1)


class SwapInsideFirstPage:
    """Swap two keys inside the first page that has two, every time that page is asked for."""

    def __init__(self):
        self.target: str | None = None

    def __call__(self, request: Request):
        if not request.is_listing:
            return None
        # The page asked for, not the request's signature: a presigned URL (the
        # destination's listings) carries its date and signature in the query too.
        query = repr(sorted((k, v) for k, v in request.query.items() if not k.lower().startswith("x-amz-")))

        def swap(answer: Answer) -> Answer:
            swapped = swap_first_two_keys(answer.body)
            if swapped == answer.body or (self.target is not None and self.target != query):
                return answer
            self.target = query
            return Answer(answer.status, answer.headers, swapped)

        return swap


def later_pages(fault):
    """``fault`` for every listing request after the first: the retries meet it too."""
    return lambda request: fault if request.nth_listing >= 2 else None


def last_pages(request: Request):
    """Every last page (IsTruncated false) but that of the first request, made HTML."""
    if request.nth_listing < 2:
        return None
    return lambda answer: html_page() if b"<IsTruncated>false</IsTruncated>" in answer.body else answer


FAULTS = {
    "2nd page: 200 + HTML": (lambda: later_pages(html_page()),
                             "not a <ListBucketResult> document (root element <html>)"),
    "last page: 200 + HTML": (lambda: last_pages, "not a <ListBucketResult> document (root element <html>)"),
    "2nd page: 200 + <Error> document": (lambda: later_pages(s3_error_document("InternalError", 200)),
                                          "the answer is an S3 error document: InternalError"),
    "two keys swapped inside page 1": (SwapInsideFirstPage, "the page is out of order"),
    "later page: 500": (lambda: later_pages(s3_error_document("InternalError", 500)), "InternalError (HTTP 500)"),
    "later page: connection cut": (lambda: later_pages(CUT), "connection to http://127.0.0.1:"),
    "later page: 403": (lambda: later_pages(s3_error_document("AccessDenied", 403)), "AccessDenied (HTTP 403)"),
}


@pytest.fixture
def mirrored(pair, make_app):
    """The pair in sync, then five keys deleted at the source."""
    for key in KEYS:
        pair.source.put_object(pair.source_bucket, key, io.BytesIO(key.encode()), len(key))
    stats = make_app().reconciler.run()
    assert stats.copied == len(KEYS) and not stats.failed
    for key in GONE:
        pair.source.remove_object(pair.source_bucket, key)
    return pair


def through_proxy(pair, side: str, proxy: FaultProxy, mode: str) -> dict[str, str]:
    variable = "MINIO_ENDPOINT" if side == "source" else "S3_SYNC_ENDPOINT"
    return {**pair.env, variable: proxy.endpoint, "S3_SYNC_LIST_CONCURRENCY": MODES[mode],
            "S3_SYNC_LIST_PAGE_SIZE": str(PAGE_SIZE), "S3_SYNC_MAX_RETRIES": "2", "S3_SYNC_RETRY_DELAY": "0",
            "S3_SYNC_ALLOW_EMPTY_SOURCE": "true", "S3_SYNC_DELETE_MAX_PERCENT": "100"}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("side", ["source", "destination"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_spoiled_listing_page_deletes_nothing_and_says_so(mirrored, side, mode, fault):
    pair = mirrored
    make_rule, cause = FAULTS[fault]
    target = pair.servers["source" if side == "source" else "dest"]
    proxy = FaultProxy(target.port, make_rule())
    try:
        result = run_cli(through_proxy(pair, side, proxy, mode), "reconcile")
    finally:
        proxy.close()
    assert proxy.faulted, "the fault never happened: the test would prove nothing"
    assert result.code == 1, result.output
    assert "deletions skipped: this run had errors" in result.stderr
    assert cause in result.stderr
    assert f"{side}: list" in result.stderr  # the error names the side and the operation
    assert "✓ Sync completed" not in result.output
    assert sorted(pair.dest_keys()) == sorted(KEYS), "a spoiled listing led to deletes"


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("side", ["source", "destination"])
def test_without_a_fault_the_same_run_makes_the_five_deletes(mirrored, side, mode):
    # The control: through the same proxy, with the same small pages, an honest
    # listing lets the deletes through, so the faults above are what stopped them.
    pair = mirrored
    target = pair.servers["source" if side == "source" else "dest"]
    proxy = FaultProxy(target.port)
    try:
        result = run_cli(through_proxy(pair, side, proxy, mode), "reconcile")
    finally:
        proxy.close()
    assert result.code == 0, result.output
    assert len(proxy.listings()) >= 3  # several pages, through the proxy
    assert sorted(pair.dest_keys()) == sorted(set(KEYS) - set(GONE))
