"""verify.py's pure parts by tables: what a pair is reported as, the reservoir sample,
the summary; and one run over in-memory stores for the order of the lines and the
requests it makes (none that writes)."""

from __future__ import annotations

import io
import random
from collections import Counter

import pytest
from loguru import logger

from replicator import diff, verify
from replicator.config import load
from replicator.errors import PermanentError, TransientError
from replicator.model import SOURCE_ETAG_META, Change, ObjectInfo, RunStats
from replicator.retry import RetryPolicy
from replicator.stores.memory import MemoryStore
from replicator.verify import Finding, Kind, Reservoir, Tally

CSV = frozenset({("content-type", "text/csv")})
PLAIN = frozenset({("content-type", "text/plain")})
OWNED = frozenset({("content-type", "text/csv"), ("x-amz-meta-owner", "alice")})


def pair(source: ObjectInfo, dest: ObjectInfo) -> Change:
    """The change the diff makes of a pair both sides list."""
    [change] = diff.plan([source], [dest])
    return change


def info(size: int, etag: str, attributes=None) -> ObjectInfo:
    return ObjectInfo("k", size, etag, attributes=attributes)


@pytest.mark.parametrize(("source", "dest", "recorded", "expected"), [
    pytest.param(info(5, "e1"), info(5, "e1"), None, [], id="same size and etag"),
    pytest.param(info(9, "abc-2"), info(9, "def-3"), "abc-2", [],
                 id="re-cut multipart copy whose record matches: in sync, as for the reconcile"),
    pytest.param(info(5, "e1"), info(4, "e0"), None, ["size: source 5 bytes, destination 4"], id="size"),
    pytest.param(info(5, "new"), info(5, "old"), "old",
                 ["ETag: source new, destination old, which records source ETag old"],
                 id="same-size rewrite the copy predates"),
    pytest.param(info(5, "new"), info(5, "other"), None,
                 ["ETag: source new, destination other, which records no source ETag"],
                 id="written by something else"),
    pytest.param(info(5, "e1", CSV), info(5, "e1", PLAIN), None, ["attributes: content-type"],
                 id="Content-Type rewritten over the same bytes"),
    pytest.param(info(5, "e1", OWNED), info(5, "e1", CSV), None, ["attributes: x-amz-meta-owner"],
                 id="user metadata only at the source"),
    pytest.param(info(9, "abc-2", CSV), info(9, "def-3", PLAIN), "abc-2", ["attributes: content-type"],
                 id="record matches, listed attributes differ"),
    pytest.param(info(5, "e1", CSV), info(5, "e1", None), None, [], id="the destination lists no attributes"),
    pytest.param(info(5, "e1", CSV), info(6, "e2", PLAIN), None,
                 ["size: source 5 bytes, destination 6", "attributes: content-type"], id="size and attributes"),
])
def test_differences(source, dest, recorded, expected):
    assert verify.differences(pair(source, dest), recorded) == expected


@pytest.mark.parametrize(("source", "dest", "recorded"), [
    (info(5, "e1"), info(5, "e1"), None),
    (info(9, "abc-2"), info(9, "def-3"), "abc-2"),
    (info(9, "abc-2"), info(9, "def-3"), "older"),
    (info(9, "abc-2", CSV), info(9, "def-3", PLAIN), "abc-2"),
    (info(5, "e1"), info(6, "e1"), None),
    (info(5, "e1", CSV), info(5, "e1", PLAIN), None),
])
def test_in_sync_exactly_where_the_reconcile_leaves_a_pair_alone(source, dest, recorded):
    change = pair(source, dest)
    reconcile_leaves_it = change.action is diff.Action.UNCHANGED or (
        change.action is diff.Action.VERIFY and diff.in_sync_by_record(source, dest, recorded))
    assert (verify.differences(change, recorded) == []) is reconcile_leaves_it


@pytest.mark.parametrize(("found", "source", "dest", "expected"), [
    pytest.param([], "aa", "aa", [], id="listings and bytes agree"),
    pytest.param([], "aa", "bb", ["content: sha256 source aa, destination bb"],
                 id="in sync by the listings, other bytes"),
    pytest.param(["ETag: …"], "aa", "bb", ["ETag: …", "content: sha256 source aa, destination bb"],
                 id="other ETag, other bytes"),
    pytest.param(["ETag: …"], "aa", "aa", ["ETag: …", "bytes equal (sha256 aa)"],
                 id="other ETag, same bytes: still a difference, never less than the listings say"),
])
def test_content_differences(found, source, dest, expected):
    assert verify.content_differences(found, source, dest) == expected


