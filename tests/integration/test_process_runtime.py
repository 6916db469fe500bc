"""ProcessRuntime with real ``python -m jarvis_kernel worker`` processes on a real Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from jarvis_kernel.bus.redis import RedisBus
from jarvis_kernel.config import WorkerConfig
from jarvis_kernel.errors import RuntimeUnavailable
from jarvis_kernel.protocol import (
    Assignment,
    Event,
    GenericEvent,
    Keys,
    WorkerInfo,
    decode,
    decode_event,
    encode,
)
from jarvis_kernel.runtime.process import ProcessRuntime, worker_argv
from tests.support.events import kind_of

pytestmark = pytest.mark.redis

KEYS = Keys("jp")


@pytest.fixture
async def bus(redis_url: str) -> AsyncIterator[RedisBus]:
    redis_bus = RedisBus.from_url(redis_url, reconnect_timeout_s=5.0)
    await redis_bus.xgroup_create(KEYS.events, "test", start_id="0")
    try:
        yield redis_bus
    finally:
        await redis_bus.aclose()


async def next_event(bus: RedisBus, kind: str) -> Event | GenericEvent:
    """The next event of type `kind` (XREADGROUP blocks: no polling, no sleeping)."""
    with anyio.fail_after(20):
        while True:
            for entry in await bus.xreadgroup(KEYS.events, "test", "t", block_s=1.0):
                event = decode_event(entry.fields["event"])
                if kind_of(event) == kind:
                    return event


async def test_process_worker_lifecycle(redis_url: str, bus: RedisBus, tmp_path: Path) -> None:
    runtime = ProcessRuntime(
        redis_url=redis_url,
        namespace=KEYS.namespace,
        memory_dir=tmp_path / ".memory",
        heartbeat_s=0.2,
        default_grace_s=10.0,
        start_timeout_s=30.0,
    )
    spec = WorkerConfig(
        id="p1", runtime="process", duration_s=0.05, expertise={"react": 0.8}, capacity=2
    )
    async with runtime:
        await runtime.start(spec)  # returns once registered and listening
        status = runtime.status("p1")
        assert status.state == "running"
        assert status.ident is not None
        raw = await bus.hget(KEYS.workers, "p1")
        assert raw is not None
        assert decode(raw, WorkerInfo).expertise == {"react": 0.8}
        assert await bus.zscore(KEYS.heartbeats, "p1") is not None
        await next_event(bus, "worker.started")

        await bus.lpush(KEYS.tasks_for("p1"), encode(Assignment(task_id="t1")))
        await next_event(bus, "task.started")
        await next_event(bus, "task.completed")
        assert await bus.llen(KEYS.processing("p1")) == 0

        await runtime.signal("p1", signal.SIGUSR1)
        await next_event(bus, "worker.state")

        with anyio.fail_after(20):
            await runtime.stop("p1", grace_s=10.0)
        status = runtime.status("p1")
        assert (status.state, status.exit_code) == ("exited", 0)
        assert await bus.hget(KEYS.workers, "p1") is None
        assert await bus.zscore(KEYS.heartbeats, "p1") is None
        await next_event(bus, "worker.stopped")
        assert any("ready" in line for line in status.log_tail)

        await runtime.restart("p1")
        status = runtime.status("p1")
        assert (status.state, status.restarts) == ("running", 1)
        assert await bus.hget(KEYS.workers, "p1") is not None

        with anyio.fail_after(20):
            await runtime.kill("p1")
        status = runtime.status("p1")
        assert (status.state, status.exit_code) == ("exited", -signal.SIGKILL)
        assert runtime.workers() == []
        # Killed: no drain, no deregistration; its heartbeat just stops.
        beat = await bus.zscore(KEYS.heartbeats, "p1")
        assert beat is not None
        assert await bus.hget(KEYS.workers, "p1") is not None

        await runtime.start(WorkerConfig(id="p2", runtime="process"))
    # Leaving the runtime stops every worker still running, with a drain.
    assert runtime.status("p2").exit_code == 0
    assert await bus.hget(KEYS.workers, "p2") is None


async def test_a_worker_that_cannot_start_is_reported(redis_url: str, tmp_path: Path) -> None:
    runtime = ProcessRuntime(redis_url=redis_url, namespace=KEYS.namespace, start_timeout_s=30)
    async with runtime:
        with pytest.raises(RuntimeUnavailable, match="exited with code"):
            await runtime.start(WorkerConfig(id="bad", runtime="process", executor="llm"))
    assert runtime.status("bad").state == "exited"


async def test_a_worker_exits_when_the_kernel_that_started_it_dies(
    redis_url: str, bus: RedisBus, tmp_path: Path
) -> None:
    """The runtime's pipe on stdin: closing it (as a SIGKILLed kernel's exit does) ends the
    worker at once, without a drain: its task stays in processing:<id> for the next kernel."""
    spec = WorkerConfig(id="w-orphan", runtime="process", duration_s=60.0)
    argv = worker_argv(
        spec,
        python=sys.executable,
        redis_url=redis_url,
        namespace=KEYS.namespace,
        memory_dir=tmp_path / ".memory",
        heartbeat_s=0.2,
    )
    argv.append("--exit-with-stdin")
    with anyio.fail_after(30):
        async with await anyio.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as process:
            assert process.stdout is not None and process.stdin is not None
            ready = await process.stdout.receive()
            assert b"jarvis-worker ready w-orphan" in ready
            raw = encode(Assignment(task_id="t-in-hand"))
            await bus.lpush(KEYS.tasks_for("w-orphan"), raw)
            await next_event(bus, "task.started")
            await process.stdin.aclose()  # the parent is gone
            await process.wait()
            assert process.stderr is not None
            stderr = b"".join([chunk async for chunk in process.stderr])
    assert b"stdin closed: the process that started this worker is gone" in stderr
    assert await bus.lrange(KEYS.processing("w-orphan"), 0, -1) == [raw]  # no drain
    assert await bus.hget(KEYS.workers, "w-orphan") is not None  # no deregistration either
