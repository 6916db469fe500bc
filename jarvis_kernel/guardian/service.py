"""The guardian service: folds ``<ns>:events`` into a `SwarmState`, judges it every tick and
carries out what the `Ladder` decides (the loop is drawn in the package docstring).

How it acts, and why so:

- **restart** (a managed worker): take its tasks back first (`Auctioneer.reclaim`: each
  requeue, attempt + 1, is one Tx guarded on the live record and removes the assignment from
  the worker's lists), then ``runtime.restart``. In that order the restarted worker finds no
  stale assignment to pick up, and whatever the old process still reports belongs to a
  superseded attempt, which the market ignores.
- **reclaim** (a foreign worker, which cannot be restarted): take its tasks back only. A dead
  foreign worker is reclaimed once; its ``worker_dead`` finding is then ignored until its
  heartbeat moves again (otherwise the ladder would reclaim it over and over and end up
  pausing the swarm for a worker that simply went away).
- The market's own dead-worker sweep stays on beside the guardian: reclaim is idempotent
  (guarded Tx), so whichever comes first takes the tasks back and the other finds none. The
  sweep is the safety net that needs no guardian; the guardian adds the restart, the ladder,
  the incidents and the events.
- **pause_and_rca**: pause through the kernel (key + ``swarm.paused``) with the RCA task's
  id in the pause's ``exemptTaskIds``, then submit it: the market announces it and workers
  take and run it while ordinary work waits. Only when a live worker has ``rca_model``: with
  none, pausing would stop the swarm with nobody to analyse it, so the guardian records the
  incident and does not pause. The pause is the record of the RCA in flight: a guardian
  started while the swarm is paused by the guardian picks the RCA up again. When the
  RCA task ends (``task.completed`` / ``task.dead`` in the stream) `Ladder.rca_done` decides
  whether to resume.
- Every action that acts writes a ``guardian.intervention`` event and an incident line to
  ``<memory>/incidents.jsonl`` (through a thread), with the evidence and the outcome.
"""

from __future__ import annotations

import itertools
import logging
import math
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from ..bus import Bus, StreamEntry
from ..clock import Clock
from ..config import Config
from ..control import paused_info
from ..errors import ProtocolError, RuntimeUnavailable
from ..market.records import TaskRecord, event_fields
from ..protocol import (
    Control,
    Event,
    FileReverted,
    GenericEvent,
    GuardianIntervention,
    Keys,
    Task,
    TaskCompleted,
    TaskDead,
    TaskStarted,
    WorkerInfo,
    decode,
    decode_event,
    encode,
)
from ..runtime.base import WorkerRuntime
from .heuristics import SWARM, Finding, detect_all
from .incidents import Incident, append_incident, incident_from_action, incident_id
from .ladder import Action, Ladder, LadderBook, RcaRequest
from .view import SwarmState
from .watcher import WorkspaceWatcher

__all__ = ["GROUP", "GuardianService", "KernelHooks"]

log = logging.getLogger("jarvis_kernel.guardian")

GROUP: Final = "guardian"
_BACKLOG: Final = 1000
_BATCH: Final = 500
# Redis rounds BLOCK to whole ms and BLOCK 0 means forever: never ask for less than this
_MIN_BLOCK_S: Final = 0.01


@dataclass(frozen=True, slots=True)
class KernelHooks:
    """What the guardian needs from the kernel (the kernel builds it; tests may too)."""

    runtime_of: Callable[[str], WorkerRuntime | None]
    """The runtime that started `worker_id` (managed), or None (foreign)."""
    reclaim: Callable[[str, str], Awaitable[int]]
    """Take back every task of a worker (attempt + 1); returns how many."""
    submit_rca: Callable[[Task], Awaitable[None]]
    """Submit the RCA task (the pause made for it exempts it)."""
    pause: Callable[[str, Sequence[str]], Awaitable[None]]
    """Pause the swarm for a reason, exempting the tasks named."""
    resume: Callable[[str], Awaitable[None]]


