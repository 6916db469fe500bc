"""The market under load: fewer wake-ups and shorter waits, the same awards.

The auctioneer on the FakeClock and MemoryBus with directed bidders (workers of this
version), several auctions open at once: a worker full with this kernel's awards does not
hear announcements, auctions open together wait for a slow worker `joint_award_s` at most,
bids that come while an auction waits in a joint award count, an auction past its deadline never
waits again, and through all of it no worker left idle could have beaten a winner.
"""

from __future__ import annotations

import random

import anyio
import pytest

from jarvis_kernel.bus.memory import MemoryBus
from jarvis_kernel.clock import FakeClock
from jarvis_kernel.market.auction import ReceivedBid, award_batch
from jarvis_kernel.market.auctioneer import Auctioneer
from jarvis_kernel.market.windows import Auction
from jarvis_kernel.protocol import Assignment, Keys, Task, TaskCompleted, decode, encode

from .test_directed_announce import DirectBidder, _direct, _would_bid
from .test_early_close import (
    Bidder,
    _complete,
    _flush,
    _settle,
    _winner,
    open_market,
    register,
)


async def _awarded(bus: MemoryBus, keys: Keys, workers: list[str]) -> dict[str, str]:
    """task id -> worker, for every task in a worker's list (taken out of it)."""
    out = {}
    for worker in workers:
        for raw in await bus.lrange(keys.tasks_for(worker), 0, -1):
            out[decode(raw, Assignment).task_id] = worker
            await bus.lrem(keys.tasks_for(worker), 1, raw)
    return out


async def _warm_up(
    auctioneer: Auctioneer, bus: MemoryBus, keys: Keys, clock: FakeClock, bidders: list[Bidder]
) -> None:
    """One task that every worker bids on idle: then each is bounded."""
    for bidder in bidders:
        bidder.delay_s = 0.001
    await auctioneer.submit(Task(task_id="warm-up", required_skills=["react"]))
    winner = await _winner(bus, keys, clock, "warm-up")
    if winner is not None:
        rng = random.Random(0)
        await _complete(bus, keys, clock, Task(task_id="warm-up"), winner, bidders, rng)
    await _flush(clock)


def _trio(rng: random.Random, weights: tuple[float, ...] = (0.9, 0.6, 0.3)) -> list[DirectBidder]:
    return _direct(
        [
            Bidder(f"w{i}", model="gemini:flash", expertise={"react": w}, foreign=False, rng=rng)
            for i, w in enumerate(weights)
        ]
    )


async def test_a_worker_full_with_this_kernels_awards_does_not_hear_announcements() -> None:
    """Only a worker full by the load it reported (which may be a beat old) hears them."""
    bidders = _trio(random.Random(2))
    async with open_market(list(bidders)) as (auctioneer, bus, keys, clock):
        with anyio.fail_after(30):
            await _warm_up(auctioneer, bus, keys, clock, list(bidders))
            await auctioneer.submit(Task(task_id="kept", required_skills=["react"]))
            assert await _winner(bus, keys, clock, "kept") == "w0"  # w0 is full now
            await _flush(clock)
            await bus.hset(keys.load, {"w1": "1"})  # w1 says it is full (w2 stays free)
            await auctioneer.refresh_workers()
            heard = [b.heard for b in bidders]
            await auctioneer.submit(Task(task_id="next", required_skills=["react"]))
            assert await _winner(bus, keys, clock, "next") in ("w1", "w2")
            await _flush(clock)
            assert [b.heard - h for b, h in zip(bidders, heard, strict=True)] == [0, 1, 1]


async def test_auctions_open_together_wait_for_a_slow_worker_joint_award_s_at_most() -> None:
    """A and B have their bids; C opens meanwhile and waits for a slow worker: A and B are
    awarded together once C has waited `joint_award_s` (10 ms), not when w3 answers C
    (100 ms), and C later. (Workers register one by one so that each auction has its own
    eligible workers: A w0 w1, B also w2, C also w3.)"""
    rng = random.Random(1)
    w0, w1, w2, w3 = _direct(
        [
            Bidder(f"w{i}", model="gemini:flash", expertise={"react": w}, foreign=False, rng=rng)
            for i, w in enumerate((0.9, 0.6, 0.3, 0.5))
        ]
    )
    async with open_market([w0, w1, w2, w3], joint_award_s=0.01) as (auctioneer, bus, keys, clock):
        await bus.hdel(keys.workers, "w2", "w3")  # not registered yet
        await auctioneer.refresh_workers()
        ids = ["w0", "w1", "w2", "w3"]
        with anyio.fail_after(30):
            await _warm_up(auctioneer, bus, keys, clock, [w0, w1])
            w2.delay_s, w3.delay_s = 0.003, 0.1
            await auctioneer.submit(Task(task_id="A", required_skills=["react"]))
            await register(bus, keys, clock, w2)
            await auctioneer.refresh_workers()
            await auctioneer.submit(Task(task_id="B", required_skills=["react"]))
            await _settle()
            await clock.advance(0.002)  # A has its bid; B waits for w2
            await _settle()
            await register(bus, keys, clock, w3)
            await auctioneer.refresh_workers()
            await auctioneer.submit(Task(task_id="C", required_skills=["react"]))
            await _settle()
            c_asked = clock.monotonic()
            won: dict[str, str] = {}
            awarded_at: dict[str, float] = {}
            for _ in range(20):  # 20 ms: w3 answers C at 102 ms
                await _settle()
                await clock.advance(0.001)
                new = await _awarded(bus, keys, ids)
                awarded_at |= dict.fromkeys(new, clock.monotonic())
                won |= new
            assert won == {"A": "w0", "B": "w1"}
            assert awarded_at["A"] == awarded_at["B"] >= c_asked + 0.01  # together, after C
            while "C" not in won:
                await _settle()
                await clock.advance(0.01)
                won |= await _awarded(bus, keys, ids)
            assert won["C"] == "w3"


