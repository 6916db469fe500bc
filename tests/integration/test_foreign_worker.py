"""A foreign worker, written with nothing but redis-py and docs/protocol.md, wins and runs tasks.

Nothing from jarvis_kernel is used on the worker's side: this is what an existing Node.js
worker would have to do.
"""

from __future__ import annotations

import json
import time

import anyio
import pytest
import redis.asyncio as aioredis

from jarvis_kernel import Kernel, Task
from jarvis_kernel.config import Config, MarketConfig

pytestmark = pytest.mark.redis

NS = "foreign"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def foreign_worker(
    url: str, worker_id: str, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    r = aioredis.Redis.from_url(url)
    info = {
        "workerId": worker_id,
        "model": "node:legacy",
        "expertise": {"react": 0.9},
        "capacity": 1,
    }
    await r.hset(f"{NS}:workers", worker_id, json.dumps(info))
    await r.zadd(f"{NS}:heartbeats", {worker_id: now_ms()})
    await r.hset(f"{NS}:load", worker_id, 0)
    pubsub = r.pubsub()
    await pubsub.subscribe(f"{NS}:market")

    async def bids() -> None:
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            announce = json.loads(message["data"])
            await r.zadd(f"{NS}:heartbeats", {worker_id: now_ms()})  # alive: heartbeat as we go
            score = 0.95 if "react" in announce["requiredSkills"] else 0.0
            bid = {
                "taskId": announce["taskId"],
                "round": announce["round"],
                "workerId": worker_id,
                "score": score,
                "model": "node:legacy",
                "load": 0,
                "capacity": 1,
            }
            await r.publish(f"{NS}:bids:{announce['taskId']}", json.dumps(bid))

    async def work() -> None:
        while True:
            raw = await r.blmove(
                f"{NS}:tasks:{worker_id}", f"{NS}:processing:{worker_id}", 0, "RIGHT", "LEFT"
            )
            task = json.loads(raw)
            base = {
                "atMs": now_ms(),
                "taskId": task["taskId"],
                "workerId": worker_id,
                "attempt": task["attempt"],
            }
            await r.xadd(f"{NS}:events", {"event": json.dumps({"type": "task.started", **base})})
            await r.xadd(
                f"{NS}:events",
                {
                    "event": json.dumps(
                        {"type": "task.progress", **base, "tokenUsage": 42, "note": "thinking"}
                    )
                },
            )
            await r.xadd(
                f"{NS}:events",
                {
                    "event": json.dumps(
                        {
                            "type": "task.completed",
                            **base,
                            "result": {"by": "node"},
                            "tokenUsage": 8,
                        }
                    )
                },
            )
            await r.lrem(f"{NS}:processing:{worker_id}", 1, raw)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(bids)
            tg.start_soon(work)
            task_status.started()
    finally:
        with anyio.CancelScope(shield=True):
            await pubsub.aclose()
            await r.aclose()


async def test_foreign_worker_wins_and_completes(redis_url: str) -> None:
    config = Config(market=MarketConfig(window_s=2.0))
    config = Config(
        bus=config.bus.__class__(redis_url=redis_url, namespace=NS), market=config.market
    )
    tasks = [
        Task(task_id=f"ui-{i}", required_skills=["react"], description="a button") for i in range(5)
    ]
    with anyio.fail_after(30):
        async with Kernel.from_config(config) as kernel, anyio.create_task_group() as tg:
            await tg.start(foreign_worker, redis_url, "node-1")
            await kernel.market.refresh_workers()
            ended = await kernel.run_tasks(tasks)
            tg.cancel_scope.cancel()
    assert {e.task_id: type(e).__name__ for e in ended.values()} == {
        t.task_id: "TaskCompleted" for t in tasks
    }
    assert {e.worker_id for e in ended.values()} == {"node-1"}
    assert all(e.result == {"by": "node"} for e in ended.values())  # type: ignore[attr-defined]
    # Early close: one eligible worker answered, so no award waited for the 2 s window.
    assert kernel.market.stats.award_ms and max(kernel.market.stats.award_ms) < 1000
