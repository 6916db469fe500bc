"""The early close on bounds: it never picks another winner than waiting for every bid would.

Pure parts first (`bids_decide`, `BoundBook`, `score_bound`), each also property-style over
seeded random workers and tasks; then the auctioneer itself on the FakeClock and MemoryBus,
with bidders that answer after random delays, learn privately, and sometimes are foreign.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from jarvis_kernel.bus.memory import MemoryBus
from jarvis_kernel.clock import FakeClock
from jarvis_kernel.config import (
    LivenessConfig,
    MarketConfig,
    ModelSpec,
    ScoringConfig,
    WorkerConfig,
)
from jarvis_kernel.market.auction import ReceivedBid, bids_decide, choose_winner
from jarvis_kernel.market.auctioneer import Auctioneer
from jarvis_kernel.market.bounds import NO_BOUND, BoundBook, score_bound, scoring_id
from jarvis_kernel.market.scoring import bid_score, optimistic_expertise
from jarvis_kernel.protocol import (
    Announce,
    Assignment,
    Bid,
    Keys,
    PauseInfo,
    Task,
    TaskCompleted,
    WorkerInfo,
    decode,
    encode,
)
from jarvis_kernel.worker.agent import WorkerAgent
from jarvis_kernel.worker.executors import Completed, ExecutionContext, Outcome
from jarvis_kernel.worker.memory import (
    DEFAULT_POLICY,
    LEGACY_POLICY,
    LearningPolicy,
    learn_with_evidence,
)

CONFIG = ScoringConfig()
SKILLS = ["react", "auth", "sql", "css", "go"]
MODELS = [*ScoringConfig().models, "mystery:model"]  # the last one is not in the table
FILES = ["a.ts", "b.ts", "c.py"]


def bid(worker: str, score: float, load: int = 0, seq: int = 0) -> ReceivedBid:
    return ReceivedBid(worker_id=worker, score=score, load=load, capacity=1, seq=seq)


# --------------------------------------------------------------------------- bids_decide


def test_best_bid_above_every_bound_decides() -> None:
    assert bids_decide([bid("a", 0.8)], {"b": 0.7, "c": 0.79}, {"a": 1, "b": 1, "c": 1})
    assert not bids_decide([bid("a", 0.8)], {"b": 0.7, "c": 0.81}, {"a": 1, "b": 1, "c": 1})


def test_a_tie_with_a_bound_decides_only_without_load() -> None:
    # a later bid of equal score and load ratio 0 loses on arrival order; with load it may win
    free = {"a": 1, "b": 1}
    assert bids_decide([bid("a", 0.8, load=0)], {"b": 0.8}, free)
    busy = ReceivedBid(worker_id="a", score=0.8, load=1, capacity=2, seq=0)
    assert not bids_decide([busy], {"b": 0.8}, {"a": 1, "b": 1})


def test_silent_workers_that_must_refuse_or_have_no_room_do_not_count() -> None:
    assert bids_decide([bid("a", 0.3)], {"b": 0.0, "c": 0.9}, {"a": 1, "b": 1, "c": 0})
    assert bids_decide([], {"b": 0.0}, {"b": 1})  # nobody can win: no winner either way
    assert not bids_decide([bid("a", 0.0)], {"b": 0.2}, {"a": 1, "b": 1})


def test_the_winner_in_hand_must_have_room() -> None:
    bids = [bid("a", 0.9, seq=0), bid("b", 0.5, seq=1)]
    assert not bids_decide(bids, {"c": 0.6}, {"a": 0, "b": 1, "c": 1})
    assert bids_decide(bids, {"c": 0.6}, {"a": 1, "b": 1, "c": 1})


def _random_case(rng: random.Random) -> tuple[list[ReceivedBid], dict[str, float], dict[str, int]]:
    """Bids in arrival order, each worker's bound (>= its bid), and free capacity."""
    grid = [0.0, 0.2, 0.5, 0.5, 0.7, 0.9, 1.0]  # coarse, so that ties are common
    workers = [f"w{i}" for i in range(rng.randint(1, 7))]
    rng.shuffle(workers)
    bids, bounds = [], {}
    for seq, worker in enumerate(workers):
        score = rng.choice(grid)
        bounds[worker] = rng.choice([b for b in grid if b >= score])
        capacity = rng.randint(1, 2)
        bids.append(
            ReceivedBid(
                worker_id=worker,
                score=score,
                load=rng.randint(0, capacity),
                capacity=capacity,
                seq=seq,
            )
        )
    free = {w: rng.choice([0, 1, 1, 1]) for w in workers}
    return bids, bounds, free


