"""The `bus` fixture: every contract test runs once on MemoryBus and once on RedisBus.

`BusHarness.advance(s)` lets time pass for the bus's own timers (TTLs, block timeouts, idle
times): on MemoryBus it waits until every task is blocked and then advances the FakeClock;
on RedisBus, whose timers are the server's, it really waits — there the wait *is* the thing
under test, so keep the durations tiny.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import pytest

from jarvis_kernel.bus import Bus
from jarvis_kernel.bus.memory import MemoryBus
from jarvis_kernel.clock import FakeClock


@dataclass
class BusHarness:
    bus: Bus
    kind: str
    clock: FakeClock | None

    async def advance(self, seconds: float) -> None:
        if self.clock is not None:
            await anyio.wait_all_tasks_blocked()
            await self.clock.advance(seconds)
            await anyio.wait_all_tasks_blocked()
        else:
            await anyio.sleep(seconds)

    async def settle(self) -> None:
        """Let every other task run until it blocks (memory) or a round trip passes (redis)."""
        if self.clock is not None:
            await anyio.wait_all_tasks_blocked()
        else:
            await self.bus.ping()


@pytest.fixture(params=["memory", "redis"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[BusHarness]:
    if request.param == "memory":
        clock = FakeClock()
        bus: Bus = MemoryBus(clock=clock)
        yield BusHarness(bus, "memory", clock)
        await bus.aclose()
        return
    request.applymarker(pytest.mark.redis)
    url = request.getfixturevalue("redis_url")
    from jarvis_kernel.bus.redis import RedisBus

    redis_bus = RedisBus.from_url(url, reconnect_timeout_s=5.0)
    try:
        yield BusHarness(redis_bus, "redis", None)
    finally:
        await redis_bus.aclose()


@pytest.fixture
def bus(harness: BusHarness) -> Bus:
    return harness.bus
