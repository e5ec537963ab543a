"""copier.py pieces that need no server: the part-size rule, and the memory bound of
small copies over the in-memory store."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from replicator import config
from replicator.config import MiB
from replicator.copier import MAX_PARTS, Copier, part_size
from replicator.errors import NotFound, TransientError
from replicator.retry import RetryPolicy
from replicator.stores.memory import MemoryStore

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
    assert all(r is not None and not r.multipart for r in results)
    assert dest.contents() == source.contents()
    # Without the budget, sixteen 5 MiB objects would be in memory at once.
    assert (dest.most <= 8) if capped else (dest.most > 8)


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
