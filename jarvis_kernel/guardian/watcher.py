"""Self-correction of the workspace: watch, check the build, revert the burst that broke it.

`WorkspaceWatcher.run` watches the configured git working tree with ``watchfiles``
(ignoring ``.git``, the configured globs, the memory folder and its own writes). When a
burst of changes has been quiet for ``debounce_s`` (on the `Clock`) it runs the build
check. If the check fails:

1. each changed path git tracks is copied byte for byte to
   ``<memory>/quarantine/<incident id>/<path>`` and restored from HEAD (exactly those
   paths: an empty path list would reset the whole tree and is never passed);
2. each changed untracked file is moved there (never deleted);
3. the check runs again, and the incident (a plain dict with the docs/memory.md fields,
   below) is appended to ``<memory>/incidents.jsonl`` and handed to ``on_incident``.

If the build is still broken after that, nothing else is reverted: the outcome is
``still_broken_escalated`` and the watcher only checks (never reverts) until a check
passes again. The incident record::

    {"id", "atMs", "kind": "build_broken", "level": 2, "action": "revert",
     "target": <workspace>, "evidence": {"changed", "buildOutputTail", "exitCode",
     "timedOut", "afterOutputTail", "afterExitCode", "refused", "missing"},
     "outcome": "reverted_ok" | "still_broken_escalated" | "revert_failed_escalated",
     "reverted": [...], "quarantined": [...], "quarantineDir": <folder>}

`plan_revert` is the pure decision; `GitWorkspace` (gitws.py) does the blocking git work.
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import logging
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pygit2
from anyio.abc import TaskStatus

from ..clock import Clock, SystemClock, run_with_timeout
from ..config import WorkspaceConfig
from ..fsutil import append_line
from .gitws import GitWorkspace, PathState, safe_relpath

__all__ = [
    "BuildCheck",
    "BuildResult",
    "RevertPlan",
    "WorkspaceWatcher",
    "plan_revert",
]

log = logging.getLogger("jarvis_kernel.guardian")

Incident = dict[str, Any]
OnIncident = Callable[[Incident], object]
# (workspace, filter) -> batches of changed absolute paths
Changes = Callable[[Path, Callable[[str], bool]], AsyncIterable[set[str]]]

_TAIL_BYTES = 4000
# how often the watch thread wakes when nothing happens (the first wake proves it watches)
_WATCH_TIMEOUT_MS = 250
# files taken from one new directory at most
_MAX_DIR_FILES = 10_000


# -- the pure decision -----------------------------------------------------------------


class RevertPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What to do with a broken burst: `restore` from HEAD, `quarantine_move`, leave alone.

    `restore` may be empty, and then nothing is checked out (an empty list must never
    reach the checkout, where it means "every path"). `refused`: paths that could leave
    the workspace.
    """

    restore: list[str] = []
    quarantine_move: list[str] = []
    skip: list[str] = []
    refused: list[str] = []


def plan_revert(changed: set[str], tracked_state: Mapping[str, PathState]) -> RevertPlan:
    """Sort the burst's `changed` paths by their git state (a path without one is refused)."""
    restore: set[str] = set()
    move: set[str] = set()
    skip: set[str] = set()
    refused: set[str] = set()
    for path in changed:
        norm = safe_relpath(path)
        state = tracked_state.get(path)
        if norm is None or state is None or state == "outside":
            refused.add(path)
        elif state in ("tracked_modified", "tracked_deleted"):
            restore.add(norm)
        elif state == "untracked":
            move.add(norm)
        else:
            skip.add(norm)
    return RevertPlan(
        restore=sorted(restore),
        quarantine_move=sorted(move),
        skip=sorted(skip - restore - move),
        refused=sorted(refused),
    )


def is_ignored(relpath: str, patterns: Sequence[str]) -> bool:
    """Whether a glob in `patterns` matches `relpath` or one of its parts."""
    parts = relpath.split("/")
    return any(
        fnmatch.fnmatchcase(relpath, pat) or any(fnmatch.fnmatchcase(p, pat) for p in parts)
        for pat in patterns
    )


# -- the build check -------------------------------------------------------------------


class BuildResult(msgspec.Struct, frozen=True, kw_only=True):
    """One run of the build check. `exit_code` None: it timed out or could not start."""

    ok: bool
    exit_code: int | None
    output_tail: str
    duration_s: float
    timed_out: bool = False
    started: bool = True


