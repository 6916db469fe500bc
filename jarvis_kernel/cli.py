"""Command line: the only place that touches signals, `anyio.run` and the terminal.

Each subcommand lives in a module with ``register(subparsers)``; the parser it adds sets
``handler`` to a function ``(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio

from . import __version__
from .errors import ConfigError, JarvisError

T = TypeVar("T")

# Modules whose `register(subparsers)` adds subcommands, in the order --help lists them.
_COMMAND_MODULES = (
    "jarvis_kernel.cli",
    "jarvis_kernel.opscmd",
    "jarvis_kernel.librarian.cli",
    "jarvis_kernel.worker.cli",
)


def run_async(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """`anyio.run` on uvloop when it is installed (``JARVIS_UVLOOP=0`` turns it off).

    uvloop is optional: measured 5-15% lower award latency here, within the noise of a
    shared machine (benchmarks/RESULTS.md), so it is not a dependency.
    """
    wanted = os.environ.get("JARVIS_UVLOOP", "auto").strip().lower()
    options: dict[str, Any] = {}
    if wanted not in {"0", "false", "no"}:
        if importlib.util.find_spec("uvloop") is not None:
            options = {"use_uvloop": True}
        elif wanted in {"1", "true", "yes"}:
            raise ConfigError("JARVIS_UVLOOP=1 but uvloop is not installed")
    return anyio.run(fn, *args, backend_options=options)


def register(subparsers: Any) -> None:
    """The kernel's own subcommands."""
    run = subparsers.add_parser("run", help="run the kernel and its workers")
    run.add_argument("--config", help="TOML file (see examples/)")
    run.add_argument("--redis", help="Redis URL (default: in-memory bus)")
    run.add_argument("--namespace", help="key namespace (default: jarvis)")
    run.add_argument("--no-workers", action="store_true", help="serve foreign workers only")
    run.add_argument("--demo", action="store_true", help="a small swarm on the embedded default")
    run.add_argument("--demo-tasks", type=int, default=40, help="tasks the demo submits")
    run.add_argument(
        "--duration-s",
        type=float,
        default=None,
        help="stop after this long (the demo spreads its tasks over it; default 15)",
    )
    run.add_argument("--log-format", choices=["rich", "plain", "json"], default=None)
    run.add_argument("--json", action="store_true", help="print the final summary as JSON")
    run.set_defaults(handler=_cmd_run)

    bench = subparsers.add_parser("bench", help="benchmarks (auction latency)")
    kinds = bench.add_subparsers(dest="bench", metavar="KIND", required=True)
    auction = kinds.add_parser("auction", help="market vs fixed window vs FCFS on real Redis")
    auction.add_argument("--workers", type=int, default=4)
    auction.add_argument("--tasks", type=int, default=500)
    auction.add_argument("--redis", help="Redis URL (default: a throwaway redis-server)")
    auction.add_argument("--modes", default="market,fixed,fcfs")
    auction.add_argument("--task-s", type=float, default=0.0, help="simulated work per task")
    auction.add_argument("--json", action="store_true")
    auction.set_defaults(handler=_cmd_bench_auction)


def _cmd_bench_auction(args: argparse.Namespace) -> int:
    import json

    from .bench import MODES, run_auction_bench

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ConfigError(f"--modes: unknown {sorted(unknown)}; expected some of {list(MODES)}")
    result = run_async(
        lambda: run_auction_bench(
            workers=args.workers,
            tasks=args.tasks,
            redis_url=args.redis,
            modes=modes,
            task_s=args.task_s,
        )
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"auction bench: {args.workers} workers, {args.tasks} tasks")
    for col in (
        "mode",
        "phase",
        "award p50 ms",
        "award p99 ms",
        "start p50 ms",
        "start p99 ms",
        "tasks/s",
    ):
        table.add_column(col, justify="right")
    for mode, phases in result["modes"].items():
        for phase, r in phases.items():
            award = r["announceToAwardMs"] or {"p50": float("nan"), "p99": float("nan")}
            start = r["submitToStartMs"]
            table.add_row(
                mode,
                phase,
                f"{award['p50']:.3f}",
                f"{award['p99']:.3f}",
                f"{start['p50']:.1f}",
                f"{start['p99']:.1f}",
                f"{r['throughputPerS']:.0f}",
            )
    Console().print(table)
    if result["marketToFcfsThroughput"] is not None:
        print(f"market / fcfs throughput: {result['marketToFcfsThroughput']:.2f}")
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    found = {
        "bus.redis_url": getattr(args, "redis", None),
        "bus.namespace": getattr(args, "namespace", None),
        "log_format": getattr(args, "log_format", None),
    }
    return {k: v for k, v in found.items() if v is not None}


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .demo import demo_config

    base = demo_config() if args.demo else None
    config = load_config(args.config, overrides=_overrides(args), base=base)
    run_async(_run, config, args)
    return 0


async def _run(config: Any, args: argparse.Namespace) -> None:
    import logging

    from rich.console import Console

    from . import runcmd
    from .kernel import Kernel
    from .view import SwarmView

    console = Console(stderr=False)
    live_ui = config.log_format == "rich" and console.is_terminal and not args.json
    fmt = "plain" if config.log_format == "rich" else config.log_format
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    view = SwarmView()

    def on_event(event: Any) -> None:
        line = None if live_ui or args.json else runcmd.log_line(event, fmt)
        if line:
            print(line, flush=True)

    duration = args.duration_s if args.duration_s is not None else (15.0 if args.demo else None)
    kernel = Kernel.from_config(config, start_workers=not args.no_workers)
    async with kernel:
        logging.getLogger("jarvis_kernel").info(
            "kernel ready: namespace %s, %d worker(s) started",
            kernel.keys.namespace,
            0 if args.no_workers else len(config.workers),
        )
        follower = runcmd.EventFollower(kernel.bus, kernel.keys, view, on_event)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            tg.start_soon(follower.run)
            if live_ui:
                tg.start_soon(_live, console, view, kernel)
            if args.demo:
                await runcmd.feed_demo(kernel, count=args.demo_tasks, over_s=duration or 15.0)
                tg.cancel_scope.cancel()
            elif duration is not None:
                await anyio.sleep(duration)
                tg.cancel_scope.cancel()
        await follower.poll()  # the last moments, before the summary
    runcmd.show(console, view, kernel, args.json)


async def _live(console: Any, view: Any, kernel: Any) -> None:
    from rich.live import Live

    from . import runcmd

    with Live(runcmd.render(view, kernel), console=console, refresh_per_second=4) as live:
        while True:
            await anyio.sleep(0.25)
            live.update(runcmd.render(view, kernel))


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jarvis_kernel",
        description="Orchestration kernel for swarms of AI coding agents.",
    )
    parser.add_argument("--version", action="version", version=f"jarvis-kernel {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        if name == __name__ or name == "jarvis_kernel.cli":
            register(subparsers)
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # not built yet
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        sys.exit(2)
    try:
        code = handler(args)
    except JarvisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)
