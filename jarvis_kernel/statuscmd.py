"""``status``: a running swarm as Redis shows it — workers, tasks, queues, auctions, incidents.

`read_status` gathers (I/O only), `status_report` shapes plain data (pure), `render_status`
draws rich tables. ``status --json`` prints the report; its shape is `STATUS_SHAPE`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Final, get_args

import msgspec
from rich.console import Group
from rich.table import Table

from .bus import Bus, StreamEntry
from .control import paused_info
from .errors import ProtocolError
from .market.records import LiveState, TaskRecord
from .protocol import (
    Event,
    GenericEvent,
    GuardianIntervention,
    Keys,
    PauseInfo,
    TaskAssigned,
    WorkerInfo,
    decode,
    decode_event,
)
from .view import SwarmView

__all__ = ["STATUS_SHAPE", "read_status", "render_status", "status_report"]

STATUS_SHAPE: Final = """\
status --json prints one object:
  {"namespace": str, "atMs": int,
   "paused": null | {"reason": str, "atMs": int, "by": str},
   "workers": [{"workerId": str, "model": str, "alive": bool,
                "heartbeatAgeS": float | null, "load": int, "capacity": int,
                "topExpertise": {skill: weight}}],          # by workerId
   "tasks": {"queued", "auctioning", "assigned", "running", "fallback",
             "unreadable", "total": int},                   # the kernel's live tasks
   "queues": {"intake": int, "shared": int, "deadletter": int},
   "recentAuctions": [{"taskId", "workerId", "score", "bids", "round",
                       "auctionMs"}],                       # newest first
   "incidents": [{"atMs", "level", "action", "reason", "taskId", "workerId",
                  "incidentId"}]}                           # guardian.intervention, newest first"""

_PAGE: Final = 500
_SCAN_LIMIT: Final = 20_000  # events read back at most, looking for recent auctions/incidents
_TOP_SKILLS: Final = 3


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What `read_status` read, raw: the input of the pure `status_report`."""

    namespace: str
    now_ms: int
    workers: dict[str, bytes]
    heartbeats: dict[str, float]
    load: dict[str, bytes]
    live: dict[str, bytes]
    queues: dict[str, int]
    paused: PauseInfo | None
    view: Any  # SwarmView: recent auctions and interventions, oldest first


async def read_status(bus: Bus, keys: Keys, *, now_ms: int, recent: int = 10) -> Snapshot:
    """Read every key `status` shows, and the last `recent` auctions and interventions."""
    return Snapshot(
        namespace=keys.namespace,
        now_ms=now_ms,
        workers=await bus.hgetall(keys.workers),
        heartbeats=dict(await bus.zrangebyscore(keys.heartbeats, float("-inf"), float("inf"))),
        load=await bus.hgetall(keys.load),
        live=await bus.hgetall(keys.internal("live")),
        queues={
            "intake": await bus.llen(keys.intake),
            "shared": await bus.llen(keys.tasks),
            "deadletter": await bus.llen(keys.deadletter),
        },
        paused=await paused_info(bus, keys),
        view=await _recent_events(bus, keys, recent),
    )


async def _recent_events(bus: Bus, keys: Keys, recent: int) -> SwarmView:
    """The newest `recent` auctions and interventions, read backwards from the stream's end."""
    picked: list[Event | GenericEvent] = []
    end, scanned, counts = "+", 0, Counter[type]()
    while scanned < _SCAN_LIMIT:
        entries = await bus.xrevrange(keys.events, end, count=_PAGE)
        scanned += len(entries)
        for entry in entries:
            event = _decode(entry)
            if isinstance(event, TaskAssigned | GuardianIntervention):
                picked.append(event)
                counts[type(event)] += 1
        if (
            len(entries) < _PAGE
            or min(counts[TaskAssigned], counts[GuardianIntervention]) >= recent
        ):
            break
        end = "(" + entries[-1].id
    view = SwarmView(recent=recent)
    for event in reversed(picked):
        view.apply(event)
    return view


def _decode(entry: StreamEntry) -> Event | GenericEvent | None:
    try:
        return decode_event(entry.fields.get("event", b""))
    except ProtocolError:
        return None


# --------------------------------------------------------------------------- shaping (pure)


