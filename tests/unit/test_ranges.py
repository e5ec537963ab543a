"""A reconcile pass cut into key ranges (ranges.py), the budget its ranges share, and a
reconcile limited to one range. The budget's KV is an in-memory stand-in with the same
compare-and-set rule; tests/integration/test_reconcile_ranges.py runs it on nats-server."""

from __future__ import annotations

import json
import random
import threading

import pytest

from replicator.errors import PermanentError
from replicator.lease import Conflict
from replicator.model import RunStats
from replicator.ranges import Budget, KeyRange, Sample, cut, split_points
from replicator.shared_reconcile import sum_stats
from tests.unit.test_reconciler import Harness


class Revisions:
    """A KV bucket's compare-and-set rule: every write moves the revision."""

    def __init__(self):
        self.values: dict[str, tuple[bytes, int]] = {}
        self.revision = 0
        self.lock = threading.Lock()
        self.before_update = lambda: None  # to let another writer in between a read and a write

    def entry(self, key):
        return self.values.get(key)

    def put(self, key, value):
        with self.lock:
            self.revision += 1
            self.values[key] = (value, self.revision)
            return self.revision

    def update(self, key, value, last):
        self.before_update()
        with self.lock:
            if key not in self.values or self.values[key][1] != last:
                raise Conflict(key)
            self.revision += 1
            self.values[key] = (value, self.revision)
            return self.revision


# --- ranges and cuts --------------------------------------------------------------------

def test_the_ranges_between_points_hold_every_key_exactly_once():
    keys = ["", "a", "a/", "a/b", "b", "b\x00", "é", "z" * 5, "\U0001f600"]
    ranges = cut(["a/", "b", "é"])
    assert ranges[0] == KeyRange(None, "a/") and ranges[-1] == KeyRange("é", None)
    for key in keys:
        assert sum(r.holds(key) for r in ranges) == 1, key
    assert cut([]) == [KeyRange(None, None)] and cut([])[0].whole


def test_a_sample_stays_bounded_and_counts_everything():
    sample = Sample(size=10, rng=random.Random(1))
    for n in range(10_000):
        sample.add(f"k{n:05}")
    assert sample.count == 10_000 and len(sample.keys) == 10
    assert sample.to_json()["keys"] == sorted(sample.keys)


def test_split_points_cut_where_the_keys_are_not_where_the_alphabet_is():
    # 9,000 keys under a/, 1,000 under b/: four ranges of about 2,500, three within a/.
    sample = Sample(size=400, rng=random.Random(7))
    for n in range(9_000):
        sample.add(f"a/{n:05}")
    for n in range(1_000):
        sample.add(f"b/{n:05}")
    points = split_points([sample.to_json()], 4)
    assert len(points) == 3 and points == sorted(points)
    assert [p[:2] for p in points] == ["a/", "a/", "a/"]
    counts = [sum(1 for n in range(9_000) if r.holds(f"a/{n:05}")) + sum(1 for n in range(1_000)
              if r.holds(f"b/{n:05}")) for r in cut(points)]
    assert sum(counts) == 10_000 and max(counts) < 3_500 and min(counts) > 1_500


def test_split_points_weigh_each_range_by_its_count_not_its_sample():
    small = {"count": 10, "keys": [f"a{n}" for n in range(10)]}
    large = {"count": 100_000, "keys": [f"b{n:03}" for n in range(64)]}
    points = split_points([small, large], 2)
    assert len(points) == 1 and points[0].startswith("b")


def test_few_distinct_keys_give_fewer_ranges_and_none_empty_at_the_end():
    assert split_points([{"count": 3, "keys": ["a", "b", "c"]}], 10) == ["a", "b"]
    assert split_points([{"count": 1, "keys": ["a"]}], 4) == []
    assert split_points([], 4) == [] and split_points([{"count": 5, "keys": ["a", "b"]}], 1) == []


# --- the budget -------------------------------------------------------------------------

def test_ranges_draw_on_one_budget_and_none_passes_it():
    kv = Revisions()
    budget = Budget.open(kv, "d.budget", "pass-1")
    assert budget.draw(1) is not None  # nothing is allowed before the coordinator's verdict
    assert budget.allow(10)
    assert Budget(kv, "d.budget", "pass-1").draw(6) is None
    refused = Budget(kv, "d.budget", "pass-1").draw(5)
    assert refused is not None and "the next pass makes them" in refused
    assert Budget(kv, "d.budget", "pass-1").draw(4) is None
    assert json.loads(kv.entry("d.budget")[0])["drawn"] == 10


def test_a_draw_that_loses_the_race_reads_again_and_counts_once():
    kv = Revisions()
    budget = Budget.open(kv, "d.budget", "p")
    budget.allow(5)
    other = Budget(kv, "d.budget", "p")
    raced = []

    def another_range_draws_first():
        if not raced:
            raced.append(True)
            assert other.draw(3) is None  # between our read and our write

    kv.before_update = another_range_draws_first
    assert budget.draw(2) is None
    assert json.loads(kv.entry("d.budget")[0])["drawn"] == 5
    kv.before_update = lambda: None
    assert budget.draw(1) is not None