@pytest.mark.parametrize("on_bounds", [True, False], ids=["on-bounds", "batch"])
async def test_a_bid_that_comes_while_an_auction_waits_in_a_joint_award_counts(
    on_bounds: bool,
) -> None:
    """A has its bids and waits for B, which waits for w3 (slow, registered after A was
    announced): jointly on bounds (A's asks answered), or closed and waiting in a batch
    (without the close on bounds: w0 and w1 answered). Meanwhile w2, full by the load it
    last reported, so not eligible, hears A, bids from an idle slot, and beats them: it
    wins A."""
    rng = random.Random(3)
    bidders = _trio(rng, (0.5, 0.4, 0.95))
    late = _direct(
        [Bidder("w3", model="gemini:flash", expertise={"react": 0.3}, foreign=False, rng=rng)]
    )[0]
    market = {"joint_award_s": 10.0, "early_close_on_bounds": on_bounds}
    async with open_market([*bidders, late], **market) as (auctioneer, bus, keys, clock):
        await bus.hdel(keys.workers, "w3")
        await auctioneer.refresh_workers()
        ids = ["w0", "w1", "w2", "w3"]
        with anyio.fail_after(30):
            await _warm_up(auctioneer, bus, keys, clock, list(bidders))
            await bus.hset(keys.load, {"w2": "1"})  # a beat-old report: w2 is free
            await auctioneer.refresh_workers()
            for bidder, delay in zip(bidders, (0.001, 0.001, 0.003), strict=True):
                bidder.delay_s = delay
            await auctioneer.submit(Task(task_id="A", required_skills=["react"]))
            await register(bus, keys, clock, late)
            late.delay_s = 0.01
            await auctioneer.refresh_workers()
            await auctioneer.submit(Task(task_id="B", required_skills=["react"]))
            won: dict[str, str] = {}
            while len(won) < 2:
                await _settle()
                await clock.advance(0.001)
                won |= await _awarded(bus, keys, ids)
            assert won["A"] == "w2"
            assert auctioneer.stats.counts["joint_on_bounds"] == (1 if on_bounds else 0)


def test_an_auction_past_its_deadline_never_waits_again() -> None:
    """The timer closes an auction once; reopened after that (a close on bounds that no
    longer holds) it must not wait for a wake-up that will not come."""
    auction = Auction(Task(task_id="t"), 1, {"w"}, deadline=0.0)
    auction.reopen()
    assert not auction.done.is_set()
    auction.expired = True
    auction.reopen()
    assert auction.done.is_set()


@pytest.mark.parametrize("seed", [21, 22])
async def test_property_overlapping_auctions_no_idle_worker_could_beat_a_winner(
    seed: int,
) -> None:
    """Waves of tasks submitted together (their auctions overlap, so they are awarded
    jointly): each winner bids at least what any worker left without a task would have."""
    rng = random.Random(seed)
    for _ in range(3):
        bidders = _direct(
            [
                Bidder(
                    f"w{i}",
                    model=rng.choice(["gemini:flash", "gemini:flash", "gpt:large"]),
                    expertise={s: rng.choice([0.2, 0.5, 0.8, 0.9]) for s in ("react", "sql")},
                    foreign=rng.random() < 0.1,
                    rng=rng,
                )
                for i in range(rng.randint(3, 7))
            ]
        )
        ids = [b.worker_id for b in bidders]
        async with open_market(list(bidders)) as (auctioneer, bus, keys, clock):
            with anyio.fail_after(60):
                await _warm_up(auctioneer, bus, keys, clock, list(bidders))
                for wave in range(4):
                    for bidder in bidders:
                        bidder.delay_s = rng.randint(1, 12) / 1000
                    tasks = _wave(rng, wave, len(bidders))
                    would = {t.task_id: _would_bid(bidders, t, clock) for t in tasks}
                    won = await _run_wave(auctioneer, bus, keys, clock, tasks, ids)
                    idle = [b for b in bidders if b.worker_id not in won.values()]
                    for task in tasks:
                        rivals = [would[task.task_id].get(b.worker_id, 0.0) for b in idle]
                        rivals += [b.intended.get(task.task_id, 0.0) for b in idle if b.foreign]
                        winner = won.get(task.task_id)
                        if winner is None:
                            assert max(rivals, default=0.0) <= 0.0, (task, would, won)
                            continue
                        got = next(b for b in bidders if b.worker_id == winner)
                        best = max(rivals, default=0.0)
                        assert got.intended[task.task_id] >= best - 1e-4, (task, would, won)
                    await _end_wave(bus, keys, clock, tasks, won, bidders, rng)
            assert auctioneer.stats.counts["bound_exceeded"] == 0


