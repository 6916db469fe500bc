"""The newcomer's first commands, end to end through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def jarvis(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jarvis_kernel", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_help_and_version() -> None:
    help_ = jarvis("--help")
    assert help_.returncode == 0
    for command in ("run", "worker", "librarian", "bench"):
        assert command in help_.stdout
    version = jarvis("--version")
    assert version.returncode == 0 and version.stdout.startswith("jarvis-kernel ")


def test_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    # A copy of the sample memory, so the demo's learned expertise stays out of the repo.
    (tmp_path / ".memory").mkdir()
    result = jarvis(
        "run",
        "--demo",
        "--duration-s",
        "2",
        "--demo-tasks",
        "10",
        "--json",
        env={"JARVIS_REDIS_URL": "", "JARVIS_MEMORY_DIR": str(tmp_path / ".memory")},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    counts = summary["counts"]
    assert counts["task.submitted"] == 10
    assert counts["task.completed"] + counts.get("task.dead", 0) == 10
    assert counts["task.assigned"] >= 10  # every attempt went through an auction
    assert len(summary["workers"]) >= 3  # the market spread the work
    assert summary["awardMs"]["p50"] > 0


def test_log_format_json_prints_one_event_per_line(tmp_path: Path) -> None:
    (tmp_path / ".memory").mkdir()
    env = {"JARVIS_REDIS_URL": "", "JARVIS_MEMORY_DIR": str(tmp_path / ".memory")}
    result = jarvis(
        "run",
        "--demo",
        "--duration-s",
        "2",
        "--demo-tasks",
        "6",
        "--log-format",
        "json",
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    events = [json.loads(line) for line in lines]  # each line one JSON object
    kinds = {e["type"] for e in events}
    assert kinds <= {"task.assigned", "task.completed", "task.failed", "task.dead"}
    ended = {e["taskId"] for e in events if e["type"] in ("task.completed", "task.dead")}
    assert ended == {f"demo-{i:03d}" for i in range(6)}
    assigned = [e for e in events if e["type"] == "task.assigned"]
    assert all(0 < e["score"] <= 1 and e["workerId"] for e in assigned)


def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "swarm.toml"
    config.write_text("[market]\nwindow_s = -2\n")
    result = jarvis("run", "--config", str(config), "--duration-s", "1")
    assert result.returncode == 1
    assert "market.window_s = -2" in result.stderr and str(config) in result.stderr
    assert "Traceback" not in result.stderr
