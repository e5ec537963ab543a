#!/usr/bin/env python3
"""A TCP proxy that adds a round-trip time, for benchmarks over a simulated WAN.

    python scripts/latency_proxy.py --target 127.0.0.1:9000 --rtt-ms 80 [--port 0] [--window 4MiB]

``tc netem`` is not available on the machines this runs on, so the delay is added in
user space: every chunk read from one side is written to the other once half the
round-trip time has passed since it arrived. Reading does not wait for writing, so the
delay is a latency, not a throughput cap; but each direction of a connection holds at
most half of ``--window`` in flight, so one connection carries at most about
window / RTT, as a TCP connection with that receive window would across a real WAN.
Bandwidth limits and packet loss are not modelled.

TLS passes through untouched: the client's handshake is with the server behind the
proxy, so each new connection pays the handshake's round trips, as it would.

The proxy prints ``listening on 127.0.0.1:<port>`` once it accepts connections, then
serves until killed. It only ever listens on 127.0.0.1.

With ``--stats FILE``, a SIGUSR1 writes to FILE (JSON) how many connections were opened
and the most open at once since the previous SIGUSR1, and starts counting again: the
parallelism a tool really used, whatever its flags say.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import time

HOST = "127.0.0.1"
CHUNK = 64 * 1024


class Direction:
    """One direction of one connection: bytes read at t are written at t + delay."""

    def __init__(self, delay: float, limit: int):
        self.delay = delay
        self.limit = limit  # bytes in flight at most
        self.chunks: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.in_flight = 0
        self.room = asyncio.Event()
        self.room.set()

    async def read(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(CHUNK):
                await self.room.wait()
                self.in_flight += len(data)
                if self.in_flight >= self.limit:
                    self.room.clear()
                self.chunks.put_nowait((time.monotonic() + self.delay, data))
        except (ConnectionError, OSError):
            pass
        finally:
            self.chunks.put_nowait(None)

    async def write(self, writer: asyncio.StreamWriter) -> None:
        try:
            while (chunk := await self.chunks.get()) is not None:
                due, data = chunk
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                self.in_flight -= len(data)
                if self.in_flight < self.limit:
                    self.room.set()
            if writer.can_write_eof():
                writer.write_eof()  # half-close, as the sender did
        except (ConnectionError, OSError):
            pass


class Counts:
    """Connections since the last report: opened, open now, the most open at once."""

    def __init__(self) -> None:
        self.opened = self.open = self.peak = self.reports = 0

    def report(self, path: str) -> None:
        self.reports += 1
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"report": self.reports, "opened": self.opened, "peak": self.peak, "open": self.open}, f)
        os.replace(tmp, path)  # whole or not at all, for the reader polling it
        self.opened, self.peak = 0, self.open


async def serve(target: tuple[str, int], rtt: float, window: int, port: int, stats: str | None) -> None:
    counts = Counts()
    if stats:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, counts.report, stats)

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        counts.opened += 1
        counts.open += 1
        counts.peak = max(counts.peak, counts.open)
        try:
            await forward(client_reader, client_writer)
        finally:
            counts.open -= 1

    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        # The delay of the connection's own set-up: the handshake's SYN/SYN-ACK round trip.
        await asyncio.sleep(rtt)
        out, back = Direction(rtt / 2, window // 2), Direction(rtt / 2, window // 2)
        await asyncio.gather(out.read(client_reader), out.write(upstream_writer),
                             back.read(upstream_reader), back.write(client_writer))
        for writer in (upstream_writer, client_writer):
            writer.close()

    server = await asyncio.start_server(relay, HOST, port)
    print(f"listening on {HOST}:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(|KiB|MiB)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4MiB)")
    return int(m.group(1)) * {"": 1, "KiB": 1024, "MiB": 1024 * 1024}[m.group(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="host:port to forward to (loopback)")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round-trip time to add, in milliseconds")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument("--window", type=size, default=size("4MiB"),
                        help="bytes in flight per connection, both directions together (default 4MiB)")
    parser.add_argument("--stats", help="on SIGUSR1, write the connection counts since the last one to this file")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    if host not in (HOST, "localhost"):
        parser.error("--target must be on 127.0.0.1")
    asyncio.run(serve((HOST, int(port)), args.rtt_ms / 1000, args.window, args.port, args.stats))


if __name__ == "__main__":
    main()
