"""The ``semantic`` ranking mode: sentence embeddings of patterns and queries (embed.py).

Patterns are embedded when they are indexed, incrementally: an embedding is stored in the
index under a hash of the embedded text, so only new or changed patterns cost anything.
A query is embedded once (a small LRU cache serves repeats) and compared with every live
pattern (one matrix-vector product); the list is fused by reciprocal rank fusion with the
keyword list of patterns holding *every* query word, the one keyword signal that measured
as precise (partial and synonym matches are noise for paraphrases: benchmarks/RESULTS.md).

Blocking and CPU-bound, like the rest of the store: call from a worker thread.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import msgspec

from .embed import DIMS, Embedder
from .index import DocRow, PatternIndex

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["SemanticRanker"]

_QUERY_CACHE = 256
_BATCH = 256


class SemanticRanker:
    """Embeds what the index lacks and ranks its live patterns by cosine to a query."""

    def __init__(self, embedder: Embedder) -> None:
        import numpy as np

        self._np = np
        self._embedder = embedder
        self._queries: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._matrix: tuple[Any, list[str], NDArray[np.float32]] | None = None

    def embed_missing(self, index: PatternIndex) -> int:
        """Embed the live patterns that have no embedding yet; how many were embedded."""
        todo = index.unembedded()
        for start in range(0, len(todo), _BATCH):
            part = todo[start : start + _BATCH]
            vecs = self._embedder.encode([text for _, text in part])
            index.put_embeddings(
                [(key, vec.tobytes()) for (key, _), vec in zip(part, vecs, strict=True)]
            )
        if todo:
            index.prune_embeddings()
        self._matrix = None
        return len(todo)

    def forget(self) -> None:
        """The index changed: reload the embeddings on the next query."""
        self._matrix = None

    def _load(self, index: PatternIndex) -> tuple[Any, list[str], NDArray[np.float32]]:
        if self._matrix is None:
            np = self._np
            rows = index.embedded_docs()
            rowids = np.array([r[0] for r in rows], dtype=np.int64)
            projects = [r[1] for r in rows]
            matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32)
            self._matrix = (rowids, projects, matrix.reshape(len(rows), DIMS))
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

    def rank(
        self, index: PatternIndex, text: str, limit: int, scope: tuple[str | None, bool]
    ) -> list[DocRow]:
        """The `limit` live patterns closest to `text`, within `scope` (project, exclude)."""
        np = self._np
        rowids, projects, matrix = self._load(index)
        if not len(rowids):
            return []
        scores = matrix @ self.query_vector(text)
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
