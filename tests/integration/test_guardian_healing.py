"""The guardian heals real workers, each case once with worker processes and once with
Docker containers, on a real Redis, through `Kernel.from_config`:

- a worker SIGKILLed from outside: found dead, restarted, its task run again elsewhere;
- a worker that hangs (no progress): dumped (SIGUSR1), then restarted, its task run elsewhere;
- a worker that fails three times with one errorKey: restarted (its own error spiral);
- a worker whose token usage jumps far above its baseline: dumped.

Waits are on events read from the stream; every test has a `fail_after` net.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
    GuardianConfig,
    LibrarianConfig,
    LivenessConfig,
    MarketConfig,
    WorkerConfig,
)
from jarvis_kernel.guardian.incidents import read_incidents
from jarvis_kernel.protocol import (
    GuardianIntervention,
    Keys,
    Task,
    TaskCompleted,
    TaskFailed,
    TaskRequeued,
    TaskStarted,
)
from tests.support.events import Events, kind_of

pytestmark = pytest.mark.redis

DEADLINE_S = 90.0


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def docker_config(request: pytest.FixtureRequest, kind: str) -> DockerConfig:
    """For docker: the test engine, the local worker image, the test's cleanup labels."""
    if kind != "docker":
        return DockerConfig()
    url = request.getfixturevalue("docker_url")
    request.getfixturevalue("worker_image")
    request.getfixturevalue("docker")  # removes the test's containers afterwards
    labels = request.getfixturevalue("docker_labels")
    return DockerConfig(host=url, labels=labels, memory_mb=512, cpus=1.0)


class Swarm:
    def __init__(self, redis_url: str, kind: str, docker: DockerConfig, tmp_path: Path) -> None:
        self.redis_url, self.kind, self.docker = redis_url, kind, docker
        self.keys = Keys(f"gh{uuid.uuid4().hex[:10]}")
        self.memory = tmp_path / ".memory"

    def config(self, workers: list[dict[str, Any]], **guardian: Any) -> Config:
        return Config(
            bus=BusConfig(redis_url=self.redis_url, namespace=self.keys.namespace),
            market=MarketConfig(window_s=0.5),
            liveness=LivenessConfig(heartbeat_s=0.2, dead_after_s=2.0),
            guardian=GuardianConfig(enabled=True, tick_s=0.2, **guardian),
            librarian=LibrarianConfig(enabled=False),
            docker=self.docker,
            memory_dir=str(self.memory),
            workers=[WorkerConfig(runtime=self.kind, **w) for w in workers],
        )

    @asynccontextmanager
    async def run(self, cfg: Config) -> AsyncIterator[tuple[Kernel, Events]]:
        bus = RedisBus.from_url(self.redis_url, reconnect_timeout_s=5.0)
        events = Events(bus, self.keys)
        try:
            with anyio.fail_after(DEADLINE_S):
                async with anyio.create_task_group() as tg:
                    await tg.start(events.run)
                    async with Kernel.from_config(cfg) as kernel:
                        yield kernel, events
                    tg.cancel_scope.cancel()
        finally:
            await bus.aclose()

    async def crash(self, kernel: Kernel, worker_id: str) -> None:
        """SIGKILL the worker from outside, as a crash would (not through the runtime)."""
        ident = kernel.runtimes[self.kind].status(worker_id).ident
        assert ident is not None
        if self.kind == "process":
            os.kill(int(ident), signal.SIGKILL)
            return
        async with aiodocker.Docker(url=self.docker.host) as client:
            await client.containers.container(ident).kill(signal="SIGKILL")

    def restarts(self, kernel: Kernel, worker_id: str) -> int:
        return kernel.runtimes[self.kind].status(worker_id).restarts

    def incidents(self) -> list[tuple[str, str, str]]:
        incidents, errors = read_incidents(self.memory / "incidents.jsonl")
        assert errors == []
        return [(i.kind, i.action, i.target) for i in incidents]


@pytest.fixture
def swarm(redis_url: str, kind: str, docker_config: DockerConfig, tmp_path: Path) -> Swarm:
    return Swarm(redis_url, kind, docker_config, tmp_path)


# p-slow wins "go" tasks and takes 120 s with no progress on the way; p-fast takes 50 ms
SLOW = {"id": "p-slow", "duration_s": 120.0, "expertise": {"go": 0.9}, "options": {"steps": 1}}
FAST = {
    "id": "p-fast",
    "duration_s": 0.05,
    "expertise": {"go": 0.1},
    "options": {"steps": 1, "seed": 4},
}


def interventions(events: Events, worker_id: str) -> list[tuple[int, str]]:
    return [
        (e.level, e.action)
        for e in events.seen
        if isinstance(e, GuardianIntervention) and e.worker_id == worker_id
    ]


