"""A worker's own memory: learned expertise, recently touched files, counts of outcomes.

Kept in ``.memory/workers/<workerId>.json`` (``docs/memory.md``)::

    { "workerId", "model", "expertise": {"react": 0.9}, "evidence": {"react": 4.5},
      "recentFiles": [{"path", "touchedAtMs"}], "stats": {"completed": 0, "failed": 0} }

Learning is a pure function (`learn_with_evidence`, or `learn` for the weights alone). A
weight is read as the mean of a Beta belief about the worker's success rate at the skill,
worth ``N = policy.prior_strength + evidence`` outcomes (the evidence of a skill starts at
0: the declared or prior weight is worth `prior_strength` outcomes). A task succeeds with
probability (about) the mean of its skills' weights, so an outcome is credited to each
required skill by how much it can explain it (``credit="share"``)::

    success: share_s = w_s / sum(w)           failure: share_s = (1 - w_s) / sum(1 - w)
    step_s = share_s * max(rate, 1 / (N_s + 1))          evidence_s += share_s
    success: w' = w + step * (ceiling - w)    failure: w' = w - step * (w - floor)

That is the Bayesian update of each skill's mean (moment-matched): a failed two-skill task
mostly blames the weaker skill, a skill little seen moves more than one well known, early
outcomes move a weight a lot and later ones less (down to `rate`, so it still tracks a
change), and a high claim falls fast on failures. With one skill it is the running mean of
the outcomes. A caller that knows the model was too weak for the task (``adequacy`` < 1,
``P(success) = adequacy * mean(w)``) passes it, and a failure then blames the skills less.

Weights stay in ``[floor, ceiling]``, a success never lowers one and a failure never raises
one, and no step exceeds `LearningPolicy.max_step` (the kernel's bounds,
``market/bounds.py``, rely on all three). A skill never seen before starts at
`LearningPolicy.prior`. `LEGACY_POLICY` is the rule before evidence: every required skill
moved by the fixed `rate`.

A worker bids from `WorkerMemory.bid_expertise`: the weights, with the skills it declared
read optimistically by their evidence (`LearningPolicy.optimism`: exploration, fading with
evidence, ``scoring.optimistic_expertise``).

`WorkerMemory` is the mutable state a worker holds; `load_memory`/`save_memory` move it to
and from disk atomically under a lock, in a thread. A malformed file never stops a worker:
`load_memory` returns the defaults and the `MemoryFormatError` that says what was wrong,
and the next save replaces the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Literal

import anyio.to_thread
import msgspec

from ..errors import MemoryFormatError
from ..fsutil import atomic_write, locked
from ..market.scoring import optimistic_expertise

__all__ = [
    "DEFAULT_POLICY",
    "LEGACY_POLICY",
    "LearningPolicy",
    "MemoryFile",
    "RecentFile",
    "Stats",
    "WorkerMemory",
    "learn",
    "learn_with_evidence",
    "load_memory",
    "memory_path",
    "most_after_success",
    "save_memory",
    "touch_files",
]

log = logging.getLogger(__name__)

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]


class LearningPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How outcomes move expertise, and how many recent files are kept.

    `rate` is the smallest step (where it settles once evidence is in); `prior_strength`
    how many outcomes a weight is worth before any (the first step is
    ``1 / (prior_strength + 1)``); `credit` how an outcome is split among the task's
    skills: ``"share"`` by how much each can explain it, ``"even"`` a whole step each.
    `optimism` is how many imagined successes the worker adds to the belief in each skill
    it declared when it bids (``scoring.optimistic_expertise``: exploration, fading with
    evidence; 0 bids the weights as they are).
    """

    rate: float = 0.05
    prior_strength: float = 2.0
    credit: Literal["share", "even"] = "share"
    optimism: float = 1.0
    prior: float = 0.3
    floor: float = 0.05
    ceiling: float = 0.99
    max_recent_files: int = 50

    @property
    def max_step(self) -> float:
        """The largest fraction of the way to the ceiling (or floor) one outcome moves."""
        return min(1.0, max(self.rate, 1.0 / (self.prior_strength + 1.0)))


DEFAULT_POLICY = LearningPolicy()
LEGACY_POLICY = LearningPolicy(rate=0.1, prior_strength=9.0, credit="even", optimism=0.0)
"""The rule before per-skill evidence: every required skill moved by 0.1 of the way, and
bids from the weights as they are (no exploration)."""


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
    evidence: dict[str, NonNegFloat] = {}
    recent_files: list[RecentFile] = []
    stats: Stats = Stats()


# --------------------------------------------------------------------------- pure updates


def _shares(weights: Mapping[str, float], *, success: bool, even: bool) -> dict[str, float]:
    """How much of an outcome each skill is credited with (they sum to 1 unless `even`)."""
    if even:
        return dict.fromkeys(weights, 1.0)
    # success: the skill that could explain it; failure: the one that could not
    odds = {s: (w if success else 1.0 - w) for s, w in weights.items()}
    total = sum(odds.values())
    if total <= 0.0:
        return dict.fromkeys(weights, 1.0 / len(weights))
    return {s: o / total for s, o in odds.items()}


def _skills_blame(total: float, k: int, adequacy: float) -> float:
    """How much of a failure the skills take when the model's adequacy is `adequacy`.

    P(success) = A * mean(w): the Bayesian step of a failure scales by
    ``A * (k - sum w) / (k - A * sum w)``, 1 when the model is able (A = 1).
    """
    a = min(1.0, max(0.0, adequacy))
    if a >= 1.0:
        return 1.0
    rest = k - a * total
    return a * (k - total) / rest if rest > 0.0 else 0.0


