"""The command executor with real processes, the llm executor against a local HTTP server,
and a `WorkerAgent` on MemoryBus running allowlisted and forbidden commands.

Nothing sleeps to wait: FakeClock time is advanced once the executor is seen waiting on it
(`RecordingClock.wait_sleep`), and events are read with blocking XREADGROUP.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web

from jarvis_kernel.bus.memory import MemoryBus
from jarvis_kernel.clock import FakeClock
from jarvis_kernel.config import LivenessConfig, ScoringConfig, WorkerConfig
from jarvis_kernel.protocol import (
    Assignment,
    Event,
    GenericEvent,
    Keys,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    decode_event,
    encode,
)
from jarvis_kernel.worker.agent import WorkerAgent
from jarvis_kernel.worker.command import CommandExecutor
from jarvis_kernel.worker.executors import (
    Completed,
    ExecutionContext,
    Executor,
    Failed,
    Outcome,
    make_executor,
)
from jarvis_kernel.worker.llm import LlmExecutor


class RecordingClock(FakeClock):
    """A FakeClock that lets a test wait until someone sleeps a given duration on it."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []
        self._changed = anyio.Event()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self._changed.set()
        self._changed = anyio.Event()
        await super().sleep(seconds)

    async def wait_sleep(self, seconds: float) -> None:
        while seconds not in self.slept:
            await self._changed.wait()
        await anyio.wait_all_tasks_blocked()


class Run:
    """One executor run in the background, with its progress reports."""

    def __init__(self, executor: Executor, task: Assignment, clock: FakeClock) -> None:
        self.reports: list[tuple[int, str]] = []
        self.done = anyio.Event()
        self.outcome: Outcome | None = None

        async def progress(tokens: int, note: str) -> None:
            self.reports.append((tokens, note))

        self.ctx = ExecutionContext(worker_id="w1", clock=clock, fit=1.0, progress=progress)
        self._executor, self._task = executor, task

    async def __call__(self) -> None:
        self.outcome = await self._executor.run(self._task, self.ctx)
        self.done.set()

    async def result(self) -> Outcome:
        await self.done.wait()
        assert self.outcome is not None
        return self.outcome


async def run_once(executor: Executor, task: Assignment) -> Run:
    run = Run(executor, task, RecordingClock())
    with anyio.fail_after(10):
        await run()
    return run


def argv_task(*argv: str) -> Assignment:
    return Assignment(task_id="t1", payload={"argv": list(argv)})


# --------------------------------------------------------------------------- command


async def test_allowed_command_runs_in_the_workspace_with_a_minimal_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    ex = CommandExecutor(
        allowlist={"echo", "pwd", "printenv"}, workspace=tmp_path, env={"GREETING": "hi"}
    )
    out = (await run_once(ex, argv_task("echo", "hello", "world"))).outcome
    assert out == Completed(
        result={"exitCode": 0, "stdout": "hello world\n", "stderr": "", "truncated": False}
    )
    out = (await run_once(ex, argv_task("pwd"))).outcome
    workspace = str(ex.workspace)
    assert isinstance(out, Completed) and out.result["stdout"] == f"{workspace}\n"
    out = (await run_once(ex, argv_task("printenv"))).outcome
    assert isinstance(out, Completed)
    env = dict(line.split("=", 1) for line in out.result["stdout"].splitlines())
    assert set(env) <= {"PATH", "HOME", "LANG", "GREETING", "PWD", "SHLVL", "_"}
    assert env["HOME"] == workspace and env["GREETING"] == "hi"


async def test_shell_metacharacters_are_plain_text(tmp_path: Path) -> None:
    ex = CommandExecutor(allowlist={"echo"}, workspace=tmp_path)
    args = ["a; touch pwned", "$(touch pwned2)", "`id`", "*", "|", "&&", "> out"]
    out = (await run_once(ex, argv_task("echo", *args))).outcome
    assert isinstance(out, Completed)
    assert out.result["stdout"] == " ".join(args) + "\n"
    assert os.listdir(tmp_path) == []


async def test_forbidden_and_relative_tricks(tmp_path: Path) -> None:
    evil = tmp_path / "echo"
    evil.write_text("#!/bin/sh\ntouch pwned\n")
    evil.chmod(0o755)
    ex = CommandExecutor(allowlist={"echo"}, workspace=tmp_path, search_path=f".:{os.defpath}")
    for argv in (["./echo"], [str(evil)], ["sh", "-c", "touch pwned"], ["cat", "/etc/passwd"]):
        out = (await run_once(ex, argv_task(*argv))).outcome
        assert isinstance(out, Failed) and out.error_key == "executor.forbidden", argv
    nothing = CommandExecutor(workspace=tmp_path)  # the default allowlist is empty
    out = (await run_once(nothing, argv_task("echo", "hi"))).outcome
    assert isinstance(out, Failed) and out.error_key == "executor.forbidden"
    assert not (tmp_path / "pwned").exists()


