"""diff.py by tables: the merge-join, the "needs a copy?" rule and the order check."""

from __future__ import annotations

import pytest

from replicator import diff
from replicator.errors import ListingOrderError
from replicator.model import Action, ObjectInfo


def obj(key: str, size: int = 1, etag: str = "e1") -> ObjectInfo:
    return ObjectInfo(key, size, etag)


@pytest.mark.parametrize(
    ("source", "dest", "expected"),
    [
        pytest.param(obj("a", 1, "e1"), obj("a", 1, "e1"), Action.UNCHANGED, id="same size and etag"),
        pytest.param(obj("a", 1, "e1"), obj("a", 2, "e1"), Action.UPDATE, id="size differs"),
        pytest.param(obj("a", 0, "e0"), obj("a", 3, "e0"), Action.UPDATE, id="grew from zero bytes"),
        # A same-size rewrite: a size-only (or size+mtime) rule would call this in sync.
        pytest.param(obj("a", 5, "md5-old"), obj("a", 5, "md5-new"), Action.VERIFY, id="same size, etag differs"),
        pytest.param(obj("a", 9, "abc-2"), obj("a", 9, "def"), Action.VERIFY, id="multipart vs single etag"),
        pytest.param(obj("a", 9, "abc-2"), obj("a", 9, "abc-2"), Action.UNCHANGED, id="identical multipart etags"),
    ],
)
def test_compare(source, dest, expected):
    assert diff.compare(source, dest) is expected


def keys_and_actions(source, dest):
    return [(c.key, c.action) for c in diff.plan(source, dest)]


C, U, V, D, N = Action.COPY, Action.UPDATE, Action.VERIFY, Action.DELETE, Action.UNCHANGED


@pytest.mark.parametrize(
    ("source", "dest", "expected"),
    [
        pytest.param([], [], [], id="both empty"),
        pytest.param([obj("a"), obj("b")], [], [("a", C), ("b", C)], id="initial sync"),
        pytest.param([], [obj("a"), obj("b")], [("a", D), ("b", D)], id="empty source"),
        pytest.param([obj("a"), obj("c")], [obj("b"), obj("d")], [("a", C), ("b", D), ("c", C), ("d", D)],
                     id="interleaved"),
        pytest.param([obj("a"), obj("b", 2), obj("c", 1, "x")], [obj("a"), obj("b", 3), obj("c", 1, "y")],
                     [("a", N), ("b", U), ("c", V)], id="all three kinds of pair"),
        pytest.param([obj("a"), obj("b"), obj("z")], [obj("b")], [("a", C), ("b", N), ("z", C)],
                     id="dest is a middle subset"),
        pytest.param([obj("m")], [obj("a"), obj("m"), obj("z")], [("a", D), ("m", N), ("z", D)],
                     id="extra keys on both ends of the destination"),
        pytest.param([obj("dir/")], [obj("dir"), obj("dir/")], [("dir", D), ("dir/", N)],
                     id="key and key-with-slash are different objects"),
    ],
)
def test_plan(source, dest, expected):
    assert keys_and_actions(source, dest) == expected


def test_plan_carries_both_sides_and_sizes():
    [update, copy, delete] = diff.plan([obj("a", 5), obj("b", 7)], [obj("a", 4), obj("c", 9)])
    assert (update.action, update.source.size, update.dest.size, update.size) == (U, 5, 4, 5)
    assert (copy.action, copy.dest, copy.size) == (C, None, 7)
    assert (delete.action, delete.source, delete.size) == (D, None, 9)


# Keys in the order S3 and MinIO list them: UTF-8 bytes. Upper case before lower case,
# ' ' (0x20) before '#', '%', '+', '/' and digits; multi-byte sequences after all ASCII,
# and a 4-byte emoji after the 3-byte U+FFFF.
BYTE_ORDER = ["A", "Z", "a", "a b", "a#b", "a%b", "a+b", "a/b", "a?b", "ab", "z", "é", "ünï", "中",
              "\uffff", "😀"]


def test_utf8_byte_order_is_accepted_and_merged():
    assert sorted(BYTE_ORDER, key=lambda k: k.encode()) == BYTE_ORDER  # the table itself is right
    source = [obj(k) for k in BYTE_ORDER]
    dest = [obj(k) for k in BYTE_ORDER[::2]]
    plan = keys_and_actions(source, dest)
    assert [k for k, _ in plan] == BYTE_ORDER
    assert [a for _, a in plan] == [N if i % 2 == 0 else C for i in range(len(BYTE_ORDER))]


