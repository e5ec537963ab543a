"""workqueue.KeyedQueue: coalescing, per-key exclusion, FIFO across keys, backpressure,
reconcile claims, close. No servers; threads only where exclusion is the point."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from replicator.workqueue import Closed, KeyedQueue, WorkItem

SHORT = 0.05  # a put/get that is expected to give up: long enough to block, short to wait out


def created(key: str, t: float = 100.0, size: int = 1) -> WorkItem:
    return WorkItem(key, content=True, tags=False, event_time=t, size=size)


def tagged(key: str, t: float = 100.0) -> WorkItem:
    return WorkItem(key, content=False, tags=True, event_time=t)


def removed(key: str, t: float = 100.0) -> WorkItem:
    return WorkItem(key, content=True, tags=False, event_time=t, removed=True)


def retention(key: str, t: float = 100.0) -> WorkItem:
    return WorkItem(key, content=False, tags=False, event_time=t, retention=True)


def legal_hold(key: str, t: float = 100.0) -> WorkItem:
    return WorkItem(key, content=False, tags=False, event_time=t, legal_hold=True)


# -- coalescing -------------------------------------------------------------------------


def test_a_burst_to_one_key_is_one_pending_item():
    q = KeyedQueue(maxsize=10)
    for n in range(50):
        assert q.put(created("a", t=100.0 + n, size=n))
    assert q.depth() == 1
    item = q.get(timeout=0)
    assert item.key == "a"
    assert item.size == 49  # the newest event's details
    assert item.event_time == 100.0  # the oldest event's time: lag counts from the first write
    assert q.get(timeout=0) is None


@pytest.mark.parametrize(
    ("older", "newer", "content", "tags", "removed_"),
    [
        (created("k"), tagged("k"), True, True, False),
        (tagged("k"), created("k"), True, True, False),
        (tagged("k"), tagged("k"), False, True, False),
        (created("k"), removed("k"), True, False, True),
        (removed("k"), created("k"), True, False, False),  # the newest event decides the hint
        (tagged("k"), removed("k"), True, True, True),
    ],
)
def test_merge_keeps_every_flag_and_the_newest_details(older, newer, content, tags, removed_):
    q = KeyedQueue(maxsize=10)
    q.put(older)
    q.put(newer)
    item = q.get(timeout=0)
    assert (item.content, item.tags, item.removed) == (content, tags, removed_)


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([retention("k"), legal_hold("k")], (False, False, True, True)),
        ([legal_hold("k"), tagged("k")], (False, True, False, True)),
        ([retention("k"), created("k")], (True, False, True, False)),
        ([created("k"), legal_hold("k"), retention("k")], (True, False, True, True)),
    ],
)
def test_merge_keeps_retention_and_legal_hold_flags(items, expected):
    q = KeyedQueue(maxsize=10)
    for item in items:
        q.put(item)
    item = q.get(timeout=0)
    assert (item.content, item.tags, item.retention, item.legal_hold) == expected


def test_merge_keeps_the_oldest_event_time_whatever_the_arrival_order():
    q = KeyedQueue(maxsize=10)
    q.put(created("a", t=105.0))
    q.put(created("a", t=101.0))  # events can arrive out of order
    q.put(created("a", t=103.0))
    assert q.oldest_event() == 101.0
    assert q.get(timeout=0).event_time == 101.0


def test_a_held_key_gets_one_pending_item_handed_out_only_after_done():
    q = KeyedQueue(maxsize=10)
    q.put(created("a", size=0))
    first = q.get(timeout=0)
    for n in range(5):  # a burst while a worker has "a"
        q.put(created("a", size=10 + n))
    assert q.depth() == 1
    assert q.in_flight() == 1
    assert q.get(timeout=SHORT) is None  # not to a second worker
    q.done(first.key)
    second = q.get(timeout=0)
    assert second.size == 14  # the newest of the burst
    q.done(second.key)
    assert q.get(timeout=0) is None


def test_other_keys_pass_a_held_key():
    q = KeyedQueue(maxsize=10)
    q.put(created("a"))
    held = q.get(timeout=0)
    q.put(created("a"))
    q.put(created("b"))
    assert q.get(timeout=0).key == "b"
    q.done("b")
    q.done(held.key)
    assert q.get(timeout=0).key == "a"


# -- order and bounds -------------------------------------------------------------------


def test_keys_come_out_in_the_order_they_first_arrived():
    q = KeyedQueue(maxsize=10)
    for key in ["c", "a", "b", "a", "c"]:
        q.put(created(key))
    assert [q.get(timeout=0).key for _ in range(3)] == ["c", "a", "b"]


def test_a_key_released_by_a_worker_goes_to_the_back():
    q = KeyedQueue(maxsize=10)
    q.put(created("a"))
    q.get(timeout=0)
    q.put(created("a"))  # waits behind the worker
    q.put(created("b"))
    q.done("a")
    assert [q.get(timeout=0).key for _ in range(2)] == ["b", "a"]


def test_put_is_refused_when_maxsize_distinct_keys_wait():
    q = KeyedQueue(maxsize=2)
    assert q.put(created("a"))
    assert q.put(created("b"))
    assert not q.put(created("c"), timeout=SHORT)
    assert q.put(created("a"), timeout=SHORT)  # coalescing into a waiting key needs no room
    assert q.depth() == 2


def test_a_pending_item_for_a_held_key_counts_toward_the_bound():
    q = KeyedQueue(maxsize=1)
    q.put(created("a"))
    q.get(timeout=0)  # held, nothing pending: room for one
    assert q.put(created("a"))  # pending behind the worker
    assert not q.put(created("b"), timeout=SHORT)


def test_a_blocked_put_goes_in_when_a_worker_takes_an_item():
    q = KeyedQueue(maxsize=1)
    q.put(created("a"))
    result: list[bool] = []
    producer = threading.Thread(target=lambda: result.append(q.put(created("b"), timeout=10)))
    producer.start()
    assert q.get(timeout=10).key == "a"
    producer.join(10)
    assert result == [True]
    assert q.get(timeout=10).key == "b"


def test_get_times_out_with_none_on_an_empty_queue():
    assert KeyedQueue(maxsize=1).get(timeout=SHORT) is None


# -- reconcile claims -------------------------------------------------------------------


def test_claim_waits_for_the_worker_holding_the_key():
    q = KeyedQueue(maxsize=10)
    q.put(created("a"))
    q.get(timeout=0)  # a worker has "a"
    claimed = threading.Event()
    release = threading.Event()

    def reconcile() -> None:
        with q.claim(["a", "b"]):
            claimed.set()
            release.wait(10)

    thread = threading.Thread(target=reconcile)
    thread.start()
    assert not claimed.wait(SHORT)
    q.done("a")
    assert claimed.wait(10)
    release.set()
    thread.join(10)


def test_a_claimed_key_is_not_handed_to_a_worker_until_released():
    q = KeyedQueue(maxsize=10)
    with q.claim(["a"]):
        q.put(created("a"))
        q.put(created("b"))
        assert q.get(timeout=0).key == "b"
        assert q.get(timeout=SHORT) is None
        assert q.in_flight() == 1  # the worker on "b"; a claim is not a worker
    assert q.get(timeout=0).key == "a"


def test_claim_releases_its_keys_when_the_block_raises():
    q = KeyedQueue(maxsize=10)
    with pytest.raises(RuntimeError), q.claim(["a"]):
        q.put(created("a"))
        raise RuntimeError("copy crashed")
    assert q.get(timeout=0).key == "a"


# -- close ------------------------------------------------------------------------------


def test_close_returns_the_pending_count_and_refuses_puts():
    q = KeyedQueue(maxsize=10)
    q.put(created("a"))
    q.put(created("b"))
    q.put(created("b"))
    assert q.close() == 2
    assert not q.put(created("c"))


def test_close_wakes_a_blocked_get_with_closed():
    q = KeyedQueue(maxsize=10)
    outcome: list[str] = []

    def worker() -> None:
        try:
            q.get(timeout=10)
            outcome.append("item")
        except Closed:
            outcome.append("closed")

    thread = threading.Thread(target=worker)
    thread.start()
    q.close()
    thread.join(10)
    assert outcome == ["closed"]


def test_close_wakes_a_blocked_put_with_false():
    q = KeyedQueue(maxsize=1)
    q.put(created("a"))
    result: list[bool] = []
    producer = threading.Thread(target=lambda: result.append(q.put(created("b"), timeout=10)))
    producer.start()
    q.close()
    producer.join(10)
    assert result == [False]


def test_done_after_close_is_harmless():
    q = KeyedQueue(maxsize=10)
    q.put(created("a"))
    q.get(timeout=0)
    q.close()
    q.done("a")
    assert q.in_flight() == 0


# -- concurrency ------------------------------------------------------------------------


def test_no_key_is_ever_held_by_two_workers_at_once():
    """Producers hammer a few keys while workers record every key they hold: any
    overlap fails, and so does work left behind once the producers are done, or a
    key whose last item worked isn't its newest write."""
    q = KeyedQueue(maxsize=3)
    keys = [f"k{n}" for n in range(5)]
    holders: Counter[str] = Counter()
    guard = threading.Lock()
    violations: list[str] = []
    processed: Counter[str] = Counter()
    refused: list[str] = []
    errors: list[BaseException] = []
    producers_done = threading.Event()
    # Each put carries a stamp (as its size); a lock per key orders the puts to one key,
    # so that its newest write is well defined while puts to other keys still race.
    key_locks = {key: threading.Lock() for key in keys}
    newest: dict[str, int] = {}
    last_worked: dict[str, int | None] = {}

    def producer(seed: int) -> None:
        rng = random.Random(seed)
        for n in range(400):
            key = rng.choice(keys)
            with key_locks[key]:
                if not q.put(created(key, t=float(n), size=seed * 400 + n), timeout=10):
                    refused.append(key)
                newest[key] = seed * 400 + n

    def worker() -> None:
        try:
            while True:
                item = q.get(timeout=0.01)
                if item is None:
                    if producers_done.is_set() and q.depth() == 0:
                        return
                    continue
                with guard:
                    holders[item.key] += 1
                    if holders[item.key] > 1:
                        violations.append(item.key)
                    processed[item.key] += 1
                    last_worked[item.key] = item.size
                threading.Event().wait(0.0005)  # hold the key a moment: overlaps get a chance
                with guard:
                    holders[item.key] -= 1
                q.done(item.key)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    producers = [threading.Thread(target=producer, args=(n,)) for n in range(3)]
    workers = [threading.Thread(target=worker) for _ in range(4)]
    for thread in producers + workers:
        thread.start()
    for thread in producers:
        thread.join(30)
    producers_done.set()
    for thread in workers:
        thread.join(30)
    assert not any(t.is_alive() for t in producers + workers)
    assert errors == []
    assert refused == []
    assert violations == []
    assert q.depth() == 0 and q.in_flight() == 0
    assert set(processed) == set(keys)
    assert last_worked == newest  # coalescing folds writes into the newest, and never loses it


