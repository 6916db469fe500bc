"""Pattern vectors in slots, and the search for the ones nearest a query (numpy only).

Every live pattern has a slot holding its unit vector (`DIMS` floats) and the same vector in
a basis fitted to the patterns themselves (`fit_basis`: the leading axes of their second
moment, an uncentred PCA, 64 of them): the first `HEAD` coordinates, the next ones (the
"tail"), and two lengths: ``mid`` = |tail| and ``far`` = the length of what the basis leaves
out. A query q splits the same way, and since the three parts are orthogonal, for every
pattern x (Cauchy-Schwarz on the last two):

    x.q = head(x).head(q) + tail(x).tail(q) + rest(x).rest(q)
       <= head(x).head(q) + mid(x) |tail(q)| + far(x) |rest(q)|

`Slots.nearest` reads every pattern's head (`HEAD` floats instead of `DIMS`), takes a floor
(the limit-th best exact score among the patterns with the best heads), reads the tails of
those whose bound reaches it, and the full vectors of those whose tighter bound (the tail
read) still does: the result is the **exact** best `limit`, unless more than `_MAX_EXACT`
full vectors would have to be read (then those with the best 64-coordinate estimates are).
On their own basis the first 24 coordinates of the benchmark's patterns hold 98-100 % of
their energy, and ~1,100 full vectors are read of 200,000 (benchmarks/RESULTS.md). The
basis decides how much is read, not what is found (below the cap): after the patterns have
changed it is only slower, and `Slots.refit` is called when their number has grown well past
the one it was fitted on. A per-pattern addition to the score (the glossary step: `Boost`)
goes into the bounds and the exact scores alike.

Blocking and CPU-bound: call from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .embed import DIMS

if TYPE_CHECKING:
    from numpy.typing import NDArray

    Matrix = NDArray[Any]
else:
    Matrix = Any

__all__ = ["HEAD", "Boost", "Project", "Slots", "dot", "fit_basis", "top"]

# (slots, value): the value is added to those patterns' scores (the glossary step)
Boost = tuple[Matrix, float]

HEAD = 24  # coordinates read for every pattern
# float32 rounding of the parts: a bound is trusted to this much (scores are cosines, <= 1)
_EPS = 1e-5
# patterns (about) with the best heads whose exact scores give the first floor
_PROBE = 128
# at most this many full vectors read a query (the former approximate pass read ~4,400):
# past it, those with the best estimates (a basis fitted to other patterns, or none, or
# thousands of near-ties could otherwise send the search through all of them)
_MAX_EXACT = 2048
# at most this many tails read a query: past it, those with the best heads (measured on
# near-ties: reading 18,000 tails cost more than the whole former pass; RESULTS.md)
_MAX_SECOND = 4 * _MAX_EXACT
_FIT_SAMPLE = 4096  # live vectors (seeded sample) the basis is fitted on
# the basis is fitted again once the live patterns are this many times as many as when it
# was last fitted, and at least `_REFIT_MIN` (fewer are read in full anyway)
_REFIT_GROWTH = 2
_REFIT_MIN = 1024
_FIT_ROUNDS = 12  # of subspace iteration (RESULTS.md: as much energy as an exact eigh)
_CHUNK = 16_384  # rows projected at once (the residual is a temporary of this many rows)


class Project(msgspec.Struct):
    slots: Any  # positions in the slot arrays
    pairs: Any  # (slot, glossary entry) of each mention, shape (n, 2)


def dot(a: Matrix, b: Matrix) -> Matrix:
    """``a @ b`` (a matrix and a vector, or a vector and a matrix) in numpy's own loop, on
    this thread only. Not BLAS: OpenBLAS splits the product over every core and its threads
    spin while they wait for one; on a small machine with other work (the keyword query,
    other processes) that made the 2 ms product of a query with every pattern take 8-28 ms
    (benchmarks/RESULTS.md). Index time keeps BLAS (matrix products, faster there)."""
    import numpy as np

    return np.einsum("ij,j->i" if a.ndim == 2 else "j,jk->k", a, b)  # type: ignore[no-any-return]


def top(scores: Matrix, k: int) -> Matrix:
    """Positions of (about, at least) the `k` highest finite scores, unordered: a threshold
    from a sample of ~4,000, then one comparison over all (cheaper than a partition of
    everything); lowered once if too few pass, a partition of all as the last resort."""
    import numpy as np

    n = len(scores)
    if n > 8 * k:
        step = max(1, n // max(8 * k, 4096))
        sample = np.sort(scores[::step])
        want = max(8, (2 * k * len(sample)) // n)  # expected to pass: ~2k
        for wanted in (want, 4 * want):
            if wanted >= len(sample):
                break
            found = np.flatnonzero(scores >= sample[len(sample) - wanted])
            if len(found) >= k:
                if len(found) > 4 * k:
                    found = found[np.argpartition(-scores[found], k)[:k]]
                return found[np.isfinite(scores[found])]
    found = np.argpartition(-scores, k)[:k] if n > k else np.arange(n)
    return found[np.isfinite(scores[found])]


def fit_basis(vectors: Matrix, start: Matrix) -> Matrix:
    """Orthonormal axes (columns, as many as `start` has) holding the most of `vectors`'
    energy: the leading eigenvectors of their second moment, by subspace iteration from
    `start`. numpy loops only, no LAPACK or BLAS: their threads spin when the machine is
    busy, and made a 384 x 384 eigendecomposition take 0.4-2.5 s instead of ~40 ms here;
    this takes ~0.1-0.3 s for 4,096 vectors. Exactness does not depend on how well it
    converges (module docstring), only how much a search reads."""
    import numpy as np

    moment = np.einsum("ij,ik->jk", vectors, vectors).astype(np.float64)
    axes = np.asarray(start, dtype=np.float64)
    for _ in range(_FIT_ROUNDS):
        axes = _orthonormal(np.einsum("ij,jk->ik", moment, axes))
    return np.ascontiguousarray(_orthonormal(axes), dtype=np.float32)


def _orthonormal(columns: Matrix) -> Matrix:
    """Gram-Schmidt, twice over (float64): the columns made orthonormal, in order."""
    import numpy as np

    out = np.array(columns, dtype=np.float64)
    for j in range(out.shape[1]):
        v = out[:, j]
        for _ in range(2):
            if j:
                v -= np.einsum("ij,j->i", out[:, :j], np.einsum("ij,i->j", out[:, :j], v))
        norm = float(np.linalg.norm(v))
        v /= norm if norm > 1e-12 else 1.0
    return out


class Slots:
    """Pattern vectors in growable arrays; a freed slot is reused by the next pattern.

    Slots ``[0, used)`` have been handed out (live, or freed and waiting for reuse); the
    rest is room to grow, never scanned by a query. `basis` (shape (DIMS, HEAD + tail)):
    orthonormal columns, the table's principal axes until `refit`.
    """

    def __init__(self, basis: Matrix) -> None:
        import numpy as np

        self._np = np
        self.basis: Matrix = np.ascontiguousarray(basis, dtype=np.float32)
        self.head_dims = min(HEAD, self.basis.shape[1])
        tail_dims = self.basis.shape[1] - self.head_dims
        self.full: Matrix = np.zeros((0, DIMS), dtype=np.float32)
        # read by every query, so stored by coordinate (a row each: one contiguous pass per
        # coordinate, ~3x faster than by pattern here): the head coordinates, then |tail|,
        # then the length of what the basis leaves out
        self.lead: Matrix = np.zeros((self.head_dims + 2, 0), dtype=np.float32)
        self.tail: Matrix = np.zeros((0, tail_dims), dtype=np.float32)
        self.rowid: Matrix = np.zeros(0, dtype=np.int64)
        self.code: Matrix = np.zeros(0, dtype=np.int32)  # project code, -1: free
        self.used = 0
        self.fitted = 0  # live patterns when the basis was fitted (0: never)
        self.free: list[int] = []
        self.projects: dict[str, Project] = {}
        self.codes: dict[str, int] = {}
        self.members: list[Matrix] = []

    # -- slots
    def reserve(self, n: int) -> None:
        """Room for `n` more slots, exactly (a full load: no growth, no copies)."""
        self._grow(self.used + n - len(self.code))

    def _grow(self, more: int) -> None:
        np = self._np
        if more <= 0:
            return
        size = len(self.code) + more

        def longer(array: Matrix, fill: float = 0.0) -> Matrix:
            # zeros: pages the kernel hands out on first write, not copied or filled here
            out = np.zeros((size, *array.shape[1:]), dtype=array.dtype)
            out[: len(array)] = array
            if fill:
                out[len(array) :] = fill
            return out  # type: ignore[no-any-return]

        self.full, self.tail, self.rowid = longer(self.full), longer(self.tail), longer(self.rowid)
        self.code = longer(self.code, -1)
        lead = np.zeros((self.lead.shape[0], size), dtype=np.float32)
        lead[:, : self.lead.shape[1]] = self.lead
        self.lead = lead

    def alloc(self, n: int) -> Matrix:
        take = self.free[-n:] if n else []
        del self.free[len(self.free) - len(take) :]
        extra = n - len(take)
        if extra:
            start, end = self.used, self.used + extra
            if end > len(self.code):  # grow by half at least: adding projects stays cheap
                self._grow(max(end - len(self.code), len(self.code) // 2, 64))
            take = [*take, *range(start, end)]
            self.used = end
        return self._np.asarray(take, dtype=self._np.int64)

    def drop(self, project: str) -> None:
        old = self.projects.pop(project, None)
        if old is not None and len(old.slots):
            where = old.slots
            self.code[where] = -1
            self.full[where] = self.tail[where] = 0.0
            self.lead[:, where] = 0.0
            self.free.extend(int(s) for s in where)

    def live(self) -> int:
        return self.used - len(self.free)

    def code_of(self, project: str) -> int:
        return self.codes.setdefault(project, len(self.codes))

    def index_members(self, entries: int) -> None:
        """entry -> slots of the patterns mentioning it, sorted (after any change)."""
        np = self._np
        parts = [p.pairs for p in self.projects.values() if len(p.pairs)]
        pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        pairs = pairs[np.argsort(pairs[:, 1] * (len(self.code) + 1) + pairs[:, 0])]
        bounds = np.searchsorted(pairs[:, 1], np.arange(entries + 1))
        self.members = [pairs[bounds[e] : bounds[e + 1], 0] for e in range(entries)]

    # -- vectors
    def put(self, where: Matrix, vectors: Matrix, *, project: bool = True) -> None:
        """Unit `vectors` into the slots `where`, with their coordinates in the basis
        (`project` False: a `refit` follows, which computes them all at once)."""
        self.full[where] = vectors
        if project:
            self._project(where, vectors)

    def refit_due(self, live: int) -> bool:
        """Whether `live` patterns are enough more than the basis was fitted on to fit it
        again (a full load, or growth from an empty memory)."""
        return live >= max(_REFIT_MIN, _REFIT_GROWTH * self.fitted)

    def _project(self, where: Matrix, vectors: Matrix) -> None:
        np = self._np
        coords = vectors @ self.basis  # BLAS: index time
        rest = vectors - coords @ self.basis.T
        head = self.head_dims
        self.lead[:head, where] = coords[:, :head].T
        self.lead[head, where] = np.linalg.norm(coords[:, head:], axis=1)
        self.lead[head + 1, where] = np.linalg.norm(rest, axis=1)
        self.tail[where] = coords[:, head:]

    def refit(self) -> None:
        """Fit the basis to the live patterns and project them all again (~0.5 s at
        200,000 patterns): the search reads fewer full vectors on a basis of their own."""
        np = self._np
        live = np.flatnonzero(self.code[: self.used] >= 0)
        if len(live) > _FIT_SAMPLE:
            live = np.sort(np.random.default_rng(0).choice(live, _FIT_SAMPLE, replace=False))
        self.basis = fit_basis(self.full[live], self.basis)
        for start in range(0, self.used, _CHUNK):
            where = np.arange(start, min(start + _CHUNK, self.used))
            self._project(where, self.full[where])
        self.fitted = self.live()

    # -- queries
    def nearest(
        self,
        query: Matrix,
        limit: int,
        boosts: Sequence[Boost] = (),
        drop: Matrix | None = None,
    ) -> tuple[Matrix, Matrix]:
        """Slots of the `limit` live patterns with the highest ``full @ query`` plus their
        `boosts` (each value added to the scores of its slots), leaving out those `drop`
        marks (a mask over used slots), best first, and those scores. Exact unless more than
        `_MAX_EXACT` patterns could reach them (then those with the best 64-coordinate
        estimates are read; and of more than `_MAX_SECOND` after the first bound, those
        with the best heads)."""
        np = self._np
        used, head = self.used, self.head_dims
        coords = dot(query, self.basis)
        q_tail = coords[head:]
        q_mid = float(np.linalg.norm(q_tail))
        q_far = float(np.linalg.norm(query - dot(self.basis, coords)))
        # every pattern's head read: an estimate to probe by, then the first bound (the
        # tail and the rest of its vector at their largest)
        scores = dot(coords[:head], self.lead[:head, :used])
        extra = self._extra(boosts)
        if extra is not None:
            scores += extra
        if drop is not None:
            scores[drop] = -np.inf
        floor = self._floor(scores, query, limit, extra)
        bound = dot(np.asarray([q_mid, q_far], np.float32), self.lead[head:, :used])
        bound += scores
        near = np.flatnonzero(bound >= floor)
        if len(near) > _MAX_SECOND:  # bounds too loose to prove much: the best heads
            best = np.argpartition(-scores[near], _MAX_SECOND)[:_MAX_SECOND]
            near = np.sort(near[best])
        # the second bound, on those: their tails read
        est = scores[near] + dot(self.tail[near], q_tail)
        ok = (est + self.lead[head + 1, near] * q_far >= floor) & (self.code[near] >= 0)
        near, est = near[ok], est[ok]
        if len(near) > _MAX_EXACT:
            best = np.argpartition(-est, _MAX_EXACT)[:_MAX_EXACT]
            near = np.sort(near[best])
        return self._exact(near, query, limit, extra)

    def _extra(self, boosts: Sequence[Boost]) -> Matrix | None:
        """The boosts as one array over the used slots (None: no boost): a gather for every
        pattern read later, cheaper than looking each one up in every boost's slots."""
        np = self._np
        if not boosts:
            return None
        extra = np.zeros(self.used, dtype=np.float32)
        for members, value in boosts:
            np.add.at(extra, members, np.float32(value))
        return extra  # type: ignore[no-any-return]

    def _floor(self, scores: Matrix, query: Matrix, limit: int, extra: Matrix | None) -> float:
        """A score the limit-th best pattern reaches for sure (the limit-th best exact score
        of those with the best heads), less the rounding margin; the lowest finite float
        when too few patterns are in scope."""
        np = self._np
        probe = top(scores, max(_PROBE, limit))
        probe = probe[self.code[probe] >= 0]
        if len(probe) < limit:
            return float(np.finfo(np.float32).min)
        exact = self._scores(probe, query, extra)
        return float(np.partition(exact, len(exact) - limit)[len(exact) - limit]) - _EPS

    def scores_of(self, where: Matrix, query: Matrix, boosts: Sequence[Boost] = ()) -> Matrix:
        """The scores `nearest` gives the slots `where` (any, not only the best)."""
        np = self._np
        exact: Matrix = dot(np.take(self.full, where, axis=0), query)
        extra = np.zeros(len(where), dtype=np.float32)
        for members, value in boosts:  # members: sorted slots
            at = np.minimum(np.searchsorted(members, where), len(members) - 1)
            extra[members[at] == where] += np.float32(value)
        if boosts:  # the same float32 sums, in the same order, as `nearest`'s
            exact += extra
        return exact

    def _scores(self, where: Matrix, query: Matrix, extra: Matrix | None) -> Matrix:
        """Exact scores of the slots `where`: their full vectors read, plus `extra`."""
        np = self._np
        exact = dot(np.take(self.full, where, axis=0), query)
        if extra is not None:
            exact += extra[where]
        return exact

    def _exact(
        self, near: Matrix, query: Matrix, limit: int, extra: Matrix | None
    ) -> tuple[Matrix, Matrix]:
        np = self._np
        exact = self._scores(near, query, extra)
        if len(near) > limit:
            part = np.argpartition(-exact, limit)[:limit]
            near, exact = near[part], exact[part]
        order = np.argsort(-exact, kind="stable")
        return near[order], exact[order]