def test_property_deciding_early_never_changes_the_winner() -> None:
    rng = random.Random(20261124)
    decided_early = 0
    for _ in range(20_000):
        bids, bounds, free = _random_case(rng)
        final = choose_winner(bids, free)
        for cut in range(len(bids)):
            hand, later = bids[:cut], bids[cut:]
            silent = {b.worker_id: bounds[b.worker_id] for b in later}
            if bids_decide(hand, silent, free):
                assert choose_winner(hand, free) == final, (hand, later, bounds, free)
                decided_early += cut < len(bids)
                break
    assert decided_early > 1000  # the property was exercised, not vacuous


# --------------------------------------------------------------------------- bounds


def _task(rng: random.Random, task_id: str = "t") -> Task:
    return Task(
        task_id=task_id,
        required_skills=rng.sample(SKILLS, rng.randint(0, 4)),
        complexity=rng.choice([0.0, 0.1, 0.3, 0.55, 0.6, 0.9, 1.0, rng.random()]),
        files=rng.sample(FILES, rng.randint(0, 2)),
        required_model=rng.choice([None, None, None, *MODELS]),
    )


def _expertise(rng: random.Random) -> dict[str, float]:
    return {
        s: rng.choice([0.0, 0.05, 0.3, 0.5, 0.8, 0.99, 1.0, 1 / 3, rng.random()])
        for s in rng.sample(SKILLS, rng.randint(0, len(SKILLS)))
    }


def test_property_a_bound_is_never_below_the_bid() -> None:
    """Published expertise, then awards the book hears of, then any outcomes learned.

    The worker learns with any evidence it has, any credit split and any adequacy, and bids
    optimistically by that evidence (exploration), as `WorkerMemory.bid_expertise` does.
    """
    rng = random.Random(7)
    policies = [
        LearningPolicy(),
        LEGACY_POLICY,
        LearningPolicy(rate=0.0, prior_strength=0.5),
        LearningPolicy(optimism=0.0),
        LearningPolicy(optimism=4.0),
        LearningPolicy(optimism=0.5, prior_strength=0.0),
    ]
    for case in range(3000):
        config = ScoringConfig(
            models={"gemini:flash": ModelSpec(capability=0.6, cost=0.2)}
            if case % 5 == 0
            else ScoringConfig().models,
            context_weight=rng.choice([0.0, 0.15, 0.5]),
        )
        policy = rng.choice(policies)
        book = BoundBook(config, policy=policy)
        model, published = rng.choice(MODELS), _expertise(rng)
        pre = [_task(rng).required_skills for _ in range(rng.randint(0, 2))]
        for skills in pre:  # awards recovered before any info was read
            book.will_learn("w", skills)
        evidence = {s: rng.choice([0.0, 0.5, 4.0, 50.0]) for s in published}
        shown = rng.choice([None, evidence, {s: e for s, e in evidence.items() if e < 4.0}])
        book.observe_info("w", model, published, evidence=shown)  # at most what it has
        book.observe_bid("w", scoring_id(config, policy))
        awarded = [_task(rng).required_skills for _ in range(rng.randint(0, 4))]
        for skills in awarded:
            book.will_learn("w", skills)
        if rng.random() < 0.3:  # a stale info read later never lowers the bound
            book.observe_info("w", model, published)
        real = dict(published)
        for skills in rng.sample(pre + awarded, rng.randint(0, len(pre + awarded))):
            real, evidence = learn_with_evidence(
                real,
                evidence,
                skills,
                success=rng.random() < 0.6,
                policy=policy,
                adequacy=rng.choice([1.0, 1.0, 0.4]),
            )
        now = 1_800_000_000_000
        recent = {f: now - rng.randint(0, 10_000_000) for f in rng.sample(FILES, 2)}
        task = _task(rng)
        declared = rng.choice([None, [s for s in published if rng.random() < 0.5]])
        bidding = optimistic_expertise(
            real,
            evidence,
            optimism=policy.optimism,
            prior_strength=policy.prior_strength,
            skills=declared,
        )
        real_bid = bid_score(
            task, expertise=bidding, model=model, recent_files=recent, now_ms=now, config=config
        )
        assert real_bid <= book.bound("w", task), (task, published, real, awarded)