def _wave(rng: random.Random, wave: int, workers: int) -> list[Task]:
    """2 to `workers` tasks to submit together."""
    return [
        Task(
            task_id=f"t{wave}-{n}",
            required_skills=rng.sample(["react", "sql"], rng.randint(1, 2)),
            complexity=rng.choice([0.1, 0.3, 0.6]),
        )
        for n in range(rng.randint(2, workers))
    ]


async def _run_wave(
    auctioneer: Auctioneer,
    bus: MemoryBus,
    keys: Keys,
    clock: FakeClock,
    tasks: list[Task],
    ids: list[str],
) -> dict[str, str]:
    """Submit `tasks` together; task id -> winner once each is awarded or fell back."""
    for task in tasks:
        await auctioneer.submit(task)
    won: dict[str, str] = {}
    while len(won) + await bus.llen(keys.tasks) < len(tasks):
        await _settle()
        await clock.advance(0.001)
        won |= await _awarded(bus, keys, ids)
    return won


async def _end_wave(
    bus: MemoryBus,
    keys: Keys,
    clock: FakeClock,
    tasks: list[Task],
    won: dict[str, str],
    bidders: list[DirectBidder],
    rng: random.Random,
) -> None:
    """End every task of a wave, so that the next one starts with every worker free."""
    await bus.delete(keys.tasks)
    for task in tasks:
        if task.task_id in won:
            await _complete(bus, keys, clock, task, won[task.task_id], list(bidders), rng)
        else:  # fell back
            await _end_fallen(bus, keys, clock, task)
    await _flush(clock)


async def _end_fallen(bus: MemoryBus, keys: Keys, clock: FakeClock, task: Task) -> None:
    done = TaskCompleted(
        at_ms=clock.time_ms(), task_id=task.task_id, worker_id="legacy", attempt=1, result=None
    )
    await bus.xadd(keys.events, {"event": encode(done)})
    while await bus.hget(keys.internal("live"), task.task_id) is not None:
        await _settle()
        await clock.advance(0.001)


@pytest.mark.parametrize("seed", [31, 32])
async def test_property_directed_joint_award_is_the_award_of_every_bid(seed: int) -> None:
    """Waves of tasks submitted together, each announced first to one worker: the joint
    award is the one every eligible worker's bid would give (`award_batch` of all of
    them), and most workers hear only some of the announcements."""
    rng = random.Random(seed)
    heard = sent_to_all = 0
    for _ in range(3):
        bidders = _direct(
            [
                Bidder(
                    f"w{i}",
                    model=rng.choice(["gemini:flash", "gemini:flash", "gpt:large"]),
                    expertise={s: rng.uniform(0.1, 1.0) for s in ("react", "sql")},
                    foreign=False,
                    rng=rng,
                )
                for i in range(rng.randint(3, 7))
            ]
        )
        ids = [b.worker_id for b in bidders]
        async with open_market(list(bidders), joint_award_s=1.0) as (auctioneer, bus, keys, clock):
            with anyio.fail_after(60):
                await _warm_up(auctioneer, bus, keys, clock, list(bidders))
                for wave in range(4):
                    for bidder in bidders:
                        bidder.delay_s = rng.randint(1, 4) / 1000
                    tasks = _wave(rng, wave, len(bidders))
                    would = {t.task_id: _would_bid(bidders, t, clock) for t in tasks}
                    before = sum(b.heard for b in bidders)
                    won = await _run_wave(auctioneer, bus, keys, clock, tasks, ids)
                    heard += sum(b.heard for b in bidders) - before
                    sent_to_all += len(tasks) * len(bidders)
                    every_bid = {
                        t.task_id: [
                            ReceivedBid(w, b.intended.get(t.task_id, would[t.task_id][w]), 0, 1, i)
                            for i, (w, b) in enumerate((b.worker_id, b) for b in bidders)
                        ]
                        for t in tasks
                    }
                    expected = award_batch(every_bid, dict.fromkeys(ids, 1))
                    assert won == {t: b.worker_id for t, b in expected.items() if b}, (
                        every_bid,
                        won,
                    )
                    await _end_wave(bus, keys, clock, tasks, won, bidders, rng)
            assert auctioneer.stats.counts["bound_exceeded"] == 0
            assert auctioneer.stats.counts["joint_on_bounds"] > 0
    assert heard < 0.7 * sent_to_all, (heard, sent_to_all)
