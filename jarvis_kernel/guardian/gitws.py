"""`GitWorkspace`: the blocking git and file work of the workspace guardian (pygit2).

Every method blocks: call them through `anyio.to_thread.run_sync`. Every path is a
workspace-relative POSIX path and is checked again here (`safe_relpath` plus a symlink
check), whatever the caller already checked: nothing outside the working tree, nothing in
`.git`, is ever read, written, moved or checked out.

The one dangerous call is the checkout: libgit2 treats an *empty* path list as "every
path", and with ``FORCE`` that would reset the whole tree. `restore_from_head` therefore
refuses an empty list, and passes ``DISABLE_PATHSPEC_MATCH`` so that each path is taken
literally (``*.py`` is a file name, not a pattern matching every Python file).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import pygit2
from pygit2.enums import CheckoutStrategy, FileStatus, ObjectType

__all__ = ["GitWorkspace", "PathState", "safe_relpath"]

PathState = Literal[
    "tracked_modified", "tracked_deleted", "untracked", "ignored", "unchanged", "outside"
]


def safe_relpath(path: str) -> str | None:
    """`path` as a clean workspace-relative POSIX path, or None if it could leave the tree.

    Refused: empty, absolute, drive-qualified, any ``..`` part, any ``.git`` part, NUL.
    Pure: looks at the string only (symlinks are `GitWorkspace`'s job).
    """
    if not path or "\0" in path or "\\" in path:
        return None
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or p.lower() == ".git" for p in parts):
        return None
    return "/".join(parts)


class GitWorkspace:
    """A git working tree the guardian may restore paths of (blocking calls)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.realpath(path))
        self.repo = pygit2.Repository(str(self.root))
        if self.repo.is_bare or self.repo.workdir is None:
            raise ValueError(f"{self.root} is not a git working tree")
        workdir = Path(os.path.realpath(self.repo.workdir))
        if workdir != self.root:
            raise ValueError(f"{self.root} is not the top of its git working tree ({workdir})")

    # -- paths ---------------------------------------------------------------------------

    def resolve(self, relpath: str) -> Path | None:
        """The absolute path of `relpath`, or None if it is unsafe or leads outside.

        A parent directory that is a symlink out of the tree, or a file that is a symlink
        to something outside, makes the path unsafe.
        """
        norm = safe_relpath(relpath)
        if norm is None:
            return None
        full = self.root / norm
        if not _inside(Path(os.path.realpath(full.parent)), self.root):
            return None
        if full.is_symlink() and not _inside(Path(os.path.realpath(full)), self.root):
            return None
        return full

    def _checked(self, paths: Iterable[str]) -> list[tuple[str, Path]]:
        out = []
        for rel in paths:
            full = self.resolve(rel)
            norm = safe_relpath(rel)
            if full is None or norm is None:
                raise ValueError(f"refusing a path outside the workspace: {rel!r}")
            out.append((norm, full))
        return out

    # -- reading -------------------------------------------------------------------------

    def _head_tree(self) -> pygit2.Tree | None:
        if self.repo.head_is_unborn:
            return None
        tree: pygit2.Tree = self.repo.head.peel(pygit2.Tree)
        return tree

    def classify(self, paths: Iterable[str]) -> dict[str, PathState]:
        """The state of each path against HEAD (keys are the paths as given)."""
        tree = self._head_tree()
        return {rel: self._state(rel, tree) for rel in paths}

    def _state(self, rel: str, tree: pygit2.Tree | None) -> PathState:
        full = self.resolve(rel)
        norm = safe_relpath(rel)
        if full is None or norm is None:
            return "outside"
        exists = os.path.lexists(full)
        entry = _tree_entry(tree, norm)
        if entry is not None:
            if entry.type == ObjectType.TREE:
                return "unchanged"  # a directory event; its files are reported one by one
            if not exists:
                return "tracked_deleted"
            flags = self.repo.status_file(norm)
            return "unchanged" if flags == FileStatus.CURRENT else "tracked_modified"
        if self.repo.path_is_ignored(norm):
            return "ignored"
        if exists and not full.is_dir():
            return "untracked"
        return "unchanged"  # gone again, or a new directory

    # -- acting --------------------------------------------------------------------------

    def quarantine_copy(self, paths: Sequence[str], dest: Path) -> tuple[list[str], list[str]]:
        """Copy each path byte for byte to ``dest/<path>``: (copied, missing).

        A deleted file has nothing to copy; it is listed in `missing`. A symlink is copied
        as a link, never followed.
        """
        copied: list[str] = []
        missing: list[str] = []
        for norm, full in self._checked(paths):
            if not os.path.lexists(full):
                missing.append(norm)
                continue
            target = dest / norm
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(full, target, follow_symlinks=False)
            copied.append(norm)
        return copied, missing

    def restore_from_head(self, paths: Sequence[str]) -> list[str]:
        """Check out exactly `paths` from HEAD (working tree and index); returns them.

        Raises ValueError on an empty list: libgit2 reads "no paths" as "all paths".
        """
        if not paths:
            raise ValueError("refusing to restore an empty path list (it means the whole tree)")
        norms = [norm for norm, _ in self._checked(paths)]
        assert norms, "a non-empty path list stays non-empty"
        strategy = CheckoutStrategy.FORCE | CheckoutStrategy.DISABLE_PATHSPEC_MATCH
        self.repo.checkout_head(strategy=strategy, paths=norms)  # type: ignore[no-untyped-call]
        return norms

    def move_to_quarantine(self, paths: Sequence[str], dest: Path) -> list[str]:
        """Move each (untracked) path to ``dest/<path>``; nothing is deleted."""
        moved: list[str] = []
        for norm, full in self._checked(paths):
            if not os.path.lexists(full):
                continue
            target = dest / norm
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(full, target)
            moved.append(norm)
        return moved


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _tree_entry(tree: pygit2.Tree | None, norm: str) -> pygit2.Object | None:
    if tree is None:
        return None
    try:
        entry: pygit2.Object = tree[norm]
    except KeyError:
        return None
    return entry
