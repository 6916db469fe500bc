"""FakeClock: time moves only when the test says, and sleepers wake in deadline order."""

from __future__ import annotations

import anyio

from jarvis_kernel.clock import FakeClock, SystemClock, run_with_timeout


async def test_sleepers_wake_in_deadline_order_when_time_passes() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper, "late", 3.0)
            tg.start_soon(sleeper, "early", 1.0)
            await clock.wait_for_sleepers(2)
            await clock.advance(0.5)
            assert woke == []
            await clock.advance(2.9)
    assert woke == [("early", 1.0), ("late", 3.0)]
    assert clock.monotonic() == 3.4


async def test_time_ms_follows_monotonic() -> None:
    clock = FakeClock(epoch_ms=1_000)
    await clock.advance(1.25)
    assert clock.time_ms() == 2_250


async def test_run_with_timeout_on_fake_time() -> None:
    clock = FakeClock()
    never = anyio.Event()
    results = []

    async def wait() -> None:
        results.append(await run_with_timeout(clock, 2.0, never.wait))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await clock.wait_for_sleepers(1)
            await clock.advance(2.0)
    assert results == [(False, None)]
    done = anyio.Event()
    done.set()
    assert await run_with_timeout(clock, 2.0, done.wait) == (True, None)
    assert await run_with_timeout(clock, None, done.wait) == (True, None)


def test_system_clock_reads() -> None:
    clock = SystemClock()
    assert clock.time_ms() > 1_600_000_000_000
    assert clock.monotonic() <= clock.monotonic()
