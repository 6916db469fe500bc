"""Static word vectors distilled from all-MiniLM-L6-v2 (the model2vec recipe, by word).

The transformer is run once on each whole word of its own vocabulary (22,716 words: a
one-word sentence, mean pooled and L2-normalised, exactly as `Embedder.encode` does), and
the table is cached on disk. A text's vector is then the weighted sum of its words'
vectors, centred on the table's mean: microseconds a pattern instead of ~7 ms. Words the
vocabulary lacks (``nextauth``, ``ioredis``) are run through the model when first seen
and kept (`WordTable.add`: the index stores them).

Weights (smooth inverse frequency): ``a / (a + p(w))`` with ``p(w)`` from Zipf's law over
the word's rank in the vocabulary, which this tokenizer lists in order of frequency
(``the``, ``of``, ``and`` ...); a word outside it is rare. No corpus statistics: a
pattern's vector does not change when other patterns do.

Also kept: the table's first `LOW_DIMS` principal axes, the basis pattern vectors are
split on until one is fitted to the patterns themselves (vectors.py).

Blocking and CPU-bound (building the table takes one to three minutes on one core of the
reference machine): call from a thread.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .embed import DIMS, Embedder, default_model_dir
from .text import words

if TYPE_CHECKING:
    from numpy.typing import NDArray

    Matrix = NDArray[Any]
else:
    Matrix = Any

__all__ = ["LOW_DIMS", "TABLE_VERSION", "WordTable", "default_table_path", "pattern_text"]

_log = logging.getLogger(__name__)

TABLE_VERSION = 1
LOW_DIMS = 64
_SIF_A = 1e-3
_ZIPF = 0.1
_BATCH = 512
_CHUNK_CACHE = 1 << 18


def default_table_path(model_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Where the table of the model in `model_dir` is cached (per user, per model)."""
    folder = Path(model_dir) if model_dir else default_model_dir()
    if folder is None or not (folder / "model.safetensors").is_file():
        return None
    st = (folder / "model.safetensors").stat()
    key = hashlib.sha1(
        f"{folder.resolve()}:{st.st_size}:{st.st_mtime_ns}:{TABLE_VERSION}".encode(),
        usedforsecurity=False,
    ).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "jarvis-kernel" / f"static-words-{key}.npz"


