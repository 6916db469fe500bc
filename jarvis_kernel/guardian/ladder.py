"""The escalation ladder: what the guardian does about a finding (pure policy).

`Ladder` decides, the service acts. It reads no clock (`now_s` is passed in) and keeps no
state of its own: each call takes a `TargetState` (or a `LadderBook` of them, one per
target: a worker id, or ``"swarm"``) and returns the new one with an `Action`.

Levels
  1. ``dump``: ask the worker for a state dump (SIGUSR1 for a managed worker, the
     ``dump`` control command for a foreign one), then ``wait`` `dump_grace_s` for the
     finding to clear (progress resumed).
  2. ``restart`` a managed worker through its runtime and take its tasks back; for a
     foreign worker, which the kernel cannot restart, ``reclaim`` (take its tasks back
     only). After one, ``wait`` `restart_grace_s` before judging the target again.
  3. ``pause_and_rca``: pause the swarm and submit a root-cause-analysis task requiring
     `rca_model`, with the evidence. The target stays at level 3 (no further action)
     until `Ladder.rca_done`; the swarm resumes then if `resume_after_rca`.

Where a finding starts (decided here, see `first_level`)
  - ``stall``, ``token_spike``: level 1; a hung or runaway worker may explain itself in a
    dump and may recover.
  - ``worker_dead``: level 2; a dead worker cannot dump.
  - ``error_spiral`` on one worker: level 2; it is failing, not hung, and a dump adds
    little to the error keys already in hand.
  - ``token_budget``: level 2; a hard budget is hard.
  - ``error_spiral`` swarm-wide: level 3 directly; one error across several workers is
    not one worker's fault, and restarting workers would only burn attempts.
  A target already higher on the ladder stays there: the next action is the later of its
  own level and the finding's first level.

Restart intensity and backoff (as OTP supervisors)
  - More than `max_restarts` restarts of one target within `restart_window_s` escalates to
    level 3 instead of restarting again (the R+1-th restart in T seconds is never made).
  - The n-th consecutive restart waits ``min(backoff_max_s, backoff_base_s * 2**(n-2))``
    after the decision (the first is immediate): `Action.delay_s`.
  - A target with no finding for `quiet_period_s` is reset: level 0, backoff streak 0.
    Below that a target that comes back resumes where it was (a worker that stalls again
    soon after a restart is restarted, not dumped again).
  - With several findings for one target in one round, the most severe decides (highest
    first level); all of them go into an RCA's evidence. Only one RCA is pending at a
    time: a second level 3 while the swarm is paused gives ``none``.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import Any, Final, Literal

import msgspec

from ..config import GuardianConfig
from ..protocol import Task
from .heuristics import SWARM, Finding

__all__ = ["Action", "ActionKind", "Ladder", "LadderBook", "RcaRequest", "TargetState"]

ActionKind = Literal["none", "wait", "dump", "restart", "reclaim", "pause_and_rca"]

_FIRST_LEVEL: Final[dict[str, int]] = {
    "stall": 1,
    "token_spike": 1,
    "worker_dead": 2,
    "error_spiral": 2,
    "token_budget": 2,
}


class RcaRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The root-cause-analysis task to submit at level 3 (the service names it)."""

    required_model: str
    description: str
    payload: dict[str, Any]

    def to_task(self, task_id: str, *, priority: int = 100) -> Task:
        """The `Task` to submit, with `task_id` chosen by the caller."""
        return Task(
            task_id=task_id,
            description=self.description,
            required_model=self.required_model,
            priority=priority,
            complexity=1.0,
            payload=self.payload,
        )


class Action(msgspec.Struct, frozen=True, kw_only=True):
    """What to do now about one target."""

    kind: ActionKind
    level: int
    target: str
    reason: str
    finding: Finding | None = None
    via: Literal["signal", "control"] | None = None
    """For ``dump``: SIGUSR1 through the runtime, or the control command."""
    delay_s: float = 0.0
    """For ``restart``/``reclaim``: wait this long first (backoff)."""
    take_back_tasks: bool = False
    rca: RcaRequest | None = None

    @property
    def acts(self) -> bool:
        """True when the service has something to do (not ``none`` nor ``wait``)."""
        return self.kind not in ("none", "wait")


