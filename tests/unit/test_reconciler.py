"""The reconcile over the in-memory fake: the safety rules, without a server.

Settings shrink the multipart threshold to bytes so a few-byte object takes the
multipart path; retries wait 0 s.
"""

from __future__ import annotations

import io
import threading

import pytest
from prometheus_client import REGISTRY

from replicator import config
from replicator.converge import Converger
from replicator.copier import Copier
from replicator.errors import PermanentError, StoreError, TransientError
from replicator.filters import KeyFilter, parse_rules
from replicator.model import SOURCE_ETAG_META, ObjectInfo, RunStats
from replicator.observability import metrics
from replicator.reconcile import Reconciler, delete_guard
from replicator.retry import RetryPolicy
from replicator.stores.memory import MemoryStore

BASE = config.load({"S3_SYNC_ACCESS_KEY": "a", "S3_SYNC_SECRET_KEY": "b", "S3_SYNC_BUCKET": "mirror"})


def settings(**changes) -> config.Settings:
    defaults = {"workers": 2, "max_retries": 3, "retry_delay": 0.0, "multipart_threshold": 64,
                "multipart_chunk_size": 16, "multipart_concurrency": 1}
    return config.replace(BASE, **{**defaults, **changes})


class Harness:
    def __init__(self, **changes):
        self.source = MemoryStore("source")
        self.dest = MemoryStore("destination")
        self.settings = settings(**changes)
        self.stop = threading.Event()
        self.policy = RetryPolicy(self.settings.max_retries, self.settings.retry_delay, stop=self.stop)
        self.copier = Copier(self.source, self.dest, self.settings, self.policy)
        self.out = io.StringIO()
        converger = Converger(self.source, self.dest, self.copier, self.policy,
                              threshold=self.settings.multipart_threshold, key_filter=self.settings.key_filter)
        self.reconciler = Reconciler(self.source, self.dest, self.copier, converger, self.settings, self.policy,
                                     out=self.out)

    def run(self, **kwargs) -> RunStats:
        return self.reconciler.run(**kwargs)

    def close(self) -> None:
        self.copier.close()


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def mirrored(h: Harness) -> bool:
    return h.dest.contents() == h.source.contents()


# --- delete_guard: pure --------------------------------------------------------------

@pytest.mark.parametrize(
    ("source_objects", "dest_objects", "deletes", "changes", "force", "refused"),
    [
        (5, 5, 0, {}, False, None),
        (0, 0, 0, {}, False, None),
        # An empty source refuses even a single deletion, below the floor.
        (0, 1, 1, {}, False, "S3_SYNC_ALLOW_EMPTY_SOURCE"),
        (0, 5, 5, {}, False, "S3_SYNC_ALLOW_EMPTY_SOURCE"),
        (0, 5, 5, {"allow_empty_source": True}, False, None),
        # Having said the source may be empty, a user mustn't then be refused by the share
        # guard: an empty source always means deleting 100%.
        (0, 500, 500, {"allow_empty_source": True}, False, None),
        (0, 500, 500, {}, True, None),
        # The share guard: more than 50% of the destination, above a floor of 10.
        (10, 20, 10, {}, False, None),  # exactly half: allowed
        (9, 20, 11, {}, False, "S3_SYNC_DELETE_MAX_PERCENT=50%"),
        (1, 11, 10, {}, False, None),  # at the floor
        (1, 12, 11, {}, False, "S3_SYNC_DELETE_MAX_PERCENT=50%"),
        (1, 12, 11, {}, True, None),  # --allow-mass-delete
        (100, 1000, 400, {"delete_max_percent": 30.0}, False, "S3_SYNC_DELETE_MAX_PERCENT=30%"),
        (100, 1000, 300, {"delete_max_percent": 30.0}, False, None),
        (1, 2, 1, {"delete_max_percent": 0.0, "delete_guard_floor": 0}, False, "S3_SYNC_DELETE_MAX_PERCENT=0%"),
        (0, 2, 2, {"delete_max_percent": 100.0, "delete_guard_floor": 0, "allow_empty_source": True}, False,
         None),
        (1, 1000, 999, {"delete_max_percent": 100.0}, False, None),
    ],
)
def test_delete_guard(source_objects, dest_objects, deletes, changes, force, refused):
    stats = RunStats(source_objects=source_objects, dest_objects=dest_objects)
    reason = delete_guard(stats, deletes, settings(**changes), force)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