def _vocabulary(tokenizer: Any) -> tuple[list[str], int]:
    """The tokenizer's whole words (not ``##`` pieces, specials or symbols) in id order,
    and the id of its first frequency-ranked word."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    whole = sorted(
        (i, w) for w, i in vocab.items() if w.isascii() and w.isalnum() and not w.startswith("#")
    )
    first = vocab.get("the", whole[0][0])
    return [w for _, w in whole], first


class WordTable:
    """Word -> unit vector (`DIMS`), with SIF weights; texts -> centred weighted sums."""

    def __init__(
        self,
        vocab: Sequence[str],
        matrix: Matrix,
        ranks: Sequence[int],
        embedder: Embedder | None = None,
        build_s: float = 0.0,
        projection: Matrix | None = None,
    ) -> None:
        import numpy as np

        self._np = np
        self.embedder = embedder
        self.build_s = build_s
        self._row = {w: i for i, w in enumerate(vocab)}
        self._words = list(vocab)
        self._matrix: Matrix = np.asarray(matrix, dtype=np.float32)
        self._size = len(vocab)
        self._ranks = [int(r) for r in ranks]
        weights = [_SIF_A / (_SIF_A + _ZIPF / max(r, 1)) for r in ranks]
        self._weights: Matrix = np.asarray(weights, dtype=np.float32)
        self.center: Matrix = self._matrix[: self._size].mean(0)
        if projection is None:
            centred = self._matrix[: self._size] - self.center
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            projection = vt[:LOW_DIMS].T
        self.projection: Matrix = np.ascontiguousarray(projection, dtype=np.float32)
        self._oov_weight = _SIF_A / (_SIF_A + _ZIPF / max(self._size, 1))
        self._chunk_cache: dict[str, tuple[str, ...]] = {}
        self._rows_cache: dict[str, tuple[int, ...]] = {}
        self.path: Path | None = None  # where it is cached (`open`)

    # -- building and caching
    @classmethod
    def build(cls, embedder: Embedder) -> WordTable:
        """Run the model on every whole word of its vocabulary (~1-2 min on one core)."""
        started = time.perf_counter()
        vocab, first = _vocabulary(embedder.tokenizer)
        matrix = embedder.encode(vocab, batch=_BATCH)
        ids: dict[str, int] = embedder.tokenizer.get_vocab()
        ranks = [max(ids[w] - first + 1, 1) for w in vocab]
        return cls(vocab, matrix, ranks, embedder, time.perf_counter() - started)

    def save(self, path: Path) -> None:
        np = self._np
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            vocab=np.array(self._words[: self._size]),
            matrix=self._matrix[: self._size],
            ranks=np.array(self._ranks, dtype=np.int64),
            projection=self.projection,
        )
        os.replace(tmp, path)

    @classmethod
    def open(cls, path: Path | None, embedder: Embedder) -> WordTable:
        """The table cached at `path`, built (and saved there) when missing or unreadable."""
        import numpy as np

        table: WordTable | None = None
        if path is not None and path.is_file():
            try:
                with np.load(path) as data:
                    table = cls(
                        [str(w) for w in data["vocab"]],
                        data["matrix"],
                        [int(r) for r in data["ranks"]],
                        embedder,
                        projection=data["projection"],
                    )
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                pass  # unreadable: built again below
        if table is None:
            table = cls.build(embedder)
            if path is not None:
                try:
                    table.save(path)
                except OSError as exc:  # a read-only cache: use it anyway, built again next time
                    _log.warning("librarian: cannot cache the word table at %s (%s)", path, exc)
        table.path = path
        table.add(table._cached_extra())
        return table

    # -- words outside the vocabulary that every index needs (the glossary's), cached beside
    def _extra_path(self) -> Path | None:
        return None if self.path is None else self.path.with_name(f"{self.path.stem}.extra.npz")

    def _cached_extra(self) -> list[tuple[str, Matrix]]:
        path = self._extra_path()
        if path is None or not path.is_file():
            return []
        try:
            with self._np.load(path) as data:
                return list(zip([str(w) for w in data["words"]], data["vectors"], strict=True))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return []  # unreadable: encoded again, and written again

    def encode_and_cache(self, texts: Iterable[str]) -> None:
        """`encode_missing`, and keep the words encoded beside the cached table, so that
        the next process (or index) loads them instead of running the model again."""
        items = self.encode_missing(texts)
        path = self._extra_path()
        if not items or path is None:
            return
        np = self._np
        merged = dict(self._cached_extra())
        merged.update(items)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
        try:
            np.savez(
                tmp,
                words=np.array(list(merged)),
                vectors=np.asarray(list(merged.values()), dtype=np.float32),
            )
            os.replace(tmp, path)
        except OSError as exc:  # a read-only cache: encoded again next time
            _log.warning("librarian: cannot cache words at %s (%s)", path, exc)

    # -- words
    def _chunk_words(self, chunk: str) -> tuple[str, ...]:
        got = self._chunk_cache.get(chunk)
        if got is None:
            if len(self._chunk_cache) > _CHUNK_CACHE:
                self._chunk_cache.clear()
            # numbers are left out: identifiers and error codes are the keyword side's job
            got = self._chunk_cache[chunk] = tuple(w for w in words(chunk) if not w.isdigit())
        return got

    def _chunk_rows(self, chunk: str) -> tuple[int, ...]:
        """Table rows of the words of `chunk` it knows (cached once it knows them all)."""
        got = self._rows_cache.get(chunk)
        if got is None:
            found = [self._row.get(w) for w in self._chunk_words(chunk)]
            got = tuple(i for i in found if i is not None)
            if len(got) == len(found):
                if len(self._rows_cache) > _CHUNK_CACHE:
                    self._rows_cache.clear()
                self._rows_cache[chunk] = got
        return got

    def missing(self, texts: Iterable[str]) -> list[str]:
        """The words of `texts` (`text.words`) the table has no vector for, once each."""
        row, known, chunk_words = self._row, self._rows_cache, self._chunk_words
        # each chunk once, in order (its words first come in its first occurrence)
        chunks = dict.fromkeys(itertools.chain.from_iterable(map(str.split, texts)))
        todo = (c for c in chunks if c not in known)
        return list(dict.fromkeys(w for c in todo for w in chunk_words(c) if w not in row))

    def add(self, items: Sequence[tuple[str, Matrix]]) -> None:
        """Vectors for words outside the vocabulary (weighted as rare)."""
        np = self._np
        fresh = [(w, v) for w, v in items if w not in self._row]
        if not fresh:
            return
        base = len(self._words)
        end = base + len(fresh)
        if end > len(self._matrix):  # grow by half at least: adding words stays cheap
            grow = max(end - len(self._matrix), len(self._matrix) // 2)
            self._matrix = np.concatenate([self._matrix, np.zeros((grow, DIMS), np.float32)])
            self._weights = np.concatenate([self._weights, np.zeros(grow, np.float32)])
        self._matrix[base:end] = np.stack([v for _, v in fresh])
        self._weights[base:end] = self._oov_weight
        for n, (w, _) in enumerate(fresh):
            self._row[w] = base + n
            self._words.append(w)

    def encode_missing(self, texts: Iterable[str]) -> list[tuple[str, Matrix]]:
        """Run the model on the words of `texts` the table lacks, add them; (word, vector)
        of each (empty without a model)."""
        todo = self.missing(texts)
        if not todo or self.embedder is None:
            return []
        vecs = self.embedder.encode(todo, batch=_BATCH)
        items = list(zip(todo, vecs, strict=True))
        self.add(items)
        return items

    # -- texts
    def sums(self, texts: Sequence[str]) -> Matrix:
        """For each text: the sum of weight x (vector - centre) over its words the table
        knows. Shape (len(texts), DIMS), not normalised.

        As one matrix product: (texts x distinct words, the weights) @ their vectors.
        """
        np = self._np
        ids: list[int] = []
        owner: list[int] = []
        rows_of, cached = self._chunk_rows, self._rows_cache.get
        for n, text in enumerate(texts):
            start = len(ids)
            for chunk in text.split():
                got = cached(chunk)  # `rows_of` without its call, for most chunks
                ids += rows_of(chunk) if got is None else got
            owner += [n] * (len(ids) - start)
        out = np.zeros((len(texts), DIMS), dtype=np.float32)
        if not ids:
            return out  # type: ignore[no-any-return]
        idx = np.asarray(ids, dtype=np.int64)
        distinct, local = np.unique(idx, return_inverse=True)
        cells = np.asarray(owner, dtype=np.int64) * len(distinct) + local
        counts = np.bincount(
            cells, weights=self._weights[idx], minlength=len(texts) * len(distinct)
        )
        weights = counts.reshape(len(texts), len(distinct)).astype(np.float32)
        out = weights @ self._matrix[distinct]
        # sum of w x (v - c) = sum of w x v - (sum of w) x c
        out -= weights.sum(1)[:, None] * self.center
        return out  # type: ignore[no-any-return]

    def vector(self, text: str) -> Matrix:
        """The unit vector of `text` (zeros when none of its words is known)."""
        np = self._np
        vec = self.sums([text])[0]
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else vec  # type: ignore[no-any-return]


def pattern_text(name: str, description: str, file_path: str, capabilities: Sequence[str]) -> str:
    """The text of a pattern that makes its static vector (with the texts of the glossary
    entries it mentions, added by the caller)."""
    return f"{name}: {description} ({', '.join(capabilities)}) {file_path}"