class TargetState(msgspec.Struct, frozen=True, kw_only=True):
    """Where one target stands on the ladder."""

    level: int = 0
    level_at_s: float | None = None
    """When the current level's action was taken (for a restart: when it is due)."""
    restarts: tuple[float, ...] = ()
    """Times of restarts inside the intensity window."""
    streak: int = 0
    """Restarts since the last quiet period (drives the backoff)."""
    last_restart_s: float | None = None
    last_seen_s: float | None = None
    """Last time a finding about this target was decided on."""


class LadderBook(msgspec.Struct, frozen=True, kw_only=True):
    """Every target's state, and whether a root-cause analysis is pending."""

    targets: dict[str, TargetState] = {}
    rca_pending: bool = False


_FRESH: Final = TargetState()


class Ladder:
    """The escalation policy for one `GuardianConfig`."""

    def __init__(self, cfg: GuardianConfig) -> None:
        self.cfg = cfg

    @staticmethod
    def first_level(finding: Finding) -> int:
        """The level a fresh target starts at for this finding (see the module docstring)."""
        if finding.kind == "error_spiral" and finding.target == SWARM:
            return 3
        return _FIRST_LEVEL.get(finding.kind, 1)

    def backoff_s(self, streak: int) -> float:
        """Delay before a restart that follows `streak` consecutive ones."""
        if streak <= 0:
            return 0.0
        return min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2.0 ** (streak - 1))

    def settle(self, state: TargetState, now_s: float) -> TargetState:
        """`state` after a quiet period without findings: reset (level 3 waits for the RCA)."""
        if state.level >= 3 or state.last_seen_s is None:
            return state
        if now_s - state.last_seen_s < self.cfg.quiet_period_s:
            return state
        window = self.cfg.restart_window_s
        return TargetState(restarts=tuple(t for t in state.restarts if now_s - t < window))

    def decide(
        self, finding: Finding, state: TargetState, now_s: float, *, managed: bool
    ) -> tuple[TargetState, Action]:
        """The next action about `finding`'s target, and the target's new state."""
        state = self.settle(state, now_s)
        window = self.cfg.restart_window_s
        state = msgspec.structs.replace(
            state,
            restarts=tuple(t for t in state.restarts if now_s - t < window),
            last_seen_s=now_s,
        )
        if state.level >= 3:
            return state, self._idle("none", state, finding, "awaiting root-cause analysis")
        first = self.first_level(finding)
        if first >= 3:
            return self._escalate(finding, state, now_s, finding.reason)
        if state.level == 0 and first == 1:
            return self._dump(finding, state, now_s, managed=managed)
        since = now_s - state.level_at_s if state.level_at_s is not None else float("inf")
        if state.level == 1 and first == 1 and since < self.cfg.dump_grace_s:
            return state, self._idle("wait", state, finding, "dump grace period")
        if state.level == 2 and since < self.cfg.restart_grace_s:
            return state, self._idle("wait", state, finding, "restart in progress")
        return self._restart(finding, state, now_s, managed=managed)

    def _idle(self, kind: ActionKind, state: TargetState, finding: Finding, reason: str) -> Action:
        return Action(
            kind=kind, level=state.level, target=finding.target, reason=reason, finding=finding
        )

    def _dump(
        self, finding: Finding, state: TargetState, now_s: float, *, managed: bool
    ) -> tuple[TargetState, Action]:
        new = msgspec.structs.replace(state, level=1, level_at_s=now_s)
        action = Action(
            kind="dump",
            level=1,
            target=finding.target,
            reason=finding.reason,
            finding=finding,
            via="signal" if managed else "control",
        )
        return new, action

    def _restart(
        self, finding: Finding, state: TargetState, now_s: float, *, managed: bool
    ) -> tuple[TargetState, Action]:
        cfg = self.cfg
        if len(state.restarts) >= cfg.max_restarts:
            why = (
                f"{finding.reason}; {len(state.restarts)} restarts in "
                f"{cfg.restart_window_s:g}s (max {cfg.max_restarts})"
            )
            return self._escalate(finding, state, now_s, why)
        recent = state.last_restart_s is not None and (
            now_s - state.last_restart_s < cfg.quiet_period_s
        )
        streak = state.streak if recent else 0
        delay = self.backoff_s(streak)
        due = now_s + delay
        new = TargetState(
            level=2,
            level_at_s=due,
            restarts=(*state.restarts, due),
            streak=streak + 1,
            last_restart_s=due,
            last_seen_s=now_s,
        )
        action = Action(
            kind="restart" if managed else "reclaim",
            level=2,
            target=finding.target,
            reason=finding.reason,
            finding=finding,
            delay_s=delay,
            take_back_tasks=True,
        )
        return new, action

    def _escalate(
        self, finding: Finding, state: TargetState, now_s: float, why: str
    ) -> tuple[TargetState, Action]:
        new = msgspec.structs.replace(state, level=3, level_at_s=now_s)
        rca = RcaRequest(
            required_model=self.cfg.rca_model,
            description=(
                f"Root-cause analysis: the guardian paused the swarm. {why}. "
                "Find the cause in the evidence, say what to change, and whether the swarm "
                "can resume."
            ),
            payload={
                "kind": "guardian.rca",
                "target": finding.target,
                "findings": [msgspec.to_builtins(finding)],
                "ladder": {
                    "previousLevel": state.level,
                    "restartsInWindow": len(state.restarts),
                    "streak": state.streak,
                },
            },
        )
        action = Action(
            kind="pause_and_rca",
            level=3,
            target=finding.target,
            reason=why,
            finding=finding,
            rca=rca,
        )
        return new, action

    # ------------------------------------------------------------------ whole rounds

    def plan(
        self,
        findings: Iterable[Finding],
        book: LadderBook,
        now_s: float,
        *,
        managed: Container[str] = (),
    ) -> tuple[LadderBook, list[Action]]:
        """One round: an action per target with findings, every other target settled.

        `managed` holds the workers the kernel runs through a runtime. Targets back at
        their fresh state are dropped from the book (bounded memory).
        """
        grouped: dict[str, list[Finding]] = {}
        for finding in findings:
            grouped.setdefault(finding.target, []).append(finding)
        targets: dict[str, TargetState] = {}
        for target, state in book.targets.items():
            if target not in grouped:
                settled = self.settle(state, now_s)
                if settled != _FRESH:
                    targets[target] = settled
        actions = []
        rca_pending = book.rca_pending
        for target, group in grouped.items():
            primary = max(group, key=self.first_level)
            state = book.targets.get(target, _FRESH)
            new, action = self.decide(primary, state, now_s, managed=target in managed)
            if action.kind == "pause_and_rca":
                if rca_pending:
                    action = self._idle("none", new, primary, "swarm already paused for RCA")
                else:
                    action = _with_related(action, [f for f in group if f is not primary])
                    rca_pending = True
            targets[target] = new
            actions.append(action)
        return LadderBook(targets=targets, rca_pending=rca_pending), actions

    def rca_done(self, book: LadderBook) -> tuple[LadderBook, bool]:
        """The RCA task finished: targets at level 3 go back to 0; also says whether to resume.

        Restart history is kept, so a target still over its intensity escalates again.
        """
        targets = {
            target: (
                msgspec.structs.replace(state, level=0, level_at_s=None)
                if state.level >= 3
                else state
            )
            for target, state in book.targets.items()
        }
        return LadderBook(targets=targets, rca_pending=False), self.cfg.resume_after_rca


def _with_related(action: Action, related: list[Finding]) -> Action:
    """`action` with the other findings about its target added to the RCA's evidence."""
    if action.rca is None or not related:
        return action
    payload = dict(action.rca.payload)
    payload["findings"] = [*payload["findings"], *(msgspec.to_builtins(f) for f in related)]
    rca = msgspec.structs.replace(action.rca, payload=payload)
    return msgspec.structs.replace(action, rca=rca)
