"""SIGKILL the kernel at random points, start it again: every task is awarded exactly once per
attempt and completes, and nothing is left half-done in Redis.

The kernel runs as a real subprocess (`python -m jarvis_kernel run --no-workers`) against a
real redis-server; the workers are scripted, in this process, over RedisBus.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter

import anyio
import pytest

from jarvis_kernel.bus.redis import RedisBus
from jarvis_kernel.clock import SystemClock
from jarvis_kernel.protocol import Keys, Task, decode_event, encode
from tests.support.workers import ScriptedWorker

pytestmark = [pytest.mark.redis, pytest.mark.slow]

NS = "crash"
TASKS = 150
KILLS = 4


def start_kernel(url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JARVIS_MARKET_WINDOW_S": "1.0", "JARVIS_LIVENESS_DEAD_AFTER_S": "30"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jarvis_kernel",
            "run",
            "--redis",
            url,
            "--namespace",
            NS,
            "--no-workers",
            "--log-format",
            "plain",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def read_events(bus: RedisBus, keys: Keys, at_least: int) -> None:
    """Return once `at_least` new events were written (or after one empty 1 s read if 0)."""
    await bus.xgroup_create(keys.events, "test-watch", start_id="0")
    seen = 0
    while True:
        seen += len(await bus.xreadgroup(keys.events, "test-watch", "t", count=1000, block_s=1.0))
        if seen >= at_least:
            return


async def all_done(bus: RedisBus, keys: Keys) -> bool:
    return not (
        await bus.hgetall(keys.internal("live"))
        or await bus.llen(keys.intake)
        or await bus.llen(keys.internal("intake"))
    )


async def test_kernel_killed_mid_auction_loses_nothing_and_awards_once(redis_url: str) -> None:
    rng = random.Random(1234)
    keys = Keys(NS)
    bus = RedisBus.from_url(redis_url)
    clock = SystemClock()
    workers = [
        ScriptedWorker(bus, keys, clock, f"w{i}", score=rng.uniform(0.2, 0.9), capacity=2)
        for i in range(3)
    ]
    for i in range(TASKS):
        await bus.lpush(keys.intake, encode(Task(task_id=f"t-{i:03d}", required_skills=["x"])))
    kernel = None
    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for worker in workers:
                    await tg.start(worker.run)
                for cycle in range(KILLS):
                    kernel = start_kernel(redis_url)
                    await read_events(bus, keys, rng.randint(10, 150))  # a random point
                    if cycle % 2 == 0:  # every other kill lands inside an open auction
                        for worker in workers:
                            worker.gate, worker.holding_bid = anyio.Event(), anyio.Event()
                        await workers[0].holding_bid.wait()
                    kernel.send_signal(signal.SIGKILL)
                    kernel.wait()
                    kernel.stderr.close()  # type: ignore[union-attr]
                    for worker in workers:
                        worker.gate.set()
                kernel = start_kernel(redis_url)
                while not await all_done(bus, keys):
                    await read_events(bus, keys, 0)
                tg.cancel_scope.cancel()
    finally:
        if kernel is not None and kernel.poll() is None:
            kernel.terminate()
            kernel.wait()
        if kernel is not None and kernel.stderr is not None:
            kernel.stderr.close()
        await bus.aclose()

    await check_outcome(redis_url, keys, workers)


async def check_outcome(redis_url: str, keys: Keys, workers: list[ScriptedWorker]) -> None:
    events = [decode_event(e.fields["event"]) for e in await bus_entries(redis_url, keys)]
    assigned = Counter((e.task_id, e.attempt) for e in events if type(e).__name__ == "TaskAssigned")
    completed = Counter(e.task_id for e in events if type(e).__name__ == "TaskCompleted")
    announced = [(e.task_id, e.round) for e in events if type(e).__name__ == "TaskAnnounced"]
    rounds_of = Counter(t for t, _ in announced)
    resumed = [t for t, n in rounds_of.items() if n > 1]
    assert resumed, "no auction was interrupted: the test did not test what it says"
    assert len(set(announced)) == len(announced), "a (task, round) was announced twice"
    assert len({t for t, _ in assigned}) == TASKS
    assert max(assigned.values()) == 1, "a task was awarded twice in one attempt"
    ran = Counter(a.task_id for w in workers for a in w.ran)
    assert set(ran) == {f"t-{i:03d}" for i in range(TASKS)}
    assert max(ran.values()) == 1, "a task ran twice"
    assert set(completed) == set(ran)
    check = RedisBus.from_url(redis_url)
    try:
        assert await check.llen(keys.internal("intake")) == 0
        assert await check.llen(keys.deadletter) == 0
        for worker in workers:
            assert await check.llen(keys.processing(worker.worker_id)) == 0
            assert await check.llen(keys.tasks_for(worker.worker_id)) == 0
    finally:
        await check.aclose()


async def bus_entries(url: str, keys: Keys) -> list:  # type: ignore[type-arg]
    bus = RedisBus.from_url(url)
    try:
        return await bus.xrange(keys.events)
    finally:
        await bus.aclose()
