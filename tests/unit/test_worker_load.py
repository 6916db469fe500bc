"""How the auctioneer counts what a worker holds when the worker's own word on it (the load
in its bids and heartbeats) comes a moment late.

Bids and events come on separate connections, so the kernel can read a bid after the end of
a task the bid counted, and the heartbeat's load can be a beat old. Neither may make a slot
freed look taken: the worker would be left out of the next auctions (and, all workers busy,
a task would spend its rounds on nobody and fall back to the shared list).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel

from jarvis_kernel.bus.memory import MemoryBus
from jarvis_kernel.clock import FakeClock
from jarvis_kernel.config import LivenessConfig, MarketConfig
from jarvis_kernel.market.auctioneer import Auctioneer
from jarvis_kernel.protocol import (
    Announce,
    Bid,
    Keys,
    Task,
    TaskCompleted,
    WorkerInfo,
    decode,
    encode,
)


class _Swarm:
    """An auctioneer on a FakeClock and MemoryBus, and workers played by hand."""

    def __init__(self, auctioneer: Auctioneer, bus: MemoryBus, keys: Keys) -> None:
        self.auctioneer, self.bus, self.keys = auctioneer, bus, keys
        self.announces: list[Announce] = []

    async def settle(self) -> None:
        for _ in range(50):
            await anyio.lowlevel.checkpoint()

    async def announced(self, task_id: str) -> Announce:
        while not any(a.task_id == task_id for a in self.announces):
            await self.settle()
        return next(a for a in self.announces if a.task_id == task_id)

    async def bid(self, announce: Announce, worker: str, *, score: float, load: int) -> None:
        bid = Bid(
            task_id=announce.task_id,
            round=announce.round,
            worker_id=worker,
            score=score,
            model="gemini:flash",
            load=load,
            capacity=1,
        )
        await self.bus.publish(self.keys.bids(announce.task_id), encode(bid))
        await self.settle()

    async def awarded(self, worker: str, task_id: str) -> None:
        while await self.bus.llen(self.keys.tasks_for(worker)) == 0:
            await self.settle()
        assert task_id.encode() in (await self.bus.lrange(self.keys.tasks_for(worker), 0, -1))[0]

    async def complete(self, worker: str, task_id: str) -> None:
        """`worker` takes `task_id` from its list and ends it; the kernel reads the end."""
        raw = await self.bus.lmove(self.keys.tasks_for(worker), self.keys.processing(worker))
        assert raw is not None
        end = TaskCompleted(at_ms=0, task_id=task_id, worker_id=worker, attempt=1)
        await self.bus.xadd(self.keys.events, {"event": encode(end)})
        await self.bus.lrem(self.keys.processing(worker), 1, raw)
        while task_id.encode() in await self.bus.hgetall(self.keys.internal("live")):
            await self.settle()


@asynccontextmanager
async def _swarm(*workers: str) -> AsyncIterator[_Swarm]:
    clock = FakeClock()
    bus, keys = MemoryBus(clock=clock), Keys("load")
    for worker in workers:
        info = WorkerInfo(worker_id=worker, model="gemini:flash", capacity=1)
        await bus.hset(keys.workers, {worker: encode(info)})
        await bus.zadd(keys.heartbeats, {worker: clock.time_ms()})
    auctioneer = Auctioneer(
        bus=bus,
        keys=keys,
        clock=clock,  # nobody advances it: windows close only when every eligible answered
        market=MarketConfig(window_s=30.0, max_rounds=1, pause_poll_s=1000.0),
        liveness=LivenessConfig(heartbeat_s=1000.0, dead_after_s=1e6),
    )
    swarm = _Swarm(auctioneer, bus, keys)

    async def listen(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with bus.subscribe(channels=[keys.market]) as sub:
            task_status.started()
            async for message in sub:
                swarm.announces.append(decode(message.data, Announce))

    async with anyio.create_task_group() as tg:
        await tg.start(listen)
        await tg.start(auctioneer.run)
        with anyio.fail_after(10):
            yield swarm
        tg.cancel_scope.cancel()
    await bus.aclose()


async def test_a_bid_read_after_the_end_it_counted_does_not_take_the_slot() -> None:
    async with _swarm("w", "v") as swarm:
        await swarm.auctioneer.submit(Task(task_id="t-a"))
        await swarm.bid(await swarm.announced("t-a"), "w", score=0.9, load=0)
        await swarm.bid(await swarm.announced("t-a"), "v", score=0.1, load=0)
        await swarm.awarded("w", "t-a")
        # w, holding t-a, hears t-b and answers that it is full; the kernel reads that
        # answer only after it has read the end of t-a
        await swarm.auctioneer.submit(Task(task_id="t-b"))
        b = await swarm.announced("t-b")
        assert b.eligible == ["v"]
        await swarm.complete("w", "t-a")
        await swarm.bid(b, "w", score=0.0, load=1)
        await swarm.bid(b, "v", score=0.5, load=0)
        await swarm.awarded("v", "t-b")
        # w's slot is free: the next task is announced to it
        await swarm.auctioneer.submit(Task(task_id="t-c"))
        assert (await swarm.announced("t-c")).eligible == ["w"]


async def test_the_end_of_a_task_frees_the_slot_a_heartbeat_counted() -> None:
    async with _swarm("w") as swarm:
        await swarm.auctioneer.submit(Task(task_id="t-a"))
        await swarm.bid(await swarm.announced("t-a"), "w", score=0.9, load=0)
        await swarm.awarded("w", "t-a")
        await swarm.bus.hset(swarm.keys.load, {"w": b"1"})  # its heartbeat while on t-a
        await swarm.auctioneer.refresh_workers()
        await swarm.complete("w", "t-a")
        await swarm.auctioneer.submit(Task(task_id="t-b"))
        assert (await swarm.announced("t-b")).eligible == ["w"]
