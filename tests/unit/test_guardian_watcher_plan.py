"""plan_revert and the path checks: the pure half of the workspace guardian."""

from __future__ import annotations

import pytest

from jarvis_kernel.guardian.gitws import safe_relpath
from jarvis_kernel.guardian.watcher import RevertPlan, is_ignored, plan_revert


def test_paths_are_sorted_by_state() -> None:
    plan = plan_revert(
        {"a.py", "src/b.py", "new.py", "gone.py", "out.log", "same.py"},
        {
            "a.py": "tracked_modified",
            "src/b.py": "tracked_modified",
            "gone.py": "tracked_deleted",
            "new.py": "untracked",
            "out.log": "ignored",
            "same.py": "unchanged",
        },
    )
    assert plan == RevertPlan(
        restore=["a.py", "gone.py", "src/b.py"],
        quarantine_move=["new.py"],
        skip=["out.log", "same.py"],
        refused=[],
    )


def test_nothing_tracked_gives_an_empty_restore_list_not_everything() -> None:
    plan = plan_revert({"new.py"}, {"new.py": "untracked"})
    assert plan.restore == []
    assert plan.quarantine_move == ["new.py"]
    assert plan_revert(set(), {}) == RevertPlan()


@pytest.mark.parametrize(
    "path", ["../x.py", "a/../../x.py", "/etc/passwd", "C:/x.py", ".git/config", "a/.GIT/x", ""]
)
def test_paths_climbing_out_are_refused(path: str) -> None:
    plan = plan_revert({path}, {path: "tracked_modified"})
    assert plan.refused == [path]
    assert plan.restore == [] and plan.quarantine_move == []


def test_a_path_without_a_state_or_outside_is_refused() -> None:
    plan = plan_revert({"a.py", "link.py"}, {"link.py": "outside"})
    assert plan.refused == ["a.py", "link.py"]


def test_paths_are_normalised_and_deduplicated() -> None:
    plan = plan_revert({"./a.py", "a.py", "src//b.py"}, dict.fromkeys(
        ["./a.py", "a.py", "src//b.py"], "tracked_modified"
    ))  # fmt: skip
    assert plan.restore == ["a.py", "src/b.py"]


def test_safe_relpath() -> None:
    assert safe_relpath("src/./a.py") == "src/a.py"
    assert safe_relpath("a\\..\\b") is None
    assert safe_relpath("..") is None
    assert safe_relpath(".") is None


def test_ignore_globs_match_the_path_or_a_part() -> None:
    patterns = [".git", "__pycache__", "*.pyc", "build"]
    assert is_ignored("pkg/__pycache__/m.cpython-311.pyc", patterns)
    assert is_ignored("build/out.js", patterns)
    assert is_ignored("x.pyc", patterns)
    assert not is_ignored("builder.py", patterns)
    assert not is_ignored("src/a.py", patterns)