@pytest.mark.parametrize(("finding", "line"), [
    (Finding(Kind.MISSING, "a/b.txt", "3 bytes"), "missing   a/b.txt  (3 bytes)"),
    (Finding(Kind.EXTRA, "old", "2 bytes; kept: S3_SYNC_DELETE=false"),
     "extra     old  (2 bytes; kept: S3_SYNC_DELETE=false)"),
    (Finding(Kind.DIFFERENT, "r.csv", "size: source 5 bytes, destination 4"),
     "different r.csv  (size: source 5 bytes, destination 4)"),
    pytest.param(Finding(Kind.MISSING, "evil\nextra     forged", "1 bytes"),
                 "missing   evil\\x0aextra     forged  (1 bytes)", id="a key can't forge a line"),
])
def test_lines(finding, line):
    assert finding.line() == line


@pytest.mark.parametrize(("delete", "expected"), [(True, "2 bytes"), (False, "2 bytes; kept: S3_SYNC_DELETE=false")])
def test_extra_says_whether_a_reconcile_keeps_it(delete, expected):
    assert verify.extra(ObjectInfo("k", 2, "e"), delete=delete).detail == expected


# --- the reservoir ------------------------------------------------------------------

@pytest.mark.parametrize(("offered", "size"), [(0, 3), (2, 3), (3, 3), (4, 3), (1000, 3), (1000, 1)])
def test_reservoir_keeps_min_of_size_and_offered_distinct_items(offered, size):
    reservoir = Reservoir(size, random.Random(7))
    for item in range(offered):
        reservoir.offer(item)
    assert reservoir.seen == offered
    assert len(reservoir.items) == min(offered, size)
    assert len(set(reservoir.items)) == len(reservoir.items)
    assert set(reservoir.items) <= set(range(offered))


def test_reservoir_with_room_for_all_keeps_all_in_order():
    reservoir = Reservoir(10, random.Random(1))
    for item in "abcde":
        reservoir.offer(item)
    assert reservoir.items == list("abcde")


def test_reservoir_draws_every_item_equally_often():
    # A biased sample (the first N keys, or the last) would check one corner of a bucket
    # for ever. Each of 10 items must be drawn in 3 of 10 samples: 6,000 of 20,000.
    drawn: Counter = Counter()
    rng = random.Random(12)
    for _ in range(20_000):
        reservoir = Reservoir(3, rng)
        for item in range(10):
            reservoir.offer(item)
        drawn.update(reservoir.items)
    assert sorted(drawn) == list(range(10))
    assert all(abs(count - 6_000) < 300 for count in drawn.values()), drawn  # 4.6 standard deviations


# --- the summary ---------------------------------------------------------------------

def tally(missing=0, extra=0, different=0, failed=0, complete=True, compared=10) -> Tally:
    return Tally(compared=compared, found={Kind.MISSING: missing, Kind.EXTRA: extra, Kind.DIFFERENT: different},
                 failed=failed, complete=complete, duration=1.25)


LISTED = RunStats(source_objects=9, dest_objects=8)


@pytest.mark.parametrize(("counts", "level", "line"), [
    (tally(), "SUCCESS", "✓ Verify: in sync: 10 objects compared (source 9, destination 8); by listing; 1.2s"),
    (tally(missing=2, extra=1, different=3), "ERROR",
     "Verify: out of sync: 2 missing, 1 extra, 3 different; 10 objects compared (source 9, destination 8); "
     "by listing; 1.2s"),
    (tally(missing=1, failed=2, complete=False), "ERROR",
     "Verify failed: 2 could not be compared; found so far: 1 missing, 0 extra, 0 different; 10 objects compared "
     "(source 9, destination 8); by listing; 1.2s"),
    (tally(complete=False), "ERROR",
     "Verify failed: stopped before the end; found so far: 0 missing, 0 extra, 0 different; 10 objects compared "
     "(source 9, destination 8); by listing; 1.2s"),
])
def test_summary(counts, level, line):
    assert verify.summary(counts, LISTED, "by listing") == (level, line)


def settings(**env):
    return load({"S3_SYNC_ACCESS_KEY": "k", "S3_SYNC_SECRET_KEY": "secret-1", "S3_SYNC_BUCKET": "mirror",
                 **{name: str(value) for name, value in env.items()}})


