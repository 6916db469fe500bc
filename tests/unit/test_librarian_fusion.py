"""Reciprocal rank fusion of the keyword and dense lists (search.py), ties included."""

from __future__ import annotations

from collections.abc import Sequence

from jarvis_kernel.librarian.index import DocRow
from jarvis_kernel.librarian.search import dense_ranks, rrf


def _row(rowid: int, score: float = 0.0) -> DocRow:
    return DocRow("p", f"n{rowid}", "", f"f{rowid}", [], score, rowid)


def test_equal_dense_scores_share_a_rank() -> None:
    dense = [_row(1, 0.9), _row(2, 0.9), _row(3, 0.5)]
    rows, ranks = dense_ranks(dense, 3, [], None)
    assert rows == dense and ranks == [1, 1, 3]


def test_a_keyword_row_the_dense_pass_did_not_list_is_ranked_by_its_score() -> None:
    dense = [_row(1, 0.9), _row(2, 0.9)]  # look-alikes: the same vector
    keyword = [_row(7), _row(1)]
    scores = {7: 0.9, 1: 0.9}

    def rescore(rows: Sequence[DocRow]) -> list[float | None]:
        return [scores.get(r.rowid) for r in rows]

    rows, ranks = dense_ranks(dense, 2, keyword, rescore)
    assert [r.rowid for r in rows] == [1, 2, 7] and ranks == [1, 1, 1]
    fused = rrf([keyword, rows], 3, 10.0, (0.3, 1.0), [None, ranks])
    assert [r.rowid for r in fused][:2] == [7, 1]  # both lists agree on them
    # below the dense list's last score it stays out of it; without a vector too
    scores[7] = 0.2
    assert [r.rowid for r in dense_ranks(dense, 2, keyword, rescore)[0]] == [1, 2]
    del scores[7]
    assert [r.rowid for r in dense_ranks(dense, 2, keyword, rescore)[0]] == [1, 2]


def test_a_short_dense_list_already_holds_every_row_with_a_vector() -> None:
    calls: list[int] = []

    def rescore(rows: Sequence[DocRow]) -> list[float | None]:
        calls.append(len(rows))
        return [0.9] * len(rows)

    rows, _ = dense_ranks([_row(1, 0.9)], 20, [_row(5)], rescore)
    assert [r.rowid for r in rows] == [1] and calls == []
