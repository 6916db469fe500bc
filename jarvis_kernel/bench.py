"""The auction-latency harness: the market against its own alternatives, in one run.

``python -m jarvis_kernel bench auction --workers N --tasks M [--redis URL] [--json]`` runs,
on one real redis-server with N worker processes per mode:

- ``market``: this market, windows closing early once every eligible worker answered or
  once the bids in hand decide the award (the early close on bounds), each task announced
  first to its likeliest winner alone (directed announcements);
- ``broadcast``: the same, every announcement heard by every worker (no directed
  announcements: the same-run baseline of that change);
- ``waitall``: the same without the close on bounds (it waits for every eligible worker);
- ``fixed``: the same with a fixed 0.5 s window (the original design);
- ``fcfs``: plain first-come-first-served, workers ``BLMOVE``-ing from one shared list.

and reports per mode announce-to-award and submit-to-start latency (p50, p99) and
throughput, in two phases: **light** load (100 tasks one at a time, each submitted once
the previous completed: the latency of the mechanism itself) and **saturated** (all tasks
at once: throughput, and latency including queueing for the 2 cores). Figures come from
the event stream after the run, so measuring costs the kernel nothing while it runs; the
market modes learn that tasks ended from the kernel's own listener (`Kernel.finished_events`),
not by reading the stream in the kernel's process. The guardian is off: this measures the
market alone.
Without ``--redis`` it starts a throwaway redis-server of its own.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec

from .bus.redis import RedisBus
from .config import (
    BusConfig,
    Config,
    GuardianConfig,
    LibrarianConfig,
    LivenessConfig,
    MarketConfig,
)
from .kernel import Kernel
from .market.records import TaskRecord, assignment_for
from .protocol import (
    Keys,
    Task,
    TaskAssigned,
    TaskCompleted,
    TaskStarted,
    decode_event,
    encode,
)
from .view import percentile

__all__ = ["MODES", "run_auction_bench"]

MODES = ("market", "broadcast", "waitall", "fixed", "fcfs")


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from .testing import RedisServer

    with RedisServer() as server:
        yield server.url


class _Worker(msgspec.Struct):
    proc: subprocess.Popen[bytes]
    log: Path  # its stderr, so a worker that dies at start can say why

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def _spawn_workers(url: str, ns: str, count: int, *, task_s: float, shared: bool) -> list[_Worker]:
    procs = []
    for i in range(count):
        argv = [
            sys.executable,
            "-m",
            "jarvis_kernel",
            "worker",
            "--id",
            f"w{i:02d}",
            "--model",
            "gemini:flash",
            "--skills",
            "bench=0.8",
            "--capacity",
            "1",
            "--redis",
            url,
            "--namespace",
            ns,
            "--executor",
            "sim",
            "--duration-s",
            str(task_s),
            "--fail-rate",
            "0",
            "--heartbeat-s",
            "0.5",
            "--exit-with-stdin",  # a bench killed midway leaves no worker behind
        ]
        if shared:
            argv += ["--take", "shared"]
        with tempfile.NamedTemporaryFile(
            prefix="jarvis-bench-", suffix=".log", delete=False
        ) as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log
            )
        procs.append(_Worker(proc, Path(log.name)))
    return procs


def _stop(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()
        if worker.proc.stdin is not None:
            worker.proc.stdin.close()
        worker.log.unlink(missing_ok=True)


async def _wait_registered(bus: RedisBus, keys: Keys, count: int, procs: list[_Worker]) -> None:
    with anyio.fail_after(60):
        while len(await bus.hgetall(keys.workers)) < count:
            for worker in procs:
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"a worker exited during start-up:\n{worker.tail()}")
            await anyio.sleep(0.05)


def _tasks(ns: str, count: int) -> list[Task]:
    return [
        Task(
            task_id=f"{ns}-{i:05d}", description="bench", required_skills=["bench"], complexity=0.3
        )
        for i in range(count)
    ]


def _figures(events: list[Any], submitted_at: dict[str, float], tasks: set[str]) -> dict[str, Any]:
    """Latencies and throughput of the tasks in `tasks`, from the event stream."""
    started: dict[str, int] = {}
    award_ms: list[float] = []
    completed_at: list[int] = []
    for event in events:
        if event.task_id not in tasks:
            continue
        if isinstance(event, TaskAssigned):
            award_ms.append(event.auction_ms)
        elif isinstance(event, TaskStarted) and event.task_id:
            started.setdefault(event.task_id, event.at_ms)
        elif isinstance(event, TaskCompleted):
            completed_at.append(event.at_ms)
    to_start = [started[t] - submitted_at[t] for t in started if t in submitted_at]
    span_s = (max(completed_at) - min(submitted_at[t] for t in tasks)) / 1000 if completed_at else 0
    return {
        "announceToAwardMs": {
            "p50": percentile(award_ms, 0.5),
            "p99": percentile(award_ms, 0.99),
            "n": len(award_ms),
        }
        if award_ms
        else None,
        "submitToStartMs": {"p50": percentile(to_start, 0.5), "p99": percentile(to_start, 0.99)},
        "throughputPerS": len(completed_at) / span_s if span_s > 0 else 0.0,
    }


async def _all_events(bus: RedisBus, keys: Keys) -> list[Any]:
    entries = await bus.xrange(keys.events)
    return [decode_event(e.fields["event"]) for e in entries]


Waiter = Callable[[set[str]], Awaitable[None]]


@contextlib.asynccontextmanager
async def _stream_ends(bus: RedisBus, keys: Keys) -> AsyncIterator[Waiter]:
    """FCFS: read the event stream as a consumer group made now (before the tasks are
    submitted) until every wanted task has completed or failed (nothing retries)."""
    group = f"bench-{uuid.uuid4().hex[:6]}"
    await bus.xgroup_create(keys.events, group, start_id="$")

    async def wait(wanted: set[str]) -> None:
        left = set(wanted)
        with anyio.fail_after(600):
            while left:
                for entry in await bus.xreadgroup(keys.events, group, "b", count=1000, block_s=1.0):
                    raw = entry.fields.get("event", b"")
                    if b'"task.completed"' in raw or b'"task.failed"' in raw:
                        left.discard(decode_event(raw).task_id or "")

    yield wait


@contextlib.asynccontextmanager
async def _kernel_ends(kernel: Kernel) -> AsyncIterator[Waiter]:
    """The market: the kernel's listener says when a task completed or died (it retries a
    failed one itself)."""
    async with kernel.finished_events() as events:

        async def wait(wanted: set[str]) -> None:
            left = set(wanted)
            with anyio.fail_after(600):
                while left:
                    left.discard((await events.receive()).task_id or "")

        yield wait


async def _submit_market(kernel: Kernel, task: Task, submitted_at: dict[str, float]) -> None:
    submitted_at[task.task_id] = time.time() * 1000
    await kernel.submit(task)


async def _submit_fcfs(
    bus: RedisBus, keys: Keys, task: Task, submitted_at: dict[str, float]
) -> None:
    now = time.time() * 1000
    submitted_at[task.task_id] = now
    await bus.lpush(keys.tasks, encode(assignment_for(TaskRecord(task=task), int(now))))


async def _phases(
    submit: Any,
    ends: contextlib.AbstractAsyncContextManager[Waiter],
    bus: RedisBus,
    keys: Keys,
    ns: str,
    light: int,
    heavy: int,
    counts: Callable[[], Mapping[str, int]] | None = None,
) -> dict[str, Any]:
    """Light load (one task at a time, closed loop), then saturation (all at once)."""
    submitted_at: dict[str, float] = {}
    light_tasks = _tasks(f"{ns}-l", light)
    heavy_tasks = _tasks(f"{ns}-h", heavy)
    async with ends as wait:
        for task in light_tasks:
            await submit(task, submitted_at)
            await wait({task.task_id})
        light_counts = dict(counts()) if counts is not None else None
        for task in heavy_tasks:
            await submit(task, submitted_at)
        await wait({t.task_id for t in heavy_tasks})
        all_counts = Counter(counts()) if counts is not None else None
    events = await _all_events(bus, keys)
    out = {
        "light": _figures(events, submitted_at, {t.task_id for t in light_tasks}),
        "saturated": _figures(events, submitted_at, {t.task_id for t in heavy_tasks}),
    }
    if light_counts is not None and all_counts is not None:  # the market's counters
        out["light"]["counts"] = light_counts
        out["saturated"]["counts"] = dict(all_counts - Counter(light_counts))
    return out


async def _run_mode(url: str, mode: str, workers: int, tasks: int, task_s: float) -> dict[str, Any]:
    ns = f"bench-{mode}-{uuid.uuid4().hex[:6]}"
    keys = Keys(ns)
    bus = RedisBus.from_url(url)
    procs = _spawn_workers(url, ns, workers, task_s=task_s, shared=mode == "fcfs")
    light = min(100, tasks)
    try:
        await _wait_registered(bus, keys, workers, procs)
        if mode == "fcfs":
            return await _phases(
                lambda t, at: _submit_fcfs(bus, keys, t, at),
                _stream_ends(bus, keys),
                bus,
                keys,
                ns,
                light,
                tasks,
            )
        market = MarketConfig(
            window_s=0.5,
            early_close=mode != "fixed",
            early_close_on_bounds=mode in ("market", "broadcast"),
            direct_announce=mode == "market",
            max_rounds=3,
            max_concurrent_auctions=256,
        )
        config = Config(
            bus=BusConfig(redis_url=url, namespace=ns),
            market=market,
            liveness=LivenessConfig(heartbeat_s=0.5, dead_after_s=3.0),
            librarian=LibrarianConfig(enabled=False),
            guardian=GuardianConfig(enabled=False),
        )
        async with Kernel.from_config(config) as kernel:
            await kernel.market.refresh_workers()
            return await _phases(
                lambda t, at: _submit_market(kernel, t, at),
                _kernel_ends(kernel),
                bus,
                keys,
                ns,
                light,
                tasks,
                lambda: kernel.market.stats.counts,
            )
    finally:
        _stop(procs)
        await bus.aclose()


async def run_auction_bench(
    *,
    workers: int,
    tasks: int,
    redis_url: str | None = None,
    modes: tuple[str, ...] = MODES,
    task_s: float = 0.0,
) -> dict[str, Any]:
    """Run the modes one after the other on one redis-server; return their figures."""
    with _redis(redis_url) as url:
        results = {mode: await _run_mode(url, mode, workers, tasks, task_s) for mode in modes}
    market, fcfs = results.get("market"), results.get("fcfs")
    ratio = None
    if market and fcfs and fcfs["saturated"]["throughputPerS"]:
        ratio = market["saturated"]["throughputPerS"] / fcfs["saturated"]["throughputPerS"]
    return {
        "workers": workers,
        "tasks": tasks,
        "taskS": task_s,
        "modes": results,
        "marketToFcfsThroughput": ratio,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
