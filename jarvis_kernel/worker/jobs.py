"""One task in a worker's hands, from ``processing:<id>`` to its last event.

`JobRunner.accept` is called, without awaiting, with every raw element the worker moved into
its processing list; it decides (an invalid task is dead-lettered, a duplicate of a task
already in hand is dropped) and starts the job. A job then waits while the worker is paused
or the swarm's pause does not exempt its task, writes ``task.started``, runs the executor
under the task's ``timeoutS`` (reporting ``task.progress``), and writes exactly one of
``task.completed`` / ``task.failed`` in the same atomic change as the ``LREM`` from the
processing list. Last, the worker learns from the outcome and republishes its `WorkerInfo`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio.abc

from ..bus.base import Tx
from ..clock import run_with_timeout
from ..errors import ProtocolError
from ..market.scoring import adequacy, model_spec, task_fit
from ..protocol import (
    Assignment,
    Event,
    MessageRejected,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    dead_letter,
    decode,
    encode,
)
from .executors import Completed, ExecutionContext, Failed, Outcome
from .memory import save_memory

if TYPE_CHECKING:
    from .agent import WorkerAgent

__all__ = ["Job", "JobRunner"]

log = logging.getLogger(__name__)

Release = Callable[[], None]


class Job:
    """A task in hand: taken into the processing list, not finished yet."""

    __slots__ = ("raw", "started_at", "taken_at", "task")

    def __init__(self, task: Assignment, raw: bytes, taken_at: float) -> None:
        self.task = task
        self.raw = raw
        self.taken_at = taken_at
        self.started_at: float | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.task.task_id, self.task.attempt)

    def describe(self, now: float) -> dict[str, Any]:
        since = self.taken_at if self.started_at is None else self.started_at
        return {
            "taskId": self.task.task_id,
            "attempt": self.task.attempt,
            "phase": "waiting" if self.started_at is None else "running",
            "forS": round(max(0.0, now - since), 3),
        }


class JobRunner:
    """Runs the jobs of one `WorkerAgent`."""

    def __init__(self, agent: WorkerAgent) -> None:
        self._agent = agent

    def accept(self, raw: bytes, jobs: anyio.abc.TaskGroup, *, release: Release | None) -> None:
        """Start handling `raw`, just moved into the processing list. Never awaits."""
        agent = self._agent
        try:
            task = decode(raw, Assignment)
        except ProtocolError as exc:
            jobs.start_soon(self._reject, raw, str(exc), release)
            return
        job = Job(task, raw, agent.clock.monotonic())
        if job.key in agent.jobs:
            jobs.start_soon(self._drop_duplicate, job, release)
            return
        agent.jobs[job.key] = job
        jobs.start_soon(self._run, job, release)

    # ------------------------------------------------------------------ not runnable

    def _processing(self) -> str:
        return self._agent.keys.processing(self._agent.worker_id)

    async def _reject(self, raw: bytes, error: str, release: Release | None) -> None:
        agent = self._agent
        try:
            now = agent.clock.time_ms()
            source = self._processing()
            log.warning("worker %s: invalid task dead-lettered: %s", agent.worker_id, error)
            tx = Tx().lpush(agent.keys.deadletter, encode(dead_letter(source, error, raw, now)))
            tx.lrem(source, 1, raw)
            event = MessageRejected(
                at_ms=now, worker_id=agent.worker_id, source=source, error=error[:1000]
            )
            await agent.bus.execute(agent.event_tx(tx, event))
        finally:
            _done(agent, release)

    async def _drop_duplicate(self, job: Job, release: Release | None) -> None:
        agent = self._agent
        try:
            log.info("worker %s: duplicate of %s dropped", agent.worker_id, job.key)
            await agent.bus.lrem(self._processing(), 1, job.raw)
        finally:
            _done(agent, release)

    # ------------------------------------------------------------------ running

    async def _run(self, job: Job, release: Release | None) -> None:
        agent = self._agent
        try:
            if not await self._ready(job.task.task_id):
                return  # stopped while paused: it stays in processing, for the kernel
            job.started_at = agent.clock.monotonic()
            await agent.emit(TaskStarted(**self._ids(job)))
            outcome = await self._execute(job)
            # Learned before the outcome is written (no await in between: no bid sees the
            # memory half-way), so that the end event can say the weights it bids from now.
            self._learn(job, outcome)
            await self._finish(job, outcome)
            # The slot is free from the moment the outcome is written: the kernel counts it
            # free then too, so a bid made while saving must not refuse for want of room.
            agent.jobs.pop(job.key, None)
            _done(agent, release)
            release = None
            await self._save(job)
        finally:
            agent.jobs.pop(job.key, None)
            _done(agent, release)

    async def _ready(self, task_id: str) -> bool:
        """Wait until the worker is not paused and the swarm's pause (read fresh) lets
        `task_id` run: none, or one that exempts it."""
        agent = self._agent
        while await agent.wait_until(lambda: agent.may_run(task_id)):
            await agent.refresh_pause()
            if agent.may_run(task_id):
                return True
        return False

    def _ids(self, job: Job) -> dict[str, Any]:
        agent = self._agent
        return {
            "at_ms": agent.clock.time_ms(),
            "task_id": job.task.task_id,
            "worker_id": agent.worker_id,
            "attempt": job.task.attempt,
        }

    async def _execute(self, job: Job) -> Outcome:
        agent, task = self._agent, job.task

        async def progress(token_usage: int, note: str) -> None:
            await agent.emit(TaskProgress(**self._ids(job), token_usage=token_usage, note=note))

        fit = task_fit(
            task, expertise=agent.memory.expertise, model=agent.spec.model, config=agent.scoring
        )
        ctx = ExecutionContext(
            worker_id=agent.worker_id, clock=agent.clock, fit=fit, progress=progress
        )
        try:
            done, outcome = await run_with_timeout(
                agent.clock, task.timeout_s, lambda: agent.executor.run(task, ctx)
            )
        except Exception as exc:  # an executor's bug is the task's failure, not the worker's
            log.exception("worker %s: executor raised on %s", agent.worker_id, task.task_id)
            return Failed(error_key="executor.error", error=f"{type(exc).__name__}: {exc}")
        if not done or outcome is None:
            return Failed(
                error_key="executor.timeout", error=f"no result within {task.timeout_s} s"
            )
        return outcome

    def _terminal_event(self, job: Job, outcome: Outcome) -> Event:
        weights = self._weights_now(job)
        if isinstance(outcome, Completed):
            try:
                return TaskCompleted(
                    **self._ids(job),
                    result=outcome.result,
                    token_usage=outcome.token_usage,
                    weights=weights,
                )
            except (ValueError, TypeError) as exc:
                outcome = Failed(error_key="result.invalid", error=str(exc))
        return TaskFailed(
            **self._ids(job), error_key=outcome.error_key, error=outcome.error, weights=weights
        )

    def _weights_now(self, job: Job) -> dict[str, float] | None:
        """What the worker bids from for the task's skills now that it learned from it;
        None while it holds another task (it will learn from that one too)."""
        agent = self._agent
        if any(key != job.key for key in agent.jobs):
            return None
        reading = agent.memory.bid_expertise()
        return {s: reading.get(s, 0.0) for s in job.task.required_skills}

    async def _finish(self, job: Job, outcome: Outcome) -> None:
        """The one terminal event and the LREM, all or nothing."""
        agent = self._agent
        event = self._terminal_event(job, outcome)
        if isinstance(event, TaskFailed):
            agent.note_error(job.task.task_id, event.error_key, event.error)
        tx = agent.event_tx(Tx(), event).lrem(self._processing(), 1, job.raw)
        await agent.bus.execute(tx)

    def _learn(self, job: Job, outcome: Outcome) -> None:
        agent, task = self._agent, job.task
        # a model too weak for the task explains part of a failure: the skills take less blame
        able = adequacy(task.complexity, model_spec(agent.spec.model, agent.scoring).capability)
        agent.memory.record(
            skills=task.required_skills,
            files=task.files,
            success=isinstance(outcome, Completed),
            now_ms=agent.clock.time_ms(),
            adequacy=able,
        )

    async def _save(self, job: Job) -> None:
        """Keep what it learned (`.memory/workers/<id>.json`) and publish it."""
        agent, task = self._agent, job.task
        try:
            await save_memory(agent.memory_dir, agent.memory)
        except OSError as exc:
            log.warning("worker %s: cannot save its memory: %s", agent.worker_id, exc)
            agent.note_error(task.task_id, "memory.write", str(exc))
        await agent.publish_info()


def _done(agent: WorkerAgent, release: Release | None) -> None:
    if release is not None:
        release()
    agent.notify()
