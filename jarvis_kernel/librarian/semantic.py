"""The ``semantic`` ranking mode: sentence embeddings of patterns and queries (embed.py).

Patterns are embedded when they are indexed, incrementally: an embedding is stored in the
index under a hash of the embedded text, so only new or changed patterns cost anything.
A pattern's embedded text includes the glossary's plain-words texts of the technical terms
it mentions (index.embed_text). A query is embedded once (a small LRU cache serves repeats)
and compared with every live pattern (one matrix-vector product) and with every glossary
entry: the entries closest to the query (a softmax over their cosines) add to the score of
the patterns that mention them - the step from "background job queue" to a file saying
"BullMQ" that the small model does not make alone. The list is fused by reciprocal rank fusion with
the keyword list of patterns holding *every* query word, the one keyword signal that
measured as precise (partial and synonym matches are noise for paraphrases; the weights
below were measured: benchmarks/RESULTS.md).

Blocking and CPU-bound, like the rest of the store: call from a worker thread.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import msgspec

from .embed import DIMS, Embedder
from .index import DocRow, PatternIndex, embed_key
from .taxonomy import Glossary

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["SemanticRanker"]

_QUERY_CACHE = 256
_BATCH = 256
# the glossary step: score += _GLOSS_WEIGHT x softmax(cosines to the entries / _GLOSS_TEMP)
# summed over the entries a pattern mentions
_GLOSS_WEIGHT = 0.2
_GLOSS_TEMP = 0.05
_GLOSS_FLOOR = 1e-4


class _Loaded(msgspec.Struct):
    rowids: Any
    projects: list[str]
    matrix: Any
    glosses: Any  # (entries, DIMS): the glossary entries' embeddings
    members: list[Any]  # entry -> positions (in `matrix`) of the patterns mentioning it


class SemanticRanker:
    """Embeds what the index lacks and ranks its live patterns by cosine to a query."""

    def __init__(self, embedder: Embedder, glossary: Glossary | None = None) -> None:
        import numpy as np

        self._np = np
        self._embedder = embedder
        self._glossary = glossary or Glossary([])
        self._gloss_keys = [embed_key(text) for text in self._glossary.texts]
        self._queries: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._matrix: _Loaded | None = None

    def embed_missing(self, index: PatternIndex) -> int:
        """Embed the live patterns (and glossary entries) that have no embedding yet; how
        many patterns were embedded."""
        todo = index.unembedded()
        have = index.get_embeddings(self._gloss_keys) if self._gloss_keys else {}
        entries = [
            (key, text)
            for key, text in zip(self._gloss_keys, self._glossary.texts, strict=True)
            if key not in have
        ]
        for items in (todo, entries):
            for start in range(0, len(items), _BATCH):
                part = items[start : start + _BATCH]
                vecs = self._embedder.encode([text for _, text in part])
                index.put_embeddings(
                    [(key, vec.tobytes()) for (key, _), vec in zip(part, vecs, strict=True)]
                )
        if todo or entries:
            index.prune_embeddings(keep=self._gloss_keys)
        self._matrix = None
        return len(todo)

    def forget(self) -> None:
        """The index changed: reload the embeddings on the next query."""
        self._matrix = None

    def _load(self, index: PatternIndex) -> _Loaded:
        if self._matrix is None:
            np = self._np
            rows = index.embedded_docs()
            members: list[list[int]] = [[] for _ in self._gloss_keys]
            for pos, row in enumerate(rows):
                for entry in row[3].split():
                    if int(entry) < len(members):
                        members[int(entry)].append(pos)
            have = index.get_embeddings(self._gloss_keys) if self._gloss_keys else {}
            zero = bytes(4 * DIMS)
            glosses = np.frombuffer(
                b"".join(have.get(key, zero) for key in self._gloss_keys), dtype=np.float32
            )
            matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32)
            self._matrix = _Loaded(
                rowids=np.array([r[0] for r in rows], dtype=np.int64),
                projects=[r[1] for r in rows],
                matrix=matrix.reshape(len(rows), DIMS),
                glosses=glosses.reshape(len(self._gloss_keys), DIMS),
                members=[np.array(m, dtype=np.int64) for m in members],
            )
        return self._matrix

    def query_vector(self, text: str) -> NDArray[np.float32]:
        vec = self._queries.get(text)
        if vec is None:
            vec = self._embedder.encode([text])[0]
            self._queries[text] = vec
            if len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
        else:
            self._queries.move_to_end(text)
        return vec

    def _gloss_boost(self, loaded: _Loaded, weights: NDArray[np.float32]) -> NDArray[np.float32]:
        """_GLOSS_WEIGHT x the sum of `weights` over the entries each pattern mentions (the
        entries under _GLOSS_FLOOR left out), in one pass over the memberships."""
        np = self._np
        chosen = np.flatnonzero(weights > _GLOSS_FLOOR)
        rows = [loaded.members[entry] for entry in chosen]
        sizes = [len(r) for r in rows]
        boost = np.bincount(
            np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
            weights=np.repeat(weights[chosen], sizes),
            minlength=len(loaded.rowids),
        )
        return (_GLOSS_WEIGHT * boost).astype(np.float32)  # type: ignore[no-any-return]

    def rank(
        self, index: PatternIndex, text: str, limit: int, scope: tuple[str | None, bool]
    ) -> list[DocRow]:
        """The `limit` live patterns closest to `text`, within `scope` (project, exclude)."""
        np = self._np
        loaded = self._load(index)
        rowids, projects = loaded.rowids, loaded.projects
        if not len(rowids):
            return []
        query = self.query_vector(text)
        scores = loaded.matrix @ query
        if len(loaded.members):
            near = loaded.glosses @ query
            weights = np.exp((near - near.max()) / _GLOSS_TEMP)
            weights /= weights.sum()
            scores += self._gloss_boost(loaded, weights)
        project, exclude = scope
        if project is not None:
            inside = np.fromiter((p == project for p in projects), dtype=bool, count=len(projects))
            scores = np.where(inside != exclude, scores, -np.inf)
        k = min(limit, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        top = top[np.isfinite(scores[top])]
        rows = index.docs_by_rowid([int(rowids[i]) for i in top])
        out = []
        for i in top:
            row = rows.get(int(rowids[i]))
            if row is not None:
                out.append(msgspec.structs.replace(row, rank=float(scores[i])))
        return out
