"""DockerRuntime with real worker containers on a real Docker engine and a real Redis.

Every container carries the test's `docker_labels` (the runtime's ``labels``), so the
`docker` fixture removes whatever a failing test leaves; each test also has its own
namespace, hence its own ``jarvis.kernel`` label.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import anyio
import pytest

from jarvis_kernel import Kernel
from jarvis_kernel.bus.redis import RedisBus
from jarvis_kernel.config import (
    BusConfig,
    Config,
    DockerConfig,
    LibrarianConfig,
    LivenessConfig,
    MarketConfig,
    WorkerConfig,
)
from jarvis_kernel.errors import ConfigError, RuntimeUnavailable
from jarvis_kernel.protocol import (
    Assignment,
    Event,
    GenericEvent,
    Keys,
    Task,
    TaskCompleted,
    WorkerInfo,
    decode,
    decode_event,
    encode,
)
from jarvis_kernel.runtime.docker import (
    KERNEL_LABEL,
    WORKER_LABEL,
    DockerRuntime,
    backoff_delays,
    container_name,
    exit_code_of,
)
from jarvis_kernel.runtime.image import host_python_binds, worker_container_config
from jarvis_kernel.testing import project_root
from tests.support.events import kind_of

pytestmark = [pytest.mark.docker, pytest.mark.redis]

ROOT = project_root()
DEADLINE_S = 60.0
MIB = 1024 * 1024


@pytest.fixture
def keys() -> Keys:
    return Keys(f"dk{uuid.uuid4().hex[:10]}")


@pytest.fixture
def memory_dir(keys: Keys) -> Iterator[Path]:
    path = Path("/tmp/docker-helper") / keys.namespace / ".memory"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@pytest.fixture
async def bus(redis_url: str, keys: Keys) -> AsyncIterator[RedisBus]:
    redis_bus = RedisBus.from_url(redis_url, reconnect_timeout_s=5.0)
    await redis_bus.xgroup_create(keys.events, "test", start_id="0")
    try:
        yield redis_bus
    finally:
        await redis_bus.aclose()


@pytest.fixture
def runtime(
    docker: aiodocker.Docker,
    worker_image: str,
    docker_url: str,
    redis_url: str,
    keys: Keys,
    memory_dir: Path,
    docker_labels: dict[str, str],
) -> DockerRuntime:
    return DockerRuntime(
        redis_url=redis_url,
        namespace=keys.namespace,
        memory_dir=memory_dir,
        image=worker_image,
        docker_host=docker_url,
        heartbeat_s=0.2,
        memory_bytes=512 * MIB,
        nano_cpus=1_000_000_000,
        labels=docker_labels,
        default_grace_s=10.0,
        start_timeout_s=30.0,
    )


async def next_event(bus: RedisBus, keys: Keys, kind: str) -> Event | GenericEvent:
    """The next event of type `kind` (XREADGROUP blocks: no polling, no sleeping)."""
    with anyio.fail_after(20):
        while True:
            for entry in await bus.xreadgroup(keys.events, "test", "t", block_s=1.0):
                event = decode_event(entry.fields["event"])
                if kind_of(event) == kind:
                    return event


async def labelled(docker: aiodocker.Docker, key: str, value: str) -> list[str]:
    found = await docker.containers.list(all=True, filters={"label": [f"{key}={value}"]})
    return [c.id for c in found]


async def test_docker_worker_lifecycle(
    runtime: DockerRuntime, docker: aiodocker.Docker, bus: RedisBus, keys: Keys
) -> None:
    spec = WorkerConfig(
        id="d1", runtime="docker", duration_s=0.05, expertise={"react": 0.8}, capacity=2
    )
    with anyio.fail_after(DEADLINE_S):
        async with runtime:
            began = time.perf_counter()
            await runtime.start(spec)  # returns once registered and listening
            print(f"start-to-ready: {time.perf_counter() - began:.2f} s")
            status = runtime.status("d1")
            assert status.state == "running"
            assert status.ident is not None
            assert status.started_at is not None
            info = await docker.containers.get(status.ident)
            shown = await info.show()
            assert shown["Name"] == "/" + container_name(keys.namespace, "d1")
            labels = shown["Config"]["Labels"]
            assert (labels[KERNEL_LABEL], labels[WORKER_LABEL]) == (keys.namespace, "d1")
            assert shown["HostConfig"]["Init"] is True
            assert shown["HostConfig"]["Memory"] == 512 * MIB

            raw = await bus.hget(keys.workers, "d1")
            assert raw is not None
            assert decode(raw, WorkerInfo).expertise == {"react": 0.8}
            assert await bus.zscore(keys.heartbeats, "d1") is not None
            await next_event(bus, keys, "worker.started")

            await bus.lpush(keys.tasks_for("d1"), encode(Assignment(task_id="t1")))
            await next_event(bus, keys, "task.started")
            await next_event(bus, keys, "task.completed")

            await runtime.signal("d1", signal.SIGUSR1)  # through docker-init to the handler
            await next_event(bus, keys, "worker.state")

            await runtime.stop("d1", grace_s=10.0)
            status = runtime.status("d1")
            assert (status.state, status.exit_code) == ("exited", 0)
            assert await bus.hget(keys.workers, "d1") is None
            assert await bus.zscore(keys.heartbeats, "d1") is None
            await next_event(bus, keys, "worker.stopped")
            assert any("ready" in line for line in status.log_tail)
            assert await labelled(docker, WORKER_LABEL, "d1") == []  # removed

            await runtime.start(spec)
            began = time.perf_counter()
            await runtime.restart("d1")
            restart_s = time.perf_counter() - began
            print(f"restart: {restart_s:.2f} s")
            assert restart_s < 10  # loosely: the 2 s target belongs in a benchmark
            status = runtime.status("d1")
            assert (status.state, status.restarts) == ("running", 1)
            assert await bus.hget(keys.workers, "d1") is not None

            await runtime.kill("d1")
            status = runtime.status("d1")
            assert (status.state, status.exit_code) == ("exited", -signal.SIGKILL)
            assert runtime.workers() == []
            # Killed: no drain, no deregistration; the dead container is kept for a look.
            assert await bus.hget(keys.workers, "d1") is not None
            assert await bus.zscore(keys.heartbeats, "d1") is not None
            assert len(await labelled(docker, WORKER_LABEL, "d1")) == 1

            await runtime.start(WorkerConfig(id="d2", runtime="docker"))
        # Leaving the runtime stops every worker still running, with a drain, and removes
        # every container it started.
        assert runtime.status("d2").exit_code == 0
        assert await bus.hget(keys.workers, "d2") is None
        assert await labelled(docker, KERNEL_LABEL, keys.namespace) == []


async def test_a_worker_that_cannot_start_is_reported(
    runtime: DockerRuntime, docker: aiodocker.Docker, keys: Keys
) -> None:
    with anyio.fail_after(DEADLINE_S):
        async with runtime:
            with pytest.raises(RuntimeUnavailable, match="exited with code"):
                await runtime.start(WorkerConfig(id="bad", runtime="docker", executor="llm"))
            status = runtime.status("bad")
            assert status.state == "exited"
            assert status.exit_code not in (None, 0)
            assert status.log_tail
        assert await labelled(docker, KERNEL_LABEL, keys.namespace) == []


async def test_leftovers_of_an_earlier_run_are_removed_on_entry(
    runtime: DockerRuntime,
    docker: aiodocker.Docker,
    worker_image: str,
    keys: Keys,
    docker_labels: dict[str, str],
) -> None:
    def config(namespace: str) -> dict[str, Any]:
        return worker_container_config(
            [str(ROOT / ".venv" / "bin" / "python"), "-c", "import signal; signal.pause()"],
            image=worker_image,
            env={},
            binds=host_python_binds(ROOT),
            labels={**docker_labels, KERNEL_LABEL: namespace, WORKER_LABEL: "old"},
            workdir=str(ROOT),
            memory_bytes=64 * MIB,
            nano_cpus=None,
        )

    with anyio.fail_after(DEADLINE_S):
        running = await docker.containers.create(config(keys.namespace))
        await running.start()
        await docker.containers.create(config(keys.namespace))  # created, never started
        other = await docker.containers.create(config(keys.namespace + "x"))
        assert len(await labelled(docker, KERNEL_LABEL, keys.namespace)) == 2

        async with runtime:
            assert await labelled(docker, KERNEL_LABEL, keys.namespace) == []
            # Another namespace's containers are not this kernel's.
            assert await labelled(docker, KERNEL_LABEL, keys.namespace + "x") == [other.id]


async def test_an_unreachable_daemon_is_reported_quickly(redis_url: str) -> None:
    runtime = DockerRuntime(
        redis_url=redis_url, docker_host="unix:///nonexistent.sock", connect_timeout_s=0.5
    )
    began = time.perf_counter()
    with anyio.fail_after(10), pytest.raises(RuntimeUnavailable, match="cannot reach"):
        async with runtime:
            pass
    assert time.perf_counter() - began < 5


async def test_docker_host_comes_from_the_environment(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")  # nothing listens on port 1
    runtime = DockerRuntime(redis_url=redis_url, connect_timeout_s=0.3)
    assert runtime.docker_host == "tcp://127.0.0.1:1"
    with (
        anyio.fail_after(10),
        pytest.raises(RuntimeUnavailable, match=re.escape("tcp://127.0.0.1:1")),
    ):
        async with runtime:
            pass


async def test_the_kernel_needs_redis_for_docker_workers() -> None:
    config = Config(
        librarian=LibrarianConfig(enabled=False),
        workers=[WorkerConfig(id="dw", runtime="docker")],
    )
    with pytest.raises(ConfigError, match="runtime 'docker' needs a Redis bus"):
        async with Kernel.from_config(config):
            pass


def test_pure_helpers() -> None:
    delays = backoff_delays(0.05, 1.0)
    assert [next(delays) for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert container_name("ns", "gpt:large-1") == "jarvis-ns-gpt_large-1"
    assert (exit_code_of(0), exit_code_of(1), exit_code_of(137), exit_code_of(143)) == (
        0,
        1,
        -9,
        -15,
    )


async def test_kernel_runs_a_docker_worker_that_wins_a_task(
    docker: aiodocker.Docker,
    worker_image: str,
    docker_url: str,
    redis_url: str,
    keys: Keys,
    memory_dir: Path,
    docker_labels: dict[str, str],
) -> None:
    config = Config(
        bus=BusConfig(redis_url=redis_url, namespace=keys.namespace),
        market=MarketConfig(window_s=2.0),
        liveness=LivenessConfig(heartbeat_s=0.5, dead_after_s=3.0),
        librarian=LibrarianConfig(enabled=False),
        docker=DockerConfig(host=docker_url, labels=docker_labels, memory_mb=512, cpus=1.0),
        memory_dir=str(memory_dir),
        workers=[
            WorkerConfig(id="dw", runtime="docker", expertise={"react": 0.9}, duration_s=0.05)
        ],
    )
    task = Task(task_id="ui-1", required_skills=["react"], description="a button")
    with anyio.fail_after(DEADLINE_S):
        async with Kernel.from_config(config) as kernel:
            assert isinstance(kernel.runtimes["docker"], DockerRuntime)
            ended = await kernel.run_tasks([task])
        assert await labelled(docker, KERNEL_LABEL, keys.namespace) == []
    event = ended["ui-1"]
    assert isinstance(event, TaskCompleted)
    assert event.worker_id == "dw"
