"""The award rules of the protocol, on the pure functions."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest

from jarvis_kernel.market.auction import (
    OPTIMAL_UP_TO,
    ReceivedBid,
    award_batch,
    award_by_regret,
    choose_winner,
    free_capacity,
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
        workers = [f"w{i}" for i in range(rng.randint(1, 4))]
        free = {w: rng.choice([0, 1, 1, 2]) for w in workers}
        scores = [0.0, 0.3, 0.5, 0.5, 0.8, 0.9]  # coarse, so ties are common
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
        winners = award_batch(auctions, free)
        _, expected = _brute_force(auctions, free)
        assert winners == expected, (auctions, free)
        taken = Counter(w.worker_id for w in winners.values() if w is not None)
        assert all(n <= free[w] for w, n in taken.items())


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
