"""S3Destination's choices that need no server: which digests a PUT will send."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from replicator import config
from replicator.model import ObjectLock, SourceObject
from replicator.stores.destination import S3Destination

ENV = {
    "MINIO_ENDPOINT": "http://127.0.0.1:9",
    "MINIO_ACCESS_KEY": "source-key",
    "MINIO_SECRET_KEY": "source-secret",
    "MINIO_BUCKET": "src",
    "S3_SYNC_ACCESS_KEY": "dest-key",
    "S3_SYNC_SECRET_KEY": "dest-secret",
    "S3_SYNC_BUCKET": "dst",
}
LOCKED = ObjectLock("GOVERNANCE", datetime.now(timezone.utc) + timedelta(days=1), False)


@pytest.mark.parametrize("endpoint, lock, wanted", [
    ("http://127.0.0.1:9", None, {"sha256"}),  # the signed payload is the check
    ("http://127.0.0.1:9", LOCKED, {"sha256", "md5"}),  # lock settings need Content-MD5 too
    ("https://127.0.0.1:9", None, {"md5"}),  # unsigned payload: Content-MD5 is the check
    ("https://s3.eu-west-1.amazonaws.com", None, {"md5"}),
])
def test_the_digests_taken_during_the_read_are_the_ones_the_put_sends(endpoint, lock, wanted):
    dest = S3Destination(config.load({**ENV, "S3_SYNC_ENDPOINT": endpoint}))
    src = SourceObject("k", 3, "etag", **({"lock": lock} if lock else {}))
    assert set(dest.digests_for("k", src)) == wanted
