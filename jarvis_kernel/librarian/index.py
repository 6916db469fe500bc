"""The librarian's SQLite file: an FTS5 index of patterns plus what incremental runs need.

Blocking: call from a worker thread (`anyio.to_thread.run_sync`) in async code. The file is
the librarian's own business (docs/memory.md): when it is missing, corrupt or from another
schema it is deleted and rebuilt from ``patterns.json`` and the context maps.

Tables::

    meta(key, value)                       schema version, stamp of the patterns.json it mirrors
    projects(project, map_rel, mtime_ns, size, sha256, min_stale_ms, blob)
                                           one row per project: its map's identity and its
                                           patterns as a JSON array (patterns.json is the
                                           concatenation of these, in project order)
    docs(rowid, project, pattern_id, name, description, file_path, capabilities, glosses)
                                           glosses: numbers of the glossary entries it mentions
    fts(name, tags, description, path, symbols, gloss, proj)   FTS5, rowid = docs.rowid;
                                           gloss: the text of those glossary entries
    caps(project, capability)              for global_index.json
    words(word, vec)                       vectors of words outside the model's vocabulary
                                           (float32 bytes), run through the model once
                                           (static.py)

Which projects changed since it was last asked is kept in memory (`take_touched`), for the
pattern vectors of the dense modes (semantic.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from .formats import Pattern
from .keywords import (
    COLUMNS,
    TOKENIZE,
    Phrase,
    Terms,
    Tokenizer,
    available,
    bm25,
    idf_of,
    order,
    phrases_of,
)
from .taxonomy import Glossary
from .text import fts_text

__all__ = [
    "SCHEMA_VERSION",
    "DocRow",
    "PatternIndex",
    "ProjectState",
    "project_token",
]

SCHEMA_VERSION = "4"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS projects(
    project TEXT PRIMARY KEY, map_rel TEXT NOT NULL, mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL, sha256 TEXT NOT NULL, min_stale_ms INTEGER, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS docs(
    rowid INTEGER PRIMARY KEY, project TEXT NOT NULL, pattern_id TEXT NOT NULL,
    name TEXT NOT NULL, description TEXT NOT NULL, file_path TEXT NOT NULL,
    capabilities TEXT NOT NULL, glosses TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS docs_project ON docs(project);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    {columns}, tokenize = '{tokenize}');
CREATE TABLE IF NOT EXISTS caps(project TEXT NOT NULL, capability TEXT NOT NULL,
    PRIMARY KEY (capability, project)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS words(word TEXT PRIMARY KEY, vec BLOB NOT NULL) WITHOUT ROWID;
""".format(columns=", ".join(COLUMNS), tokenize=TOKENIZE)

_PATTERNS_DECODER = msgspec.json.Decoder(list[Pattern])
_ENCODER = msgspec.json.Encoder()


def project_token(project: str) -> str:
    """The single FTS token standing for a project (ids contain separators FTS would split)."""
    return "p" + hashlib.sha1(project.encode(), usedforsecurity=False).hexdigest()[:12]


class ProjectState(msgspec.Struct, frozen=True, kw_only=True):
    """What the index knows of one project's map: identity by stat and by content."""

    map_rel: str
    mtime_ns: int
    size: int
    sha256: str
    min_stale_ms: int | None = None


class DocRow(msgspec.Struct, frozen=True):
    project: str
    name: str
    description: str
    file_path: str
    capabilities: list[str]
    rank: float
    rowid: int = 0  # in the index (0: not known)


