"""`Librarian`: builds the memory (patterns.json, global_index.json, the index) and searches it.

Blocking (file and SQLite I/O): from async code call it through `anyio.to_thread.run_sync`
(`LibrarianService` does). One run of `index` holds the lock of ``patterns.json`` from
start to end, so two librarians (threads or processes) never interleave, and writes every
output with `atomic_write` under its own lock. Incremental: a map whose size and mtime are
unchanged is not read; one whose bytes hash as before is not re-extracted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from ..clock import Clock, SystemClock
from ..config import Config, LibrarianConfig
from ..errors import MemoryFormatError
from ..fsutil import atomic_write, atomic_write_parts, locked
from . import formats
from .embed import Embedder, EmbedUnavailable
from .formats import Pattern, Project, Source
from .index import DocRow, PatternIndex, ProjectState
from .patterns import extract_patterns, iso_from_ms, ms_from_iso, reconcile
from .search import Dense, Hit, Mode, Rescore, plan_query, run_search
from .semantic import QueryModel, SemanticRanker
from .static import WordTable, default_table_path
from .taxonomy import Taxonomy, load_taxonomy

__all__ = ["EXTRACTOR_VERSION", "IndexReport", "Librarian", "MapError"]

_log = logging.getLogger(__name__)

# Bump when patterns.py changes what it extracts: every map is then extracted again.
EXTRACTOR_VERSION = 1
# the modes ranking by pattern vectors (semantic.py)
_DENSE_MODES = ("semantic", "static")


class MapError(msgspec.Struct, frozen=True, kw_only=True):
    """A file the librarian could not use: which file, which field, why."""

    file: str
    field: str | None
    reason: str

    @classmethod
    def of(cls, exc: MemoryFormatError, reason: str | None = None) -> MapError:
        text = str(exc).split(": ", 1)[-1] if reason is None else reason
        return cls(file=exc.file, field=exc.field, reason=text)

    def __str__(self) -> str:
        return f"{self.file}" + (f" at {self.field}" if self.field else "") + f": {self.reason}"


class IndexReport(msgspec.Struct, kw_only=True):
    """What one `Librarian.index` run did."""

    projects: int = 0
    reread: list[str] = []
    patterns: int = 0
    stale: int = 0
    dropped: int = 0
    errors: list[MapError] = []
    wrote: bool = False
    # the dense modes: pattern vectors computed (semantic.py), and how long that took
    embedded: int = 0
    embed_s: float = 0.0
    elapsed_s: float = 0.0


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stamp(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def _min_stale_ms(patterns: Sequence[Pattern]) -> int | None:
    stamps = [ms_from_iso(p.stale_since) for p in patterns if p.stale and p.stale_since]
    known = [s for s in stamps if s is not None]
    return min(known) if known else None


class Librarian:
    """The memory of one `.memory/` folder. See the module docstring."""

    def __init__(
        self,
        memory_dir: str | os.PathLike[str],
        *,
        config: LibrarianConfig | None = None,
        taxonomy: Taxonomy | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.memory_dir = Path(memory_dir)
        self.config = config or LibrarianConfig()
        self.taxonomy = taxonomy or load_taxonomy(
            self.config.taxonomy_path, self.config.capabilities
        )
        self.clock: Clock = clock or SystemClock()
        self.patterns_path = self.memory_dir / "patterns.json"
        self.global_index_path = self.memory_dir / "global_index.json"
        self._index = PatternIndex(
            self.memory_dir / self.config.index_file, glossary=self.taxonomy.glossary
        )
        self._extractor_key = hashlib.sha256(
            f"{EXTRACTOR_VERSION}:".encode() + msgspec.json.encode(self.taxonomy.data)
        ).hexdigest()
        self._project_ids: frozenset[str] = frozenset()
        self._ids_stamp: str | None = "unset"
        self._last_stamp: str | None = None
        # the dense modes' ranker: None until first wanted (or while its word table is not
        # built), False when unavailable
        self._semantic: SemanticRanker | bool | None = None
        self._waiting_for_table = False  # logged once: a search found no word table
        # one thread for the dense modes' vector pass, alongside the keyword query
        self._pool: ThreadPoolExecutor | None = None
        if self.config.search_mode in _DENSE_MODES:
            self._ranker(build=False)

    @classmethod
    def from_config(
        cls, config: Config, *, memory_dir: str | None = None, clock: Clock | None = None
    ) -> Librarian:
        return cls(memory_dir or config.memory_dir, config=config.librarian, clock=clock)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._index.close()

    def warm(self) -> None:
        """Load now what searches keep in memory (the keyword list's rows), so that the
        first search is not the one that waits for it."""
        self._index.warm()

    # -- building
    def index(self, *, build_table: bool = True) -> IndexReport:
        """Bring patterns.json, global_index.json and the index up to date with the maps.

        With a dense search mode configured (``static``, the default, or ``semantic``) and
        the embed extra installed, this also builds the word table when it is not cached yet
        (about a minute, once per machine), unless `build_table` is false: a search never
        builds it, nor does the kernel's service (docs/memory.md)."""
        started = time.perf_counter()
        if build_table and self.config.search_mode in _DENSE_MODES:
            self._ranker(build=True)
        with locked(self.patterns_path):
            try:
                report = self._index_locked()
            except sqlite3.DatabaseError:
                self._index.reset()  # corrupt mid-way: start again from the JSON files
                report = self._index_locked()
        report.elapsed_s = time.perf_counter() - started
        return report

    def _index_locked(self) -> IndexReport:
        report = IndexReport()
        idx = self._index
        with idx.transaction():
            dirty = self._sync_with_patterns_file(report)
            if idx.get_meta("extractor") != self._extractor_key:
                idx.forget_hashes()  # new taxonomy or extraction code: re-extract every map
                idx.set_meta("extractor", self._extractor_key)
            projects = self._read_projects(report)
            if projects is not None:
                dirty |= self._update_projects(projects, report)
            ranker = self._semantic
            if isinstance(ranker, SemanticRanker):
                embed_started = time.perf_counter()
                report.embedded = ranker.sync(idx)
                report.embed_s = time.perf_counter() - embed_started
            if dirty:
                self._write_outputs()
                self._last_stamp = _stamp(self.patterns_path)
                idx.set_meta("stamp", self._last_stamp or "")
        report.wrote = dirty
        report.patterns = idx.count()
        return report

    def _sync_with_patterns_file(self, report: IndexReport) -> bool:
        """Make the index mirror patterns.json when it does not. True: rewrite the outputs."""
        idx = self._index
        stamp = _stamp(self.patterns_path)
        if stamp is not None and idx.get_meta("stamp") == stamp:
            if self._last_stamp != stamp:  # written by another librarian: cache is old
                idx.forget_cache()
            return False
        idx.clear()
        if stamp is None:
            return True
        try:
            data = formats.decode_patterns_file(self.patterns_path.read_bytes())
        except MemoryFormatError as exc:
            report.errors.append(MapError.of(exc))
            return True
        by_project: dict[str, list[Pattern]] = {}
        for p in data.patterns:
            by_project.setdefault(p.project, []).append(p)
        for project, patterns in by_project.items():
            src = patterns[0].source
            state = ProjectState(
                map_rel=src.context_map,
                mtime_ns=-1,
                size=-1,
                sha256=src.sha256,
                min_stale_ms=_min_stale_ms(patterns),
            )
            idx.replace_project(project, patterns, state)
        return False

    def _read_projects(self, report: IndexReport) -> list[Project] | None:
        """The listed projects, bad entries reported and skipped; None: leave all as is."""
        try:
            data = (self.memory_dir / "projects.json").read_bytes()
        except FileNotFoundError:
            report.errors.append(MapError(file="projects.json", field=None, reason="missing"))
            return self._discover()
        try:
            raws = msgspec.json.decode(data, type=dict[str, list[msgspec.Raw]] | list[msgspec.Raw])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            report.errors.append(
                MapError(
                    file="projects.json", field=None, reason=f"not a valid projects file ({exc})"
                )
            )
            return None
        items = raws if isinstance(raws, list) else raws.get("projects")
        prefix = "$" if isinstance(raws, list) else "$.projects"
        if items is None:
            report.errors.append(
                MapError(file="projects.json", field="$.projects", reason="missing")
            )
            return None
        out: dict[str, Project] = {}
        for i, raw in enumerate(items):
            try:
                project = formats.decode_projects(b"[" + bytes(raw) + b"]")[0]
            except MemoryFormatError as exc:
                field = (exc.field or "$").replace("$[0]", f"{prefix}[{i}]", 1)
                report.errors.append(
                    MapError(file="projects.json", field=field, reason=str(exc).split(": ", 1)[-1])
                )
                continue
            if project.id in out:
                report.errors.append(
                    MapError(
                        file="projects.json",
                        field=f"{prefix}[{i}].id",
                        reason=f"duplicate project id {project.id!r}",
                    )
                )
                continue
            out[project.id] = project
        return list(out.values())

    def _discover(self) -> list[Project]:
        root = self.memory_dir / "projects"
        if not root.is_dir():
            return []
        found = []
        for child in sorted(root.iterdir()):
            if (child / "context_map.json").is_file():
                try:
                    found.append(Project(id=child.name))
                except msgspec.ValidationError:
                    continue
        return found

    def _update_projects(self, projects: list[Project], report: IndexReport) -> bool:
        idx = self._index
        states = idx.states()
        now_ms = self.clock.time_ms()
        changed = False
        listed = {p.id for p in projects}
        report.projects = len(projects)
        for project in projects:
            changed |= self._update_one(project.id, states.get(project.id), now_ms, report)
        for gone in sorted(set(states) - listed):  # left projects.json: its patterns go stale
            changed |= self._go_stale(gone, states[gone], now_ms, report)
        return changed

    def _go_stale(
        self, project: str, state: ProjectState, now_ms: int, report: IndexReport
    ) -> bool:
        previous = self._index.patterns_of(project)
        kept = reconcile(previous, [], now_ms=now_ms, drop_after_s=self.config.stale_drop_after_s)
        if kept == previous:
            return False
        report.dropped += len(previous) - len(kept)
        report.stale += sum(1 for p in kept if p.stale)
        if not kept:
            self._index.remove_project(project)
        else:
            new_state = msgspec.structs.replace(state, min_stale_ms=_min_stale_ms(kept))
            self._index.replace_project(project, kept, new_state)
        return True

    def _update_one(
        self, project: str, state: ProjectState | None, now_ms: int, report: IndexReport
    ) -> bool:
        map_rel = f"projects/{project}/context_map.json"
        path = self.memory_dir / map_rel
        try:
            st = path.stat()
        except FileNotFoundError:
            report.errors.append(MapError(file=map_rel, field=None, reason="missing"))
            return state is not None and self._go_stale(project, state, now_ms, report)
        if state is not None and (st.st_mtime_ns, st.st_size) == (state.mtime_ns, state.size):
            return self._drop_due(project, state, now_ms, report)
        if st.st_size > self.config.max_map_bytes:
            report.errors.append(
                MapError(
                    file=map_rel,
                    field=None,
                    reason=(
                        f"{st.st_size} bytes is over the limit of {self.config.max_map_bytes}"
                        " (librarian.max_map_bytes)"
                    ),
                )
            )
            return False
        data = path.read_bytes()
        sha = _sha(data)
        stat_state = ProjectState(
            map_rel=map_rel,
            mtime_ns=st.st_mtime_ns,
            size=st.st_size,
            sha256=sha,
            min_stale_ms=state.min_stale_ms if state else None,
        )
        if state is not None and state.sha256 == sha:
            self._index.set_state(project, stat_state)
            return self._drop_due(project, stat_state, now_ms, report)
        try:
            cmap = formats.decode_context_map(data, file=map_rel, project_id=project)
        except MemoryFormatError as exc:
            report.errors.append(MapError.of(exc))  # keep its last good patterns
            return False
        source = Source(context_map=map_rel, sha256=sha, extracted_at=iso_from_ms(now_ms))
        fresh = extract_patterns(project, cmap, source, self.taxonomy)
        previous = self._index.patterns_of(project)
        merged = reconcile(
            previous, fresh, now_ms=now_ms, drop_after_s=self.config.stale_drop_after_s
        )
        report.reread.append(project)
        report.stale += sum(1 for p in merged if p.stale)
        new_state = msgspec.structs.replace(stat_state, min_stale_ms=_min_stale_ms(merged))
        self._index.replace_project(project, merged, new_state)
        return True

    def _drop_due(
        self, project: str, state: ProjectState, now_ms: int, report: IndexReport
    ) -> bool:
        due = state.min_stale_ms
        if due is None or now_ms - due < self.config.stale_drop_after_s * 1000:
            return False
        patterns = self._index.patterns_of(project)
        live = [p for p in patterns if not p.stale]
        kept = reconcile(
            [p for p in patterns if p.stale],
            live,
            now_ms=now_ms,
            drop_after_s=self.config.stale_drop_after_s,
        )
        report.dropped += len(patterns) - len(kept)
        new_state = msgspec.structs.replace(state, min_stale_ms=_min_stale_ms(kept))
        self._index.replace_project(project, kept, new_state)
        return True

    def _write_outputs(self) -> None:
        generated = formats.encode(iso_from_ms(self.clock.time_ms()))
        parts = [b'{"version":1,"generatedAt":' + generated + b',"patterns":[']
        for n, chunk in enumerate(self._index.pattern_chunks()):
            parts += [b",", chunk] if n else [chunk]
        parts.append(b"]}")
        atomic_write_parts(self.patterns_path, parts)  # no joined copy of the whole file
        with locked(self.global_index_path):
            atomic_write(self.global_index_path, formats.encode(self._index.global_index()))

    # -- answering
    def _ranker(self, *, build: bool = False) -> SemanticRanker | None:
        """The dense modes' ranker, loaded once; None (logged once) without the embed extra,
        or while the word table is not cached and `build` is false (building it takes a
        minute or two: `index` does it, a search does not)."""
        if self._semantic is None:
            path = self.config.static_table_path
            table_path = Path(path) if path else default_table_path(self.config.embed_model_dir)
            if not build and table_path is not None and not table_path.is_file():
                if not self._waiting_for_table:
                    self._waiting_for_table = True
                    _log.info(
                        "librarian: no word table yet for %s search, using expanded until "
                        "`python -m jarvis_kernel librarian index` builds it (once per machine)",
                        self.config.search_mode,
                    )
                return None
            try:
                embedder = Embedder.load(self.config.embed_model_dir)
            except EmbedUnavailable as exc:
                _log.warning("librarian: %s search unavailable (%s); using expanded", "dense", exc)
                self._semantic = False
                return None
            table = WordTable.open(table_path, embedder)
            if table.build_s:
                _log.info("librarian: word table built in %.1f s", table.build_s)
            self._semantic = SemanticRanker(table, self.taxonomy.glossary)
            with locked(self.patterns_path), self._index.transaction():
                self._semantic.sync(self._index)
        return self._semantic if isinstance(self._semantic, SemanticRanker) else None

    def _dense(self, query: str, mode: Mode) -> Dense | None:
        ranker = self._ranker() if mode in _DENSE_MODES else None
        if ranker is None:
            return None
        index = self._index
        model: QueryModel = "model" if mode == "semantic" else "static"
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="librarian-dense")
        pool = self._pool

        def start(depth: int, scope: tuple[str | None, bool]) -> Callable[[], list[DocRow]]:
            # the vectors' pass on the pool's thread while this one asks SQLite for the
            # keyword list (both release the GIL); the rows are read here, after
            nearest = pool.submit(ranker.nearest, query, depth, scope, model)
            return lambda: ranker.rows(index, *nearest.result())

        return start

    def _rescore(self, query: str, mode: Mode) -> Rescore | None:
        ranker = self._ranker() if mode == "static" else None
        if ranker is None:
            return None
        return lambda rows: ranker.scores_of(query, rows, "static")

    def _ensure_fresh(self) -> None:
        stamp = _stamp(self.patterns_path)
        if stamp is None or self._index.get_meta("stamp") != stamp:
            self.index(build_table=False)
            stamp = _stamp(self.patterns_path)
        if stamp != self._ids_stamp:
            self._project_ids = frozenset(self._index.states())
            self._ids_stamp = stamp

    def active_project(self) -> str | None:
        """The project in ``active_project.json``, None when there is none (or it is bad)."""
        try:
            data = (self.memory_dir / "active_project.json").read_bytes()
            return formats.decode_active_project(data)
        except (FileNotFoundError, MemoryFormatError):
            return None

    def search(
        self,
        query: str,
        *,
        project: str | None = None,
        limit: int = 5,
        mode: Mode | None = None,
    ) -> list[Hit]:
        """Patterns answering `query`, best first; see `search.run_search` for `project`."""
        try:
            self._ensure_fresh()
            return self._search(query, project, limit, mode or self.config.search_mode)
        except sqlite3.DatabaseError:
            self._index.reset()
            if isinstance(self._semantic, SemanticRanker):
                self._semantic.forget()
            self.index(build_table=False)
            return self._search(query, project, limit, mode or self.config.search_mode)

    def _search(self, query: str, project: str | None, limit: int, mode: Mode) -> list[Hit]:
        plan = plan_query(query, self.taxonomy, self._project_ids)
        return run_search(
            self._index,
            plan,
            active_project=project,
            limit=max(1, limit),
            mode=mode,
            candidates=self.config.max_candidates,
            dense=self._dense(query, mode),
            rescore=self._rescore(query, mode),
        )
