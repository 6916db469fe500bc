"""`DockerRuntime`: one container per worker, running ``python -m jarvis_kernel worker``.

The container runs the same command line as `ProcessRuntime` (`worker_argv`) in the
registry-free worker image (`image.py`), on the host network, with an init as PID 1 (so
SIGTERM and SIGUSR1 reach the worker's handlers), ``no-new-privileges``, a read-only root,
and memory and CPU limits. Every container carries the labels ``jarvis.kernel=<namespace>``
and ``jarvis.worker=<id>``.

- `start` creates and starts the container and returns once the worker prints its ready
  line, read from the container's log stream (followed all the time; the last lines are
  kept for `status`).
- `stop` is ``docker stop`` with the grace period (SIGTERM: the worker drains and
  deregisters; SIGKILL after the grace), then the container is removed.
- `kill` is ``docker kill`` (SIGKILL, as a crash). The dead container is kept, so
  ``docker logs`` still works, until the worker is started again or the runtime exits.
- Leftovers: on entry, containers labelled with this namespace that this runtime did not
  start (an earlier kernel that died) are stopped with the default grace, so a still-running
  worker deregisters, and removed; they are not adopted, since their spec and log are
  unknown here and the kernel starts its configured workers afresh. On exit, every
  container the runtime started is stopped (with the grace) and removed.

Errors: a daemon that cannot be reached is retried with capped exponential backoff for
`connect_timeout_s`, then `RuntimeUnavailable` names the daemon and the call; every other
aiodocker or aiohttp error is translated to `RuntimeUnavailable` at this boundary. Grace,
start and retry times are real seconds: a container does not follow the kernel's clock.

Exit codes follow `subprocess`: a worker ended by signal N (the daemon reports 128 + N)
has ``exit_code == -N``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal as signals
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import aiodocker
import aiohttp
import anyio
import anyio.abc
from aiodocker.containers import DockerContainer

from ..config import WorkerConfig
from ..errors import RuntimeUnavailable
from ..worker.cli import READY_LINE
from .base import HandleRuntime, WorkerHandle, first_of, stop_all
from .image import WORKER_IMAGE, ensure_local_image, host_python_binds, worker_container_config
from .process import worker_argv

__all__ = [
    "DEFAULT_DOCKER_HOST",
    "KERNEL_LABEL",
    "WORKER_LABEL",
    "DockerRuntime",
    "backoff_delays",
    "container_name",
    "exit_code_of",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
KERNEL_LABEL = "jarvis.kernel"
WORKER_LABEL = "jarvis.worker"
_CANNOT_CONNECT = 900  # aiodocker's status for "Cannot connect to Docker Engine"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding jarvis_kernel


# ---------------------------------------------------------------------- pure helpers


def backoff_delays(first_s: float = 0.05, cap_s: float = 1.0) -> Iterator[float]:
    """Delays between retries: doubling from `first_s`, capped at `cap_s`, forever."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, cap_s)


def container_name(namespace: str, worker_id: str) -> str:
    """The container's name: ``jarvis-<namespace>-<id>`` (``:`` is not allowed in names)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"jarvis-{namespace}-{worker_id}")


def exit_code_of(status_code: int) -> int:
    """A container's exit status as `subprocess` reports it: 128 + N (signal N) -> -N."""
    if 128 < status_code <= 128 + 64:
        return -(status_code - 128)
    return status_code


def _epoch(iso: str | None) -> float | None:
    """Docker's ``2024-05-01T10:00:00.123456789Z`` as epoch seconds (None if unset)."""
    if not iso or iso.startswith("0001-"):
        return None
    match = re.match(r"(.*?T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", iso)
    if match is None:
        return None
    base, frac, zone = match.groups()
    text = base + (frac or "")[:7] + ("+00:00" if zone == "Z" else zone)
    return datetime.fromisoformat(text).timestamp()


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, aiodocker.DockerError):
        return exc.status == _CANNOT_CONNECT
    return isinstance(exc, aiohttp.ClientConnectionError | OSError)


