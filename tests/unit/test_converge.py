"""converge.py over the in-memory fake: one operation per key, whatever the trigger.
Each case is a state of both sides and a hint, and the outcome and requests it must
lead to: the hint picks the cheapest requests, the source as it is now decides."""

from __future__ import annotations

import threading

import pytest

from replicator import config
from replicator.config import MiB
from replicator.converge import Converger, Hint, Outcome
from replicator.copier import Copier
from replicator.errors import PermanentError, SourceChanged
from replicator.filters import KeyFilter, parse_rules
from replicator.model import ObjectInfo
from replicator.retry import RetryPolicy
from replicator.stores.memory import MemoryStore

SETTINGS = config.replace(config.load({"S3_SYNC_BUCKET": "mirror"}), multipart_threshold=5 * MiB,
                          multipart_chunk_size=5 * MiB, retry_delay=0.0)
LARGE = b"L" * (6 * MiB)


@pytest.fixture
def sides():
    source, dest = MemoryStore("source"), MemoryStore("destination")
    copier = Copier(source, dest, SETTINGS, RetryPolicy(2, 0.0, stop=threading.Event()))
    yield source, dest, Converger(source, dest, copier, copier.policy, threshold=SETTINGS.multipart_threshold)
    copier.close()


def mirrored(source: MemoryStore, dest: MemoryStore, converger: Converger, key: str, data: bytes, **fields) -> None:
    source.add(key, data, **fields)
    converger.copier.copy(key)
    dest.calls.clear()
    source.calls.clear()


def test_a_small_upload_is_copied_without_a_head(sides):
    source, dest, converger = sides
    source.add("k", b"new")
    result = converger.converge("k", Hint(content=True, size=3))
    assert (result.outcome, result.size) == (Outcome.COPIED, 3)
    assert source.ops("stat") == [] and dest.ops("stat") == []


def test_a_large_object_already_in_sync_is_not_copied_again(sides):
    source, dest, converger = sides
    mirrored(source, dest, converger, "big", LARGE)
    assert converger.converge("big", Hint(content=True, size=len(LARGE))).outcome is Outcome.IN_SYNC
    assert dest.ops("start multipart") == []


def test_a_tag_change_over_bytes_in_sync_refreshes_only_the_tags(sides):
    source, dest, converger = sides
    mirrored(source, dest, converger, "k", b"data")
    source.objects["k"].tags = {"t": "2"}
    result = converger.converge("k", Hint(content=False, tags=True))
    assert (result.outcome, result.detail) == (Outcome.REFRESHED, "tags")
    assert dest.objects["k"].tags == {"t": "2"} and dest.ops("put") == []


def test_a_tag_change_of_an_object_the_destination_lacks_copies_it_whole(sides):
    source, dest, converger = sides
    source.add("k", b"data", tags={"t": "1"})
    assert converger.converge("k", Hint(content=False, tags=True)).outcome is Outcome.COPIED
    assert dest.objects["k"].tags == {"t": "1"}


@pytest.mark.parametrize(("may_delete", "outcome", "kept"), [(True, Outcome.DELETED, False),
                                                              (False, Outcome.GONE, True)])
def test_a_key_the_source_lacks_is_deleted_only_where_deletions_are_mirrored(sides, may_delete, outcome, kept):
    source, dest, converger = sides
    mirrored(source, dest, converger, "k", b"data")
    del source.objects["k"]
    assert converger.converge("k", Hint(removed=True, may_delete=may_delete)).outcome is outcome
    assert ("k" in dest.objects) is kept


def test_a_delete_event_for_a_key_uploaded_again_copies_it(sides):
    source, dest, converger = sides
    source.add("k", b"back again")
    assert converger.converge("k", Hint(removed=True, may_delete=True)).outcome is Outcome.COPIED
    assert dest.objects["k"].data == b"back again"


@pytest.mark.parametrize(("recorded_matches", "outcome"), [(True, Outcome.IN_SYNC), (False, Outcome.COPIED)])
def test_listings_that_disagree_on_the_etag_are_settled_by_the_recorded_one(sides, recorded_matches, outcome):
    source, dest, converger = sides
    mirrored(source, dest, converger, "k", b"data")
    if not recorded_matches:
        source.add("k", b"DATA")  # same size, other bytes
    listed = (ObjectInfo("k", 4, source.objects["k"].etag), ObjectInfo("k", 4, "not-comparable"))
    assert converger.converge("k", Hint(listed=listed)).outcome is outcome
    assert dest.objects["k"].data == source.objects["k"].data


