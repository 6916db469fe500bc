"""CPU a worker spends on one announcement: receiving it, and sending its bid.

A driver publishes an announcement every 2 ms on a throwaway redis-server; one subscriber
process reads them through `RedisBus.subscribe` and answers each one, and reports the CPU it
used per announcement (`time.process_time`, after a warm-up). Ways to answer:

- ``raw``: no bus, a bare asyncio stream with a hiredis reader, receive only (the floor);
- ``receive``: the bus's subscription, no bid;
- ``publish``: a bid with `RedisBus.publish` (its reply is read);
- ``unconfirmed``: a bid with `RedisBus.publish_unconfirmed` (what workers send).

    python benchmarks/bid_cpu.py [--messages 3000] [--runs 3] [--ways raw receive ...]

The ways run alternated, run by run; medians are printed (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import hiredis

from jarvis_kernel.bus.redis import RedisBus
from jarvis_kernel.testing import RedisServer

WAYS = ("raw", "receive", "publish", "unconfirmed")
ANNOUNCE, BID = "market:w00", "bids:t-1"
WARM = 100


async def _raw(host: str, port: int, count: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(hiredis.pack_command(("SUBSCRIBE", ANNOUNCE)))
    parser, seen, started = hiredis.Reader(), 0, 0.0
    while parser.gets() is False:  # the subscription's confirmation
        parser.feed(await reader.read(65536))
    print("ready", flush=True)
    while seen < count:
        parser.feed(await reader.read(65536))
        while (reply := parser.gets()) is not False:
            if isinstance(reply, list) and reply[0] == b"message":
                seen += 1
                started = time.process_time() if seen == WARM else started
    print((time.process_time() - started) / (count - WARM) * 1e6, flush=True)
    writer.close()


async def _subscriber(url: str, way: str, count: int) -> None:
    """Read `count` announcements, answer each as `way` says, print CPU us per message."""
    if way == "raw":
        host, port = url.removeprefix("redis://").split("/")[0].split(":")
        return await _raw(host, int(port), count)
    bus = RedisBus.from_url(url)
    seen, started = 0, 0.0
    async with bus.subscribe(channels=[ANNOUNCE]) as sub:
        print("ready", flush=True)
        async for message in sub:
            seen += 1
            started = time.process_time() if seen == WARM else started
            if way == "publish":
                await bus.publish(BID, message.data)
            elif way == "unconfirmed":
                await bus.publish_unconfirmed(BID, message.data)
            if seen == count:
                break
    print((time.process_time() - started) / (count - WARM) * 1e6, flush=True)
    await bus.aclose()


async def _drive(url: str, count: int) -> None:
    bus = RedisBus.from_url(url)  # the subscriber listens: it said "ready"
    for _ in range(count + 10):  # a few spare: none may be lost before the last
        await bus.publish(ANNOUNCE, b"announce")
        await asyncio.sleep(0.002)
    await bus.aclose()


def _once(url: str, way: str, count: int) -> float:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", url, way, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        asyncio.run(_drive(url, count))
        return float(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--serve", nargs=3, metavar=("URL", "WAY", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        url, way, count = args.serve
        asyncio.run(_subscriber(url, way, int(count)))
        return
    cpu: dict[str, list[float]] = {way: [] for way in args.ways}
    with RedisServer() as server:
        for _ in range(args.runs):
            for way in args.ways:
                cpu[way].append(_once(server.url, way, args.messages))
    for way, values in cpu.items():
        runs = ", ".join(f"{v:.0f}" for v in sorted(values))
        print(f"{way:>12}: {statistics.median(values):6.1f} us of CPU per announcement ({runs})")


if __name__ == "__main__":
    main()
