"""The operator's commands: ``submit``, ``status``, ``pause``, ``resume``, ``incidents``.

All but ``incidents`` talk to a running kernel through Redis (``--redis`` /
``JARVIS_REDIS_URL`` / ``bus.redis_url`` in ``--config``); ``incidents`` reads
``<memory>/incidents.jsonl``. Handlers are ``(args) -> exit code``; `cli.run_async` runs the
async parts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TextIO

import anyio

from .bus import Bus, open_bus
from .clock import SystemClock
from .config import Config, load_config
from .errors import BusError, ConfigError, JarvisError, ProtocolError
from .protocol import (
    Keys,
    MessageRejected,
    Task,
    TaskCompleted,
    TaskDead,
    TaskFailed,
    decode,
    decode_event,
    encode,
)
from .statuscmd import STATUS_SHAPE

__all__ = ["CommandError", "build_task", "read_incidents", "register", "submit_task"]

# exit codes of `submit --wait`
EXIT_DEAD: Final = 1
EXIT_TIMEOUT: Final = 3
_CONNECT_TIMEOUT_S: Final = 10.0  # an operator's command gives up on Redis sooner than a kernel
_FLAGS: Final = {
    "taskId": "--id",
    "description": "description",
    "requiredSkills": "--skills",
    "complexity": "--complexity",
    "files": "--files",
    "requiredModel": "--model",
    "priority": "--priority",
    "timeoutS": "--timeout-s",
    "maxAttempts": "--max-attempts",
    "projectId": "--project",
    "payload": "--payload",
}
_ERROR_TAIL = re.compile(r" - at `\$[^`]*`$")


class CommandError(JarvisError):
    """An operator's command cannot do what was asked (the message says why)."""


# --------------------------------------------------------------------------- parsers