def test_share_guard_reason_has_the_numbers_and_the_way_out():
    reason = delete_guard(RunStats(source_objects=9, dest_objects=20), 11, settings(), False)
    assert "11 deletions" in reason and "20 objects" in reason and "--allow-mass-delete" in reason


# --- runs ------------------------------------------------------------------------

def test_initial_sync_then_a_no_op_costs_only_listings(h):
    for i in range(5):
        h.source.add(f"k{i}", b"x" * i, content_type="text/plain", headers={"Cache-Control": "max-age=60"},
                     metadata={"owner": "me"}, tags={"t": str(i)} if i else None)
    first = h.run()
    assert (first.copied, first.failed, first.unchanged) == (5, 0, 0)
    assert mirrored(h)
    k3 = h.dest.objects["k3"]
    assert (k3.content_type, k3.headers, k3.tags) == ("text/plain", {"Cache-Control": "max-age=60"}, {"t": "3"})
    assert k3.metadata == {"owner": "me", SOURCE_ETAG_META: h.source.objects["k3"].etag}

    h.source.calls.clear()
    h.dest.calls.clear()
    second = h.run()
    assert (second.copied, second.updated, second.unchanged, second.failed) == (0, 0, 5, 0)
    assert {op for op, _ in h.source.calls + h.dest.calls} == {"check", "list"}


def test_same_size_rewrite_is_detected(h):
    h.source.add("a", b"hello")
    h.run()
    h.source.add("a", b"HELLO")
    stats = h.run()
    assert (stats.updated, stats.unchanged) == (1, 0)
    assert h.dest.objects["a"].data == b"HELLO"


def test_multipart_copy_then_verified_in_sync_by_recorded_etag(h):
    h.source.add("big", bytes(range(200)))  # above the 64-byte threshold: 13 parts of 16
    first = h.run()
    assert first.copied == 1 and mirrored(h)
    assert h.dest.objects["big"].etag.endswith("-13")
    assert len(h.dest.ops("put part")) == 13
    second = h.run()
    # ETags differ (single MD5 vs multipart); the recorded source ETag settles it.
    assert (second.unchanged, second.updated) == (1, 0)
    assert "get" not in {op for op, _ in h.source.calls[-3:]}


def test_deletes_are_mirrored(h):
    h.source.add("keep", b"1")
    h.dest.add("gone", b"2")
    stats = h.run()
    assert (stats.copied, stats.deleted) == (1, 1)
    assert mirrored(h)


@pytest.mark.parametrize("delete", [True, False])
def test_keys_outside_the_filter_are_never_copied_or_deleted(delete):
    h = Harness(delete=delete, key_filter=KeyFilter("p/", parse_rules(["- *.tmp", "- /p/cache/**"])))
    for key in ("p/a", "p/b.tmp", "p/cache/c", "q/d", "e"):
        h.source.add(key, b"source")
    # Beside the mirror: the destination's own data, outside the filter, that no source has.
    others = dict.fromkeys(("p/old.tmp", "p/cache/x", "q/mine", "z", "p/b.tmp"), b"someone else's")
    for key, data in others.items():
        h.dest.add(key, data)
    h.dest.add("p/gone", b"mirrored once")
    stats = h.run()
    h.close()
    kept = {} if delete else {"p/gone": b"mirrored once"}
    assert {key: obj.data for key, obj in h.dest.objects.items()} == {"p/a": b"source", **others, **kept}
    assert (stats.copied, stats.deleted, stats.failed) == (1, int(delete), 0)
    # Counted as the mirror's objects only: the delete guard's share is of those.
    assert (stats.source_objects, stats.dest_objects) == (1, 1)


def test_deletes_kept_when_disabled():
    h = Harness(delete=False)
    h.source.add("keep", b"1")
    h.dest.add("extra", b"2")
    stats = h.run()
    h.close()
    assert stats.deleted == 0 and "extra" in h.dest.objects