async def test_a_killed_worker_is_restarted_and_its_task_runs_elsewhere(swarm: Swarm) -> None:
    # The guardian finds the worker dead a second after the kernel does: the kernel has
    # taken the task back and awarded it to p-fast by then. With the same threshold the
    # restarted p-slow may register first and rightly win its task back (a race, not a bug).
    cfg = swarm.config([SLOW, FAST], stall_after_s=60.0, dead_after_s=3.0)
    async with swarm.run(cfg) as (kernel, events):
        await kernel.submit(Task(task_id="t-long", required_skills=["go"]))
        started = await events.first(lambda e: isinstance(e, TaskStarted))
        assert started.worker_id == "p-slow"
        await swarm.crash(kernel, "p-slow")
        await events.first(lambda e: isinstance(e, TaskRequeued))
        again = await events.first(lambda e: isinstance(e, TaskStarted) and e.attempt == 2)
        done = await events.first(lambda e: isinstance(e, TaskCompleted))
        await events.first(lambda e: isinstance(e, GuardianIntervention))
        restarts = swarm.restarts(kernel, "p-slow")
        state = kernel.runtimes[swarm.kind].status("p-slow").state
    assert again.worker_id == "p-fast"
    assert isinstance(done, TaskCompleted) and (done.worker_id, done.attempt) == ("p-fast", 2)
    assert interventions(events, "p-slow") == [(2, "restart")]
    assert swarm.incidents() == [("worker_dead", "restart", "p-slow")]
    assert (restarts, state) == (1, "running")


async def test_a_hung_worker_is_dumped_then_restarted(swarm: Swarm) -> None:
    cfg = swarm.config([SLOW, FAST], stall_after_s=1.0, dump_grace_s=1.0)
    async with swarm.run(cfg) as (kernel, events):
        await kernel.submit(Task(task_id="t-hung", required_skills=["go"]))
        started = await events.first(lambda e: isinstance(e, TaskStarted))
        assert started.worker_id == "p-slow"
        dump = await events.first(lambda e: kind_of(e) == "worker.state")
        done = await events.first(lambda e: isinstance(e, TaskCompleted))
        await events.first(lambda e: isinstance(e, GuardianIntervention) and e.level == 2)
        restarts = swarm.restarts(kernel, "p-slow")
    assert dump.worker_id == "p-slow"  # SIGUSR1 through the runtime reached the worker
    assert isinstance(done, TaskCompleted) and (done.worker_id, done.attempt) == ("p-fast", 2)
    assert interventions(events, "p-slow") == [(1, "dump"), (2, "restart")]
    assert swarm.incidents() == [("stall", "dump", "p-slow"), ("stall", "restart", "p-slow")]
    assert restarts == 1


async def test_a_worker_failing_with_one_error_three_times_is_restarted(swarm: Swarm) -> None:
    bad = {
        "id": "p-bad",
        "duration_s": 0.05,
        "fail_rate": 1.0,
        "expertise": {"go": 0.9},
        "options": {"steps": 1, "error_keys": ["E.build"]},
    }
    async with swarm.run(swarm.config([bad, FAST])) as (kernel, events):
        await kernel.submit(Task(task_id="t-x", required_skills=["go"], max_attempts=10))
        await events.first(lambda e: isinstance(e, GuardianIntervention))
        restarts = swarm.restarts(kernel, "p-bad")
    failures = [e for e in events.seen if isinstance(e, TaskFailed)]
    assert [(e.worker_id, e.error_key) for e in failures[:3]] == [("p-bad", "E.build")] * 3
    assert interventions(events, "p-bad") == [(2, "restart")]
    assert swarm.incidents()[0] == ("error_spiral", "restart", "p-bad")
    assert restarts == 1


async def test_a_token_spike_gets_the_worker_dumped(swarm: Swarm) -> None:
    spender = {
        "id": "p-spend",
        "executor": "python",
        "options": {"target": "tests.support.pytargets:spend"},
    }
    async with swarm.run(swarm.config([spender])) as (kernel, events):
        baseline = [Task(task_id=f"t-{i}", payload={"tokens": 100}) for i in range(5)]
        ended = await kernel.run_tasks(baseline)
        assert all(isinstance(e, TaskCompleted) for e in ended.values())
        big = Task(task_id="t-big", payload={"tokens": 50_000, "hold_s": 6.0})
        await kernel.submit(big)
        dump = await events.first(lambda e: kind_of(e) == "worker.state")
        intervention = await events.first(lambda e: isinstance(e, GuardianIntervention))
        done = await events.first(lambda e: isinstance(e, TaskCompleted) and e.task_id == "t-big")
    assert dump.worker_id == "p-spend"
    assert isinstance(intervention, GuardianIntervention)
    assert (intervention.level, intervention.action, intervention.task_id) == (1, "dump", "t-big")
    assert swarm.incidents() == [("token_spike", "dump", "p-spend")]
    assert done.worker_id == "p-spend"  # a dump does not stop the task
