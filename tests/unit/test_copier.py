"""copier.py pieces that need no store: the part-size rule."""

from __future__ import annotations

import pytest

from replicator.config import MiB
from replicator.copier import MAX_PARTS, part_size

GiB = 1024 * MiB


@pytest.mark.parametrize(
    ("size", "configured", "expected"),
    [
        (20 * MiB, 8 * MiB, 8 * MiB),
        (8 * MiB * MAX_PARTS, 8 * MiB, 8 * MiB),  # exactly 10,000 parts: fits
        (8 * MiB * MAX_PARTS + 1, 8 * MiB, 9 * MiB),  # one byte more: grow, in whole MiB
        (1024 * GiB, 8 * MiB, 105 * MiB),  # 1 TiB needs > 104.86 MiB parts
        (5 * 1024 * GiB, 5 * MiB, 525 * MiB),  # S3's 5 TiB maximum object
    ],
)
def test_part_size(size, configured, expected):
    chosen = part_size(size, configured)
    assert chosen == expected
    assert -(-size // chosen) <= MAX_PARTS
