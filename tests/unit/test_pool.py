"""pool.py: prefetch and ordered_chain keep order and forward a producer's error in place; the
bounded executor applies backpressure; the byte budget bounds bytes held, first come first
served."""

from __future__ import annotations

import threading
import time

import pytest

from replicator.errors import TransientError
from replicator.pool import BoundedExecutor, ByteBudget, ordered_chain, prefetch
from replicator.retry import Stopped


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


# --- ordered_chain -----------------------------------------------------------------------

def lists_of(*chunks):
    """A part for ordered_chain: a callable returning these lists."""
    return lambda: iter([list(chunk) for chunk in chunks])


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_ordered_chain_keeps_the_order_of_parts_and_lists(workers):
    parts = [[1, 2], lists_of([3], [4, 5]), lists_of(), [6], lists_of([7]), [], lists_of([8, 9], [10])]
    assert list(ordered_chain(parts, workers)) == list(range(1, 11))


def test_ordered_chain_waits_for_a_slow_part_while_later_parts_are_done():
    later_done = threading.Event()

    def slow():
        assert later_done.wait(10)  # the part after this one finished first
        yield ["a"]

    def fast():
        yield ["b"]
        later_done.set()

    assert list(ordered_chain([slow, fast], workers=2)) == ["a", "b"]


def test_ordered_chain_raises_a_parts_error_at_its_turn_after_every_earlier_item():
    def broken():
        yield ["c"]
        raise TransientError("source", "list", "p/", "connection reset by peer")

    got = []
    with pytest.raises(TransientError, match="connection reset"):
        for item in ordered_chain([["a"], lists_of(["b"]), broken, lists_of(["never"])], workers=4):
            got.append(item)
    assert got == ["a", "b", "c"]


def test_ordered_chain_raises_an_error_from_opening_a_part():
    def refuses():
        raise TransientError("destination", "list", "p/", "InternalError (HTTP 500)")

    with pytest.raises(TransientError):
        list(ordered_chain([lists_of(["a"]), refuses], workers=2))


def test_ordered_chain_starts_at_most_workers_parts_ahead():
    pulled = []

    def parts():
        for n in range(100):
            pulled.append(n)
            yield lists_of([n])

    chain = ordered_chain(parts(), workers=3)
    assert next(chain) == 0
    assert pulled == [0, 1, 2]  # three in flight; the fourth waits for the first to be consumed
    assert next(chain) == 1
    assert pulled == [0, 1, 2, 3]
    chain.close()


def test_ordered_chain_stops_its_workers_when_the_consumer_stops_early():
    opened = []

    def endless(n):
        def part():
            opened.append(n)
            while True:
                yield [n]
        return part

    chain = ordered_chain((endless(n) for n in range(10)), workers=4, buffer=1, name="endless")
    assert [next(chain) for _ in range(3)] == [0, 0, 0]
    chain.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("endless")]
    assert len(opened) <= 4


def test_ordered_chain_stops_its_workers_when_a_part_fails():
    def endless():
        while True:
            yield ["x"]

    def broken():
        raise TransientError("source", "list", None, "boom")

    with pytest.raises(TransientError):
        list(ordered_chain([broken, endless, endless], workers=3, buffer=1, name="after-error"))
    assert not [t for t in threading.enumerate() if t.name.startswith("after-error")]


def test_closing_prefetch_closes_its_source():
    closed = threading.Event()

    def produce():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    items = prefetch(produce(), depth=4, batch=2)
    assert next(items) == 0
    items.close()
    assert closed.wait(10)  # the producer thread noticed, and closed the listing it was reading


def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_byte_budget_makes_a_holder_wait_until_others_release():
    budget = ByteBudget(100)
    never = threading.Event()
    entered = threading.Event()
    with budget.hold(60, never):
        with budget.hold(40, never):
            assert budget.held() == 100

            def third():
                with budget.hold(10, never):
                    entered.set()

            thread = threading.Thread(target=third)
            thread.start()
            assert not entered.wait(0.2)  # over the limit: waits
        assert entered.wait(5)  # 40 released: it fits
        thread.join()
    assert budget.held() == 0


def test_byte_budget_serves_waiters_in_arrival_order():
    # A large request must not be starved by smaller ones arriving after it.
    budget = ByteBudget(100)
    never = threading.Event()
    order: list[str] = []
    release_first = threading.Event()

    def holder(name: str, size: int, hold_until: threading.Event | None = None) -> None:
        with budget.hold(size, never):
            order.append(name)
            if hold_until:
                hold_until.wait(5)

    first = threading.Thread(target=holder, args=("first", 50, release_first))
    first.start()
    _until(lambda: budget.held() == 50)
    large = threading.Thread(target=holder, args=("large", 100))
    large.start()
    _until(lambda: budget._waiting)  # noqa: SLF001 - until it queues
    small = threading.Thread(target=holder, args=("small", 10))  # would fit now, but came later
    small.start()
    small.join(0.2)
    assert order == ["first"]
    release_first.set()
    for t in (first, large, small):
        t.join(5)
    assert order == ["first", "large", "small"]


def test_byte_budget_gives_up_waiting_on_abort_and_clamps_a_request_to_the_whole_budget():
    budget = ByteBudget(100)
    abort = threading.Event()
    with budget.hold(1000, abort):  # more than the budget: takes all of it, doesn't deadlock
        assert budget.held() == 100
        abort.set()
        with pytest.raises(Stopped), budget.hold(1, abort):
            pass
    assert budget.held() == 0 and not budget._waiting  # noqa: SLF001
