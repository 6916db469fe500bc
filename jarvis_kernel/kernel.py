"""`Kernel`: builds the services, runs them in one task group, drains on stop.

Embedded use::

    async with Kernel.from_config(load_config("swarm.toml")) as kernel:
        await kernel.submit(Task(task_id="t-1", description="...", required_skills=["react"]))
        outcome = await kernel.wait_for("t-1")

The kernel touches no signal handler and no global event loop; `cli.py` does that for
``python -m jarvis_kernel run``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import msgspec

from .bus import Bus
from .clock import Clock, SystemClock
from .config import Config
from .market.auctioneer import Auctioneer
from .protocol import Event, Keys, PauseInfo, SwarmPaused, SwarmResumed, Task, encode
from .market.records import event_fields

__all__ = ["Kernel"]

log = logging.getLogger(__name__)


class Kernel:
    """The kernel's services in one process. Use as an async context manager."""

    def __init__(
        self,
        config: Config,
        *,
        bus: Bus | None = None,
        clock: Clock | None = None,
        runtime: Any | None = None,
        start_workers: bool = True,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.keys = Keys(config.bus.namespace)
        self._bus = bus
        self.runtime = runtime
        self.start_workers = start_workers
        self._stack = AsyncExitStack()
        self._tg: anyio.abc.TaskGroup | None = None
        self.auctioneer: Auctioneer | None = None

    @classmethod
    def from_config(cls, config: Config, *, clock: Clock | None = None, **kwargs: Any) -> Kernel:
        """A kernel with the default bus (Redis if configured, else in memory)."""
        return cls(config, clock=clock, **kwargs)

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("the kernel is not running")
        return self._bus

    @property
    def market(self) -> Auctioneer:
        if self.auctioneer is None:
            raise RuntimeError("the kernel is not running")
        return self.auctioneer

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Kernel:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        cfg = self.config
        if self._bus is None:
            from .bus import open_bus  # type: ignore[attr-defined]

            self._bus = await self._stack.enter_async_context(
                open_bus(cfg.bus.redis_url, clock=self.clock,
                         reconnect_timeout_s=cfg.bus.reconnect_timeout_s,
                         backoff_max_s=cfg.bus.reconnect_backoff_max_s)
            )
        self.auctioneer = Auctioneer(bus=self._bus, keys=self.keys, clock=self.clock,
                                     market=cfg.market, liveness=cfg.liveness,
                                     events_maxlen=cfg.bus.events_maxlen)
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.push_async_callback(self._cancel)
        await self._tg.start(self.auctioneer.run)
        if self.runtime is not None:
            await self._stack.enter_async_context(self.runtime)
            self._stack.push_async_callback(self._stop_workers)
            if self.start_workers:
                for spec in cfg.workers:
                    await self.runtime.start(spec)

    async def _stop_workers(self) -> None:
        assert self.runtime is not None
        with anyio.move_on_after(self.config.liveness.dead_after_s * 3, shield=True):
            for worker_id in list(self.runtime.workers()):
                await self.runtime.stop(worker_id, grace_s=self.config.liveness.dead_after_s * 2)

    async def _cancel(self) -> None:
        """Drain: no new auction; those open finish; then the services stop."""
        assert self._tg is not None and self.auctioneer is not None
        self.auctioneer.drain()
        with anyio.move_on_after(self.config.market.window_s * 2 + 1, shield=True):
            await self.auctioneer.wait_idle()
        self._tg.cancel_scope.cancel()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._stack.__aexit__(et, e, tb)

    # ------------------------------------------------------------------ API
    async def submit(self, task: Task | Mapping[str, Any]) -> str:
        """Submit a task (a `Task` or a dict in wire shape). Returns its id.

        Raises `ProtocolError` for an invalid task and `DuplicateTask` for a live duplicate.
        """
        if not isinstance(task, Task):
            from .protocol import decode

            task = decode(encode(dict(task)), Task)
        await self.market.submit(task)
        return task.task_id

    @asynccontextmanager
    async def finished_events(self) -> AsyncIterator[anyio.abc.ObjectReceiveStream[Event]]:
        """A stream of the events that end tasks (completed or dead), from now on."""
        send, receive = anyio.create_memory_object_stream[Event](max_buffer_size=10_000)
        remove = self.market.add_listener(send.send_nowait)
        try:
            async with receive:
                yield receive
        finally:
            remove()
            send.close()

    async def wait_for(self, *task_ids: str) -> dict[str, Event]:
        """Wait until every task in `task_ids` has ended; return the ending event of each.

        Subscribe before submitting (or use `run_tasks`) to be sure not to miss a fast end.
        """
        async with self.finished_events() as events:
            return await _collect(events, set(task_ids))

    async def run_tasks(self, tasks: list[Task]) -> dict[str, Event]:
        """Submit `tasks` and wait until all have ended."""
        async with self.finished_events() as events:
            for task in tasks:
                await self.submit(task)
            return await _collect(events, {t.task_id for t in tasks})

    async def pause(self, reason: str, *, by: str = "operator") -> None:
        """Pause the swarm: nothing is announced and workers start no new task."""
        info = PauseInfo(reason=reason, at_ms=self.clock.time_ms(), by=by)
        await self.bus.set(self.keys.paused, encode(info))
        await self._event(SwarmPaused(at_ms=info.at_ms, reason=reason))
        self.market.set_paused(True)

    async def resume(self, reason: str = "") -> None:
        await self.bus.delete(self.keys.paused)
        await self._event(SwarmResumed(at_ms=self.clock.time_ms(), reason=reason))
        self.market.set_paused(False)

    async def _event(self, event: Event) -> None:
        await self.bus.xadd(self.keys.events, event_fields(event), maxlen=self.config.bus.events_maxlen)

    def stats(self) -> dict[str, Any]:
        market = self.market
        return {
            "counts": dict(market.stats.counts),
            "ignoredBids": dict(market.stats.ignored_bids),
            "openAuctions": market.open_auctions,
            "queued": market.queued,
            "paused": market.paused,
        }


async def _collect(events: anyio.abc.ObjectReceiveStream[Event], wanted: set[str]) -> dict[str, Event]:
    done: dict[str, Event] = {}
    async for event in events:
        if event.task_id in wanted:
            done[event.task_id] = event
            if len(done) == len(wanted):
                break
    return done


_ = msgspec
