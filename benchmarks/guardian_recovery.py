"""Guardian recovery: (a) a worker's death to its task starting again elsewhere; (b) a
build-breaking write to the revert being done.

    python benchmarks/guardian_recovery.py [--trials 10] [--debounce 0.5]      # (b)
    python benchmarks/guardian_recovery.py --death [--trials 5] [--dead-after 3.0]  # (a)

(a): a throwaway redis-server, a `Kernel` with the guardian on and two real process workers
(``p-slow`` wins the task and takes 120 s; ``p-fast`` takes 50 ms). Each trial submits a
task, SIGKILLs ``p-slow`` once it started it, and times the kill -> ``task.requeued``
(detection and reclaim) and kill -> ``task.started`` of the next attempt on ``p-fast``.

A real git repository in a temporary folder, real watchfiles, the real clock and a Python
syntax check as the build. Each trial writes a broken tracked file and waits for the
incident; the time splits into the event delivery + debounce, the failing check, the
quarantine + restore, and the second (passing) check. Record the figures in
benchmarks/RESULTS.md under "## Guardian".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import pygit2

from jarvis_kernel.config import WorkspaceConfig
from jarvis_kernel.guardian.watcher import WorkspaceWatcher

CHECK = [
    sys.executable,
    "-c",
    "import ast, glob\n"
    "for p in sorted(glob.glob('**/*.py', recursive=True)):\n"
    "    ast.parse(open(p, 'rb').read(), p)\n",
]


def _repo(root: Path, files: int) -> None:
    repo = pygit2.init_repository(str(root))
    for i in range(files):
        (root / f"m{i:03d}.py").write_text(f"value_{i} = {i}\n")
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("bench", "bench@example.com")
    repo.create_commit("HEAD", sig, sig, "init", repo.index.write_tree(), [])


async def _trials(root: Path, memory: Path, trials: int, debounce_s: float) -> list[float]:
    config = WorkspaceConfig(path=str(root), build_command=CHECK, debounce_s=debounce_s)
    done: list[float] = []
    arrived = anyio.Event()

    def on_incident(incident: dict[str, Any]) -> None:
        assert incident["outcome"] == "reverted_ok", incident["outcome"]
        done.append(time.perf_counter())
        arrived.set()

    watcher = WorkspaceWatcher(config, memory, on_incident=on_incident)
    times: list[float] = []
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.run)
        for i in range(trials):
            arrived = anyio.Event()
            start = time.perf_counter()
            (root / "m000.py").write_text(f"def broken_{i}(:\n")
            with anyio.fail_after(30):
                await arrived.wait()
            times.append(done[-1] - start)
            with anyio.fail_after(30):
                await watcher.wait_for_bursts(i + 1)
        tg.cancel_scope.cancel()
    return times


async def _check_time(root: Path, runs: int = 5) -> float:
    from jarvis_kernel.guardian.watcher import BuildCheck

    check = BuildCheck(CHECK, 60.0, root)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        await check.run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _death_config(url: str, memory: Path, heartbeat_s: float, dead_after_s: float) -> Any:
    from jarvis_kernel.config import (
        BusConfig,
        Config,
        GuardianConfig,
        LibrarianConfig,
        LivenessConfig,
        WorkerConfig,
    )

    def go(level: float) -> dict[str, float]:
        return {"go": level}

    slow = {"steps": 1}
    fast = {"steps": 1, "seed": 4}  # seeded: the simulated task succeeds
    return Config(
        bus=BusConfig(redis_url=url, namespace="bench"),
        liveness=LivenessConfig(heartbeat_s=heartbeat_s, dead_after_s=dead_after_s),
        # the same worker dies every trial: no grace, backoff or intensity limit between its
        # restarts (the ladder's policy, tested elsewhere); this measures detection + reclaim
        guardian=GuardianConfig(
            enabled=True,
            tick_s=heartbeat_s,
            restart_grace_s=0.0,
            max_restarts=1000,
            backoff_base_s=0.0,
            backoff_max_s=0.0,
        ),
        librarian=LibrarianConfig(enabled=False),
        memory_dir=str(memory),
        workers=[
            # p-slow wins every "go" task; p-fast only gets what is taken back
            WorkerConfig(
                id="p-slow", runtime="process", duration_s=120.0, options=slow, expertise=go(0.9)
            ),
            WorkerConfig(
                id="p-fast", runtime="process", duration_s=0.05, options=fast, expertise=go(0.1)
            ),
        ],
    )


def _note(event: Any, task_id: str, at: float, seen: dict[str, Any]) -> None:
    """Record the first time after the kill of each thing a trial waits for."""
    from jarvis_kernel.protocol import (
        GuardianIntervention,
        TaskCompleted,
        TaskDead,
        TaskRequeued,
        TaskStarted,
    )

    if isinstance(event, TaskRequeued) and event.task_id == task_id:
        seen.setdefault("requeued", (at, event.reason))
    elif isinstance(event, TaskStarted) and event.worker_id == "p-fast":
        seen.setdefault("rerun", at)
    elif isinstance(event, TaskCompleted | TaskDead) and event.task_id == task_id:
        seen.setdefault("ended", at)  # dead: p-fast's simulated failure
    elif isinstance(event, GuardianIntervention) and event.action == "restart":
        seen.setdefault("restarted", at)


async def _death_trials(
    url: str, memory: Path, trials: int, heartbeat_s: float, dead_after_s: float
) -> list[tuple[float, float, str]]:
    """(kill -> requeued s, kill -> restarted elsewhere s, who reclaimed) per trial.

    Each task has two attempts: the one killed and the one on p-fast, so a trial always ends
    (p-fast's simulated outcome is random) and nothing is left for the next one.
    """
    import os
    import signal

    from jarvis_kernel.bus.redis import RedisBus
    from jarvis_kernel.kernel import Kernel
    from jarvis_kernel.protocol import Task, TaskStarted, decode_event
    from jarvis_kernel.runtime.process import ProcessRuntime

    cfg = _death_config(url, memory, heartbeat_s, dead_after_s)
    runtime = ProcessRuntime(
        redis_url=url, namespace="bench", memory_dir=memory, heartbeat_s=heartbeat_s
    )
    bus = RedisBus.from_url(url)
    keys = Kernel(cfg).keys
    await bus.xgroup_create(keys.events, "bench", start_id="$")
    results = []

    async def until(match: Any) -> Any:
        while True:
            for entry in await bus.xreadgroup(keys.events, "bench", "b", block_s=1.0):
                event = decode_event(entry.fields["event"])
                if match(event):
                    return event

    async def after_kill(task_id: str, killed: float) -> dict[str, Any]:
        """Seen after the kill: first requeue, restart elsewhere, completion, restart."""
        seen: dict[str, Any] = {}
        while len(seen) < 4:
            for entry in await bus.xreadgroup(keys.events, "bench", "b", block_s=1.0):
                event = decode_event(entry.fields["event"])
                _note(event, task_id, time.perf_counter() - killed, seen)
        return seen

    async with Kernel(cfg, runtimes={"process": runtime}) as kernel:
        for i in range(trials):
            task_id = f"t-death-{i}"
            with anyio.fail_after(60):
                await kernel.submit(Task(task_id=task_id, required_skills=["go"], max_attempts=2))
                await until(lambda e: isinstance(e, TaskStarted) and e.worker_id == "p-slow")
                pid = runtime.status("p-slow").ident
                assert pid is not None
                killed = time.perf_counter()
                os.kill(int(pid), signal.SIGKILL)
                seen = await after_kill(task_id, killed)
                assert runtime.status("p-slow").state == "running"
                await kernel.market.refresh_workers()  # see it back at once
            detected, reason = seen["requeued"]
            who = "guardian" if reason.startswith("guardian") else "market sweep"
            results.append((detected, seen["rerun"], who))
    await bus.aclose()
    return results


def _death(args: argparse.Namespace) -> None:
    from collections import Counter

    from jarvis_kernel.testing import RedisServer

    server = RedisServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = anyio.run(
                _death_trials,
                server.url,
                Path(tmp) / "memory",
                args.trials,
                args.heartbeat,
                args.dead_after,
            )
    finally:
        server.close()
    detected = sorted(r[0] * 1000 for r in results)
    rerun = sorted(r[1] * 1000 for r in results)
    print(f"heartbeat_s={args.heartbeat} dead_after_s={args.dead_after} trials={args.trials}")
    for name, ms in (("kill -> requeued", detected), ("kill -> started elsewhere", rerun)):
        print(
            f"{name}: median {statistics.median(ms):.0f} ms, min {ms[0]:.0f} ms,"
            f" max {ms[-1]:.0f} ms"
        )
    print("reclaimed by:", dict(Counter(r[2] for r in results)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--debounce", type=float, default=0.5)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--death", action="store_true", help="part (a): a worker's death")
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--dead-after", type=float, default=3.0)
    args = parser.parse_args()
    if args.death:
        _death(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        root.mkdir()
        _repo(root, args.files)
        check_s = anyio.run(_check_time, root)
        times = anyio.run(_trials, root, Path(tmp) / "memory", args.trials, args.debounce)
    ms = sorted(t * 1000 for t in times)
    print(f"files={args.files} debounce_s={args.debounce} trials={args.trials}")
    print(f"one build check (median): {check_s * 1000:.0f} ms")
    print(
        f"write -> incident (revert done, check passed again): median {statistics.median(ms):.0f}"
        f" ms, min {ms[0]:.0f} ms, max {ms[-1]:.0f} ms"
    )
    overhead = statistics.median(ms) - args.debounce * 1000 - 2 * check_s * 1000
    print(f"beyond debounce + 2 checks (event delivery, git, files): ~{overhead:.0f} ms")


if __name__ == "__main__":
    main()
