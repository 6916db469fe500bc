"""The auctions' windows: what each open auction has received, and one timer for all of them.

An `Auction` is closed (`Auction.close`) by the bid that completes it, by the bid that
decides it on bounds, by a drain, or by the `WindowTimer` at its deadline; its owner is also
woken (`Auction.ask_more`) to announce it to workers held back so far. One timer task
serves every open window (and the auctioneer's other timed checks), so that waiting for a
window costs an `anyio.Event`, not a task and a cancel scope per auction.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import anyio
import anyio.abc

from ..clock import Clock, run_with_timeout
from ..protocol import Task
from .auction import ReceivedBid

__all__ = ["Auction", "WindowTimer"]


class Auction:
    """One round of one task's auction, while its window is open."""

    __slots__ = (
        "announce",
        "announced_tick",
        "answered",
        "asked",
        "asked_at",
        "bids",
        "bounds",
        "bounds_gen",
        "cut",
        "deadline",
        "decided",
        "done",
        "eligible",
        "expired",
        "held",
        "on_bounds",
        "round",
        "settling",
        "task",
        "task_id",
        "widen",
        "widened",
        "winner",
    )

    def __init__(self, task: Task, round_: int, eligible: set[str], deadline: float) -> None:
        self.task, self.task_id, self.round = task, task.task_id, round_
        self.eligible, self.deadline = eligible, deadline
        self.bids: list[ReceivedBid] = []
        self.answered: set[str] = set()
        self.done = anyio.Event()
        self.on_bounds = False  # closed because the bids in hand decide it (`bids_decide`)
        self.settling = False  # waiting in a joint award's batch (bids still count)
        self.expired = False
        self.cut = False  # stopped asking (paused meanwhile): awarded on the bids in hand
        # awarded with the auctions open with it, on bounds (`Closing._check_joint`): its
        # winner (reserved already) or None
        self.decided = False
        self.winner: ReceivedBid | None = None
        self.bounds: dict[str, float] = {}  # silent worker -> the most it could bid
        self.bounds_gen = -1  # `BoundBook.generation` the bounds were computed at
        # Directed announcements: the eligible workers on their own channel that were
        # announced to, those held back (not yet), and those to announce to next.
        self.announce = b""
        self.announced_tick = 0  # the auctioneer's step count when it was announced
        self.asked: set[str] = set()
        self.asked_at = 0.0  # when it last asked (`Clock` time)
        self.held: set[str] = set()
        self.widen: list[str] = []
        self.widened = 0  # times asked again

    def met_room(self) -> bool:
        """Did this round meet a worker with room that did not take the task?

        One that refused with room to spare, one asked that stayed silent, or one not asked
        because it could only refuse (its bound is 0). If not, it found every worker busy:
        refusals for want of room (a worker the kernel counted free a moment early), and
        those with room awarded other tasks of the same joint award.
        """
        if any(b.score <= 0.0 and b.load < b.capacity for b in self.bids):
            return True
        return any(
            w not in self.held or self.bounds.get(w, 1.0) <= 0.0
            for w in self.eligible - self.answered
        )

    def close(self, *, on_bounds: bool = False) -> None:
        self.on_bounds = on_bounds
        self.done.set()

    def ask_more(self, workers: list[str]) -> None:
        """Wake the auction's owner to announce to `workers`, held back so far."""
        self.widen = workers
        self.done.set()

    def reopen(self) -> None:
        """Wait again (a close on bounds that no longer holds when it is acted on).

        Past its deadline it does not wait: the timer has closed it once and will not again.
        """
        self.on_bounds = False
        self.done = anyio.Event()
        if self.expired:
            self.done.set()


class WindowTimer:
    """Closes every auction still open at its deadline (`Clock` time), and makes the calls
    asked for at a time (`call_at`)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Auction | Callable[[], None]]] = []
        self._seq = itertools.count()
        self._changed = anyio.Event()
        self._target: float | None = None  # the deadline the timer sleeps towards

    def add(self, auction: Auction) -> None:
        self._push(auction.deadline, auction)

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Call `callback` (synchronous, quick) at `when` (`Clock` time) or soon after."""
        self._push(when, callback)

    def _push(self, when: float, item: Auction | Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), item))
        if self._target is None or when < self._target:
            self._changed.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            now = self.clock.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, _, item = heapq.heappop(self._heap)
                if not isinstance(item, Auction):
                    item()
                    continue
                item.expired = True
                if not item.done.is_set():
                    item.close()
            self._target = self._heap[0][0] if self._heap else None
            self._changed = anyio.Event()
            if self._target is None:
                await self._changed.wait()
            else:
                await run_with_timeout(self.clock, self._target - now, self._changed.wait)
