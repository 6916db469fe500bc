"""What the guardian judges wrong: pure detectors over a `SwarmState` and a time.

Each detector returns `Finding`s; none does I/O or reads a clock (`now_s` is the caller's
`Clock.monotonic()`, the same clock `SwarmState` was fed with). The rules, with ``cfg`` the
`GuardianConfig`:

- **stall** (per task in progress, on a known worker):
  ``now - last_progress_at >= stall_after_s`` (rule ``no_progress``), or
  ``now - started_at > timeout_s`` when the task has its own ``timeoutS`` (rule
  ``timeout``). Judged on progress, not on time since start: a long task that keeps
  reporting progress is not a stall.
- **worker_dead**: ``now - last_heartbeat > dead_after_s`` for a worker that has not left
  (``cfg.dead_after_s``, else the liveness setting passed in).
- **error_spiral**: the last ``spiral_count`` failures carry the same ``errorKey``.
  Swarm-wide: over the swarm's failure sequence (any other key in between breaks the run;
  completions elsewhere do not), and only when at least two workers took part, since a
  run on one worker is that worker's spiral. Per worker: over that worker's failures; a
  completion on the worker, or its restart, breaks the run. ``swarm.resumed`` clears all.
- **token_spike** (per task in progress, against its worker's baseline): with
  ``x`` the task's tokens so far and ``s`` the worker's last completed per-task totals
  (at least ``spike_min_samples`` of them), ``med = median(s)``,
  ``mad = median(|s_i - med|)``, robust z = ``0.6745 * (x - med) / mad`` (Iglewicz and
  Hoaglin's modified z-score). Spike when ``x - med >= spike_floor_tokens`` (the absolute
  floor: small numbers never trip it) and (``mad == 0`` or ``z >= spike_mad_threshold``).
- **token_budget** (hard limits, off when None): a task's tokens ``> task_token_budget``;
  a worker's tokens over the last ``worker_budget_window_s`` ``> worker_token_budget``.

`Finding.key` identifies the condition for de-duplication (``kind:target[:task]``);
`Finding.target` is what the ladder acts on: a worker id, or ``"swarm"``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Final, Literal

import msgspec

from ..config import GuardianConfig
from .view import SwarmState, TaskView

__all__ = [
    "SWARM",
    "Finding",
    "FindingKind",
    "detect_all",
    "detect_dead_workers",
    "detect_error_spirals",
    "detect_stalls",
    "detect_token_spikes",
    "robust_z",
]

SWARM: Final = "swarm"
"""The target of a finding about the whole swarm."""

FindingKind = Literal["stall", "worker_dead", "error_spiral", "token_spike", "token_budget"]

_MAD_SCALE: Final = 0.6745


class Finding(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Something wrong, with the evidence that shows it."""

    kind: FindingKind
    target: str
    """The worker to act on, or `SWARM`."""
    task_id: str | None = None
    reason: str
    evidence: dict[str, Any] = {}

    @property
    def key(self) -> str:
        """Identity for de-duplication: the same condition on the same target gives the same key."""
        rule = self.evidence.get("rule", "")
        parts = [self.kind, self.target, self.task_id or "", str(rule)]
        return ":".join(p for p in parts if p)


def detect_stalls(state: SwarmState, now_s: float, cfg: GuardianConfig) -> list[Finding]:
    """Tasks with no progress for `stall_after_s`, or running past their own timeout."""
    findings = []
    for task in state.tasks.values():
        if task.worker_id is None:
            continue
        finding = _stall(task, task.worker_id, now_s, cfg)
        if finding is not None:
            findings.append(finding)
    return findings


def _stall(task: TaskView, worker_id: str, now_s: float, cfg: GuardianConfig) -> Finding | None:
    idle_s = now_s - task.last_progress_at_s
    running_s = now_s - task.started_at_s
    evidence: dict[str, Any] = {
        "attempt": task.attempt,
        "idleS": round(idle_s, 3),
        "runningS": round(running_s, 3),
        "timeoutS": task.timeout_s,
        "tokens": task.tokens,
    }
    if task.timeout_s is not None and running_s > task.timeout_s:
        reason = (
            f"task {task.task_id} running {running_s:.0f}s, past its timeout {task.timeout_s:g}s"
        )
        rule = "timeout"
    elif idle_s >= cfg.stall_after_s:
        reason = f"task {task.task_id}: no progress for {idle_s:.0f}s"
        rule = "no_progress"
    else:
        return None
    evidence["rule"] = rule
    return Finding(
        kind="stall", target=worker_id, task_id=task.task_id, reason=reason, evidence=evidence
    )


def detect_dead_workers(
    state: SwarmState, now_s: float, cfg: GuardianConfig, *, liveness_dead_after_s: float = 3.0
) -> list[Finding]:
    """Workers whose heartbeat is older than ``cfg.dead_after_s`` (else the liveness one)."""
    limit = cfg.dead_after_s if cfg.dead_after_s is not None else liveness_dead_after_s
    findings = []
    for worker in state.workers.values():
        if worker.departed or worker.last_heartbeat_s is None:
            continue
        age_s = now_s - worker.last_heartbeat_s
        if age_s > limit:
            findings.append(
                Finding(
                    kind="worker_dead",
                    target=worker.worker_id,
                    reason=f"worker {worker.worker_id}: no heartbeat for {age_s:.1f}s",
                    evidence={
                        "heartbeatAgeS": round(age_s, 3),
                        "deadAfterS": limit,
                        "kind": worker.kind,
                        "tasks": sorted(worker.tasks),
                    },
                )
            )
    return findings


