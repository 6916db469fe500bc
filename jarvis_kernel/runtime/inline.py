"""`InlineRuntime`: workers as tasks in the kernel's own process, on its bus.

Each `WorkerAgent` runs in the runtime's task group inside its own cancel scope, so one can
be stopped (drain: `WorkerAgent.request_stop`), killed (the scope cancelled: no drain, no
deregistration, as a crash) or restarted alone. A worker that raises is an exited worker
(exit code 1, the error kept in its status), not a crash of the kernel. Works with any
`Bus`, including the in-memory one. Grace periods are real seconds (``anyio``), as for the
other runtimes.
"""

from __future__ import annotations

import logging
import signal as signals
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import anyio
import anyio.abc

from ..bus.base import Bus
from ..clock import Clock
from ..config import LivenessConfig, ScoringConfig, WorkerConfig
from ..errors import RuntimeUnavailable
from ..protocol import Keys
from ..worker.agent import WorkerAgent
from ..worker.executors import Executor, make_executor
from .base import RuntimeState, RuntimeStatus, stop_all

__all__ = ["InlineRuntime"]

log = logging.getLogger(__name__)

_KILLED = -int(signals.SIGKILL)


class _Slot:
    def __init__(self, spec: WorkerConfig, agent: WorkerAgent, restarts: int) -> None:
        self.spec = spec
        self.agent = agent
        self.restarts = restarts
        self.state: RuntimeState = "starting"
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.exit_code: int | None = None
        self.error: str | None = None
        self.started_at = time.time()


class InlineRuntime:
    """Runs `WorkerAgent`s as tasks. See the module docstring."""

    def __init__(
        self,
        *,
        bus: Bus,
        keys: Keys,
        clock: Clock,
        scoring: ScoringConfig,
        liveness: LivenessConfig,
        memory_dir: Path | None,
        events_maxlen: int = 100_000,
        default_grace_s: float = 5.0,
        poll_s: float = 1.0,
        executor_factory: Callable[[WorkerConfig], Executor] = make_executor,
    ) -> None:
        self._bus = bus
        self._keys = keys
        self._clock = clock
        self._scoring = scoring
        self._liveness = liveness
        self._memory_dir = memory_dir
        self._events_maxlen = events_maxlen
        self._default_grace_s = default_grace_s
        self._poll_s = poll_s
        self._executor_factory = executor_factory
        self._slots: dict[str, _Slot] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    # ------------------------------------------------------------------ context

    async def __aenter__(self) -> InlineRuntime:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None, "InlineRuntime exited without being entered"
        await stop_all(self, grace_s=self._default_grace_s)
        tg.cancel_scope.cancel()
        return await tg.__aexit__(et, exc, tb)

    # ------------------------------------------------------------------ WorkerRuntime

    def agent(self, worker_id: str) -> WorkerAgent | None:
        """The agent of a worker this runtime started (for in-process callers and tests)."""
        slot = self._slots.get(worker_id)
        return None if slot is None else slot.agent

    async def start(self, spec: WorkerConfig) -> None:
        if self._tg is None:
            raise RuntimeUnavailable("InlineRuntime is not entered (use `async with`)")
        old = self._slots.get(spec.id)
        if old is not None and old.state in ("starting", "running"):
            raise RuntimeUnavailable(f"worker {spec.id!r} is already running")
        agent = WorkerAgent(
            spec,
            bus=self._bus,
            keys=self._keys,
            clock=self._clock,
            scoring=self._scoring,
            liveness=self._liveness,
            memory_dir=self._memory_dir,
            executor=self._executor_factory(spec),
            events_maxlen=self._events_maxlen,
            poll_s=self._poll_s,
            take=spec.take,
        )
        slot = _Slot(spec, agent, restarts=0 if old is None else old.restarts)
        self._slots[spec.id] = slot
        try:
            await self._tg.start(self._supervise, slot)
        except Exception as exc:
            slot.state, slot.exit_code, slot.error = "exited", 1, repr(exc)
            raise RuntimeUnavailable(f"worker {spec.id!r} failed to start: {exc}") from exc
        if slot.state == "starting":
            slot.state = "running"

    async def _supervise(
        self, slot: _Slot, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            with slot.scope:
                await slot.agent.run(task_status=task_status)
                slot.exit_code = 0
            if slot.scope.cancelled_caught:
                slot.exit_code = _KILLED
        except Exception as exc:
            if not slot.agent.registered.is_set():
                raise  # to `start`, which reports it
            log.exception("inline worker %s crashed", slot.spec.id)
            slot.exit_code, slot.error = 1, repr(exc)
        finally:
            slot.state = "exited"
            slot.done.set()

    async def stop(self, worker_id: str, *, grace_s: float) -> None:
        slot = self._slots.get(worker_id)
        if slot is None or slot.done.is_set():
            return
        slot.agent.request_stop("stopped by the runtime")
        with anyio.move_on_after(grace_s):
            await slot.done.wait()
        if not slot.done.is_set():
            log.warning("inline worker %s did not drain within %s s: killed", worker_id, grace_s)
            await self.kill(worker_id)

    async def kill(self, worker_id: str) -> None:
        slot = self._slots.get(worker_id)
        if slot is None or slot.done.is_set():
            return
        slot.scope.cancel()
        await slot.done.wait()

    async def signal(self, worker_id: str, signum: int) -> None:
        slot = self._slots.get(worker_id)
        if slot is None or slot.done.is_set():
            raise RuntimeUnavailable(f"worker {worker_id!r} is not running")
        if signum == signals.SIGUSR1:
            await slot.agent.dump()
        elif signum in (signals.SIGTERM, signals.SIGINT):
            slot.agent.request_stop(f"signal {signals.Signals(signum).name}")
        elif signum == signals.SIGKILL:
            await self.kill(worker_id)
        else:
            raise ValueError(f"inline workers take SIGUSR1, SIGTERM, SIGINT, SIGKILL; not {signum}")

    async def restart(self, worker_id: str) -> None:
        slot = self._slots.get(worker_id)
        if slot is None:
            raise RuntimeUnavailable(f"worker {worker_id!r} was never started here")
        await self.stop(worker_id, grace_s=self._default_grace_s)
        slot.restarts += 1
        await self.start(slot.spec)

    def status(self, worker_id: str) -> RuntimeStatus:
        slot = self._slots.get(worker_id)
        if slot is None:
            return RuntimeStatus(worker_id=worker_id, state="unknown")
        return RuntimeStatus(
            worker_id=worker_id,
            state=slot.state,
            ident=f"inline:{worker_id}",
            exit_code=slot.exit_code,
            started_at=slot.started_at,
            restarts=slot.restarts,
            error=slot.error,
        )

    def workers(self) -> list[str]:
        return sorted(w for w, s in self._slots.items() if s.state in ("starting", "running"))
