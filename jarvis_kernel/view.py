"""`SwarmView`: what the operator sees, folded from the event stream (pure, no I/O).

The dashboard, the demo's summary and ``status`` all render a `SwarmView`. Feed it every
event in order with `apply`; it keeps counters, per-worker tallies and recent auctions.
"""

from __future__ import annotations

import statistics
from collections import Counter, deque
from typing import Any

import msgspec

from .protocol import (
    Event,
    GenericEvent,
    GuardianIntervention,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    TaskSubmitted,
)

__all__ = ["AuctionRow", "SwarmView", "WorkerTally", "percentile"]


class AuctionRow(msgspec.Struct, frozen=True):
    task_id: str
    worker_id: str
    score: float
    bids: int
    round: int
    auction_ms: float


class WorkerTally(msgspec.Struct):
    won: int = 0
    completed: int = 0
    failed: int = 0
    tokens: int = 0
    score_sum: float = 0.0


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values` by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class SwarmView:
    """Counters and recent history of a swarm, from its events."""

    def __init__(self, recent: int = 12) -> None:
        self.counts: Counter[str] = Counter()
        self.workers: dict[str, WorkerTally] = {}
        self.auctions: deque[AuctionRow] = deque(maxlen=recent)
        self.incidents: deque[GuardianIntervention] = deque(maxlen=recent)
        self.award_ms: list[float] = []
        self.submitted_ms: dict[str, int] = {}
        self.start_latency_ms: list[float] = []
        self.first_ms: int | None = None
        self.last_ms: int = 0

    def apply(self, event: Event | GenericEvent) -> None:
        kind = event.type if isinstance(event, GenericEvent) else type(event).__struct_config__.tag
        self.counts[str(kind)] += 1
        self.first_ms = event.at_ms if self.first_ms is None else self.first_ms
        self.last_ms = max(self.last_ms, event.at_ms)
        if isinstance(event, TaskSubmitted) and event.task_id:
            self.submitted_ms[event.task_id] = event.at_ms
        elif isinstance(event, TaskAssigned):
            self._assigned(event)
        elif isinstance(event, TaskStarted) and event.task_id in self.submitted_ms:
            self.start_latency_ms.append(float(event.at_ms - self.submitted_ms.pop(event.task_id)))
        elif isinstance(event, TaskProgress | TaskCompleted | TaskFailed) and event.worker_id:
            self._outcome(event)
        elif isinstance(event, GuardianIntervention):
            self.incidents.append(event)

    def _tally(self, worker_id: str) -> WorkerTally:
        return self.workers.setdefault(worker_id, WorkerTally())

    def _assigned(self, event: TaskAssigned) -> None:
        worker = event.worker_id or "?"
        tally = self._tally(worker)
        tally.won += 1
        tally.score_sum += event.score
        self.award_ms.append(event.auction_ms)
        self.auctions.append(
            AuctionRow(
                event.task_id or "?", worker, event.score, event.bids, event.round, event.auction_ms
            )
        )

    def _outcome(self, event: TaskProgress | TaskCompleted | TaskFailed) -> None:
        tally = self._tally(event.worker_id or "?")
        if isinstance(event, TaskProgress):
            tally.tokens += event.token_usage
        elif isinstance(event, TaskCompleted):
            tally.completed += 1
            tally.tokens += event.token_usage
        else:
            tally.failed += 1

    @property
    def throughput_per_s(self) -> float:
        done = self.counts["task.completed"]
        span_s = (self.last_ms - (self.first_ms or self.last_ms)) / 1000
        return done / span_s if span_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """Plain data for `--json` and the benchmark."""
        return {
            "counts": dict(self.counts),
            "awardMs": {
                "p50": percentile(self.award_ms, 0.5),
                "p99": percentile(self.award_ms, 0.99),
                "mean": statistics.fmean(self.award_ms) if self.award_ms else 0.0,
            },
            "submitToStartMs": {
                "p50": percentile(self.start_latency_ms, 0.5),
                "p99": percentile(self.start_latency_ms, 0.99),
            },
            "throughputPerS": self.throughput_per_s,
            "workers": {w: msgspec.to_builtins(t) for w, t in sorted(self.workers.items())},
        }
