"""When an auction's window closes, whom it asks, and how auctions closing together are
awarded: the part of `Auctioneer` between the announcement and the award.

- Directed announcements (docs/protocol.md): an auction asks first only its likeliest
  winner (`_first_asked`), and more only when the bids in hand do not decide the award:
  alone, those whose bid could beat the best in hand (`_maybe_ask_more`); open with
  others, those whose bid could change the joint award of them all (`_check_joint`).
- Closing (`_collect`): when every eligible worker answered, when the bids in hand decide
  the award on bounds (alone: `_decided_on_bounds`; with others open: all of them at once,
  awarded jointly, `_check_joint`), at the deadline, or on a drain.
- Deciding (`_decide`): alone and at once, or in a batch with the auctions that close
  meanwhile, awarded jointly by `auction.award_batch` (the best total score); auctions
  decided jointly on bounds are awarded by `_check_joint` already.

Which bid wins is decided by the pure functions of `market.auction`; this mixin only feeds
them and acts. It is a part of `Auctioneer` (the state is the auctioneer's), kept apart to
keep each module readable.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Protocol

import anyio

from ..bus import Bus, Tx
from ..clock import Clock, run_with_timeout
from ..config import MarketConfig
from ..protocol import Keys
from .auction import (
    ReceivedBid,
    award_batch,
    bids_decide,
    choose_winner,
    contenders,
    joint_contenders,
    window_complete,
)
from .bounds import NO_BOUND, BoundBook
from .windows import Auction, WindowTimer

__all__ = ["Closing", "JointBatch"]


class JointBatch:
    """Auctions closed and waiting to be awarded together (``market.joint_award_s``).

    They stay open to bids meanwhile (in ``Auctioneer._auctions``, marked `settling`): a bid
    that comes before the award counts in it.
    """

    __slots__ = ("decided", "members", "ready", "waiting", "winners")

    def __init__(self, waiting: set[str]) -> None:
        self.members: dict[str, Auction] = {}
        self.waiting = waiting  # the auctions open when the first closed, not joined yet
        self.ready = anyio.Event()  # no auction is open any more: decide now
        self.decided = anyio.Event()
        self.winners: dict[str, ReceivedBid | None] = {}

    def no_longer_waiting(self, task_id: str) -> None:
        """The auction of `task_id` joined the batch or ended: it holds the batch up no more."""
        self.waiting.discard(task_id)
        if not self.waiting:
            self.ready.set()


class _Stats(Protocol):
    counts: Counter[str]


class Closing:
    """The closing and awarding of auctions; a mixin of `Auctioneer`, whose state it uses."""

    market: MarketConfig
    bus: Bus
    keys: Keys
    clock: Clock
    stats: _Stats
    _auctions: dict[str, Auction]
    _batch: JointBatch | None
    _bounds: BoundBook | None
    _windows: WindowTimer
    _committed: Counter[str]
    _capacity: dict[str, int]
    _load: dict[str, int]
    _alive: set[str]
    _direct: set[str]
    _exempt: frozenset[str]
    _draining: bool
    _joint_recheck: float | None  # when `_check_joint` runs again (`_check_joint_at`)

    def _free(self) -> dict[str, int]:
        raise NotImplementedError

    def _wake_dispatch(self) -> None:
        raise NotImplementedError

    async def _winner(self, auction: Auction) -> ReceivedBid | None:
        """Collect, then decide."""
        await self._collect(auction)
        return await self._decide(auction)

    def _open_window(self, auction: Auction) -> None:
        auction.asked_at = self.clock.monotonic()
        auction.deadline = auction.asked_at + self.market.window_s
        self._windows.add(auction)
        self._bounds_for(auction)  # while the workers compute their bids
        if self._jointly():
            self._check_joint()  # nobody asked (every bound 0): the others may decide it
        elif self._decided_on_bounds(auction):  # nobody asked can win (every bound 0)
            auction.close(on_bounds=True)

    async def _collect(self, auction: Auction) -> None:
        """Wait until the window closes, and say whether on bounds (`on_bounds`).

        Woken by a bid that may close it, by its deadline, a drain, to ask more workers, or
        decided jointly with the auctions open with it (`_check_joint`, which awarded it
        already); the reason is read again here, from what the auction has now. The check
        and the decision that follows (`_decide`, which awards an auction closed on bounds
        alone and at once) run without an await in between, so both see the same capacity:
        the award is the one all the eligible workers' bids would give.
        """
        while True:
            await auction.done.wait()
            if auction.decided:
                return  # awarded with the others open (`_check_joint`)
            if auction.widen and not (self._draining or auction.expired or auction.cut):
                await self._ask_more(auction)
                continue  # read again: bids that came meanwhile may have decided it
            auction.on_bounds = False
            if self._draining or auction.expired or auction.cut:
                return  # on the bids in hand: the silent ones are late
            jointly = self._jointly()
            if not jointly and window_complete(auction.eligible, auction.answered):
                return
            if not jointly and self._decided_on_bounds(auction):
                auction.on_bounds = True
                return
            auction.reopen()
            if auction.widen:  # asked for by a bid that came in while it was asking
                auction.done.set()
            elif jointly:
                self._check_joint()
            else:
                self._maybe_ask_more(auction)

    def _jointly(self) -> bool:
        """Are the open auctions closed together on bounds (`_check_joint`)? With the joint
        award and the close on bounds on, while more than one is open or a batch waits."""
        market = self.market
        return (
            market.joint_award_s > 0
            and market.early_close
            and market.early_close_on_bounds
            and self._bounds is not None
            and (len(self._auctions) > 1 or self._batch is not None)
        )

    def _first_asked(self, auction: Auction, *, directed: bool) -> set[str]:
        """The eligible workers on their own channel to announce `auction` to now.

        All of them, unless the auction may close on bounds: then the one with the highest
        bound (with others open, preferring one none of them asked; then the lower load
        ratio, then the smaller id), and every one not bounded yet. The others are asked
        only if the bids in hand do not decide the award (`_on_bid`: alone, or jointly with
        the auctions open with it), so the award is the one announcing to all would give.
        """
        direct = auction.eligible & self._direct
        market = self.market
        if not (
            directed
            and direct
            and market.direct_announce
            and market.early_close
            and market.early_close_on_bounds
            and self._bounds is not None
        ):
            return direct
        bounds = self._bounds_for(auction)
        unbounded = {w for w in direct if bounds.get(w, NO_BOUND) >= NO_BOUND}
        bounded = [w for w in direct - unbounded if bounds[w] > 0.0]
        if not bounded:
            return unbounded
        capacity, load = self._capacity, self._load
        # with others open, one of the workers they ask first is likelier to win there
        taken = {w for a in self._auctions.values() if not a.settling for w in a.asked}

        def rank(w: str) -> tuple[bool, float, float, str]:
            return (w in taken, -bounds[w], load.get(w, 0) / max(1, capacity.get(w, 1)), w)

        return unbounded | {min(bounded, key=rank)}

    def _may_have_room(self, eligible: set[str]) -> set[str]:
        """The directed workers not eligible that hear an announcement all the same.

        A worker the kernel thinks full may have freed a slot since its last word: as on
        the shared channel, it hears the announcement and bids if it has room. With directed
        announcements, only if it is full by the load it reported, not by the tasks this
        kernel awarded it and has not seen end (those it could not be awarded anyway): under
        load most workers are such, and waking each of them for every task costs more than
        the rest of the auction.
        """
        maybe = (self._alive & self._direct) - eligible
        if not self.market.direct_announce:
            return maybe
        committed, capacity = self._committed, self._capacity
        return {w for w in maybe if committed[w] < capacity.get(w, 0)}

    async def _ask_more(self, auction: Auction) -> None:
        """Announce `auction` to the workers in `auction.widen` (one Tx)."""
        ask, auction.widen = auction.widen, []
        ask = [w for w in ask if w in auction.held]
        if ask:
            auction.held.difference_update(ask)
            auction.asked.update(ask)
            tx = Tx()
            for worker in ask:
                tx.publish(self.keys.market_for(worker), auction.announce)
            if auction.task_id not in self._exempt:
                tx.require(self.keys.paused, None)
            self.stats.counts["asked_later"] += len(ask)
            if not await self.bus.execute(tx):  # paused meanwhile: award on what it has
                auction.cut = True

    def _maybe_ask_more(self, auction: Auction) -> None:
        """Every worker asked has answered and the award is not decided: ask those held back
        whose bid could still change it, the likeliest first (1, then 2, then 4, ...)."""
        if not auction.held or auction.widen or not auction.asked <= auction.answered:
            return
        bounds = self._bounds_for(auction)
        silent = {w: bounds.get(w, NO_BOUND) for w in auction.held}
        # highest bound first, one then two then four...: the next bid often decides it, and
        # waking every contender at once costs more than another round trip
        ask = contenders(auction.bids, silent, self._free())[: 1 << auction.widened]
        if ask:
            auction.widened += 1
            auction.asked_at = self.clock.monotonic()
            auction.ask_more(ask)

    def _reconsider(self) -> None:
        """An auction ended: do the bids in hand decide those still open now?

        Those open together are checked jointly again (`_check_joint`); one left alone
        after the others ended is decided, or asks more, by the rules for one auction.
        """
        if self._draining or not self.market.early_close or self.market.joint_award_s <= 0:
            return
        if self._jointly():
            self._check_joint()
            return
        for auction in self._auctions.values():  # one at most
            if auction.deadline and not (auction.settling or auction.done.is_set()):
                self._check_alone(auction)

    def _check_alone(self, auction: Auction) -> None:
        """Close `auction` (awarded alone) if its bids decide it, else ask whom they need."""
        if window_complete(auction.eligible, auction.answered) or self._decided_on_bounds(auction):
            auction.close()  # `_collect` reads how
        else:
            self._maybe_ask_more(auction)

    def _check_joint(self) -> None:
        """Auctions open together: award them all at once if the bids in hand decide their
        joint award whatever the silent workers could bid (`auction.joint_contenders`);
        otherwise ask those whose bids could change it.

        Only once every worker asked has answered (the bids on their way may decide it),
        or for ``joint_award_s`` at most: an auction still waiting for a bid it asked for
        longer ago is left out (awarded later, once answered or at its deadline), so that a
        slow worker holds up no other auction for longer. An auction closed otherwise
        (deadline, paused, a batch) is not part of it. The award is `award_batch` on the
        bids in hand, each winner reserved at once, as `_settle` does for a batch.
        """
        group = self._joint_group()
        if not group:
            return
        free = self._free()
        silent = {
            a.task_id: {w: b for w, b in self._bounds_for(a).items() if w not in a.answered}
            for a in group
        }
        bids = {a.task_id: a.bids for a in group}
        ask = joint_contenders(bids, silent, free)
        if ask:
            for auction in group:
                more = [w for w in ask.get(auction.task_id, ()) if w in auction.held]
                if more:
                    auction.widened += 1
                    auction.asked_at = self.clock.monotonic()
                    auction.ask_more(more)
            return
        winners = award_batch(bids, free)
        for auction in group:
            auction.decided, auction.winner = True, winners[auction.task_id]
            if auction.winner is not None:
                self._committed[auction.winner.worker_id] += 1
            auction.close(on_bounds=True)
        self.stats.counts["joint_on_bounds"] += 1
        self._wake_dispatch()

    def _joint_group(self) -> list[Auction] | None:
        """The open auctions `_check_joint` decides together now, or None to wait: for an
        announcement on its way, or for a bid asked for less than ``joint_award_s`` ago
        (then checked again at that time)."""
        now, patience = self.clock.monotonic(), self.market.joint_award_s
        group: list[Auction] = []
        wait_until = math.inf
        for a in self._auctions.values():
            if a.settling or a.decided or a.expired or a.cut:
                continue
            if not a.deadline:
                return None  # checked again when it opens
            if a.widen or not a.asked <= a.answered:
                wait_until = min(wait_until, a.asked_at + patience)
            else:
                group.append(a)
        if now < wait_until < math.inf:
            self._check_joint_at(wait_until)
            return None
        return group

    def _check_joint_at(self, when: float) -> None:
        """Check the auctions open together again at `when` (one timer call at a time)."""
        if self._joint_recheck is not None and self._joint_recheck <= when:
            return
        self._joint_recheck = when

        def recheck() -> None:
            if self._joint_recheck == when:
                self._joint_recheck = None
                self._reconsider()

        self._windows.call_at(when, recheck)

    def _bounds_for(self, auction: Auction) -> dict[str, float]:
        """The most each eligible worker could bid in `auction` (kept until the book changes)."""
        book = self._bounds
        if book is None:
            return {}
        if auction.bounds_gen != book.generation:
            auction.bounds = {w: book.bound(w, auction.task) for w in auction.eligible}
            auction.bounds_gen = book.generation
        return auction.bounds

    def _decided_on_bounds(self, auction: Auction) -> bool:
        """Do the bids in hand decide `auction`, whatever its silent workers bid?

        Only for an auction that would be awarded alone: with the joint award, while no
        other auction is open or waiting (those open together are decided together:
        `_check_joint`).
        """
        if self._bounds is None or not self.market.early_close_on_bounds or not auction.eligible:
            return False
        if self.market.joint_award_s > 0 and (len(self._auctions) > 1 or self._batch):
            return False
        bounds = self._bounds_for(auction)
        silent = {w: bounds[w] for w in auction.eligible if w not in auction.answered}
        return bids_decide(auction.bids, silent, self._free())

    async def _decide(self, auction: Auction) -> ReceivedBid | None:
        """The winner of a closed auction, reserved in `_committed` before anything awaits.

        Decided jointly on bounds (`_check_joint`): its winner, reserved already. With
        ``joint_award_s`` 0, or closed on bounds alone, it is chosen at once. Otherwise
        (closed at its deadline, by a drain, or with no close on bounds) the auction joins
        the batch of auctions closed meanwhile; the first of them waits until
        the auctions open at that moment have joined (or ended), or ``joint_award_s``, then
        the batch is awarded jointly (`_settle`); a batch of one is awarded without waiting.
        Auctions opened later do not hold it up: under load one opens every few
        milliseconds, and each would keep the batch waiting up to ``joint_award_s``.
        """
        if auction.decided:
            return auction.winner  # reserved by `_check_joint`
        if self.market.joint_award_s <= 0 or auction.on_bounds:
            winner = choose_winner(auction.bids, self._free())
            if winner is not None:
                self._committed[winner.worker_id] += 1
            return winner
        batch, leader = self._batch, self._batch is None
        if batch is None:
            batch = self._batch = JointBatch(set(self._auctions) - {auction.task_id})
        batch.members[auction.task_id] = auction
        auction.settling = True
        batch.no_longer_waiting(auction.task_id)
        try:
            if not leader:
                await batch.decided.wait()
            elif batch.ready.is_set():
                self._settle(batch)
            else:
                try:
                    await run_with_timeout(self.clock, self.market.joint_award_s, batch.ready.wait)
                finally:
                    self._settle(batch)  # synchronous, so also when cancelled
        finally:
            auction.settling = False
        return batch.winners.get(auction.task_id)

    def _settle(self, batch: JointBatch) -> None:
        """Award `batch` and reserve every winner at once, before any award Tx is awaited."""
        self._batch = None
        bids = {task_id: tuple(a.bids) for task_id, a in batch.members.items()}
        batch.winners = award_batch(bids, self._free())
        for winner in batch.winners.values():
            if winner is not None:
                self._committed[winner.worker_id] += 1
        batch.decided.set()
        self._wake_dispatch()
