"""`WorkerAgent`: the worker side of the wire protocol (``docs/protocol.md``).

One agent is one worker. `WorkerAgent.run` registers it, then runs three loops in one task
group until a stop is requested:

- heartbeat: every ``liveness.heartbeat_s`` (on the `Clock`) ``ZADD heartbeats`` and
  ``HSET load``, and a fresh look at ``<ns>:swarm:paused``: while it exists the worker
  refuses, takes and starts only the tasks it exempts (``exemptTaskIds``);
- listen: one subscription to ``<ns>:market`` and ``<ns>:control:<id>``; every announce
  still open is answered exactly once per (taskId, round), with 0.0 when the worker cannot
  take it; control commands ``dump``/``pause``/``resume``/``stop``;
- take: ``BLMOVE tasks:<id> -> processing:<id>`` (and ``LMOVE <ns>:tasks`` when its own
  list is empty) whenever a slot is free, each task then run by `jobs.JobRunner`.

A stop drains: nothing new is taken, tasks in hand finish, then the worker removes itself
from ``workers``/``heartbeats``/``load`` and writes ``worker.stopped``. Cancelling `run`
(a kill) skips all of that, as a crash would: what was in hand stays in ``processing:<id>``
for the kernel to take back.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc

from .. import __version__
from ..bus.base import Bus, Message, Subscription, Tx
from ..clock import Clock
from ..config import LivenessConfig, ScoringConfig, WorkerConfig
from ..control import paused_info
from ..errors import ProtocolError
from ..market.bounds import scoring_id
from ..market.scoring import bid_score
from ..protocol import (
    Announce,
    Assignment,
    Bid,
    Control,
    Event,
    Keys,
    MessageRejected,
    PauseInfo,
    WorkerInfo,
    WorkerStarted,
    WorkerState,
    WorkerStopped,
    dead_letter,
    decode,
    encode,
)
from .executors import Executor, make_executor
from .jobs import Job, JobRunner
from .memory import WorkerMemory, load_memory

__all__ = ["WorkerAgent"]

log = logging.getLogger(__name__)

_ANSWERED_LIMIT = 4096
_SHARED_TRIES = 8


class WorkerAgent:
    """One worker speaking the wire protocol over a `Bus`. See the module docstring.

    `poll_s` bounds how long a ``BLMOVE`` blocks, and so how long the shared list goes
    untried: when idle, after each empty wait on its own list; when busy, before the
    first take from its own list once `poll_s` has passed since the last try (a task that
    fell back to the shared list is not left there while the worker's own list keeps it
    busy). `drain_grace_s` bounds the clean-up writes once the drain is done.
    """

    def __init__(
        self,
        spec: WorkerConfig,
        *,
        bus: Bus,
        keys: Keys,
        clock: Clock,
        scoring: ScoringConfig,
        liveness: LivenessConfig,
        memory_dir: Path | None,
        executor: Executor | None = None,
        events_maxlen: int = 100_000,
        poll_s: float = 1.0,
        drain_grace_s: float = 5.0,
        take: Literal["own", "shared"] = "own",
    ) -> None:
        self.spec = spec
        self.worker_id = spec.id
        self._bus = bus
        self._keys = keys
        self._clock = clock
        self._scoring = scoring
        self._liveness = liveness
        self._memory_dir = memory_dir
        self._executor = executor if executor is not None else make_executor(spec)
        self._events_maxlen = events_maxlen
        self._poll_s = poll_s
        self._shared_tried_at = clock.monotonic()
        self._take = take
        self._drain_grace_s = drain_grace_s
        self.memory = WorkerMemory(spec.id, spec.model, spec.expertise)
        self.jobs: dict[tuple[str, int], Job] = {}
        self.recent_errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=10)
        self.paused = False
        self.pause_info: PauseInfo | None = None
        """The swarm's pause as last read (`None`: not paused)."""
        self._stopping = False
        self._stop_reason = ""
        self._stop = anyio.Event()
        self._changed = anyio.Event()
        self._slots = anyio.Semaphore(spec.capacity)
        self._answered: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self._runner = JobRunner(self)
        self.registered = anyio.Event()
        """Set once the worker is registered and listening (as ``task_status.started``)."""

    # ------------------------------------------------------------------ public API

    @property
    def keys(self) -> Keys:
        return self._keys

    @property
    def bus(self) -> Bus:
        return self._bus

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def scoring(self) -> ScoringConfig:
        return self._scoring

    @property
    def memory_dir(self) -> Path | None:
        return self._memory_dir

    @property
    def executor(self) -> Executor:
        return self._executor

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def load(self) -> int:
        """Tasks in hand: taken into ``processing:<id>`` and not finished."""
        return len(self.jobs)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Drain: take nothing new, finish what is in hand, deregister, return from `run`."""
        if not self._stopping:
            self._stopping = True
            self._stop_reason = reason
            self._stop.set()
            self.notify()

    @property
    def swarm_paused(self) -> bool:
        return self.pause_info is not None

    def may_run(self, task_id: str) -> bool:
        """May `task_id` start now: the worker is not paused and the swarm's pause exempts it."""
        info = self.pause_info
        return not self.paused and (info is None or task_id in info.exempt_task_ids)

    def may_take(self) -> bool:
        """Should tasks be taken now: not paused, or paused with some task exempt."""
        info = self.pause_info
        return not self.paused and (info is None or bool(info.exempt_task_ids))

    def pause(self) -> None:
        """Bid 0 and start nothing new until `resume`."""
        self.paused = True
        self.notify()

    def resume(self) -> None:
        self.paused = False
        self.notify()

    async def dump(self) -> None:
        """Write a ``worker.state`` event: what this worker is doing now."""
        await self.emit(
            WorkerState(at_ms=self._clock.time_ms(), worker_id=self.worker_id, state=self.state())
        )

    def state(self) -> dict[str, Any]:
        """A JSON-able picture of this worker (the body of ``worker.state``)."""
        now = self._clock.monotonic()
        if self._stopping:
            doing = "stopping"
        elif self.paused or self.swarm_paused:
            doing = "paused"
        else:
            doing = "busy" if self.jobs else "idle"
        return {
            "state": doing,
            "tasks": [job.describe(now) for job in self.jobs.values()],
            "recentErrors": list(self.recent_errors),
            "load": self.load,
            "capacity": self.spec.capacity,
            "paused": self.paused,
            "swarmPaused": self.swarm_paused,
            "model": self.spec.model,
            "expertise": dict(sorted(self.memory.expertise.items())),
            "stats": {"completed": self.memory.completed, "failed": self.memory.failed},
        }

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Register, serve until a stop is requested, drain, deregister."""
        self.memory, error = await load_memory(
            self._memory_dir, self.worker_id, model=self.spec.model, expertise=self.spec.expertise
        )
        if error is not None:
            self.note_error(None, "memory.format", str(error))
        keys = self._keys
        # Announcements come on this worker's own channel (`WorkerInfo.direct_announce`).
        channels = [keys.market_for(self.worker_id), keys.control(self.worker_id)]
        async with self._bus.subscribe(channels) as sub:
            await self._register()
            self.registered.set()
            task_status.started()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat_loop)
                tg.start_soon(self._listen, sub)
                await self._work()
                tg.cancel_scope.cancel()
        with anyio.move_on_after(self._drain_grace_s, shield=True):
            await self._deregister()

    # ------------------------------------------------------------------ shared helpers

    def notify(self) -> None:
        """Wake everything waiting for a change of pause/stop state or of free slots."""
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, ready: Callable[[], bool]) -> bool:
        """Wait until `ready()` (checked after each change of pause or stop state).

        False if a stop came first.
        """
        while not ready():
            if self._stopping:
                return False
            await self._changed.wait()
        return True

    async def emit(self, event: Event) -> None:
        await self._bus.xadd(
            self._keys.events, {"event": encode(event)}, maxlen=self._events_maxlen
        )

    def event_tx(self, tx: Tx, event: Event) -> Tx:
        return tx.xadd(self._keys.events, {"event": encode(event)}, maxlen=self._events_maxlen)

    async def reject(self, source: str, error: str, raw: bytes) -> None:
        """Dead-letter a payload that failed to decode, and write ``message.rejected``."""
        now = self._clock.time_ms()
        log.warning("worker %s rejected a message on %s: %s", self.worker_id, source, error)
        tx = Tx().lpush(self._keys.deadletter, encode(dead_letter(source, error, raw, now)))
        rejected = MessageRejected(
            at_ms=now, worker_id=self.worker_id, source=source, error=error[:1000]
        )
        await self._bus.execute(self.event_tx(tx, rejected))

    def note_error(self, task_id: str | None, error_key: str, error: str) -> None:
        self.recent_errors.append(
            {
                "taskId": task_id,
                "errorKey": error_key,
                "error": error[:500],
                "atMs": self._clock.time_ms(),
            }
        )

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            worker_id=self.worker_id,
            model=self.spec.model,
            expertise={k: min(1.0, max(0.0, v)) for k, v in self.memory.expertise.items()},
            evidence={k: v for k, v in self.memory.evidence.items() if v > 0.0},
            capacity=self.spec.capacity,
            version=__version__,
            direct_announce=True,
        )

    async def publish_info(self) -> None:
        await self._bus.hset(self._keys.workers, {self.worker_id: encode(self.info())})

    # ------------------------------------------------------------------ registration

    def _beat(self, tx: Tx) -> Tx:
        keys = self._keys
        tx.zadd(keys.heartbeats, {self.worker_id: float(self._clock.time_ms())})
        return tx.hset(keys.load, {self.worker_id: str(self.load)})

    async def _register(self) -> None:
        keys, now = self._keys, self._clock.time_ms()
        tx = self._beat(Tx().hset(keys.workers, {self.worker_id: encode(self.info())}))
        started = WorkerStarted(
            at_ms=now, worker_id=self.worker_id, model=self.spec.model, capacity=self.spec.capacity
        )
        await self._bus.execute(self.event_tx(tx, started))
        self.pause_info = await paused_info(self._bus, keys)

    async def _deregister(self) -> None:
        keys, wid = self._keys, self.worker_id
        tx = Tx().hdel(keys.workers, wid).zrem(keys.heartbeats, wid).hdel(keys.load, wid)
        reason = self._stop_reason or "stopped"
        stopped = WorkerStopped(at_ms=self._clock.time_ms(), worker_id=wid, reason=reason)
        await self._bus.execute(self.event_tx(tx, stopped))

    async def _heartbeat_loop(self) -> None:
        while True:
            await self._clock.sleep(self._liveness.heartbeat_s)
            await self._bus.execute(self._beat(Tx()))
            await self.refresh_pause()

    async def refresh_pause(self) -> PauseInfo | None:
        """Read ``<ns>:swarm:paused`` now; wake the waiting loops if it changed."""
        info = await paused_info(self._bus, self._keys)
        if info != self.pause_info:
            self.pause_info = info
            self.notify()
        return info

    # ------------------------------------------------------------------ market and control

    async def _listen(self, sub: Subscription) -> None:
        control = self._keys.control(self.worker_id)
        async for message in sub:
            if message.channel == control:
                await self._on_control(message)
            else:
                await self._on_announce(message)

    async def _on_announce(self, message: Message) -> None:
        try:
            announce = decode(message.data, Announce)
        except ProtocolError as exc:
            await self.reject(message.channel, str(exc), message.data)
            return
        key = (announce.task_id, announce.round)
        if announce.closes_at_ms <= self._clock.time_ms() or key in self._answered:
            return
        self._answered[key] = None
        if len(self._answered) > _ANSWERED_LIMIT:
            self._answered.popitem(last=False)
        not_waited_for = announce.eligible is not None and self.worker_id not in announce.eligible
        if not_waited_for and self.load >= self.spec.capacity:
            return  # full, and the kernel does not wait for it: a refusal would only cost
        willing = await self._may_bid(announce)
        # what it bids from, read once and after the await (learning may have moved it)
        reading = self.memory.bid_expertise()  # optimistic by its evidence: exploration
        score = (
            bid_score(
                announce,
                expertise=reading,
                model=self.spec.model,
                recent_files=self.memory.recent_files,
                now_ms=self._clock.time_ms(),
                config=self._scoring,
            )
            if willing
            else 0.0
        )
        bid = Bid(
            task_id=announce.task_id,
            round=announce.round,
            worker_id=self.worker_id,
            score=score,
            model=self.spec.model,
            load=self.load,
            capacity=self.spec.capacity,
            # lets the kernel bound this worker's bids while it is silent (early close)
            scoring=scoring_id(self._scoring, self.memory.policy),
            weights={s: reading.get(s, 0.0) for s in announce.required_skills},
        )
        # a lost bid only lets the window run to its deadline: no reply to wait for
        await self._bus.publish_unconfirmed(self._keys.bids(announce.task_id), encode(bid))

    async def _may_bid(self, announce: Announce) -> bool:
        """Does `announce` get a bid above 0 (a score)? Not unless free, unpaused and not
        stopping.

        While the swarm is paused only an exempt task gets a bid; one that is not exempt by
        the pause last read is checked against a fresh read (the kernel announces nothing
        else while paused, so it is likely a pause made since, for this very task).
        """
        if self._stopping or self.paused:
            return False
        if not self.may_run(announce.task_id):
            await self.refresh_pause()
            if not self.may_run(announce.task_id):
                return False
        # Tasks in hand only: the kernel counts awards not yet taken against the capacity
        # itself, and asking Redis here would cost a round trip on every bid.
        return self.spec.capacity - self.load > 0

    async def _on_control(self, message: Message) -> None:
        try:
            command = decode(message.data, Control).command
        except ProtocolError as exc:
            await self.reject(message.channel, str(exc), message.data)
            return
        log.info("worker %s: control %s", self.worker_id, command)
        if command == "dump":
            await self.dump()
        elif command == "pause":
            self.pause()
        elif command == "resume":
            self.resume()
        else:
            self.request_stop("stop command")

    # ------------------------------------------------------------------ taking tasks

    async def _work(self) -> None:
        """Take and run tasks until a stop is requested; return once all are done."""
        async with anyio.create_task_group() as jobs:
            async with anyio.create_task_group() as taking:
                taking.start_soon(self._take_loop, jobs)
                await self._stop.wait()
                taking.cancel_scope.cancel()
            # A move the cancelled BLMOVE made but never returned is in hand too.
            await self._adopt_orphans(jobs)

    async def _take_loop(self, jobs: anyio.abc.TaskGroup) -> None:
        while True:
            await self.wait_until(self.may_take)
            await self._slots.acquire()
            try:
                raw = await self._take_one()
            except BaseException:
                self._slots.release()
                raise
            if raw is None:
                self._slots.release()
            else:
                self._runner.accept(raw, jobs, release=self._slots.release)

    async def _take_one(self) -> bytes | None:
        keys, wid = self._keys, self.worker_id
        if self._take == "shared":  # a plain FCFS worker: only the shared list, blocking on it
            return await self._bus.blmove(keys.tasks, keys.processing(wid), self._poll_s)
        due = self._clock.monotonic() - self._shared_tried_at >= self._poll_s
        if due and self._shared_open():
            raw = await self._take_shared()
            if raw is not None:
                return raw
        raw = await self._bus.blmove(keys.tasks_for(wid), keys.processing(wid), self._poll_s)
        if raw is None and self._shared_open():
            raw = await self._take_shared()
        return raw

    def _shared_open(self) -> bool:
        """May it take from the shared list now? Not while paused: no task there is exempt."""
        return not (self.paused or self.swarm_paused)

    async def _take_shared(self) -> bytes | None:
        """A task from the shared FCFS list that this worker's model may run.

        One that requires another model is put back at the far end, where a worker with that
        model will find it (the kernel's fallback does not look at models); up to
        `_SHARED_TRIES` tries per call, so a list full of such tasks costs little.
        """
        shared, processing = self._keys.tasks, self._keys.processing(self.worker_id)
        self._shared_tried_at = self._clock.monotonic()
        for _ in range(_SHARED_TRIES):
            # shielded: a stop between the move and the putting back would leave the task
            # in processing, where the drain would adopt and run it
            with anyio.CancelScope(shield=True):
                raw = await self._bus.lmove(shared, processing)
                if raw is None or self._model_may_run(raw):
                    return raw
                await self._bus.execute(Tx().lrem(processing, 1, raw).lpush(shared, raw))
        return None

    def _model_may_run(self, raw: bytes) -> bool:
        """False for a task requiring another model; an invalid one goes on to be rejected."""
        try:
            required = decode(raw, Assignment).required_model
        except ProtocolError:
            return True
        return required is None or required == self.spec.model

    async def _adopt_orphans(self, jobs: anyio.abc.TaskGroup) -> None:
        held = collections.Counter(job.raw for job in self.jobs.values())
        for raw in await self._bus.lrange(self._keys.processing(self.worker_id), 0, -1):
            if held[raw] > 0:
                held[raw] -= 1
            else:
                self._runner.accept(raw, jobs, release=None)
