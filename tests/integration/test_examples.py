"""The examples run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_embed_runs_the_kernel_inside_an_asyncio_app(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embed.py")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for task_id in ("t-button", "t-schema", "t-readme"):
        assert any(line.startswith(f"{task_id}: completed by ") for line in lines), done.stdout
    assert any(line.startswith("app: ticker ran ") for line in lines)
    assert lines[-1] == "app: done"
