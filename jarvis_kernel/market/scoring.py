"""The bid score: how well one worker suits one task, as a number in [0, 1]. Pure.

A worker answers every announcement with ``bid_score(...)``; the auction awards the task to
the highest score above 0. Everything here is a deterministic function of its arguments:
no clock, no I/O, no randomness.

The parts (each in [0, 1])
--------------------------
**Expertise match** ``E`` — the mean of the worker's weights over the task's distinct
required skills (a skill the worker does not list counts 0)::

    E = mean(expertise.get(s, 0) for s in set(requiredSkills))      # NEUTRAL (0.5) if none

A task that asks for no skill gives everyone the neutral 0.5, not 0, so it is still won.

**Context** ``C`` — how recently the worker touched the files the task names, each file
decaying by half every ``context_half_life_s``::

    C = mean(0.5 ** (age_s(f) / half_life_s) if f in recent_files else 0  for f in set(files))
    age_s(f) = max(0, now_ms - touchedAtMs(f)) / 1000                # 0 if the task names none

**Capability fit** ``K = A * Y`` — the model's ``capability`` (``cap``) and ``cost`` come
from ``config.models`` (an unknown model has ``config.unknown_model_capability`` and cost
0.5); ``c`` is the task's complexity::

    A = 1                       if cap >= c        (adequacy: able enough)
        (cap / c) ** 2          otherwise          (too weak: falls off quickly)
    Y = 1 - cost_penalty * cost * (1 - c)          (economy: a costly model on an easy task
                                                    loses a little; on the hardest, nothing)

The score
---------
The weighted mean of the parts, with the adequacy ``A`` also multiplying the whole, so that
a model too weak for the task cannot make up for it with expertise or context::

    score = A * (wE * E + wC * C + wK * K) / (wE + wC + wK)            # 0.5 * A if all w = 0

and ``score = 0`` (a refusal) when the task has a ``requiredModel`` other than ``model``.

Properties (tested): the result is in [0, 1]; more expertise on a required skill, a more
recent touch of a named file, or a more capable model of the same cost never lowers it; a
costlier model of the same capability never raises it.

The expertise a worker bids from (exploration)
----------------------------------------------
A worker does not bid its learned weights as they are but an optimistic reading of them,
`optimistic_expertise`: each weight ``w`` it lists is the mean of a Beta belief worth
``N = prior_strength + evidence`` outcomes (``worker/memory.py``), and the bid counts
``optimism`` more outcomes, all of them successes::

    w_bid = (w * N + optimism) / (N + optimism)       # = w + optimism * (1 - w) / (N + optimism)

A skill known from few outcomes is bid above its mean, the more so the lower it is, so a
worker that declared a skill too low still wins tasks needing it now and then and learns
the truth; the bonus fades as evidence comes in (an upper confidence bound of sorts). Only
the skills passed as ``skills`` get it (a worker passes the ones it declared: it tests its
claims, not every skill it met once); the others are bid as they are, and a skill the worker
does not list stays 0. ``w_bid`` is in [w, 1], never falls as ``w`` rises, and never rises
as ``N`` does, so the kernel bounds it with the least evidence the worker can have (the
evidence it last published, or none), on every skill (``market/bounds.py``).
``optimism = 0`` bids the weights as they are.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final, Protocol

from ..config import ModelSpec, ScoringConfig

__all__ = [
    "NEUTRAL",
    "TaskLike",
    "adequacy",
    "bid_score",
    "capability_fit",
    "context_score",
    "economy",
    "expertise_match",
    "model_spec",
    "optimistic_expertise",
    "task_fit",
]

NEUTRAL: Final = 0.5
"""The expertise match of a task that requires no skill."""

_UNKNOWN_MODEL_COST: Final = 0.5


class TaskLike(Protocol):
    """What scoring reads of a task: an `Announce`, a `Task` or an `Assignment`."""

    @property
    def required_skills(self) -> Sequence[str]: ...

    @property
    def complexity(self) -> float: ...

    @property
    def files(self) -> Sequence[str]: ...

    @property
    def required_model(self) -> str | None: ...


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def expertise_match(required_skills: Sequence[str], expertise: Mapping[str, float]) -> float:
    """``E``: mean weight over the distinct required skills; `NEUTRAL` when there are none."""
    skills = set(required_skills)
    if not skills:
        return NEUTRAL
    return _clamp(sum(_clamp(expertise.get(s, 0.0)) for s in skills) / len(skills))


def context_score(
    files: Sequence[str], recent_files: Mapping[str, int], *, now_ms: int, half_life_s: float
) -> float:
    """``C``: mean freshness (halving every `half_life_s`) of the named files; 0 if none."""
    named = set(files)
    if not named:
        return 0.0
    total = 0.0
    for path in named:
        touched_ms = recent_files.get(path)
        if touched_ms is not None:
            age_s = max(0, now_ms - touched_ms) / 1000.0
            total += 0.5 ** (age_s / half_life_s)
    return _clamp(total / len(named))


def model_spec(model: str, config: ScoringConfig) -> ModelSpec:
    """The capability and cost of `model`, or the configured default for an unknown one."""
    spec = config.models.get(model)
    if spec is not None:
        return spec
    return ModelSpec(capability=config.unknown_model_capability, cost=_UNKNOWN_MODEL_COST)


def adequacy(complexity: float, capability: float) -> float:
    """``A``: 1 when the model is able enough, ``(cap / c) ** 2`` when it is too weak."""
    if capability >= complexity:
        return 1.0
    return _clamp(capability / complexity) ** 2


def economy(complexity: float, cost: float, cost_penalty: float) -> float:
    """``Y``: ``1 - cost_penalty * cost * (1 - complexity)``."""
    return _clamp(1.0 - cost_penalty * _clamp(cost) * (1.0 - _clamp(complexity)))


def capability_fit(complexity: float, spec: ModelSpec, *, cost_penalty: float) -> float:
    """``K = A * Y``: able enough for the task, and not wasted on it."""
    return adequacy(complexity, spec.capability) * economy(complexity, spec.cost, cost_penalty)


def bid_score(
    task: TaskLike,
    *,
    expertise: Mapping[str, float],
    model: str,
    recent_files: Mapping[str, int],
    now_ms: int,
    config: ScoringConfig,
) -> float:
    """The bid of a worker (`expertise`, `model`, `recent_files`) for `task`, in [0, 1].

    0.0 is a refusal: returned when the task requires another model. See the module
    docstring for the formula.
    """
    if task.required_model is not None and task.required_model != model:
        return 0.0
    spec = model_spec(model, config)
    able = adequacy(task.complexity, spec.capability)
    weights = config.expertise_weight + config.context_weight + config.capability_weight
    if weights <= 0.0:
        return _clamp(NEUTRAL * able)
    e = expertise_match(task.required_skills, expertise)
    c = context_score(
        task.files, recent_files, now_ms=now_ms, half_life_s=config.context_half_life_s
    )
    k = able * economy(task.complexity, spec.cost, config.cost_penalty)
    mean = (
        config.expertise_weight * e + config.context_weight * c + config.capability_weight * k
    ) / weights
    return _clamp(able * mean)


def optimistic_expertise(
    expertise: Mapping[str, float],
    evidence: Mapping[str, float],
    *,
    optimism: float,
    prior_strength: float,
    skills: Collection[str] | None = None,
) -> dict[str, float]:
    """The weights a worker bids from: each of `skills` (None: all) read optimistically.

    ``(w * N + optimism) / (N + optimism)`` with ``N = prior_strength + evidence`` (a skill
    missing from `evidence` has none); see the module docstring. Weights are clamped to
    [0, 1]; `optimism` <= 0 returns them as they are.
    """
    out = {s: _clamp(w) for s, w in expertise.items()}
    if optimism <= 0.0:
        return out
    for skill, weight in out.items():
        if skills is not None and skill not in skills:
            continue
        n = max(0.0, prior_strength) + max(0.0, evidence.get(skill, 0.0))
        # 1 - (1 - w) * N / (N + optimism), in steps each monotone in w and in N, so that
        # the kernel's bound (at less evidence) holds to the last bit too
        kept = 1.0 - optimism / (n + optimism)
        out[skill] = _clamp(1.0 - (1.0 - weight) * kept)
    return out


def task_fit(
    task: TaskLike, *, expertise: Mapping[str, float], model: str, config: ScoringConfig
) -> float:
    """How likely this worker is to do `task` well, in [0, 1] (used by the sim executor).

    ``mean expertise over required skills (1 if none) * A``: unlike the bid, a task that
    needs no skill is one anyone can do.
    """
    skills = task.required_skills
    match = expertise_match(skills, expertise) if skills else 1.0
    return _clamp(match * adequacy(task.complexity, model_spec(model, config).capability))