class BuildCheck:
    """Runs `argv` (no shell) in `cwd`; fails after `timeout_s` of `clock` time."""

    def __init__(
        self,
        argv: Sequence[str],
        timeout_s: float,
        cwd: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
    ) -> None:
        if not argv:
            raise ValueError("the build check needs a command")
        self.argv = list(argv)
        self.timeout_s = timeout_s
        self.cwd = Path(cwd)
        self.clock: Clock = clock or SystemClock()

    async def run(self) -> BuildResult:
        start = self.clock.monotonic()
        try:
            process = await anyio.open_process(
                self.argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so a timeout kills the whole process group
            )
        except OSError as exc:
            return BuildResult(
                ok=False, exit_code=None, output_tail=f"cannot run {self.argv[0]!r}: {exc}",
                duration_s=0.0, started=False,
            )  # fmt: skip
        tail = bytearray()
        async with process:

            async def collect() -> int:
                assert process.stdout is not None
                async for chunk in process.stdout:
                    tail.extend(chunk)
                    del tail[:-_TAIL_BYTES]
                return await process.wait()

            done, code = await run_with_timeout(self.clock, self.timeout_s, collect)
            if not done:
                _kill_group(process.pid)
                with anyio.move_on_after(5, shield=True):
                    await process.wait()
        return BuildResult(
            ok=done and code == 0,
            exit_code=code if done else None,
            output_tail=tail.decode("utf-8", "replace"),
            duration_s=self.clock.monotonic() - start,
            timed_out=not done,
        )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


# -- the service -----------------------------------------------------------------------


def _watchfiles(root: Path, keep: Callable[[str], bool]) -> AsyncIterable[set[str]]:
    from watchfiles import awatch

    async def batches() -> AsyncIterable[set[str]]:
        async for changes in awatch(
            root,
            watch_filter=lambda _change, path: keep(path),
            debounce=200,
            step=20,
            rust_timeout=_WATCH_TIMEOUT_MS,
            yield_on_timeout=True,
            recursive=True,
        ):
            yield {path for _change, path in changes}

    return batches()


