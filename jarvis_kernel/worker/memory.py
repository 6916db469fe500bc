"""A worker's own memory: learned expertise, recently touched files, counts of outcomes.

Kept in ``.memory/workers/<workerId>.json`` (``docs/memory.md``)::

    { "workerId", "model", "expertise": {"react": 0.9},
      "recentFiles": [{"path", "touchedAtMs"}], "stats": {"completed": 0, "failed": 0} }

Learning is a pure function (`learn`): each outcome moves the weight of every skill the
task required a fraction `LearningPolicy.rate` of the way towards the ceiling (success) or
the floor (failure)::

    success: w' = w + rate * (ceiling - w)      failure: w' = w - rate * (w - floor)

so weights stay in ``[floor, ceiling]``, move gently, and a skill never seen before starts
at `LearningPolicy.prior`. `WorkerMemory` is the mutable state a worker holds;
`load_memory`/`save_memory` move it to and from disk atomically under a lock, in a thread.
A malformed file never stops a worker: `load_memory` returns the defaults and the
`MemoryFormatError` that says what was wrong, and the next save replaces the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated

import anyio.to_thread
import msgspec

from ..errors import MemoryFormatError
from ..fsutil import atomic_write, locked

__all__ = [
    "DEFAULT_POLICY",
    "LearningPolicy",
    "MemoryFile",
    "RecentFile",
    "Stats",
    "WorkerMemory",
    "learn",
    "load_memory",
    "memory_path",
    "save_memory",
    "touch_files",
]

log = logging.getLogger(__name__)

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class LearningPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How outcomes move expertise, and how many recent files are kept."""

    rate: float = 0.1
    prior: float = 0.3
    floor: float = 0.05
    ceiling: float = 0.99
    max_recent_files: int = 50


DEFAULT_POLICY = LearningPolicy()


