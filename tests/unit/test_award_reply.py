"""An award whose reply comes late: the worker may take the task, run it and end it before
the auctioneer hears that its award Tx went through. The end must still count (the kernel's
copy of the task's record is the awarded one by then), and so must a task put on the shared
list and ended by a worker before the fallback's reply."""

from __future__ import annotations

import random

import anyio
import pytest

from jarvis_kernel.bus.base import Tx
from jarvis_kernel.bus.memory import MemoryBus
from jarvis_kernel.clock import FakeClock
from jarvis_kernel.config import LivenessConfig, MarketConfig
from jarvis_kernel.market.auctioneer import Auctioneer
from jarvis_kernel.protocol import (
    Assignment,
    Keys,
    Task,
    TaskCompleted,
    TaskStarted,
    decode,
    encode,
)

from .test_early_close import CONFIG, Bidder, _settle, register


class _LateReply(MemoryBus):
    """A MemoryBus whose reply to a Tx that pushes a task (to a worker's list or the shared
    one) comes `delay_s` of clock time after the Tx took effect."""

    def __init__(self, *, clock: FakeClock, delay_s: float) -> None:
        super().__init__(clock=clock)
        self._clock, self.delay_s, self.delayed = clock, delay_s, 0

    async def execute(self, tx: Tx) -> bool:
        ok = await super().execute(tx)
        if ok and any(op.name == "LPUSH" and ":tasks" in op.key for op in tx.ops):
            self.delayed += 1
            await self._clock.sleep(self.delay_s)
        return ok


async def _run_and_end(bus: MemoryBus, keys: Keys, clock: FakeClock, worker: str) -> str:
    """`worker` takes the next task from its own list, else the shared one, and ends it."""
    while True:
        for key in (keys.tasks_for(worker), keys.tasks):
            raw = await bus.lmove(key, keys.processing(worker))
            if raw is not None:
                task_id = decode(raw, Assignment).task_id
                for event in (
                    TaskStarted(at_ms=clock.time_ms(), task_id=task_id, worker_id=worker),
                    TaskCompleted(at_ms=clock.time_ms(), task_id=task_id, worker_id=worker),
                ):
                    await bus.xadd(keys.events, {"event": encode(event)})
                return task_id
        await _settle()
        await clock.advance(0.0001)


@pytest.mark.parametrize("fallback", [False, True], ids=["awarded", "shared-list"])
async def test_an_end_read_before_the_reply_to_its_award_counts(fallback: bool) -> None:
    clock = FakeClock()
    bus, keys = _LateReply(clock=clock, delay_s=0.05), Keys("late")
    bidder = Bidder(
        "w", model="gemini:flash", expertise={"react": 0.8}, foreign=False, rng=random.Random(0)
    )
    if fallback:
        bidder.score = lambda announce, now_ms: 0.0  # type: ignore[method-assign]  # refuses
    market = MarketConfig(window_s=0.01, max_rounds=1, pause_poll_s=1000.0)
    liveness = LivenessConfig(heartbeat_s=1000.0, dead_after_s=1e6)
    auctioneer = Auctioneer(
        bus=bus, keys=keys, clock=clock, market=market, liveness=liveness, scoring=CONFIG
    )
    await register(bus, keys, clock, bidder)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(bidder.run, bus, keys, clock)
            await tg.start(auctioneer.run)
            await auctioneer.submit(Task(task_id="t", required_skills=["react"]))
            assert await _run_and_end(bus, keys, clock, "w") == "t"
            while await bus.hget(keys.internal("live"), "t") is not None:
                await _settle()
                await clock.advance(0.001)
            tg.cancel_scope.cancel()
    assert bus.delayed == 1
    assert auctioneer.stats.counts["completed"] == 1
