"""The award rules of the protocol, on the pure functions."""

from __future__ import annotations

import pytest

from jarvis_kernel.market.auction import (
    ReceivedBid,
    award_batch,
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


def test_joint_award_ties_by_best_score_then_task_id() -> None:
    # Equal regret (0.1): the higher best score goes first and takes the shared worker.
    low = {"t-a": [bid("a", 0.5, seq=0), bid("b", 0.4, seq=1)]}
    high = {"t-z": [bid("a", 0.9, seq=2), bid("c", 0.8, seq=3)]}
    winners = award_batch(low | high, {"a": 1, "b": 1, "c": 1})
    assert winners["t-z"].worker_id == "a"  # type: ignore[union-attr]
    assert winners["t-a"].worker_id == "b"  # type: ignore[union-attr]
    # Equal regret and best score: the smaller task id goes first.
    same = {t: [bid("a", 0.9, seq=i), bid("b", 0.5, seq=9 + i)] for i, t in enumerate("yx")}
    winners = award_batch(same, {"a": 1, "b": 1})
    assert winners["x"].worker_id == "a" and winners["y"].worker_id == "b"  # type: ignore[union-attr]


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