# ---------------------------------------------------------------------- runtime


class _Box(WorkerHandle):
    """One worker's container and what the runtime knows of it."""

    def __init__(self, spec: WorkerConfig, container: DockerContainer, restarts: int) -> None:
        super().__init__(spec, restarts)
        self.container = container
        self.removed = False

    @property
    def ident(self) -> str:
        return str(self.container.id)


class DockerRuntime(HandleRuntime[_Box]):
    """Workers as Docker containers. See the module docstring."""

    def __init__(
        self,
        *,
        redis_url: str,
        namespace: str = "jarvis",
        memory_dir: Path | None = None,
        image: str | None = None,
        docker_host: str | None = None,
        python: str | None = None,
        heartbeat_s: float | None = None,
        memory_bytes: int | None = 2048 * 1024 * 1024,
        nano_cpus: int | None = 2_000_000_000,
        network_mode: str = "host",
        read_only_root: bool = True,
        binds: list[str] | None = None,
        env: dict[str, str] | None = None,
        pass_env: list[str] | None = None,
        labels: dict[str, str] | None = None,
        default_grace_s: float = 5.0,
        start_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._redis_url = redis_url
        self._namespace = namespace
        self._memory_dir = None if memory_dir is None else Path(os.path.abspath(memory_dir))
        self._image = image
        self._docker_host = docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
        self._python = python or str(_PROJECT_ROOT / ".venv" / "bin" / "python")
        self._heartbeat_s = heartbeat_s
        self._memory_bytes = memory_bytes
        self._nano_cpus = nano_cpus
        self._network_mode = network_mode
        self._read_only_root = read_only_root
        self._binds = list(binds or [])
        # names in `pass_env` are copied from the kernel's environment; `env` wins over them
        self._env = {k: os.environ[k] for k in pass_env or () if k in os.environ}
        self._env.update(env or {})
        self._labels = dict(labels or {})
        self._default_grace_s = default_grace_s
        self._start_timeout_s = start_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._handles: dict[str, _Box] = {}
        self._docker: aiodocker.Docker | None = None
        self._image_ref: str | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def docker_host(self) -> str:
        """The daemon this runtime talks to."""
        return self._docker_host

    # ------------------------------------------------------------------ context

    async def __aenter__(self) -> DockerRuntime:
        try:
            self._docker = aiodocker.Docker(url=self._docker_host)
        except (ValueError, aiodocker.DockerError) as exc:
            raise RuntimeUnavailable(f"bad Docker host {self._docker_host!r}: {exc}") from exc
        try:
            await self._call("ping", self._docker.version)
            await self._remove_leftovers()
            tg = anyio.create_task_group()
            await tg.__aenter__()
            self._tg = tg
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._docker.close()
            self._docker = None
            raise
        return self

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        docker, self._docker = self._docker, None
        assert tg is not None and docker is not None, "DockerRuntime exited without being entered"
        try:
            await stop_all(self, grace_s=self._default_grace_s, margin_s=10.0)
            with anyio.move_on_after(10.0, shield=True):
                for box in self._handles.values():
                    await self._remove(box)
            tg.cancel_scope.cancel()
            return await tg.__aexit__(et, exc, tb)
        finally:
            with anyio.CancelScope(shield=True):
                await docker.close()

    async def _remove_leftovers(self) -> None:
        docker = self._client()
        query = {"all": True, "filters": {"label": [f"{KERNEL_LABEL}={self._namespace}"]}}
        found = await self._call("list containers", lambda: docker.containers.list(**query))
        if not found:
            return
        log.warning(
            "removing %d container(s) left by an earlier kernel on namespace %s",
            len(found),
            self._namespace,
        )
        async with anyio.create_task_group() as tg:
            for container in found:
                tg.start_soon(self._remove_leftover, container)

    async def _remove_leftover(self, container: DockerContainer) -> None:
        grace = math.ceil(self._default_grace_s)
        await self._call(f"stop {container.id[:12]}", lambda: _stop(container, grace))
        await self._call(f"remove {container.id[:12]}", lambda: _delete(container))

    # ------------------------------------------------------------------ daemon calls

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            raise RuntimeUnavailable("DockerRuntime is not entered (use `async with`)")
        return self._docker

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """`fn()`, retried while the daemon cannot be reached; errors as RuntimeUnavailable."""
        deadline = anyio.current_time() + self._connect_timeout_s
        delays = backoff_delays()
        while True:
            try:
                return await fn()
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
                delay = next(delays)
                if not _is_connection_error(exc):
                    raise RuntimeUnavailable(f"Docker: {what} failed: {exc}") from exc
                if anyio.current_time() + delay > deadline:
                    raise RuntimeUnavailable(
                        f"cannot reach the Docker daemon at {self._docker_host} "
                        f"(DOCKER_HOST) for {what} within {self._connect_timeout_s:g} s: {exc}"
                    ) from exc
                log.warning("Docker daemon unreachable (%s); retrying in %.2f s", exc, delay)
                await anyio.sleep(delay)

    async def _image_tag(self) -> str:
        if self._image_ref is not None:
            return self._image_ref
        docker = self._client()
        if self._image is None or self._image == WORKER_IMAGE:
            ref = await self._call("create image", lambda: ensure_local_image(docker))
        else:
            ref = self._image
            await self._call(f"inspect image {ref}", lambda: docker.images.inspect(ref))
        self._image_ref = ref
        return ref

    async def _container_config(self, spec: WorkerConfig) -> dict[str, Any]:
        argv = worker_argv(
            spec,
            python=self._python,
            redis_url=self._redis_url,
            namespace=self._namespace,
            memory_dir=self._memory_dir,
            heartbeat_s=self._heartbeat_s,
        )
        binds = host_python_binds(_PROJECT_ROOT)
        if self._memory_dir is not None:
            await anyio.Path(self._memory_dir).mkdir(parents=True, exist_ok=True)
            binds.append(f"{self._memory_dir}:{self._memory_dir}:rw")
        env = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(_PROJECT_ROOT), "HOME": "/tmp"}
        env.update(self._env)
        labels = {**self._labels, KERNEL_LABEL: self._namespace, WORKER_LABEL: spec.id}
        config = worker_container_config(
            argv,
            env=env,
            binds=binds + self._binds,
            labels=labels,
            workdir=str(_PROJECT_ROOT),
            memory_bytes=self._memory_bytes,
            nano_cpus=self._nano_cpus,
            read_only_root=self._read_only_root,
            image=await self._image_tag(),
        )
        config["HostConfig"]["NetworkMode"] = self._network_mode
        return config

    async def _remove(self, box: _Box) -> None:
        if box.removed:
            return
        container = box.container
        try:
            await self._call(f"remove {container.id[:12]}", lambda: _delete(container))
        except RuntimeUnavailable as exc:
            log.warning("could not remove the container of worker %s: %s", box.spec.id, exc)
            return
        box.removed = True

    # ------------------------------------------------------------------ WorkerRuntime

    async def start(self, spec: WorkerConfig) -> None:
        docker = self._client()
        if self._tg is None:
            raise RuntimeUnavailable("DockerRuntime is not entered (use `async with`)")
        old = self._handles.get(spec.id)
        if old is not None and not old.done.is_set():
            raise RuntimeUnavailable(f"worker {spec.id!r} is already running")
        if old is not None:
            await self._remove(old)
        config = await self._container_config(spec)
        name = container_name(self._namespace, spec.id)
        container = await self._call(
            f"create {name}", lambda: docker.containers.create(config, name=name)
        )
        box = _Box(spec, container, restarts=0 if old is None else old.restarts)
        self._handles[spec.id] = box
        try:
            await self._call(f"start {name}", container.start)
            info = await self._call(f"inspect {name}", container.show)
        except RuntimeUnavailable as exc:
            box.error = str(exc)
            box.done.set()
            raise
        box.started_at = _epoch(info["State"].get("StartedAt")) or box.started_at
        self._tg.start_soon(self._watch, box)
        await self._await_ready(box)

    async def _await_ready(self, box: _Box) -> None:
        await first_of(box.ready, box.done, timeout_s=self._start_timeout_s)
        if box.ready.is_set():
            return
        if not box.done.is_set():
            await self.kill(box.spec.id)
            why = f"not ready within {self._start_timeout_s:g} s"
        else:
            why = f"exited with code {box.exit_code}" + (f" ({box.error})" if box.error else "")
        tail = "\n".join(list(box.lines)[-20:])
        raise RuntimeUnavailable(f"worker {box.spec.id!r} {why}; its last output:\n{tail}")

    async def _watch(self, box: _Box) -> None:
        """Follow the container's log until it ends, then record how the worker exited."""
        ready = f"{READY_LINE} {box.spec.id}"
        try:
            await self._follow(box, ready)
            result = await self._call(f"wait {box.container.id[:12]}", box.container.wait)
            box.exit_code = exit_code_of(int(result["StatusCode"]))
        except RuntimeUnavailable as exc:
            box.error = str(exc)
            log.warning("lost track of worker %s: %s", box.spec.id, exc)
        finally:
            box.done.set()
            log.info("worker %s exited with code %s", box.spec.id, box.exit_code)

    async def _follow(self, box: _Box, ready: str) -> None:
        stream = cast(
            AsyncGenerator[str, None],
            box.container.log(stdout=True, stderr=True, follow=True),
        )
        partial = ""
        try:
            async for chunk in stream:
                *lines, partial = (partial + chunk).split("\n")
                for line in lines:
                    box.lines.append(line)
                    if line.strip() == ready:
                        box.ready.set()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
            log.warning("log stream of worker %s broke: %s", box.spec.id, exc)
        finally:
            if partial:
                box.lines.append(partial)
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def stop(self, worker_id: str, *, grace_s: float) -> None:
        box = self._handles.get(worker_id)
        if box is None or box.removed:
            return
        if not box.done.is_set():
            grace = max(0, math.ceil(grace_s))
            await self._call(f"stop {worker_id}", lambda: _stop(box.container, grace))
            with anyio.move_on_after(grace_s + 10):
                await box.done.wait()
        await self._remove(box)

    async def kill(self, worker_id: str) -> None:
        box = self._handles.get(worker_id)
        if box is None or box.done.is_set():
            return
        await self._call(f"kill {worker_id}", lambda: _kill(box.container, "SIGKILL"))
        await box.done.wait()

    async def signal(self, worker_id: str, signum: int) -> None:
        box = self._handles.get(worker_id)
        if box is None or box.done.is_set():
            raise RuntimeUnavailable(f"worker {worker_id!r} is not running")
        if signum == signals.SIGKILL:
            await self.kill(worker_id)
            return
        name = signals.Signals(signum).name
        await self._call(f"signal {worker_id}", lambda: _kill(box.container, name))


async def _delete(container: DockerContainer) -> None:
    try:
        await container.delete(force=True)
    except aiodocker.DockerError as exc:
        if exc.status != 404:  # already gone is fine
            raise


async def _stop(container: DockerContainer, grace: int) -> None:
    try:
        await container.stop(t=grace)
    except aiodocker.DockerError as exc:
        if exc.status not in (304, 404):  # already stopped, or gone
            raise


async def _kill(container: DockerContainer, signal: str) -> None:
    try:
        await container.kill(signal=signal)
    except aiodocker.DockerError as exc:
        if exc.status != 409:  # 409: not running (it just exited)
            raise
