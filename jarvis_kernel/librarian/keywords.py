"""FTS5's bm25, computed in memory, without walking every matching row on every query.

FTS5 ranks a match with bm25, whose IDF needs the number of rows holding each phrase of the
query. It counts them on *every* statement by visiting every one of those rows: at 200,000
patterns, with words found in a tenth of them, that walk is most of a keyword query's time
(benchmarks/RESULTS.md). The count only changes when the index does.

So a search here lets FTS5 do the matching only (the first `candidates` matching rows in
rowid order, as before, which is cheap), and computes bm25 for those rows itself:

- the rows' tokens come from a copy of the FTS content kept in memory (`Terms`: for each row,
  its tokens in order as FTS5 term ids, each tagged with its column), loaded on the first
  search and kept up to date by the index's writes;
- the number of rows holding each phrase is counted once (by FTS5) and cached until the
  index changes;
- the arithmetic is FTS5's own, operation for operation (k1 1.2, b 0.75, IDF floored at
  1e-6, phrase frequency = the sum of the column weights of its instances, the row's length
  in tokens over all columns), in float64, so the scores are the very numbers `bm25()` gives
  and the order (ties by rowid) is the same: tests/unit/test_librarian_keywords.py compares
  the two on every query set.

Tokens are FTS5's: each distinct piece of stored text is run once through the same tokenizer
(``porter unicode61 remove_diacritics 2``) in a scratch in-memory FTS5 table, so stemming and
folding are SQLite's, not a copy of them.

Needs numpy (the ``embed`` extra's); without it `available()` is false and the index ranks
in SQLite as before.

Blocking: owned by one `PatternIndex`, used from its thread.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from numpy.typing import NDArray

    Array = NDArray[Any]
else:
    Array = Any

__all__ = [
    "COLUMNS",
    "TOKENIZE",
    "Phrase",
    "Terms",
    "Tokenizer",
    "available",
    "bm25",
    "idf_of",
    "order",
    "phrases_of",
]

TOKENIZE = "porter unicode61 remove_diacritics 2"
COLUMNS = ("name", "tags", "description", "path", "symbols", "gloss", "proj")
_COL_BITS = 3  # a token's code: term id << 3 | column
_K1 = 1.2
_B = 0.75

# A phrase of a MATCH expression as search.py writes them: an optional column filter, then a
# double-quoted string (the expressions hold nothing else but AND / OR / NOT and brackets).
_PHRASE_RE = re.compile(r'(?:(\w+) : )?"([^"]*)"')


def available() -> bool:
    """Whether numpy is installed (the ``embed`` extra), which the in-memory bm25 needs."""
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def phrases_of(match: str) -> list[tuple[int | None, str]]:
    """(column or None, text) of each phrase of `match`, in FTS5's numbering (left to
    right). ValueError for a column filter that is not a column of the index."""
    out: list[tuple[int | None, str]] = []
    for m in _PHRASE_RE.finditer(match):
        column = m.group(1)
        if column is not None and column not in COLUMNS:
            raise ValueError(f"no column {column!r} in the index")
        out.append((None if column is None else COLUMNS.index(column), m.group(2)))
    return out


class Phrase:
    """One phrase of a query: its terms (FTS5 term ids, in order) and column filter."""

    __slots__ = ("column", "terms")

    def __init__(self, terms: tuple[int, ...], column: int | None) -> None:
        self.terms = terms
        self.column = column


class Tokenizer:
    """Text to FTS5 term ids, by SQLite's own tokenizer, each distinct piece once."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(f"CREATE VIRTUAL TABLE s USING fts5(t, tokenize = '{TOKENIZE}')")
        self._db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(s, 'instance')")
        self.term_ids: dict[str, int] = {}
        # a whitespace-free piece of text -> the ids of the terms FTS5 makes of it (mostly one)
        self.pieces: dict[str, tuple[int, ...]] = {}
        self.single: dict[str, int] = {}  # the pieces that make exactly one term -> its id

    def learn(self, pieces: Iterable[str]) -> None:
        """Tokenize the pieces not seen before (in one scratch table, then drop its rows)."""
        new = [p for p in dict.fromkeys(pieces) if p not in self.pieces]
        if not new:
            return
        db = self._db
        db.executemany("INSERT INTO s(rowid, t) VALUES (?, ?)", enumerate(new))
        found: dict[int, list[tuple[int, int]]] = {}
        term_ids = self.term_ids
        for term, doc, offset in db.execute("SELECT term, doc, offset FROM v"):
            tid = term_ids.setdefault(term, len(term_ids))
            found.setdefault(doc, []).append((offset, tid))
        db.execute("DELETE FROM s")
        for i, piece in enumerate(new):
            ids = tuple(tid for _, tid in sorted(found.get(i, ())))
            self.pieces[piece] = ids
            if len(ids) == 1:
                self.single[piece] = ids[0]

    def terms(self, text: str) -> tuple[int, ...]:
        """The term ids of `text` in order (FTS5 splits at whitespace, and maybe within)."""
        split = text.split()
        self.learn(split)
        pieces = self.pieces
        return tuple(tid for piece in split for tid in pieces[piece])

    def close(self) -> None:
        self._db.close()