def test_unbounded_workers() -> None:
    book = BoundBook(CONFIG)
    task = Task(task_id="t", required_skills=["react"])
    assert book.bound("stranger", task) == NO_BOUND
    book.observe_info("w", "gemini:flash", {"react": 0.2})
    assert book.bound("w", task) == NO_BOUND  # no bid with this kernel's scoring id yet
    book.observe_bid("w", None)  # a foreign worker
    assert book.bound("w", task) == NO_BOUND
    book.observe_bid("w", scoring_id(ScoringConfig(cost_penalty=0.3)))  # scores otherwise
    assert book.bound("w", task) == NO_BOUND
    book.observe_bid("w", scoring_id(CONFIG))
    assert book.bound("w", task) < 0.6
    book.forget("w")  # it registered again
    assert book.bound("w", task) == NO_BOUND


def test_a_shared_task_may_teach_any_worker_until_taken() -> None:
    book = BoundBook(CONFIG)
    for worker in ("a", "b"):
        book.observe_info(worker, "gemini:flash", {"react": 0.1})
        book.observe_bid(worker, book.scoring_id)
    task = Task(task_id="t", required_skills=["react"])
    before = book.bound("a", task)
    book.shared("fallen", ["react"])
    assert book.bound("a", task) > before and book.bound("b", task) > before
    book.taken("fallen", "a")
    assert book.bound("a", task) > before and book.bound("b", task) == before


def test_required_model_and_weak_models_bound_low() -> None:
    task = Task(task_id="t", required_skills=["go"], complexity=0.9, required_model="gpt:large")
    assert score_bound(task, expertise={"go": 1.0}, model="gemini:pro", config=CONFIG) == 0.0
    hard = Task(task_id="t", required_skills=["go"], complexity=0.9)
    weak = score_bound(hard, expertise={"go": 1.0}, model="local:small", config=CONFIG)
    strong = bid_score(
        hard,
        expertise={"go": 0.5},
        model="gemini:pro",
        recent_files={},
        now_ms=0,
        config=CONFIG,
    )
    assert weak < strong


def test_scoring_id_follows_the_configuration() -> None:
    assert scoring_id(ScoringConfig()) == scoring_id(ScoringConfig())
    assert scoring_id(ScoringConfig()) != scoring_id(ScoringConfig(expertise_weight=0.5))


# --------------------------------------------------------------------------- the auctioneer


