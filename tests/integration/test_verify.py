"""``python -m replicator verify`` against real servers: what it reports for each kind
of drift, with and without ``--content``, that an in-sync mirror exits 0, and that it
changes nothing at all.

The mirror is made by a real reconcile first (in this process: it is the setup, not
what is tested); every verify runs as a user runs it, through ``run_cli``, which also
checks that no credential appears in its output.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from minio.commonconfig import REPLACE, CopySource, Tags

from replicator.model import SOURCE_ETAG_META
from tests.conftest import REPO_ROOT, run_cli
from tests.faultproxy import FaultProxy

MiB = 1024 * 1024
# The big object's copy is cut into parts of its own (the source's 6 MiB parts are above
# the threshold), so its ETag is not the source's: only its recorded source ETag, read
# with a HEAD, shows it in sync.
RECUT = {"S3_SYNC_MULTIPART_THRESHOLD": "5MiB", "S3_SYNC_MULTIPART_CHUNK_SIZE": "5MiB"}


def put(pair, key: str, data: bytes, **kwargs) -> str:
    return pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data), **kwargs).etag.strip('"')


def put_dest(pair, key: str, data: bytes, **kwargs) -> str:
    return pair.dest.put_object(Bucket=pair.dest_bucket, Key=key, Body=data, **kwargs)["ETag"].strip('"')


def mirror(make_app, **overrides) -> None:
    stats = make_app(**overrides).reconciler.run()
    assert (stats.failed, stats.guard) == (0, None)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def summary(result) -> str:
    """The summary line's message: after the timestamp and, for a warning or an error, its mark."""
    [line] = [line for line in result.stderr.splitlines() if "Verify" in line and "Verifying" not in line]
    return re.sub(r"^[!✗·] ", "", line.split("] ", 1)[1])


def dest_etag(pair, key: str) -> str:
    return pair.dest.head_object(Bucket=pair.dest_bucket, Key=key)["ETag"].strip('"')


# --- in sync -----------------------------------------------------------------------------

@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_an_in_sync_mirror_exits_0_and_writes_its_gauges(pair, make_app, tmp_path):
    put(pair, "a.txt", b"alpha")
    put(pair, "docs/café menü.txt", b"unicode")
    put(pair, "empty", b"")
    big = os.urandom(11 * MiB)
    put(pair, "video/raw.bin", big, part_size=6 * MiB)
    mirror(make_app, **RECUT)
    # The pair a reconcile settles by the recorded source ETag: verify must too.
    assert dest_etag(pair, "video/raw.bin") != pair.source.stat_object(pair.source_bucket, "video/raw.bin").etag

    plain = run_cli(pair.env, "verify")
    assert plain.code == 0, plain.stderr
    assert plain.stdout == ""
    assert re.fullmatch(r"✓ Verify: in sync: 4 objects compared \(source 4, destination 4\); by listing: sizes, "
                        r"ETags, recorded source ETags; [\d.]+s", summary(plain)), plain.stderr

    prom = tmp_path / "verify.prom"
    before = time.time()
    content = run_cli(pair.env, "verify", "--content", "--metrics-file", str(prom))
    assert content.code == 0, content.stderr
    assert content.stdout == ""
    assert "content of 4 read on both sides (22.0 MiB, SHA-256)" in summary(content)
    written = gauges(prom)
    assert {name: value for name, value in written.items() if "timestamp" not in name} == {
        "replicator_verify_objects_checked": 4.0,
        'replicator_verify_differences{kind="missing"}': 0.0,
        'replicator_verify_differences{kind="extra"}': 0.0,
        'replicator_verify_differences{kind="different"}': 0.0,
    }
    assert before <= written["replicator_verify_last_run_timestamp_seconds"] <= time.time()


# --- drift of each kind -----------------------------------------------------------------

def drift(pair, make_app) -> dict[str, bytes]:
    """A mirror made whole, then made wrong in every way a listing or a read can show.
    Returns the bytes each side has of the keys whose content differs."""
    put(pair, "keep.txt", b"kept as it is")
    put(pair, "gone.txt", b"lost at the destination")
    put(pair, "grown.txt", b"v1")
    put(pair, "same-size.bin", b"0123456789")
    forged_etag = put(pair, "forged.bin", b"abcdefghij")
    mirror(make_app)
    pair.dest.delete_object(Bucket=pair.dest_bucket, Key="gone.txt")
    put(pair, "grown.txt", b"version 2")
    # Same size, other bytes, written by something else: no record of a source ETag.
    put_dest(pair, "same-size.bin", b"9876543210")
    # Same size, other bytes, and a record claiming they are the source's: bit rot, or a
    # tool that copied the metadata and not the bytes. Only reading shows it.
    put_dest(pair, "forged.bin", b"ABCDEFGHIJ", Metadata={SOURCE_ETAG_META: forged_etag})
    put_dest(pair, "orphan.bin", b"o" * 42)
    return {"same-size.bin": b"0123456789", "forged.bin": b"abcdefghij"}


