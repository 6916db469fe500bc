"""The command / python / llm executors: their decisions, without network or processes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest

from jarvis_kernel.clock import FakeClock
from jarvis_kernel.config import WorkerConfig
from jarvis_kernel.errors import ExecutorError
from jarvis_kernel.protocol import Assignment
from jarvis_kernel.worker.command import CommandExecutor
from jarvis_kernel.worker.executors import (
    Completed,
    ExecutionContext,
    Failed,
    check_result,
    make_executor,
)
from jarvis_kernel.worker.llm import LlmExecutor, error_key_for, retry_delay_s
from jarvis_kernel.worker.pyfunc import PythonExecutor

TARGETS = "tests.support.pytargets"


def context(reports: list[tuple[int, str]] | None = None) -> ExecutionContext:
    async def progress(tokens: int, note: str) -> None:
        if reports is not None:
            reports.append((tokens, note))

    return ExecutionContext(worker_id="w1", clock=FakeClock(), fit=1.0, progress=progress)


# --------------------------------------------------------------------------- registry


def test_make_executor_builds_each_kind(tmp_path: Path) -> None:
    command = make_executor(
        WorkerConfig(
            id="w1",
            executor="command",
            options={"allow": ["echo"], "workspace": str(tmp_path), "timeout_s": 5},
        )
    )
    assert isinstance(command, CommandExecutor)
    assert command.workspace == tmp_path.resolve()
    assert command.timeout_s == 5
    python = make_executor(
        WorkerConfig(id="w1", executor="python", options={"target": f"{TARGETS}:echo_payload"})
    )
    assert isinstance(python, PythonExecutor)
    llm = make_executor(
        WorkerConfig(
            id="w1",
            executor="llm",
            options={"base_url": "http://127.0.0.1:1/v1", "model": "m", "max_retries": 1},
        )
    )
    assert isinstance(llm, LlmExecutor)
    assert llm.url == "http://127.0.0.1:1/v1/chat/completions"


@pytest.mark.parametrize(
    ("executor", "options", "match"),
    [
        ("command", {"allow": "echo"}, r"'w1'.*\$\.allow"),
        ("command", {"allow": ["./evil"]}, "relative path"),
        ("command", {"workspace": "/nonexistent/dir"}, "not a directory"),
        ("command", {"shell": True}, "shell"),
        ("python", {}, "target"),
        ("python", {"target": "no_colon"}, "'no_colon'"),
        ("python", {"target": "tests.support.nope:f"}, "cannot import"),
        ("python", {"target": "tests.support.broken_target:f"}, "broken on purpose"),
        ("python", {"target": f"{TARGETS}:missing"}, "no attribute 'missing'"),
        ("python", {"target": f"{TARGETS}:NOT_CALLABLE"}, "not callable"),
        ("llm", {"model": "m", "base_url": "ftp://x"}, "base_url"),
        ("llm", {"model": "m", "base_url": "http://h", "max_retries": "3"}, "max_retries"),
    ],
)
def test_bad_options_are_executor_errors(
    executor: str, options: dict[str, object], match: str
) -> None:
    with pytest.raises(ExecutorError, match=match):
        make_executor(WorkerConfig(id="w1", executor=executor, options=options))  # type: ignore[arg-type]


def test_llm_settings_from_environment() -> None:
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1/", "OPENAI_MODEL": "qwen", "MY_KEY": "sk-1"}
    llm = LlmExecutor.from_options({"api_key_env": "MY_KEY"}, environ=env)
    assert (llm.url, llm.model) == ("http://127.0.0.1:9/v1/chat/completions", "qwen")
    assert llm._headers["Authorization"] == "Bearer sk-1"
    with pytest.raises(ValueError, match="model"):
        LlmExecutor.from_options({"base_url": "http://h"}, environ={})
    no_key = LlmExecutor.from_options({"base_url": "http://h", "model": "m"}, environ={})
    assert "Authorization" not in no_key._headers


def test_check_result() -> None:
    assert check_result({"a": [1, "b"]}) is None
    for bad in ({"x": object()}, "x" * 70_000):
        failed = check_result(bad)
        assert failed is not None and failed.error_key == "executor.bad_result"


# --------------------------------------------------------------------------- command: who may run


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    """A PATH directory with an `echo` that is a symlink to the real one."""
    d = tmp_path / "bin"
    d.mkdir()
    (d / "echo").symlink_to(shutil.which("echo") or "/bin/echo")
    return d


def test_resolve_by_name_only_on_the_path(tmp_path: Path, bindir: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    fake = ws / "echo"
    fake.write_text("#!/bin/sh\necho pwned\n")
    fake.chmod(0o755)
    ex = CommandExecutor(allowlist={"echo"}, workspace=ws, search_path=f".:{ws}:{bindir}")
    assert ex.search_path == str(bindir)  # "." and the workspace are dropped from PATH
    assert ex.resolve("echo") == str(bindir / "echo")
    assert ex.resolve(str(fake)) is None  # the name "echo" does not allow /ws/echo
    assert ex.resolve("./echo") is None
    assert ex.resolve("../ws/echo") is None
    assert ex.resolve(str(bindir / "echo")) is None  # a name entry does not allow a path
    assert ex.resolve("cat") is None
    assert ex.resolve("") is None


def test_resolve_by_path_does_not_follow_symlinks(tmp_path: Path, bindir: Path) -> None:
    real = os.path.realpath(bindir / "echo")
    ex = CommandExecutor(allowlist={str(bindir / "echo")}, workspace=tmp_path, search_path="")
    assert ex.resolve(str(bindir / "echo")) == str(bindir / "echo")
    assert ex.resolve(str(bindir) + "/./echo") == str(bindir / "echo")  # normalised
    assert ex.resolve(real) is None  # the target of the symlink is another path
    other = tmp_path / "sh"
    other.symlink_to(real)
    assert ex.resolve(str(other)) is None


def test_empty_allowlist_forbids_everything(tmp_path: Path) -> None:
    ex = CommandExecutor(workspace=tmp_path)
    echo = shutil.which("echo")
    assert echo is not None
    assert ex.resolve("echo") is None
    assert ex.resolve(echo) is None


@pytest.mark.parametrize(
    "payload",
    [{}, {"argv": []}, {"argv": "echo hi"}, {"argv": ["echo", 1]}, {"argv": ["echo", "a\x00b"]}],
)
async def test_bad_argv(tmp_path: Path, payload: dict[str, object]) -> None:
    ex = CommandExecutor(allowlist={"echo"}, workspace=tmp_path)
    outcome = await ex.run(Assignment(task_id="t1", payload=payload), context())
    assert isinstance(outcome, Failed)
    assert outcome.error_key == "executor.bad_payload"


async def test_forbidden_is_a_failed_outcome(tmp_path: Path) -> None:
    ex = CommandExecutor(allowlist={"echo"}, workspace=tmp_path)
    task = Assignment(task_id="t1", payload={"argv": ["rm", "-rf", str(tmp_path)]})
    outcome = await ex.run(task, context())
    assert isinstance(outcome, Failed)
    assert outcome.error_key == "executor.forbidden"


def test_warns_when_an_interpreter_is_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    CommandExecutor(allowlist={"python3", "echo"}, workspace=tmp_path)
    assert "arbitrary code" in caplog.text and "python3" in caplog.text


# --------------------------------------------------------------------------- python


async def run_python(target: str, task: Assignment, reports: list[tuple[int, str]] | None = None):  # type: ignore[no-untyped-def]
    with anyio.fail_after(5):
        return await PythonExecutor(f"{TARGETS}:{target}").run(task, context(reports))


async def test_python_sync_task_only() -> None:
    outcome = await run_python("echo_payload", Assignment(task_id="t1", payload={"a": 1}))
    assert outcome == Completed(result={"taskId": "t1", "payload": {"a": 1}})


async def test_python_sync_with_ctx_reports_progress_from_its_thread() -> None:
    reports: list[tuple[int, str]] = []
    outcome = await run_python("sync_with_ctx", Assignment(task_id="t1"), reports)
    assert outcome == Completed(result="t1 on w1", token_usage=7)
    assert reports == [(7, "from a thread")]


async def test_python_async_targets() -> None:
    reports: list[tuple[int, str]] = []
    outcome = await run_python(
        "async_with_ctx", Assignment(task_id="t1", description="abc"), reports
    )
    assert outcome == Completed(result={"n": 3}, token_usage=11)
    assert reports == [(11, "async")]
    outcome = await run_python("async_task_only", Assignment(task_id="t1", description="abc"))
    assert outcome == Completed(result="ABC")


async def test_python_exceptions_and_results() -> None:
    outcome = await run_python("raises", Assignment(task_id="t1"))
    assert outcome == Failed(error_key="python.KeyError", error="'nope'")
    for target in ("unencodable", "too_big"):
        outcome = await run_python(target, Assignment(task_id="t1"))
        assert isinstance(outcome, Failed) and outcome.error_key == "executor.bad_result"
    outcome = await run_python("fails_on_purpose", Assignment(task_id="t1"))
    assert outcome == Failed(error_key="lint.E501", error="line too long")


# --------------------------------------------------------------------------- llm decisions


def test_error_keys() -> None:
    assert [error_key_for(s) for s in (401, 403, 404, 429, 500, 503, 400, 302)] == [
        "llm.auth",
        "llm.auth",
        "llm.not_found",
        "llm.rate_limited",
        "llm.server_error",
        "llm.server_error",
        "llm.bad_request",
        "llm.bad_response",
    ]


def test_retry_delays() -> None:
    kw = {"max_backoff_s": 30.0, "now_s": 1_000_000.0}
    assert retry_delay_s(429, "2", retry=0, **kw) == 2.0
    assert retry_delay_s(429, None, retry=0, **kw) == 1.0
    assert retry_delay_s(503, None, retry=2, **kw) == 4.0
    assert retry_delay_s(429, "3600", retry=0, **kw) == 30.0  # bounded
    assert retry_delay_s(429, "-5", retry=0, **kw) == 0.0
    assert retry_delay_s(429, "nan", retry=0, **kw) == 30.0
    assert retry_delay_s(429, "garbage", retry=1, **kw) == 2.0
    date = "Mon, 12 Jan 1970 13:46:50 GMT"  # 1_000_010 s after the epoch
    assert retry_delay_s(429, date, retry=0, **kw) == pytest.approx(10.0)
    assert retry_delay_s(500, "1", retry=0, **kw) is None
    assert retry_delay_s(401, None, retry=0, **kw) is None


def test_request_body() -> None:
    llm = LlmExecutor(
        base_url="http://127.0.0.1:1/v1", model="m", system_prompt="be brief", max_tokens=50
    )
    body = llm.request_body(Assignment(task_id="t1", description="Fix it", payload={"f": "a.py"}))
    assert body == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": 'Fix it\n\nPayload (JSON):\n{"f":"a.py"}'},
        ],
        "max_tokens": 50,
    }


def test_worker_cli_flags_become_executor_options() -> None:
    import argparse

    from jarvis_kernel.worker import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    argv = [
        "worker",
        "--id",
        "w1",
        "--redis",
        "redis://127.0.0.1:1",
        "--executor",
        "llm",
        "--llm-model",
        "b",
    ]
    argv += ["--options", '{"timeout_s": 5, "model": "a"}', "--allow", "echo"]
    argv += ["--llm-base-url", "http://127.0.0.1:11434/v1"]
    args = parser.parse_args(argv)
    _, spec = cli._settings(args)
    assert spec.options == {
        "timeout_s": 5,
        "model": "b",
        "base_url": "http://127.0.0.1:11434/v1",
        "allow": ["echo"],
    }
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--id", "w1", "--options", "[1]"])


def test_process_and_docker_workers_get_their_executor_options() -> None:
    """A [[workers]] table's options reach a worker started as a process or a container."""
    import json

    from jarvis_kernel.config import WorkerConfig
    from jarvis_kernel.runtime.process import worker_argv

    spec = WorkerConfig(id="w", executor="command", options={"allow": ["echo"], "timeout_s": 5})
    argv = worker_argv(
        spec,
        python="python",
        redis_url="redis://x",
        namespace="ns",
        memory_dir=None,
        heartbeat_s=None,
    )
    assert json.loads(argv[argv.index("--options") + 1]) == {"allow": ["echo"], "timeout_s": 5}