def test_a_copy_failure_makes_the_run_dirty_so_nothing_is_deleted(h):
    h.source.add("a", b"1")
    h.source.add("b", b"2")
    h.dest.add("orphan", b"3")
    h.dest.fail("put", "b", PermanentError("destination", "put", "b", "InvalidArgument (HTTP 400)"))
    stats = h.run()
    assert (stats.copied, stats.failed, stats.deleted) == (1, 1, 0)
    assert "orphan" in h.dest.objects
    assert not h.dest.ops("delete batch")


def test_a_transient_copy_error_is_retried(h):
    h.source.add("a", b"1")
    h.dest.fail("put", "a", TransientError("destination", "put", "a", "SlowDown (HTTP 503)"), times=2)
    stats = h.run()
    assert (stats.copied, stats.failed) == (1, 0)
    assert h.dest.ops("put") == ["a", "a", "a"]


@pytest.mark.parametrize("side", ["source", "dest"])
def test_a_listing_failure_fails_the_run_and_deletes_nothing(h, side):
    for i in range(5):
        h.source.add(f"k{i}", b"s")
    for i in range(5, 10):
        h.dest.add(f"k{i}", b"d")
    store = getattr(h, side)
    real = store.list_from

    def failing(start_after):
        # Two items, then a failure that every resumption hits again: retries run out.
        for n, item in enumerate(real(start_after)):
            if n == 2 or start_after is not None:
                raise TransientError(store.side, "list", start_after, "InternalError (HTTP 500)")
            yield item

    store.list_from = failing
    stats = h.run(allow_mass_delete=True)
    assert stats.failed >= 1
    assert stats.deleted == 0
    assert all(f"k{i}" in h.dest.objects for i in range(5, 10))


@pytest.mark.parametrize("side", ["source", "dest"])
def test_an_out_of_order_listing_fails_the_run_and_deletes_nothing(h, side):
    for key in ("a", "b", "c"):
        h.source.add(key, b"s")
        h.dest.add(key, b"s")
    h.dest.add("z", b"orphan")
    store = getattr(h, side)
    real = store.list_from
    store.list_from = lambda start_after: iter(sorted(real(start_after), key=lambda o: o.key, reverse=True))
    stats = h.run(allow_mass_delete=True)
    assert stats.failed == 1 and stats.deleted == 0
    assert set(h.dest.objects) == {"a", "b", "c", "z"}


def test_empty_source_is_refused_then_allowed():
    h = Harness()
    for i in range(3):
        h.dest.add(f"k{i}", b"d")
    refused = h.run()
    assert refused.guard and "S3_SYNC_ALLOW_EMPTY_SOURCE" in refused.guard
    assert (refused.deleted, refused.failed) == (0, 0)
    assert len(h.dest.objects) == 3
    h.close()

    allowed = Harness(allow_empty_source=True)
    allowed.dest.objects = h.dest.objects
    stats = allowed.run()
    allowed.close()
    assert (stats.guard, stats.deleted) == (None, 3)
    assert allowed.dest.objects == {}


def test_mass_delete_is_refused_unless_forced(h):
    for i in range(20):
        h.dest.add(f"k{i:02d}", b"d")
    for i in range(5):
        h.source.add(f"k{i:02d}", b"d")
    refused = h.run()
    assert refused.guard and "15 deletions" in refused.guard
    assert refused.deleted == 0 and len(h.dest.objects) == 20
    forced = h.run(allow_mass_delete=True)
    assert forced.deleted == 15 and mirrored(h)


def test_a_key_that_appears_at_the_source_mid_run_is_not_deleted(h):
    h.source.add("a", b"1")
    h.source.add("late", b"new")
    h.dest.add("late", b"old")
    real = h.source.list_from
    # The source listing passed "late" before it was uploaded.
    h.source.list_from = lambda start_after: (o for o in real(start_after) if o.key != "late")
    stats = h.run()
    assert (stats.deleted, stats.skipped) == (0, 1)
    assert "late" in h.dest.objects


def test_an_object_gone_from_the_source_is_skipped_not_failed(h):
    h.source.add("a", b"1")
    h.source.add("vanishing", b"2")
    real = h.source.open

    def open_gone(key):
        if key == "vanishing":
            h.source.objects.pop("vanishing", None)
        return real(key)

    h.source.open = open_gone
    stats = h.run()
    assert (stats.copied, stats.skipped, stats.failed) == (1, 1, 0)