@pytest.mark.parametrize(("env", "extras", "listed", "note"), [
    ({}, 0, RunStats(source_objects=10, dest_objects=10), ""),
    ({}, 2, RunStats(source_objects=10, dest_objects=12), ""),  # a reconcile deletes them
    ({"S3_SYNC_DELETE": "false"}, 2, RunStats(source_objects=10, dest_objects=12), " (kept: S3_SYNC_DELETE=false)"),
    ({}, 3, RunStats(source_objects=0, dest_objects=3),
     " (a reconcile would not delete them: the source bucket listed no objects but the destination has some; if "
     "the source really is empty on purpose, set S3_SYNC_ALLOW_EMPTY_SOURCE=true)"),
])
def test_extra_note_says_what_a_reconcile_would_do(env, extras, listed, note):
    assert verify.extra_note(extras, listed, settings(**env)) == note


# --- one run over in-memory stores ------------------------------------------------------

WRITES = {"put", "start multipart", "put part", "complete multipart", "abort multipart", "put tags",
          "put retention", "put legal hold", "delete batch", "delete"}


def test_a_run_prints_in_key_order_and_only_reads():
    source, dest = MemoryStore("source"), MemoryStore("destination")
    for key in "abcdefgh":
        source.add(key, key.encode() * 4)
    for key in "bcdefgh":
        dest.add(key, key.encode() * 4)
    dest.add("c", b"CCCC", metadata={SOURCE_ETAG_META: source.objects["c"].etag})  # a HEAD says in sync
    dest.add("e", b"eeeeee")
    dest.add("g", b"GGGG")  # the same size, other bytes, no record
    dest.add("z", b"z")
    out = io.StringIO()
    result = verify.Verifier(source, dest, RetryPolicy(1, 0), settings(S3_SYNC_WORKERS=4), content=True,
                             out=out).run()
    assert out.getvalue().splitlines() == [
        "missing   a  (4 bytes)",
        "different c  (content: sha256 source " + sha256(b"cccc") + ", destination " + sha256(b"CCCC") + ")",
        "different e  (size: source 4 bytes, destination 6)",
        "different g  (ETag: source " + source.objects["g"].etag + ", destination " + dest.objects["g"].etag
        + ", which records no source ETag; content: sha256 source " + sha256(b"gggg") + ", destination "
        + sha256(b"GGGG") + ")",
        "extra     z  (1 bytes)",
    ]
    assert (result.compared, result.read, result.complete, result.in_sync) == (9, 6, True, False)
    assert result.found == {Kind.MISSING: 1, Kind.EXTRA: 1, Kind.DIFFERENT: 3}
    assert not {op for op, _ in source.calls + dest.calls} & WRITES


@pytest.mark.parametrize(("sample", "read"), [(1, 1), (19, 19), (50, 19)])
def test_a_sample_is_drawn_from_the_pairs_in_sync_and_read_after_the_listing(sample, read):
    source, dest = MemoryStore("source"), MemoryStore("destination")
    for n in range(20):
        source.add(f"k{n:02}", b"%02d" % n)
        dest.add(f"k{n:02}", b"%02d" % n)
    dest.add("k05", b"xx", metadata={SOURCE_ETAG_META: source.objects["k05"].etag})  # in sync by its record
    dest.add("k07", b"777")  # a size apart: reported by the listing, never drawn
    out = io.StringIO()
    result = verify.Verifier(source, dest, RetryPolicy(1, 0), settings(), sample=sample, out=out,
                             rng=random.Random(3)).run()
    lines = out.getvalue().splitlines()
    assert lines[0] == "different k07  (size: source 2 bytes, destination 3)"
    # Only k05's bytes differ; once every pair in sync is drawn, it is found.
    assert all(line.startswith("different k05  (content: sha256 ") for line in lines[1:])
    assert len(lines) == 2 if read == 19 else len(lines) <= 2
    assert (result.read, result.complete) == (read, True)
    assert len(dest.ops("get")) == read


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_the_readmes_example_is_what_verify_prints():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### Proving the mirror is whole", 1)[1]
    example = section.split("```\n", 2)[1].splitlines()
    source, dest = MemoryStore("source"), MemoryStore("destination")
    for key, data in (("invoice.pdf", b"%PDF-1.7 invoice"), ("notes.txt", b"hello world\n"),
                      ("photos/2026/a.jpg", b"j" * 48213), ("readme.md", b"# readme"), ("report.csv", b"r" * 640)):
        source.add(key, data)
    copied = {key: {SOURCE_ETAG_META: obj.etag} for key, obj in source.objects.items()}
    dest.add("invoice.pdf", b"%PDF-1.7 INVOICE", metadata=copied["invoice.pdf"])  # the record claims the bytes
    dest.add("notes.txt", b"HELLO WORLD\n")  # written by something else
    dest.add("old/b.txt", b"b" * 12)
    dest.add("readme.md", b"# readme", metadata=copied["readme.md"])
    dest.add("report.csv", b"r" * 812, metadata={SOURCE_ETAG_META: "an-older-etag"})
    out = io.StringIO()
    verify.Verifier(source, dest, RetryPolicy(1, 0), settings(S3_SYNC_DELETE="false"), content=True, out=out).run()
    assert out.getvalue().splitlines() == example


