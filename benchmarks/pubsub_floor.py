"""The floor under the auction's announce-to-award latency: a bare pub/sub round trip.

One process publishes a ping on a channel; N responder processes, each subscribed, answer
on another channel at once (no decoding, no scoring); the publisher waits for all N
answers. That is the message pattern of one auction with early close (announce, every
eligible worker bids), without anything the kernel or the workers do around it. Both ends
use redis.asyncio with hiredis, as the kernel and workers do, on a throwaway redis-server.

    python benchmarks/pubsub_floor.py [--rounds 2000] [--responders 1 4 16]

Prints p50/p99 in ms per responder count (and --json for a machine-readable line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

from redis.asyncio import Redis

from jarvis_kernel.testing import RedisServer

PING, PONG = "floor:ping", "floor:pong"


async def respond(url: str, name: str) -> None:
    """A responder: answer every ping with one pong, forever."""
    redis = Redis.from_url(url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(PING)
    print("ready", flush=True)
    async for message in pubsub.listen():
        if message["type"] == "message":
            await redis.publish(PONG, name)


async def measure(url: str, responders: int, rounds: int) -> list[float]:
    redis = Redis.from_url(url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(PONG)
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        await redis.publish(PING, b"x")
        got = 0
        while got < responders:
            message = await pubsub.get_message(timeout=5.0)
            if message is not None and message["type"] == "message":
                got += 1
        times.append((time.perf_counter() - start) * 1000)
    await pubsub.aclose()
    await redis.aclose()
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(url: str, responders: int, rounds: int) -> dict[str, float]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--respond", url, f"r{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(responders)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        times = asyncio.run(measure(url, responders, rounds))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    warm = times[len(times) // 10 :]  # the first tenth warms connections and caches
    return {
        "responders": responders,
        "p50_ms": round(statistics.median(warm), 3),
        "p99_ms": round(percentile(warm, 0.99), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--responders", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--respond", nargs=2, metavar=("URL", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.respond:
        asyncio.run(respond(*args.respond))
        return
    with RedisServer() as server:
        results = [run(server.url, n, args.rounds) for n in args.responders]
    for result in results:
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"{result['responders']:>3} responder(s): p50 {result['p50_ms']:.3f} ms, "
                f"p99 {result['p99_ms']:.3f} ms"
            )


if __name__ == "__main__":
    main()