# Regressions: a claim on a waiting key, and close() with work still waiting.

def test_claim_of_a_key_already_waiting_keeps_workers_off_it():
    q = KeyedQueue(maxsize=10)
    q.put(created("a"))            # "a" waits in _ready
    with q.claim(["a"]):           # the reconcile claims it (e.g. a delete batch)
        assert q.get(timeout=0.05) is None   # FAILS: the worker gets "a" while claimed
    assert q.get(timeout=0).key == "a"


def test_releasing_a_claim_on_a_waiting_key_does_not_queue_it_twice():
    q = KeyedQueue(maxsize=10)
    q.put(created("a"))
    with q.claim(["a"]):
        pass                        # _release appends "a" to _ready a second time
    assert q.get(timeout=0).key == "a"
    q.done("a")
    assert q.get(timeout=0.05) is None   # FAILS: KeyError 'a' from _items.pop


def test_close_stops_handing_out_pending_work():
    q = KeyedQueue(maxsize=10)
    q.put(created("a"))
    assert q.close() == 1           # "1 queued events left for the next start's reconcile"
    with pytest.raises(Closed):
        q.get(timeout=0)            # FAILS: returns the item; workers drain the whole queue during shutdown


def test_a_reconcile_claim_on_a_waiting_key_kills_an_event_worker():
    """The consequence in the service: Workers._loop calls queue.get() outside its try,
    so the KeyError above ends the worker thread for good (the sidecar keeps running
    with one worker fewer; with all gone, the queue fills and events are dropped)."""
    from replicator.workers import Workers

    q = KeyedQueue(maxsize=10)
    processed = []

    class Recording(Workers):
        def process(self, item):
            processed.append(item.key)

    workers = Recording(None, q, threads=1, delete=True)  # type: ignore[arg-type] - process never converges
    q.put(created("a"))                 # an event waits (workers busy elsewhere)
    with q.claim(["a"]):                # the reconcile copies "a" meanwhile
        pass
    workers.start()
    deadline = threading.Event()
    for _ in range(100):
        if processed:
            break
        deadline.wait(0.01)
    deadline.wait(0.1)                  # the worker's next get() pops "a" a second time
    q.put(created("b"))
    for _ in range(100):
        if "b" in processed:
            break
        deadline.wait(0.01)
    alive = [t.is_alive() for t in workers._threads]  # noqa: SLF001 - whether a worker thread died
    q.close()
    assert processed == ["a", "b"]      # FAILS: ["a"]; the worker died of KeyError('a')
    assert alive == [True]


