"""The workspace guardian on real git repositories, real watchfiles and a real build check.

The build check is a Python syntax check of every ``*.py`` in the workspace. Debounce runs
on the FakeClock; filesystem events are real (awaited, never slept for).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pygit2
import pytest

from jarvis_kernel.clock import FakeClock
from jarvis_kernel.config import WorkspaceConfig
from jarvis_kernel.guardian.gitws import GitWorkspace
from jarvis_kernel.guardian.watcher import BuildCheck, WorkspaceWatcher

SYNTAX_CHECK = [
    sys.executable,
    "-c",
    "import ast, glob\n"
    "for p in sorted(glob.glob('**/*.py', recursive=True)):\n"
    "    ast.parse(open(p, 'rb').read(), p)\n",
]
GOOD = b"x = 1\n"
BROKEN = b"def broken(:\n"
DEBOUNCE_S = 2.0
LIMIT_S = 20


def commit_all(repo: pygit2.Repository, message: str) -> None:
    repo.index.add_all()
    repo.index.write()
    tree = repo.index.write_tree()
    sig = pygit2.Signature("test", "test@example.com")
    parents = [] if repo.head_is_unborn else [repo.head.target]
    repo.create_commit("HEAD", sig, sig, message, tree, parents)


def make_repo(root: Path, files: dict[str, bytes]) -> pygit2.Repository:
    repo = pygit2.init_repository(str(root))
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    commit_all(repo, "init")
    return repo


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path.resolve() / "ws"
    root.mkdir()
    make_repo(root, {"a.py": b"a = 1\n", "b.py": b"b = 2\n", "pkg/c.py": b"c = 3\n"})
    return root


@pytest.fixture
def memory(tmp_path: Path) -> Path:
    return tmp_path.resolve() / "memory"


def watcher_for(root: Path, memory: Path, clock: FakeClock, seen: list[Any]) -> WorkspaceWatcher:
    config = WorkspaceConfig(
        path=str(root), build_command=SYNTAX_CHECK, build_timeout_s=60.0, debounce_s=DEBOUNCE_S
    )
    return WorkspaceWatcher(config, memory, clock, on_incident=seen.append)


async def settle_burst(watcher: WorkspaceWatcher, clock: FakeClock, rels: set[str]) -> None:
    """Wait for the burst's real events, then let the debounce pass on the fake clock."""
    count = watcher.bursts
    await watcher.wait_for_pending(rels)
    await clock.wait_for_sleepers(1)
    await clock.advance(DEBOUNCE_S)
    await watcher.wait_for_bursts(count + 1)


def incidents(memory: Path) -> list[dict[str, Any]]:
    path = memory / "incidents.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_breaking_burst_is_quarantined_and_restored(ws: Path, memory: Path) -> None:
    clock, seen = FakeClock(), []
    (ws / "b.py").write_bytes(b"b = 'uncommitted but fine'\n")  # before the watcher: not ours
    watcher = watcher_for(ws, memory, clock, seen)
    with anyio.fail_after(LIMIT_S):
        async with anyio.create_task_group() as tg:
            await tg.start(watcher.run)
            (ws / "a.py").write_bytes(BROKEN)
            (ws / "pkg" / "c.py").write_bytes(b"c = 'fine edit in the same burst'\n")
            await settle_burst(watcher, clock, {"a.py", "pkg/c.py"})

            [incident] = incidents(memory)
            assert seen == [incident]
            assert incident["kind"] == "build_broken" and incident["outcome"] == "reverted_ok"
            assert incident["level"] == 2 and incident["action"] == "revert"
            assert incident["target"] == str(ws)
            assert incident["reverted"] == ["a.py", "pkg/c.py"]
            assert incident["quarantined"] == ["a.py", "pkg/c.py"]
            assert incident["evidence"]["changed"] == ["a.py", "pkg/c.py"]
            assert incident["evidence"]["exitCode"] == 1
            assert "SyntaxError" in incident["evidence"]["buildOutputTail"]
            assert incident["evidence"]["afterExitCode"] == 0
            qdir = Path(incident["quarantineDir"])
            assert qdir == memory / "quarantine" / incident["id"]
            assert (qdir / "a.py").read_bytes() == BROKEN
            assert (qdir / "pkg" / "c.py").read_bytes() == b"c = 'fine edit in the same burst'\n"
            assert (ws / "a.py").read_bytes() == b"a = 1\n"
            assert (ws / "pkg" / "c.py").read_bytes() == b"c = 3\n"
            assert (ws / "b.py").read_bytes() == b"b = 'uncommitted but fine'\n"
            assert watcher.last_check is not None and watcher.last_check.ok
            assert pygit2.Repository(str(ws)).status() == {
                "b.py": pygit2.enums.FileStatus.WT_MODIFIED
            }

            # the guardian's own writes are not a new burst: the next event is the only one
            (ws / "later.txt").write_bytes(b"x")
            await watcher.wait_for_pending({"later.txt"})
            assert watcher.pending == {"later.txt"}
            tg.cancel_scope.cancel()


async def test_a_new_broken_file_is_moved_not_deleted(ws: Path, memory: Path) -> None:
    clock, seen = FakeClock(), []
    watcher = watcher_for(ws, memory, clock, seen)
    with anyio.fail_after(LIMIT_S):
        async with anyio.create_task_group() as tg:
            await tg.start(watcher.run)
            (ws / "new").mkdir()
            (ws / "new" / "mod.py").write_bytes(BROKEN)
            await settle_burst(watcher, clock, {"new/mod.py"})
            tg.cancel_scope.cancel()
    [incident] = incidents(memory)
    assert incident["outcome"] == "reverted_ok"
    assert incident["reverted"] == [] and incident["quarantined"] == ["new/mod.py"]
    assert not (ws / "new" / "mod.py").exists()
    assert (Path(incident["quarantineDir"]) / "new" / "mod.py").read_bytes() == BROKEN


