"""The shortest end-to-end path: a few objects, one reconcile, equal buckets."""

import io

from replicator.app import build


def test_reconcile_copies_then_is_a_no_op(pair):
    for i in range(3):
        pair.source.put_object(pair.source_bucket, f"k{i}", io.BytesIO(b"x" * i), i)
    app = build(pair.settings())
    try:
        first = app.reconciler.run()
        second = app.reconciler.run()
    finally:
        app.close()
    assert (first.copied, first.failed) == (3, 0)
    assert (second.copied, second.unchanged) == (0, 3)
    assert pair.dest_snapshot() == pair.source_snapshot()