class _Column:
    """One column of every stored row: term ids end to end, and each slot's run of them."""

    def __init__(self, np: Any) -> None:
        self._np = np
        self.ids: Array = np.zeros(1024, dtype=np.int32)
        self.used = 0
        self.start: Array = np.zeros(256, dtype=np.int64)
        self.count: Array = np.zeros(256, dtype=np.int32)

    def append(self, ids: Array, counts: Array, first_slot: int) -> None:
        """Runs for slots first_slot... (`counts[i]` ids each, `ids` end to end)."""
        np = self._np
        self.ids = _fit(np, self.ids, self.used + len(ids))
        self.ids[self.used : self.used + len(ids)] = ids
        end = first_slot + len(counts)
        self.start = _fit(np, self.start, end)
        self.count = _fit(np, self.count, end)
        self.start[first_slot:end] = self.used + np.cumsum(counts) - counts
        self.count[first_slot:end] = counts
        self.used += len(ids)

    def gather(self, slots: Array) -> tuple[Array, Array]:
        """(the ids of `slots`' runs end to end, each id's index into `slots`)."""
        np = self._np
        counts = self.count[slots]
        ends = np.cumsum(counts)
        at = np.repeat(self.start[slots] - (ends - counts), counts) + np.arange(int(ends[-1]))
        return self.ids[at], np.repeat(np.arange(len(slots)), counts)


