"""pool.py: prefetch keeps order and forwards a producer's error in place; the
bounded executor applies backpressure."""

from __future__ import annotations

import threading

import pytest

from replicator.errors import TransientError
from replicator.pool import BoundedExecutor, prefetch


def test_prefetch_yields_everything_in_order():
    assert list(prefetch(iter(range(1000)), depth=7)) == list(range(1000))


def test_prefetch_reraises_the_producers_error_after_the_items_before_it():
    def produce():
        yield 1
        yield 2
        raise TransientError("source", "list", None, "InternalError (HTTP 500)")

    got = []
    with pytest.raises(TransientError):
        for item in prefetch(produce(), depth=1):
            got.append(item)
    assert got == [1, 2]


def test_bounded_executor_blocks_submit_at_the_limit():
    release = threading.Event()
    started = threading.Semaphore(0)
    with BoundedExecutor(workers=1, limit=2) as pool:
        def task():
            started.release()
            release.wait(10)

        pool.submit(task)
        pool.submit(task)
        third_submitted = threading.Event()
        submitter = threading.Thread(target=lambda: (pool.submit(lambda: None), third_submitted.set()))
        submitter.start()
        assert started.acquire(timeout=10)  # the first task is running
        assert not third_submitted.is_set()  # two in flight: the third waits for a slot
        release.set()
        submitter.join(10)
        assert third_submitted.is_set()
