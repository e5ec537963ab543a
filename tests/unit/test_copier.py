"""copier.py pieces that need no server: the part-size rules (our own, and when the
source's may be copied), and the memory bound of small copies over the in-memory store."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from replicator import config
from replicator.config import MiB
from replicator.copier import MAX_PARTS, UNMETERED, Copier, part_size, source_layout
from replicator.errors import NotFound, TransientError
from replicator.retry import RetryPolicy
from replicator.stores.memory import MemoryStore, multipart_etag

GiB = 1024 * MiB


@pytest.mark.parametrize(
    ("size", "configured", "expected"),
    [
        (20 * MiB, 8 * MiB, 8 * MiB),
        (8 * MiB * MAX_PARTS, 8 * MiB, 8 * MiB),  # exactly 10,000 parts: fits
        (8 * MiB * MAX_PARTS + 1, 8 * MiB, 9 * MiB),  # one byte more: grow, in whole MiB
        (1024 * GiB, 8 * MiB, 105 * MiB),  # 1 TiB needs > 104.86 MiB parts
        (5 * 1024 * GiB, 5 * MiB, 525 * MiB),  # S3's 5 TiB maximum object
    ],
)
def test_part_size(size, configured, expected):
    chosen = part_size(size, configured)
    assert chosen == expected
    assert -(-size // chosen) <= MAX_PARTS


class _SlowDestination(MemoryStore):
    """Counts PUTs in flight and holds each a moment, so copies overlap."""

    def __init__(self):
        super().__init__("destination")
        self.in_flight = self.most = 0
        self._count = threading.Lock()

    def put(self, key, data, src, tags, digests=None):
        with self._count:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        time.sleep(0.05)
        with self._count:
            self.in_flight -= 1
        super().put(key, data, src, tags)


@pytest.mark.parametrize(("size", "capped"), [(5 * MiB, True), (1024, False)])
def test_small_copies_hold_at_most_eight_thresholds_of_memory_whatever_the_threads(size, capped):
    # 16 threads copy at once; objects at the threshold (5 MiB) fit eight at a time in
    # the budget, while 1 KiB objects all copy at once.
    settings = config.replace(config.load({"S3_SYNC_ACCESS_KEY": "a", "S3_SYNC_SECRET_KEY": "b",
                                           "S3_SYNC_BUCKET": "mirror"}),
                              workers=16, multipart_threshold=5 * MiB, retry_delay=0.0)
    source, dest = MemoryStore("source"), _SlowDestination()
    for n in range(16):
        source.add(f"k{n}", bytes([n]) * size)
    copier = Copier(source, dest, settings, RetryPolicy(1, 0.0, stop=threading.Event()))
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(copier.copy, [f"k{n}" for n in range(16)]))
    finally:
        copier.close()
    assert None not in results
    assert not any(obj.part_sizes for obj in dest.objects.values())  # each in one PUT
    assert dest.contents() == source.contents()
    # Without the budget, sixteen 5 MiB objects would be in memory at once.
    assert (dest.most <= 8) if capped else (dest.most > 8)


class _BudgetWatch(MemoryStore):
    """A destination that notes the copier's budget held as each PUT arrives."""

    def __init__(self):
        super().__init__("destination")
        self.copier = None
        self.seen: dict[str, int] = {}

    def put(self, key, data, src, tags, digests=None):
        self.seen[key] = self.copier._memory.held()  # noqa: SLF001 - what the budget counts
        super().put(key, data, src, tags)


def test_objects_of_at_most_256_kib_copy_without_the_budget_and_larger_ones_hold_it():
    settings = config.replace(config.load({"S3_SYNC_ACCESS_KEY": "a", "S3_SYNC_SECRET_KEY": "b",
                                           "S3_SYNC_BUCKET": "mirror"}), retry_delay=0.0)
    source, dest = MemoryStore("source"), _BudgetWatch()
    for key, size in (("tiny", 1024), ("edge", UNMETERED), ("over", UNMETERED + 1)):
        source.add(key, b"x" * size)
    copier = Copier(source, dest, settings, RetryPolicy(1, 0.0, stop=threading.Event()))
    dest.copier = copier
    try:
        for key in ("tiny", "edge", "over"):
            copier.copy(key)
    finally:
        copier.close()
    assert dest.seen == {"tiny": 0, "edge": 0, "over": UNMETERED + 1}
    assert dest.contents() == source.contents()