def _fit(np: Any, array: Array, size: int) -> Array:
    if size <= len(array):
        return array
    grown: Array = np.zeros(max(size, 2 * len(array)), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


_SEP = "\x01"  # between rows when a column of many rows is split at once (never in a token)


class Terms:
    """The FTS table's rows in memory, column by column, as FTS5 term ids in order; and the
    totals bm25 needs. A row replaced or removed leaves its runs behind until the dead
    outweigh the live, then the columns are compacted."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        import numpy as np

        self._np = np
        self.tokenizer = tokenizer
        self._slot: dict[int, int] = {}  # rowid -> slot
        self._slots = 0
        self._columns = [_Column(np) for _ in COLUMNS]
        self._length: Array = np.zeros(256, dtype=np.int64)  # tokens of each slot's row
        self.tokens = 0  # over all rows and columns: FTS5's xColumnTotalSize(-1)

    def __len__(self) -> int:
        return len(self._slot)

    def add_many(self, rows: Iterable[tuple[int, Sequence[str]]]) -> None:
        """Store rows given as (rowid, the texts of its columns in `COLUMNS` order)."""
        np = self._np
        rows = list(rows)
        if not rows:
            return
        for rowid, _ in rows:
            self.discard(rowid)
        first = self._slots
        length = np.zeros(len(rows), dtype=np.int64)
        for column, store in enumerate(self._columns):
            ids, counts = self._split([cols[column] for _, cols in rows])
            store.append(ids, counts, first)
            length += counts
        self._length = _fit(np, self._length, first + len(rows))
        self._length[first : first + len(rows)] = length
        for i, (rowid, _) in enumerate(rows):
            self._slot[rowid] = first + i
        self._slots += len(rows)
        self.tokens += int(length.sum())
        if self._slots > 2 * len(self._slot) + 1024:
            self._compact()

    def _split(self, texts: list[str]) -> tuple[Array, Array]:
        """(the term ids of `texts` end to end, how many each has)."""
        np = self._np
        tokenizer = self.tokenizer
        joined = f" {_SEP} ".join(texts)
        if joined.count(_SEP) != len(texts) - 1:  # never from fts_text: it keeps [a-z0-9]
            return self._split_slowly(texts)
        pieces = joined.split()
        single = tokenizer.single
        single[_SEP] = -1
        try:
            try:
                ids = np.fromiter(map(single.__getitem__, pieces), np.int32, len(pieces))
            except KeyError:  # pieces not seen before
                tokenizer.learn(set(pieces).difference(single))
                try:
                    ids = np.fromiter(map(single.__getitem__, pieces), np.int32, len(pieces))
                except KeyError:  # a piece FTS5 splits further, or drops: piece by piece
                    return self._split_slowly(texts)
        finally:
            del single[_SEP]
        seps = np.flatnonzero(ids < 0)
        counts = np.diff(np.concatenate(([-1], seps, [len(ids)]))) - 1
        return ids[ids >= 0], counts.astype(np.int32)

    def _split_slowly(self, texts: list[str]) -> tuple[Array, Array]:
        np = self._np
        runs = [self.tokenizer.terms(text) for text in texts]
        ids = np.fromiter((t for run in runs for t in run), dtype=np.int32)
        return ids, np.asarray([len(run) for run in runs], dtype=np.int32)

    def discard(self, rowid: int) -> None:
        slot = self._slot.pop(rowid, None)
        if slot is not None:
            self.tokens -= int(self._length[slot])

    def _compact(self) -> None:
        np = self._np
        rowids = list(self._slot)
        slots = np.fromiter(self._slot.values(), dtype=np.int64, count=len(rowids))
        columns = [_Column(np) for _ in COLUMNS]
        for old, new in zip(self._columns, columns, strict=True):
            if len(slots):
                ids, _ = old.gather(slots)
                new.append(ids, old.count[slots], 0)
        self._length = self._length[slots] if len(slots) else np.zeros(256, dtype=np.int64)
        self._columns = columns
        self._slot = {rowid: i for i, rowid in enumerate(rowids)}
        self._slots = len(rowids)

    def codes(self, rowids: Sequence[int]) -> tuple[Array, Array, Array]:
        """For `rowids`: (their tokens as codes, term id << 3 | column, each column's run
        in order; each code's index into `rowids`; each row's length in tokens)."""
        np = self._np
        slots = np.fromiter(map(self._slot.__getitem__, rowids), dtype=np.int64)
        codes, rows = [], []
        for column, store in enumerate(self._columns):
            ids, row = store.gather(slots)
            codes.append(ids << _COL_BITS | column)
            rows.append(row)
        return np.concatenate(codes), np.concatenate(rows), self._length[slots]


def bm25(
    terms: Terms,
    rowids: Sequence[int],
    phrases: Sequence[Phrase],
    idf: Sequence[float],
    weights: Sequence[float],
    rows_in_table: int,
) -> Array:
    """bm25 of each of `rowids` (higher is better; FTS5's ``bm25()`` is its negative), as
    fts5_aux.c computes it: per phrase, f = the sum of the weights of the columns of its
    instances in the row; score += idf x f (k1 + 1) / (f + k1 (1 - b + b D / avgdl))."""
    np = terms._np
    codes, row, length = terms.codes(rowids)
    term = codes >> _COL_BITS
    column = codes & ((1 << _COL_BITS) - 1)
    weight = np.asarray([*weights, *[1.0] * (len(COLUMNS) - len(weights))], dtype=np.float64)
    avgdl = float(terms.tokens) / float(rows_in_table)
    norm = _K1 * (1 - _B + _B * length / avgdl)
    score: Array = np.zeros(len(rowids), dtype=np.float64)
    n = len(codes)
    for phrase, phrase_idf in zip(phrases, idf, strict=True):
        width = len(phrase.terms)
        if width == 0 or width > n:
            continue
        span = n - width + 1
        hit = term[:span] == phrase.terms[0]
        for k in range(1, width):  # the next token: the phrase's next term, same column, row
            hit &= term[k : k + span] == phrase.terms[k]
            hit &= column[k : k + span] == column[:span]
            hit &= row[k : k + span] == row[:span]
        if phrase.column is not None:
            hit &= column[:span] == phrase.column
        at = np.flatnonzero(hit)
        if len(at) == 0:
            continue
        freq = np.bincount(row[at], weights=weight[column[at]], minlength=len(rowids))
        score += phrase_idf * ((freq * (_K1 + 1.0)) / (freq + norm))
    return score


def order(scores: Array, rowids: Sequence[int]) -> Array:
    """Indexes into `rowids`, best score first, ties by the smaller rowid (as the SQL)."""
    np = _numpy()
    best: Array = np.lexsort((np.asarray(rowids), -scores))
    return best


def _numpy() -> Any:
    import numpy as np

    return np


def idf_of(rows_in_table: int, rows_with_phrase: int) -> float:
    """FTS5's IDF: log((N - n + 0.5) / (n + 0.5)), or 1e-6 where that is not positive."""
    value = math.log((rows_in_table - rows_with_phrase + 0.5) / (rows_with_phrase + 0.5))
    return value if value > 0.0 else 1e-6
