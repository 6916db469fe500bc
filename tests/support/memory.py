"""The sample `.memory/` of the repository, copied for a test."""

from __future__ import annotations

import shutil
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[2] / ".memory"


def copy_sample_memory(dest: Path) -> Path:
    """Copy the sample's inputs only (other processes may be writing the rest of it) to `dest`.

    Returns `dest`: `projects.json`, `active_project.json` and every `projects/<id>/`.
    """
    shutil.copytree(SAMPLE / "projects", dest / "projects")
    for name in ("projects.json", "active_project.json"):
        shutil.copy(SAMPLE / name, dest / name)
    return dest