def gauges(path: Path) -> dict[str, float]:
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in path.read_text().splitlines()
                                                   if not line.startswith("#"))}


def test_drift_of_each_kind_is_found(pair, make_app, tmp_path):
    drift(pair, make_app)
    source_etag = pair.source.stat_object(pair.source_bucket, "same-size.bin").etag.strip('"')
    prom = tmp_path / "verify.prom"
    result = run_cli(pair.env, "verify", "--metrics-file", str(prom))
    assert result.code == 1, result.stderr
    assert result.stdout.splitlines() == [
        "missing   gone.txt  (23 bytes)",
        "different grown.txt  (size: source 9 bytes, destination 2)",
        "extra     orphan.bin  (42 bytes)",
        f"different same-size.bin  (ETag: source {source_etag}, destination {dest_etag(pair, 'same-size.bin')}, "
        "which records no source ETag)",
    ]  # forged.bin is in sync as far as any listing or HEAD can tell
    assert summary(result).startswith("Verify: out of sync: 1 missing, 1 extra, 2 different; 6 objects compared "
                                      "(source 5, destination 5); by listing")
    found = gauges(prom)
    assert [found[f'replicator_verify_differences{{kind="{kind}"}}'] for kind in ("missing", "extra", "different")] \
        == [1, 1, 2]
    assert found["replicator_verify_objects_checked"] == 6


def test_content_finds_the_same_size_rewrite_a_listing_cannot_see(pair, make_app):
    drift(pair, make_app)
    source_etag = pair.source.stat_object(pair.source_bucket, "same-size.bin").etag.strip('"')
    result = run_cli({**pair.env, "S3_SYNC_DELETE": "false"}, "verify", "--content")
    assert result.code == 1, result.stderr
    assert result.stdout.splitlines() == [
        f"different forged.bin  (content: sha256 source {sha256(b'abcdefghij')}, destination "
        f"{sha256(b'ABCDEFGHIJ')})",
        "missing   gone.txt  (23 bytes)",
        "different grown.txt  (size: source 9 bytes, destination 2)",
        "extra     orphan.bin  (42 bytes; kept: S3_SYNC_DELETE=false)",
        f"different same-size.bin  (ETag: source {source_etag}, destination {dest_etag(pair, 'same-size.bin')}, "
        f"which records no source ETag; content: sha256 source {sha256(b'0123456789')}, destination "
        f"{sha256(b'9876543210')})",
    ]
    line = summary(result)
    assert line.startswith("Verify: out of sync: 1 missing, 1 extra (kept: S3_SYNC_DELETE=false), 3 different; "
                           "6 objects compared (source 5, destination 5)")
    assert "content of 3 read on both sides" in line  # keep.txt, forged.bin, same-size.bin


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_sample_reads_pairs_the_listings_show_in_sync(pair, make_app):
    drift(pair, make_app)
    result = run_cli(pair.env, "verify", "--sample", "2")
    assert result.code == 1, result.stderr
    # keep.txt and forged.bin are the pairs in sync by listing: a sample of two reads both.
    assert result.stdout.splitlines()[-1].startswith("different forged.bin  (content: sha256 source ")
    assert "content of 2 random of 2 in sync read on both sides" in summary(result)


# --- metadata, where the reconcile's rules compare it ----------------------------------------

def tags(**values) -> Tags:
    tag_set = Tags.new_object_tags()
    tag_set.update(values)
    return tag_set


def rewrite_metadata(pair, key: str, content_type: str, metadata: dict[str, str] | None = None) -> None:
    """What `mc cp --attr` does: the same bytes (and ETag), other attributes."""
    pair.source.copy_object(pair.source_bucket, key, CopySource(pair.source_bucket, key),
                            metadata={"Content-Type": content_type, **(metadata or {})}, metadata_directive=REPLACE)


