"""The delete guards against real servers: each refusal is exit code 3 and deletes
nothing; each explicit permission lets the deletions through; a run whose listing
failed deletes nothing and exits 1."""

from __future__ import annotations

import io

import pytest

from replicator import app as app_module
from replicator.errors import StoreError, TransientError
from tests.conftest import run_cli


def put_many(pair, keys) -> None:
    for key in keys:
        pair.source.put_object(pair.source_bucket, key, io.BytesIO(key.encode()), len(key))


def synced(pair, make_app, count: int) -> list[str]:
    keys = [f"obj-{i:03d}" for i in range(count)]
    put_many(pair, keys)
    stats = make_app().reconciler.run()
    assert stats.copied == count
    return keys


def remove(pair, keys) -> None:
    for key in keys:
        pair.source.remove_object(pair.source_bucket, key)


def test_empty_source_is_refused_with_exit_3(pair, make_app):
    keys = synced(pair, make_app, 3)
    remove(pair, keys)
    result = run_cli(pair.env, "reconcile")
    assert result.code == 3
    assert "the source bucket listed no objects" in result.stderr
    assert "would delete 3 of 3 destination objects; source has 0" in result.stderr
    assert sorted(pair.dest_keys()) == keys


def test_empty_source_allowed_explicitly(pair, make_app):
    keys = synced(pair, make_app, 12)  # above the share guard's floor: 100% of 12
    remove(pair, keys)
    result = run_cli({**pair.env, "S3_SYNC_ALLOW_EMPTY_SOURCE": "true"}, "reconcile")
    assert result.code == 0, result.stderr
    assert pair.dest_keys() == []


def test_mass_delete_is_refused_with_exit_3_then_allowed_by_the_flag(pair, make_app):
    keys = synced(pair, make_app, 20)
    remove(pair, keys[:11])  # 11 > 10 (the floor) and 55% > 50%
    refused = run_cli(pair.env, "reconcile")
    assert refused.code == 3
    assert "11 deletions exceed S3_SYNC_DELETE_MAX_PERCENT=50%" in refused.stderr
    assert "would delete 11 of 20 destination objects; source has 9" in refused.stderr
    assert len(pair.dest_keys()) == 20

    forced = run_cli(pair.env, "reconcile", "--allow-mass-delete")
    assert forced.code == 0, forced.stderr
    assert sorted(pair.dest_keys()) == keys[11:]


def test_share_threshold_is_configurable(pair, make_app):
    keys = synced(pair, make_app, 20)
    remove(pair, keys[:5])  # 25%
    stats = make_app(S3_SYNC_DELETE_MAX_PERCENT="20", S3_SYNC_DELETE_GUARD_FLOOR="2").reconciler.run()
    assert stats.guard and stats.deleted == 0
    stats = make_app(S3_SYNC_DELETE_MAX_PERCENT="30", S3_SYNC_DELETE_GUARD_FLOOR="2").reconciler.run()
    assert (stats.guard, stats.deleted) == (None, 5)


# --- an injected listing failure -------------------------------------------------------

def break_listing(app, side: str, after: int, error_type: type[StoreError] = TransientError, *,
                  once: bool = False) -> list[str | None]:
    """Make ``side``'s listing fail after ``after`` items, and on every resumption: the
    retries run out. With ``once``, only the first attempt fails (a blip) and the
    resumption lists on. Returns the start keys of each listing attempt."""
    store = app.source if side == "source" else app.dest
    real = store.list_from
    starts: list[str | None] = []

    def failing(start_after):
        starts.append(start_after)
        for n, item in enumerate(real(start_after)):
            broken = len(starts) == 1 and n == after if once else n >= after or start_after is not None
            if broken:
                raise error_type(store.side, "list", start_after, "connection reset by peer")
            yield item

    store.list_from = failing
    return starts


@pytest.mark.parametrize("side", ["source", "dest"])
def test_a_failed_listing_deletes_nothing(pair, make_app, side):
    keys = synced(pair, make_app, 8)
    remove(pair, keys[:4])  # four deletions the run would make if it trusted its listings
    app = make_app(S3_SYNC_MAX_RETRIES="3")
    starts = break_listing(app, side, after=2)
    stats = app.reconciler.run(allow_mass_delete=True)
    assert stats.failed >= 1 and stats.deleted == 0
    assert len(starts) == 3  # resumed twice after the last key, then gave up
    # Each resumption started after the last key the listing had delivered.
    assert starts == [None, *[("obj-001" if side == "dest" else "obj-005")] * 2]
    assert sorted(pair.dest_keys()) == keys


@pytest.mark.parametrize("side", ["source", "dest"])
def test_a_failed_listing_exits_1_via_the_cli(pair, make_app, monkeypatch, in_process_cli, side):
    keys = synced(pair, make_app, 8)
    remove(pair, keys[:4])
    real_build = app_module.build

    def build(settings, **kwargs):
        built = real_build(settings, **kwargs)
        break_listing(built, side, after=3)
        return built

    monkeypatch.setattr(app_module, "build", build)
    result = in_process_cli({**pair.env, "S3_SYNC_MAX_RETRIES": "2"}, "reconcile", "--allow-mass-delete")
    assert result.code == 1
    assert "connection reset by peer" in result.stderr
    assert "deletions skipped: this run had errors" in result.stderr
    assert sorted(pair.dest_keys()) == keys


@pytest.mark.parametrize("side", ["source", "dest"])
def test_a_listing_blip_resumes_after_the_last_key(pair, make_app, side):
    # Resumption sends the last key back to the server as start-after: odd characters
    # must survive that round trip, or keys would be listed twice or skipped.
    keys = sorted(["a b", "a+b", "a%2Fb", "q?x", "é/x", "日本/語", "😀"], key=str.encode)
    put_many(pair, keys)
    if side == "dest":
        make_app().reconciler.run()
    app = make_app()
    starts = break_listing(app, side, after=3, once=True)
    stats = app.reconciler.run()
    assert starts == [None, keys[2]]
    assert stats.failed == 0
    assert (stats.copied, stats.unchanged) == ((len(keys), 0) if side == "source" else (0, len(keys)))
    assert (stats.source_objects, stats.dest_objects) == ((len(keys), 0) if side == "source" else (len(keys),) * 2)
    assert sorted(pair.dest_keys()) == sorted(keys)