def _run_length(keys: Sequence[str]) -> int:
    """How many of the last keys equal the very last one."""
    if not keys:
        return 0
    last, count = keys[-1], 0
    for key in reversed(keys):
        if key != last:
            break
        count += 1
    return count


def detect_error_spirals(state: SwarmState, now_s: float, cfg: GuardianConfig) -> list[Finding]:
    """Runs of `spiral_count` failures with one errorKey: swarm-wide, and per worker."""
    del now_s  # runs are judged on order, not on time
    findings = []
    swarm = list(state.failures)
    run = _run_length([f.error_key for f in swarm])
    if run >= cfg.spiral_count:
        recent = swarm[-run:]
        workers = sorted({f.worker_id for f in recent if f.worker_id is not None})
        if len(workers) >= 2:
            key = recent[-1].error_key
            findings.append(
                Finding(
                    kind="error_spiral",
                    target=SWARM,
                    reason=f"{run} failures in a row with {key!r} across {len(workers)} workers",
                    evidence={
                        "errorKey": key,
                        "count": run,
                        "workers": workers,
                        "tasks": [f.task_id for f in recent if f.task_id is not None],
                    },
                )
            )
    for worker in state.workers.values():
        run = _run_length(list(worker.failures))
        if run >= cfg.spiral_count:
            key = worker.failures[-1]
            findings.append(
                Finding(
                    kind="error_spiral",
                    target=worker.worker_id,
                    reason=f"worker {worker.worker_id}: {run} failures in a row with {key!r}",
                    evidence={"errorKey": key, "count": run},
                )
            )
    return findings


def robust_z(x: float, samples: Sequence[float]) -> tuple[float, float, float]:
    """``(z, median, mad)``: the modified z-score of `x` against `samples` (inf when mad is 0)."""
    med = statistics.median(samples)
    mad = statistics.median([abs(s - med) for s in samples])
    if mad == 0:
        return (0.0 if x <= med else float("inf")), med, mad
    return _MAD_SCALE * (x - med) / mad, med, mad


def detect_token_spikes(state: SwarmState, now_s: float, cfg: GuardianConfig) -> list[Finding]:
    """Tasks far above their worker's per-task baseline, and breaches of the hard budgets."""
    findings = []
    for task in state.tasks.values():
        if task.worker_id is None:
            continue
        spike = _spike(state, task, task.worker_id, cfg)
        if spike is not None:
            findings.append(spike)
        if cfg.task_token_budget is not None and task.tokens > cfg.task_token_budget:
            findings.append(
                Finding(
                    kind="token_budget",
                    target=task.worker_id,
                    task_id=task.task_id,
                    reason=f"task {task.task_id} used {task.tokens} tokens, "
                    f"over its budget {cfg.task_token_budget}",
                    evidence={
                        "rule": "task",
                        "tokens": task.tokens,
                        "budget": cfg.task_token_budget,
                    },
                )
            )
    if cfg.worker_token_budget is not None:
        for worker_id in state.workers:
            used = state.worker_usage(worker_id, now_s)
            if used > cfg.worker_token_budget:
                findings.append(
                    Finding(
                        kind="token_budget",
                        target=worker_id,
                        reason=f"worker {worker_id} used {used} tokens in "
                        f"{cfg.worker_budget_window_s:g}s, over its budget "
                        f"{cfg.worker_token_budget}",
                        evidence={
                            "rule": "worker",
                            "tokens": used,
                            "budget": cfg.worker_token_budget,
                            "windowS": cfg.worker_budget_window_s,
                        },
                    )
                )
    return findings


def _spike(
    state: SwarmState, task: TaskView, worker_id: str, cfg: GuardianConfig
) -> Finding | None:
    samples = list(state.workers[worker_id].token_history) if worker_id in state.workers else []
    if len(samples) < cfg.spike_min_samples:
        return None
    z, med, mad = robust_z(task.tokens, samples)
    if task.tokens - med < cfg.spike_floor_tokens or z < cfg.spike_mad_threshold:
        return None
    return Finding(
        kind="token_spike",
        target=worker_id,
        task_id=task.task_id,
        reason=f"task {task.task_id} used {task.tokens} tokens; worker's median {med:g}",
        evidence={
            "tokens": task.tokens,
            "median": med,
            "mad": mad,
            "z": None if z == float("inf") else round(z, 2),
            "threshold": cfg.spike_mad_threshold,
            "floor": cfg.spike_floor_tokens,
            "samples": len(samples),
        },
    )


def detect_all(
    state: SwarmState, now_s: float, cfg: GuardianConfig, *, liveness_dead_after_s: float = 3.0
) -> list[Finding]:
    """Every detector, in a stable order (dead workers first: they matter most)."""
    return [
        *detect_dead_workers(state, now_s, cfg, liveness_dead_after_s=liveness_dead_after_s),
        *detect_stalls(state, now_s, cfg),
        *detect_error_spirals(state, now_s, cfg),
        *detect_token_spikes(state, now_s, cfg),
    ]
