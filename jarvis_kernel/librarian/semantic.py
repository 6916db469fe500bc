"""Dense ranking for the ``static`` and ``semantic`` modes, over static pattern vectors.

Every live pattern has a static vector (static.py: the weighted sum of its words' distilled
vectors and those of the glossary entries it mentions, normalised), computed when it is
indexed, in microseconds, and kept in memory: a slot per pattern, updated project by
project as the index changes (`PatternIndex.take_touched`). Words outside the model's
vocabulary are run through the model once and stored in the index (`words` table).

A query becomes a vector in the same space:

- ``static``: its own static vector (microseconds);
- ``semantic``: its all-MiniLM-L6-v2 embedding (~5 ms; a small LRU cache serves repeats).
  The table's words are the model's own one-word sentence embeddings, so the two compare.

Ranking: the glossary step first (the glossary entries closest to the query, by a softmax
over their cosines, add to the score of the patterns that mention them: "background job
queue" -> entry "bullmq" -> the file that says BullMQ), then candidates by a cheap product
in the table's first `LOW_DIMS` principal axes, then the exact cosine (plus the step) on
those candidates only. The weights were measured: benchmarks/RESULTS.md.

Blocking and CPU-bound, like the rest of the store: call from a worker thread.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from .embed import DIMS
from .index import DocRow, PatternIndex
from .static import LOW_DIMS, WordTable, pattern_text
from .taxonomy import Glossary

if TYPE_CHECKING:
    from numpy.typing import NDArray

    Matrix = NDArray[Any]
else:
    Matrix = Any

__all__ = ["QueryModel", "SemanticRanker"]

QueryModel = Literal["static", "model"]

_QUERY_CACHE = 256
# candidates ranked exactly after the low-dimensional pass
_CANDIDATES = 2000
# the glossary step: score += weight x softmax(cosines to the entries / temperature), summed
# over the entries a pattern mentions (static query: 0.3, 0.05; model query: 0.2, 0.05)
_GLOSS_STEP = {"static": (0.3, 0.05), "model": (0.2, 0.05)}
_GLOSS_FLOOR = 1e-3
_GLOSS_MAX = 8  # entries at most (the share of the others is negligible)


class _Project(msgspec.Struct):
    slots: Any  # positions in the slot arrays
    pairs: Any  # (slot, glossary entry) of each mention, shape (n, 2)


class _Slots:
    """Pattern vectors in growable arrays; a freed slot is reused by the next pattern.

    Slots ``[0, used)`` have been handed out (live, or freed and waiting for reuse); the
    rest is room to grow, never scanned by a query.
    """

    def __init__(self, low_dims: int = LOW_DIMS) -> None:
        import numpy as np

        self._np = np
        self.full: Matrix = np.zeros((0, DIMS), dtype=np.float32)
        self.low: Matrix = np.zeros((0, low_dims), dtype=np.float32)
        self.rowid: Matrix = np.zeros(0, dtype=np.int64)
        self.code: Matrix = np.zeros(0, dtype=np.int32)  # project code, -1: free
        self.used = 0
        self.free: list[int] = []
        self.projects: dict[str, _Project] = {}
        self.codes: dict[str, int] = {}
        self.members: list[Matrix] = []

    def reserve(self, n: int) -> None:
        """Room for `n` more slots, exactly (a full load: no growth, no copies)."""
        self._grow(self.used + n - len(self.code))

    def _grow(self, more: int) -> None:
        np = self._np
        if more <= 0:
            return
        self.full = np.concatenate([self.full, np.zeros((more, DIMS), self.full.dtype)])
        self.low = np.concatenate([self.low, np.zeros((more, self.low.shape[1]), np.float32)])
        self.rowid = np.concatenate([self.rowid, np.zeros(more, np.int64)])
        self.code = np.concatenate([self.code, np.full(more, -1, np.int32)])

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
            self.code[old.slots] = -1
            self.low[old.slots] = 0.0
            self.full[old.slots] = 0.0
            self.free.extend(int(s) for s in old.slots)

    def code_of(self, project: str) -> int:
        return self.codes.setdefault(project, len(self.codes))

    def index_members(self, entries: int) -> None:
        """entry -> slots of the patterns mentioning it (after any change)."""
        np = self._np
        parts = [p.pairs for p in self.projects.values() if len(p.pairs)]
        pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        pairs = pairs[np.argsort(pairs[:, 1], kind="stable")]
        bounds = np.searchsorted(pairs[:, 1], np.arange(entries + 1))
        self.members = [pairs[bounds[e] : bounds[e + 1], 0] for e in range(entries)]


def _dot(a: Matrix, b: Matrix) -> Matrix:
    """``a @ b`` (a matrix and a vector, or a vector and a matrix) in numpy's own loop, on
    this thread only. Not BLAS: OpenBLAS splits the product over every core and its threads
    spin while they wait for one; on a small machine with other work (the keyword query,
    other processes) that made the 2 ms product of a query with every pattern take 8-28 ms
    (benchmarks/RESULTS.md). Index time keeps BLAS (matrix products, faster there)."""
    import numpy as np

    return np.einsum("ij,j->i" if a.ndim == 2 else "j,jk->k", a, b)  # type: ignore[no-any-return]


def _top(scores: Matrix, k: int) -> Matrix:
    """Positions of (about) the `k` highest finite scores, unordered: a threshold from a
    sample, then one comparison over all (cheaper than a partition of everything)."""
    import numpy as np

    n = len(scores)
    if n > 8 * k:
        step = max(1, n // (8 * k))
        sample = scores[::step]
        want = min(len(sample), max(1, (2 * k * len(sample)) // n))
        threshold = np.partition(sample, len(sample) - want)[len(sample) - want]
        found = np.flatnonzero(scores >= threshold)
        if len(found) >= k:
            if len(found) > 4 * k:
                found = found[np.argpartition(-scores[found], k)[:k]]
            return found[np.isfinite(scores[found])]
    found = np.argpartition(-scores, k)[:k] if n > k else np.arange(n)
    return found[np.isfinite(scores[found])]


class SemanticRanker:
    """Static vectors of the index's live patterns, ranked against a query's vector."""

    def __init__(self, table: WordTable, glossary: Glossary | None = None) -> None:
        import numpy as np

        self._np = np
        self.table = table
        self._glossary = glossary or Glossary([])
        self.table.encode_missing(self._glossary.texts)
        self._gloss_sums: Matrix = table.sums(self._glossary.texts)
        self._gloss_vecs: dict[QueryModel, Matrix] = {}
        self._slots = _Slots(table.projection.shape[1])
        self._loaded = False
        self._queries: OrderedDict[tuple[QueryModel, str], Matrix] = OrderedDict()

    # -- keeping up with the index
    def sync(self, index: PatternIndex) -> int:
        """Bring the pattern vectors up to date with `index`; how many were computed."""
        touched = index.take_touched()
        reload = not self._loaded or touched is None
        if reload:
            self.table.add(index.get_words())
            self._slots = _Slots(self.table.projection.shape[1])
            touched = set(index.states())
            self._loaded = True
        texts = {project: index.doc_texts(project) for project in sorted(touched or ())}
        if reload:  # every vector at once: arrays of the right size from the start
            self._slots.reserve(sum(len(rows) for rows in texts.values()))
        # words new to the table: through the model in one batch, and stored
        fresh = self.table.encode_missing(
            pattern_text(r[1], r[2], r[3], r[4].split()) for rows in texts.values() for r in rows
        )
        if fresh:
            index.put_words([(w, v.tobytes()) for w, v in fresh])
        for project, rows in texts.items():
            self._refresh(project, rows)
        if touched:
            self._slots.index_members(len(self._glossary.texts))
        return sum(len(rows) for rows in texts.values())

    def _refresh(self, project: str, rows: list[tuple[int, str, str, str, str, str]]) -> None:
        np = self._np
        slots = self._slots
        slots.drop(project)
        if not rows:
            return
        texts = [pattern_text(r[1], r[2], r[3], r[4].split()) for r in rows]
        vecs = self.table.sums(texts)
        pairs = [(n, int(e)) for n, r in enumerate(rows) for e in r[5].split()]
        pairs = [(n, e) for n, e in pairs if e < len(self._gloss_sums)]
        if pairs:
            at = np.asarray(pairs, dtype=np.int64)
            entries, local = np.unique(at[:, 1], return_inverse=True)
            mentions = np.zeros((len(rows), len(entries)), dtype=np.float32)
            mentions[at[:, 0], local] = 1.0
            vecs += mentions @ self._gloss_sums[entries]
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs /= np.maximum(norms, 1e-12)
        where = slots.alloc(len(rows))
        slots.full[where] = vecs
        slots.low[where] = vecs @ self.table.projection
        slots.rowid[where] = [r[0] for r in rows]
        slots.code[where] = slots.code_of(project)
        pair_slots = (
            np.stack([where[at[:, 0]], at[:, 1]], axis=1) if pairs else np.zeros((0, 2), np.int64)
        )
        slots.projects[project] = _Project(slots=where, pairs=pair_slots)

    def forget(self) -> None:
        """The index was rebuilt from scratch: reload every vector on the next sync."""
        self._loaded = False

    # -- queries
    def query_vector(self, text: str, model: QueryModel = "static") -> Matrix:
        """`text` as a unit vector: static (its words'), or the model's embedding."""
        key = (model, text)
        vec = self._queries.get(key)
        if vec is None:
            embedder = self.table.embedder
            if model == "model" and embedder is not None:
                vec = embedder.encode([text])[0]
            else:
                self.table.encode_missing([text])
                vec = self.table.vector(text)
            self._queries[key] = vec
            if len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
        else:
            self._queries.move_to_end(key)
        return vec

    def _glosses(self, model: QueryModel) -> Matrix:
        """The glossary entries' vectors, in the query's space."""
        np = self._np
        vecs = self._gloss_vecs.get(model)
        if vecs is None:
            embedder = self.table.embedder
            if model == "model" and embedder is not None and self._glossary.texts:
                vecs = embedder.encode(self._glossary.texts)
            else:
                sums = self._gloss_sums
                vecs = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            self._gloss_vecs[model] = vecs
        return vecs

    def _boost(self, query: Matrix, model: QueryModel, slots: _Slots) -> Matrix | None:
        """Per used slot: the glossary step's addition (None when no entry is close)."""
        np = self._np
        glosses = self._glosses(model)
        if not len(glosses) or not slots.members:
            return None
        weight, temperature = _GLOSS_STEP[model]
        near = _dot(glosses, query)
        share = np.exp((near - near.max()) / temperature)
        share /= share.sum()
        chosen = np.flatnonzero(share > _GLOSS_FLOOR)
        chosen = chosen[np.argsort(-share[chosen])[:_GLOSS_MAX]]
        boost = np.zeros(slots.used, dtype=np.float32)
        for entry in chosen:
            members = slots.members[entry]
            if len(members):
                boost[members] += weight * share[entry]
        return boost  # type: ignore[no-any-return]

    def nearest(
        self,
        text: str,
        limit: int,
        scope: tuple[str | None, bool],
        model: QueryModel = "static",
    ) -> tuple[Matrix, Matrix]:
        """Slots of the `limit` live patterns closest to `text` (its vector by `model`)
        within `scope` (project, exclude), best first, and their scores.

        Vectors only, no index: may run in another thread while the index answers the
        keyword side of the same query (numpy releases the GIL).
        """
        np = self._np
        slots = self._slots  # once: a full reload replaces it
        used = slots.used
        query = self.query_vector(text, model)
        if not slots.projects or not np.any(query):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        code = slots.code[:used]
        scores = _dot(slots.low[:used], _dot(query, self.table.projection))
        boost = self._boost(query, model, slots)
        if boost is not None:
            scores += boost
        project, exclude = scope
        if project is not None:
            mine = slots.codes.get(project, -2)
            keep = (code != mine) if exclude else (code == mine)
            scores = np.where(keep, scores, -np.inf)
        found = _top(scores, max(_CANDIDATES, limit))
        found = found[code[found] >= 0]  # free slots score 0: never kept
        exact = _dot(np.take(slots.full, found, axis=0), query)
        if boost is not None:
            exact += boost[found]
        if len(found) > limit:
            part = np.argpartition(-exact, limit)[:limit]
            found, exact = found[part], exact[part]
        order = np.argsort(-exact, kind="stable")
        return found[order], exact[order]

    def rows(self, index: PatternIndex, found: Matrix, scores: Matrix) -> list[DocRow]:
        """The index's rows of the slots `found` (from `nearest`), scored, in order."""
        rowids = self._slots.rowid[found].tolist()
        rows = index.docs_by_rowid(rowids)
        out = []
        for rowid, score in zip(rowids, scores.tolist(), strict=True):
            row = rows.get(rowid)
            if row is not None:
                out.append(msgspec.structs.replace(row, rank=float(score)))
        return out

    def rank(
        self,
        index: PatternIndex,
        text: str,
        limit: int,
        scope: tuple[str | None, bool],
        model: QueryModel = "static",
    ) -> list[DocRow]:
        """The `limit` live patterns closest to `text` (its vector by `model`), within
        `scope` (project, exclude): `nearest`, then `rows`."""
        return self.rows(index, *self.nearest(text, limit, scope, model))
