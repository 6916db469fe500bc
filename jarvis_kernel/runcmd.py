"""``run``: the kernel as a program — its dashboard, its logs and the demo feed.

Rendering is here; signals and `anyio.run` stay in `cli.py`.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import anyio
from rich.console import Console, Group
from rich.table import Table

from .bus import Bus
from .demo import demo_tasks
from .errors import ProtocolError
from .kernel import Kernel
from .protocol import (
    Keys,
    TaskAssigned,
    TaskCompleted,
    TaskDead,
    TaskFailed,
    decode_event,
)
from .view import SwarmView, percentile

__all__ = ["EventFollower", "feed_demo", "log_line", "render", "render_summary", "show"]

log = logging.getLogger("jarvis_kernel")


class EventFollower:
    """Folds every new event of the stream into a `SwarmView` (and hands it to `on_event`)."""

    def __init__(self, bus: Bus, keys: Keys, view: SwarmView, on_event: Any) -> None:
        self.bus, self.keys, self.view, self.on_event = bus, keys, view, on_event
        self.last = "0-0"

    async def poll(self) -> None:
        """Read what is new since the last poll, however much it is."""
        while True:
            entries = await self.bus.xrange(self.keys.events, start=self.last, count=1000)
            fresh = [e for e in entries if e.id != self.last]
            for entry in fresh:
                self.last = entry.id
                try:
                    event = decode_event(entry.fields.get("event", b""))
                except ProtocolError:
                    continue  # a bad event is the kernel's to reject, not the dashboard's
                self.view.apply(event)
                self.on_event(event)
            if len(entries) < 1000:
                return

    async def run(self, *, every_s: float = 0.2) -> None:
        while True:
            await self.poll()
            await anyio.sleep(every_s)


def log_line(event: Any, fmt: str) -> str | None:
    """One log line for the events worth a line; None for the rest."""
    if not isinstance(event, TaskAssigned | TaskCompleted | TaskFailed | TaskDead):
        return None
    kind = type(event).__struct_config__.tag
    if fmt == "json":
        import msgspec

        return msgspec.json.encode(event).decode()
    detail = ""
    if isinstance(event, TaskAssigned):
        detail = (
            f"score={event.score:.2f} bids={event.bids} round={event.round} "
            f"auction={event.auction_ms:.2f}ms"
        )
    elif isinstance(event, TaskFailed):
        detail = f"error={event.error_key}"
    return f"{kind:<15} {event.task_id:<12} {event.worker_id or '':<10} {detail}"


def render(view: SwarmView, kernel: Kernel) -> Group:
    """The live dashboard: workers, recent auctions, counters."""
    workers = Table(title="workers", expand=True)
    for col in ("worker", "won", "done", "failed", "tokens", "mean score"):
        workers.add_column(col, justify="right" if col != "worker" else "left")
    for worker_id, t in sorted(view.workers.items()):
        mean = t.score_sum / t.won if t.won else 0.0
        workers.add_row(
            worker_id, str(t.won), str(t.completed), str(t.failed), str(t.tokens), f"{mean:.2f}"
        )
    auctions = Table(title="recent auctions", expand=True)
    for col in ("task", "winner", "score", "bids", "round", "ms"):
        auctions.add_column(col)
    for row in reversed(view.auctions):
        auctions.add_row(
            row.task_id,
            row.worker_id,
            f"{row.score:.2f}",
            str(row.bids),
            str(row.round),
            f"{row.auction_ms:.2f}",
        )
    stats = kernel.stats()
    c = view.counts
    line = (
        f"submitted {c['task.submitted']}  assigned {c['task.assigned']}  "
        f"completed {c['task.completed']}  failed {c['task.failed']}  "
        f"fallback {c['task.fallback']}  dead {c['task.dead']}  |  "
        f"queued {stats['queued']}  open auctions {stats['openAuctions']}  |  "
        f"award p50 {percentile(view.award_ms, 0.5):.2f} ms  "
        f"p99 {percentile(view.award_ms, 0.99):.2f} ms" + ("  |  PAUSED" if stats["paused"] else "")
    )
    return Group(workers, auctions, line)


def render_summary(view: SwarmView) -> Table:
    table = Table(title="summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    s = view.summary()
    for kind in (
        "task.submitted",
        "task.assigned",
        "task.completed",
        "task.failed",
        "task.requeued",
        "task.fallback",
        "task.dead",
    ):
        table.add_row(kind, str(view.counts[kind]))
    table.add_row(
        "announce-to-award p50 / p99 (ms)", f"{s['awardMs']['p50']:.2f} / {s['awardMs']['p99']:.2f}"
    )
    table.add_row(
        "submit-to-start p50 / p99 (ms)",
        f"{s['submitToStartMs']['p50']:.0f} / {s['submitToStartMs']['p99']:.0f}",
    )
    table.add_row("throughput (tasks/s)", f"{s['throughputPerS']:.2f}")
    for worker_id, t in sorted(view.workers.items()):
        table.add_row(f"worker {worker_id}", f"won {t.won}, done {t.completed}, failed {t.failed}")
    return table


async def feed_demo(kernel: Kernel, *, count: int, over_s: float) -> None:
    """Submit the demo's tasks evenly over `over_s` seconds, then wait until they have all ended."""
    tasks = demo_tasks(count)
    async with kernel.finished_events() as finished:
        for task in tasks:
            await kernel.submit(task)
            await anyio.sleep(over_s / max(1, count))
        ended: set[str] = set()
        with anyio.move_on_after(over_s + 30):
            async for event in finished:
                ended.add(event.task_id or "")
                if len(ended) >= len(tasks):
                    break


def show(console: Console, view: SwarmView, kernel: Kernel, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(view.summary(), indent=2) + "\n")
    else:
        console.print(render_summary(view))
