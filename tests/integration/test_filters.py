"""Filters against real servers (issue 13 §3): one table of keys, driven through a
reconcile with deletion on and through a running sidecar's events. What is asserted is
what a user would see by listing the destination bucket: the mirror's keys follow the
source, and every other object there, the destination's own data, is never written
and never deleted."""

from __future__ import annotations

import io

import pytest

from replicator.verify import Verifier
from tests.sidecar import wait_for

PREFIX = "data/"
RULES = """
# temporary files anywhere, and the cache, are not the mirror's
- *.tmp
- /data/cache/**
+ /data/photos/**
+ /data/docs/*.pdf
- /data/docs/**
"""

# (key, in the mirror?): the same table for the reconcile and for the events.
CASES = [
    ("data/photos/a.jpg", True),
    ("data/photos/2024/06/b.jpg", True),
    ("data/photos/x.tmp", False),  # the first rule wins over "+ /data/photos/**"
    ("data/docs/report.pdf", True),
    ("data/docs/notes.txt", False),
    ("data/docs/sub/deep.pdf", False),  # '*' stops at '/'
    ("data/cache/c.bin", False),
    ("data/misc/readme", True),  # no rule matches: included
    ("data/ünï cödé/ключ+1.bin", True),
    ("other/file.txt", False),  # outside the prefix
    ("top.txt", False),
    ("datasets/x.csv", False),  # "data" is not "data/"
]
INCLUDED = [key for key, included in CASES if included]
EXCLUDED = [key for key, included in CASES if not included]
# Excluded by a rule: their events come, and are refused. The events of keys outside the
# prefix don't even come (the listener asks MinIO for the prefix's only).
REFUSED = [key for key in EXCLUDED if key.startswith(PREFIX)]


def settings(**extra) -> dict[str, str]:
    return {"S3_SYNC_PREFIX": PREFIX, "S3_SYNC_FILTER": RULES, **extra}


def put(pair, key: str, data: bytes) -> None:
    pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data))


def put_dest(pair, key: str, data: bytes) -> None:
    pair.dest.put_object(Bucket=pair.dest_bucket, Key=key, Body=data)


def own(key: str) -> bytes:
    """The destination's own object at ``key``: not the mirror's, never to be touched."""
    return b"the destination's own: " + key.encode()


@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_reconcile_with_deletion_on_copies_and_deletes_only_the_mirrors_keys(pair, make_app, concurrency):
    for key, _ in CASES:
        put(pair, key, b"source: " + key.encode())
    # Half the excluded keys exist at the destination with other bytes (they must not be
    # overwritten), the others don't (they must not be copied); and destination-only
    # objects: excluded ones must stay, included ones are the mirror's to delete.
    dest_only = ["other/dest-only", "data/cache/dest-only", "data/y.tmp", "data/docs/old.txt", "zzz"]
    beside = {key: own(key) for key in [*EXCLUDED[::2], *dest_only]}
    for key, data in beside.items():
        put_dest(pair, key, data)
    for key in ("data/photos/stale.jpg", "data/misc/gone"):
        put_dest(pair, key, b"mirrored once, deleted at the source since")
    put_dest(pair, "data/photos/a.jpg", b"an older copy")

    app = make_app(**settings(S3_SYNC_DELETE="true", S3_SYNC_LIST_CONCURRENCY=concurrency))
    stats = app.reconciler.run()

    expected = {**beside, **{key: b"source: " + key.encode() for key in INCLUDED}}
    assert pair.dest_snapshot() == expected
    assert (stats.copied, stats.updated, stats.deleted, stats.failed) == (len(INCLUDED) - 1, 1, 2, 0)
    # The guard's share is of the mirror's objects: 2 deletions of 3 listed, not of 12.
    assert (stats.source_objects, stats.dest_objects) == (len(INCLUDED), 3)

    again = make_app(**settings(S3_SYNC_LIST_CONCURRENCY=concurrency)).reconciler.run()
    assert (again.copied, again.updated, again.deleted, again.failed, again.unchanged) == (0, 0, 0, 0, len(INCLUDED))
    assert pair.dest_snapshot() == expected

    # verify sees a whole mirror: the destination's own objects are not "extra".
    tally = Verifier(app.source, app.dest, app.policy, app.settings, out=io.StringIO()).run()
    assert (tally.complete, tally.in_sync, tally.compared) == (True, True, len(INCLUDED))


def refusals(sidecar, key: str) -> int:
    """How many of ``key``'s events the sidecar refused, by its debug log."""
    return sidecar.log().count(f"{key}: outside the mirror's filter")


def test_events_put_overwrite_and_delete_only_the_mirrors_keys(pair, sidecars):
    for key in EXCLUDED:
        put_dest(pair, key, own(key))
    sidecar = sidecars(pair.env, **settings(S3_SYNC_DELETE="true"))
    wait_for(sidecar.ready, what="readiness")  # the initial reconcile is done: nothing was the mirror's

    def dest_bodies() -> dict[str, bytes] | None:
        try:
            return pair.dest_snapshot()
        except pair.dest.exceptions.NoSuchKey:  # listed, then deleted by an event before its GET
            return None

    outside = {key: own(key) for key in EXCLUDED}
    for round_, version in enumerate((b"v1: ", b"v2, an overwrite: "), start=1):
        for key, _ in CASES:
            put(pair, key, version + key.encode())
        # No reconcile runs meanwhile (interval 3600 s): only events can do this.
        expected = {**outside, **{key: version + key.encode() for key in INCLUDED}}
        wait_for(lambda expected=expected: dest_bodies() == expected, timeout=30, what=f"the events of round {round_}")
        wait_for(lambda round_=round_: all(refusals(sidecar, key) >= round_ for key in REFUSED), timeout=30,
                 what="every excluded key's event refused")
        wait_for(sidecar.idle, what="an idle queue")
        assert dest_bodies() == expected

    # Deleted at the source: the mirror's keys go; the destination's own objects, at the
    # same keys the source just deleted, stay.
    for key, _ in CASES:
        pair.source.remove_object(pair.source_bucket, key)
    wait_for(lambda: dest_bodies() == outside, timeout=30, what="the mirror's keys deleted by events")
    wait_for(lambda: all(refusals(sidecar, key) >= 3 for key in REFUSED), timeout=30,
             what="every excluded key's delete event refused")
    wait_for(sidecar.idle, what="an idle queue")
    assert dest_bodies() == outside
    assert sidecar.metrics()["replicator_objects_deleted_total"] == len(INCLUDED)
    # The events outside the prefix never came: MinIO filtered them.
    assert [key for key in EXCLUDED if key not in REFUSED and refusals(sidecar, key)] == []