def test_failed_per_key_deletes_are_counted(h):
    h.source.add("a", b"1")
    h.dest.add("x", b"2")
    h.dest.add("y", b"3")
    h.dest.fail("delete", "y", PermanentError("destination", "delete", "y", "AccessDenied", code="AccessDenied"))
    stats = h.run(allow_mass_delete=True)
    assert (stats.deleted, stats.failed) == (1, 1)
    assert "y" in h.dest.objects and "x" not in h.dest.objects


def test_source_change_during_a_multipart_copy_never_leaves_a_torn_copy(h):
    old, new = b"o" * 100, b"n" * 100
    h.source.add("big", old)
    real = h.source.read_range
    overwritten = []

    def read_then_overwrite(key, offset, length, etag):
        data = real(key, offset, length, etag)
        if not overwritten:
            overwritten.append(True)
            h.source.add("big", new)  # lands between part 1 and part 2
        return data

    h.source.read_range = read_then_overwrite
    stats = h.run()
    assert (stats.copied, stats.failed) == (1, 0)
    assert h.dest.objects["big"].data == new
    assert h.dest.objects["big"].metadata[SOURCE_ETAG_META] == h.source.objects["big"].etag
    assert h.dest.uploads == {}
    assert len(h.dest.ops("abort multipart")) == 1


def test_dry_run_prints_the_plan_and_changes_nothing(h):
    h.source.add("new.txt", b"12345")
    h.source.add("same", b"s")
    h.source.add("changed", b"abc")
    h.dest.add("same", b"s")
    h.dest.add("changed", b"ab")
    h.dest.add("orphan.bin", b"x" * 42)
    before = h.dest.contents()
    stats = h.run(dry_run=True)
    assert h.dest.contents() == before
    assert not {"put", "start multipart", "delete batch"} & {op for op, _ in h.dest.calls}
    lines = sorted(h.out.getvalue().splitlines())
    assert lines == sorted([
        "copy    new.txt  (5 bytes)",
        "update  changed  (3 bytes)",
        "delete  orphan.bin  (42 bytes)",
    ])
    assert (stats.copied, stats.updated, stats.deleted, stats.unchanged) == (1, 1, 1, 1)
    assert stats.planned_bytes == 8


def test_dry_run_reports_a_refused_guard_without_printing_deletes():
    h = Harness()
    for i in range(3):
        h.dest.add(f"k{i}", b"d")
    stats = h.run(dry_run=True)
    h.close()
    assert stats.guard and stats.deleted == 0
    assert h.out.getvalue() == ""


def test_listing_order_is_utf8_bytes_in_the_fake():
    # The fake itself must list the way S3 does, or the tests above prove nothing.
    store = MemoryStore()
    for key in ("😀", "\uffff", "é", "z", "Z", "a b"):
        store.add(key, b"")
    assert [o.key for o in store.list_from(None)] == ["Z", "a b", "z", "é", "\uffff", "😀"]
    assert [o.key for o in store.list_from("é")] == ["\uffff", "😀"]
    assert isinstance(next(store.list_from(None)), ObjectInfo)


def test_a_store_error_mid_delete_batch_fails_the_run(h):
    h.source.add("a", b"1")
    h.dest.add("x", b"2")
    h.dest.fail("delete batch", None, StoreError("destination", "delete", None, "AccessDenied"))
    stats = h.run(allow_mass_delete=True)
    assert stats.failed == 1 and stats.deleted == 0 and "x" in h.dest.objects


def test_deletes_go_in_batches_of_at_most_1000(h):
    h.source.add("keep", b"1")
    for i in range(2501):
        h.dest.add(f"orphan-{i:05d}", b"x")
    stats = h.run(allow_mass_delete=True)
    assert (stats.deleted, stats.failed) == (2501, 0)
    assert len(h.dest.ops("delete batch")) == 3
    assert list(h.dest.objects) == ["keep"]


def test_a_stop_during_the_run_skips_the_deletions(h):
    for key in ("a", "b"):
        h.source.add(key, b"1")
    h.dest.add("orphan", b"x")
    real = h.dest.put

    def put_then_stop(key, *args):
        real(key, *args)
        h.stop.set()  # SIGTERM arrives while the copies run

    h.dest.put = put_then_stop
    stats = h.run()
    assert stats.deleted == 0 and "orphan" in h.dest.objects