class PatternIndex:
    """One SQLite file. Not thread-safe: one instance per thread (or behind a lock).

    `glossary` (the taxonomy's) adds to each pattern the texts of the entries it mentions:
    searched in the ``gloss`` column, and part of its static vector (semantic.py).
    """

    def __init__(self, path: str | os.PathLike[str], glossary: Glossary | None = None) -> None:
        self.path = Path(path)
        self.glossary = glossary or Glossary([])
        self._db = self._open()
        # project -> its patterns as JSON without the brackets; None: not loaded
        self._chunks: dict[str, bytes] | None = None
        # projects replaced or removed since `take_touched`; None: anything may have changed
        self._touched: set[str] | None = None
        # the FTS rows in memory for bm25 (keywords.py), loaded by the first search
        self._tokenizer: Tokenizer | None = None
        self._terms: Terms | None = None
        self._seen_version: int | None = None  # PRAGMA data_version when `_terms` was right
        # (column, phrase) -> rows holding it, until the index changes
        self._rows_with: dict[tuple[int | None, str], int] = {}
        self._in_memory = available()  # else `search` ranks in SQLite

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError:
            self._delete_files()
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = 30000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            version = self._version(db)
            if version not in (None, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema {version}")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            db.execute("SELECT count(*) FROM fts WHERE fts MATCH 'x'").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @staticmethod
    def _version(db: sqlite3.Connection) -> str | None:
        has_meta = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            return None
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        return None if row is None else str(row[0])

    def _delete_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def reset(self) -> None:
        """Delete the file and start empty (after corruption is found mid-way)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._delete_files()
        self._db = self._connect()
        self._touched = None
        self._drop_terms()

    def close(self) -> None:
        self._db.close()
        if self._tokenizer is not None:
            self._tokenizer.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes in the block commit together, or none do."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._chunks = None
            self._touched = None
            self._drop_terms()
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- meta
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- projects
    def states(self) -> dict[str, ProjectState]:
        rows = self._db.execute(
            "SELECT project, map_rel, mtime_ns, size, sha256, min_stale_ms FROM projects"
        )
        return {
            r[0]: ProjectState(
                map_rel=r[1], mtime_ns=r[2], size=r[3], sha256=r[4], min_stale_ms=r[5]
            )
            for r in rows
        }

    def set_state(self, project: str, state: ProjectState) -> None:
        self._db.execute(
            "UPDATE projects SET map_rel=?, mtime_ns=?, size=?, sha256=?, min_stale_ms=? "
            "WHERE project=?",
            (state.map_rel, state.mtime_ns, state.size, state.sha256, state.min_stale_ms, project),
        )

    def forget_hashes(self) -> None:
        """Make the next run read and extract every map again."""
        self._db.execute("UPDATE projects SET sha256 = '', mtime_ns = -1, size = -1")

    def patterns_of(self, project: str) -> list[Pattern]:
        row = self._db.execute("SELECT blob FROM projects WHERE project=?", (project,)).fetchone()
        return [] if row is None else _PATTERNS_DECODER.decode(row[0])

    def replace_project(
        self, project: str, patterns: Sequence[Pattern], state: ProjectState
    ) -> None:
        """Store `patterns` as the whole of `project` (live ones searchable)."""
        # a project new to the index has no rows to delete (a full build: the four deletes
        # cost ~1.5-2 s over 1,000 projects, ``caps`` scanned for each)
        if self._db.execute("SELECT 1 FROM projects WHERE project=?", (project,)).fetchone():
            self.remove_project(project)
        if self._touched is not None:
            self._touched.add(project)
        blob = _ENCODER.encode(list(patterns))
        self._db.execute(
            "INSERT INTO projects VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                project,
                state.map_rel,
                state.mtime_ns,
                state.size,
                state.sha256,
                state.min_stale_ms,
                blob,
            ),
        )
        if self._chunks is not None:
            self._chunks[project] = blob[1:-1]
        token = project_token(project)
        live = [p for p in patterns if not p.stale]
        caps = {c for p in live for c in p.capabilities}
        start = int(self._db.execute("SELECT coalesce(max(rowid), 0) FROM docs").fetchone()[0])
        gloss = self.glossary
        found = [
            gloss.match([p.name, p.description, *p.tags], [*p.symbols, p.file_path]) for p in live
        ]
        self._db.executemany(
            "INSERT INTO docs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    start + i,
                    project,
                    p.id,
                    p.name,
                    p.description,
                    p.file_path,
                    " ".join(p.capabilities),
                    " ".join(map(str, ids)),
                )
                for i, (p, ids) in enumerate(zip(live, found, strict=True), 1)
            ],
        )
        rows = [
            (
                start + i,
                fts_text([p.name]),
                fts_text([*p.tags, *p.capabilities]),
                fts_text([p.description]),
                fts_text([p.file_path]),
                fts_text(p.symbols),
                " ".join(gloss.tokens[g] for g in ids),
                token,
            )
            for i, (p, ids) in enumerate(zip(live, found, strict=True), 1)
        ]
        self._db.executemany(
            f"INSERT INTO fts(rowid, {', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
        )
        self._db.executemany("INSERT INTO caps VALUES (?, ?)", [(project, c) for c in caps])
        self._rows_with.clear()
        if self._terms is not None:
            self._terms.add_many((row[0], row[1:]) for row in rows)

    def remove_project(self, project: str) -> None:
        self._rows_with.clear()
        if self._terms is not None:
            for (rowid,) in self._db.execute("SELECT rowid FROM docs WHERE project=?", (project,)):
                self._terms.discard(int(rowid))
        self._db.execute(
            "DELETE FROM fts WHERE rowid IN (SELECT rowid FROM docs WHERE project=?)", (project,)
        )
        self._db.execute("DELETE FROM docs WHERE project=?", (project,))
        self._db.execute("DELETE FROM caps WHERE project=?", (project,))
        self._db.execute("DELETE FROM projects WHERE project=?", (project,))
        if self._chunks is not None:
            self._chunks.pop(project, None)
        if self._touched is not None:
            self._touched.add(project)

    def forget_cache(self) -> None:
        """Another writer changed the file: read the patterns from SQLite next time."""
        self._chunks = None
        self._touched = None
        self._drop_terms()

    def take_touched(self) -> set[str] | None:
        """The projects replaced or removed since the last call (None: any may have been,
        as after a reset or another writer's run); starts counting again."""
        touched, self._touched = self._touched, set()
        return touched

    def clear(self) -> None:
        self._chunks = {}
        self._touched = None
        self._drop_terms()
        for table in ("projects", "docs", "fts", "caps"):
            self._db.execute(f"DELETE FROM {table}")

    # -- outputs
    def pattern_chunks(self) -> list[bytes]:
        """Each project's patterns as JSON without the brackets, in project order.

        Kept in memory after the first call, so an incremental run does not read them all.
        """
        if self._chunks is None:
            self._chunks = {
                project: bytes(blob)[1:-1]
                for project, blob in self._db.execute("SELECT project, blob FROM projects")
            }
        return [self._chunks[p] for p in sorted(self._chunks) if self._chunks[p]]

    def global_index(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        for cap, project in self._db.execute(
            "SELECT capability, project FROM caps ORDER BY capability, project"
        ):
            index.setdefault(cap, []).append(project)
        return index

    # -- dense modes
    def doc_texts(self, project: str) -> list[tuple[int, str, str, str, str, str]]:
        """(rowid, name, description, file_path, capabilities, glossary entries) of each live
        pattern of `project`."""
        rows = self._db.execute(
            "SELECT rowid, name, description, file_path, capabilities, glosses FROM docs "
            "WHERE project=? ORDER BY rowid",
            (project,),
        )
        return [(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def get_words(self) -> list[tuple[str, Any]]:
        """The stored vectors of words outside the model's vocabulary."""
        import numpy as np

        rows = self._db.execute("SELECT word, vec FROM words")
        return [(str(r[0]), np.frombuffer(r[1], dtype=np.float32)) for r in rows]

    def put_words(self, items: Sequence[tuple[str, bytes]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO words VALUES (?, ?)", items)

    def docs_by_rowid(self, rowids: Sequence[int]) -> dict[int, DocRow]:
        marks = ",".join("?" * len(rowids))
        rows = self._db.execute(
            "SELECT rowid, project, name, description, file_path, capabilities FROM docs "
            f"WHERE rowid IN ({marks})",
            list(rowids),
        )
        return {
            int(r[0]): DocRow(r[1], r[2], r[3], r[4], r[5].split() if r[5] else [], 0.0, int(r[0]))
            for r in rows
        }

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM docs").fetchone()[0])

    # -- search
    def search(
        self,
        match: str,
        weights: Sequence[float],
        limit: int,
        candidates: int = 500,
        include: Sequence[int] = (),
    ) -> list[DocRow]:
        """Rows matching FTS5 expression `match`, best first (bm25 with column `weights`,
        ties by rowid).

        Only the first `candidates` matches (in rowid order) are ranked, and the rows of
        `include` (which must match too): exact when fewer match, bounded latency when more
        do. FTS5 finds them; their bm25 is computed here (keywords.py: the same numbers,
        without FTS5's walk of every row of every phrase). `match` is an expression as
        search.py writes them (quoted phrases, column filters, AND / OR / NOT);
        `search_sql` ranks any expression in SQLite.
        """
        if not self._in_memory:
            return self.search_sql(match, weights, limit, candidates, include)
        phrases = phrases_of(match)
        sql = "SELECT rowid FROM fts WHERE fts MATCH ? LIMIT ?"
        rowids: list[int] = [r for (r,) in self._db.execute(sql, (match, candidates)).fetchall()]
        if include:
            rowids = sorted({*rowids, *include})
        if not rowids:
            return []
        terms = self._current_terms()
        rows_in_table = len(terms)
        columns = (*weights, 0.0)  # the column proj weighs nothing, as in `search_sql`
        kept: list[Phrase] = []
        idf: list[float] = []
        for column, text in phrases:
            if column is not None and columns[column] == 0.0:
                continue  # its instances weigh nothing: it adds 0 to every score
            phrase = Phrase(self._tokenizer_().terms(text), column)
            if phrase.terms:
                kept.append(phrase)
                idf.append(idf_of(rows_in_table, self._rows_holding(column, text)))
        try:
            scores = bm25(terms, rowids, kept, idf, columns, rows_in_table)
        except KeyError:  # a row another connection wrote after `_current_terms` looked
            self._drop_terms()
            return self.search_sql(match, weights, limit, candidates, include)
        best = [int(i) for i in order(scores, rowids)[:limit]]
        docs = self.docs_by_rowid([rowids[i] for i in best])
        return [
            msgspec.structs.replace(docs[rowids[i]], rank=float(scores[i]))
            for i in best
            if rowids[i] in docs
        ]

    def search_sql(
        self,
        match: str,
        weights: Sequence[float],
        limit: int,
        candidates: int = 500,
        include: Sequence[int] = (),
    ) -> list[DocRow]:
        """`search` ranked by SQLite's ``bm25()`` (walks every row holding each phrase)."""
        first = "SELECT rowid FROM fts WHERE fts MATCH ? LIMIT ?"
        if include:
            marks = ",".join("?" * len(include))
            where = f"fts MATCH ? AND (rowid IN ({first}) OR rowid IN ({marks}))"
            args: tuple[object, ...] = (match, match, candidates, *include)
        else:
            where, args = "fts MATCH ? LIMIT ?", (match, candidates)
        sql = (
            "SELECT d.project, d.name, d.description, d.file_path, d.capabilities, r.rank, "
            "r.rowid "
            "FROM (SELECT rowid, rank FROM "
            "        (SELECT rowid, bm25(fts, ?, ?, ?, ?, ?, ?, 0.0) AS rank FROM fts "
            f"         WHERE {where}) ORDER BY rank, rowid LIMIT ?) AS r "
            "JOIN docs d ON d.rowid = r.rowid ORDER BY r.rank, r.rowid"
        )
        rows = self._db.execute(sql, (*weights, *args, limit)).fetchall()
        return [
            DocRow(r[0], r[1], r[2], r[3], r[4].split() if r[4] else [], -float(r[5]), r[6])
            for r in rows
        ]

    def warm(self) -> None:
        """Load what `search` keeps in memory now (~3 s at 200,000 patterns), not on the
        first search."""
        if self._in_memory:
            self._current_terms()

    def _tokenizer_(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer()
        return self._tokenizer

    def _current_terms(self) -> Terms:
        """The FTS rows in memory, (re)loaded when missing or when another connection wrote
        to the file since (``PRAGMA data_version``)."""
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if self._terms is None or version != self._seen_version:
            self._drop_terms()
            terms = Terms(self._tokenizer_())
            cursor = self._db.execute(f"SELECT rowid, {', '.join(COLUMNS)} FROM fts")
            terms.add_many((int(row[0]), row[1:]) for row in cursor)
            self._terms = terms
            self._seen_version = version
        return self._terms

    def _drop_terms(self) -> None:
        self._terms = None
        self._seen_version = None
        self._rows_with.clear()

    def _rows_holding(self, column: int | None, text: str) -> int:
        key = (column, text)
        count = self._rows_with.get(key)
        if count is None:
            phrase = f'"{text}"' if column is None else f'{COLUMNS[column]} : "{text}"'
            sql = "SELECT count(*) FROM fts WHERE fts MATCH ?"
            count = int(self._db.execute(sql, (phrase,)).fetchone()[0])
            self._rows_with[key] = count
        return count
