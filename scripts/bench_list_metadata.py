#!/usr/bin/env python3
"""What S3_SYNC_LIST_METADATA costs: a no-op reconcile between two MinIO servers, with
and without MinIO's metadata=true on both listings.

    python scripts/bench_list_metadata.py --objects 10000 --runs 5

Two MinIO servers on 127.0.0.1 (data in ``--workdir``, default /dev/shm: the disk's
stalls would swamp the difference), a source bucket of N small objects in 100 prefixes,
each with a Content-Type and one user metadata entry, copied once. Then ``--runs``
rounds of one no-op reconcile each way, alternating, in this process: wall time and
this process's CPU per reconcile, medians printed. Nothing is written to the docs;
docs/benchmarks.md quotes the printed lines.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loguru import logger  # noqa: E402
from minio import Minio  # noqa: E402

from replicator import config  # noqa: E402
from replicator.app import build  # noqa: E402
from scripts.benchlib import machine_info  # noqa: E402
from tests.servers import MinioServer  # noqa: E402

USER, PASSWORD = "bench-user", "bench-password-1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", default="/dev/shm", help="where the servers keep data (default /dev/shm)")
    args = parser.parse_args()
    logger.remove()
    work = Path(tempfile.mkdtemp(prefix="bench-list-metadata-", dir=args.workdir))
    source = MinioServer("source", USER, PASSWORD, workdir=str(work / "source")).start()
    dest = MinioServer("dest", USER, PASSWORD, workdir=str(work / "dest")).start()
    try:
        client = Minio(source.host, USER, PASSWORD, secure=False)
        client.make_bucket("source")
        Minio(dest.host, USER, PASSWORD, secure=False).make_bucket("mirror")

        def put(i: int) -> None:
            client.put_object("source", f"d{i % 100:02d}/obj-{i:06d}", io.BytesIO(b"x" * 100), 100,
                              content_type="text/plain", metadata={"x-amz-meta-owner": "alice"})

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(args.objects)))
        env = {"S3_SYNC_ACCESS_KEY": USER, "S3_SYNC_SECRET_KEY": PASSWORD, "S3_SYNC_BUCKET": "mirror",
               "S3_SYNC_ENDPOINT": dest.endpoint, "MINIO_ENDPOINT": source.endpoint, "MINIO_ACCESS_KEY": USER,
               "MINIO_SECRET_KEY": PASSWORD, "MINIO_BUCKET": "source"}
        apps = {flag: build(config.load({**env, "S3_SYNC_LIST_METADATA": str(flag).lower()}))
                for flag in (False, True)}
        assert apps[False].reconciler.run().copied == args.objects
        figures: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for run in range(args.runs):
            for flag in ((False, True) if run % 2 == 0 else (True, False)):
                cpu, wall = time.process_time(), time.monotonic()
                stats = apps[flag].reconciler.run()
                figures[flag].append((time.monotonic() - wall, time.process_time() - cpu))
                assert stats.unchanged == args.objects and not stats.failed, stats
        info = machine_info()
        print(f"{info['date']}, {info['cpu']}, {info['nproc']} CPUs, MinIO {info['minio']}")
        print(f"no-op reconcile of {args.objects} objects, median of {args.runs}:")
        for flag in (False, True):
            wall = statistics.median(w for w, _ in figures[flag])
            cpu = statistics.median(c for _, c in figures[flag])
            print(f"  S3_SYNC_LIST_METADATA={str(flag).lower():<5}  wall {wall:.2f} s  replicator CPU {cpu:.2f} s")
        for app in apps.values():
            app.close()
    finally:
        source.close()
        dest.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