# --- what can't be compared --------------------------------------------------------------

def gauges() -> dict[str, float | None]:
    from replicator.observability import metrics

    sample = metrics.verify_registry.get_sample_value
    return {"checked": sample("replicator_verify_objects_checked"),
            "missing": sample("replicator_verify_differences", {"kind": "missing"}),
            "last run": sample("replicator_verify_last_run_timestamp_seconds")}


def mirrored_pair(keys: str = "abc") -> tuple[MemoryStore, MemoryStore]:
    source, dest = MemoryStore("source"), MemoryStore("destination")
    for key in keys:
        source.add(key, key.encode())
        dest.add(key, key.encode())
    return source, dest


def run(source: MemoryStore, dest: MemoryStore, **kwargs) -> tuple[Tally, str]:
    out = io.StringIO()
    result = verify.Verifier(source, dest, RetryPolicy(2, 0), settings(), out=out, **kwargs).run()
    return result, out.getvalue()


def test_a_complete_verify_sets_the_gauges_and_a_failed_one_leaves_them():
    source, dest = mirrored_pair()
    source.add("only-here", b"x")
    run(source, dest)
    done = gauges()
    assert (done["checked"], done["missing"]) == (4.0, 1.0) and done["last run"]
    dest.fail("list", None, TransientError("destination", "list", None, "SlowDown (HTTP 503)"))
    result, _ = run(source, dest)
    assert (result.failed, result.complete, result.in_sync) == (1, False, False)
    assert gauges() == done


def test_a_read_that_fails_counts_and_the_others_go_on():
    source, dest = mirrored_pair()
    dest.fail("get", "b", PermanentError("destination", "get", "b", "AccessDenied (HTTP 403)"))
    dest.add("c", b"C")  # the same size, other bytes
    result, out = run(source, dest, content=True)
    assert out.splitlines()[0].startswith("different c  (ETag: ")
    assert (result.read, result.failed, result.complete) == (2, 1, False)


def test_an_object_rewritten_between_its_listing_and_its_read_is_not_compared():
    source, dest = mirrored_pair()
    real_open = source.open

    def open_after_a_rewrite(key):
        if key == "b":
            source.add("b", b"B")  # the same size, so the listing's pair is read
        return real_open(key)

    source.open = open_after_a_rewrite
    errors: list[str] = []
    sink = logger.add(lambda message: errors.append(str(message).strip()), level="ERROR", format="{message}")
    try:
        result, out = run(source, dest, content=True)
    finally:
        logger.remove(sink)
    assert out == ""
    assert (result.read, result.failed, result.complete) == (2, 1, False)
    assert errors[0] == (f"b: source: get b: changed since it was listed (ETag {source.objects['b'].etag}, listed "
                         f"{dest.objects['b'].etag}); not compared: verify again")
    assert errors[1].startswith("Verify failed: 1 could not be compared; found so far: 0 missing, 0 extra, "
                                "0 different; 3 objects compared (source 3, destination 3)")


def test_keys_outside_the_filter_are_neither_missing_nor_extra():
    source, dest = MemoryStore("source"), MemoryStore("destination")
    for key in ("p/a", "p/b.tmp", "q/c"):
        source.add(key, b"data")
    dest.add("p/a", b"data")
    dest.add("p/old.tmp", b"someone else's")
    dest.add("r/d", b"someone else's")
    out = io.StringIO()
    result = verify.Verifier(source, dest, RetryPolicy(1, 0), settings(S3_SYNC_PREFIX="p/", S3_SYNC_FILTER="- *.tmp"),
                             out=out).run()
    assert out.getvalue() == ""
    assert (result.compared, result.complete, result.in_sync) == (1, True, True)
    assert [key for op, key in source.calls + dest.calls if op == "list"] == [None, None]