async def test_a_burst_that_does_not_break_is_left_alone(ws: Path, memory: Path) -> None:
    clock, seen = FakeClock(), []
    watcher = watcher_for(ws, memory, clock, seen)
    with anyio.fail_after(LIMIT_S):
        async with anyio.create_task_group() as tg:
            await tg.start(watcher.run)
            (ws / "a.py").write_bytes(GOOD)
            (ws / "d.py").write_bytes(GOOD)
            await settle_burst(watcher, clock, {"a.py", "d.py"})
            tg.cancel_scope.cancel()
    assert seen == [] and incidents(memory) == []
    assert watcher.last_check is not None and watcher.last_check.ok
    assert (ws / "a.py").read_bytes() == GOOD and (ws / "d.py").read_bytes() == GOOD
    assert not (memory / "quarantine").exists()


async def test_broken_head_reverts_the_burst_once_then_escalates(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    make_repo(root, {"a.py": b"a = 1\n", "b.py": BROKEN})  # HEAD itself is broken
    memory, clock, seen = tmp_path / "memory", FakeClock(), []
    watcher = watcher_for(root, memory, clock, seen)
    with anyio.fail_after(LIMIT_S):
        async with anyio.create_task_group() as tg:
            await tg.start(watcher.run)
            (root / "a.py").write_bytes(GOOD)
            await settle_burst(watcher, clock, {"a.py"})
            [incident] = incidents(memory)
            assert incident["outcome"] == "still_broken_escalated"
            assert incident["reverted"] == ["a.py"]
            assert (Path(incident["quarantineDir"]) / "a.py").read_bytes() == GOOD
            assert (root / "b.py").read_bytes() == BROKEN
            assert watcher.escalated

            # still broken: the next burst is checked but never reverted
            (root / "a.py").write_bytes(b"a = 'second try'\n")
            await settle_burst(watcher, clock, {"a.py"})
            assert len(incidents(memory)) == 1 and len(seen) == 1
            assert (root / "a.py").read_bytes() == b"a = 'second try'\n"

            # a fix makes it pass: reverting resumes
            (root / "b.py").write_bytes(GOOD)
            await settle_burst(watcher, clock, {"b.py"})
            assert not watcher.escalated
            tg.cancel_scope.cancel()


def test_restore_from_head_refuses_an_empty_list(ws: Path) -> None:
    (ws / "a.py").write_bytes(GOOD)
    git = GitWorkspace(ws)
    with pytest.raises(ValueError, match="empty path list"):
        git.restore_from_head([])
    assert (ws / "a.py").read_bytes() == GOOD
    assert git.restore_from_head(["a.py"]) == ["a.py"]
    assert (ws / "a.py").read_bytes() == b"a = 1\n"


def test_paths_are_taken_literally_not_as_patterns(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    make_repo(root, {"*.py": b"star\n", "a.py": b"a = 1\n"})
    (root / "*.py").write_bytes(b"edited\n")
    (root / "a.py").write_bytes(GOOD)
    GitWorkspace(root).restore_from_head(["*.py"])
    assert (root / "*.py").read_bytes() == b"star\n"
    assert (root / "a.py").read_bytes() == GOOD


def test_deleted_tracked_file_is_recreated_and_reported_missing(ws: Path, tmp_path: Path) -> None:
    (ws / "a.py").unlink()
    git = GitWorkspace(ws)
    assert git.classify(["a.py"]) == {"a.py": "tracked_deleted"}
    assert git.quarantine_copy(["a.py"], tmp_path / "q") == ([], ["a.py"])
    git.restore_from_head(["a.py"])
    assert (ws / "a.py").read_bytes() == b"a = 1\n"


def test_paths_climbing_out_are_refused(ws: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_bytes(b"secret\n")
    os.symlink(outside, ws / "linkdir")
    os.symlink(outside / "secret.py", ws / "link.py")
    git = GitWorkspace(ws)
    states = git.classify(["../outside/secret.py", "linkdir/secret.py", "link.py", "/etc/x"])
    assert set(states.values()) == {"outside"}
    for bad in (["../outside/secret.py"], ["linkdir/secret.py"], ["link.py"], [".git/HEAD"]):
        with pytest.raises(ValueError, match="outside the workspace"):
            git.restore_from_head(bad)
        with pytest.raises(ValueError, match="outside the workspace"):
            git.move_to_quarantine(bad, tmp_path / "q")
    assert (outside / "secret.py").read_bytes() == b"secret\n"
    assert git.classify(["b.py", "pkg"]) == {"b.py": "unchanged", "pkg": "unchanged"}


async def test_build_check_times_out_on_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    check = BuildCheck(
        [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(600)"],
        5.0,
        tmp_path,
        clock=clock,
    )
    results = []
    with anyio.fail_after(LIMIT_S):
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                results.append(await check.run())

            tg.start_soon(run)
            await clock.wait_for_sleepers(1)
            await clock.advance(5.0)
    [result] = results
    assert result.timed_out and not result.ok and result.exit_code is None


async def test_build_check_that_cannot_start_never_reverts(ws: Path, tmp_path: Path) -> None:
    check = BuildCheck([str(tmp_path / "no-such-program")], 5.0, tmp_path)
    result = await check.run()
    assert not result.started and not result.ok
    config = WorkspaceConfig(path=str(ws), build_command=["x"])
    watcher = WorkspaceWatcher(config, tmp_path / "memory", FakeClock(), build=check)
    (ws / "a.py").write_bytes(BROKEN)
    assert await watcher.handle_burst({"a.py"}) is None
    assert (ws / "a.py").read_bytes() == BROKEN
