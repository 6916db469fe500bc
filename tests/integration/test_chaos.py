"""Chaos: 500 tasks through 4 process workers while workers are SIGKILLed at random 10 times
and the kernel itself is SIGKILLed and started again once.

Everything is real: a redis-server, the kernel as a subprocess (``python -m jarvis_kernel
run --config``) whose process runtime starts the workers as subprocesses, and whose
guardian finds the dead ones and restarts them. The test only submits (``LPUSH`` on the
intake, as a foreign submitter would), kills, and reads the event stream.

What must hold at the end: every task has exactly one ``task.completed`` (a killed attempt
never completes; its task is requeued with attempt + 1), none is dead, and nothing is left
in the live records or in any worker's lists.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest

from jarvis_kernel.bus.redis import RedisBus
from jarvis_kernel.protocol import Event, GenericEvent, Keys, Task, decode_event, encode

pytestmark = [pytest.mark.redis, pytest.mark.slow]

NS = "chaos"
TASKS = 500
WORKERS = [f"cw{i}" for i in range(4)]
WORKER_KILLS = 10
KERNEL_KILL_AT = 0.45  # share of tasks completed when the kernel is killed
DEADLINE_S = 180.0

CONFIG = """
memory_dir = "{memory}"

[bus]
redis_url = "{url}"
namespace = "{ns}"

[market]
window_s = 0.5

[liveness]
heartbeat_s = 0.25
dead_after_s = 2.0

[guardian]
tick_s = 0.2
"""

WORKER = """
[[workers]]
id = "{id}"
runtime = "process"
duration_s = 0.02
expertise = {{ go = 1.0 }}
options = {{ steps = 1, seed = {seed} }}
"""


def write_config(path: Path, url: str, memory: Path) -> Path:
    text = CONFIG.format(memory=memory, url=url, ns=NS)
    text += "".join(WORKER.format(id=w, seed=i) for i, w in enumerate(WORKERS))
    path.write_text(text)
    return path


def start_kernel(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jarvis_kernel", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


def worker_pids() -> dict[str, int]:
    """worker id -> pid of the live ``jarvis_kernel worker`` process of this namespace."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or b"worker" not in argv or NS.encode() not in argv:
            continue
        if b"--id" in argv:
            found[argv[argv.index(b"--id") + 1].decode()] = int(entry.name)
    return found


async def redis_state(bus: RedisBus, keys: Keys) -> str:
    """What is where, for a failure's report."""
    live = await bus.hgetall(keys.internal("live"))
    lines = [f"live records: {len(live)}"]
    lines += [f"  {task}: {raw.decode()[:300]}" for task, raw in sorted(live.items())[:20]]
    for key in (keys.intake, keys.internal("intake"), keys.tasks, keys.deadletter):
        lines.append(f"{key}: {await bus.llen(key)}")
    for worker in WORKERS:
        held = await bus.llen(keys.processing(worker))
        lines.append(f"{worker}: tasks {await bus.llen(keys.tasks_for(worker))}, held {held}")
    lines.append(f"heartbeats: {await bus.zrangebyscore(keys.heartbeats, 0, float('inf'))}")
    return "\n".join(lines)


class Stream:
    """Every event of the namespace, read as its own consumer group (no polling)."""

    def __init__(self, bus: RedisBus, keys: Keys) -> None:
        self.bus, self.keys = bus, keys
        self.events: list[Event | GenericEvent] = []
        self.completed: Counter[str] = Counter()

    async def read(self) -> None:
        entries = await self.bus.xreadgroup(
            self.keys.events, "chaos-test", "t", count=1000, block_s=1.0
        )
        for entry in entries:
            event = decode_event(entry.fields["event"])
            self.events.append(event)
            if type(event).__name__ == "TaskCompleted" and event.task_id:
                self.completed[event.task_id] += 1


async def test_chaos_500_tasks_10_worker_kills_and_a_kernel_kill(
    redis_url: str, tmp_path: Path
) -> None:
    rng = random.Random(20261124)
    keys = Keys(NS)
    config = write_config(tmp_path / "chaos.toml", redis_url, tmp_path / ".memory")
    log = tmp_path / "kernel.log"
    bus = RedisBus.from_url(redis_url)
    await bus.xgroup_create(keys.events, "chaos-test", start_id="0")
    stream = Stream(bus, keys)
    tasks = [
        Task(task_id=f"c-{i:03d}", required_skills=["go"], max_attempts=20) for i in range(TASKS)
    ]
    await bus.lpush(keys.intake, *(encode(t) for t in tasks))
    kills: Counter[str] = Counter()
    kill_marks = sorted(rng.sample(range(20, TASKS - 40), WORKER_KILLS))
    kernel = start_kernel(config, log)
    kernel_killed = False
    try:
        with anyio.fail_after(DEADLINE_S):
            while len(stream.completed) < TASKS:
                await stream.read()
                done = len(stream.completed)
                if not kernel_killed and done >= KERNEL_KILL_AT * TASKS:
                    kernel.send_signal(signal.SIGKILL)
                    kernel.wait()
                    kernel_killed = True
                    # its workers follow it at once (their stdin closes); the new kernel
                    # takes back what they held before it starts them again
                    kernel = start_kernel(config, log)
                # kill workers only once the kernel has started them all (a worker killed
                # before its ready line fails the kernel's start, as it should)
                starts = 2 if kernel_killed else 1
                ready = log.read_text().count("kernel ready:") >= starts
                while ready and kill_marks and done >= kill_marks[0]:
                    alive = worker_pids()
                    # at most 3 kills of one worker: a 4th within restart_window_s would be
                    # over the restart intensity and rightly not restarted
                    candidates = [w for w in sorted(alive) if kills[w] < 3]
                    if not candidates:
                        break  # the killed ones are not back yet: try at the next read
                    victim = rng.choice(candidates)
                    os.kill(alive[victim], signal.SIGKILL)
                    kills[victim] += 1
                    kill_marks.pop(0)
        kernel.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            await anyio.to_thread.run_sync(kernel.wait)
        await stream.read()
    except BaseException:
        print(
            f"completed {len(stream.completed)}, kills {dict(kills)}, kernel killed {kernel_killed}"
        )
        print(await redis_state(bus, keys))
        print(log.read_text()[-8000:])
        raise
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait()

    try:
        kinds = Counter(type(e).__name__ for e in stream.events)
        assert sum(kills.values()) == WORKER_KILLS and kernel_killed
        assert set(stream.completed) == {t.task_id for t in tasks}
        assert max(stream.completed.values()) == 1, "a task completed twice"
        assert kinds["TaskDead"] == 0
        assert kinds["TaskRequeued"] >= 1  # the kills did hit tasks in hand
        restarts = [
            e
            for e in stream.events
            if type(e).__name__ == "GuardianIntervention" and getattr(e, "action", "") == "restart"
        ]
        assert restarts, "the guardian restarted no killed worker"
        assert await bus.hgetall(keys.internal("live")) == {}
        assert await bus.llen(keys.intake) == 0 and await bus.llen(keys.internal("intake")) == 0
        assert await bus.llen(keys.tasks) == 0 and await bus.llen(keys.deadletter) == 0
        for worker in WORKERS:
            assert await bus.llen(keys.processing(worker)) == 0, worker
            assert await bus.llen(keys.tasks_for(worker)) == 0, worker
    except AssertionError:
        print(log.read_text()[-5000:])
        raise
    finally:
        await bus.aclose()
