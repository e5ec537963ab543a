"""The quickstart's demo, run by scripts/quickstart.sh once the machine is ready.

Two throwaway MinIO servers on 127.0.0.1 (a source and a destination, each in its
own temporary directory), a few dozen sample objects in the source bucket, one
``python -m replicator reconcile`` exactly as a user would run it, then a look at
the destination and a byte-for-byte comparison with the source. The servers and
their data are removed at the end, so every run starts from nothing.

Exit status: the reconcile's own when it fails, 1 when the buckets differ after it.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from minio import Minio  # noqa: E402
from minio.commonconfig import Tags  # noqa: E402

from tests.servers import MinioServer  # noqa: E402

SOURCE_BUCKET = "relics"
DEST_BUCKET = "relics-backup"
SOURCE_USER, SOURCE_PASSWORD = "minioadmin", "minioadmin"
DEST_USER, DEST_PASSWORD = "backup-admin", "backup-secret-quickstart"
MiB = 1024 * 1024
LARGE_KEY = "backups/2024-archive.tar"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def sample_objects() -> list[tuple[str, bytes, dict]]:
    """Key, body and put_object options. Covers what a real bucket holds: nested
    "folders", a zero-byte object, a folder marker, awkward characters, user metadata,
    tags, and one object above the 16 MiB multipart threshold."""
    rng = random.Random(2024)
    objects: list[tuple[str, bytes, dict]] = [
        ("README.txt", b"Relic uploads, mirrored by replicator.\n", {"content_type": "text/plain"}),
        ("empty.txt", b"", {}),
        ("incoming/", b"", {}),  # a folder marker, as consoles create them
        ("docs/annual report 2024.pdf", rng.randbytes(48_000), {"content_type": "application/pdf"}),
        ("docs/café menü.txt", "crème brûlée\n".encode(), {"content_type": "text/plain; charset=utf-8"}),
        ("odd/a+b=c.txt", b"plus\n", {}),
        ("odd/100% done?.txt", b"percent and question mark\n", {}),
        ("odd/#hash.txt", b"hash\n", {}),
    ]
    for year, album in (("2023", "winter"), ("2024", "summer"), ("2024", "autumn/trip")):
        for n in range(1, 5):
            tags = Tags.new_object_tags()
            tags["album"] = album.split("/")[0]
            objects.append((f"photos/{year}/{album}/img-{n:03}.jpg", rng.randbytes(rng.randint(2_000, 90_000)),
                            {"content_type": "image/jpeg", "metadata": {"camera": f"cam-{n}"}, "tags": tags}))
    for n in range(12):
        rows = "".join(f"{n},{i},{rng.random():.6f}\n" for i in range(rng.randint(10, 400)))
        objects.append((f"data/metrics-{n:02}.csv", rows.encode(),
                        {"content_type": "text/csv", "metadata": {"Cache-Control": "no-cache"}}))
    objects.append((LARGE_KEY, rng.randbytes(20 * MiB), {"content_type": "application/x-tar"}))
    return objects


def fill_source(server: MinioServer) -> tuple[int, int]:
    client = Minio(server.host, SOURCE_USER, SOURCE_PASSWORD, secure=False)
    client.make_bucket(SOURCE_BUCKET)
    total = 0
    objects = sample_objects()
    for key, body, options in objects:
        # 5 MiB parts: the large object arrives as a multipart upload, as big uploads do.
        client.put_object(SOURCE_BUCKET, key, io.BytesIO(body), len(body), part_size=5 * MiB, **options)
        total += len(body)
    return len(objects), total


def reconcile(source: MinioServer, dest: MinioServer) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_SYNC_", "MINIO_"))}
    settings = {
        "S3_SYNC_ENDPOINT": dest.endpoint,
        "S3_SYNC_ACCESS_KEY": DEST_USER,
        "S3_SYNC_SECRET_KEY": DEST_PASSWORD,
        "S3_SYNC_BUCKET": DEST_BUCKET,
        "MINIO_ENDPOINT": source.endpoint,
        "MINIO_ACCESS_KEY": SOURCE_USER,
        "MINIO_SECRET_KEY": SOURCE_PASSWORD,
        "MINIO_BUCKET": SOURCE_BUCKET,
        # The default (60 s) suits a real provider; on loopback a failure should show quickly.
        "S3_SYNC_RETRY_DELAY": "2",
        # The registry of uploads in flight: throwaway, like the servers (not /var/lib/replicator).
        "S3_SYNC_STATE_DIR": str(dest.dir / "replicator-state"),
    }
    shown = " \\\n  ".join(f"{k}={'***' if 'SECRET' in k else v}" for k, v in settings.items())
    print(f"  {shown} \\\n  python -m replicator reconcile\n", flush=True)
    return subprocess.call([sys.executable, "-m", "replicator", "reconcile"], env={**env, **settings}, cwd=ROOT)


def show_and_compare(source: MinioServer, dest: MinioServer) -> bool:
    client = boto3.client(
        "s3", endpoint_url=dest.endpoint, aws_access_key_id=DEST_USER, aws_secret_access_key=DEST_PASSWORD,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )
    listed = [item for page in client.get_paginator("list_objects_v2").paginate(Bucket=DEST_BUCKET)
              for item in page.get("Contents", ())]
    for item in listed:
        print(f"  {item['Size']:>10}  {item['ETag'].strip(chr(34)):<36}  {item['Key']}")
    head = client.head_object(Bucket=DEST_BUCKET, Key=LARGE_KEY)
    print(f"\n  {LARGE_KEY}: a multipart copy (ETag {head['ETag']}), carrying the source's ETag as "
          f"x-amz-meta-replicator-source-etag={head['Metadata'].get('replicator-source-etag')}")

    src = Minio(source.host, SOURCE_USER, SOURCE_PASSWORD, secure=False)
    mismatched = []
    source_keys = sorted(o.object_name for o in src.list_objects(SOURCE_BUCKET, recursive=True))
    if source_keys != sorted(item["Key"] for item in listed):
        mismatched.append("the key sets differ")
    for key in source_keys:
        response = src.get_object(SOURCE_BUCKET, key)
        try:
            want = hashlib.sha256(response.read(decode_content=False)).hexdigest()
        finally:
            response.close()
            response.release_conn()
        try:
            got = hashlib.sha256(client.get_object(Bucket=DEST_BUCKET, Key=key)["Body"].read()).hexdigest()
        except client.exceptions.NoSuchKey:
            got = None
        if got != want:
            mismatched.append(key)
    size = sum(item["Size"] for item in listed)
    if mismatched:
        print(f"\n  MISMATCH: {', '.join(mismatched[:10])}")
        return False
    print(f"\n  destination == source: {len(listed)} objects, {size / MiB:.1f} MiB, compared byte for byte")
    return True


def _terminate(signum, frame):  # a signal handler's signature
    raise KeyboardInterrupt  # unwinds through the finally below, which stops the servers


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    source = MinioServer("quickstart-source", SOURCE_USER, SOURCE_PASSWORD)
    dest = MinioServer("quickstart-dest", DEST_USER, DEST_PASSWORD)
    try:
        say("Starting two MinIO servers on 127.0.0.1")
        source.start()
        dest.start()
        print(f"  source       {source.endpoint}  (data in {source.data})")
        print(f"  destination  {dest.endpoint}  (data in {dest.data})")

        say(f"Putting sample objects into the source bucket '{SOURCE_BUCKET}'")
        count, total = fill_source(source)
        print(f"  {count} objects, {total / MiB:.1f} MiB, incl. nested keys, odd characters, a folder "
              f"marker, an empty object and a 20 MiB multipart upload")

        say(f"One reconcile: {SOURCE_BUCKET} -> {DEST_BUCKET} (the destination bucket is created on the way)")
        code = reconcile(source, dest)
        if code != 0:
            print(f"\nreplicator reconcile exited with {code}; see the log above", file=sys.stderr)
            return code

        say(f"The destination bucket '{DEST_BUCKET}' now holds")
        if not show_and_compare(source, dest):
            return 1
        say("Done. Next: `bash scripts/test.sh` runs the tests; the README shows how to run the sidecar.")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        source.close()
        dest.close()


if __name__ == "__main__":
    sys.exit(main())
