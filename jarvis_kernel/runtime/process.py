"""`ProcessRuntime`: one ``python -m jarvis_kernel worker`` subprocess per worker, over Redis.

`start` spawns the worker (in its own session, so a Ctrl-C meant for the kernel does not
reach it directly; with ``--exit-with-stdin`` and a pipe as its stdin whose other end only
the kernel holds, so that a killed kernel leaves no worker behind) and returns once it
prints its ready line, i.e. once it is registered and listening. `stop` sends SIGTERM (the
worker drains and deregisters), waits `grace_s`, then SIGKILLs. Each child's stdout and
stderr are read all the time, so its pipes never fill; the last lines are kept for `status`
(``log_tail``). Grace and start timeouts are real seconds: a subprocess does not follow the
kernel's clock.
"""

from __future__ import annotations

import logging
import os
import signal as signals
import subprocess
import sys
from pathlib import Path
from types import TracebackType

import anyio
import anyio.abc
import msgspec
from anyio.streams.text import TextReceiveStream

from ..config import WorkerConfig
from ..errors import RuntimeUnavailable
from ..worker.cli import READY_LINE
from .base import HandleRuntime, WorkerHandle, first_of, stop_all

__all__ = ["ProcessRuntime", "worker_argv"]

log = logging.getLogger(__name__)


def worker_argv(
    spec: WorkerConfig,
    *,
    python: str,
    redis_url: str,
    namespace: str,
    memory_dir: Path | None,
    heartbeat_s: float | None,
) -> list[str]:
    """The command line that runs `spec` as a worker process."""
    argv = [python, "-m", "jarvis_kernel", "worker", "--id", spec.id, "--model", spec.model]
    argv += ["--capacity", str(spec.capacity), "--executor", spec.executor]
    argv += ["--redis", redis_url, "--namespace", namespace, "--fail-rate", str(spec.fail_rate)]
    if spec.expertise:
        argv += ["--skills", ",".join(f"{k}={v}" for k, v in sorted(spec.expertise.items()))]
    if spec.duration_s is not None:
        argv += ["--duration-s", str(spec.duration_s)]
    if memory_dir is not None:
        argv += ["--memory", str(memory_dir)]
    if heartbeat_s is not None:
        argv += ["--heartbeat-s", str(heartbeat_s)]
    if spec.take != "own":
        argv += ["--take", spec.take]
    if isinstance(spec.options.get("seed"), int):
        argv += ["--seed", str(spec.options["seed"])]
    if spec.options:  # the executor's options (allowlist, target, endpoint...) go along
        argv += ["--options", msgspec.json.encode(spec.options).decode()]
    return argv


class _Child(WorkerHandle):
    def __init__(self, spec: WorkerConfig, process: anyio.abc.Process, restarts: int) -> None:
        super().__init__(spec, restarts)
        self.process = process

    @property
    def ident(self) -> str:
        return str(self.process.pid)


class ProcessRuntime(HandleRuntime[_Child]):
    """Workers as child processes. See the module docstring."""

    def __init__(
        self,
        *,
        redis_url: str,
        namespace: str = "jarvis",
        memory_dir: Path | None = None,
        python: str = sys.executable,
        heartbeat_s: float | None = None,
        default_grace_s: float = 5.0,
        start_timeout_s: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self._redis_url = redis_url
        self._namespace = namespace
        self._memory_dir = memory_dir
        self._python = python
        self._heartbeat_s = heartbeat_s
        self._default_grace_s = default_grace_s
        self._start_timeout_s = start_timeout_s
        self._env = env
        self._handles: dict[str, _Child] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    # ------------------------------------------------------------------ context

    async def __aenter__(self) -> ProcessRuntime:
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
        assert tg is not None, "ProcessRuntime exited without being entered"
        await stop_all(self, grace_s=self._default_grace_s, margin_s=2.0)
        for child in self._handles.values():
            if not child.done.is_set():
                child.process.kill()
        tg.cancel_scope.cancel()
        return await tg.__aexit__(et, exc, tb)

    def _entered(self) -> bool:
        return self._tg is not None

    # ------------------------------------------------------------------ WorkerRuntime

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ if self._env is None else self._env)
        root = str(Path(__file__).resolve().parents[2])  # the folder holding jarvis_kernel
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def start(self, spec: WorkerConfig) -> None:
        if self._tg is None:
            raise RuntimeUnavailable("ProcessRuntime is not entered (use `async with`)")
        old = self._handles.get(spec.id)
        if old is not None and not old.done.is_set():
            raise RuntimeUnavailable(f"worker {spec.id!r} is already running")
        argv = worker_argv(
            spec,
            python=self._python,
            redis_url=self._redis_url,
            namespace=self._namespace,
            memory_dir=self._memory_dir,
            heartbeat_s=self._heartbeat_s,
        )
        argv.append("--exit-with-stdin")
        try:
            process = await anyio.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeUnavailable(f"cannot start worker {spec.id!r}: {exc}") from exc
        if not self._entered():  # the runtime was closed while the process was being spawned
            process.kill()
            await process.aclose()
            raise RuntimeUnavailable(f"worker {spec.id!r} not started: the runtime is closing")
        child = _Child(spec, process, restarts=0 if old is None else old.restarts)
        self._handles[spec.id] = child
        self._tg.start_soon(self._watch, child)
        await self._await_ready(child)

    async def _await_ready(self, child: _Child) -> None:
        await first_of(child.ready, child.done, timeout_s=self._start_timeout_s)
        if child.ready.is_set():
            return
        if not child.done.is_set():
            await self.kill(child.spec.id)
            why = f"not ready within {self._start_timeout_s:g} s"
        else:
            why = f"exited with code {child.process.returncode}"
        tail = "\n".join(list(child.lines)[-20:])
        raise RuntimeUnavailable(f"worker {child.spec.id!r} {why}; its last output:\n{tail}")

    async def _watch(self, child: _Child) -> None:
        """Read the child's output until EOF, then reap it."""
        ready = f"{READY_LINE} {child.spec.id}"
        process, partial = child.process, ""
        try:
            assert process.stdout is not None
            async for chunk in TextReceiveStream(process.stdout, errors="replace"):
                *lines, partial = (partial + chunk).split("\n")
                for line in lines:
                    child.lines.append(line)
                    if line.strip() == ready:
                        child.ready.set()
            if partial:
                child.lines.append(partial)
            await process.wait()
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.aclose()
            child.exit_code = process.returncode
            child.done.set()
            log.info("worker %s exited with code %s", child.spec.id, process.returncode)

    async def stop(self, worker_id: str, *, grace_s: float) -> None:
        child = self._handles.get(worker_id)
        if child is None or child.done.is_set():
            return
        child.process.terminate()
        with anyio.move_on_after(grace_s):
            await child.done.wait()
        if not child.done.is_set():
            log.warning("worker %s did not drain within %s s: killed", worker_id, grace_s)
            await self.kill(worker_id)

    async def kill(self, worker_id: str) -> None:
        child = self._handles.get(worker_id)
        if child is None or child.done.is_set():
            return
        child.process.kill()
        await child.done.wait()

    async def signal(self, worker_id: str, signum: int) -> None:
        child = self._handles.get(worker_id)
        if child is None or child.done.is_set():
            raise RuntimeUnavailable(f"worker {worker_id!r} is not running")
        if signum == signals.SIGKILL:
            await self.kill(worker_id)
        else:
            child.process.send_signal(signals.Signals(signum))