class WorkspaceWatcher:
    """Watches a git workspace and reverts a burst of changes that breaks the build."""

    def __init__(
        self,
        config: WorkspaceConfig,
        memory_dir: str | os.PathLike[str],
        clock: Clock | None = None,
        *,
        on_incident: OnIncident | None = None,
        build: BuildCheck | None = None,
        changes: Changes = _watchfiles,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.memory_dir = Path(os.path.realpath(memory_dir))
        self.on_incident = on_incident
        self.root = Path(os.path.realpath(config.path)) if config.path else None
        if build is None and self.root is not None and config.build_command:
            build = BuildCheck(
                config.build_command, config.build_timeout_s, self.root, clock=self.clock
            )
        self.build = build
        self._changes = changes
        self._workspace: GitWorkspace | None = None
        self.pending: set[str] = set()
        self._last_change = 0.0
        self._dirty = anyio.Event()
        self._seen = anyio.Event()
        self._handled = anyio.Event()
        # paths being restored or moved right now, and what each looked like afterwards
        self._restoring: set[str] = set()
        self._own: dict[str, tuple[int, int, int] | None] = {}
        self.escalated = False
        self.bursts = 0
        self.incidents: list[Incident] = []
        self.last_check: BuildResult | None = None

    @property
    def enabled(self) -> bool:
        return self.root is not None and self.build is not None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled; `task_status.started()` once the watcher really watches."""
        if not self.enabled or self.root is None:
            log.info("workspace guardian off (no workspace.path or build_command)")
            task_status.started()
            return
        root = self.root
        self._workspace = await anyio.to_thread.run_sync(GitWorkspace, root)
        async with anyio.create_task_group() as tg:
            await tg.start(self._watch, root)
            tg.start_soon(self._debounce)
            task_status.started()

    # -- watching ------------------------------------------------------------------------

    def _keep(self, path: str) -> bool:
        """The watch filter: only workspace files that are not ignored (pure, cheap)."""
        rel = self._relpath(path)
        if rel is None or is_ignored(rel, self.config.ignore):
            return False
        return rel not in self._restoring

    def _relpath(self, path: str) -> str | None:
        assert self.root is not None
        full = Path(path)
        if full == self.memory_dir or self.memory_dir in full.parents:
            return None
        try:
            rel = full.relative_to(self.root).as_posix()
        except ValueError:
            return None
        return safe_relpath(rel)

    async def _watch(self, root: Path, *, task_status: TaskStatus[None]) -> None:
        started = False
        async for batch in self._changes(root, self._keep):
            if not started:  # the watch thread has run once: events are being collected
                task_status.started()
                started = True
            rels = {rel for path in batch if (rel := self._relpath(path)) is not None}
            rels = await anyio.to_thread.run_sync(self._drop_own_writes, rels)
            if rels:
                self.note_changed(rels)

    def _drop_own_writes(self, rels: set[str]) -> set[str]:
        """Forget events for paths still as the guardian left them (blocking: stats).

        A new directory's files are added: they may be written before the directory is
        watched, and then have no event of their own.
        """
        assert self.root is not None
        real = set()
        for rel in rels | self._files_under_dirs(rels):
            if rel in self._restoring:
                continue
            if rel in self._own:
                if _fingerprint(self.root / rel) == self._own[rel]:
                    continue
                del self._own[rel]
            real.add(rel)
        return real

    def _files_under_dirs(self, rels: set[str]) -> set[str]:
        assert self.root is not None
        found: set[str] = set()
        for rel in rels:
            top = self.root / rel
            if top.is_symlink() or not top.is_dir():
                continue
            for folder, dirs, files in os.walk(top):
                base = Path(folder).relative_to(self.root).as_posix()
                dirs[:] = [d for d in dirs if not is_ignored(f"{base}/{d}", self.config.ignore)]
                found.update(f"{base}/{name}" for name in files)
                if len(found) > _MAX_DIR_FILES:
                    return found
        return {rel for rel in found if not is_ignored(rel, self.config.ignore)}

    def note_changed(self, rels: set[str]) -> None:
        """Add `rels` (workspace-relative) to the burst; the check waits `debounce_s`."""
        self.pending |= rels
        self._last_change = self.clock.monotonic()
        self._dirty.set()
        self._seen.set()
        self._seen = anyio.Event()

    async def wait_for_pending(self, rels: set[str]) -> None:
        """Wait until all of `rels` are in the current burst (for tests and callers)."""
        while not rels <= self.pending:
            await self._seen.wait()

    async def wait_for_bursts(self, count: int) -> None:
        """Wait until `count` bursts have been handled."""
        while self.bursts < count:
            await self._handled.wait()

    async def _debounce(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            while (left := self._last_change + self.config.debounce_s - self.clock.monotonic()) > 0:
                await self.clock.sleep(left)
            burst, self.pending = self.pending, set()
            await self.handle_burst(burst)
            self.bursts += 1
            self._handled.set()
            self._handled = anyio.Event()

    # -- acting --------------------------------------------------------------------------

    async def handle_burst(self, changed: set[str]) -> Incident | None:
        """Check the build after `changed`; revert them if it broke. The incident or None."""
        assert self.build is not None
        result = await self.build.run()
        self.last_check = result
        if result.ok:
            if self.escalated:
                log.info("workspace build passes again; reverting resumes")
            self.escalated = False
            return None
        if not result.started:
            log.error("workspace build check cannot run: %s", result.output_tail)
            return None
        if self.escalated:  # broken before this burst too: never revert anything else
            return None
        incident = await self._revert(changed, result)
        self.incidents.append(incident)
        line = msgspec.json.encode(incident)
        await anyio.to_thread.run_sync(append_line, self.memory_dir / "incidents.jsonl", line)
        if self.on_incident is not None:
            outcome = self.on_incident(incident)
            if inspect.isawaitable(outcome):
                await outcome
        return incident

    async def _revert(self, changed: set[str], before: BuildResult) -> Incident:
        assert self.build is not None
        at_ms = self.clock.time_ms()
        incident_id = f"inc-{at_ms}-{uuid.uuid4().hex[:8]}"
        qdir = self.memory_dir / "quarantine" / incident_id
        evidence: dict[str, Any] = {
            "changed": sorted(changed),
            "buildOutputTail": before.output_tail,
            "exitCode": before.exit_code,
            "timedOut": before.timed_out,
        }
        done = _Reverted()
        try:
            await self._apply(changed, qdir, done)
        except (OSError, ValueError, pygit2.GitError) as exc:
            evidence["error"] = f"{type(exc).__name__}: {exc}"
            log.exception("workspace revert of %s failed", incident_id)
        evidence["refused"] = done.refused
        evidence["missing"] = done.missing
        after = await self.build.run()
        self.last_check = after
        evidence["afterOutputTail"] = after.output_tail
        evidence["afterExitCode"] = after.exit_code
        if "error" in evidence:
            outcome = "revert_failed_escalated"
        else:
            outcome = "reverted_ok" if after.ok else "still_broken_escalated"
        self.escalated = not after.ok
        return {
            "id": incident_id,
            "atMs": at_ms,
            "kind": "build_broken",
            "level": 2,
            "action": "revert",
            "target": str(self.root),
            "evidence": evidence,
            "outcome": outcome,
            "reverted": done.reverted,
            "quarantined": sorted(done.copied + done.moved),
            "quarantineDir": str(qdir),
        }

    async def _apply(self, changed: set[str], qdir: Path, done: _Reverted) -> None:
        """Quarantine and restore the burst's tracked paths, move its untracked ones."""
        ws = self._workspace
        assert ws is not None
        states = await anyio.to_thread.run_sync(ws.classify, sorted(changed))
        plan = plan_revert(changed, states)
        done.refused = plan.refused
        touched = set(plan.restore) | set(plan.quarantine_move)
        self._restoring |= touched
        try:
            done.copied, done.missing = await anyio.to_thread.run_sync(
                ws.quarantine_copy, plan.restore, qdir
            )
            if plan.restore:  # never an empty list: libgit2 reads it as the whole tree
                done.reverted = await anyio.to_thread.run_sync(ws.restore_from_head, plan.restore)
            if plan.quarantine_move:
                done.moved = await anyio.to_thread.run_sync(
                    ws.move_to_quarantine, plan.quarantine_move, qdir
                )
        finally:
            await anyio.to_thread.run_sync(self._remember_own, sorted(touched))
            self._restoring -= touched

    def _remember_own(self, rels: list[str]) -> None:
        assert self.root is not None
        for rel in rels:
            self._own[rel] = _fingerprint(self.root / rel)


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class _Reverted:
    """What a revert got done (filled as it goes, so a failure still reports it)."""

    def __init__(self) -> None:
        self.copied: list[str] = []
        self.missing: list[str] = []
        self.reverted: list[str] = []
        self.moved: list[str] = []
        self.refused: list[str] = []