class RecentFile(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    path: Annotated[str, msgspec.Meta(min_length=1)]
    touched_at_ms: NonNegInt


class Stats(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    completed: NonNegInt = 0
    failed: NonNegInt = 0


class MemoryFile(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The file's shape; unknown keys are ignored."""

    worker_id: str
    model: str = ""
    expertise: dict[str, Unit] = {}
    recent_files: list[RecentFile] = []
    stats: Stats = Stats()


# --------------------------------------------------------------------------- pure updates


def learn(
    expertise: Mapping[str, float],
    skills: Iterable[str],
    *,
    success: bool,
    policy: LearningPolicy = DEFAULT_POLICY,
) -> dict[str, float]:
    """A new expertise map after an outcome of a task that required `skills`."""
    updated = dict(expertise)
    for skill in set(skills):
        w = updated.get(skill, policy.prior)
        if success and w < policy.ceiling:
            w += policy.rate * (policy.ceiling - w)
        elif not success and w > policy.floor:
            w -= policy.rate * (w - policy.floor)
        updated[skill] = round(w, 6)
    return updated


def touch_files(
    recent: Mapping[str, int], paths: Iterable[str], *, now_ms: int, limit: int
) -> dict[str, int]:
    """`recent` (path -> touchedAtMs) with `paths` touched at `now_ms`; the newest `limit`."""
    merged = dict(recent)
    for path in paths:
        merged[path] = max(now_ms, merged.get(path, 0))
    newest = sorted(merged.items(), key=lambda item: (-item[1], item[0]))[: max(0, limit)]
    return dict(newest)


# --------------------------------------------------------------------------- state


class WorkerMemory:
    """What one worker remembers. Mutated by `record`, persisted by `save_memory`."""

    def __init__(
        self,
        worker_id: str,
        model: str,
        expertise: Mapping[str, float],
        *,
        recent_files: Mapping[str, int] | None = None,
        completed: int = 0,
        failed: int = 0,
        policy: LearningPolicy = DEFAULT_POLICY,
    ) -> None:
        self.worker_id = worker_id
        self.model = model
        self.expertise: dict[str, float] = dict(expertise)
        self.recent_files: dict[str, int] = dict(recent_files or {})
        self.completed = completed
        self.failed = failed
        self.policy = policy

    def record(
        self, *, skills: Iterable[str], files: Iterable[str], success: bool, now_ms: int
    ) -> None:
        """Learn from one outcome: expertise, recent files and stats."""
        self.expertise = learn(self.expertise, skills, success=success, policy=self.policy)
        self.recent_files = touch_files(
            self.recent_files, files, now_ms=now_ms, limit=self.policy.max_recent_files
        )
        if success:
            self.completed += 1
        else:
            self.failed += 1

    def to_file(self) -> MemoryFile:
        recent = sorted(self.recent_files.items(), key=lambda item: (-item[1], item[0]))
        return MemoryFile(
            worker_id=self.worker_id,
            model=self.model,
            expertise={k: min(1.0, max(0.0, v)) for k, v in sorted(self.expertise.items())},
            recent_files=[RecentFile(path=p, touched_at_ms=ms) for p, ms in recent],
            stats=Stats(completed=self.completed, failed=self.failed),
        )

    @classmethod
    def from_file(
        cls,
        data: MemoryFile,
        *,
        model: str,
        expertise: Mapping[str, float],
        policy: LearningPolicy = DEFAULT_POLICY,
    ) -> WorkerMemory:
        """Memory from a file; learned weights win over the configured `expertise`."""
        return cls(
            data.worker_id,
            model,
            {**expertise, **data.expertise},
            recent_files={f.path: f.touched_at_ms for f in data.recent_files},
            completed=data.stats.completed,
            failed=data.stats.failed,
            policy=policy,
        )


# --------------------------------------------------------------------------- files


def memory_path(memory_dir: Path, worker_id: str) -> Path:
    """``<memory_dir>/workers/<workerId>.json``."""
    return memory_dir / "workers" / f"{worker_id}.json"


_DECODER = msgspec.json.Decoder(MemoryFile)
_ENCODER = msgspec.json.Encoder()


def _read(path: Path) -> bytes | None:
    with locked(path):
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None


def _write(path: Path, data: bytes) -> None:
    with locked(path):
        atomic_write(path, data)


def _parse(raw: bytes, path: Path) -> MemoryFile:
    try:
        return _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        text = str(exc)
        field = text.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in text else None
        raise MemoryFormatError(text.split(" - at `")[0], file=str(path), field=field) from exc
    except msgspec.DecodeError as exc:
        raise MemoryFormatError(f"not valid JSON: {exc}", file=str(path)) from exc


async def load_memory(
    memory_dir: Path | None,
    worker_id: str,
    *,
    model: str,
    expertise: Mapping[str, float],
    policy: LearningPolicy = DEFAULT_POLICY,
) -> tuple[WorkerMemory, MemoryFormatError | None]:
    """The worker's memory, or defaults (from `model`, `expertise`) when there is none.

    A malformed file gives the defaults and the error describing it (also logged).
    """
    default = WorkerMemory(worker_id, model, expertise, policy=policy)
    if memory_dir is None:
        return default, None
    path = memory_path(memory_dir, worker_id)
    raw = await anyio.to_thread.run_sync(_read, path)
    if raw is None:
        return default, None
    try:
        data = _parse(raw, path)
        if data.worker_id != worker_id:
            raise MemoryFormatError(
                f"belongs to worker {data.worker_id!r}, not {worker_id!r}",
                file=str(path),
                field="$.workerId",
            )
    except MemoryFormatError as exc:
        log.warning("worker memory ignored, starting from defaults: %s", exc)
        return default, exc
    return WorkerMemory.from_file(data, model=model, expertise=expertise, policy=policy), None


async def save_memory(memory_dir: Path | None, memory: WorkerMemory) -> None:
    """Write the memory file atomically under its lock (nothing without a `memory_dir`)."""
    if memory_dir is None:
        return
    data = _ENCODER.encode(memory.to_file())
    await anyio.to_thread.run_sync(_write, memory_path(memory_dir, memory.worker_id), data)
