"""The librarian on real files: outputs, incremental runs, bad inputs, corruption, races."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from jarvis_kernel.clock import FakeClock
from jarvis_kernel.config import LibrarianConfig
from jarvis_kernel.librarian.store import Librarian

DAY_S = 86_400.0


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _project(memory: Path, pid: str, files: Any, **extra: Any) -> None:
    _write(
        memory / "projects" / pid / "context_map.json", {"projectId": pid, "files": files, **extra}
    )


@pytest.fixture
def memory(tmp_path: Path) -> Path:
    mem = tmp_path / "memory"
    _write(mem / "projects.json", {"projects": [{"id": "shop"}, {"id": "kernel"}]})
    _project(
        mem,
        "shop",
        [
            {
                "path": "src/auth.ts",
                "summary": "NextAuth config with GitHub provider",
                "tags": ["auth", "nextauth"],
                "symbols": ["authOptions"],
            },
            {"path": "prisma/schema.prisma", "summary": "Prisma schema", "tags": ["database"]},
        ],
    )
    _project(mem, "kernel", {"src/fsutil.py": {"summary": "atomic_write and locks"}})
    return mem


def _lib(memory: Path, clock: FakeClock | None = None, **cfg: Any) -> Librarian:
    return Librarian(memory, config=LibrarianConfig(**cfg), clock=clock or FakeClock())


def test_outputs_have_the_spec_shape(memory: Path) -> None:
    lib = _lib(memory)
    report = lib.index()
    assert report.errors == []
    assert report.patterns == 3
    assert report.wrote
    data = json.loads((memory / "patterns.json").read_text())
    assert data["version"] == 1
    assert data["generatedAt"].endswith("Z")
    first = data["patterns"][0]
    assert set(first) >= {
        "id",
        "name",
        "description",
        "filePath",
        "project",
        "capabilities",
        "tags",
        "source",
        "stale",
    } - {"stale"}
    assert set(first["source"]) == {"contextMap", "sha256", "extractedAt"}
    index = json.loads((memory / "global_index.json").read_text())
    assert index["auth"] == ["shop"]
    assert list(index) == sorted(index)
    lib.close()


def test_incremental_run_rereads_only_changed_maps(memory: Path) -> None:
    lib = _lib(memory)
    assert sorted(lib.index().reread) == ["kernel", "shop"]
    second = lib.index()
    assert second.reread == []
    assert not second.wrote
    os.utime(memory / "projects/kernel/context_map.json")  # touched, same bytes
    assert lib.index().reread == []
    _project(memory, "kernel", {"src/fsutil.py": {"summary": "atomic_write, now with fsync"}})
    assert lib.index().reread == ["kernel"]
    lib.close()


async def test_vanished_files_go_stale_and_are_dropped_later(memory: Path) -> None:
    clock = FakeClock()
    lib = _lib(memory, clock, stale_drop_after_s=DAY_S)
    lib.index()
    _project(memory, "shop", [{"path": "src/auth.ts", "summary": "NextAuth config"}])
    report = lib.index()
    assert report.stale == 1
    data = json.loads((memory / "patterns.json").read_text())
    stale = [p for p in data["patterns"] if p.get("stale")]
    assert [p["filePath"] for p in stale] == ["prisma/schema.prisma"]
    assert all(h.file_path != "prisma/schema.prisma" for h in lib.search("prisma schema"))
    await clock.advance(DAY_S)
    assert lib.index().dropped == 1
    paths = [p["filePath"] for p in json.loads((memory / "patterns.json").read_text())["patterns"]]
    assert "prisma/schema.prisma" not in paths
    lib.close()


def test_a_project_leaving_projects_json_goes_stale(memory: Path) -> None:
    lib = _lib(memory)
    lib.index()
    _write(memory / "projects.json", [{"id": "shop"}])
    report = lib.index()
    assert report.stale == 1
    assert json.loads((memory / "global_index.json").read_text()).get("testing") is None
    assert all(h.project == "shop" for h in lib.search("atomic_write"))
    lib.close()


@pytest.mark.parametrize(
    ("content", "field", "reason"),
    [
        ("{ not json", None, "not valid JSON"),
        ({"projectId": "bad", "files": [{"path": 7}]}, "$.files[0].path", "Expected `str`"),
        (
            {"projectId": "bad", "files": [{"path": "../../../etc/passwd"}]},
            "$.files[0].path",
            "climbs out",
        ),
        ({"projectId": "bad", "files": "nope"}, "$.files", "Expected"),
        ({"projectId": "other", "files": []}, "$.projectId", "does not match"),
    ],
)
def test_a_bad_map_is_reported_and_skipped(
    memory: Path, content: Any, field: str | None, reason: str
) -> None:
    _write(memory / "projects.json", [{"id": "shop"}, {"id": "bad"}, {"id": "kernel"}])
    _write(memory / "projects/bad/context_map.json", content)
    lib = _lib(memory)
    report = lib.index()
    [error] = report.errors
    assert error.file == "projects/bad/context_map.json"
    assert error.field == field
    assert reason in error.reason
    assert report.patterns == 3  # the others are indexed
    lib.close()


def test_a_missing_map_and_bad_project_entries_are_reported(memory: Path) -> None:
    _write(
        memory / "projects.json",
        {"projects": [{"id": "shop"}, {"id": 5}, {"id": "ghost"}, {"id": "kernel"}]},
    )
    lib = _lib(memory)
    report = lib.index()
    assert [(e.file, e.field) for e in report.errors] == [
        ("projects.json", "$.projects[1].id"),
        ("projects/ghost/context_map.json", None),
    ]
    assert report.patterns == 3
    lib.close()


def test_a_broken_projects_json_changes_nothing(memory: Path) -> None:
    lib = _lib(memory)
    lib.index()
    before = (memory / "patterns.json").read_bytes()
    _write(memory / "projects.json", "[{")
    report = lib.index()
    assert report.errors[0].file == "projects.json"
    assert (memory / "patterns.json").read_bytes() == before
    lib.close()


def test_a_map_over_the_size_limit_is_skipped(memory: Path) -> None:
    lib = _lib(memory, max_map_bytes=200)
    _project(memory, "shop", [{"path": f"f{i}.ts", "summary": "x" * 50} for i in range(10)])
    report = lib.index()
    assert [e.file for e in report.errors] == ["projects/shop/context_map.json"]
    assert "over the limit" in report.errors[0].reason
    assert report.patterns == 1
    lib.close()


def test_a_huge_map_is_indexed(memory: Path) -> None:
    files = {
        f"src/mod{i}/file_{i}.ts": {
            "summary": f"Handler number {i} for widgets",
            "tags": ["api"],
            "symbols": [f"handle{i}"],
        }
        for i in range(20_000)
    }
    _project(memory, "shop", files)
    lib = _lib(memory)
    report = lib.index()
    assert report.errors == []
    assert report.patterns == 20_001
    [hit] = lib.search("handle12345", limit=1)
    assert hit.file_path == "src/mod12345/file_12345.ts"
    json.loads((memory / "patterns.json").read_text())  # whole and valid
    lib.close()


def test_corrupt_or_missing_index_is_rebuilt_from_the_json_files(memory: Path) -> None:
    lib = _lib(memory)
    lib.index()
    expected = [h.file_path for h in lib.search("nextauth github")]
    lib.close()
    db = memory / "librarian.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    lib = _lib(memory)
    assert [h.file_path for h in lib.search("nextauth github")] == expected
    lib.close()
    db.unlink()
    lib = _lib(memory)
    assert [h.file_path for h in lib.search("nextauth github")] == expected
    lib.close()


def test_a_deleted_patterns_json_is_written_again(memory: Path) -> None:
    lib = _lib(memory)
    lib.index()
    (memory / "patterns.json").unlink()
    assert lib.index().wrote
    assert len(json.loads((memory / "patterns.json").read_text())["patterns"]) == 3
    lib.close()


def test_two_librarians_writing_at_once_lose_nothing(memory: Path) -> None:
    projects = [{"id": f"p{i}"} for i in range(8)]
    _write(memory / "projects.json", projects)
    for i in range(8):
        _project(memory, f"p{i}", [{"path": f"f{j}.py", "summary": f"file {j}"} for j in range(50)])
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(n: int) -> None:
        lib = _lib(memory)
        try:
            barrier.wait()
            for k in range(3):
                _project(
                    memory,
                    f"p{(n + k) % 8}",
                    [{"path": f"f{j}.py", "summary": f"file {j} v{n}{k}"} for j in range(50)],
                )
                lib.index()
        except BaseException as exc:
            errors.append(exc)
        finally:
            lib.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    final = _lib(memory)
    final.index()
    data = json.loads((memory / "patterns.json").read_text())
    per_project: dict[str, int] = {}
    for p in data["patterns"]:
        per_project[p["project"]] = per_project.get(p["project"], 0) + 1
    assert per_project == {f"p{i}": 50 for i in range(8)}
    assert sorted(json.loads((memory / "global_index.json").read_text())) is not None
    assert not list(memory.glob(".*.tmp"))  # no half-written file left behind
    final.close()


def test_active_project_hits_and_others_are_labelled(memory: Path) -> None:
    _project(
        memory,
        "kernel",
        {"src/auth.py": {"summary": "GitHub OAuth for the kernel", "tags": ["auth"]}},
    )
    lib = _lib(memory)
    hits = lib.search("github auth", project="kernel")
    assert {h.active for h in hits} == {True, False}
    assert all((h.project == "kernel") == h.active for h in hits)
    lib.close()