async def test_non_zero_exit_gives_the_stderr_tail(tmp_path: Path) -> None:
    ex = CommandExecutor(allowlist={"ls", "false"}, workspace=tmp_path)
    out = (await run_once(ex, argv_task("ls", "/does/not/exist"))).outcome
    assert isinstance(out, Failed) and out.error_key == "command.exit_2"
    assert "/does/not/exist" in out.error
    out = (await run_once(ex, argv_task("false"))).outcome
    assert isinstance(out, Failed) and out.error_key == "command.exit_1"


async def test_big_output_is_cut_to_fit_an_event(tmp_path: Path) -> None:
    ex = CommandExecutor(allowlist={"head"}, workspace=tmp_path, max_output_bytes=200_000)
    out = (await run_once(ex, argv_task("head", "-c", "300000", "/dev/zero"))).outcome
    assert isinstance(out, Completed) and out.result["truncated"] is True
    TaskCompleted(at_ms=1, task_id="t1", worker_id="w1", result=out.result)  # fits 64 KiB


async def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    sh = shutil.which("sh") or "/bin/sh"
    ex = CommandExecutor(allowlist={sh}, workspace=tmp_path, timeout_s=5.0)
    fifo = tmp_path / "child.pid"
    os.mkfifo(fifo)
    clock = RecordingClock()
    run = Run(ex, argv_task(sh, "-c", "sleep 300 & echo $! > child.pid; wait"), clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            child = int(await anyio.Path(fifo).read_text())  # opening blocks until sh writes
            pidfd = os.pidfd_open(child)
            try:
                await clock.wait_sleep(5.0)
                await clock.advance(5.0)
                out = await run.result()
                assert isinstance(out, Failed) and out.error_key == "executor.timeout"
                await anyio.wait_readable(pidfd)  # readable once the grandchild is gone
            finally:
                os.close(pidfd)


# --------------------------------------------------------------------------- llm


def completion(content: str = "done", total: int = 42) -> dict[str, Any]:
    return {
        "id": "c1",
        "model": "model-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": total - 30, "total_tokens": total},
    }


class FakeLlm:
    """A chat-completions endpoint on 127.0.0.1 that plays a script of replies."""

    def __init__(self) -> None:
        self.script: list[web.StreamResponse | str] = []
        self.requests: list[tuple[dict[str, str], Any]] = []
        self.release = anyio.Event()
        self.seen = anyio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.json()))
        self.seen.set()
        reply = self.script.pop(0) if self.script else web.json_response(completion())
        if reply == "slow":
            await self.release.wait()
            return web.json_response(completion())
        assert isinstance(reply, web.StreamResponse)
        return reply


@pytest.fixture
async def llm_server() -> AsyncIterator[FakeLlm]:
    fake = FakeLlm()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}/v1"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


def llm(url: str, **kw: Any) -> LlmExecutor:
    options = {"base_url": url, "model": "model-x", "api_key_env": "TEST_KEY", **kw}
    executor = make_executor(WorkerConfig(id="w1", executor="llm", options=options))
    assert isinstance(executor, LlmExecutor)
    return executor


TASK = Assignment(task_id="t1", description="Say done", payload={"file": "a.py"})


