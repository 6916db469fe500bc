"""`WorkerRuntime`: how the kernel starts, stops and inspects the workers it owns.

Every runtime (``inline``: tasks in the kernel; ``process``: one subprocess per worker;
``docker`` later) is an async context manager that owns its workers: leaving it stops every
one still running (gracefully, then by force). Within it::

    await runtime.start(spec)                 # returns once the worker is up
    await runtime.signal(worker_id, SIGUSR1)  # a state dump
    await runtime.stop(worker_id, grace_s=5)  # drain, then force after grace_s
    await runtime.kill(worker_id)             # no drain: as a crash would
    await runtime.restart(worker_id)          # stop + start, restarts + 1
    runtime.status(worker_id)                 # -> RuntimeStatus (a value, never raises)

Asking about a worker the runtime never started gives ``state="unknown"``; starting one
that is running raises `RuntimeUnavailable`. A worker that exits is an outcome (its status),
not an exception.
"""

from __future__ import annotations

import collections
import logging
import time
from contextlib import AbstractAsyncContextManager
from typing import Generic, Literal, Protocol, TypeVar

import anyio
import msgspec

from ..config import WorkerConfig
from ..errors import RuntimeUnavailable

__all__ = [
    "HandleRuntime",
    "RuntimeState",
    "RuntimeStatus",
    "WorkerHandle",
    "WorkerRuntime",
    "first_of",
    "stop_all",
]

log = logging.getLogger(__name__)

RuntimeState = Literal["starting", "running", "exited", "unknown"]


class RuntimeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What a runtime knows of one worker.

    `ident` is the pid, container id or (inline) task name; `exit_code` is set once exited
    (0 clean, negative: killed by that signal, as `subprocess` reports it); `started_at` is
    ``time.time()`` of the last start; `log_tail` the last lines the worker printed.
    """

    worker_id: str
    state: RuntimeState
    ident: str | None = None
    exit_code: int | None = None
    started_at: float | None = None
    restarts: int = 0
    error: str | None = None
    log_tail: tuple[str, ...] = ()


class WorkerRuntime(AbstractAsyncContextManager["WorkerRuntime"], Protocol):
    """Starts and stops workers. See the module docstring."""

    async def start(self, spec: WorkerConfig) -> None:
        """Start the worker `spec` describes; return once it is registered (or has started)."""
        ...

    async def stop(self, worker_id: str, *, grace_s: float) -> None:
        """Ask the worker to drain and exit; force it after `grace_s` seconds."""
        ...

    async def kill(self, worker_id: str) -> None:
        """End the worker at once, without a drain."""
        ...

    async def signal(self, worker_id: str, signum: int) -> None:
        """Deliver `signum` (SIGUSR1: dump state; SIGTERM/SIGINT: drain; SIGKILL: kill)."""
        ...

    async def restart(self, worker_id: str) -> None:
        """Stop (with the runtime's default grace) and start again with the same spec."""
        ...

    def status(self, worker_id: str) -> RuntimeStatus: ...

    def workers(self) -> list[str]:
        """Ids of the workers this runtime has started and that are still running."""
        ...


async def stop_all(runtime: WorkerRuntime, *, grace_s: float, margin_s: float = 1.0) -> None:
    """Stop every worker of `runtime` at once, each with `grace_s` to drain.

    Shielded and bounded by ``grace_s + margin_s``: it runs on the way out, also when the
    caller is being cancelled.
    """

    async def stop(worker_id: str) -> None:
        try:
            await runtime.stop(worker_id, grace_s=grace_s)
        except RuntimeUnavailable as exc:  # e.g. the Docker daemon went away: say so, go on
            log.warning("could not stop worker %s: %s", worker_id, exc)

    with anyio.move_on_after(grace_s + margin_s, shield=True):
        async with anyio.create_task_group() as tg:
            for worker_id in runtime.workers():
                tg.start_soon(stop, worker_id)


async def first_of(*events: anyio.Event, timeout_s: float) -> None:
    """Return once any of `events` is set, or after `timeout_s` (check which, after)."""
    with anyio.move_on_after(timeout_s):
        async with anyio.create_task_group() as tg:

            async def wait(event: anyio.Event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            for event in events:
                tg.start_soon(wait, event)


class WorkerHandle:
    """What a runtime that runs workers outside the kernel knows of one of them.

    `ready` is set when the worker says it is registered, `done` when it has exited;
    `lines` keeps the last lines it printed.
    """

    def __init__(self, spec: WorkerConfig, restarts: int) -> None:
        self.spec = spec
        self.restarts = restarts
        self.started_at: float | None = time.time()
        self.ready = anyio.Event()
        self.done = anyio.Event()
        self.exit_code: int | None = None
        self.error: str | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=200)

    @property
    def state(self) -> RuntimeState:
        if self.done.is_set():
            return "exited"
        return "running" if self.ready.is_set() else "starting"

    @property
    def ident(self) -> str:
        """The pid or container id."""
        raise NotImplementedError

    def status(self) -> RuntimeStatus:
        return RuntimeStatus(
            worker_id=self.spec.id,
            state=self.state,
            ident=self.ident,
            exit_code=self.exit_code if self.done.is_set() else None,
            started_at=self.started_at,
            restarts=self.restarts,
            error=self.error,
            log_tail=tuple(self.lines),
        )


H = TypeVar("H", bound=WorkerHandle)


class HandleRuntime(Generic[H]):
    """The bookkeeping shared by the process and Docker runtimes: one handle per worker."""

    _handles: dict[str, H]
    _default_grace_s: float

    async def start(self, spec: WorkerConfig) -> None:
        raise NotImplementedError

    async def stop(self, worker_id: str, *, grace_s: float) -> None:
        raise NotImplementedError

    async def restart(self, worker_id: str) -> None:
        handle = self._handles.get(worker_id)
        if handle is None:
            raise RuntimeUnavailable(f"worker {worker_id!r} was never started here")
        await self.stop(worker_id, grace_s=self._default_grace_s)
        handle.restarts += 1
        await self.start(handle.spec)

    def status(self, worker_id: str) -> RuntimeStatus:
        handle = self._handles.get(worker_id)
        if handle is None:
            return RuntimeStatus(worker_id=worker_id, state="unknown")
        return handle.status()

    def workers(self) -> list[str]:
        return sorted(w for w, h in self._handles.items() if not h.done.is_set())
