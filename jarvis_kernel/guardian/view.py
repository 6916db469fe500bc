"""The guardian's own view of the swarm, folded from events (pure: no I/O, no clock).

`SwarmState.apply(event, now_s)` folds one event of ``<ns>:events``; `observe_heartbeats`
folds a read of the heartbeats zset. `now_s` is the caller's `Clock.monotonic()` when it
saw the event, not the event's ``atMs``: a backlog read after a restart therefore counts as
fresh progress (no false stall), and wall-clock jumps never make a stall.

Tokens: ``task.progress`` carries the tokens used since the previous progress event;
``task.completed`` the task's total. A task's total is the larger of the sum seen and the
total reported.

Memory is bounded: at most `max_tasks` tasks (oldest evicted), `max_workers` workers
(departed first), and per worker `history` per-task totals, `failure_cap` error keys and
usage buckets covering `usage_window_s`.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..config import GuardianConfig
from ..protocol import (
    Event,
    GenericEvent,
    SwarmResumed,
    TaskCompleted,
    TaskDead,
    TaskFailed,
    TaskProgress,
    TaskRequeued,
    TaskStarted,
    WorkerStarted,
    WorkerStopped,
)

__all__ = ["SwarmFailure", "SwarmState", "TaskView", "WorkerKind", "WorkerView"]

WorkerKind = Literal["managed", "foreign"]
"""managed: started by the kernel through a runtime (SIGUSR1, restart); foreign: not."""

_USAGE_BUCKETS = 60


@dataclass(slots=True)
class TaskView:
    """A task attempt in progress, as the guardian last saw it."""

    task_id: str
    worker_id: str | None
    attempt: int
    started_at_s: float
    last_progress_at_s: float
    timeout_s: float | None = None
    tokens: int = 0


@dataclass(slots=True)
class SwarmFailure:
    """One ``task.failed`` in the swarm-wide failure sequence."""

    error_key: str
    worker_id: str | None
    task_id: str | None


@dataclass(slots=True)
class WorkerView:
    """One worker: liveness, recent failures and token usage."""

    worker_id: str
    history_cap: int
    failure_cap: int
    kind: WorkerKind = "foreign"
    last_heartbeat_s: float | None = None
    departed: bool = False
    # error keys of the current run of failures (a completion or a restart clears it)
    failures: deque[str] = field(init=False)
    # per-task token totals of completed tasks, newest last: the spike baseline
    token_history: deque[int] = field(init=False)
    # (bucket index, tokens): usage over the budget window
    usage: deque[list[int]] = field(init=False)
    tasks: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.failures = deque(maxlen=self.failure_cap)
        self.token_history = deque(maxlen=self.history_cap)
        self.usage = deque(maxlen=_USAGE_BUCKETS + 1)


class SwarmState:
    """Every task in progress and every worker, as the guardian's detectors need them."""

    def __init__(
        self,
        *,
        history: int = 50,
        failure_cap: int = 64,
        usage_window_s: float = 3600.0,
        max_tasks: int = 10_000,
        max_workers: int = 4096,
    ) -> None:
        self.tasks: OrderedDict[str, TaskView] = OrderedDict()
        self.workers: dict[str, WorkerView] = {}
        self.failures: deque[SwarmFailure] = deque(maxlen=failure_cap)
        self._history = history
        self._failure_cap = failure_cap
        self._bucket_s = usage_window_s / _USAGE_BUCKETS
        self._usage_window_s = usage_window_s
        self._max_tasks = max_tasks
        self._max_workers = max_workers
        self._timeouts: OrderedDict[str, float] = OrderedDict()

    @classmethod
    def from_config(cls, cfg: GuardianConfig) -> SwarmState:
        failure_cap = max(64, cfg.spiral_count * 4)
        return cls(
            history=cfg.spike_history,
            failure_cap=failure_cap,
            usage_window_s=cfg.worker_budget_window_s,
        )

    # ------------------------------------------------------------------ fed by the service

    def worker(self, worker_id: str) -> WorkerView:
        """The view of `worker_id`, created on first sight."""
        view = self.workers.get(worker_id)
        if view is None:
            if len(self.workers) >= self._max_workers:
                self._evict_worker()
            view = WorkerView(worker_id, history_cap=self._history, failure_cap=self._failure_cap)
            self.workers[worker_id] = view
        return view

    def set_kind(self, worker_id: str, kind: WorkerKind) -> None:
        """Say whether the kernel runs `worker_id` through a runtime (managed) or not."""
        self.worker(worker_id).kind = kind

    def managed_workers(self) -> set[str]:
        """Workers marked managed (`Ladder.plan`'s ``managed``)."""
        return {w for w, view in self.workers.items() if view.kind == "managed"}

    def set_timeout(self, task_id: str, timeout_s: float | None) -> None:
        """Record a task's own ``timeoutS`` (from its Task), before or after it started."""
        task = self.tasks.get(task_id)
        if task is not None:
            task.timeout_s = timeout_s
        if timeout_s is None:
            self._timeouts.pop(task_id, None)
            return
        self._timeouts[task_id] = timeout_s
        while len(self._timeouts) > self._max_tasks:
            self._timeouts.popitem(last=False)

    def observe_heartbeats(
        self, beats: Mapping[str, float], now_ms: int, now_s: float, *, complete: bool = True
    ) -> None:
        """Fold a read of the heartbeats zset (worker -> epoch ms of its last beat).

        Ages are taken on the wall clock (``now_ms - beat``) and placed on the monotonic
        clock. With `complete` (the whole zset was read) a known worker missing from it has
        left cleanly (protocol: it removes itself) and is not judged any more.
        """
        for worker_id, beat_ms in beats.items():
            view = self.worker(worker_id)
            view.last_heartbeat_s = now_s - max(0.0, now_ms - beat_ms) / 1000.0
            view.departed = False
        if complete:
            for worker_id, view in self.workers.items():
                if worker_id not in beats:
                    view.departed = True

    def clear_failures(self, worker_id: str | None = None) -> None:
        """Forget failure runs: one worker's, or (None) the swarm's and every worker's."""
        if worker_id is not None:
            if worker_id in self.workers:
                self.workers[worker_id].failures.clear()
            return
        self.failures.clear()
        for view in self.workers.values():
            view.failures.clear()

    def worker_usage(self, worker_id: str, now_s: float) -> int:
        """Tokens `worker_id` used over the last `usage_window_s` (to one bucket's width)."""
        view = self.workers.get(worker_id)
        if view is None:
            return 0
        oldest = math.floor((now_s - self._usage_window_s) / self._bucket_s)
        return sum(tokens for index, tokens in view.usage if index > oldest)

    # ------------------------------------------------------------------ events

    def apply(self, event: Event | GenericEvent, now_s: float) -> None:
        """Fold one event seen at `now_s`; events the guardian does not use are ignored."""
        if isinstance(event, TaskStarted):
            self._started(event, now_s)
        elif isinstance(event, TaskProgress):
            self._progress(event, now_s)
        elif isinstance(event, TaskCompleted):
            self._completed(event, now_s)
        elif isinstance(event, TaskFailed):
            self._failed(event)
        elif isinstance(event, TaskRequeued | TaskDead):
            self._drop_task(event.task_id, getattr(event, "attempt", None))
        elif isinstance(event, WorkerStarted) and event.worker_id:
            view = self.worker(event.worker_id)
            view.departed = False
            view.last_heartbeat_s = now_s
            view.failures.clear()
        elif isinstance(event, WorkerStopped) and event.worker_id:
            view = self.worker(event.worker_id)
            view.departed = True
            for task_id in list(view.tasks):
                self._drop_task(task_id, None)
        elif isinstance(event, SwarmResumed):
            self.clear_failures()

    def _started(self, event: TaskStarted, now_s: float) -> None:
        if event.task_id is None:
            return
        old = self.tasks.get(event.task_id)
        if old is not None and old.attempt > event.attempt:
            return  # a late event of a superseded attempt
        self._drop_task(event.task_id, None)
        self._track(event.task_id, event.worker_id, event.attempt, now_s)

    def _track(self, task_id: str, worker_id: str | None, attempt: int, now_s: float) -> TaskView:
        timeout = self._timeouts.get(task_id)
        task = TaskView(task_id, worker_id, attempt, now_s, now_s, timeout)
        self.tasks[task_id] = task
        if worker_id is not None:
            self.worker(worker_id).tasks.add(task_id)
        while len(self.tasks) > self._max_tasks:
            oldest = next(iter(self.tasks))
            self._drop_task(oldest, None)
        return task

    def _current(self, task_id: str | None, attempt: int) -> TaskView | None:
        if task_id is None:
            return None
        task = self.tasks.get(task_id)
        if task is None or task.attempt != attempt:
            return None
        return task

    def _progress(self, event: TaskProgress, now_s: float) -> None:
        task = self._current(event.task_id, event.attempt)
        if task is None:
            if event.task_id is None or event.task_id in self.tasks:
                return  # another attempt's event
            # first sight mid-task (the guardian started late): track it from now
            task = self._track(event.task_id, event.worker_id, event.attempt, now_s)
        task.last_progress_at_s = now_s
        task.tokens += event.token_usage
        self._add_usage(task.worker_id, event.token_usage, now_s)

    def _completed(self, event: TaskCompleted, now_s: float) -> None:
        task = self._current(event.task_id, event.attempt)
        seen = task.tokens if task is not None else 0
        total = max(seen, event.token_usage)
        worker_id = task.worker_id if task is not None else event.worker_id
        self._add_usage(worker_id, total - seen, now_s)
        if worker_id is not None:
            view = self.worker(worker_id)
            view.token_history.append(total)
            view.failures.clear()
        if task is not None:
            self._drop_task(task.task_id, None)

    def _failed(self, event: TaskFailed) -> None:
        self.failures.append(SwarmFailure(event.error_key, event.worker_id, event.task_id))
        if event.worker_id is not None:
            self.worker(event.worker_id).failures.append(event.error_key)
        self._drop_task(event.task_id, event.attempt)

    def _drop_task(self, task_id: str | None, attempt: int | None) -> None:
        if task_id is None:
            return
        task = self.tasks.get(task_id)
        if task is None or (attempt is not None and attempt < task.attempt):
            return
        del self.tasks[task_id]
        self._timeouts.pop(task_id, None)
        if task.worker_id is not None and task.worker_id in self.workers:
            self.workers[task.worker_id].tasks.discard(task_id)

    def _add_usage(self, worker_id: str | None, tokens: int, now_s: float) -> None:
        if worker_id is None or tokens <= 0:
            return
        usage = self.worker(worker_id).usage
        index = math.floor(now_s / self._bucket_s)
        if usage and usage[-1][0] == index:
            usage[-1][1] += tokens
        else:
            usage.append([index, tokens])

    def _evict_worker(self) -> None:
        idle = [w for w, v in self.workers.items() if v.departed and not v.tasks]
        victim = idle[0] if idle else next(iter(self.workers))
        del self.workers[victim]
