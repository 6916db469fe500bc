"""The award rules of the protocol, on the pure functions."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

import pytest

from jarvis_kernel.market.auction import (
    OPTIMAL_UP_TO,
    ReceivedBid,
    _costs,
    _Option,
    award_batch,
    award_by_regret,
    choose_winner,
    free_capacity,
    joint_contenders,
    priority_key,
    window_complete,
)


def bid(worker: str, score: float, load: int = 0, capacity: int = 1, seq: int = 0) -> ReceivedBid:
    return ReceivedBid(worker_id=worker, score=score, load=load, capacity=capacity, seq=seq)


FREE = {"a": 1, "b": 1, "c": 1}


def test_highest_score_wins() -> None:
    bids = [bid("a", 0.4, seq=0), bid("b", 0.9, seq=1), bid("c", 0.7, seq=2)]
    assert choose_winner(bids, FREE) == bids[1]


def test_zero_scores_are_refusals() -> None:
    assert choose_winner([bid("a", 0.0), bid("b", 0.0, seq=1)], FREE) is None
    assert choose_winner([], FREE) is None


def test_tie_goes_to_lower_load_ratio() -> None:
    busy = bid("a", 0.8, load=1, capacity=2, seq=0)
    idle = bid("b", 0.8, load=0, capacity=1, seq=1)
    assert choose_winner([busy, idle], {"a": 1, "b": 1}) == idle


def test_then_to_earlier_bid_then_smaller_id() -> None:
    early = bid("z", 0.8, seq=0)
    late = bid("a", 0.8, seq=1)
    assert choose_winner([late, early], {"a": 1, "z": 1}) == early
    same_seq = [bid("b", 0.8, seq=3), bid("a", 0.8, seq=3)]
    assert choose_winner(same_seq, FREE).worker_id == "a"  # type: ignore[union-attr]


def test_full_worker_never_wins() -> None:
    bids = [bid("a", 0.99, seq=0), bid("b", 0.2, seq=1)]
    assert choose_winner(bids, {"a": 0, "b": 1}) == bids[1]
    assert choose_winner(bids, {"a": 0, "b": 0}) is None
    assert choose_winner([bid("stranger", 0.9)], FREE) is None


def test_joint_award_beats_in_order_greedy() -> None:
    # In order, t1 takes a (0.9) and t2 is left with b (0.2): 1.1. By regret, t2 (which loses
    # 0.7 without a) goes first: t2 -> a, t1 -> b: 1.7.
    auctions = {
        "t1": [bid("a", 0.9, seq=0), bid("b", 0.8, seq=1)],
        "t2": [bid("a", 0.9, seq=2), bid("b", 0.2, seq=3)],
    }
    winners = award_batch(auctions, {"a": 1, "b": 1})
    assert winners == {"t1": auctions["t1"][1], "t2": auctions["t2"][0]}
    assert choose_winner(auctions["t1"], {"a": 1, "b": 1}) == auctions["t1"][0]


def test_joint_award_single_auction_is_choose_winner() -> None:
    cases = [
        [bid("a", 0.4, seq=0), bid("b", 0.9, seq=1), bid("c", 0.7, seq=2)],
        [bid("a", 0.8, load=1, capacity=2, seq=0), bid("b", 0.8, seq=1)],
        [bid("z", 0.8, seq=0), bid("a", 0.8, seq=1)],
        [bid("a", 0.99, seq=0), bid("b", 0.2, seq=1)],
        [bid("a", 0.0), bid("b", 0.0, seq=1)],
        [],
    ]
    for free in (FREE, {"a": 0, "b": 1, "c": 1, "z": 1}, {}):
        for bids in cases:
            assert award_batch({"t": bids}, free) == {"t": choose_winner(bids, free)}


def test_joint_award_never_beyond_capacity() -> None:
    auctions = {f"t{i}": [bid("a", 0.9, seq=i), bid("b", 0.5, seq=10 + i)] for i in range(5)}
    winners = award_batch(auctions, {"a": 2, "b": 1, "c": 5})
    taken = [w.worker_id for w in winners.values() if w is not None]
    assert sorted(taken) == ["a", "a", "b"]
    assert sum(w is None for w in winners.values()) == 2
    assert award_batch(auctions, {"a": 0, "b": 0}) == dict.fromkeys(auctions)


def test_regret_order_ties_by_best_score_then_task_id() -> None:
    # Equal regret (0.1): the higher best score goes first and takes the shared worker.
    low = {"t-a": [bid("a", 0.5, seq=0), bid("b", 0.4, seq=1)]}
    high = {"t-z": [bid("a", 0.9, seq=2), bid("c", 0.8, seq=3)]}
    winners = award_by_regret(low | high, {"a": 1, "b": 1, "c": 1})
    assert winners["t-z"].worker_id == "a"  # type: ignore[union-attr]
    assert winners["t-a"].worker_id == "b"  # type: ignore[union-attr]
    # Equal regret and best score: the smaller task id goes first.
    same = {t: [bid("a", 0.9, seq=i), bid("b", 0.5, seq=9 + i)] for i, t in enumerate("yx")}
    winners = award_by_regret(same, {"a": 1, "b": 1})
    assert winners["x"].worker_id == "a" and winners["y"].worker_id == "b"  # type: ignore[union-attr]


def test_joint_award_takes_the_best_total_where_regret_order_does_not() -> None:
    # By regret: t2 (0.5) takes b, then t3 (0.6 with b gone) takes c, t1 gets nothing: 1.5.
    # The best total: t1 b, t2 a, t3 c: 0.8 + 0.4 + 0.6 = 1.8.
    auctions = {
        "t1": [bid("b", 0.8, seq=0), bid("c", 0.4, seq=1)],
        "t2": [bid("b", 0.9, seq=2), bid("a", 0.4, seq=3)],
        "t3": [bid("b", 0.2, seq=4), bid("c", 0.6, seq=5)],
    }
    free = {"a": 1, "b": 1, "c": 1}
    assert _total(award_by_regret(auctions, free)) == pytest.approx(1.5)
    best = award_batch(auctions, free)
    assert {t: w.worker_id for t, w in best.items() if w} == {"t1": "b", "t2": "a", "t3": "c"}


def test_joint_award_ties_go_to_the_earlier_task_ids_best_ranked_bids() -> None:
    # Both assignments total 1.3: t-a gets a (its best) in the one kept.
    low = {"t-a": [bid("a", 0.5, seq=0), bid("b", 0.4, seq=1)]}
    high = {"t-z": [bid("a", 0.9, seq=2), bid("c", 0.8, seq=3)]}
    winners = award_batch(low | high, {"a": 1, "b": 1, "c": 1})
    assert winners["t-a"].worker_id == "a"  # type: ignore[union-attr]
    assert winners["t-z"].worker_id == "c"  # type: ignore[union-attr]
    # Equal scores everywhere: the earlier bid wins the earlier task.
    same = {t: [bid("a", 0.9, seq=i), bid("b", 0.9, seq=9 + i)] for i, t in enumerate("yx")}
    winners = award_batch(same, {"a": 1, "b": 1})
    assert winners["x"].worker_id == "a" and winners["y"].worker_id == "b"  # type: ignore[union-attr]


def _total(winners: Mapping[str, ReceivedBid | None]) -> float:
    return sum(w.score for w in winners.values() if w is not None)


def _brute_force(
    auctions: Mapping[str, Sequence[ReceivedBid]], free: Mapping[str, int]
) -> tuple[float, dict[str, ReceivedBid | None]]:
    """The rule of `award_batch` by enumeration: best total (compared exactly), then each
    auction in task id order the best rank it can get."""
    tasks = sorted(auctions)
    options = [
        [None, *sorted((b for b in auctions[t] if b.score > 0.0), key=_rank_key)] for t in tasks
    ]
    best: tuple[tuple[object, ...], dict[str, ReceivedBid | None]] | None = None
    for choice in itertools.product(*options):
        used = Counter(b.worker_id for b in choice if b is not None)
        if any(n > free.get(w, 0) for w, n in used.items()):
            continue
        total = sum(int(math.ldexp(b.score, 64)) for b in choice if b is not None)
        ranks = tuple(
            len(opts) if b is None else opts.index(b) - 1
            for b, opts in zip(choice, options, strict=True)
        )
        key = (-total, ranks)
        if best is None or key < best[0]:
            best = (key, dict(zip(tasks, choice, strict=True)))
    assert best is not None
    return _total(best[1]), best[1]


def _rank_key(b: ReceivedBid) -> tuple[float, float, int, str]:
    return (-b.score, b.load / b.capacity, b.seq, b.worker_id)


@pytest.mark.parametrize("seed", range(4))
def test_property_joint_award_is_the_best_total_and_its_tie_rule(seed: int) -> None:
    rng = random.Random(seed)
    seq = itertools.count()
    for _ in range(400):
        auctions, free = _random_batch(rng, seq)
        winners = award_batch(auctions, free)
        _, expected = _brute_force(auctions, free)
        assert winners == expected, (auctions, free)
        taken = Counter(w.worker_id for w in winners.values() if w is not None)
        assert all(n <= free[w] for w, n in taken.items())


def _random_batch(
    rng: random.Random, seq: Iterator[int]
) -> tuple[dict[str, list[ReceivedBid]], dict[str, int]]:
    workers = [f"w{i}" for i in range(rng.randint(1, 4))]
    free = {w: rng.choice([0, 1, 1, 2]) for w in workers}
    # coarse, so ties are common; dyadic ones sum exactly (0.25 + 0.5 == 0.75)
    scores = [0.0, 0.25, 0.3, 0.5, 0.5, 0.75, 0.8, 0.9]
    auctions = {
        f"t{i}": [
            bid(
                w,
                rng.choice(scores) if rng.random() < 0.7 else rng.random(),
                load=rng.randint(0, 1),
                capacity=2,
                seq=next(seq),
            )
            for w in rng.sample(workers, rng.randint(0, len(workers)))
        ]
        for i in rng.sample(range(9), rng.randint(1, 5))
    }
    return auctions, free


def test_the_cost_encoding_orders_assignments_exactly_as_the_rule() -> None:
    """Every two assignments compare by their encoded cost as by (total, ranks in task id
    order): no carry from one auction's rank digit into the previous one's."""
    rng = random.Random(11)
    seq = itertools.count()
    for _ in range(300):
        auctions, _ = _random_batch(rng, seq)
        tasks = sorted(auctions)
        ranked = [sorted((b for b in auctions[t] if b.score > 0.0), key=_rank_key) for t in tasks]
        rows = [
            [_Option(b.worker_id, _exact(b.score), i, b) for i, b in enumerate(r)] for r in ranked
        ]
        if not any(rows):
            continue
        slots = sorted({o.worker_id for row in rows for o in row})
        costs = _costs(rows, slots)
        keys = []
        for choice in itertools.product(*[[None, *range(len(r))] for r in rows]):
            picked = [None if c is None else rows[i][c] for i, c in enumerate(choice)]
            used = [o.worker_id for o in picked if o is not None]
            if len(used) != len(set(used)):
                continue
            cost = sum(
                costs[i][len(slots) + i] if o is None else costs[i][slots.index(o.worker_id)]
                for i, o in enumerate(picked)
            )
            total = sum(o.score for o in picked if o is not None)
            ranks = tuple(len(r) if c is None else c for c, r in zip(choice, rows, strict=True))
            keys.append(((-total, ranks), cost))
        by_rule = sorted(keys)
        assert [c for _, c in by_rule] == sorted(c for _, c in keys)
        assert len({c for _, c in keys}) == len(keys)  # no two assignments tie


def test_the_old_cost_encoding_tie_is_gone() -> None:
    """t1 gets its best bid and t2 nothing, or t1 its second and t2 its only one: the same
    total (0.75 == 0.5 + 0.25); t1, first in task id order, decides: its best bid."""
    auctions = {
        "t2": [bid("x", 0.25, seq=3)],
        "t1": [bid("y", 0.5, seq=2), bid("x", 0.75, seq=1)],
    }
    assert award_batch(auctions, {"x": 1, "y": 1}) == {"t1": auctions["t1"][1], "t2": None}


def _exact(score: float) -> int:
    return int(math.ldexp(score, 64))


@pytest.mark.parametrize("seed", range(4))
def test_property_joint_contenders_decide_exactly_when_no_silent_bid_could_change_it(
    seed: int,
) -> None:
    """Decided (no contender): any bids of the silent workers at most their bounds leave
    the award of the bids in hand as it is. Not decided: bids at the bounds with no load
    change it, and the workers named are silent ones."""
    rng = random.Random(seed)
    seq = itertools.count()
    outcomes = Counter[bool]()
    for _ in range(300):
        auctions, free = _random_batch(rng, seq)
        workers = sorted(free)
        silent = {
            task: {
                w: rng.choice([0.0, 0.25, 0.5, 0.75, 0.8, 1.0, rng.random()])
                for w in workers
                if w not in {b.worker_id for b in bids} and rng.random() < 0.5
            }
            for task, bids in auctions.items()
        }
        award = award_batch(auctions, free)
        asked = joint_contenders(auctions, silent, free)
        outcomes[not asked] += 1
        at_bounds = {
            task: [*bids, *(bid(w, b, seq=next(seq)) for w, b in silent[task].items())]
            for task, bids in auctions.items()
        }
        if not asked:
            for _ in range(5):
                later = {
                    task: [
                        *bids,
                        *(
                            bid(
                                w,
                                rng.choice([b, b * rng.random()]),
                                load=rng.randint(0, 1),
                                capacity=rng.choice([1, 2]),
                                seq=next(seq),
                            )
                            for w, b in silent[task].items()
                            if rng.random() < 0.8
                        ),
                    ]
                    for task, bids in auctions.items()
                }
                assert award_batch(later, free) == award, (auctions, silent, free, later)
            assert award_batch(at_bounds, free) == award
        else:
            assert award_batch(at_bounds, free) != award, (auctions, silent, free)
            assert all(set(ws) <= set(silent[t]) for t, ws in asked.items())
    assert outcomes[True] > 50 and outcomes[False] > 50, outcomes


def test_joint_contenders_ties_with_a_bid_in_hand() -> None:
    """A silent worker that can only tie a bid in hand with no load cannot win it (it would
    bid later); one that ties a bid in hand with load can (less loaded, it ranks first)."""
    free = {"a": 1, "b": 1, "c": 1}
    idle = {"t1": [bid("a", 0.5, load=0, capacity=2)], "t2": [bid("b", 0.5)]}
    assert joint_contenders(idle, {"t1": {"c": 0.5}}, free) == {}
    loaded = {"t1": [bid("a", 0.5, load=1, capacity=2)], "t2": [bid("b", 0.5)]}
    assert joint_contenders(loaded, {"t1": {"c": 0.5}}, free) == {"t1": ["c"]}
    # t2 gets nothing from the bids in hand: a silent worker with room may take it
    swap = {"t1": [bid("a", 0.9)], "t2": [bid("a", 0.8)]}
    assert joint_contenders(swap, {"t2": {"b": 0.3}}, free) == {"t2": ["b"]}
    assert joint_contenders(swap, {"t2": {"b": 0.0}, "t1": {"c": 0.0}}, free) == {}
    # a silent worker without room, or bounded 0, is no contender
    assert joint_contenders(swap, {"t2": {"b": 0.3}}, {"a": 1, "b": 0}) == {}


def test_a_batch_too_large_for_the_best_total_is_awarded_by_regret() -> None:
    rng = random.Random(7)
    auctions = {
        f"t{i:03d}": [bid(f"w{j}", rng.random(), seq=100 * i + j) for j in range(8)]
        for i in range(OPTIMAL_UP_TO + 1)
    }
    free = {f"w{j}": 3 for j in range(8)}
    assert award_batch(auctions, free) == award_by_regret(auctions, free)
    smaller = dict(list(auctions.items())[:OPTIMAL_UP_TO])
    assert _total(award_batch(smaller, free)) >= _total(award_by_regret(smaller, free))


def test_joint_award_of_nothing() -> None:
    assert award_batch({}, FREE) == {}
    assert award_batch({"t": []}, FREE) == {"t": None}
    assert award_batch({"t": [bid("a", 0.0)]}, FREE) == {"t": None}


@pytest.mark.parametrize(
    ("eligible", "answered", "complete"),
    [
        ({"a", "b"}, {"a"}, False),
        ({"a", "b"}, {"a", "b"}, True),
        ({"a"}, {"a", "late-joiner"}, True),
        (set(), {"x"}, False),
        (set(), set(), False),
    ],
)
def test_window_closes_early_only_when_every_eligible_worker_answered(
    eligible: set[str], answered: set[str], complete: bool
) -> None:
    assert window_complete(eligible, answered) is complete


def test_free_capacity_counts_open_awards_and_reported_load() -> None:
    capacity = {"a": 2, "b": 1, "c": 3}
    committed = {"a": 1, "b": 1}
    load = {"c": 2, "a": 0}
    assert free_capacity(capacity, committed, load) == {"a": 1, "b": 0, "c": 1}


def test_priority_then_age() -> None:
    keys = [priority_key(0, 1), priority_key(5, 3), priority_key(0, 0), priority_key(5, 2)]
    assert sorted(keys) == [(-5, 2), (-5, 3), (0, 0), (0, 1)]