async def test_llm_completion_reports_usage(
    llm_server: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_KEY", "sk-test")
    run = await run_once(llm(llm_server.url, system_prompt="be brief"), TASK)
    assert run.outcome == Completed(
        result={
            "content": "done",
            "truncated": False,
            "model": "model-x",
            "finishReason": "stop",
            "usage": {"promptTokens": 30, "completionTokens": 12, "totalTokens": 42},
        },
        token_usage=42,
    )
    assert run.reports == [(42, "llm model-x")]
    headers, body = llm_server.requests[0]
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "model-x"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "Say done" in body["messages"][1]["content"]


async def test_llm_rate_limit_honours_retry_after_on_the_clock(llm_server: FakeLlm) -> None:
    llm_server.script = [
        web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "7"})
    ]
    clock = RecordingClock()
    run = Run(llm(llm_server.url, timeout_s=30), TASK, clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await clock.wait_sleep(7.0)
            assert len(llm_server.requests) == 1
            await clock.advance(7.0)
            out = await run.result()
    assert isinstance(out, Completed) and out.result["content"] == "done"
    assert len(llm_server.requests) == 2


async def test_llm_rate_limit_gives_up_after_max_retries(llm_server: FakeLlm) -> None:
    llm_server.script = [web.Response(status=429), web.Response(status=429)]
    run = await run_once(llm(llm_server.url, max_retries=1, max_backoff_s=0), TASK)
    assert isinstance(run.outcome, Failed) and run.outcome.error_key == "llm.rate_limited"
    assert len(llm_server.requests) == 2


@pytest.mark.parametrize(
    ("reply", "key"),
    [
        (lambda: web.Response(status=500, text="boom"), "llm.server_error"),
        (lambda: web.Response(status=401, text="bad key"), "llm.auth"),
        (lambda: web.Response(status=404), "llm.not_found"),
        (lambda: web.Response(status=400), "llm.bad_request"),
        (
            lambda: web.Response(text="{not json", content_type="application/json"),
            "llm.bad_response",
        ),
        (lambda: web.json_response({"choices": []}), "llm.bad_response"),
        (lambda: web.json_response({"object": "list"}), "llm.bad_response"),
    ],
)
async def test_llm_errors(llm_server: FakeLlm, reply: Any, key: str) -> None:
    llm_server.script = [reply()]
    run = await run_once(llm(llm_server.url), TASK)
    assert isinstance(run.outcome, Failed) and run.outcome.error_key == key
    assert len(llm_server.requests) == 1  # none of these is retried
    assert run.reports == []


async def test_llm_secret_never_in_errors(
    llm_server: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_KEY", "sk-very-secret")
    llm_server.script = [web.Response(status=403, text="forbidden")]
    run = await run_once(llm(llm_server.url), TASK)
    assert isinstance(run.outcome, Failed) and run.outcome.error_key == "llm.auth"
    assert "sk-very-secret" not in run.outcome.error


async def test_llm_slow_response_times_out(llm_server: FakeLlm) -> None:
    llm_server.script = ["slow"]
    clock = RecordingClock()
    run = Run(llm(llm_server.url, timeout_s=10), TASK, clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await llm_server.seen.wait()
            await clock.wait_sleep(10.0)
            await clock.advance(10.0)
            out = await run.result()
    assert isinstance(out, Failed) and out.error_key == "llm.timeout"


async def test_llm_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    run = await run_once(llm(f"http://127.0.0.1:{port}/v1"), TASK)
    assert isinstance(run.outcome, Failed) and run.outcome.error_key == "llm.unreachable"


# --------------------------------------------------------------------------- end to end

KEYS = Keys("jx")


async def next_outcome(bus: MemoryBus) -> Event | GenericEvent:
    """The next task.completed / task.failed event (XREADGROUP blocks: no polling)."""
    while True:
        for entry in await bus.xreadgroup(KEYS.events, "test", "t", block_s=3600):
            event = decode_event(entry.fields["event"])
            if isinstance(event, TaskCompleted | TaskFailed):
                return event
            assert not isinstance(event, TaskProgress)


async def test_worker_runs_allowed_commands_and_refuses_the_rest(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = MemoryBus(clock=clock)
    spec = WorkerConfig(
        id="w1",
        executor="command",
        options={"allow": ["echo"], "workspace": str(tmp_path), "timeout_s": None},
    )
    agent = WorkerAgent(
        spec,
        bus=bus,
        keys=KEYS,
        clock=clock,
        scoring=ScoringConfig(),
        liveness=LivenessConfig(),
        memory_dir=tmp_path / ".memory",
        executor=make_executor(spec),
    )
    await bus.xgroup_create(KEYS.events, "test", start_id="0")
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(agent.run)
                good = Assignment(task_id="t1", payload={"argv": ["echo", "hi"]})
                await bus.lpush(KEYS.tasks_for("w1"), encode(good))
                done = await next_outcome(bus)
                assert isinstance(done, TaskCompleted) and done.task_id == "t1"
                assert done.result["stdout"] == "hi\n"
                bad = Assignment(task_id="t2", payload={"argv": ["rm", "-rf", "/"]})
                await bus.lpush(KEYS.tasks_for("w1"), encode(bad))
                failed = await next_outcome(bus)
                assert isinstance(failed, TaskFailed) and failed.task_id == "t2"
                assert failed.error_key == "executor.forbidden"
                assert await bus.llen(KEYS.processing("w1")) == 0
                tg.cancel_scope.cancel()
    finally:
        await bus.aclose()
    assert msgspec.json.encode(done)  # the events are wire-valid