def test_unicode_pairs_match_across_sides():
    # An in-sync unicode key must pair up, not come out as one copy plus one delete.
    assert keys_and_actions([obj("a"), obj("é"), obj("😀")], [obj("é"), obj("😀")]) == [
        ("a", C), ("é", N), ("😀", N)]


@pytest.mark.parametrize(
    ("keys", "bad"),
    [
        pytest.param(["b", "a"], "a", id="descending"),
        pytest.param(["a", "a"], "a", id="duplicate"),
        pytest.param(["a", "c", "b"], "b", id="late inversion"),
        pytest.param(["é", "z"], "z", id="code-point order reversed"),
        pytest.param(["😀", "\uffff"], "\uffff", id="utf-16 order is not byte order"),
        pytest.param(["a", "B"], "B", id="case-insensitive order"),
    ],
)
@pytest.mark.parametrize("side", ["source", "destination"])
def test_out_of_order_listing_raises(keys, bad, side):
    listing = [obj(k) for k in keys]
    source, dest = (listing, []) if side == "source" else ([], listing)
    with pytest.raises(ListingOrderError) as caught:
        list(diff.plan(source, dest))
    assert caught.value.side == side
    assert caught.value.key == bad
    assert "out of order" in str(caught.value)


def test_order_violation_stops_before_any_later_change():
    # Plan items for keys before the violation may have been produced; none after it.
    produced = []
    with pytest.raises(ListingOrderError):
        for change in diff.plan([obj("a"), obj("c"), obj("b"), obj("d")], [obj("a"), obj("c")]):
            produced.append(change.key)
    assert "d" not in produced and "b" not in produced


def test_plan_streams_without_reading_ahead():
    # Memory must not grow with the bucket: the merge pulls one item per side at a time.
    pulled = []

    def listing(keys):
        for k in keys:
            pulled.append(k)
            yield obj(k)

    changes = diff.plan(listing(["a", "c", "e"]), listing(["b", "d"]))
    first = next(changes)
    assert first.key == "a"
    assert pulled == ["a", "b"]


@pytest.mark.parametrize(("etag", "multipart"), [("d41d8cd98f00b204e9800998ecf8427e", False),
                                                ("9b2cf535f27731c974343645a3985328-3", True)])
def test_is_multipart_etag(etag, multipart):
    assert diff.is_multipart_etag(etag) is multipart


def _listed(**attrs) -> frozenset:
    return frozenset(attrs.items())


@pytest.mark.parametrize(("source", "dest", "expected"), [
    (_listed(**{"content-type": "text/csv"}), _listed(**{"content-type": "text/csv"}), Action.UNCHANGED),
    (_listed(**{"content-type": "text/csv"}), _listed(**{"content-type": "text/plain"}), Action.UPDATE),
    (_listed(**{"tag:team": "red"}), _listed(**{"tag:team": "blue"}), Action.UPDATE),
    (_listed(**{"content-type": "text/csv"}), None, Action.UNCHANGED),  # one side can't list them
    (None, _listed(**{"content-type": "text/csv"}), Action.UNCHANGED),
])
def test_listed_attributes_decide_where_both_listings_carry_them(source, dest, expected):
    assert diff.compare(ObjectInfo("k", 1, "e", attributes=source),
                        ObjectInfo("k", 1, "e", attributes=dest)) is expected


CSV, PLAIN = _listed(**{"content-type": "text/csv"}), _listed(**{"content-type": "text/plain"})


@pytest.mark.parametrize(("recorded", "source_attrs", "dest_attrs", "in_sync"), [
    pytest.param("md5-src", None, None, True, id="records the source etag"),
    pytest.param("md5-older", None, None, False, id="records an older source etag"),
    pytest.param(None, None, None, False, id="records none (copied by another tool)"),
    pytest.param("md5-src", CSV, CSV, True, id="records it, listed attributes agree"),
    pytest.param("md5-src", CSV, PLAIN, False, id="records it, listed attributes differ"),
    pytest.param("md5-src", CSV, None, True, id="records it, one side lists no attributes"),
])
def test_in_sync_by_record(recorded, source_attrs, dest_attrs, in_sync):
    # The pair compare() leaves to VERIFY: same size, other ETags (a re-cut multipart copy).
    source = ObjectInfo("k", 9, "md5-src", attributes=source_attrs)
    dest = ObjectInfo("k", 9, "md5-copy-2", attributes=dest_attrs)
    assert diff.compare(source, dest) is Action.VERIFY
    assert diff.in_sync_by_record(source, dest, recorded) is in_sync
