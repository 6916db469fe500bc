"""Worker memory: learning rules and the `.memory/workers/<id>.json` file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jarvis_kernel.errors import MemoryFormatError
from jarvis_kernel.worker.memory import (
    LearningPolicy,
    WorkerMemory,
    learn,
    load_memory,
    memory_path,
    save_memory,
    touch_files,
)

POLICY = LearningPolicy()


def test_success_moves_up_failure_down_gently() -> None:
    up = learn({"react": 0.5}, ["react"], success=True)
    down = learn({"react": 0.5}, ["react"], success=False)
    assert 0.5 < up["react"] <= 0.5 + POLICY.rate
    assert 0.5 - POLICY.rate <= down["react"] < 0.5


def test_only_the_task_skills_move_and_unknown_start_at_prior() -> None:
    after = learn({"react": 0.5, "css": 0.7}, ["react", "auth"], success=True)
    assert after["css"] == 0.7
    assert POLICY.prior < after["auth"] < POLICY.prior + POLICY.rate


def test_learning_is_bounded() -> None:
    weights: dict[str, float] = {"a": 0.5}
    for _ in range(1000):
        weights = learn(weights, ["a"], success=True)
    assert POLICY.ceiling - 0.01 < weights["a"] <= POLICY.ceiling
    for _ in range(1000):
        weights = learn(weights, ["a"], success=False)
    assert POLICY.floor <= weights["a"] < POLICY.floor + 0.01


def test_configured_weights_outside_the_bounds_never_move_the_wrong_way() -> None:
    assert learn({"a": 1.0}, ["a"], success=True)["a"] == 1.0
    assert learn({"a": 0.0}, ["a"], success=False)["a"] == 0.0


def test_recent_files_are_bounded_newest_first() -> None:
    recent = touch_files({}, ["a", "b"], now_ms=10, limit=3)
    recent = touch_files(recent, ["c", "d"], now_ms=20, limit=3)
    assert set(recent) == {"c", "d"} | ({"a"} & set(recent)) | ({"b"} & set(recent))
    assert len(recent) == 3
    assert touch_files({"a": 50}, ["a"], now_ms=40, limit=3) == {"a": 50}


def test_record_updates_stats() -> None:
    memory = WorkerMemory("w1", "gemini:flash", {"react": 0.5})
    memory.record(skills=["react"], files=["src/a.ts"], success=True, now_ms=100)
    memory.record(skills=["react"], files=[], success=False, now_ms=200)
    assert (memory.completed, memory.failed) == (1, 1)
    assert memory.recent_files == {"src/a.ts": 100}


async def test_file_round_trip_matches_memory_md(tmp_path: Path) -> None:
    memory = WorkerMemory("w1", "gemini:flash", {"react": 0.9})
    memory.record(skills=["react", "auth"], files=["src/auth.ts"], success=True, now_ms=1234)
    await save_memory(tmp_path, memory)
    path = tmp_path / "workers" / "w1.json"
    assert memory_path(tmp_path, "w1") == path
    data = json.loads(path.read_text("utf-8"))
    assert set(data) == {"workerId", "model", "expertise", "recentFiles", "stats"}
    assert data["workerId"] == "w1"
    assert data["model"] == "gemini:flash"
    assert data["recentFiles"] == [{"path": "src/auth.ts", "touchedAtMs": 1234}]
    assert data["stats"] == {"completed": 1, "failed": 0}
    assert data["expertise"]["react"] > 0.9

    loaded, error = await load_memory(
        tmp_path, "w1", model="gemini:flash", expertise={"react": 0.1, "css": 0.6}
    )
    assert error is None
    assert loaded.expertise["react"] == data["expertise"]["react"]  # learned wins
    assert loaded.expertise["css"] == 0.6  # configured, never learned: kept
    assert loaded.recent_files == {"src/auth.ts": 1234}
    assert loaded.completed == 1


async def test_no_file_and_no_dir_give_defaults(tmp_path: Path) -> None:
    loaded, error = await load_memory(tmp_path, "w9", model="m", expertise={"a": 0.4})
    assert error is None
    assert loaded.expertise == {"a": 0.4}
    loaded, error = await load_memory(None, "w9", model="m", expertise={"a": 0.4})
    assert error is None
    await save_memory(None, loaded)  # a no-op


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"{not json", None),
        (b'{"workerId": "w1", "expertise": {"react": 7}}', "$.expertise[...]"),
        (b'{"workerId": "w1", "recentFiles": [{"path": "a"}]}', "$.recentFiles[0]"),
        (b'{"workerId": "other"}', "$.workerId"),
    ],
)
async def test_corrupt_file_is_reported_and_replaced(
    tmp_path: Path, content: bytes, field: str | None
) -> None:
    path = memory_path(tmp_path, "w1")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    loaded, error = await load_memory(tmp_path, "w1", model="m", expertise={"a": 0.4})
    assert isinstance(error, MemoryFormatError)
    assert error.file == str(path)
    assert error.field == field
    assert loaded.expertise == {"a": 0.4}
    await save_memory(tmp_path, loaded)
    assert json.loads(path.read_text("utf-8"))["workerId"] == "w1"
