#!/usr/bin/env python3
"""Drain capacity of the event path: how many objects per second each tool replicates
while uploads keep arriving as fast as they can.

    python scripts/bench_drain.py --objects 3000 --rounds 2 --variant w16=S3_SYNC_WORKERS=16

The latency benchmark (bench_events.py) paces uploads at a fixed rate; near the
machine's limit its p99 says more about what else had the CPU than about the tools.
This one asks the other question: with every tool watching its own source bucket
(``python -m replicator run`` and ``mc mirror --watch``, between the same two MinIO
servers on 127.0.0.1), upload N objects with 16 threads (sizes log-uniform in
[1 KiB, 1 MiB], the same sequence for every tool), and time from the first upload until
the destination lists all N. objects/s = N / that time. Tools take turns; the order
alternates between rounds. Nothing is written to the docs: the figures are quoted in
docs/benchmarks-events.md by hand.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from minio import Minio  # noqa: E402
from minio.credentials import Credentials  # noqa: E402

from bench_events import MiB, sizes  # noqa: E402
from replicator.stores.http_client import HttpClient  # noqa: E402
from replicator.stores.transport import object_path, signed_request  # noqa: E402
from tests.servers import HOST, MinioServer, find_tool, free_port  # noqa: E402

SRC_USER, SRC_PASS = "drain-src-admin", "drain-src-secret-4Hq8"
DST_USER, DST_PASS = "drain-dst-admin", "drain-dst-secret-7Tm2"
UPLOAD_THREADS = 16


def log(msg: str) -> None:
    print(f"[drain {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tool_command(name: str, settings: dict[str, str], src: MinioServer, dst: MinioServer,
                 workdir: Path) -> tuple[list[str], dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("S3_SYNC_", "MINIO_", "MC_", "AWS_"))}
    if name == "mc":
        return ([find_tool("mc"), "mirror", "--watch", "src/src-mc", "dst/dst-mc"],
                {**base, "MC_CONFIG_DIR": str(workdir / "mc-config"),
                 "MC_HOST_src": f"http://{SRC_USER}:{SRC_PASS}@{src.host}",
                 "MC_HOST_dst": f"http://{DST_USER}:{DST_PASS}@{dst.host}"})
    return ([sys.executable, "-m", "replicator", "run"],
            {**base, "MINIO_ENDPOINT": src.endpoint, "MINIO_ACCESS_KEY": SRC_USER, "MINIO_SECRET_KEY": SRC_PASS,
             "MINIO_BUCKET": f"src-{name}", "S3_SYNC_ENABLED": "true", "S3_SYNC_ENDPOINT": dst.endpoint,
             "S3_SYNC_ACCESS_KEY": DST_USER, "S3_SYNC_SECRET_KEY": DST_PASS, "S3_SYNC_BUCKET": f"dst-{name}",
             "S3_SYNC_HTTP_HOST": HOST, "S3_SYNC_HTTP_PORT": str(free_port()), "S3_SYNC_INTERVAL": "3600",
             "S3_SYNC_LOG_LEVEL": "warning", "NO_COLOR": "1", **settings})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=3000, help="objects per tool and round (default 3000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=VAR=VALUE[,VAR=VALUE]",
                        help="also measure replicator with these settings, e.g. w16=S3_SYNC_WORKERS=16")
    parser.add_argument("--timeout", type=float, default=300, help="give up on a tool after this many seconds")
    args = parser.parse_args()
    tools: dict[str, dict[str, str]] = {"replicator": {}}
    for spec in args.variant:
        name, _, settings = spec.partition("=")
        tools[name] = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
    tools["mc"] = {}

    workdir = Path(tempfile.mkdtemp(prefix="bench-drain-"))
    src = MinioServer("drain-src", SRC_USER, SRC_PASS, workdir=str(workdir / "src")).start()
    dst = MinioServer("drain-dst", DST_USER, DST_PASS, workdir=str(workdir / "dst")).start()
    sc = Minio(src.host, SRC_USER, SRC_PASS, secure=False)
    dc = Minio(dst.host, DST_USER, DST_PASS, secure=False)
    procs: dict[str, subprocess.Popen] = {}
    results: dict[str, list[float]] = {name: [] for name in tools}
    try:
        for name, settings in tools.items():
            sc.make_bucket(f"src-{name}")
            dc.make_bucket(f"dst-{name}")
            argv, env = tool_command(name, settings, src, dst, workdir)
            with open(workdir / f"{name}.log", "wb") as out:
                procs[name] = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        time.sleep(6)  # subscribed: both tools log nothing at warning level, so wait
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited: see {workdir / f'{name}.log'}")
        uploads = HttpClient(src.endpoint, connect_timeout=10, read_timeout=60, maxsize=UPLOAD_THREADS)
        credentials = Credentials(SRC_USER, SRC_PASS)
        payload = os.urandom(MiB)

        def put(bucket: str, key: str, size: int) -> None:
            response = signed_request(uploads, "PUT", object_path(f"/{bucket}", key), region="us-east-1",
                                      credentials=credentials, body=payload[:size])
            response.read()
            if response.status != 200:
                raise RuntimeError(f"PUT {key}: HTTP {response.status}")

        names = list(tools)
        for round_ in range(args.rounds):
            object_sizes = sizes(args.objects, seed=round_)
            for name in names if round_ % 2 == 0 else names[::-1]:
                prefix = f"r{round_}/"
                cpu = cpu_seconds(procs[name].pid)
                started = time.monotonic()
                with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
                    list(pool.map(lambda i: put(f"src-{name}", f"{prefix}o{i:06d}", object_sizes[i]),
                                  range(args.objects)))
                uploaded = time.monotonic() - started
                while sum(1 for _ in dc.list_objects(f"dst-{name}", prefix=prefix, recursive=True)) < args.objects:
                    if time.monotonic() - started > args.timeout:
                        raise SystemExit(f"{name}: not all {args.objects} objects arrived in {args.timeout:g} s")
                    time.sleep(0.05)
                took = time.monotonic() - started
                results[name].append(args.objects / took)
                log(f"{name:<12} round {round_ + 1}: uploads {args.objects / uploaded:.0f}/s; all at the "
                    f"destination after {took:.1f} s: {args.objects / took:.0f} objects/s; "
                    f"tool CPU {cpu_seconds(procs[name].pid) - cpu:.1f} s")
                time.sleep(2)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(15)
        src.close()
        dst.close()
    print("\n| tool | objects/s drained, per round |\n|---|---|")
    for name, rates in results.items():
        print(f"| {name} | {', '.join(f'{r:.0f}' for r in rates)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