class GuardianService:
    """Watches the swarm and intervenes. Construct, then ``await tg.start(service.run)``."""

    def __init__(
        self,
        config: Config,
        *,
        bus: Bus,
        keys: Keys,
        clock: Clock,
        kernel_hooks: KernelHooks,
        consumer: str = "guardian-1",
    ) -> None:
        self.config, self.cfg = config, config.guardian
        self.bus, self.keys, self.clock, self.hooks = bus, keys, clock, kernel_hooks
        self.consumer = consumer
        self.memory_dir = Path(config.memory_dir)
        self.state = SwarmState.from_config(self.cfg)
        self.ladder = Ladder(self.cfg)
        self.book = LadderBook()
        self.rca_task_id: str | None = None
        self._rca_since = 0.0
        self.watcher: WorkspaceWatcher | None = None
        self._dead_after_s = self.cfg.dead_after_s or config.liveness.dead_after_s
        self._beats: dict[str, float] = {}
        self._buried: dict[str, float] = {}  # dead foreign worker -> its last beat when reclaimed
        self._busy: set[str] = set()  # targets with a restart/reclaim under way
        self._last_eval = -math.inf
        self._seq = itertools.count(1)
        self._tg: TaskGroup | None = None

    # ------------------------------------------------------------------ service
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ready once its pending events are folded back in."""
        events = self.keys.events
        await self.bus.xgroup_create(events, GROUP, start_id="0")
        await self._adopt_pause()
        while backlog := await self.bus.xreadgroup(
            events, GROUP, self.consumer, pending=True, count=_BACKLOG
        ):
            await self._fold(backlog)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if self.config.workspace.path:
                self.watcher = WorkspaceWatcher(
                    self.config.workspace,
                    self.memory_dir,
                    self.clock,
                    on_incident=self.on_workspace_incident,
                )
                await tg.start(self.watcher.run)
            tg.start_soon(self._loop)
            task_status.started()

    async def _adopt_pause(self) -> None:
        """Pick up the RCA of a pause an earlier guardian made (the kernel was restarted)."""
        info = await paused_info(self.bus, self.keys)
        if info is None or info.by != "guardian" or not info.exempt_task_ids:
            return
        self.rca_task_id = info.exempt_task_ids[0]
        age_s = max(0, self.clock.time_ms() - info.at_ms) / 1000
        self._rca_since = self.clock.monotonic() - age_s
        self.book = msgspec.structs.replace(self.book, rca_pending=True)
        log.info("guardian: swarm paused for RCA task %s; waiting for it", self.rca_task_id)

    async def _loop(self) -> None:
        tick = self.cfg.tick_s
        while True:
            if self.clock.monotonic() - self._last_eval >= tick:
                await self.evaluate()
            wait = max(_MIN_BLOCK_S, self._last_eval + tick - self.clock.monotonic())
            entries = await self.bus.xreadgroup(
                self.keys.events, GROUP, self.consumer, count=_BATCH, block_s=wait
            )
            await self._fold(entries)

    # ------------------------------------------------------------------ events
    async def _fold(self, entries: list[StreamEntry]) -> None:
        """Fold a batch into the state, then acknowledge it in one call."""
        for entry in entries:
            try:
                event = decode_event(entry.fields.get("event", b""))
            except ProtocolError:
                continue  # the market dead-letters bad events; nothing to learn here
            await self._on_event(event)
        if entries:
            await self.bus.xack(self.keys.events, GROUP, *(e.id for e in entries))

    async def _on_event(self, event: Event | GenericEvent) -> None:
        self.state.apply(event, self.clock.monotonic())
        if isinstance(event, TaskStarted) and event.task_id:
            await self._learn_timeout(event.task_id)
        elif isinstance(event, TaskCompleted | TaskDead) and self._is_rca(event.task_id):
            await self._rca_finished(event)

    def _is_rca(self, task_id: str | None) -> bool:
        return self.rca_task_id is not None and task_id == self.rca_task_id

    async def _learn_timeout(self, task_id: str) -> None:
        """The task's own ``timeoutS``, from the market's live record (if it is still live)."""
        raw = await self.bus.hget(self.keys.internal("live"), task_id)
        if not raw:
            return
        try:
            timeout = decode(raw, TaskRecord).task.timeout_s
        except ProtocolError:
            return
        if timeout is not None:
            self.state.set_timeout(task_id, timeout)

    async def _rca_finished(self, event: TaskCompleted | TaskDead) -> None:
        how = "completed" if isinstance(event, TaskCompleted) else "dead"
        await self._rca_over(how)

    async def _rca_over(self, how: str) -> bool:
        task_id, self.rca_task_id = self.rca_task_id, None
        self.book, resume = self.ladder.rca_done(self.book)
        log.info("guardian: RCA task %s %s; resume=%s", task_id, how, resume)
        if resume:
            await self.hooks.resume(f"guardian: root-cause analysis {task_id} {how}")
            # as folding swarm.resumed will: the next round must not see the old run again
            self.state.clear_failures()
        return resume

    async def _check_rca_timeout(self, now_s: float) -> None:
        """Resume a pause whose RCA task did not end in `rca_timeout_s` (and say so)."""
        timeout = self.cfg.rca_timeout_s
        if self.rca_task_id is None or timeout is None or now_s - self._rca_since < timeout:
            return
        task_id = self.rca_task_id
        resumed = await self._rca_over(f"timed out after {timeout:g}s")
        outcome = "swarm resumed" if resumed else "swarm left paused (resume_after_rca off)"
        incident = Incident(
            id=incident_id(self.clock.time_ms(), f"rca-timeout\0{task_id}"),
            at_ms=self.clock.time_ms(),
            kind="rca_timeout",
            level=3,
            action="resume" if resumed else "none",
            target=SWARM,
            evidence={"rcaTaskId": task_id, "timeoutS": timeout},
            outcome=outcome,
        )
        await self._write(incident, reason=f"RCA task {task_id} did not end in {timeout:g}s")

    # ------------------------------------------------------------------ judging
    async def evaluate(self) -> list[Action]:
        """One round: heartbeats, kinds, detectors, ladder; acts and returns the actions."""
        now_s = self.clock.monotonic()
        self._last_eval = now_s
        await self._check_rca_timeout(now_s)
        beats = dict(await self.bus.zrangebyscore(self.keys.heartbeats, -math.inf, math.inf))
        self._beats = beats
        self.state.observe_heartbeats(beats, self.clock.time_ms(), now_s)
        for worker_id in self.state.workers:
            managed = self.hooks.runtime_of(worker_id) is not None
            self.state.set_kind(worker_id, "managed" if managed else "foreign")
        findings = detect_all(self.state, now_s, self.cfg, liveness_dead_after_s=self._dead_after_s)
        findings = [f for f in findings if not self._settled(f)]
        self.book, actions = self.ladder.plan(
            findings, self.book, now_s, managed=self.state.managed_workers()
        )
        for action in actions:
            if action.acts:
                await self._act(action)
        return actions

    def _settled(self, finding: Finding) -> bool:
        """A dead foreign worker already reclaimed, whose heartbeat has not moved since."""
        if finding.kind != "worker_dead" or finding.target not in self._buried:
            return False
        if self._beats.get(finding.target) == self._buried[finding.target]:
            return True
        del self._buried[finding.target]
        return False

    # ------------------------------------------------------------------ acting
    async def _act(self, action: Action) -> None:
        if action.kind == "dump":
            await self._record(action, await self._dump(action.target, action.via))
        elif action.kind in ("restart", "reclaim"):
            if action.target in self._busy:
                log.info("guardian: %s of %s already under way", action.kind, action.target)
                return
            assert self._tg is not None
            self._busy.add(action.target)
            self._tg.start_soon(self._take_back, action)
        elif action.kind == "pause_and_rca" and action.rca is not None:
            await self._record(action, await self._pause_and_rca(action.reason, action.rca))

    async def _dump(self, worker_id: str, via: str | None) -> str:
        runtime = self.hooks.runtime_of(worker_id) if via == "signal" else None
        if runtime is None:
            command = encode(Control(command="dump"))
            receivers = await self.bus.publish(self.keys.control(worker_id), command)
            return f"dump requested on {self.keys.control(worker_id)} ({receivers} listening)"
        try:
            await runtime.signal(worker_id, signal.SIGUSR1)
        except (RuntimeUnavailable, OSError) as exc:
            return f"dump failed: {exc}"
        return "dump requested (SIGUSR1)"

    async def _take_back(self, action: Action) -> None:
        """Restart/reclaim after the ladder's backoff: tasks back first, then the restart."""
        worker_id = action.target
        try:
            if action.delay_s > 0:
                await self.clock.sleep(action.delay_s)
            taken = await self.hooks.reclaim(worker_id, f"guardian: {action.reason}")
            self.state.clear_failures(worker_id)  # acted on: a new run must build up again
            outcome = f"{taken} task(s) taken back"
            if action.kind == "restart":
                outcome += "; " + await self._restart(worker_id)
            elif action.finding is not None and action.finding.kind == "worker_dead":
                self._buried[worker_id] = self._beats.get(worker_id, 0.0)
            await self._record(action, outcome)
        finally:
            self._busy.discard(worker_id)

    async def _restart(self, worker_id: str) -> str:
        runtime = self.hooks.runtime_of(worker_id)
        if runtime is None:
            return "not restarted: no runtime owns it"
        try:
            await runtime.restart(worker_id)
        except RuntimeUnavailable as exc:
            return f"restart failed: {exc}"
        return "restarted"

    async def _pause_and_rca(self, reason: str, rca: RcaRequest) -> str:
        model = rca.required_model
        if not await self._model_alive(model):
            # The target stays at level 3 (no further action until its quiet period resets
            # it), so this is said once, not at every tick; another RCA may be asked for.
            self.book = msgspec.structs.replace(self.book, rca_pending=False)
            self.state.clear_failures()
            return f"not paused: no live worker has model {model} to analyse it"
        task_id = f"rca-{self.clock.time_ms()}-{next(self._seq)}"
        await self.hooks.pause(f"guardian: {reason}"[:500], (task_id,))
        self.rca_task_id, self._rca_since = task_id, self.clock.monotonic()
        await self.hooks.submit_rca(rca.to_task(task_id))
        return f"swarm paused; RCA task {task_id} submitted (model {model})"

    async def _model_alive(self, model: str) -> bool:
        """Does a worker with a fresh heartbeat run `model`?"""
        since = self.clock.time_ms() - round(self._dead_after_s * 1000)
        alive = {w for w, _ in await self.bus.zrangebyscore(self.keys.heartbeats, since, math.inf)}
        for worker_id, raw in (await self.bus.hgetall(self.keys.workers)).items():
            if worker_id in alive:
                try:
                    if decode(raw, WorkerInfo).model == model:
                        return True
                except ProtocolError:
                    continue
        return False

    async def _record(self, action: Action, outcome: str) -> None:
        incident = incident_from_action(action, self.clock.time_ms(), outcome)
        finding = action.finding
        await self._write(
            incident,
            reason=action.reason,
            worker_id=None if action.target == SWARM else action.target,
            task_id=finding.task_id if finding is not None else None,
        )

    async def _write(
        self,
        incident: Incident,
        *,
        reason: str,
        worker_id: str | None = None,
        task_id: str | None = None,
        extra: list[Event] | None = None,
    ) -> None:
        """The incident line (through a thread) and the events that go with it."""
        log.warning(
            "guardian: level %d %s on %s: %s -> %s",
            incident.level,
            incident.action,
            incident.target,
            reason,
            incident.outcome,
        )
        await anyio.to_thread.run_sync(append_incident, self.memory_dir, incident)
        intervention = GuardianIntervention(
            at_ms=incident.at_ms,
            worker_id=worker_id,
            task_id=task_id,
            level=incident.level,
            action=incident.action,
            reason=reason[:1000],
            incident_id=incident.id,
        )
        for event in [*(extra or []), intervention]:
            await self.bus.xadd(
                self.keys.events, event_fields(event), maxlen=self.config.bus.events_maxlen
            )

    # ------------------------------------------------------------------ workspace
    async def on_workspace_incident(self, record: Mapping[str, Any]) -> None:
        """The watcher reverted a burst: say so in events; escalate when still broken."""
        at_ms, inc_id = self.clock.time_ms(), str(record.get("id", ""))
        outcome = str(record.get("outcome", ""))
        qdir = str(record.get("quarantineDir", ""))
        quarantined = set(record.get("quarantined", []))
        paths = sorted(set(record.get("reverted", [])) | quarantined)
        reverted: list[Event] = [
            FileReverted(
                at_ms=at_ms,
                path=path,
                incident_id=inc_id,
                quarantine_path=str(Path(qdir) / path) if path in quarantined else "",
            )
            for path in paths
        ]
        for event in reverted:
            await self.bus.xadd(
                self.keys.events, event_fields(event), maxlen=self.config.bus.events_maxlen
            )
        reason = f"build broken by {len(paths)} changed file(s): {outcome}"
        intervention = GuardianIntervention(
            at_ms=at_ms, level=2, action="revert", reason=reason, incident_id=inc_id
        )
        await self.bus.xadd(
            self.keys.events, event_fields(intervention), maxlen=self.config.bus.events_maxlen
        )
        if outcome.endswith("_escalated"):
            await self._escalate_build(record)

    async def _escalate_build(self, record: Mapping[str, Any]) -> None:
        if self.book.rca_pending:
            return  # one RCA at a time: the pending one will see this too
        evidence = dict(record.get("evidence", {}))
        target = str(record.get("target", "workspace"))
        rca = RcaRequest(
            required_model=self.cfg.rca_model,
            description=(
                "Root-cause analysis: the guardian reverted the changes that broke the build "
                f"of {target}, and the build is still broken. Find the cause in the build "
                "output, say what to change, and whether the swarm can resume."
            ),
            payload={"kind": "guardian.rca", "target": target, "revert": dict(record)},
        )
        self.book = msgspec.structs.replace(self.book, rca_pending=True)
        reason = f"build still broken after revert {record.get('id', '')}"
        outcome = await self._pause_and_rca(reason, rca)
        at_ms = self.clock.time_ms()
        incident = Incident(
            id=f"{record.get('id', 'inc')}-rca",
            at_ms=at_ms,
            kind="build_broken",
            level=3,
            action="pause_and_rca",
            target=target,
            evidence={
                "buildOutputTail": evidence.get("buildOutputTail", ""),
                "afterOutputTail": evidence.get("afterOutputTail", ""),
                "revertIncident": record.get("id", ""),
            },
            outcome=outcome,
        )
        await self._write(incident, reason=reason)