def learn_with_evidence(
    expertise: Mapping[str, float],
    evidence: Mapping[str, float],
    skills: Iterable[str],
    *,
    success: bool,
    policy: LearningPolicy = DEFAULT_POLICY,
    adequacy: float = 1.0,
) -> tuple[dict[str, float], dict[str, float]]:
    """New expertise and evidence maps after an outcome of a task that required `skills`.

    See the module docstring for the rule. A skill missing from `evidence` has none.
    `adequacy` (``scoring.adequacy`` of the task for the worker's model, 1 when able) is the
    part of a failure the model explains: the skills take the rest.
    """
    required = sorted(set(skills))
    if not required:
        return dict(expertise), dict(evidence)
    weights = {s: expertise.get(s, policy.prior) for s in required}
    clipped = {s: min(1.0, max(0.0, w)) for s, w in weights.items()}
    shares = _shares(clipped, success=success, even=policy.credit == "even")
    if not success and policy.credit == "share":
        blame = _skills_blame(sum(clipped.values()), len(clipped), adequacy)
        shares = {s: share * blame for s, share in shares.items()}
    updated, counted = dict(expertise), dict(evidence)
    for skill, w in weights.items():
        seen = counted.get(skill, 0.0)
        step = shares[skill] * max(policy.rate, 1.0 / (policy.prior_strength + seen + 1.0))
        step = min(step, policy.max_step)
        if success and w < policy.ceiling:
            w += step * (policy.ceiling - w)
        elif not success and w > policy.floor:
            w -= step * (w - policy.floor)
        updated[skill] = round(w, 6)
        counted[skill] = round(seen + shares[skill], 3)
    return updated, counted


def learn(
    expertise: Mapping[str, float],
    skills: Iterable[str],
    *,
    success: bool,
    policy: LearningPolicy = DEFAULT_POLICY,
    evidence: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """A new expertise map after an outcome of a task that required `skills`.

    `evidence` as in `learn_with_evidence` (None: none for any skill, the largest steps).
    """
    updated, _ = learn_with_evidence(
        expertise, evidence or {}, skills, success=success, policy=policy
    )
    return updated


def most_after_success(
    expertise: Mapping[str, float], skills: Iterable[str], policy: LearningPolicy = DEFAULT_POLICY
) -> dict[str, float]:
    """`expertise` with each of `skills` raised by the largest step of `policy`.

    No outcome of a task requiring `skills`, whatever the evidence, raises any weight above
    this (a weight at or under the one given): the kernel's bounds (``market/bounds.py``).
    """
    updated = dict(expertise)
    for skill in set(skills):
        w = updated.get(skill, policy.prior)
        if w < policy.ceiling:
            w += policy.max_step * (policy.ceiling - w)
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
        evidence: Mapping[str, float] | None = None,
        completed: int = 0,
        failed: int = 0,
        policy: LearningPolicy = DEFAULT_POLICY,
        declared: Iterable[str] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.model = model
        self.expertise: dict[str, float] = dict(expertise)
        # the skills it claims (configured): the ones its bids explore (None: `expertise`)
        self.declared = frozenset(expertise if declared is None else declared)
        self.recent_files: dict[str, int] = dict(recent_files or {})
        self.evidence: dict[str, float] = dict(evidence or {})  # outcomes credited per skill
        self.completed = completed
        self.failed = failed
        self.policy = policy

    def record(
        self,
        *,
        skills: Iterable[str],
        files: Iterable[str],
        success: bool,
        now_ms: int,
        adequacy: float = 1.0,
    ) -> None:
        """Learn from one outcome: expertise, recent files and stats (`learn_with_evidence`)."""
        self.expertise, self.evidence = learn_with_evidence(
            self.expertise,
            self.evidence,
            skills,
            success=success,
            policy=self.policy,
            adequacy=adequacy,
        )
        self.recent_files = touch_files(
            self.recent_files, files, now_ms=now_ms, limit=self.policy.max_recent_files
        )
        if success:
            self.completed += 1
        else:
            self.failed += 1

    def bid_expertise(self) -> dict[str, float]:
        """The weights to bid from: each declared one read optimistically by its evidence.

        ``scoring.optimistic_expertise`` with the policy's `optimism` and `prior_strength`
        on the `declared` skills; a skill only met through tasks is bid as learned.
        """
        return optimistic_expertise(
            self.expertise,
            self.evidence,
            optimism=self.policy.optimism,
            prior_strength=self.policy.prior_strength,
            skills=self.declared,
        )

    def to_file(self) -> MemoryFile:
        recent = sorted(self.recent_files.items(), key=lambda item: (-item[1], item[0]))
        return MemoryFile(
            worker_id=self.worker_id,
            model=self.model,
            expertise={k: min(1.0, max(0.0, v)) for k, v in sorted(self.expertise.items())},
            evidence={k: max(0.0, v) for k, v in sorted(self.evidence.items())},
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
        """Memory from a file; learned weights win over the configured `expertise`.

        Evidence is kept only for a learned weight (a file without it: none yet). The
        configured skills are the declared ones (`bid_expertise`).
        """
        return cls(
            data.worker_id,
            model,
            {**expertise, **data.expertise},
            recent_files={f.path: f.touched_at_ms for f in data.recent_files},
            evidence={k: v for k, v in data.evidence.items() if k in data.expertise},
            completed=data.stats.completed,
            failed=data.stats.failed,
            policy=policy,
            declared=expertise,
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
