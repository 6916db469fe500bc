"""A scripted worker that speaks the protocol with nothing but `Bus` calls.

It bids a fixed score, takes its tasks with BLMOVE, and reports what the test tells it to.
It stands in for a foreign worker and lets market tests control every answer. Options:
``load`` (the load its bids report: a number or a function of the announcement; 0),
``progress_tokens`` (a ``task.progress`` with that many tokens right after the start, for
token spikes), ``token_usage`` (the total reported on completion); control commands on
``<ns>:control:<id>`` are recorded in ``controls``; a closed ``hold`` keeps a started task
in hand without progress (a stall).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from jarvis_kernel.bus import Bus
from jarvis_kernel.clock import Clock
from jarvis_kernel.protocol import (
    Announce,
    Assignment,
    Bid,
    Control,
    Event,
    Keys,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    WorkerInfo,
    decode,
    encode,
)


class ScriptedWorker:
    def __init__(
        self,
        bus: Bus,
        keys: Keys,
        clock: Clock,
        worker_id: str,
        *,
        score: float | Callable[[Announce], float | None] = 0.5,
        load: int | Callable[[Announce], int] = 0,
        capacity: int = 1,
        model: str = "gemini:flash",
        fail_with: str | None = None,
        heartbeat_s: float = 1.0,
        progress_tokens: Callable[[Assignment], int] | None = None,
        token_usage: int = 10,
    ) -> None:
        self.bus, self.keys, self.clock = bus, keys, clock
        self.worker_id, self.capacity, self.model = worker_id, capacity, model
        self.score, self.load = score, load
        self.fail_with = fail_with
        self.heartbeat_s = heartbeat_s
        self.progress_tokens = progress_tokens
        self.token_usage = token_usage
        self.controls: list[str] = []
        self.controlled = anyio.Event()  # set at each control command (replace to re-arm)
        self.announces: list[Announce] = []
        self.ran: list[Assignment] = []
        self.hold = anyio.Event()  # set to let tasks finish; set at start unless held
        self.hold.set()
        self.gate = anyio.Event()  # bids wait here: a closed gate keeps auctions open
        self.gate.set()
        self.holding_bid = anyio.Event()  # set when a bid waits at a closed gate

    async def register(self) -> None:
        info = WorkerInfo(worker_id=self.worker_id, model=self.model, capacity=self.capacity)
        await self.bus.hset(self.keys.workers, {self.worker_id: encode(info)})
        await self.heartbeat()

    async def heartbeat(self) -> None:
        await self.bus.zadd(self.keys.heartbeats, {self.worker_id: self.clock.time_ms()})

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self.register()
        control = self.keys.control(self.worker_id)
        subscription = self.bus.subscribe(channels=[self.keys.market, control])
        async with subscription as sub, anyio.create_task_group() as tg:
            tg.start_soon(self._take_loop)
            tg.start_soon(self._heartbeat_loop)
            task_status.started()
            async for message in sub:
                if message.channel == control:
                    self.controls.append(decode(message.data, Control).command)
                    self.controlled.set()
                    continue
                announce = decode(message.data, Announce)
                self.announces.append(announce)
                score = self.score(announce) if callable(self.score) else self.score
                if score is None:
                    continue  # stay silent
                if not self.gate.is_set():
                    self.holding_bid.set()
                    await self.gate.wait()
                bid = Bid(
                    task_id=announce.task_id,
                    round=announce.round,
                    worker_id=self.worker_id,
                    score=score,
                    model=self.model,
                    load=self.load(announce) if callable(self.load) else self.load,
                    capacity=self.capacity,
                )
                await self.bus.publish(self.keys.bids(announce.task_id), encode(bid))

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.clock.sleep(self.heartbeat_s)
            await self.heartbeat()

    async def _take_loop(self) -> None:
        queue, processing = (
            self.keys.tasks_for(self.worker_id),
            self.keys.processing(self.worker_id),
        )
        while True:
            raw = await self.bus.blmove(queue, processing, timeout_s=None)
            if raw is None:
                continue
            task = decode(raw, Assignment)
            self.ran.append(task)
            await self._event(
                TaskStarted(
                    at_ms=self.clock.time_ms(),
                    task_id=task.task_id,
                    worker_id=self.worker_id,
                    attempt=task.attempt,
                )
            )
            if self.progress_tokens is not None:
                await self._event(
                    TaskProgress(
                        at_ms=self.clock.time_ms(),
                        task_id=task.task_id,
                        worker_id=self.worker_id,
                        attempt=task.attempt,
                        token_usage=self.progress_tokens(task),
                    )
                )
            await self.hold.wait()
            end: Event
            if self.fail_with:
                end = TaskFailed(
                    at_ms=self.clock.time_ms(),
                    task_id=task.task_id,
                    worker_id=self.worker_id,
                    attempt=task.attempt,
                    error_key=self.fail_with,
                    error="scripted failure",
                )
            else:
                end = TaskCompleted(
                    at_ms=self.clock.time_ms(),
                    task_id=task.task_id,
                    worker_id=self.worker_id,
                    attempt=task.attempt,
                    result={"by": self.worker_id},
                    token_usage=self.token_usage,
                )
            await self._event(end)
            await self.bus.lrem(processing, 1, raw)

    async def _event(self, event: Event) -> None:
        await self.bus.xadd(self.keys.events, {"event": encode(event)})
