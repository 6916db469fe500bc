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
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from . import control
from .bus import Bus
from .clock import Clock, SystemClock
from .config import Config
from .errors import ConfigError
from .market.auctioneer import Auctioneer
from .protocol import Event, Keys, Task, encode

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
        runtimes: Mapping[str, Any] | None = None,
        start_workers: bool = True,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.keys = Keys(config.bus.namespace)
        self._bus = bus
        self.runtimes: dict[str, Any] = dict(runtimes or {})
        self.start_workers = start_workers
        self._stack = AsyncExitStack()
        self._tg: anyio.abc.TaskGroup | None = None
        self._entered: set[str] = set()
        self.auctioneer: Auctioneer | None = None
        self.librarian: Any | None = None
        self.guardian: Any | None = None

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
            from .bus import open_bus

            self._bus = await self._stack.enter_async_context(
                open_bus(
                    cfg.bus.redis_url,
                    clock=self.clock,
                    reconnect_timeout_s=cfg.bus.reconnect_timeout_s,
                    backoff_max_s=cfg.bus.reconnect_backoff_max_s,
                )
            )
        self.auctioneer = Auctioneer(
            bus=self._bus,
            keys=self.keys,
            clock=self.clock,
            market=cfg.market,
            liveness=cfg.liveness,
            scoring=cfg.scoring,
            events_maxlen=cfg.bus.events_maxlen,
        )
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.push_async_callback(self._cancel)
        own_workers = self.start_workers and bool(cfg.workers)
        self.auctioneer.hold(own_workers)  # no auction before there is anyone to bid
        await self._tg.start(self.auctioneer.run)
        await self._start_librarian()
        if own_workers:
            self._stack.push_async_callback(self._stop_workers)
            for spec in cfg.workers:
                runtime = await self._runtime(spec.runtime)
                # What an earlier run's incarnation left (the kernel was killed, and its
                # workers with it) goes back to the market first, as before any restart.
                taken = await self.auctioneer.reclaim(spec.id, "its worker was started anew")
                if taken:
                    log.info("worker %s: %d task(s) of its last run taken back", spec.id, taken)
                await runtime.start(spec)
            await self.auctioneer.refresh_workers()  # they are registered: see them at once
        # After the workers: the heartbeats it first reads are theirs, not those an earlier
        # run left (which would look dead and be "restarted" while starting).
        await self._start_guardian()
        self.auctioneer.hold(False)

    async def _start_librarian(self) -> None:
        """The librarian: indexes `.memory/` on a schedule and on map changes, answers searches."""
        cfg = self.config
        if not cfg.librarian.enabled:
            return
        if not await anyio.Path(cfg.memory_dir).is_dir():
            log.info("librarian off: memory folder %s does not exist", cfg.memory_dir)
            return
        from .librarian.service import LibrarianService

        self.librarian = LibrarianService.from_config(cfg, bus=self.bus, clock=self.clock)
        assert self._tg is not None
        await self._tg.start(self.librarian.run)

    async def _start_guardian(self) -> None:
        """The guardian: judges the swarm from its events and heartbeats, and intervenes."""
        cfg = self.config
        if not cfg.guardian.enabled:
            return
        from .guardian.service import GuardianService, KernelHooks

        market = self.market

        async def pause(reason: str, exempt: Sequence[str]) -> None:
            await self.pause(reason, by="guardian", exempt=exempt)

        hooks = KernelHooks(
            runtime_of=self._runtime_of,
            reclaim=market.reclaim,
            submit_rca=market.submit,
            pause=pause,
            resume=self.resume,
        )
        self.guardian = GuardianService(
            cfg, bus=self.bus, keys=self.keys, clock=self.clock, kernel_hooks=hooks
        )
        assert self._tg is not None
        await self._tg.start(self.guardian.run)

    def _runtime_of(self, worker_id: str) -> Any | None:
        """The runtime that started `worker_id`, or None for a worker the kernel does not run."""
        for runtime in self.runtimes.values():
            if runtime.status(worker_id).state != "unknown":
                return runtime
        return None

    async def _runtime(self, kind: str) -> Any:
        """The runtime of `kind`, built and entered on first use."""
        if kind not in self.runtimes:
            self.runtimes[kind] = self._build_runtime(kind)
        runtime = self.runtimes[kind]
        if kind not in self._entered:
            await self._stack.enter_async_context(runtime)
            self._entered.add(kind)
        return runtime

    def _build_runtime(self, kind: str) -> Any:
        cfg = self.config
        if kind == "inline":
            from .runtime.inline import InlineRuntime

            return InlineRuntime(
                bus=self.bus,
                keys=self.keys,
                clock=self.clock,
                scoring=cfg.scoring,
                liveness=cfg.liveness,
                memory_dir=Path(cfg.memory_dir),
                events_maxlen=cfg.bus.events_maxlen,
            )
        if kind in ("process", "docker") and not cfg.bus.redis_url:
            raise ConfigError(
                f"runtime {kind!r} needs a Redis bus: set bus.redis_url "
                "(or --redis / JARVIS_REDIS_URL)",
                key="workers.runtime",
            )
        if kind == "process":
            assert cfg.bus.redis_url is not None
            from .runtime.process import ProcessRuntime

            return ProcessRuntime(
                redis_url=cfg.bus.redis_url,
                namespace=cfg.bus.namespace,
                memory_dir=Path(cfg.memory_dir),
                heartbeat_s=cfg.liveness.heartbeat_s,
            )
        if kind == "docker":
            assert cfg.bus.redis_url is not None
            from .runtime.docker import DockerRuntime

            dk = cfg.docker
            return DockerRuntime(
                redis_url=cfg.bus.redis_url,
                namespace=cfg.bus.namespace,
                memory_dir=Path(cfg.memory_dir),
                image=dk.image,
                docker_host=dk.host,
                heartbeat_s=cfg.liveness.heartbeat_s,
                memory_bytes=None if dk.memory_mb is None else dk.memory_mb * 1024 * 1024,
                nano_cpus=None if dk.cpus is None else round(dk.cpus * 1e9),
                network_mode=dk.network_mode,
                read_only_root=dk.read_only_root,
                binds=dk.binds,
                env=dk.env,
                pass_env=dk.pass_env,
                labels=dk.labels,
                start_timeout_s=dk.start_timeout_s,
                connect_timeout_s=dk.connect_timeout_s,
            )
        raise ConfigError(
            f"runtime {kind!r} is not available in this version", key="workers.runtime"
        )

    async def _stop_workers(self) -> None:
        grace = self.config.liveness.dead_after_s * 2
        with anyio.CancelScope(shield=True):  # on the way out: also when being cancelled
            await self._stop_all(grace)

    async def _stop_all(self, grace: float) -> None:
        from .runtime.base import stop_all

        async with anyio.create_task_group() as tg:
            for runtime in self.runtimes.values():
                tg.start_soon(partial(stop_all, runtime, grace_s=grace, margin_s=2.0))

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

    async def pause(self, reason: str, *, by: str = "operator", exempt: Sequence[str] = ()) -> None:
        """Pause the swarm: nothing is announced and workers start no new task.

        The tasks named in `exempt` are the exception: announced, taken and run all the same.
        """
        info = await control.pause(
            self.bus,
            self.keys,
            reason,
            by=by,
            clock=self.clock,
            events_maxlen=self.config.bus.events_maxlen,
            exempt=exempt,
        )
        self.market.set_paused(info)

    async def resume(self, reason: str = "") -> None:
        """Resume a paused swarm (also when it was paused by someone else)."""
        maxlen = self.config.bus.events_maxlen
        await control.resume(self.bus, self.keys, reason, clock=self.clock, events_maxlen=maxlen)
        self.market.set_paused(None)

    def stats(self) -> dict[str, Any]:
        market = self.market
        return {
            "counts": dict(market.stats.counts),
            "ignoredBids": dict(market.stats.ignored_bids),
            "openAuctions": market.open_auctions,
            "queued": market.queued,
            "paused": market.paused,
        }


async def _collect(
    events: anyio.abc.ObjectReceiveStream[Event], wanted: set[str]
) -> dict[str, Event]:
    done: dict[str, Event] = {}
    async for event in events:
        if event.task_id in wanted:
            done[event.task_id] = event
            if len(done) == len(wanted):
                break
    return done