def status_report(snap: Snapshot, *, dead_after_s: float) -> dict[str, Any]:
    """The plain-data status (`STATUS_SHAPE`)."""
    view: SwarmView = snap.view
    return {
        "namespace": snap.namespace,
        "atMs": snap.now_ms,
        "paused": None if snap.paused is None else msgspec.to_builtins(snap.paused),
        "workers": _workers(snap, dead_after_s),
        "tasks": _tasks(snap.live),
        "queues": dict(snap.queues),
        "recentAuctions": [
            {
                "taskId": row.task_id,
                "workerId": row.worker_id,
                "score": row.score,
                "bids": row.bids,
                "round": row.round,
                "auctionMs": row.auction_ms,
            }
            for row in reversed(view.auctions)
        ],
        "incidents": [
            {
                "atMs": i.at_ms,
                "level": i.level,
                "action": i.action,
                "reason": i.reason,
                "taskId": i.task_id,
                "workerId": i.worker_id,
                "incidentId": i.incident_id,
            }
            for i in reversed(view.incidents)
        ],
    }


def _workers(snap: Snapshot, dead_after_s: float) -> list[dict[str, Any]]:
    rows = []
    for worker_id in sorted(set(snap.workers) | set(snap.heartbeats)):
        info = _worker_info(worker_id, snap.workers.get(worker_id))
        beat = snap.heartbeats.get(worker_id)
        age_s = None if beat is None else max(0.0, (snap.now_ms - beat) / 1000)
        top = sorted(info.expertise.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP_SKILLS]
        rows.append(
            {
                "workerId": worker_id,
                "model": info.model,
                "alive": age_s is not None and age_s < dead_after_s,
                "heartbeatAgeS": age_s,
                "load": _int(snap.load.get(worker_id)),
                "capacity": info.capacity,
                "topExpertise": dict(top),
            }
        )
    return rows


def _worker_info(worker_id: str, raw: bytes | None) -> WorkerInfo:
    if raw is not None:
        try:
            return decode(raw, WorkerInfo)
        except ProtocolError:
            pass  # shown with what is known: its id and heartbeat
    return WorkerInfo(worker_id=worker_id, model="?")


def _int(raw: bytes | None) -> int:
    try:
        return int(raw or 0)
    except ValueError:
        return 0


def _tasks(live: Mapping[str, bytes]) -> dict[str, int]:
    counts = dict.fromkeys(get_args(LiveState), 0) | {"unreadable": 0}
    for raw in live.values():
        try:
            counts[decode(raw, TaskRecord).state] += 1
        except ProtocolError:
            counts["unreadable"] += 1
    return counts | {"total": len(live)}


# --------------------------------------------------------------------------- rendering


def render_status(report: Mapping[str, Any]) -> Group:
    """Rich tables of a `status_report`."""
    paused = report["paused"]
    head = f"namespace [bold]{report['namespace']}[/]  " + (
        f"[bold red]PAUSED[/] by {paused['by'] or '?'}: {paused['reason']}"
        if paused
        else "[green]running[/]"
    )
    tasks = "  ".join(f"{k} {v}" for k, v in report["tasks"].items() if v or k == "total")
    queues = "  ".join(f"{k} {v}" for k, v in report["queues"].items())
    return Group(
        head,
        _workers_table(report["workers"]),
        f"tasks: {tasks}\nqueues: {queues}",
        _auctions_table(report["recentAuctions"]),
        _incidents_table(report["incidents"]),
    )


def _workers_table(workers: list[dict[str, Any]]) -> Table:
    table = Table(title="workers", expand=True)
    for col in ("worker", "alive", "model", "load", "heartbeat", "top expertise"):
        table.add_column(col)
    for w in workers:
        age = w["heartbeatAgeS"]
        table.add_row(
            w["workerId"],
            "[green]yes[/]" if w["alive"] else "[red]no[/]",
            w["model"],
            f"{w['load']}/{w['capacity']}",
            "-" if age is None else f"{age:.1f} s ago",
            ", ".join(f"{k} {v:.2f}" for k, v in w["topExpertise"].items()),
        )
    return table


def _auctions_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="recent auctions", expand=True)
    for col in ("task", "winner", "score", "bids", "round", "ms"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["taskId"],
            r["workerId"],
            f"{r['score']:.2f}",
            str(r["bids"]),
            str(r["round"]),
            f"{r['auctionMs']:.2f}",
        )
    return table


def _incidents_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="recent guardian interventions", expand=True)
    for col in ("level", "action", "task", "worker", "reason"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["level"]), r["action"], r["taskId"] or "", r["workerId"] or "", r["reason"]
        )
    return table
