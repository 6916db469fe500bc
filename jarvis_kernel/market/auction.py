"""How a winner is chosen: the award rules of the protocol, as pure functions.

The auctioneer feeds these; they do no I/O and read no clock.

Award (protocol.md, "The auction", step 4): the highest score above 0 wins; ties go to the
lower load/capacity ratio, then the earlier bid, then the smaller ``workerId``. A worker is
never awarded beyond its capacity: `free` says how many more tasks each worker may take
*now*, counting awards made by other auctions still open.

Joint award (`award_batch`, an addition of this implementation): auctions whose windows
closed together are awarded together, as the assignment of bids to auctions with the
highest total score that no worker's room forbids (Hungarian method, exact integer
arithmetic), so that an auction whose best bidder another auction needs more gets its next
best. Ties between assignments of equal total go to the one whose auctions, taken by task
id, get the better-ranked bids under the award rule above. One auction alone gets exactly
what that rule gives. Batches of more than `OPTIMAL_UP_TO` auctions are awarded greedily in
order of regret (best valid bid minus second-best) instead: the Hungarian method costs
O(n^2 m) steps in Python.

Closing a window: when every eligible worker has answered (`window_complete`), or earlier
when the bids in hand decide the award whatever the silent workers could still bid, given
a bound on each (`bids_decide`; the bounds come from `market.bounds`); for auctions
awarded jointly, when no silent worker's bid could change the joint award
(`joint_contenders`).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Final, NamedTuple

import msgspec

__all__ = [
    "OPTIMAL_UP_TO",
    "ReceivedBid",
    "award_batch",
    "award_by_regret",
    "bids_decide",
    "choose_winner",
    "contenders",
    "free_capacity",
    "joint_contenders",
    "priority_key",
    "window_complete",
]

OPTIMAL_UP_TO: Final = 32
"""The most auctions `award_batch` awards by the best total; larger batches by regret."""


class ReceivedBid(msgspec.Struct, frozen=True):
    """A valid bid as the auctioneer received it, in arrival order (`seq`)."""

    worker_id: str
    score: float
    load: int
    capacity: int
    seq: int


def _rank(bid: ReceivedBid) -> tuple[float, float, int, str]:
    return (-bid.score, _ratio(bid), bid.seq, bid.worker_id)


def choose_winner(bids: Iterable[ReceivedBid], free: Mapping[str, int]) -> ReceivedBid | None:
    """The winning bid, or None when no bid above 0 comes from a worker with room."""
    candidates = [b for b in bids if b.score > 0.0 and free.get(b.worker_id, 0) > 0]
    return min(candidates, key=_rank, default=None)


def award_batch(
    auctions: Mapping[str, Sequence[ReceivedBid]], free: Mapping[str, int]
) -> dict[str, ReceivedBid | None]:
    """Award auctions that closed together: per task id its winning bid, or None.

    The bids with the highest total score, at most one per auction and no worker beyond
    `free`; among equal totals, the auctions in task id order get the best-ranked bids
    (`choose_winner`'s order) they can. One auction alone gets what `choose_winner`
    gives. More than `OPTIMAL_UP_TO` auctions: `award_by_regret`.
    """
    if len(auctions) == 1:
        ((task, bids),) = auctions.items()
        return {task: choose_winner(bids, free)}
    if len(auctions) > OPTIMAL_UP_TO:
        return award_by_regret(auctions, free)
    ranked = _ranked(auctions, free)
    options = {
        task: [_Option(b.worker_id, _exact(b.score), rank, b) for rank, b in enumerate(bids)]
        for task, bids in ranked.items()
    }
    picks = _best_assignment(options, free)
    return {task: (o.bid if (o := picks.get(task)) else None) for task in auctions}


def joint_contenders(
    auctions: Mapping[str, Sequence[ReceivedBid]],
    silent: Mapping[str, Mapping[str, float]],
    free: Mapping[str, int],
) -> dict[str, list[str]]:
    """The silent workers whose bids could still change `award_batch(auctions, free)`.

    `silent` maps each auction's task id to its eligible workers that have not answered,
    each with the most it could bid. Empty: the bids in hand decide the joint award,
    whatever the silent workers bid (`award_batch` of all the bids then gives what it gives
    on the bids in hand). Otherwise, per task id, the workers to ask, best first.

    A bid still to come scores at most its bound and ranks after every bid in hand of the
    same score with no load (a later `seq`; its load ratio is at least 0). The test solves
    the award once more with each silent worker bidding its bound at the best rank it could
    get (each placed just before the first bid in hand it could beat): the bids in hand
    decide exactly when that optimistic award still takes none of the silent ones. (If it
    takes one, bids at the bounds with no load change the award; if it takes none, lower
    bids cannot make an assignment with a silent worker better, and the rank order of the
    bids in hand among themselves is the same, so the award is the same.) The workers to
    ask are the silent ones that optimistic award takes. Above `OPTIMAL_UP_TO` auctions
    (awarded by regret) nothing is decided on bounds: every contender is asked.
    """
    ranked = _ranked(auctions, free)
    options: dict[str, list[_Option]] = {}
    hopeful: dict[str, list[str]] = {}
    for task in sorted(auctions.keys() | silent.keys()):
        in_hand = ranked.get(task, [])
        mine = [_Option(b.worker_id, _exact(b.score), 2 * i + 1, b) for i, b in enumerate(in_hand)]
        for worker, bound in silent.get(task, {}).items():
            if bound <= 0.0 or free.get(worker, 0) <= 0:
                continue  # must refuse, or cannot be awarded
            before = sum(
                1 for b in in_hand if b.score > bound or (b.score == bound and not _ratio(b))
            )
            mine.append(_Option(worker, _exact(bound), 2 * before, None))
            hopeful.setdefault(task, []).append(worker)
        hopeful.get(task, []).sort(key=lambda w: (-silent[task][w], w))
        if mine:
            options[task] = mine
    if not hopeful:
        return {}
    if len(auctions) > OPTIMAL_UP_TO:
        return hopeful
    picks = _best_assignment(options, free)
    return {task: [o.worker_id] for task, o in picks.items() if o.bid is None}


class _Option(NamedTuple):
    """What an auction could be awarded in `_best_assignment`: a worker's bid (or, in
    `joint_contenders`, a silent worker's best case: `bid` None)."""

    worker_id: str
    score: int  # exact (`_exact`)
    rank: int  # the lower, the better among the auction's options
    bid: ReceivedBid | None


def _ranked(
    auctions: Mapping[str, Sequence[ReceivedBid]], free: Mapping[str, int]
) -> dict[str, list[ReceivedBid]]:
    """Per auction with any, its valid bids (above 0, from a worker with room), best first."""
    ranked = {
        task: sorted(
            (b for b in auctions[task] if b.score > 0.0 and free.get(b.worker_id, 0) > 0),
            key=_rank,
        )
        for task in auctions
    }
    return {task: bids for task, bids in ranked.items() if bids}


def _best_assignment(
    options: Mapping[str, Sequence[_Option]], free: Mapping[str, int]
) -> dict[str, _Option]:
    """Per task id the option it is awarded (none: nothing), for the highest total score,
    no worker beyond `free`; among equal totals the best ranks, auctions in task id order."""
    tasks = sorted(t for t, opts in options.items() if opts)
    if not tasks:
        return {}
    wanted = Counter(o.worker_id for t in tasks for o in options[t])
    slots = [w for w in sorted(wanted) for _ in range(min(free[w], wanted[w]))]
    rows = [options[t] for t in tasks]
    out = {}
    for task, row, col in zip(tasks, rows, _min_cost_assignment(_costs(rows, slots)), strict=True):
        if col < len(slots):  # a slot of a worker with no option here is no award either
            picked = next((o for o in row if o.worker_id == slots[col]), None)
            if picked is not None:
                out[task] = picked
    return out


def _costs(rows: Sequence[Sequence[_Option]], slots: Sequence[str]) -> list[list[int]]:
    """The joint award as a minimum-cost assignment, in exact integers.

    Rows: the auctions, each with its options. Columns: one per slot a worker could fill
    (`slots`), then one "no award" per auction. An option's score decides (each unit of it
    is worth more than all the rank terms put together); then each auction's rank of what
    it gets, as the digits of one number in base `base`, the first auction's the most
    significant (getting nothing is the largest digit), so that ranks compare in auction
    order exactly.
    """
    n = len(rows)
    base = max(o.rank for row in rows for o in row) + 2  # digits: ranks, then nothing
    unit = base**n
    out = []
    for i, row in enumerate(rows):
        place = base ** (n - 1 - i)
        nothing = (base - 1) * place
        by_worker = {o.worker_id: o.rank * place - o.score * unit for o in row}
        out.append([by_worker.get(w, nothing) for w in slots] + [nothing] * n)
    return out


def _ratio(bid: ReceivedBid) -> float:
    return bid.load / bid.capacity if bid.capacity > 0 else 1.0


def _exact(score: float) -> int:
    """`score` (0..1) as an integer, exactly for any score above 2**-11."""
    return int(math.ldexp(score, 64))


def _min_cost_assignment(cost: Sequence[Sequence[int]]) -> list[int]:
    """For each row the column it is assigned, minimising the total cost (rows <= columns).

    The Hungarian method with potentials (Kuhn-Munkres), O(rows^2 x columns), on integers:
    each row in turn joins along a shortest augmenting path (`_augment`).
    """
    m = len(cost[0])
    u, v = [0] * (len(cost) + 1), [0] * (m + 1)
    owner = [0] * (m + 1)  # column -> its row, 1-based (0: free); column 0 is the root
    for i in range(1, len(cost) + 1):
        _augment(cost, i, u, v, owner)
    out = [0] * len(cost)
    for j in range(1, m + 1):
        if owner[j]:
            out[owner[j] - 1] = j - 1
    return out


def _augment(
    cost: Sequence[Sequence[int]], i: int, u: list[int], v: list[int], owner: list[int]
) -> None:
    """Assign row `i` (1-based), moving others along the cheapest path (Dijkstra on
    reduced costs), and update the potentials `u` (rows) and `v` (columns)."""
    m = len(v) - 1
    least: list[float] = [math.inf] * (m + 1)
    way, used = [0] * (m + 1), [False] * (m + 1)
    owner[0], j0 = i, 0
    while owner[j0]:
        used[j0] = True
        row, ui = cost[owner[j0] - 1], u[owner[j0]]
        delta: float = math.inf
        j1 = 0
        for j in range(1, m + 1):
            if not used[j]:
                cur = row[j - 1] - ui - v[j]
                if cur < least[j]:
                    least[j], way[j] = cur, j0
                if least[j] < delta:
                    delta, j1 = least[j], j
        step = int(delta)
        for j in range(m + 1):
            if used[j]:
                u[owner[j]] += step
                v[j] -= step
            else:
                least[j] -= step
        j0 = j1
    while j0:  # flip the path back to the root
        j1 = way[j0]
        owner[j0] = owner[j1]
        j0 = j1


def award_by_regret(
    auctions: Mapping[str, Sequence[ReceivedBid]], free: Mapping[str, int]
) -> dict[str, ReceivedBid | None]:
    """Award auctions greedily in order of regret: per task id its winning bid, or None.

    Repeatedly award the auction with the largest regret, its best valid bid's score minus
    its second-best's (0 without one), among workers that still have room; ties go to the
    higher best score, then the smaller task id. Each award takes the bid `choose_winner`
    would; no worker gets more than `free` allows.
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
