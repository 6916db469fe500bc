"""``python -m jarvis_kernel worker``: one worker process speaking the protocol over Redis.

    python -m jarvis_kernel worker --id W --model gemini:flash --skills react=0.9,auth=0.4 \\
        --capacity 1 --redis redis://localhost:6379/0 [--namespace NS] --executor sim

Executor options come from ``--options JSON`` (the ``options`` table of a ``[[workers]]``
entry), overridden by ``--allow PROG`` (repeatable) and ``--workspace DIR`` (command),
``--python-target MOD:FN`` (python), ``--llm-base-url URL`` and ``--llm-model NAME`` (llm).

Signals: SIGTERM or SIGINT drain (finish the tasks in hand, deregister, exit 0; a second
one exits at once), SIGUSR1 writes a ``worker.state`` event. With ``--exit-with-stdin`` the
worker exits at once, as if killed, when its standard input reaches end of file: the
process that started it holds the other end, so the worker does not outlive a kernel that
is killed (the tasks in hand stay in ``processing:<id>``, which the kernel takes back when
it starts the worker again). Once registered and listening
the process prints ``READY_LINE <id>`` on stdout, which `ProcessRuntime` waits for.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec

from ..bus import open_bus
from ..clock import SystemClock
from ..config import Config, WorkerConfig, load_config
from ..errors import ConfigError
from ..protocol import Keys
from .agent import WorkerAgent
from .executors import Executor, make_executor

__all__ = ["READY_LINE", "parse_skills", "register"]

READY_LINE = "jarvis-worker ready"

log = logging.getLogger(__name__)


def parse_skills(text: str) -> dict[str, float]:
    """``react=0.9,auth=0.4`` -> ``{"react": 0.9, "auth": 0.4}``; weights in [0, 1]."""
    skills: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, weight = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"{item!r}: expected SKILL=WEIGHT, e.g. react=0.9")
        try:
            value = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r}: the weight {weight.strip()!r} is not a number"
            ) from None
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise argparse.ArgumentTypeError(f"{item!r}: the weight must be between 0 and 1")
        if name in skills:
            raise argparse.ArgumentTypeError(f"skill {name!r} is given twice")
        skills[name] = value
    return skills


def register(subparsers: Any) -> None:
    """Add the ``worker`` command."""
    p = subparsers.add_parser("worker", help="run one worker against a Redis bus")
    p.add_argument("--id", required=True, help="the worker id")
    p.add_argument("--model", default="gemini:flash", help="its model (default gemini:flash)")
    p.add_argument(
        "--skills", type=parse_skills, default={}, help="expertise, e.g. react=0.9,auth=0.4"
    )
    p.add_argument("--capacity", type=int, default=1, help="tasks at once (default 1)")
    p.add_argument("--redis", metavar="URL", help="Redis URL (default: $JARVIS_REDIS_URL)")
    p.add_argument("--namespace", help="key namespace (default jarvis)")
    p.add_argument("--executor", default="sim", help="executor (default sim)")
    p.add_argument("--duration-s", type=float, help="sim: fixed task duration")
    p.add_argument("--fail-rate", type=float, default=0.0, help="sim: extra failure rate")
    p.add_argument("--seed", type=int, help="sim: random seed")
    p.add_argument(
        "--options", metavar="JSON", type=_json_object, default={}, help="executor options"
    )
    p.add_argument(
        "--allow", action="append", metavar="PROGRAM", help="command: allow a program (repeat)"
    )
    p.add_argument("--workspace", metavar="DIR", help="command: where commands run")
    p.add_argument("--python-target", metavar="MOD:FN", help="python: the function to call")
    p.add_argument("--llm-base-url", metavar="URL", help="llm: e.g. http://127.0.0.1:11434/v1")
    p.add_argument("--llm-model", metavar="NAME", help="llm: the model to ask")
    p.add_argument("--memory", metavar="DIR", help="memory folder (default: config, .memory)")
    p.add_argument("--heartbeat-s", type=float, help="heartbeat period (default 1.0)")
    p.add_argument("--config", metavar="FILE", help="a jarvis TOML config file")
    p.add_argument(
        "--take",
        choices=["own", "shared"],
        default="own",
        help="own: bid and take awarded tasks (default); shared: plain FCFS from <ns>:tasks",
    )
    p.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="exit at once (no drain) when stdin reaches EOF: the parent is gone",
    )
    p.set_defaults(handler=_handle)


def _settings(args: argparse.Namespace) -> tuple[Config, WorkerConfig]:
    overrides: dict[str, Any] = {}
    if args.redis:
        overrides["bus.redis_url"] = args.redis
    if args.namespace:
        overrides["bus.namespace"] = args.namespace
    if args.heartbeat_s is not None:
        overrides["liveness.heartbeat_s"] = args.heartbeat_s
    config = load_config(args.config, overrides=overrides)
    if not config.bus.redis_url:
        raise ConfigError("the worker needs a Redis bus: --redis URL or JARVIS_REDIS_URL")
    fields = {
        "id": args.id,
        "model": args.model,
        "expertise": args.skills,
        "capacity": args.capacity,
        "runtime": "process",
        "executor": args.executor,
        "duration_s": args.duration_s,
        "fail_rate": args.fail_rate,
        "take": args.take,
        "options": _executor_options(args),
    }
    try:
        spec = msgspec.convert(fields, WorkerConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"worker: {exc}", source="command line") from exc
    return config, spec


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _executor_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--options`` JSON, overridden by the per-executor flags that are given."""
    options = dict(args.options)
    flags = {
        "allow": args.allow,
        "workspace": args.workspace,
        "target": args.python_target,
        "base_url": args.llm_base_url,
        "model": args.llm_model,
    }
    options.update({key: value for key, value in flags.items() if value is not None})
    return options