def test_a_busy_endpoint_at_start_is_retried(h):
    h.source.add("a", b"1")
    h.dest.fail("check", None, TransientError("destination", "check bucket", "mirror", "error (HTTP 503)"), times=2)
    stats = h.run()
    assert (stats.copied, stats.failed) == (1, 0)
    assert len(h.dest.ops("check")) == 3


def test_a_stop_while_the_start_up_check_backs_off_ends_the_run_quietly():
    h = Harness(retry_delay=30.0)
    h.source.add("a", b"1")
    h.dest.fail("check", None, TransientError("destination", "check bucket", "mirror", "error (HTTP 503)"))
    h.stop.set()  # the backoff's wait returns at once
    stats = h.run()
    h.close()
    assert (stats.copied, stats.failed) == (0, 0)
    assert h.dest.objects == {}


# --- metrics -----------------------------------------------------------------------

def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def drifted(h: Harness) -> None:
    """One object to copy, one to update, one to delete."""
    h.source.add("new", b"1")
    h.source.add("changed", b"new")
    h.dest.add("changed", b"older")
    h.dest.add("extra", b"x")


@pytest.mark.parametrize(("listening", "repaired"), [
    (None, 0),  # by hand, or the service's initial reconcile: no events were expected
    (lambda: False, 0),  # the listener disconnected during the run
    (lambda: True, 3),
])
def test_repairs_count_only_runs_the_listener_was_connected_throughout(h, listening, repaired):
    drifted(h)
    before = sample("replicator_reconcile_repaired_objects_total")
    stats = h.run(listening=listening)
    assert (stats.copied, stats.updated, stats.deleted) == (1, 1, 1)
    assert sample("replicator_reconcile_repaired_objects_total") - before == repaired


def test_a_dry_run_counts_no_repair_and_no_result(h):
    drifted(h)
    results = [sample("replicator_reconciles_total", result=r) for r in metrics.RECONCILE_RESULTS]
    before = sample("replicator_reconcile_repaired_objects_total")
    h.run(dry_run=True, listening=lambda: True)
    assert sample("replicator_reconcile_repaired_objects_total") == before
    assert [sample("replicator_reconciles_total", result=r) for r in metrics.RECONCILE_RESULTS] == results


def _clean(h: Harness) -> None:
    h.source.add("a", b"1")


def _copy_fails(h: Harness) -> None:
    h.source.add("a", b"1")
    h.dest.fail("put", "a", PermanentError("destination", "put", "a", "InvalidArgument (HTTP 400)"))


def _empty_source(h: Harness) -> None:
    h.dest.add("a", b"1")


@pytest.mark.parametrize(("arrange", "result", "refusals"), [
    (_clean, "success", 0),
    (_copy_fails, "failed", 0),
    (_empty_source, "refused_by_guard", 1),
])
def test_each_run_counts_its_result_and_is_in_progress_while_it_runs(h, arrange, result, refusals):
    arrange(h)
    before = {r: sample("replicator_reconciles_total", result=r) for r in metrics.RECONCILE_RESULTS}
    refused = sample("replicator_delete_guard_refusals_total")
    during: list[float] = []
    h.run(listening=lambda: during.append(sample("replicator_reconcile_in_progress")) or False)
    after = {r: sample("replicator_reconciles_total", result=r) for r in metrics.RECONCILE_RESULTS}
    assert {r: after[r] - before[r] for r in after} == {r: float(r == result) for r in after}
    assert sample("replicator_delete_guard_refusals_total") - refused == refusals
    assert during == [1.0] and sample("replicator_reconcile_in_progress") == 0


def test_a_run_that_cannot_begin_counts_as_failed(h):
    h.dest.fail("check", None, PermanentError("destination", "check bucket", "mirror", "AccessDenied (HTTP 403)"))
    before = sample("replicator_reconciles_total", result="failed")
    with pytest.raises(PermanentError):
        h.run()
    assert sample("replicator_reconciles_total", result="failed") - before == 1
    assert sample("replicator_reconcile_in_progress") == 0
