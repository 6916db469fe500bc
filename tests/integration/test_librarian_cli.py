"""The CLI end to end: ``python -m jarvis_kernel librarian ...`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.memory import copy_sample_memory

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jarvis_kernel", "librarian", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def _sample(tmp_path: Path) -> Path:
    memory = tmp_path / "memory"
    copy_sample_memory(memory)
    return memory


def test_index_then_search_as_json(tmp_path: Path) -> None:
    memory = _sample(tmp_path)
    done = _run("index", "--memory", str(memory))
    assert done.returncode == 0, done.stderr
    assert "5 projects" in done.stdout
    assert (memory / "patterns.json").is_file()
    assert (memory / "global_index.json").is_file()
    done = _run(
        "search",
        "NextAuth callback error",
        "--memory",
        str(memory),
        "--json",
        "--all",
        "--limit",
        "3",
    )
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert hits[0]["project"] == "atelier-sam"
    assert hits[0]["filePath"] == "src/pages/api/auth/[...nextauth].ts"
    assert set(hits[0]) == {"name", "description", "filePath", "project", "capabilities", "score"}
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_search_with_an_active_project_labels_both_groups(tmp_path: Path) -> None:
    memory = _sample(tmp_path)
    done = _run("search", "github oauth login", "--memory", str(memory), "--project", "jarvis")
    assert done.returncode == 0, done.stderr
    assert "in jarvis (active)" in done.stdout
    assert "in other projects:" in done.stdout
    done = _run(
        "search", "github oauth login", "--memory", str(memory), "--project", "jarvis", "--json"
    )
    assert {h["active"] for h in json.loads(done.stdout)} <= {True, False}


def test_bad_maps_are_reported_on_stderr_and_the_rest_indexed(tmp_path: Path) -> None:
    memory = _sample(tmp_path)
    (memory / "projects/mailroom/context_map.json").write_text('{"projectId": "mailroom", "fi')
    done = _run("index", "--memory", str(memory))
    assert done.returncode == 0
    assert "projects/mailroom/context_map.json: not valid JSON" in done.stderr
    assert "5 projects" in done.stdout


def test_bad_arguments_exit_non_zero(tmp_path: Path) -> None:
    done = _run("search", "x", "--limit", "0", "--memory", str(tmp_path))
    assert done.returncode == 2
    assert "--limit" in done.stderr
    done = _run("search", "x", "--memory", str(tmp_path), "--config", str(tmp_path / "no.toml"))
    assert done.returncode == 1
    assert "config file not found" in done.stderr