def _handle(args: argparse.Namespace) -> int:
    config, spec = _settings(args)
    executor = make_executor(spec, seed=args.seed)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s worker {spec.id} %(name)s: %(message)s",
    )
    memory_dir = Path(args.memory or config.memory_dir)
    from ..cli import run_async

    run_async(_main, config, spec, executor, memory_dir, args.exit_with_stdin)
    return 0


async def _main(
    config: Config,
    spec: WorkerConfig,
    executor: Executor,
    memory_dir: Path,
    exit_with_stdin: bool,
) -> None:
    async with open_bus(
        config.bus.redis_url, reconnect_timeout_s=config.bus.reconnect_timeout_s
    ) as bus:
        agent = WorkerAgent(
            spec,
            bus=bus,
            keys=Keys(config.bus.namespace),
            clock=SystemClock(),
            scoring=config.scoring,
            liveness=config.liveness,
            memory_dir=memory_dir,
            executor=executor,
            events_maxlen=config.bus.events_maxlen,
            take=spec.take,
        )
        await _serve(agent, exit_with_stdin=exit_with_stdin)


async def _serve(agent: WorkerAgent, *, exit_with_stdin: bool = False) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as received:
        async with anyio.create_task_group() as tg:

            async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                await agent.run(task_status=task_status)
                tg.cancel_scope.cancel()

            tg.start_soon(_on_signals, received, agent, tg.cancel_scope)
            if exit_with_stdin:
                tg.start_soon(_exit_at_stdin_eof, tg.cancel_scope)
            await tg.start(run)
            print(f"{READY_LINE} {agent.worker_id}", flush=True)


async def _exit_at_stdin_eof(scope: anyio.CancelScope) -> None:
    """Cancel `scope` (exit without drain) once stdin is at EOF; what arrives is dropped."""
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    while True:
        await anyio.wait_readable(fd)
        try:
            if not os.read(fd, 4096):
                break
        except BlockingIOError:
            continue
    log.warning("stdin closed: the process that started this worker is gone; exiting")
    scope.cancel()


async def _on_signals(
    received: AsyncIterator[signal.Signals], agent: WorkerAgent, scope: anyio.CancelScope
) -> None:
    async for signum in received:
        if signum == signal.SIGUSR1:
            await agent.dump()
        elif agent.stopping:
            log.warning("second %s: exiting without drain", signal.Signals(signum).name)
            scope.cancel()
        else:
            log.info("%s: draining", signal.Signals(signum).name)
            agent.request_stop(f"signal {signal.Signals(signum).name}")
