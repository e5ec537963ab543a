"""Listing by prefix, several at once, against real servers: it must list exactly what
one sequence of pages lists, on both sides, from any resumption point; and a prefix
whose listing fails must make the run delete nothing, or resume and complete."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from replicator.errors import TransientError
from replicator.stores.destination import S3Destination
from replicator.stores.source import MinioSource

# Top-level objects between prefixes, nested prefixes, folder markers (keys ending in
# "/"), a prefix holding only its marker, and odd characters. No key is also another's
# "directory" ("a" with "a/b"): MinIO can't hold both (see test_property_mirror.py).
MIXED = [
    "README", "a-b", "a0", "dir/", "dir/x", "dir/sub/", "dir/sub/y", "dir/sub/deep/z", "empty/",
    "only/one/level/down/k", "sp ace/k", "x+y/p%20q", "zz", "é/ünï", "日本/語", "😀", "😀x/1",
]
# Keys a destination may hold that MinIO can't: an empty path segment, a marker with content.
DEST_ONLY = ["a//b", "marker-with-data/", "marker-with-data/k"]


def put_source(pair, keys) -> None:
    for key in keys:
        data = b"" if key.endswith("/") else key.encode()
        pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data))


def put_dest(pair, keys) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: pair.dest.put_object(Bucket=pair.dest_bucket, Key=key, Body=key.encode()), keys))


def keys(store, start_after=None) -> list[str]:
    return [obj.key for obj in store.list_from(start_after)]


def stores(pair, side: str, concurrency: int):
    settings = pair.settings(S3_SYNC_LIST_CONCURRENCY=str(concurrency))
    return MinioSource(settings) if side == "source" else S3Destination(settings)


@pytest.mark.parametrize("side", ["source", "dest"])
def test_listing_by_prefix_lists_what_one_sequence_of_pages_lists(pair, side):
    put_source(pair, MIXED)
    put_dest(pair, MIXED + (DEST_ONLY if pair.kind == "moto" else []))
    sequential = stores(pair, side, 1)
    expected = keys(sequential)
    sdk = pair.source_keys() if side == "source" else pair.dest_keys()
    assert expected == sorted(sdk) and len(expected) >= len(MIXED)
    for concurrency in (2, 8):
        parallel = stores(pair, side, concurrency)
        assert keys(parallel) == expected
        # Resumed after any key (a retried listing), or between keys: the rest, once each.
        for start in [*expected, "dir/sub/", "dir/sub/deep/", "dir/w", "only/", "é/", "\U0010ffff"]:
            assert keys(parallel, start) == [k for k in expected if k > start], start


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_prefixes_that_hold_only_delete_markers_list_nothing(pair):
    # MinIO still names "gone/" as a common prefix once its only key has a delete marker.
    from minio.versioningconfig import ENABLED, VersioningConfig

    pair.source.set_bucket_versioning(pair.source_bucket, VersioningConfig(ENABLED))
    put_source(pair, ["gone/x", "gone/y/z", "kept/x", "top"])
    for key in ("gone/x", "gone/y/z"):
        pair.source.remove_object(pair.source_bucket, key)
    assert keys(stores(pair, "source", 8)) == keys(stores(pair, "source", 1)) == ["kept/x", "top"]


LAYOUTS = {
    # 1,100 entries at the top level, every hundredth a prefix, one of them the last
    # entry of the first page: the second page is reached by continuation token.
    "two pages": [f"k{i:04d}/x" if i % 100 == 99 else f"k{i:04d}" for i in range(1100)],
    # Prefixes of one key each: the walk goes on as one sequence of pages midway.
    "small prefixes": [f"user-{u:03d}/{name}" for u in range(60) for name in ("avatar", "a/b")],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("side", ["source", "dest"])
def test_larger_layouts_are_listed_to_their_end(pair, side, layout):
    many = LAYOUTS[layout]
    if side == "source":
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: pair.source.put_object(pair.source_bucket, k, io.BytesIO(b"x"), 1), many))
    else:
        put_dest(pair, many)
    assert keys(stores(pair, side, 8)) == sorted(many)
    middle = sorted(many)[len(many) // 2]
    assert keys(stores(pair, side, 8), middle) == sorted(k for k in many if k > middle)


# --- failures ---------------------------------------------------------------------------

def synced(pair, make_app) -> list[str]:
    layout = [f"{d}/obj-{i}" for d in ("d0", "d1", "d2", "d3") for i in range(3)] + ["top"]
    put_source(pair, layout)
    assert make_app().reconciler.run().copied == len(layout)
    return sorted(layout)


def break_prefix(app, side: str, prefix: str, times: int) -> list:
    """Make the listing of one prefix fail ``times`` times, at the page request."""
    store = app.source if side == "source" else app.dest
    real = store._list_page  # noqa: SLF001 - the one request a prefix's listing makes
    failed = []

    def page(request):
        if request.prefix == prefix and len(failed) < times:
            failed.append(request)
            raise TransientError(store.side, "list", request.subject, "connection reset by peer")
        return real(request)

    store._list_page = page  # noqa: SLF001
    return failed


@pytest.mark.parametrize("side", ["source", "dest"])
def test_a_prefix_whose_listing_fails_makes_the_run_delete_nothing(pair, make_app, side):
    layout = synced(pair, make_app)
    gone = [k for k in layout if k.startswith("d0/")]
    for key in gone:  # deletions the run would make if it trusted its listings
        pair.source.remove_object(pair.source_bucket, key)
    app = make_app(S3_SYNC_MAX_RETRIES="3")
    failed = break_prefix(app, side, "d2/", times=100)
    stats = app.reconciler.run(allow_mass_delete=True)
    assert len(failed) == 3  # the run tried the failing prefix once per attempt, then gave up
    assert stats.failed >= 1 and stats.deleted == 0
    assert sorted(pair.dest_keys()) == layout
    for thread in threading.enumerate():  # and no listing thread outlives the run
        if thread.name.startswith("list-"):
            thread.join(10)
            assert not thread.is_alive(), thread.name


@pytest.mark.parametrize("side", ["source", "dest"])
def test_a_prefix_listing_blip_resumes_and_the_run_completes(pair, make_app, side):
    layout = synced(pair, make_app)
    gone = ["d0/obj-0", "d3/obj-2"]
    for key in gone:
        pair.source.remove_object(pair.source_bucket, key)
    app = make_app(S3_SYNC_MAX_RETRIES="3")
    failed = break_prefix(app, side, "d2/", times=1)
    stats = app.reconciler.run()
    assert len(failed) == 1
    assert (stats.failed, stats.deleted, stats.unchanged) == (0, 2, len(layout) - 2)
    assert sorted(pair.dest_keys()) == sorted(set(layout) - set(gone))