class Bidder:
    """A worker that only bids: `bid_score` on its private state, after `delay_s`."""

    def __init__(
        self,
        worker_id: str,
        *,
        model: str,
        expertise: dict[str, float],
        foreign: bool,
        rng: random.Random,
    ) -> None:
        self.worker_id, self.model, self.foreign = worker_id, model, foreign
        self.published = dict(expertise)
        self.expertise = dict(expertise)  # what it really learned: it bids optimistically
        self.evidence: dict[str, float] = {}
        self.recent: dict[str, int] = {}
        self.rng = rng
        self.delay_s = 0.0
        self.intended: dict[str, float] = {}
        self.heard = 0  # announcements heard

    def info(self) -> bytes:
        return encode(
            WorkerInfo(worker_id=self.worker_id, model=self.model, expertise=self.published)
        )

    def score(self, announce: Announce, now_ms: int) -> float:
        if self.foreign:
            return self.rng.choice([0.0, 0.5, 0.99, self.rng.random()])
        bidding = optimistic_expertise(
            self.expertise,
            self.evidence,
            optimism=DEFAULT_POLICY.optimism,
            prior_strength=DEFAULT_POLICY.prior_strength,
        )
        return bid_score(
            announce,
            expertise=bidding,
            model=self.model,
            recent_files=self.recent,
            now_ms=now_ms,
            config=CONFIG,
        )

    async def run(
        self,
        bus: MemoryBus,
        keys: Keys,
        clock: FakeClock,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        async with bus.subscribe([self.channel(keys)]) as sub:
            task_status.started()
            async for message in sub:
                announce = decode(message.data, Announce)
                self.heard += 1
                score = self.intended[announce.task_id] = self.score(announce, clock.time_ms())
                await clock.sleep(self.delay_s)
                await bus.publish(keys.bids(announce.task_id), encode(self.bid(announce, score)))

    def bid(self, announce: Announce, score: float) -> Bid:
        """Its bid of `score` for `announce`, with the weights it bids from now."""
        return Bid(
            task_id=announce.task_id,
            round=announce.round,
            worker_id=self.worker_id,
            score=score,
            model=self.model,
            load=0,
            capacity=1,
            scoring=None if self.foreign else scoring_id(CONFIG),
            weights=self.weights(announce),
        )

    def channel(self, keys: Keys) -> str:
        """Where it hears announcements."""
        return keys.market

    def weights(self, announce: Announce) -> dict[str, float] | None:
        """`Bid.weights`: none (a bidder that does not say)."""
        return None


@asynccontextmanager
async def open_market(
    bidders: list[Bidder], **market: Any
) -> AsyncIterator[tuple[Auctioneer, MemoryBus, Keys, FakeClock]]:
    """The auctioneer and `bidders` on a FakeClock and MemoryBus; `market`: MarketConfig
    fields over a 30 s window, one round, no pause polling."""
    clock = FakeClock()
    bus, keys = MemoryBus(clock=clock), Keys("ec")
    config = MarketConfig(**{"window_s": 30.0, "max_rounds": 1, "pause_poll_s": 1000.0, **market})
    liveness = LivenessConfig(heartbeat_s=1000.0, dead_after_s=1e6)
    auctioneer = Auctioneer(
        bus=bus, keys=keys, clock=clock, market=config, liveness=liveness, scoring=CONFIG
    )
    for bidder in bidders:
        await register(bus, keys, clock, bidder)
    async with anyio.create_task_group() as tg:
        for bidder in bidders:
            await tg.start(bidder.run, bus, keys, clock)
        await tg.start(auctioneer.run)
        yield auctioneer, bus, keys, clock
        tg.cancel_scope.cancel()
    await bus.aclose()


async def register(bus: MemoryBus, keys: Keys, clock: FakeClock, bidder: Bidder) -> None:
    """`bidder` registered and beating now."""
    await bus.hset(keys.workers, {bidder.worker_id: bidder.info()})
    await bus.zadd(keys.heartbeats, {bidder.worker_id: clock.time_ms()})


async def _settle() -> None:
    # not anyio.wait_all_tasks_blocked: on asyncio it sleeps 0.1 s for real while any task runs
    for _ in range(30):
        await anyio.lowlevel.checkpoint()


async def _winner(bus: MemoryBus, keys: Keys, clock: FakeClock, task_id: str) -> str | None:
    """Advance the clock in small steps until `task_id` is awarded (or falls back)."""
    while True:
        for worker in await bus.hgetall(keys.workers):
            queued = await bus.lrange(keys.tasks_for(worker), 0, -1)
            if any(decode(raw, Assignment).task_id == task_id for raw in queued):
                await bus.delete(keys.tasks_for(worker))
                return worker
        if await bus.llen(keys.tasks):
            await bus.delete(keys.tasks)
            return None
        await _settle()
        await clock.advance(0.001)


def _bidders(rng: random.Random) -> list[Bidder]:
    bidders = []
    twin = _expertise(rng)  # some workers are identical: ties are decided by arrival
    for i in range(rng.randint(2, 6)):
        same = rng.random() < 0.4
        bidders.append(
            Bidder(
                f"w{i}",
                model="gemini:flash" if same else rng.choice(MODELS),
                expertise=dict(twin) if same else _expertise(rng),
                foreign=rng.random() < 0.15,
                rng=rng,
            )
        )
    return bidders


def _expected(bidders: list[Bidder], task_id: str) -> str | None:
    """The winner had every bid come in (arrival order = delay order), all with room."""
    order = sorted(bidders, key=lambda b: b.delay_s)
    bids = [bid(b.worker_id, b.intended[task_id], seq=i) for i, b in enumerate(order)]
    winner = choose_winner(bids, {b.worker_id: 1 for b in bidders})
    return winner.worker_id if winner else None


def _scenarios(seed: int, count: int) -> Iterator[tuple[random.Random, list[Bidder]]]:
    rng = random.Random(seed)
    for _ in range(count):
        yield rng, _bidders(rng)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_property_auctioneer_early_close_awards_as_waiting_would(seed: int) -> None:
    closed_early = 0
    for rng, bidders in _scenarios(seed, 10):
        async with open_market(bidders, early_close_on_bounds=True) as (
            auctioneer,
            bus,
            keys,
            clock,
        ):
            with anyio.fail_after(30):
                for n in range(15):
                    delays = rng.sample(range(1, 40), len(bidders))
                    for bidder, delay in zip(bidders, delays, strict=True):
                        bidder.delay_s = delay / 1000
                    task = _task(rng, f"t{n}")
                    await auctioneer.submit(task)
                    winner = await _winner(bus, keys, clock, task.task_id)
                    assert winner == _expected(bidders, task.task_id), (task, n)
                    late = auctioneer.stats.ignored_bids["late"]
                    closed_early += late > 0
                    if winner is not None:
                        await _complete(bus, keys, clock, task, winner, bidders, rng)
                    await _flush(clock)
            assert auctioneer.stats.counts["bound_exceeded"] == 0
    assert closed_early > 0


async def _complete(
    bus: MemoryBus,
    keys: Keys,
    clock: FakeClock,
    task: Task,
    winner: str,
    bidders: list[Bidder],
    rng: random.Random,
) -> None:
    """The winner ends the task and learns from it privately, sometimes republishing."""
    bidder = next(b for b in bidders if b.worker_id == winner)
    bidder.expertise, bidder.evidence = learn_with_evidence(
        bidder.expertise, bidder.evidence, task.required_skills, success=rng.random() < 0.6
    )
    bidder.recent.update(dict.fromkeys(task.files, clock.time_ms()))
    skills = Announce(
        task_id=task.task_id, round=1, closes_at_ms=0, required_skills=task.required_skills
    )
    done = TaskCompleted(  # with the weights it bids from now, as a worker of this version
        at_ms=clock.time_ms(),
        task_id=task.task_id,
        worker_id=winner,
        attempt=1,
        result=None,
        weights=bidder.weights(skills),
    )
    await bus.xadd(keys.events, {"event": encode(done)})
    if rng.random() < 0.3:
        bidder.published = dict(bidder.expertise)
        await bus.hset(keys.workers, {winner: bidder.info()})
    while await bus.hget(keys.internal("live"), task.task_id) is not None:
        await _settle()
        await clock.advance(0.001)


async def _flush(clock: FakeClock) -> None:
    """Let every bid still on its way out arrive (late), so the next task starts clean."""
    await _settle()
    await clock.advance(0.05)
    await _settle()


async def test_without_bounds_it_waits_for_every_eligible_worker() -> None:
    rng = random.Random(5)
    bidders = [
        Bidder(f"w{i}", model="gemini:flash", expertise={"react": 0.5}, foreign=False, rng=rng)
        for i in range(3)
    ]
    for on_bounds, late in ((False, 0), (True, 2)):
        async with open_market(bidders, early_close_on_bounds=on_bounds) as (
            auctioneer,
            bus,
            keys,
            clock,
        ):
            with anyio.fail_after(30):
                for n, task_id in enumerate(("warm-up", "t")):
                    for i, bidder in enumerate(bidders):
                        bidder.delay_s = (i + 1) / 1000
                    await auctioneer.submit(Task(task_id=task_id, required_skills=["react"]))
                    assert await _winner(bus, keys, clock, task_id) == "w0"
                    if n == 0:  # every worker has bid once: now they are bounded
                        await _complete(bus, keys, clock, Task(task_id=task_id), "w0", bidders, rng)
                        await _flush(clock)
                await _settle()
                await clock.advance(0.01)
            assert auctioneer.stats.ignored_bids["late"] == late


# --------------------------------------------------------------------------- worker side


class _Held:
    """An executor that keeps its task until `release` is set."""

    def __init__(self) -> None:
        self.release = anyio.Event()

    async def run(self, task: Assignment, ctx: ExecutionContext) -> Outcome:
        await self.release.wait()
        return Completed(result=None, token_usage=1)


async def test_a_full_worker_not_waited_for_stays_silent() -> None:
    clock = FakeClock()
    bus, keys = MemoryBus(clock=clock), Keys("sil")
    executor = _Held()
    agent = WorkerAgent(
        WorkerConfig(id="w1", expertise={"react": 0.9}),
        bus=bus,
        keys=keys,
        clock=clock,
        scoring=CONFIG,
        liveness=LivenessConfig(heartbeat_s=1000.0, dead_after_s=3000.0),
        memory_dir=None,
        executor=executor,
        poll_s=0.01,
    )
    seen: list[Bid] = []

    async def ask(n: int, eligible: list[str] | None) -> Bid | None:
        before = len(seen)
        announce = Announce(
            task_id=f"t{n}",
            round=1,
            required_skills=["react"],
            closes_at_ms=clock.time_ms() + 60_000,
            eligible=eligible,
        )
        await bus.publish(keys.market_for("w1"), encode(announce))
        await _settle()
        await clock.advance(0.01)
        await _settle()
        return seen[-1] if len(seen) > before else None

    async def collect(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with bus.subscribe(patterns=[keys.bids_pattern]) as sub:
            task_status.started()
            async for message in sub:
                seen.append(decode(message.data, Bid))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(collect)
            await tg.start(agent.run)
            held = Assignment(task_id="held", attempt=1, assigned_at_ms=clock.time_ms())
            await bus.lpush(keys.tasks_for("w1"), encode(held))
            while agent.load == 0:
                await _settle()
                await clock.advance(0.01)
            assert await ask(1, []) is None  # full and not waited for: silent
            named = await ask(2, ["w1"])  # waited for: refuses
            assert named is not None and named.score == 0.0
            legacy = await ask(3, None)  # a kernel that names nobody: refuses
            assert legacy is not None and legacy.score == 0.0
            executor.release.set()
            while agent.load:
                await _settle()
                await clock.advance(0.01)
            free = await ask(4, [])  # not named but free: it may still win
            assert free is not None and free.score > 0.0
            assert free.scoring == scoring_id(CONFIG)
            tg.cancel_scope.cancel()


async def test_a_pause_the_kernel_has_not_seen_yet_still_stops_the_announce() -> None:
    """The announce Tx requires the pause key to be absent (a task popped just before a pause
    is not announced after it); the task waits in the queue for the resume."""
    rng = random.Random(9)
    bidders = [Bidder("w0", model="gemini:flash", expertise={}, foreign=False, rng=rng)]
    async with open_market(bidders, early_close_on_bounds=True) as (auctioneer, bus, keys, clock):
        with anyio.fail_after(10):
            await bus.set(keys.paused, encode(PauseInfo(reason="test")))  # not read yet
            await auctioneer.submit(Task(task_id="t-p"))
            while not auctioneer.paused:
                await _settle()
            assert auctioneer.queued == 1 and "t-p" not in bidders[0].intended
            await bus.delete(keys.paused)
            auctioneer.set_paused(None)
            assert await _winner(bus, keys, clock, "t-p") == "w0"
