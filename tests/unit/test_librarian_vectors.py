"""librarian/vectors.py: the exact nearest-pattern search over bounds (numpy only)."""

from __future__ import annotations

from typing import Any

import pytest

from jarvis_kernel.librarian import vectors
from jarvis_kernel.librarian.embed import DIMS
from jarvis_kernel.librarian.vectors import Project, Slots, fit_basis, top

np = pytest.importorskip("numpy")


def _patterns(n: int, kinds: int, noise: float, seed: int = 0, rank: int = DIMS) -> Any:
    """`n` unit vectors around `kinds` directions (patterns of a few kinds, all distinct),
    the differences within a kind spanning `rank` dimensions (word vectors are like that:
    a few dozen axes hold most of what tells patterns apart)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((kinds, DIMS)).astype(np.float32)
    axes = rng.standard_normal((rank, DIMS)).astype(np.float32)
    spread = rng.standard_normal((n, rank)).astype(np.float32) @ axes * (noise / rank**0.5)
    vecs = centres[rng.integers(0, kinds, n)] + spread
    vecs += 0.02 * rng.standard_normal((n, DIMS)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def _slots(vecs: Any, *, fitted: bool, projects: int = 1) -> Slots:
    rng = np.random.default_rng(9)
    basis = vectors._orthonormal(rng.standard_normal((DIMS, 64)))  # any orthonormal basis
    slots = Slots(basis.astype(np.float32))
    slots.reserve(len(vecs))
    for p, part in enumerate(np.array_split(np.arange(len(vecs)), projects)):
        where = slots.alloc(len(part))
        slots.put(where, vecs[part])
        slots.code[where] = slots.code_of(f"p{p}")
        slots.projects[f"p{p}"] = Project(slots=where, pairs=np.zeros((0, 2), np.int64))
    if fitted:
        slots.refit()
    return slots


def _brute(vecs: Any, query: Any, boosts: list[Any], drop: Any, limit: int) -> Any:
    scores = vecs @ query
    for members, value in boosts:
        scores[members] += value
    if drop is not None:
        scores[drop] = -np.inf
    return np.sort(scores)[::-1][:limit]


def _reads(slots: Slots, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many full vectors each `nearest` call reads (probe and final pass)."""
    counts: list[int] = []
    real = Slots._scores

    def counted(self: Slots, where: Any, query: Any, extra: Any) -> Any:
        counts.append(len(where))
        return real(self, where, query, extra)

    monkeypatch.setattr(Slots, "_scores", counted)
    return counts


@pytest.mark.parametrize("fitted", [True, False])
def test_nearest_is_the_exact_top_with_boosts_and_left_out_slots(fitted: bool) -> None:
    vecs = _patterns(1500, kinds=12, noise=0.6)
    slots = _slots(vecs, fitted=fitted, projects=3)
    rng = np.random.default_rng(1)
    for n in range(15):
        query = vecs[rng.integers(len(vecs))] + 0.5 * rng.standard_normal(DIMS)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        boosts = [(np.sort(rng.choice(len(vecs), 200, replace=False)), 0.05 * n)]
        drop = (slots.code[: slots.used] == 1) if n % 2 else None
        found, scores = slots.nearest(query, 20, boosts, drop)
        assert np.allclose(scores, _brute(vecs, query, boosts, drop, 20), atol=1e-5)
        assert scores.tolist() == sorted(scores.tolist(), reverse=True)
        if drop is not None:
            assert not drop[found].any()


def test_a_fitted_basis_reads_few_full_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    vecs = _patterns(20_000, kinds=16, noise=0.5, rank=24)
    slots = _slots(vecs, fitted=True)
    reads = _reads(slots, monkeypatch)
    rng = np.random.default_rng(2)
    for _ in range(10):
        query = vecs[rng.integers(len(vecs))] + 0.3 * rng.standard_normal(DIMS)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        _, scores = slots.nearest(query, 20)
        assert np.allclose(scores, _brute(vecs, query, [], None, 20), atol=1e-5)
    # two reads a query (the probe, then the bound's survivors); the old pass read ~4,400
    assert max(reads) < 1500, reads


def test_a_basis_fitted_to_nothing_reads_at_most_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vecs = _patterns(10_000, kinds=10_000, noise=0.0)  # random: no basis helps
    slots = _slots(vecs, fitted=False)
    reads = _reads(slots, monkeypatch)
    query = vecs[3] + vecs[7]
    found, _ = slots.nearest((query / np.linalg.norm(query)).astype(np.float32), 5)
    assert max(reads) <= vectors._MAX_EXACT
    assert {3, 7} <= set(found.tolist())


def test_freed_slots_are_never_found_and_members_stay_sorted() -> None:
    vecs = _patterns(300, kinds=3, noise=0.3)
    slots = _slots(vecs, fitted=False, projects=3)
    pairs = np.stack([np.arange(300), np.arange(300) % 4], axis=1)
    for name, project in slots.projects.items():
        mine = np.isin(pairs[:, 0], project.slots)
        slots.projects[name] = Project(slots=project.slots, pairs=pairs[mine][::-1])
    slots.drop("p1")
    slots.index_members(4)
    assert all((np.diff(m) > 0).all() for m in slots.members)
    query = vecs[150]  # a pattern of p1, now gone
    found, _ = slots.nearest(query, 300, [(slots.members[0], 0.1)])
    assert len(found) == 200 and (slots.code[found] >= 0).all()


def test_fit_basis_is_orthonormal_and_holds_the_energy() -> None:
    vecs = _patterns(5000, kinds=8, noise=0.05)
    basis = fit_basis(vecs, np.eye(DIMS, 16))
    assert basis.shape == (DIMS, 16)
    assert np.allclose(basis.T @ basis, np.eye(16), atol=1e-5)
    kept = np.linalg.norm(vecs @ basis, axis=1)
    assert np.median(kept) > 0.95  # 8 kinds: 16 axes hold nearly all of each vector


def test_top_keeps_the_best_even_for_a_small_k() -> None:
    rng = np.random.default_rng(4)
    scores = rng.standard_normal(200_000).astype(np.float32)
    for k in (20, 128, 1000):
        found = top(scores, k)
        assert len(found) >= k
        assert set(np.argsort(-scores)[:k].tolist()) <= set(found.tolist())


def test_the_basis_is_fitted_again_once_the_patterns_have_doubled() -> None:
    slots = _slots(_patterns(3000, kinds=5, noise=0.3), fitted=False)
    assert slots.fitted == 0
    assert not slots.refit_due(vectors._REFIT_MIN - 1)
    assert slots.refit_due(vectors._REFIT_MIN)
    slots.refit()
    assert slots.fitted == 3000
    assert not slots.refit_due(5999) and slots.refit_due(6000)
