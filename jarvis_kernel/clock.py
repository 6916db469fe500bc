"""Time, as the kernel's policies see it.

Every window, heartbeat, stall threshold, backoff and debounce goes through a `Clock`, so
tests advance a `FakeClock` instead of sleeping. `SystemClock` is the real one.

Two readings are offered: `monotonic()` for deadlines and durations (seconds), and
`time_ms()` for timestamps on the wire (integer milliseconds since the Unix epoch).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["Clock", "FakeClock", "SystemClock", "run_with_timeout"]

T = TypeVar("T")


class Clock(Protocol):
    """The source of time for every policy decision."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...

    def time_ms(self) -> int:
        """Milliseconds since the Unix epoch, for timestamps on the wire."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SystemClock:
    """The real clock: `time.monotonic`, `time.time` and `anyio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when a test calls `advance`.

    Sleepers wake in deadline order when the clock passes their deadline. `advance` yields
    to the event loop after each wake-up so that woken tasks run before time moves on,
    which keeps cause and effect in order (as trio's ``MockClock`` does).
    """

    def __init__(self, *, start_s: float = 0.0, epoch_ms: int = 1_800_000_000_000) -> None:
        self._now = start_s
        self._start = start_s
        self._epoch_ms = epoch_ms
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time_ms(self) -> int:
        return self._epoch_ms + round((self._now - self._start) * 1000)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), event))
        await event.wait()

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock (useful to know a loop is parked)."""
        return sum(1 for _, _, ev in self._sleepers if not ev.is_set())

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking every sleeper whose deadline is passed."""
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, event = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            event.set()
            await _settle()
        self._now = target
        await _settle()

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Yield until at least `count` tasks sleep on this clock (use under `fail_after`)."""
        while self.sleepers < count:
            await anyio.lowlevel.checkpoint()


async def _settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await anyio.lowlevel.checkpoint()


async def run_with_timeout(
    clock: Clock, timeout_s: float | None, fn: Callable[[], Awaitable[T]]
) -> tuple[bool, T | None]:
    """Run `fn()` until it returns or `timeout_s` of `clock` time passes.

    Returns ``(True, value)`` when it finished and ``(False, None)`` on timeout. With
    `timeout_s` None it waits as long as it takes.
    """
    if timeout_s is None:
        return True, await fn()
    result: list[T] = []
    async with anyio.create_task_group() as tg:

        async def timer() -> None:
            await clock.sleep(timeout_s)
            tg.cancel_scope.cancel()

        tg.start_soon(timer)
        result.append(await fn())
        tg.cancel_scope.cancel()
    return (True, result[0]) if result else (False, None)
