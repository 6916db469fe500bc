"""The operator's commands end to end: ``submit``, ``status``, ``pause``, ``resume``,
``incidents`` as subprocesses, against a kernel running in this process on a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from jarvis_kernel import Kernel
from jarvis_kernel.bus.redis import RedisBus
from jarvis_kernel.config import (
    BusConfig,
    Config,
    GuardianConfig,
    LibrarianConfig,
    WorkerConfig,
)
from jarvis_kernel.market.records import event_fields
from jarvis_kernel.protocol import (
    Event,
    GenericEvent,
    GuardianIntervention,
    Keys,
    PauseInfo,
    Task,
    TaskCompleted,
    TaskSubmitted,
    decode_event,
)

ROOT = Path(__file__).resolve().parents[2]
NS = "ops"
KEYS = Keys(NS)
Predicate = Callable[[Event | GenericEvent], bool]


async def jarvis(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m jarvis_kernel ...`` without blocking the event loop the kernel runs on."""
    done = await anyio.run_process(
        [sys.executable, "-m", "jarvis_kernel", *args],
        check=False,
        cwd=ROOT,
        env=env if env is not None else {**os.environ, "JARVIS_UVLOOP": "0"},
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def on_redis(url: str) -> tuple[str, ...]:
    return ("--redis", url, "--namespace", NS)


def swarm(url: str, memory: Path) -> Config:
    """`good` (gemini:flash) always succeeds on easy tasks; `bad` (local:small) always fails."""
    return Config(
        bus=BusConfig(redis_url=url, namespace=NS),
        librarian=LibrarianConfig(enabled=False),
        guardian=GuardianConfig(enabled=False),
        memory_dir=str(memory),
        workers=[
            WorkerConfig(id="good", model="gemini:flash", duration_s=0.05, options={"seed": 1}),
            WorkerConfig(id="bad", model="local:small", duration_s=0.0, fail_rate=1.0),
        ],
    )


@asynccontextmanager
async def running_kernel(url: str, memory: Path) -> AsyncIterator[Kernel]:
    async with Kernel.from_config(swarm(url, memory)) as kernel:
        yield kernel


@asynccontextmanager
async def watching(url: str) -> AsyncIterator[Callable[[Predicate], Awaitable[Event]]]:
    """`next_event(predicate)`: the next event (from now on) for which `predicate` holds."""
    bus = RedisBus.from_url(url)
    await bus.xgroup_create(KEYS.events, "test-watch", start_id="$")

    async def next_event(predicate: Predicate) -> Event:
        while True:
            entries = await bus.xreadgroup(KEYS.events, "test-watch", "t", block_s=5.0)
            for entry in entries:
                event = decode_event(entry.fields["event"])
                if predicate(event):
                    assert isinstance(event, Event)
                    return event

    try:
        yield next_event
    finally:
        await bus.aclose()


def stream_types(url: str) -> list[tuple[str, str | None]]:
    client = redis.Redis.from_url(url)
    try:
        entries: list[Any] = client.xrange(KEYS.events)  # type: ignore[assignment]
        groups: list[Any] = client.xinfo_groups(KEYS.events)
    finally:
        client.close()
    # `submit --wait` removes the consumer group it read with
    assert not [g for g in groups if g["name"].startswith(b"cli-wait-")], groups
    out = []
    for _, fields in entries:
        event = json.loads(fields[b"event"])
        out.append((event["type"], event.get("taskId")))
    return out


# --------------------------------------------------------------------------- submit


@pytest.mark.redis
async def test_submit_wait_prints_the_result(redis_url: str, tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with running_kernel(redis_url, tmp_path):
            done = await jarvis(
                "submit",
                "say hello",
                *on_redis(redis_url),
                "--id",
                "t-ok",
                "--model",
                "gemini:flash",
                "--complexity",
                "0.3",
                "--payload",
                '{"greeting": "hi"}',
                "--wait",
                "--timeout-s-wait",
                "30",
            )
    assert done.returncode == 0, done.stderr
    task_id, result = done.stdout.splitlines()
    assert task_id == "t-ok"
    assert json.loads(result)["summary"] == "simulated t-ok"
    assert ("task.completed", "t-ok") in stream_types(redis_url)


@pytest.mark.redis
async def test_submit_wait_reports_failed_attempts_then_death(
    redis_url: str, tmp_path: Path
) -> None:
    with anyio.fail_after(60):
        async with running_kernel(redis_url, tmp_path):
            done = await jarvis(
                "submit",
                "doomed",
                *on_redis(redis_url),
                "--model",
                "local:small",
                "--max-attempts",
                "2",
                "--wait",
            )
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip().startswith("t-")  # the generated id, printed first
    assert "attempt 1 failed on bad: sim." in done.stderr
    assert "attempt 2 failed on bad: sim." in done.stderr
    assert "dead after 2 attempt(s)" in done.stderr


@pytest.mark.redis
async def test_submit_without_wait_queues_the_task(redis_url: str) -> None:
    done = await jarvis("submit", "later", *on_redis(redis_url), "--id", "t-later")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "t-later"
    client = redis.Redis.from_url(redis_url)
    try:
        [raw] = client.lrange(KEYS.intake, 0, -1)
    finally:
        client.close()
    assert json.loads(raw)["taskId"] == "t-later"


# --------------------------------------------------------------------------- status


@pytest.mark.redis
async def test_status_shows_workers_tasks_auctions_and_incidents(
    redis_url: str, tmp_path: Path
) -> None:
    with anyio.fail_after(60):
        async with running_kernel(redis_url, tmp_path) as kernel:
            await kernel.run_tasks([_task("t-1")])
            intervention = GuardianIntervention(
                at_ms=1, worker_id="bad", level=2, action="restart", reason="error spiral"
            )
            await kernel.bus.xadd(KEYS.events, event_fields(intervention))
            as_json = await jarvis("status", *on_redis(redis_url), "--json")
            as_table = await jarvis("status", *on_redis(redis_url))
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert set(report) == {
        "namespace",
        "atMs",
        "paused",
        "workers",
        "tasks",
        "queues",
        "recentAuctions",
        "incidents",
    }
    assert report["paused"] is None
    workers = {w["workerId"]: w for w in report["workers"]}
    assert set(workers) == {"bad", "good"}
    assert workers["good"]["alive"] and workers["good"]["model"] == "gemini:flash"
    assert report["tasks"]["total"] == 0  # t-1 is done
    assert report["queues"] == {"intake": 0, "shared": 0, "deadletter": 0}
    [auction] = report["recentAuctions"]
    assert auction["taskId"] == "t-1" and auction["workerId"] == "good"
    [incident] = report["incidents"]
    assert incident["action"] == "restart" and incident["level"] == 2
    assert as_table.returncode == 0, as_table.stderr
    assert "good" in as_table.stdout and "recent auctions" in as_table.stdout


def _task(task_id: str) -> Task:
    return Task(task_id=task_id, description="x", required_model="gemini:flash")


# --------------------------------------------------------------------------- pause, resume


@pytest.mark.redis
async def test_pause_holds_new_tasks_until_resume(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with anyio.fail_after(60):
        async with running_kernel(redis_url, tmp_path) as kernel, watching(redis_url) as next_event:
            seen = {True: anyio.Event(), False: anyio.Event()}
            set_paused = kernel.market.set_paused

            def spy(info: PauseInfo | None) -> None:
                set_paused(info)
                seen[info is not None].set()

            monkeypatch.setattr(kernel.market, "set_paused", spy)
            paused = await jarvis("pause", *on_redis(redis_url), "--reason", "maintenance")
            assert paused.returncode == 0, paused.stderr
            await seen[True].wait()  # the kernel noticed the key
            info = json.loads(await kernel.bus.get(KEYS.paused) or b"{}")
            assert info["reason"] == "maintenance" and info["by"] == "operator"

            await jarvis("submit", "held", *on_redis(redis_url), "--id", "t-held")
            await next_event(lambda e: isinstance(e, TaskSubmitted) and e.task_id == "t-held")
            record = json.loads(await kernel.bus.hget(KEYS.internal("live"), "t-held") or b"{}")
            assert record["state"] == "queued"
            status = json.loads((await jarvis("status", *on_redis(redis_url), "--json")).stdout)
            assert status["paused"]["reason"] == "maintenance"
            assert status["tasks"]["queued"] == 1

            resumed = await jarvis("resume", *on_redis(redis_url))
            assert resumed.returncode == 0 and "resumed" in resumed.stdout
            await next_event(lambda e: isinstance(e, TaskCompleted) and e.task_id == "t-held")
            assert not await kernel.bus.exists(KEYS.paused)
    types = stream_types(redis_url)
    assert types.index(("swarm.paused", None)) < types.index(("task.submitted", "t-held"))
    # the paused kernel announced nothing: the first auction of t-held follows the resume
    assert types.index(("swarm.resumed", None)) < types.index(("task.announced", "t-held"))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--payload", "{not json"], "--payload is not valid JSON"),
        (["--payload", "[1, 2]"], "--payload must be a JSON object, got list"),
        (["--complexity", "2"], "--complexity 2.0: Expected `float` <= 1.0"),
        (["--id", "has space"], "--id 'has space': Expected `str` matching regex"),
        (["--max-attempts", "0"], "--max-attempts 0: Expected `int` >= 1"),
    ],
)
async def test_submit_rejects_bad_values_naming_the_flag(args: list[str], expected: str) -> None:
    done = await jarvis("submit", "x", "--redis", "redis://127.0.0.1:1/0", *args)
    assert done.returncode != 0
    assert expected in done.stderr, done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("command", [["submit", "x"], ["status"], ["pause"], ["resume"]])
async def test_commands_without_a_redis_url_say_they_need_one(
    command: list[str], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JARVIS_")}
    done = await jarvis(*command, env=env)
    assert done.returncode != 0
    assert "needs a Redis bus: the in-memory bus lives inside one process" in done.stderr


# --------------------------------------------------------------------------- incidents


async def test_incidents_skips_malformed_lines_and_says_which(tmp_path: Path) -> None:
    lines = [
        {"id": "i-1", "atMs": 1, "kind": "stall", "level": 1, "action": "nudge"},
        "{not json",
        "[1, 2]",
        "",
        {"id": "i-2", "atMs": 2, "kind": "error_spiral", "level": 2, "action": "restart"},
    ]
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    (tmp_path / "incidents.jsonl").write_text(text + "\n")
    done = await jarvis("incidents", "--memory", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    assert [i["id"] for i in json.loads(done.stdout)] == ["i-1", "i-2"]
    assert "incidents.jsonl:2: not valid JSON" in done.stderr
    assert "incidents.jsonl:3: not a JSON object" in done.stderr
    table = await jarvis("incidents", "--memory", str(tmp_path))
    assert table.returncode == 0 and "error_spiral" in table.stdout


async def test_incidents_of_a_missing_file_is_an_empty_list(tmp_path: Path) -> None:
    done = await jarvis("incidents", "--memory", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