def register(subparsers: Any) -> None:
    """``submit``, ``status``, ``pause``, ``resume``, ``incidents``."""
    submit = subparsers.add_parser("submit", help="submit a task to a running kernel")
    _bus_options(submit)
    submit.add_argument("description", help="what to do")
    submit.add_argument("--id", help="task id (default t-<8 hex>)")
    submit.add_argument("--skills", default="", help="required skills, comma-separated")
    submit.add_argument("--complexity", type=float, default=0.5, help="0.0 .. 1.0")
    submit.add_argument("--payload", help="JSON object for the worker's executor")
    submit.add_argument("--priority", type=int, default=0, help="higher first")
    submit.add_argument("--files", default="", help="files the task touches, comma-separated")
    submit.add_argument("--model", help="only workers of this model may win (requiredModel)")
    submit.add_argument("--max-attempts", type=int, default=3)
    submit.add_argument("--timeout-s", type=float, help="hard limit for one attempt")
    submit.add_argument("--project", help="project id")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait for the end: print the result (exit 0) or why it died (exit 1)",
    )
    submit.add_argument(
        "--timeout-s-wait", type=float, help="give up waiting after this long (exit 3)"
    )
    submit.set_defaults(handler=_cmd_submit)

    status = subparsers.add_parser(
        "status",
        help="workers, tasks, queues, recent auctions and incidents of a running swarm",
        epilog=STATUS_SHAPE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _bus_options(status)
    status.add_argument("--json", action="store_true", help="one JSON object (shape below)")
    status.add_argument("--recent", type=int, default=10, help="auctions/incidents to show")
    status.set_defaults(handler=_cmd_status)

    pause = subparsers.add_parser("pause", help="pause the swarm: no new auction, no new task")
    _bus_options(pause)
    pause.add_argument("--reason", default="paused by the operator")
    pause.add_argument("--by", default="operator", help="who pauses (recorded)")
    pause.set_defaults(handler=_cmd_pause)

    resume = subparsers.add_parser("resume", help="resume a paused swarm")
    _bus_options(resume)
    resume.add_argument("--reason", default="")
    resume.set_defaults(handler=_cmd_resume)

    incidents = subparsers.add_parser("incidents", help="the guardian's incidents.jsonl")
    incidents.add_argument("--config", help="TOML file (for memory_dir)")
    incidents.add_argument("--memory", help="memory folder (default: memory_dir, .memory)")
    incidents.add_argument("--json", action="store_true", help="a JSON list")
    incidents.add_argument("--last", type=int, default=None, help="only the last N")
    incidents.set_defaults(handler=_cmd_incidents)


def _bus_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file (see examples/)")
    parser.add_argument("--redis", help="Redis URL (or JARVIS_REDIS_URL)")
    parser.add_argument("--namespace", help="key namespace (default: jarvis)")


def _bus_config(args: argparse.Namespace) -> Config:
    found = {"bus.redis_url": args.redis, "bus.namespace": args.namespace}
    config = load_config(args.config, overrides={k: v for k, v in found.items() if v})
    if not config.bus.redis_url:
        raise ConfigError(
            f"`{args.command}` needs a Redis bus: the in-memory bus lives inside one process. "
            "Pass --redis URL, set JARVIS_REDIS_URL, or set bus.redis_url in --config",
            key="bus.redis_url",
        )
    return config


@asynccontextmanager
async def _open(config: Config) -> AsyncIterator[Bus]:
    assert config.bus.redis_url is not None
    async with open_bus(
        config.bus.redis_url,
        reconnect_timeout_s=min(config.bus.reconnect_timeout_s, _CONNECT_TIMEOUT_S),
        backoff_max_s=config.bus.reconnect_backoff_max_s,
    ) as bus:
        yield bus


def _run(fn: Callable[[], Any]) -> Any:
    from .cli import run_async

    return run_async(fn)


# --------------------------------------------------------------------------- submit


def build_task(args: argparse.Namespace) -> Task:
    """The `Task` the flags describe, validated; bad values name their flag."""
    payload: Any = {}
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--payload is not valid JSON: {exc}", key="payload") from exc
        if not isinstance(payload, dict):
            got = type(payload).__name__
            raise ConfigError(f"--payload must be a JSON object, got {got}", key="payload")
    wire = {
        "taskId": args.id if args.id is not None else f"t-{uuid.uuid4().hex[:8]}",
        "description": args.description,
        "requiredSkills": _split(args.skills),
        "complexity": args.complexity,
        "files": _split(args.files),
        "requiredModel": args.model,
        "priority": args.priority,
        "timeoutS": args.timeout_s,
        "maxAttempts": args.max_attempts,
        "projectId": args.project,
        "payload": payload,
    }
    try:
        return decode(encode(wire), Task)
    except ProtocolError as exc:
        raise _flag_error(exc, wire) from exc


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _flag_error(exc: ProtocolError, wire: dict[str, Any]) -> ConfigError:
    field = re.match(r"\$\.(\w+)", exc.path or "")
    name = field.group(1) if field else ""
    why = _ERROR_TAIL.sub("", str(exc)).removeprefix("invalid Task: ")
    flag = _FLAGS.get(name, name or "task")
    value = f" {wire[name]!r}" if name in wire else ""
    return ConfigError(f"{flag}{value}: {why} (at {exc.path})", key=name or None)


def _cmd_submit(args: argparse.Namespace) -> int:
    task = build_task(args)
    config = _bus_config(args)

    async def main() -> int:
        async with _open(config) as bus:
            return await submit_task(
                bus,
                Keys(config.bus.namespace),
                task,
                wait=args.wait,
                timeout_s=args.timeout_s_wait,
                events_maxlen=config.bus.events_maxlen,
            )

    return int(_run(main))


async def submit_task(
    bus: Bus,
    keys: Keys,
    task: Task,
    *,
    wait: bool = False,
    timeout_s: float | None = None,
    events_maxlen: int | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``LPUSH <ns>:intake``; with `wait`, follow the events until the task ends.

    Prints the task id first. Returns the exit code: 0 done (result printed), 1 dead or
    rejected (reason on `err`), 3 gave up after `timeout_s`.
    """
    out, err = out or sys.stdout, err or sys.stderr
    if await bus.hget(keys.internal("live"), task.task_id) is not None:
        raise CommandError(f"task {task.task_id!r} is already live: pick another --id")
    print(task.task_id, file=out, flush=True)
    if not wait:
        await bus.lpush(keys.intake, encode(task))
        return 0
    group = f"cli-wait-{uuid.uuid4().hex[:12]}"
    await bus.xgroup_create(keys.events, group, start_id="$")  # before the push: miss nothing
    try:
        await bus.lpush(keys.intake, encode(task))
        with anyio.move_on_after(timeout_s):
            return await _follow(bus, keys, group, task.task_id, out, err)
        print(f"gave up waiting after {timeout_s:g} s: {task.task_id} is still live", file=err)
        return EXIT_TIMEOUT
    finally:
        with anyio.move_on_after(5, shield=True):
            await _drop_group(bus, keys.events, group)


async def _follow(bus: Bus, keys: Keys, group: str, task_id: str, out: TextIO, err: TextIO) -> int:
    while True:
        entries = await bus.xreadgroup(keys.events, group, "cli", count=500, block_s=5.0)
        for entry in entries:
            try:
                event = decode_event(entry.fields.get("event", b""))
            except ProtocolError:
                continue
            code = _on_event(event, task_id, out, err)
            if code is not None:
                return code
        if entries:
            await bus.xack(keys.events, group, *(e.id for e in entries))


def _on_event(event: Any, task_id: str, out: TextIO, err: TextIO) -> int | None:
    if isinstance(event, MessageRejected) and repr(task_id) in event.error:
        print(f"rejected: {event.error}", file=err)
        return EXIT_DEAD
    if event.task_id != task_id:
        return None
    if isinstance(event, TaskFailed):
        who = event.worker_id or "?"
        print(
            f"attempt {event.attempt} failed on {who}: {event.error_key}: {event.error}", file=err
        )
    elif isinstance(event, TaskCompleted):
        print(json.dumps(event.result), file=out, flush=True)
        return 0
    elif isinstance(event, TaskDead):
        print(f"dead after {event.attempts} attempt(s): {event.reason}", file=err)
        return EXIT_DEAD
    return None


async def _drop_group(bus: Bus, stream: str, group: str) -> None:
    # a group left behind costs a few bytes: not worth failing the command for
    with contextlib.suppress(BusError):
        await bus.xgroup_destroy(stream, group)


# --------------------------------------------------------------------------- status


def _cmd_status(args: argparse.Namespace) -> int:
    from . import statuscmd

    config = _bus_config(args)

    async def main() -> dict[str, Any]:
        async with _open(config) as bus:
            snap = await statuscmd.read_status(
                bus, Keys(config.bus.namespace), now_ms=SystemClock().time_ms(), recent=args.recent
            )
        return statuscmd.status_report(snap, dead_after_s=config.liveness.dead_after_s)

    report = _run(main)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from rich.console import Console

        Console().print(statuscmd.render_status(report))
    return 0


# --------------------------------------------------------------------------- pause, resume


def _cmd_pause(args: argparse.Namespace) -> int:
    from . import control

    config = _bus_config(args)

    async def main() -> None:
        async with _open(config) as bus:
            await control.pause(
                bus,
                Keys(config.bus.namespace),
                args.reason,
                by=args.by,
                clock=SystemClock(),
                events_maxlen=config.bus.events_maxlen,
            )

    _run(main)
    print(f"paused: {args.reason}")
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from . import control

    config = _bus_config(args)

    async def main() -> bool:
        async with _open(config) as bus:
            return await control.resume(
                bus,
                Keys(config.bus.namespace),
                args.reason,
                clock=SystemClock(),
                events_maxlen=config.bus.events_maxlen,
            )

    was_paused = bool(_run(main))
    print("resumed" if was_paused else "resumed (it was not paused)")
    return 0


# --------------------------------------------------------------------------- incidents


def read_incidents(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The incidents in `path` (docs/memory.md) and a problem per malformed line.

    A missing or empty file has none. A line that is not a JSON object is reported
    (``incidents.jsonl:3: ...``) and skipped; blank lines are ignored.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], []
    incidents: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path.name}:{number}: not valid JSON: {exc.msg}")
            continue
        if not isinstance(item, dict):
            problems.append(f"{path.name}:{number}: not a JSON object")
            continue
        incidents.append(item)
    return incidents, problems


def _cmd_incidents(args: argparse.Namespace) -> int:
    memory = args.memory or load_config(args.config).memory_dir
    incidents, problems = read_incidents(Path(memory) / "incidents.jsonl")
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    if args.last is not None:
        incidents = incidents[-args.last :] if args.last > 0 else []
    if args.json:
        print(json.dumps(incidents, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    columns = ("id", "atMs", "kind", "level", "action", "target", "outcome")
    table = Table(title=f"incidents ({len(incidents)})", expand=True)
    for col in columns:
        table.add_column(col)
    for item in incidents:
        table.add_row(*(_cell(item.get(col)) for col in columns))
    Console().print(table)
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)