def test_no_key_is_held_by_a_worker_and_a_reconcile_claim_at_once():
    """Producers, workers and two claiming 'reconciles' on a few keys: every holder
    records the keys it holds; any overlap, or a crashed thread, fails."""
    q = KeyedQueue(maxsize=3)
    keys = [f"k{n}" for n in range(5)]
    holders, guard, violations, errors = Counter(), threading.Lock(), [], []
    done = threading.Event()

    def hold(key, delta):
        with guard:
            holders[key] += delta
            if holders[key] > 1:
                violations.append(key)

    def producer(seed):
        rng = random.Random(seed)
        for n in range(300):
            q.put(WorkItem(rng.choice(keys), True, False, float(n)), timeout=10)

    def worker():
        try:
            while not done.is_set() or q.depth():
                item = q.get(timeout=0.01)
                if item is None:
                    continue
                hold(item.key, 1)
                threading.Event().wait(0.0005)
                hold(item.key, -1)
                q.done(item.key)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    def reconcile(seed):
        rng = random.Random(seed)
        try:
            while not done.is_set():
                claimed = rng.sample(keys, 2)
                with q.claim(claimed):
                    for k in claimed:
                        hold(k, 1)
                    threading.Event().wait(0.0005)
                    for k in claimed:
                        hold(k, -1)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    producers = [threading.Thread(target=producer, args=(n,)) for n in range(3)]
    others = [threading.Thread(target=worker) for _ in range(4)] + \
             [threading.Thread(target=reconcile, args=(n,)) for n in range(2)]
    for t in producers + others:
        t.start()
    for t in producers:
        t.join(20)
    done.set()
    for t in others:
        t.join(20)
    assert errors == [] and violations == []   # FAILS today: KeyError in get(), and overlaps
    assert q.depth() == 0
