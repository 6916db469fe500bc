"""How a winner is chosen: the award rules of the protocol, as pure functions.

The auctioneer feeds these; they do no I/O and read no clock.

Award (protocol.md, "The auction", step 4): the highest score above 0 wins; ties go to the
lower load/capacity ratio, then the earlier bid, then the smaller ``workerId``. A worker is
never awarded beyond its capacity: `free` says how many more tasks each worker may take
*now*, counting awards made by other auctions still open.

Joint award (`award_batch`, an addition of this implementation): auctions whose windows
closed together are awarded in order of regret, so that an auction that loses much by not
getting its best bidder goes before one that has a near-equal alternative. Each single award
still follows the rule above.

Closing a window: when every eligible worker has answered (`window_complete`), or earlier
when the bids in hand decide the award whatever the silent workers could still bid, given
a bound on each (`bids_decide`; the bounds come from `market.bounds`).
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence

import msgspec

__all__ = [
    "ReceivedBid",
    "award_batch",
    "bids_decide",
    "choose_winner",
    "contenders",
    "free_capacity",
    "priority_key",
    "window_complete",
]


class ReceivedBid(msgspec.Struct, frozen=True):
    """A valid bid as the auctioneer received it, in arrival order (`seq`)."""

    worker_id: str
    score: float
    load: int
    capacity: int
    seq: int


def _rank(bid: ReceivedBid) -> tuple[float, float, int, str]:
    ratio = bid.load / bid.capacity if bid.capacity > 0 else 1.0
    return (-bid.score, ratio, bid.seq, bid.worker_id)


def choose_winner(bids: Iterable[ReceivedBid], free: Mapping[str, int]) -> ReceivedBid | None:
    """The winning bid, or None when no bid above 0 comes from a worker with room."""
    candidates = [b for b in bids if b.score > 0.0 and free.get(b.worker_id, 0) > 0]
    return min(candidates, key=_rank, default=None)


def award_batch(
    auctions: Mapping[str, Sequence[ReceivedBid]], free: Mapping[str, int]
) -> dict[str, ReceivedBid | None]:
    """Award auctions that closed together: per task id its winning bid, or None.

    Regret-ordered greedy: repeatedly award the auction with the largest regret, its best
    valid bid's score minus its second-best's (0 without one), among workers that still have
    room; ties go to the higher best score, then the smaller task id. Each award takes the
    bid `choose_winner` would, so one auction alone gets exactly what `choose_winner` gives;
    no worker gets more than `free` allows.
    """
    room = dict(free)
    left = {task: [b for b in bids if b.score > 0.0] for task, bids in auctions.items()}
    out: dict[str, ReceivedBid | None] = dict.fromkeys(auctions)
    while left:
        pick: tuple[tuple[float, float, str], ReceivedBid] | None = None
        for task in list(left):
            top = heapq.nsmallest(
                2, (b for b in left[task] if room.get(b.worker_id, 0) > 0), key=_rank
            )
            if not top:
                del left[task]  # nobody with room bid above 0: no winner
                continue
            regret = top[0].score - (top[1].score if len(top) > 1 else 0.0)
            key = (-regret, -top[0].score, task)
            if pick is None or key < pick[0]:
                pick = (key, top[0])
        if pick is None:
            break
        (_, _, task), winner = pick
        out[task] = winner
        room[winner.worker_id] -= 1
        del left[task]
    return out


def window_complete(eligible: Collection[str], answered: Collection[str]) -> bool:
    """True once every worker eligible at announcement has answered (the early close).

    With nobody eligible there is nothing to wait for only if someone answered anyway;
    an empty window waits for its deadline (a worker may be starting).
    """
    if not eligible:
        return False
    return all(worker in answered for worker in eligible)


def bids_decide(
    bids: Iterable[ReceivedBid], silent: Mapping[str, float], free: Mapping[str, int]
) -> bool:
    """True when the bids in hand decide the award whatever the silent workers still bid.

    `silent` maps each eligible worker that has not answered to the most it could bid. A
    bid still to come arrives after every bid in hand (a later `seq`) and has a load ratio of
    at least 0, so the winner in hand, ``best = choose_winner(bids, free)``, still wins
    against it when ``best.score > bound``, or ``best.score == bound`` and ``best`` has no
    load (its ratio 0 ties at worst, then the earlier bid wins). A silent worker with bound
    0 (it must refuse) or no room cannot win. Then ``choose_winner(bids + later, free) ==
    best`` for any such later bids: closing now awards what waiting for them would.
    """
    return not contenders(bids, silent, free)


def contenders(
    bids: Iterable[ReceivedBid], silent: Mapping[str, float], free: Mapping[str, int]
) -> list[str]:
    """The silent workers whose bid could still beat the bids in hand (see `bids_decide`),
    in the order they should be asked: highest bound first, then the smaller id."""
    best = choose_winner(bids, free)
    out = []
    for worker, bound in silent.items():
        if bound <= 0.0 or free.get(worker, 0) <= 0:
            continue
        if best is None or best.score < bound or (best.score == bound and best.load > 0):
            out.append(worker)
    return sorted(out, key=lambda w: (-silent[w], w))


def free_capacity(
    capacity: Mapping[str, int], committed: Mapping[str, int], load: Mapping[str, int]
) -> dict[str, int]:
    """Room left per worker: capacity minus what it holds.

    What a worker holds is the larger of what the kernel has committed to it (awards not yet
    finished, including those of auctions still open) and the load it reports itself (which
    also counts tasks it took from the shared list).
    """
    return {
        worker: max(0, cap - max(committed.get(worker, 0), load.get(worker, 0)))
        for worker, cap in capacity.items()
    }


def priority_key(priority: int, submitted_seq: int) -> tuple[int, int]:
    """Sort key of the ready queue: higher priority first, then oldest first."""
    return (-priority, submitted_seq)
