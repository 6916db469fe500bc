"""The auctioneer: takes tasks in, announces them, collects bids, awards, follows outcomes.

One service (`Auctioneer.run`) with a few loops in one task group:

- intake: ``BLMOVE <ns>:intake -> <ns>:kernel:intake`` (the task is never only in memory),
  then one Tx records it live and removes it from the kernel's intake list;
- dispatch: pops the ready queue (priority, then age) into auctions, up to the cap;
- bids: one pattern subscription on ``<ns>:bids:*`` routes each bid to its open auction,
  which closes when every eligible worker answered or when the bids in hand decide it
  (`auction.bids_decide` on the bounds of `bounds.BoundBook`), else at its deadline
  (`windows.WindowTimer`); whom an auction asks, when it closes and how auctions closing
  together are awarded is in `closing.Closing` (a part of this class);
- outcomes: reads ``<ns>:events`` as consumer group ``kernel`` (started / completed / failed);
- liveness: refreshes the view of workers (capacity, heartbeat, load) and takes back the
  tasks of dead workers.

Which bid wins is decided by `market.auction`; this module only feeds it and acts.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Literal

import anyio
import anyio.lowlevel
import msgspec

from ..bus import Bus, StreamEntry, Tx
from ..clock import Clock, run_with_timeout
from ..config import LivenessConfig, MarketConfig, ScoringConfig
from ..control import paused_info
from ..errors import ProtocolError
from ..protocol import (
    Announce,
    Assignment,
    Bid,
    Event,
    Keys,
    PauseInfo,
    Task,
    TaskAnnounced,
    TaskAssigned,
    TaskCompleted,
    TaskDead,
    TaskFailed,
    TaskFallback,
    TaskRequeued,
    TaskStarted,
    TaskSubmitted,
    WorkerInfo,
    WorkerStarted,
    decode,
    decode_event,
    encode,
)
from .auction import (
    ReceivedBid,
    free_capacity,
    priority_key,
)
from .bounds import NO_BOUND, BoundBook
from .closing import Closing, JointBatch
from .records import TaskRecord, assignment_for, dead_letter_tx, event_fields, removal, transition
from .windows import Auction, WindowTimer

__all__ = ["AuctionStats", "Auctioneer", "DuplicateTask"]

log = logging.getLogger(__name__)
GROUP = "kernel"
_ACK_AFTER_S = 0.02


class DuplicateTask(ProtocolError):
    """A task with this id is still live; it is not run twice."""


class AuctionStats:
    """Counters and recent latencies, for status, the dashboard and the benchmark."""

    def __init__(self, keep: int = 10_000) -> None:
        self.counts: Counter[str] = Counter()
        self.ignored_bids: Counter[str] = Counter()
        self.award_ms: deque[float] = deque(maxlen=keep)


class Auctioneer(Closing):
    """The market's kernel side. Construct, then ``await tg.start(auctioneer.run)``."""

    stats: AuctionStats

    def __init__(
        self,
        *,
        bus: Bus,
        keys: Keys,
        clock: Clock,
        market: MarketConfig,
        liveness: LivenessConfig,
        scoring: ScoringConfig | None = None,
        events_maxlen: int = 100_000,
    ) -> None:
        """`scoring`: the workers' scoring configuration, for the early close on bounds
        (`market.early_close_on_bounds`); without it no worker is bounded."""
        self.bus, self.keys, self.clock = bus, keys, clock
        self.market, self.liveness = market, liveness
        self.events_maxlen = events_maxlen
        self.stats = AuctionStats()
        self._live_key = keys.internal("live")
        self._intake_list = keys.internal("intake")
        self._records: dict[str, bytes] = {}
        self._ready: list[tuple[tuple[int, int], str]] = []
        self._ready_changed = anyio.Event()
        self._auctions: dict[str, Auction] = {}
        self._windows = WindowTimer(clock)
        self._bounds = BoundBook(scoring) if scoring is not None else None
        self._batch: JointBatch | None = None
        self._joint_recheck: float | None = None
        self._slots = anyio.Semaphore(market.max_concurrent_auctions)
        self._tried: dict[str, int] = {}  # task -> rounds that met room, while it waits
        self._committed: Counter[str] = Counter()
        # the order of the kernel's own steps: a worker's last task end read vs. announcements
        self._tick = itertools.count(1)
        self._ended_at: dict[str, int] = {}
        self._ending: set[str] = set()  # completed, counted ended, records being removed
        self._capacity: dict[str, int] = {}
        self._load: dict[str, int] = {}
        self._alive: set[str] = set()
        self._direct: set[str] = set()  # workers listening on their own announcement channel
        self._refresh_now = anyio.Event()
        self._seq = itertools.count()
        self._bid_seq = itertools.count()
        self._pause: PauseInfo | None = None
        self._draining = False
        self._held = False
        self._listeners: list[Callable[[Event], None]] = []
        self._idle = anyio.Event()
        # tasks auctioned even while the swarm is paused (the guardian's root-cause analysis)
        self._exempt: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ public API
    def add_listener(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call `listener` with the event that ends each task (completed or dead).

        Returns a function that removes the listener.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    @property
    def open_auctions(self) -> int:
        return len(self._auctions)

    @property
    def queued(self) -> int:
        return len(self._ready)

    @property
    def paused(self) -> bool:
        return self._pause is not None

    @property
    def pause_info(self) -> PauseInfo | None:
        return self._pause

    def set_paused(self, info: PauseInfo | None) -> None:
        """Follow the swarm's pause (`None`: not paused), as read from ``<ns>:swarm:paused``.

        While paused only the tasks the pause exempts are announced.
        """
        self._pause = info
        self._exempt = frozenset(info.exempt_task_ids) if info is not None else frozenset()
        self._wake_dispatch()

    def hold(self, held: bool) -> None:
        """Hold back (or let go) every auction: the kernel holds them while it starts its own
        workers, so that tasks waiting in the intake are not auctioned to nobody and sent to
        the shared list for want of a bidder."""
        self._held = held
        self._wake_dispatch()

    def drain(self) -> None:
        """Stop announcing: open windows close now and award on the bids at hand.

        A task with no winner keeps its `auctioning` record, so the next start runs it again.
        """
        self._draining = True
        for auction in self._auctions.values():
            auction.done.set()
        self._wake_dispatch()

    async def submit(self, task: Task) -> None:
        """Record `task` live and queue it for auction. Raises `DuplicateTask` if still live.

        While the swarm is paused it waits, unless the pause exempts it.
        """
        if not await self._admit(task, encode(task), from_intake=False):
            raise DuplicateTask(f"task {task.task_id!r} is still live; it is not run twice")

    async def refresh_workers(self) -> None:
        """Read the workers' registrations, heartbeats and loads now."""
        infos = await self.bus.hgetall(self.keys.workers)
        alive_since = self.clock.time_ms() - round(self.liveness.dead_after_s * 1000)
        beats = await self.bus.zrangebyscore(self.keys.heartbeats, alive_since, float("inf"))
        loads = await self.bus.hgetall(self.keys.load)
        capacity, direct = {}, set()
        for worker_id, raw in infos.items():
            try:
                info = decode(raw, WorkerInfo)
                capacity[worker_id] = info.capacity
                if info.direct_announce:
                    direct.add(worker_id)
                if self._bounds is not None:
                    self._bounds.observe_info(
                        worker_id, info.model, info.expertise, evidence=info.evidence
                    )
            except ProtocolError as exc:
                await self._reject(f"{self.keys.workers}/{worker_id}", str(exc), raw)
        self._capacity, self._direct = capacity, direct
        self._alive = {w for w, _ in beats if w in capacity}
        self._load = {w: int(v) for w, v in loads.items() if v.isdigit()}
        self._wake_dispatch()

    # ------------------------------------------------------------------ service
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled. Ready once recovered and listening for bids."""
        await self.bus.xgroup_create(self.keys.events, GROUP)
        await self._recover()
        await self.refresh_workers()
        subscription = self.bus.subscribe(patterns=[self.keys.bids_pattern])
        async with subscription as bids, anyio.create_task_group() as tg:
            tg.start_soon(self._bid_loop, bids)
            tg.start_soon(self._intake_loop)
            tg.start_soon(self._outcome_loop)
            tg.start_soon(self._liveness_loop)
            tg.start_soon(self._pause_loop)
            tg.start_soon(self._dispatch_loop, tg)
            await tg.start(self._windows.run)
            task_status.started()

    async def wait_idle(self) -> None:
        """Return once no auction is open (used when draining)."""
        while self._auctions:
            await anyio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ intake
    async def _recover(self) -> None:
        """Rebuild the in-memory view from Redis after a (re)start."""
        records = await self.bus.hgetall(self._live_key)
        top = 0
        for task_id, raw in records.items():
            try:
                record = decode(raw, TaskRecord)
            except ProtocolError as exc:
                log.error("dropping unreadable live record %s: %s", task_id, exc)
                continue
            self._records[task_id] = raw
            top = max(top, record.seq + 1)
            if record.state in ("queued", "auctioning"):
                self._push_ready(record)
            elif record.state in ("assigned", "running") and record.worker_id:
                self._committed[record.worker_id] += 1
                self._will_learn(record.worker_id, record.task)
            elif record.state == "fallback" and self._bounds is not None:
                self._bounds.shared(task_id, record.task.required_skills)
        self._seq = itertools.count(top)
        for raw in await self.bus.lrange(self._intake_list, 0, -1):
            await self._admit_raw(raw, self._intake_list)

    async def _intake_loop(self) -> None:
        while True:
            raw = await self.bus.blmove(self.keys.intake, self._intake_list, timeout_s=None)
            if raw is not None:
                await self._admit_raw(raw, self.keys.intake)

    async def _admit_raw(self, raw: bytes, source: str) -> None:
        try:
            task = decode(raw, Task)
        except ProtocolError as exc:
            await self._reject(source, str(exc), raw, remove_from=self._intake_list)
            return
        if not await self._admit(task, raw, from_intake=True):
            error = f"duplicate taskId {task.task_id!r}: still live, not run twice"
            await self._reject(source, error, raw, remove_from=self._intake_list)

    async def _admit(self, task: Task, raw: bytes, *, from_intake: bool) -> bool:
        now = self.clock.time_ms()
        record = TaskRecord(task=task, seq=next(self._seq), submitted_ms=now)
        tx, new_raw = transition(self.keys, None, record)
        event = TaskSubmitted(
            at_ms=now,
            task_id=task.task_id,
            priority=task.priority,
            description=task.description[:200],
        )
        self._add_event(tx, event)
        if from_intake:
            tx.lrem(self._intake_list, 1, raw)
        if not await self.bus.execute(tx):
            return False
        self.stats.counts["submitted"] += 1
        self._records[task.task_id] = new_raw or b""
        self._push_ready(record)
        return True

    async def _reject(
        self, source: str, error: str, raw: bytes, remove_from: str | None = None
    ) -> None:
        """Dead-letter a bad payload and say so in an event; never raise."""
        now = self.clock.time_ms()
        tx = dead_letter_tx(Tx(), self.keys, source, error, raw, now)
        self._add_event(tx, _rejected(now, source, error))
        if remove_from is not None:
            tx.lrem(remove_from, 1, raw)
        await self.bus.execute(tx)
        self.stats.counts["rejected"] += 1
        log.warning("rejected message from %s: %s", source, error)

    def _add_event(self, tx: Tx, event: Event) -> None:
        tx.xadd(self.keys.events, event_fields(event), maxlen=self.events_maxlen)

    # ------------------------------------------------------------------ dispatch
    def _push_ready(self, record: TaskRecord) -> None:
        heapq.heappush(
            self._ready, (priority_key(record.task.priority, record.seq), record.task.task_id)
        )
        self._wake_dispatch()

    def _wake_dispatch(self) -> None:
        self._ready_changed.set()

    def _can_dispatch(self) -> bool:
        if not self._ready or self._draining or self._held or not self._has_room():
            return False
        return self._pause is None or self._exempt_ready() is not None

    def _exempt_ready(self) -> int | None:
        """Index in the ready heap of the first task exempt from the pause, if any."""
        if not self._exempt:
            return None
        found = [(key, i) for i, (key, tid) in enumerate(self._ready) if tid in self._exempt]
        return min(found)[1] if found else None

    def _pop_ready(self) -> str:
        """The next task to auction: the head of the queue, or while paused an exempt one."""
        index = self._exempt_ready() if self._pause is not None else None
        if index is None:
            return heapq.heappop(self._ready)[1]
        _, task_id = self._ready.pop(index)
        heapq.heapify(self._ready)
        return task_id

    def _has_room(self) -> bool:
        """Is there a worker with room beyond what the open auctions will take?

        With no live worker registered, auctions run anyway: they end in the shared FCFS
        list, which serves workers that never register (legacy ones).
        """
        if not self._alive:
            return True
        free = self._free()
        return sum(free.get(w, 0) for w in self._alive) > len(self._auctions)

    async def _dispatch_loop(self, tg: anyio.abc.TaskGroup) -> None:
        while True:
            while not self._can_dispatch():
                self._ready_changed = anyio.Event()
                await self._ready_changed.wait()
            await self._slots.acquire()
            if not self._can_dispatch():
                self._slots.release()
                continue
            tg.start_soon(self._auction_slot, self._pop_ready())

    async def _auction_slot(self, task_id: str) -> None:
        try:
            then = await self._auction(task_id)
        finally:
            self._slots.release()
        if then is None:
            return
        if then == "rest":  # out of the slot: resting holds no room for other auctions
            await self.clock.sleep(self.market.window_s)
        raw = self._records.get(task_id)
        if raw is not None:  # "wait": queued again, dispatched once a worker has room
            self._push_ready(decode(raw, TaskRecord))

    # ------------------------------------------------------------------ one auction
    async def _auction(self, task_id: str) -> Literal["rest", "wait"] | None:
        """Run the rounds of one auction; say when it is to be run again, if it is.

        A round that found every worker busy (`Auction.met_room`: none with room, or every
        answer a refusal for want of room) while none has room still does not count towards
        ``max_rounds``: the task goes back to the queue ("wait") and is announced again once
        a worker has room, so a moment when all are busy does not send it to the shared
        list. Nor does a retry wait out its backoff while no worker has room. Every other
        round counts, so an auction run always ends. "rest": the exempt task of a pause,
        after its rounds.
        """
        raw = self._records.get(task_id)
        tried = self._tried.pop(task_id, 0)  # rounds of this run before it waited
        if raw is None:
            return None
        record = decode(raw, TaskRecord)
        # Round numbers grow over the task's whole life (across attempts and restarts):
        # workers answer each (task, round) once, so a round announced again would only meet
        # silence. Each auction run gets up to `max_rounds` rounds that meet room.
        directed = True
        while True:
            outcome = await self._round(record, raw, record.round + 1, directed=directed)
            if outcome is None:
                return None  # awarded, or the record changed under us
            record, raw, met_room = outcome
            directed = False
            if self._draining:
                return None
            room = self._has_room()
            if met_room or room:  # found all busy, but room now: counts, so that it ends
                tried += 1
            if tried >= self.market.max_rounds:
                break
            if not room:
                self._tried[task_id] = tried
                return "wait"
            await self.clock.sleep(self.market.round_backoff_s * 2 ** (tried - 1))
        if self._pause is not None and task_id in self._exempt:
            # The task the pause lets through (the guardian's RCA) does not fall back: no
            # worker takes from the shared list while paused. Auctioned again after a rest.
            return "rest"
        await self._fallback(record, raw)
        return None

    async def _round(
        self, record: TaskRecord, raw: bytes, round_: int, *, directed: bool = False
    ) -> tuple[TaskRecord, bytes, bool] | None:
        """Announce, collect, award one round. `directed`: the first round of an auction
        run may be announced to the likeliest winner first (`_first_asked`).

        None once awarded (or the record changed under us); else the record, and whether
        the round met a worker with room (`Auction.met_room`). With live workers and none
        with room it announces nothing: the task waits for room (`_auction`).
        """
        task = record.task
        free = self._free()
        eligible = {w for w in self._alive if free.get(w, 0) > 0}
        if self._alive and not eligible:
            return record, raw, False
        closes_at_ms = self.clock.time_ms() + round(self.market.window_s * 1000)
        announcing = msgspec.structs.replace(record, state="auctioning", round=round_)
        tx, new_raw = transition(self.keys, raw, announcing)
        announce = Announce(
            task_id=task.task_id,
            round=round_,
            description=task.description,
            required_skills=task.required_skills,
            complexity=task.complexity,
            files=task.files,
            required_model=task.required_model,
            closes_at_ms=closes_at_ms,
            eligible=sorted(eligible),
        )
        auction = Auction(task, round_, eligible, deadline=0.0)
        auction.announce = encode(announce)
        auction.announced_tick = next(self._tick)
        auction.asked = self._first_asked(auction, directed=directed)
        auction.held = (eligible & self._direct) - auction.asked
        audience = auction.asked | self._may_have_room(eligible)
        tx.publish(self.keys.market, auction.announce)
        for worker in sorted(audience):
            tx.publish(self.keys.market_for(worker), auction.announce)
        exempt = task.task_id in self._exempt
        if not exempt:  # announced only while not paused, also if the pause came after the
            tx.require(self.keys.paused, None)  # task left the queue (the Tx is atomic)
        self._add_event(
            tx,
            TaskAnnounced(
                at_ms=self.clock.time_ms(),
                task_id=task.task_id,
                round=round_,
                attempt=record.attempt,
                eligible=len(eligible),
                closes_at_ms=closes_at_ms,
            ),
        )
        self._auctions[task.task_id] = auction
        started = time.perf_counter()
        try:
            if not await self.bus.execute(tx):
                if not exempt and await self._paused_meanwhile():
                    self._push_ready(record)  # it waits for the resume, as if never taken
                else:
                    self._records.pop(task.task_id, None)  # the record changed under us
                return None
            assert new_raw is not None
            self._records[task.task_id] = new_raw
            self.stats.counts["announced"] += 1
            self._open_window(auction)
            winner = await self._winner(auction)
        finally:
            self._closed(task.task_id)
        if winner is None:
            self.stats.counts["no_winner"] += 1
            return announcing, new_raw, not self._alive or auction.met_room()
        await self._award(announcing, new_raw, winner, auction, started)
        return None

    def _closed(self, task_id: str) -> None:
        """The auction of `task_id` is over (awarded, or to be run again)."""
        del self._auctions[task_id]
        batch = self._batch
        if batch is not None and task_id in batch.waiting:
            batch.no_longer_waiting(task_id)
        if not self._auctions:
            self._idle.set()
        else:
            self._reconsider()  # the others may be decided now (or alone again)
        self._wake_dispatch()

    async def _paused_meanwhile(self) -> bool:
        """Is the swarm paused (read now)? Follow it at once if this kernel did not know."""
        info = await paused_info(self.bus, self.keys)
        if info is not None and self._pause is None:
            self.set_paused(info)
        return info is not None

    def _will_learn(self, worker_id: str, task: Task) -> None:
        if self._bounds is not None:
            self._bounds.will_learn(worker_id, task.required_skills)

    async def _award(
        self, record: TaskRecord, raw: bytes, winner: ReceivedBid, auction: Auction, started: float
    ) -> None:
        worker = winner.worker_id  # `_decide` reserved it in `_committed` already
        self._will_learn(worker, record.task)  # before the worker can have it
        now = self.clock.time_ms()
        assigned = msgspec.structs.replace(record, state="assigned", worker_id=worker)
        tx, new_raw = transition(self.keys, raw, assigned)
        tx.lpush(self.keys.tasks_for(worker), encode(assignment_for(assigned, now)))
        auction_ms = (time.perf_counter() - started) * 1000
        self._add_event(
            tx,
            TaskAssigned(
                at_ms=now,
                task_id=record.task.task_id,
                worker_id=worker,
                score=winner.score,
                round=auction.round,
                attempt=record.attempt,
                auction_ms=auction_ms,
                bids=len(auction.bids),
            ),
        )
        # The record as awarded, before the reply: the worker may take the task, run it and
        # end it before the reply is read, and its end is matched against this record.
        self._records[record.task.task_id] = new_raw or b""
        if not await self.bus.execute(tx):
            self._committed[worker] -= 1
            self._records.pop(record.task.task_id, None)
            return
        self.stats.award_ms.append((time.perf_counter() - started) * 1000)
        self.stats.counts["awarded"] += 1

    async def _fallback(self, record: TaskRecord, raw: bytes) -> None:
        now = self.clock.time_ms()
        fallen = msgspec.structs.replace(record, state="fallback", worker_id=None)
        tx, new_raw = transition(self.keys, raw, fallen)
        tx.lpush(self.keys.tasks, encode(assignment_for(fallen, now)))
        self._add_event(
            tx,
            TaskFallback(
                at_ms=now, task_id=record.task.task_id, round=record.round, attempt=record.attempt
            ),
        )
        if self._bounds is not None:
            self._bounds.shared(record.task.task_id, record.task.required_skills)
        self._records[record.task.task_id] = new_raw or b""  # before the reply: see `_award`
        if await self.bus.execute(tx):
            self.stats.counts["fallback"] += 1
        else:
            self._records.pop(record.task.task_id, None)

    def _free(self) -> dict[str, int]:
        return free_capacity(self._capacity, self._committed, self._load)

    # ------------------------------------------------------------------ bids
    async def _bid_loop(self, subscription: Any) -> None:
        async for message in subscription:
            try:
                bid = decode(message.data, Bid)
            except ProtocolError as exc:
                self.stats.ignored_bids["invalid"] += 1
                await self._reject(message.channel, str(exc), message.data)
                continue
            self._on_bid(bid)

    def _note_load(self, bid: Bid, auction: Auction | None) -> None:
        """The load in a bid is the worker's freshest word on what it holds (the heartbeat's
        can be a beat old and would hide a slot freed since), also in a bid that comes late;
        awards not yet finished still count too (`free_capacity`).

        Bids and events come on separate connections, so a bid can be read after the end
        of a task it counted. A bid that may be older than the worker's last end read (for
        an auction announced before that end was read, or too late to tell) lowers the
        load, never raises it: else a slot freed would look taken until the next word.
        """
        worker = bid.worker_id
        if worker not in self._capacity:
            return
        known = self._load.get(worker, 0)
        if bid.load > known and (
            auction is None
            or bid.round != auction.round
            or self._ended_at.get(worker, 0) > auction.announced_tick
        ):
            return
        self._load[worker] = bid.load
        if bid.load < known:
            self._wake_dispatch()

    def _on_bid(self, bid: Bid) -> None:
        auction = self._auctions.get(bid.task_id)
        self._note_load(bid, auction)
        reason = None
        if auction is None:
            reason = "late"
        elif bid.round != auction.round:
            reason = "round"
        elif bid.worker_id not in self._capacity:
            reason = "unknown_worker"
            self._refresh_now.set()
        elif bid.worker_id in auction.answered:
            reason = "duplicate"
        if reason is not None or auction is None:
            self.stats.ignored_bids[reason or "late"] += 1
            return
        auction.answered.add(bid.worker_id)
        auction.bids.append(
            ReceivedBid(
                worker_id=bid.worker_id,
                score=bid.score,
                load=bid.load,
                capacity=bid.capacity,
                seq=next(self._bid_seq),
            )
        )
        if self._bounds is not None:
            self._bound_from_bid(auction, bid)
        if auction.settling or auction.decided or not self.market.early_close:
            return
        if self._jointly():
            self._check_joint()
        else:
            self._check_alone(auction)

    def _bound_from_bid(self, auction: Auction, bid: Bid) -> None:
        """What a bid tells the bound book of its worker."""
        assert self._bounds is not None
        self._check_bound(auction, bid)
        self._bounds.observe_bid(bid.worker_id, bid.scoring)
        if bid.weights and bid.load == 0 and self._owes_nothing(auction, bid.worker_id):
            self._bounds.observe_weights(bid.worker_id, bid.weights)

    def _owes_nothing(self, auction: Auction, worker_id: str) -> bool:
        """Had `worker_id` learned from every task it was given when it bid idle for
        `auction`? Yes if none is awarded to it and not ended, and the last end of one was
        read before the announcement: a bid made idle before learning from a task must
        have been made before taking it, so that task ended after the announcement (bids
        and events come on separate connections: the end can be read first)."""
        if self._committed[worker_id]:
            return False
        return self._ended_at.get(worker_id, 0) < auction.announced_tick

    def _check_bound(self, auction: Auction, bid: Bid) -> None:
        """Count (and stop bounding) a worker whose bid beat its bound: it must not happen."""
        assert self._bounds is not None
        bound = auction.bounds.get(bid.worker_id, NO_BOUND)
        if auction.bounds_gen == self._bounds.generation and bid.score > bound:
            self.stats.counts["bound_exceeded"] += 1
            self._bounds.forget(bid.worker_id)
            log.error(
                "worker %s bid %r for %s over its bound %r: not bounded until it bids again",
                bid.worker_id,
                bid.score,
                bid.task_id,
                bound,
            )

    # ------------------------------------------------------------------ outcomes
    async def _outcome_loop(self) -> None:
        """Follow the event stream. Acknowledgements are owed until the stream is quiet for
        `_ACK_AFTER_S` (or many are owed), then sent in one XACK: while busy, one round trip
        per batch instead of two. Handling is idempotent (a task's record is guarded), so
        what a crash leaves unacknowledged is simply handled again at the next start."""
        events, group = self.keys.events, GROUP
        owed = [
            e.id
            for e in await self._on_entries(
                await self.bus.xreadgroup(events, group, group, pending=True, count=10_000)
            )
        ]
        while True:
            block_s = _ACK_AFTER_S if owed else 5.0
            entries = await self.bus.xreadgroup(events, group, group, count=500, block_s=block_s)
            owed += [e.id for e in await self._on_entries(entries)]
            if owed and (not entries or len(owed) >= 500):
                await self.bus.xack(events, group, *owed)
                owed = []

    async def _on_entries(self, entries: list[StreamEntry]) -> list[StreamEntry]:
        """Handle a batch of events; return it (to be acknowledged).

        The records of the tasks it completes are removed together, in one round trip, at
        the end (or before another event of one of those tasks, to keep each task's order).
        """
        completed: dict[str, tuple[TaskCompleted, TaskRecord, bytes]] = {}
        for entry in entries:
            raw = entry.fields.get("event", b"")
            try:
                event = decode_event(raw)
            except ProtocolError as exc:
                await self._reject(self.keys.events, str(exc), raw)
                continue
            if isinstance(event, TaskCompleted):
                live = self._live_attempt(event)
                if live is not None and live[0].task.task_id not in completed:
                    completed[live[0].task.task_id] = (event, *live)
            elif isinstance(event, TaskStarted | TaskFailed):
                if (event.task_id or "") in completed:
                    await self._remove_completed(completed)
                    completed = {}
                await self._on_outcome(event)
            elif isinstance(event, WorkerStarted) and event.worker_id:
                self._registered(event.worker_id)
        await self._remove_completed(completed)
        return entries

    def _registered(self, worker_id: str) -> None:
        """A worker (re)registered: read it now, and bound it only once it has bid since."""
        if self._bounds is not None:
            self._bounds.forget(worker_id)
        self._refresh_now.set()

    def _live_attempt(self, event: Event) -> tuple[TaskRecord, bytes] | None:
        """The live record `event` is about (and its raw), if of its live attempt."""
        raw = self._records.get(event.task_id or "")
        if raw is None:
            return None
        record = decode(raw, TaskRecord)
        if getattr(event, "attempt", record.attempt) != record.attempt:
            self.stats.counts["superseded"] += 1
            return None  # a late result of an attempt already taken back
        return record, raw

    async def _on_outcome(self, event: TaskStarted | TaskFailed) -> None:
        live = self._live_attempt(event)
        if live is None:
            return
        record, raw = live
        if isinstance(event, TaskStarted):
            await self._on_started(record, raw, event)
        elif await self.retry_or_bury(record, raw, f"failed: {event.error_key}"):
            self._learned(record, event)

    async def _remove_completed(
        self, completed: dict[str, tuple[TaskCompleted, TaskRecord, bytes]]
    ) -> None:
        """Remove the live records of completed tasks (one Tx each, one round trip).

        Their workers have room from the moment their ends are read, not once the records
        are removed: the next auction for them is announced while the removal is on its way
        (a round trip less between a worker's end and its next task). A reclaim of the same
        task meanwhile (`retry_or_bury`) then does not count it ended a second time.
        """
        if not completed:
            return
        done = list(completed.items())
        for task_id, (event, record, _) in done:
            if self._bounds is not None:
                self._bounds.taken(task_id, None)
            self._ending.add(task_id)
            self._release(record)
            self._learned(record, event)
        txs = [removal(self.keys, task_id, raw) for task_id, (_, _, raw) in done]
        try:
            results = await self.bus.execute_many(txs)
        finally:
            self._ending.difference_update(completed)
        for (task_id, (event, _, _)), ok in zip(done, results, strict=True):
            if ok:
                self._records.pop(task_id, None)
                self.stats.counts["completed"] += 1
                self._finished(event)

    async def _on_started(self, record: TaskRecord, raw: bytes, event: TaskStarted) -> None:
        # An awarded task is known to be with its worker already; only a task taken from the
        # shared list needs recording, to learn who holds it.
        if record.state != "fallback":
            return
        if self._bounds is not None:
            self._bounds.taken(record.task.task_id, event.worker_id)
        if record.state == "fallback" and event.worker_id:
            self._committed[event.worker_id] += 1
        running = msgspec.structs.replace(
            record, state="running", worker_id=event.worker_id or record.worker_id
        )
        tx, new_raw = transition(self.keys, raw, running)
        if await self.bus.execute(tx):
            self._records[record.task.task_id] = new_raw or b""

    def _finished(self, event: Event) -> None:
        for listener in list(self._listeners):
            listener(event)

    def _learned(self, record: TaskRecord, event: TaskCompleted | TaskFailed) -> None:
        """The end of a task said the weights its worker bids from now (`event.weights`):
        exact for its bound if the worker owes nothing else it could learn from (no task
        of this kernel's awarded to it and not ended; the worker sends them only when it
        holds no other task). Read after `_release`."""
        worker = record.worker_id
        if (
            self._bounds is not None
            and event.weights
            and worker
            and event.worker_id == worker
            and not self._committed[worker]
        ):
            self._bounds.observe_weights(worker, event.weights)

    def _release(self, record: TaskRecord) -> None:
        """A task awarded (or taken from the shared list) ended: its worker holds one less,
        by the kernel's count and by the load it last reported (which counted it, if it
        was reported since the task was taken; `free_capacity` keeps the larger)."""
        if record.worker_id and record.state in ("assigned", "running"):
            self._committed[record.worker_id] = max(0, self._committed[record.worker_id] - 1)
            if self._load.get(record.worker_id, 0) > 0:
                self._load[record.worker_id] -= 1
            self._ended_at[record.worker_id] = next(self._tick)
            self._wake_dispatch()

    async def retry_or_bury(
        self, record: TaskRecord, raw: bytes, reason: str, *, extra: Tx | None = None
    ) -> bool:
        """Take a task back: auction it again with attempt + 1, or dead-letter it at the last."""
        task_id, now = record.task.task_id, self.clock.time_ms()
        if record.attempt < record.task.max_attempts:
            again = msgspec.structs.replace(
                record, state="queued", attempt=record.attempt + 1, worker_id=None
            )
            tx, new_raw = transition(self.keys, raw, again)
            self._add_event(
                tx, TaskRequeued(at_ms=now, task_id=task_id, attempt=again.attempt, reason=reason)
            )
        else:
            again, new_raw = None, None
            tx = removal(self.keys, task_id, raw)
            dead_letter_tx(
                tx,
                self.keys,
                self._live_key,
                f"task dead after {record.attempt} attempts: {reason}",
                encode(record.task),
                now,
            )
            self._add_event(
                tx, TaskDead(at_ms=now, task_id=task_id, attempts=record.attempt, reason=reason)
            )
        if extra is not None:
            tx.guards.extend(extra.guards)
            tx.ops.extend(extra.ops)
        if not await self.bus.execute(tx):
            return False
        if task_id not in self._ending:  # else counted ended when its end was read
            self._release(record)
        if again is None:
            self._records.pop(task_id, None)
            self.stats.counts["dead"] += 1
            self._finished(
                TaskDead(at_ms=now, task_id=task_id, attempts=record.attempt, reason=reason)
            )
        else:
            self._records[task_id] = new_raw or b""
            self.stats.counts["requeued"] += 1
            self._push_ready(again)
        return True

    # ------------------------------------------------------------------ liveness
    async def _liveness_loop(self) -> None:
        while True:
            await run_with_timeout(self.clock, self.liveness.heartbeat_s, self._refresh_now.wait)
            self._refresh_now = anyio.Event()
            await self.refresh_workers()
            for worker in [w for w, n in self._committed.items() if n > 0 and w not in self._alive]:
                await self.reclaim(worker, "worker dead: no heartbeat")

    async def reclaim(self, worker_id: str, reason: str) -> int:
        """Take back every task awarded to `worker_id` (queued or in hand). Returns how many."""
        taken = 0
        for key in (self.keys.tasks_for(worker_id), self.keys.processing(worker_id)):
            for item in await self.bus.lrange(key, 0, -1):
                taken += await self._reclaim_one(worker_id, key, item, reason)
        return taken

    async def _reclaim_one(self, worker_id: str, key: str, item: bytes, reason: str) -> int:
        try:
            assignment = decode(item, Assignment)
        except ProtocolError as exc:
            await self._reject(key, str(exc), item, remove_from=key)
            return 0
        raw = self._records.get(assignment.task_id)
        record = decode(raw, TaskRecord) if raw else None
        drop = Tx().lrem(key, 1, item)
        if record is None or record.attempt != assignment.attempt or record.worker_id != worker_id:
            await self.bus.execute(drop)  # a stale copy: the task lives on elsewhere
            return 0
        assert raw is not None
        return int(await self.retry_or_bury(record, raw, reason, extra=drop))

    async def _pause_loop(self) -> None:
        while True:
            info = await paused_info(self.bus, self.keys)
            if info != self._pause:
                self.set_paused(info)
            await self.clock.sleep(self.market.pause_poll_s)


def _rejected(at_ms: int, source: str, error: str) -> Event:
    from ..protocol import MessageRejected

    return MessageRejected(at_ms=at_ms, source=source, error=error[:1000])