def test_a_newer_pass_fences_the_older_ones_ranges_and_coordinator_out():
    kv = Revisions()
    old = Budget.open(kv, "d.budget", "old")
    old.allow(100)
    new = Budget.open(kv, "d.budget", "new")
    assert not old.live() and new.live()
    assert "newer reconcile pass" in (old.draw(1) or "")
    assert not old.allow(100)  # a stale coordinator can't reopen what the new one holds shut
    assert json.loads(kv.entry("d.budget")[0]) == {"pass": "new", "allowed": 0, "drawn": 0}


def test_the_pass_sums_its_ranges_and_counts_listings_once():
    first = [RunStats(source_objects=3, dest_objects=4, copied=1, planned_deletes=1),
             RunStats(source_objects=5, dest_objects=5, unchanged=5, failed=1, guard="g")]
    total = sum_stats(first)
    assert (total.source_objects, total.dest_objects, total.copied, total.failed, total.guard) == (8, 9, 1, 1, "g")
    again = sum_stats([RunStats(source_objects=3, dest_objects=4, deleted=1)], total, listed=False)
    assert (again.source_objects, again.dest_objects, again.deleted) == (8, 9, 1)


# --- a reconcile of one range -----------------------------------------------------------

def test_a_range_lists_copies_and_samples_only_its_own_keys():
    h = Harness()
    try:
        for key in ("a", "b", "c", "d"):
            h.source.add(key, key.encode())
        h.dest.add("bb", b"only at the destination")
        h.dest.add("z", b"outside the range")
        sample = Sample()
        stats = h.run(key_range=KeyRange("a", "c"), sample=sample, hold_deletes=True)
        assert sorted(h.dest.contents()) == ["b", "bb", "c", "z"]
        assert (stats.source_objects, stats.dest_objects, stats.copied, stats.planned_deletes) == (2, 1, 2, 1)
        assert stats.deleted == 0  # held: the pass decides
        assert sample.to_json() == {"count": 2, "keys": ["b", "c"]}
    finally:
        h.close()


def test_a_range_deletes_what_its_budget_allows_and_no_more():
    h = Harness()
    try:
        h.source.add("keep", b"k")
        for key in ("x1", "x2", "x3"):
            h.dest.add(key, b"gone from the source")
        kv = Revisions()
        budget = Budget.open(kv, "b", "p")
        budget.allow(2)
        stats = h.run(key_range=KeyRange("k", None), budget=budget, fence=budget.live)
        assert stats.deleted == 0 and "exceed" in (stats.guard or "")
        assert sorted(h.dest.contents()) == ["keep", "x1", "x2", "x3"]
        budget.allow(3)
        stats = h.run(key_range=KeyRange("k", None), budget=budget, fence=budget.live)
        assert stats.deleted == 3 and sorted(h.dest.contents()) == ["keep"]
    finally:
        h.close()


@pytest.mark.parametrize("side", ["source", "dest"])
def test_a_range_whose_listing_fails_deletes_nothing(side):
    h = Harness()
    try:
        h.source.add("a", b"a")
        h.dest.add("b", b"only here")
        store = getattr(h, side)
        store.fail("list", None, PermanentError(store.side, "list", None, "AccessDenied (HTTP 403)"))
        kv = Revisions()
        budget = Budget.open(kv, "b", "p")
        budget.allow(10)
        stats = h.run(key_range=KeyRange(None, "z"), budget=budget)
        assert stats.failed and stats.deleted == 0 and "b" in h.dest.contents()
    finally:
        h.close()


class Task:
    """A range task as jetstream.RangeTask has it, acknowledged or not."""

    ack_wait = 30.0

    def __init__(self, data: bytes):
        self.data, self.acknowledged = data, False

    def done(self):
        self.acknowledged = True

    def working(self):
        pass


def worker(kv: Revisions):
    from replicator.shared_reconcile import SharedReconcile

    # No reconciler: a task these tests give must be dropped before any reconcile runs.
    return SharedReconcile(None, None, kv, None, "d", threading.Event(), lambda: None)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [b"not json", b"{}", b'{"pass": "p", "index": "x", "round": 1, "range": {}}', b"[]"])
def test_a_task_that_is_not_one_is_dropped(data):
    task = Task(data)
    worker(Revisions()).work_on(task)
    assert task.acknowledged


def test_a_task_of_a_pass_a_newer_one_replaced_is_dropped_unrun():
    kv = Revisions()
    Budget.open(kv, "d.budget", "new")
    task = Task(json.dumps({"pass": "old", "index": 0, "round": 1, "range": {"after": None, "until": "m"}}).encode())
    worker(kv).work_on(task)
    assert task.acknowledged and kv.entry("d.range.0") is None
