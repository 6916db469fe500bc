"""Guardian recovery (b): time from a build-breaking write to the revert being done.

    python benchmarks/guardian_recovery.py [--trials 10] [--debounce 0.5]

A real git repository in a temporary folder, real watchfiles, the real clock and a Python
syntax check as the build. Each trial writes a broken tracked file and waits for the
incident; the time splits into the event delivery + debounce, the failing check, the
quarantine + restore, and the second (passing) check. Record the figures in
benchmarks/RESULTS.md under "## Guardian".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import pygit2

from jarvis_kernel.config import WorkspaceConfig
from jarvis_kernel.guardian.watcher import WorkspaceWatcher

CHECK = [
    sys.executable,
    "-c",
    "import ast, glob\n"
    "for p in sorted(glob.glob('**/*.py', recursive=True)):\n"
    "    ast.parse(open(p, 'rb').read(), p)\n",
]


def _repo(root: Path, files: int) -> None:
    repo = pygit2.init_repository(str(root))
    for i in range(files):
        (root / f"m{i:03d}.py").write_text(f"value_{i} = {i}\n")
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("bench", "bench@example.com")
    repo.create_commit("HEAD", sig, sig, "init", repo.index.write_tree(), [])


async def _trials(root: Path, memory: Path, trials: int, debounce_s: float) -> list[float]:
    config = WorkspaceConfig(path=str(root), build_command=CHECK, debounce_s=debounce_s)
    done: list[float] = []
    arrived = anyio.Event()

    def on_incident(incident: dict[str, Any]) -> None:
        assert incident["outcome"] == "reverted_ok", incident["outcome"]
        done.append(time.perf_counter())
        arrived.set()

    watcher = WorkspaceWatcher(config, memory, on_incident=on_incident)
    times: list[float] = []
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.run)
        for i in range(trials):
            arrived = anyio.Event()
            start = time.perf_counter()
            (root / "m000.py").write_text(f"def broken_{i}(:\n")
            with anyio.fail_after(30):
                await arrived.wait()
            times.append(done[-1] - start)
            with anyio.fail_after(30):
                await watcher.wait_for_bursts(i + 1)
        tg.cancel_scope.cancel()
    return times


async def _check_time(root: Path, runs: int = 5) -> float:
    from jarvis_kernel.guardian.watcher import BuildCheck

    check = BuildCheck(CHECK, 60.0, root)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        await check.run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--debounce", type=float, default=0.5)
    parser.add_argument("--files", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        root.mkdir()
        _repo(root, args.files)
        check_s = anyio.run(_check_time, root)
        times = anyio.run(_trials, root, Path(tmp) / "memory", args.trials, args.debounce)
    ms = sorted(t * 1000 for t in times)
    print(f"files={args.files} debounce_s={args.debounce} trials={args.trials}")
    print(f"one build check (median): {check_s * 1000:.0f} ms")
    print(
        f"write -> incident (revert done, check passed again): median {statistics.median(ms):.0f}"
        f" ms, min {ms[0]:.0f} ms, max {ms[-1]:.0f} ms"
    )
    overhead = statistics.median(ms) - args.debounce * 1000 - 2 * check_s * 1000
    print(f"beyond debounce + 2 checks (event delivery, git, files): ~{overhead:.0f} ms")


if __name__ == "__main__":
    main()
