"""The standard auction-latency table: 4 and 16 workers, market vs fixed window vs FCFS.

``market`` closes windows early on bounds and announces to the likeliest winner first;
``broadcast`` is the same announcing to every worker, and ``waitall`` the same kernel waiting
for every eligible worker (``market.early_close_on_bounds = false``): the same-run baselines
of those changes (``jarvis_kernel/bench.py``).

    python benchmarks/auction_latency.py [--tasks 500] [--repeats 3] [--redis URL]

Every mode of one repeat runs on the same redis-server; the figures reported are the medians
over the repeats (the machine is shared and noisy). Each mode runs a light phase (tasks one
at a time: the mechanism's latency) and a saturated one (all at once: throughput). Record
the figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import anyio

from jarvis_kernel.bench import MODES, run_auction_bench


def _median(runs: list[dict[str, Any]], mode: str, phase: str, *path: str) -> float:
    values = []
    for run in runs:
        node: Any = run["modes"][mode][phase]
        for key in path:
            node = node[key] if node is not None else None
        if node is not None:
            values.append(float(node))
    return statistics.median(values) if values else float("nan")


def _ratio(run: dict[str, Any], mode: str) -> float:
    """Saturated throughput of `mode` over FCFS's, in the same run."""
    modes = run["modes"]
    return float(
        modes[mode]["saturated"]["throughputPerS"] / modes["fcfs"]["saturated"]["throughputPerS"]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="4,16")
    parser.add_argument("--task-s", type=float, default=0.0)
    parser.add_argument("--redis")
    args = parser.parse_args()
    table = []
    for workers in (int(w) for w in args.workers.split(",")):
        runs = [
            anyio.run(
                lambda w=workers: run_auction_bench(
                    workers=w, tasks=args.tasks, redis_url=args.redis, task_s=args.task_s
                )
            )
            for _ in range(args.repeats)
        ]
        for mode in MODES:
            for phase in ("light", "saturated"):
                table.append(
                    {
                        "workers": workers,
                        "mode": mode,
                        "phase": phase,
                        "award_p50_ms": _median(runs, mode, phase, "announceToAwardMs", "p50"),
                        "award_p99_ms": _median(runs, mode, phase, "announceToAwardMs", "p99"),
                        "start_p50_ms": _median(runs, mode, phase, "submitToStartMs", "p50"),
                        "start_p99_ms": _median(runs, mode, phase, "submitToStartMs", "p99"),
                        "tasks_per_s": _median(runs, mode, phase, "throughputPerS"),
                    }
                )
        for mode in (m for m in MODES if m not in ("fixed", "fcfs")):
            ratios = [_ratio(run, mode) for run in runs]
            table.append(
                {
                    "workers": workers,
                    "mode": f"{mode}/fcfs throughput (median of the repeats' ratios)",
                    "ratio": statistics.median(ratios),
                    "ratios": ratios,
                }
            )
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
