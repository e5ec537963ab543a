"""parallel_listing: a bucket listed prefix by prefix, several at once, must come out
exactly as one sequential listing would: every key, once, in order; from any resumption
point; whatever the page size; and a failure must surface, never shorten the listing.

The server here is a few lines of Python that answer ListObjectsV2 as S3 does
(prefix, delimiter, start-after, continuation token, max-keys), with both behaviours
seen for a delimited listing that starts after a key inside a prefix: MinIO and moto
leave that prefix out ("minio"), S3's documentation suggests it is listed ("rollup").
"""

from __future__ import annotations

import re
import threading
from urllib.parse import quote

import pytest

from replicator import diff
from replicator.errors import ListingOrderError, TransientError
from replicator.model import ObjectInfo
from replicator.retry import RetryPolicy
from replicator.stores import parallel_listing
from replicator.stores.listing import Lister, PageRequest
from replicator.stores.parallel_listing import level_entries, prefix_of
from replicator.stores.parallel_listing import walk as walk_lister

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


class FakeS3:
    def __init__(self, keys, *, max_keys: int = 1000, mode: str = "minio"):
        self.keys = sorted(keys)
        self.max_keys = max_keys
        self.mode = mode
        self.requests: list[PageRequest] = []
        self.fail: dict[str, int] = {}  # prefix -> how many more requests of it fail
        self.lock = threading.Lock()

    def entries(self, request: PageRequest) -> list[tuple[str, bool]]:
        """(name, is_prefix) after rolling up by the delimiter, in order."""
        keys = [k for k in self.keys if k.startswith(request.prefix)]
        after = request.token or request.start_after
        if after is not None and (self.mode == "rollup" and not request.token):
            keys = [k for k in keys if k > after]
        entries: list[tuple[str, bool]] = []
        for key in keys:
            end = key.find(request.delimiter, len(request.prefix)) if request.delimiter else -1
            entry = (key[:end + 1], True) if end >= 0 else (key, False)
            if not entries or entries[-1] != entry:
                entries.append(entry)
        if after is not None:
            entries = [e for e in entries if e[0] > after]
        return entries

    def __call__(self, request: PageRequest) -> bytes:
        with self.lock:
            self.requests.append(request)
            if self.fail.get(request.prefix):
                self.fail[request.prefix] -= 1
                raise TransientError("source", "list", request.subject, "connection reset by peer")
        entries = self.entries(request)
        page, truncated = entries[:self.max_keys], len(entries) > self.max_keys
        contents = "".join(f"<Contents><Key>{quote(name)}</Key><Size>{len(name)}</Size><ETag>\"e\"</ETag></Contents>"
                           for name, is_prefix in page if not is_prefix)
        prefixes = "".join(f"<CommonPrefixes><Prefix>{quote(name)}</Prefix></CommonPrefixes>"
                           for name, is_prefix in page if is_prefix)
        token = f"<NextContinuationToken>{page[-1][0]}</NextContinuationToken>" if truncated else ""
        return (f'<ListBucketResult xmlns="{NS}"><Name>b</Name><EncodingType>url</EncodingType>'
                f"<IsTruncated>{str(truncated).lower()}</IsTruncated>{contents}{prefixes}{token}"
                "</ListBucketResult>").encode()

    def listed_prefixes(self, delimited: bool) -> list[str]:
        return [r.prefix for r in self.requests if bool(r.delimiter) == delimited and not r.token]


def walk(side, fetch, start_after, concurrency):
    return walk_lister(Lister(side, "b", fetch), start_after, concurrency)


def keys_of(listing) -> list[str]:
    return [obj.key for obj in listing]