def test_a_small_copys_tag_read_is_one_attempt_of_the_copys_own_retries():
    # A retry loop of its own inside the copy's would multiply the attempts, and keep the
    # object's memory held through its backoffs.
    settings = config.replace(config.load({"S3_SYNC_ACCESS_KEY": "a", "S3_SYNC_SECRET_KEY": "b",
                                           "S3_SYNC_BUCKET": "mirror"}), retry_delay=0.0)
    source, dest = MemoryStore("source"), MemoryStore("destination")
    source.add("k", b"data", tags={"t": "1"})
    source.fail("get tags", "k", TransientError("source", "get tags", "k", "SlowDown"))  # every time
    copier = Copier(source, dest, settings, RetryPolicy(3, 0.0, stop=threading.Event()))
    try:
        with pytest.raises(TransientError):
            copier.copy("k")
    finally:
        copier.close()
    assert source.ops("get tags") == ["k", "k", "k"]  # 3 attempts in all, not 3 x 3
    assert copier._memory.held() == 0  # noqa: SLF001 - released after every attempt


@pytest.mark.parametrize(("side", "fails"), [("source", False), ("destination", True)])
def test_only_the_sources_404_means_gone_a_destinations_is_a_failed_copy(side, fails):
    # A destination that answers 404 to a PUT (a key it can't store, an upload its
    # lifecycle rule aborted) once made the copy count as "gone from the source":
    # skipped, and the run reported success without the object (issue 10).
    settings = config.replace(config.load({"S3_SYNC_ACCESS_KEY": "a", "S3_SYNC_SECRET_KEY": "b",
                                           "S3_SYNC_BUCKET": "mirror"}), retry_delay=0.0)
    source, dest = MemoryStore("source"), MemoryStore("destination")
    source.add("k", b"data")
    store, op = (source, "get") if side == "source" else (dest, "put")
    store.fail(op, "k", NotFound(side, op, "k", "NoSuchKey (HTTP 404)", code="NoSuchKey"))
    copier = Copier(source, dest, settings, RetryPolicy(3, 0.0, stop=threading.Event()))
    try:
        if fails:
            with pytest.raises(NotFound):
                copier.copy("k")
        else:
            assert copier.copy("k") is None
    finally:
        copier.close()


FIVE, EIGHT, SIXTEEN = 5 * MiB, 8 * MiB, 16 * MiB


@pytest.mark.parametrize(("sizes", "size", "etag", "why"), [
    ([EIGHT, EIGHT, 100], 2 * EIGHT + 100, "abc-3", None),
    ([FIVE, 7 * MiB, 1], 12 * MiB + 1, "abc-3", None),  # unequal parts copy as they are
    ([SIXTEEN], SIXTEEN, "abc-1", None),  # one part, at the largest allowed
    (None, 20 * MiB, "abc-3", "the source doesn't list its parts"),
    ([EIGHT, EIGHT, 100], 2 * EIGHT + 100, "abc-2", "3 parts listed for an ETag of 2 parts"),
    ([EIGHT, EIGHT], 3 * EIGHT, "abc-2", "parts adding up to"),
    ([MiB, EIGHT], 9 * MiB, "abc-2", "below S3's 5 MiB minimum"),
    ([FIVE] * (MAX_PARTS + 1), FIVE * (MAX_PARTS + 1), f"abc-{MAX_PARTS + 1}", "above S3's 10000"),
    ([32 * MiB, 100], 32 * MiB + 100, "abc-2", "above S3_SYNC_MULTIPART_THRESHOLD"),
], ids=["equal", "unequal", "single", "unlisted", "count", "sum", "small", "too-many", "too-large"])
def test_source_layout(sizes, size, etag, why):
    found = source_layout(sizes, size, etag, SIXTEEN)
    assert (found is None) if why is None else (why in found)


def _multipart_source(parts: list[bytes]) -> MemoryStore:
    source = MemoryStore("source")
    stored = source.add("big", b"".join(parts), etag=multipart_etag(parts))
    stored.part_sizes = tuple(len(p) for p in parts)
    return source


@pytest.mark.parametrize(("parts", "same_etag"), [
    ([b"a" * FIVE, b"b" * (7 * MiB), b"c" * 1000], True),  # the source's layout: its ETag too
    ([b"a" * (20 * MiB), b"b" * 1000], False),  # parts above the threshold: ours, 8 MiB each
])
def test_a_multipart_copy_takes_the_sources_parts_where_it_can(parts, same_etag):
    settings = config.replace(config.load({"S3_SYNC_BUCKET": "mirror"}), multipart_threshold=SIXTEEN,
                              multipart_chunk_size=EIGHT, retry_delay=0.0)
    source, dest = _multipart_source(parts), MemoryStore("destination")
    copier = Copier(source, dest, settings, RetryPolicy(1, 0.0, stop=threading.Event()))
    try:
        assert copier.copy("big") is not None
    finally:
        copier.close()
    copied = dest.objects["big"]
    assert copied.data == b"".join(parts)
    assert (copied.etag == source.objects["big"].etag) is same_etag
    assert list(copied.part_sizes) == ([len(p) for p in parts] if same_etag else [EIGHT, EIGHT, 4 * MiB + 1000])
