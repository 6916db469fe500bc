"""The bus between the kernel and its workers: Redis, or in memory for one process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from ..clock import Clock
from .base import Bus, Message, StreamEntry, Subscription, Tx

__all__ = ["Bus", "Message", "StreamEntry", "Subscription", "Tx", "open_bus"]

_CLOSE_GRACE_S = 5.0


@asynccontextmanager
async def open_bus(
    redis_url: str | None,
    *,
    clock: Clock | None = None,
    reconnect_timeout_s: float = 30.0,
    backoff_max_s: float = 2.0,
) -> AsyncIterator[Bus]:
    """The bus for `redis_url` (checked with a ping), or a `MemoryBus` on `clock` for None.

    Raises `BusUnavailable` (naming the URL, password masked) if Redis cannot be reached within
    `reconnect_timeout_s`, `BusError` if it refuses the credentials. `clock` drives only the
    memory bus: Redis keeps its own time, and reconnect backoff is real waiting on a real socket.
    """
    bus: Bus
    if redis_url is None:
        from .memory import MemoryBus

        bus = MemoryBus(clock=clock)
    else:
        from .redis import RedisBus

        redis_bus = RedisBus.from_url(
            redis_url, reconnect_timeout_s=reconnect_timeout_s, backoff_max_s=backoff_max_s
        )
        try:
            await redis_bus.ping()
        except BaseException:
            with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
                await redis_bus.aclose()
            raise
        bus = redis_bus
    try:
        yield bus
    finally:
        with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
            await bus.aclose()