MIXED = [
    "a", "a-b", "a/", "a/b", "a//b", "a/c/d", "a/c/", "a0", "b", "b/",  # a key, its prefix, and neighbours
    "c/d/e/f/g", "top", "é/1", "é/2", "日本/語", "😀", "😀/x", "z/y/x/w/v/u/t",
]
LAYOUTS = {
    "mixed": MIXED,
    "flat": [f"obj-{i:02d}" for i in range(7)],
    "directories": [f"d{d}/obj-{i}" for d in range(4) for i in range(3)],
    "one top-level prefix": [f"data/d{d}/obj-{i}" for d in range(3) for i in range(3)] + ["data/readme"],
    "top-level objects between prefixes": ["a", "a/1", "b", "b/1", "c", "c/1/2", "d"],
    "empty prefixes (folder markers only)": ["a/", "b/", "b/c/", "d"],
    "deep single chain": ["1/2/3/4/5/6/x", "1/2/3/4/5/6/y"],
    "empty bucket": [],
    # Enough small prefixes for the walk to go on as one sequence of pages midway.
    "many small prefixes": [f"u{u:02d}/{name}" for u in range(40) for name in ("a", "b/c")] + ["u17", "zz"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("max_keys", [1, 2, 1000])
@pytest.mark.parametrize("mode", ["minio", "rollup"])
@pytest.mark.parametrize("concurrency", [2, 8])
def test_the_walk_lists_exactly_what_one_sequential_listing_lists(layout, max_keys, mode, concurrency):
    keys = LAYOUTS[layout]
    server = FakeS3(keys, max_keys=max_keys, mode=mode)
    assert keys_of(walk("source", server, None, concurrency)) == sorted(keys)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("mode", ["minio", "rollup"])
def test_a_walk_resumed_after_any_key_lists_every_later_key_once(layout, mode):
    keys = sorted(LAYOUTS[layout])
    # Resumption points: every key, and strings between keys (as after a deleted key).
    starts = [*keys, "a/bz", "a/c", "a/\U0010ffff", "data/d1/", "data/d1/obj-9", "b/c", "\U0010ffff"]
    for max_keys in (1, 1000):
        for start in starts:
            server = FakeS3(keys, max_keys=max_keys, mode=mode)
            got = keys_of(walk("source", server, start, 4))
            assert got == [k for k in keys if k > start], (start, max_keys)


# Prefixes that end at a "directory" and inside a name, that hold one key, many, or none.
PREFIXES = ["a", "a/", "a/c/", "d1/", "data/", "data/d", "u1", "é/", "😀", "zz", "nothing/"]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("mode", ["minio", "rollup"])
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_walk_under_a_prefix_lists_exactly_its_keys_and_asks_for_nothing_else(layout, mode, concurrency):
    keys = sorted(LAYOUTS[layout])
    for prefix in PREFIXES:
        under = [k for k in keys if k.startswith(prefix)]
        for max_keys in (1, 1000):
            server = FakeS3(keys, max_keys=max_keys, mode=mode)
            assert keys_of(walk_lister(Lister("source", "b", server), None, concurrency, prefix)) == under, prefix
            assert all(r.prefix.startswith(prefix) for r in server.requests), (prefix, server.requests)
        # Resumed inside the prefix (a retried listing): the rest of it, once each.
        for start in under:
            server = FakeS3(keys, max_keys=2, mode=mode)
            got = keys_of(walk_lister(Lister("source", "b", server), start, concurrency, prefix))
            assert got == [k for k in under if k > start], (prefix, start)


def test_concurrency_1_is_the_sequential_listing():
    server = FakeS3(MIXED)
    assert keys_of(walk("source", server, None, 1)) == sorted(MIXED)
    assert [r.delimiter for r in server.requests] == [None]


def test_each_top_level_prefix_is_listed_once_without_delimiter():
    server = FakeS3(LAYOUTS["directories"])
    keys_of(walk("source", server, None, 8))
    assert server.listed_prefixes(delimited=True) == [""]
    assert sorted(server.listed_prefixes(delimited=False)) == ["d0/", "d1/", "d2/", "d3/"]


def test_a_single_top_level_prefix_is_descended_into():
    server = FakeS3(LAYOUTS["one top-level prefix"])
    keys_of(walk("source", server, None, 8))
    assert server.listed_prefixes(delimited=True) == ["", "data/"]
    assert sorted(server.listed_prefixes(delimited=False)) == ["data/d0/", "data/d1/", "data/d2/"]


def test_descending_stops_at_max_depth():
    server = FakeS3(LAYOUTS["deep single chain"])
    keys_of(walk("source", server, None, 8))
    assert parallel_listing.MAX_DEPTH == 3
    assert server.listed_prefixes(delimited=True) == ["", "1/", "1/2/", "1/2/3/"]
    assert server.listed_prefixes(delimited=False) == ["1/2/3/4/"]


def test_a_resumed_walk_lists_the_prefix_it_stopped_in_from_where_it_stopped():
    server = FakeS3(LAYOUTS["directories"])
    assert keys_of(walk("source", server, "d1/obj-0", 8))[:2] == ["d1/obj-1", "d1/obj-2"]
    assert PageRequest("d1/obj-0", "d1/") in server.requests


def test_many_small_prefixes_are_listed_as_one_sequence_once_they_prove_small():
    keys = [f"user-{u:04d}/avatar" for u in range(300)]
    server = FakeS3(keys)
    assert keys_of(walk("source", server, None, 8)) == keys
    prefix_listings = server.listed_prefixes(delimited=False)
    # The sample, plus what was already running when the walk decided: not 300 requests.
    assert parallel_listing.SAMPLE_PAGES <= len([p for p in prefix_listings if p]) <= parallel_listing.SAMPLE_PAGES + 16
    sequential = [r for r in server.requests if not r.prefix and not r.delimiter]
    assert len(sequential) == 1 and sequential[0].start_after.startswith("user-00")


def test_large_prefixes_are_listed_one_by_one_to_the_end(monkeypatch):
    monkeypatch.setattr(parallel_listing, "SAMPLE_PAGES", 4)
    monkeypatch.setattr(parallel_listing, "SMALL_PAGE", 3)  # full pages of 4 keys are not small
    keys = [f"d{d:02d}/obj-{i}" for d in range(20) for i in range(8)]
    server = FakeS3(keys, max_keys=4)
    assert keys_of(walk("source", server, None, 4)) == keys
    assert len(set(server.listed_prefixes(delimited=False))) == 20
    assert not [r for r in server.requests if not r.prefix and not r.delimiter]


# --- failures ---------------------------------------------------------------------------

def test_a_failed_prefix_raises_after_every_key_before_it():
    server = FakeS3(LAYOUTS["directories"])
    server.fail["d2/"] = 1
    got = []
    with pytest.raises(TransientError, match="connection reset"):
        for obj in walk("source", server, None, 8):
            got.append(obj.key)
    assert got == [k for k in sorted(LAYOUTS["directories"]) if k < "d2/"]


def test_a_failed_top_level_page_raises():
    server = FakeS3(LAYOUTS["directories"], max_keys=2)
    server.fail[""] = 1
    with pytest.raises(TransientError):
        list(walk("source", server, None, 8))


@pytest.mark.parametrize("failing", ["", "a/", "a/c/", "c/", "z/"])
def test_the_resumable_listing_is_complete_after_failures_anywhere(failing):
    server = FakeS3(MIXED, max_keys=2)
    server.fail[failing] = 2
    policy = RetryPolicy(attempts=3, base_delay=0)
    listing = policy.resumable(lambda after: walk("source", server, after, 4), lambda obj: obj.key)
    assert keys_of(listing) == sorted(MIXED)


def test_keys_outside_the_asked_prefix_are_refused():
    server = FakeS3(["a/1", "b/1"])
    real = server.__call__

    def ignores_prefix(request):
        return real(PageRequest(request.start_after, "", request.delimiter, request.token))

    with pytest.raises(TransientError, match="lies outside the prefix"):
        list(walk("source", ignores_prefix, None, 4))


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_truncated_page_without_a_token_is_refused(concurrency):
    server = FakeS3(LAYOUTS["flat"], max_keys=2)

    def no_token(request):
        return server(request).replace(b"NextContinuationToken", b"Ignored")

    with pytest.raises(TransientError, match="truncated page without a NextContinuationToken"):
        list(walk("destination", no_token, None, concurrency))


def swap_first_two_keys(body: bytes) -> bytes:
    entries = re.findall(rb"<Contents>.*?</Contents>", body)
    if len(entries) < 2:
        return body
    first, second = entries[:2]
    return body.replace(first + second, second + first, 1)


@pytest.mark.parametrize("layout", ["flat", "directories", "top-level objects between prefixes"])
@pytest.mark.parametrize("concurrency", [1, 4])
def test_two_keys_swapped_inside_a_page_are_refused_in_every_listing_mode(layout, concurrency):
    # The parallel walk merges a page's keys with its prefixes by sorting them: the
    # order must be checked before that sort, or the swap disappears (issue 10).
    server = FakeS3(LAYOUTS[layout], max_keys=3)
    with pytest.raises(TransientError, match="the page is out of order"):
        list(walk("source", lambda request: swap_first_two_keys(server(request)), None, concurrency))


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_page_that_goes_back_before_the_previous_one_is_refused(concurrency):
    server = FakeS3(LAYOUTS["directories"] + ["top-1", "top-2", "top-3"], max_keys=2)

    def repeats_the_first_page(request):
        return server(PageRequest(None, request.prefix, request.delimiter))  # ignores where to start

    with pytest.raises(TransientError, match="does not come after"):
        list(walk("source", repeats_the_first_page, None, concurrency))


def test_a_listing_out_of_order_across_prefixes_is_still_caught_by_the_diff():
    # Each page proven, yet the whole out of order: the merge-join's own check stays.
    listing = [ObjectInfo("b/1", 1, "e"), ObjectInfo("a/1", 1, "e")]
    with pytest.raises(ListingOrderError):
        list(diff.plan(iter(listing), []))


def test_stopping_early_leaves_no_listing_thread_behind():
    server = FakeS3([f"d{d:02d}/obj-{i}" for d in range(30) for i in range(5)], max_keys=1)
    listing = walk("source", server, None, 4)
    assert [next(listing).key for _ in range(3)] == ["d00/obj-0", "d00/obj-1", "d00/obj-2"]
    listing.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("list-source-prefix")]


# --- the pure pieces ---------------------------------------------------------------------

@pytest.mark.parametrize(("key", "prefix", "expected"), [
    (None, "", None),
    ("a", "", None),
    ("a/", "", "a/"),
    ("a/b/c", "", "a/"),
    ("a//b", "", "a/"),
    ("a//b", "a/", "a//"),
    ("a/b/c", "a/", "a/b/"),
    ("a/b", "a/", None),
    ("b/c", "a/", None),
    ("日本/語", "", "日本/"),
])
def test_prefix_of(key, prefix, expected):
    assert prefix_of(key, prefix) == expected


def obj(key: str) -> ObjectInfo:
    return ObjectInfo(key, 1, "e")


@pytest.mark.parametrize(("prefix", "items", "prefixes", "expected"), [
    # A response lists objects, then prefixes: merged, "a-b" < "a/" < "a0".
    ("", ["a", "a-b", "a0", "b"], ["a/", "é/"], ["a", "a-b", "a/", "a0", "b", "é/"]),
    # A folder marker listed as an object and as a prefix: once, as the prefix.
    ("", ["a/", "b"], ["a/"], ["a/", "b"]),
    ("", ["a/"], [], ["a/"]),
    # The level's own folder marker is an object of the level (MinIO lists "c/" under "c/").
    ("c/", ["c/", "c/d"], ["c//", "c/e/"], ["c/", "c//", "c/d", "c/e/"]),
    ("", [], ["😀/", "a/"], ["a/", "😀/"]),
    ("", [], [], []),
])
def test_level_entries(prefix, items, prefixes, expected):
    entries = level_entries(prefix, [obj(k) for k in items], prefixes)
    assert [key for key, _ in entries] == expected
    assert all((o is None) == (key.endswith("/") and key != prefix) for key, o in entries)

