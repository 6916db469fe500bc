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

Ranking: the cosine plus the glossary step (the glossary entries closest to the query, by a
softmax over their cosines, add to the score of the patterns that mention them: "background
job queue" -> entry "bullmq" -> the file that says BullMQ), the best found exactly without
reading every full vector (vectors.py: bounds on a basis fitted to the patterns). The
weights were measured: benchmarks/RESULTS.md.

Blocking and CPU-bound, like the rest of the store: call from a worker thread.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from .index import DocRow, PatternIndex
from .static import WordTable, pattern_text
from .taxonomy import Glossary
from .vectors import Boost, Project, Slots, dot

if TYPE_CHECKING:
    from numpy.typing import NDArray

    Matrix = NDArray[Any]
else:
    Matrix = Any

__all__ = ["QueryModel", "SemanticRanker"]

QueryModel = Literal["static", "model"]

_QUERY_CACHE = 256
# the glossary step: score += weight x softmax(cosines to the entries / temperature), summed
# over the entries a pattern mentions (static query: 0.3, 0.05; model query: 0.2, 0.05)
_GLOSS_STEP = {"static": (0.3, 0.05), "model": (0.2, 0.05)}
_GLOSS_FLOOR = 1e-3
_GLOSS_MAX = 8  # entries at most (the share of the others is negligible)


class SemanticRanker:
    """Static vectors of the index's live patterns, ranked against a query's vector."""

    def __init__(self, table: WordTable, glossary: Glossary | None = None) -> None:
        import numpy as np

        self._np = np
        self.table = table
        self._glossary = glossary or Glossary([])
        self.table.encode_and_cache(self._glossary.texts)  # once per machine
        self._gloss_sums: Matrix = table.sums(self._glossary.texts)
        self._gloss_vecs: dict[QueryModel, Matrix] = {}
        self._slots = Slots(table.projection)
        self._loaded = False
        self._queries: OrderedDict[tuple[QueryModel, str], Matrix] = OrderedDict()

    # -- keeping up with the index
    def sync(self, index: PatternIndex) -> int:
        """Bring the pattern vectors up to date with `index`; how many were computed."""
        touched = index.take_touched()
        reload = not self._loaded or touched is None
        if reload:
            self.table.add(index.get_words())
            self._slots = Slots(self.table.projection)
            touched = set(index.states())
            self._loaded = True
        texts = {project: index.doc_texts(project) for project in sorted(touched or ())}
        if reload:  # every vector at once: arrays of the right size from the start
            self._slots.reserve(sum(len(rows) for rows in texts.values()))
        strings = {
            project: [pattern_text(r[1], r[2], r[3], r[4].split()) for r in rows]
            for project, rows in texts.items()
        }
        # words new to the table: through the model in one batch, and stored
        fresh = self.table.encode_missing(itertools.chain.from_iterable(strings.values()))
        if fresh:
            index.put_words([(w, v.tobytes()) for w, v in fresh])
        slots = self._slots
        replaced = sum(len(slots.projects[p].slots) for p in texts if p in slots.projects)
        incoming = sum(len(rows) for rows in texts.values())
        refit = slots.refit_due(slots.live() - replaced + incoming)
        for project, rows in texts.items():
            self._refresh(project, rows, strings[project], project_now=not refit)
        if touched:
            slots.index_members(len(self._glossary.texts))
        if refit:  # a basis of their own: fewer full vectors read a search (vectors.py)
            slots.refit()
        return incoming

    def _refresh(
        self,
        project: str,
        rows: list[tuple[int, str, str, str, str, str]],
        texts: list[str],
        project_now: bool,
    ) -> None:
        """`texts`: the `pattern_text` of each of `rows`."""
        np = self._np
        slots = self._slots
        slots.drop(project)
        if not rows:
            return
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
        slots.put(where, vecs, project=project_now)
        slots.rowid[where] = [r[0] for r in rows]
        slots.code[where] = slots.code_of(project)
        pair_slots = (
            np.stack([where[at[:, 0]], at[:, 1]], axis=1) if pairs else np.zeros((0, 2), np.int64)
        )
        slots.projects[project] = Project(slots=where, pairs=pair_slots)

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

    def _boost(self, query: Matrix, model: QueryModel, slots: Slots) -> list[Boost]:
        """The glossary step: (slots of the patterns mentioning an entry close to the
        query, what it adds to their scores), for each such entry."""
        np = self._np
        glosses = self._glosses(model)
        if not len(glosses) or not slots.members:
            return []
        weight, temperature = _GLOSS_STEP[model]
        near = dot(glosses, query)
        share = np.exp((near - near.max()) / temperature)
        share /= share.sum()
        chosen = np.flatnonzero(share > _GLOSS_FLOOR)
        chosen = chosen[np.argsort(-share[chosen])[:_GLOSS_MAX]]
        members = slots.members
        return [(members[e], weight * float(share[e])) for e in chosen if len(members[e])]

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
        query = self.query_vector(text, model)
        if not slots.projects or not np.any(query):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        drop = None
        project, exclude = scope
        if project is not None:
            mine = slots.codes.get(project, -2)
            code = slots.code[: slots.used]
            drop = (code == mine) if exclude else (code != mine)
        return slots.nearest(query, limit, self._boost(query, model, slots), drop)

    def scores_of(
        self, text: str, rows: Sequence[DocRow], model: QueryModel = "static"
    ) -> list[float | None]:
        """The scores `nearest` would give `rows` (by their project and rowid) for `text`:
        None for a row without a vector."""
        np = self._np
        slots = self._slots
        query = self.query_vector(text, model)
        found: list[int | None] = []
        for row in rows:
            project = slots.projects.get(row.project)
            at = None
            if project is not None and len(project.slots):
                hit = project.slots[slots.rowid[project.slots] == row.rowid]
                at = int(hit[0]) if len(hit) else None
            found.append(at)
        where = np.asarray([f for f in found if f is not None], dtype=np.int64)
        if not len(where) or not np.any(query):
            return [None] * len(rows)
        scores = iter(slots.scores_of(where, query, self._boost(query, model, slots)).tolist())
        return [None if f is None else float(next(scores)) for f in found]

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