@pytest.mark.parametrize("pair", ["minio"], indirect=True)  # only MinIO lists attributes
def test_metadata_differences_are_found_where_the_listings_carry_them(pair, make_app):
    listed = {"S3_SYNC_LIST_METADATA": "true"}
    put(pair, "report.csv", b"a,b\n", content_type="text/plain")
    put(pair, "owned", b"o", metadata={"x-amz-meta-owner": "alice"})
    put(pair, "tagged", b"t", tags=tags(team="blue"))
    put(pair, "untouched", b"u", content_type="text/plain")
    mirror(make_app, **listed)
    rewrite_metadata(pair, "report.csv", "text/csv")
    rewrite_metadata(pair, "owned", "application/octet-stream", {"x-amz-meta-owner": "bob"})  # its type as it was
    pair.source.set_object_tags(pair.source_bucket, "tagged", tags(team="red"))

    result = run_cli({**pair.env, **listed}, "verify")
    assert result.code == 1, result.stderr
    assert result.stdout.splitlines() == [
        "different owned  (attributes: x-amz-meta-owner)",
        "different report.csv  (attributes: content-type)",
        "different tagged  (attributes: tag:team)",
    ]
    assert "by listing: sizes, ETags, recorded source ETags, attributes" in summary(result)
    # Without the listed attributes a reconcile can't see these changes, and so verify
    # doesn't claim to: it says what it compared (the metadata sweep compares the rest).
    blind = run_cli(pair.env, "verify")
    assert (blind.code, blind.stdout) == (0, ""), blind.stderr
    assert "by listing: sizes, ETags, recorded source ETags;" in summary(blind)


# --- it changes nothing -------------------------------------------------------------------

def crashed_upload(pair, state_dir: Path, destination: str, key: str) -> str:
    """A real incomplete upload at the destination, recorded by a replicator process
    that then died: exactly what a reconcile's first step aborts."""
    upload_id = pair.dest.create_multipart_upload(Bucket=pair.dest_bucket, Key=key)["UploadId"]
    record = ("import os, sys\nfrom replicator.uploads import Registry\n"
              "Registry(sys.argv[1], sys.argv[2]).started(sys.argv[3], sys.argv[4])\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", record, str(state_dir / "uploads"), destination, key, upload_id],
                   cwd=REPO_ROOT, check=True)
    return upload_id


def dest_state(pair) -> dict:
    """Everything of the destination bucket a write could change."""
    state = {}
    for key in pair.dest_keys():
        head = pair.dest.head_object(Bucket=pair.dest_bucket, Key=key)
        state[key] = (pair.dest_body(key), head["ETag"], head["LastModified"], head.get("ContentType"),
                      head["Metadata"])
    uploads = pair.dest.list_multipart_uploads(Bucket=pair.dest_bucket).get("Uploads", [])
    return {"objects": state, "uploads": sorted(u["UploadId"] for u in uploads)}


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_verify_changes_nothing(pair, make_app):
    drift(pair, make_app)
    source_proxy, dest_proxy = FaultProxy(pair.servers["source"].port), FaultProxy(pair.servers["dest"].port)
    try:
        env = {**pair.env, "MINIO_ENDPOINT": source_proxy.endpoint, "S3_SYNC_ENDPOINT": dest_proxy.endpoint}
        state_dir = Path(env["S3_SYNC_STATE_DIR"])
        upload_id = crashed_upload(pair, state_dir, f"{dest_proxy.endpoint}/{pair.dest_bucket}", "video/raw.bin")
        before, state_files, source_before = dest_state(pair), files(state_dir), pair.source_snapshot()
        assert before["uploads"] == [upload_id]

        result = run_cli(env, "verify", "--content")
        assert result.code == 1, result.stderr
        assert len(result.stdout.splitlines()) == 5
        assert dest_state(pair) == before  # no object, attribute or upload changed
        assert pair.source_snapshot() == source_before
        assert files(state_dir) == state_files  # the crashed process's record is still there
        sent = {(side, r.method) for side, proxy in (("source", source_proxy), ("destination", dest_proxy))
                for r in proxy.seen}
        assert sent == {("source", "GET"), ("source", "HEAD"), ("destination", "GET"), ("destination", "HEAD")}
    finally:
        source_proxy.close()
        dest_proxy.close()


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_missing_destination_bucket_fails_and_is_not_created(pair):
    put(pair, "a.txt", b"alpha")
    missing = pair.dest_bucket + "-absent"
    result = run_cli({**pair.env, "S3_SYNC_BUCKET": missing}, "verify")
    assert result.code == 1
    assert f"destination: check bucket {missing}: bucket does not exist" in result.stderr
    assert missing not in {b["Name"] for b in pair.dest.list_buckets()["Buckets"]}


def test_a_metrics_file_that_cant_be_written_is_refused_before_anything_is_compared(tmp_path):
    # No server behind these settings: the refusal must come before any request.
    env = {"S3_SYNC_ACCESS_KEY": "AKIAEXAMPLE", "S3_SYNC_SECRET_KEY": "verify-secret-Qp31", "S3_SYNC_BUCKET": "mirror",
           "MINIO_ENDPOINT": "http://127.0.0.1:9", "S3_SYNC_ENDPOINT": "http://127.0.0.1:9"}
    path = tmp_path / "no-such-dir" / "verify.prom"
    result = run_cli(env, "verify", "--metrics-file", str(path))
    assert result.code == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "✗" in line]
    assert line.endswith(f"--metrics-file {path}: can't write into {path.parent} (missing, or not writable)")