def test_a_key_the_reconcile_found_missing_but_gone_since_is_gone(sides):
    _, dest, converger = sides
    assert converger.converge("k", Hint(missing=True)).outcome is Outcome.GONE
    assert dest.objects == {}


def changed(key: str) -> SourceChanged:
    return SourceChanged("source", "get range", key, "object changed during the copy: PreconditionFailed",
                         code="PreconditionFailed")


def test_a_source_rewritten_during_every_attempt_is_changed_not_failed_and_leaves_nothing(sides):
    source, dest, converger = sides
    source.add("big", LARGE)
    source.fail("get range", "big", changed("big"))
    result = converger.converge("big", Hint(missing=True))
    assert result.outcome is Outcome.CHANGED and isinstance(result.error, SourceChanged)
    assert "changed during the copy" in result.detail
    # Each attempt started an upload and aborted it whole: nothing half-written is left.
    assert len(dest.ops("start multipart")) == converger.policy.attempts
    assert dest.incomplete_uploads() == {} and "big" not in dest.objects


def test_a_source_that_settles_before_the_last_attempt_is_copied(sides):
    source, dest, converger = sides
    source.add("big", LARGE)
    source.fail("get range", "big", changed("big"), times=1)
    assert converger.converge("big", Hint(missing=True)).outcome is Outcome.COPIED
    assert dest.contents()["big"] == LARGE


# --- the mirror's filter -------------------------------------------------------------------

FILTERED = config.replace(SETTINGS, key_filter=KeyFilter("p/", parse_rules(["- *.tmp"])))


@pytest.fixture
def filtered():
    source, dest = MemoryStore("source"), MemoryStore("destination")
    copier = Copier(source, dest, FILTERED, RetryPolicy(2, 0.0, stop=threading.Event()))
    yield source, dest, Converger(source, dest, copier, copier.policy, threshold=FILTERED.multipart_threshold,
                                  key_filter=FILTERED.key_filter)
    copier.close()


HINTS = {
    "upload": Hint(content=True, size=3),
    "large upload": Hint(content=True, size=len(LARGE)),
    "tags": Hint(content=False, tags=True),
    "delete": Hint(removed=True, may_delete=True),
    "reconcile: missing": Hint(missing=True),
    "reconcile: listed": Hint(listed=(ObjectInfo("k", 3, "a"), ObjectInfo("k", 3, "b"))),
}


@pytest.mark.parametrize("key", ["p/x.tmp", "q/x.jpg", "x.jpg"])
@pytest.mark.parametrize("hint", list(HINTS))
def test_a_key_outside_the_filter_is_never_read_copied_or_deleted(filtered, key, hint):
    source, dest, converger = filtered
    source.add(key, b"new")
    dest.add(key, b"other data")  # not the mirror's: someone else's
    assert converger.converge(key, HINTS[hint]).outcome is Outcome.EXCLUDED
    assert source.calls == [] and dest.calls == []
    assert dest.objects[key].data == b"other data"


def test_a_key_inside_the_filter_converges_as_ever(filtered):
    source, _, converger = filtered
    source.add("p/x.jpg", b"new")
    assert converger.converge("p/x.jpg", Hint(content=True, size=3)).outcome is Outcome.COPIED
    del source.objects["p/x.jpg"]
    assert converger.converge("p/x.jpg", Hint(removed=True, may_delete=True)).outcome is Outcome.DELETED


def test_the_copier_itself_refuses_to_copy_or_delete_outside_the_filter(filtered):
    """Defence in depth: were a caller to skip the filter, the copier, where every copy
    and delete is sent from, still sends none."""
    source, dest, converger = filtered
    source.add("q/x", b"new")
    dest.add("q/gone", b"someone else's")
    dest.add("p/gone", b"ours")
    with pytest.raises(PermanentError, match="outside the mirror's filter"):
        converger.copier.copy("q/x")
    sent, failed = converger.copier.delete_batch(["p/gone", "q/gone"], recheck=lambda keys: keys)
    assert sorted(sent) == ["p/gone", "q/gone"] and list(failed) == ["q/gone"]
    assert "outside the mirror's filter" in failed["q/gone"]
    assert sorted(dest.objects) == ["q/gone"]
