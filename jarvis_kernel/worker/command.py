"""The ``command`` executor: runs a task's ``payload.argv`` if this worker allows it.

A task comes from the bus, so it must never be a way to run code on a worker that did not
allow it. The rules, in the order they are applied:

- ``payload.argv`` is a non-empty list of strings (no NUL bytes), else ``executor.bad_payload``.
  It is never given to a shell: ``;``, ``|``, ``$(...)``, globs are plain characters.
- ``argv[0]`` is either a bare name, looked up on the worker's ``PATH`` (absolute
  directories only, none inside the workspace, so neither ``.`` in ``PATH`` nor a file the
  task wrote can answer for ``echo``), or an absolute path. A relative path (``./evil``,
  ``bin/tool``) is refused.
- The allowlist (empty by default: nothing runs) holds bare names and absolute paths. A name
  allows that name as found on ``PATH``, never a file of that name elsewhere
  (``/workspace/echo``). A path allows exactly that path after ``normpath``, *without*
  following symlinks: multi-call binaries (busybox) act on the name they are run by, so
  allowing ``/bin/echo -> busybox`` must not allow ``/workspace/sh -> busybox``.
  Anything else is ``executor.forbidden``.
- The resolved absolute path is executed (no second ``PATH`` lookup), in the workspace, in
  a new session, with a minimal environment: ``PATH``, ``HOME`` = the workspace, ``LANG``,
  plus the ``env`` option. The worker's own variables (API keys) are not passed on.
- On timeout or cancellation the whole process group gets SIGKILL.

Allowing an interpreter or a launcher (``python``, ``sh``, ``node``, ``env``, ``xargs``,
``find``, ``make``, ``git``...) allows arbitrary code (``python -c``, ``find -exec``): the
allowlist is then only a speed bump, and a warning is logged when the executor is built.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import ByteReceiveStream

from ..clock import run_with_timeout
from ..protocol import MAX_RESULT_BYTES, Assignment
from .executors import Completed, ExecutionContext, Failed, Outcome

__all__ = ["CommandExecutor", "CommandOptions"]

log = logging.getLogger(__name__)

# Names that run whatever their arguments say: allowing one allows arbitrary code.
_LAUNCHERS = frozenset(
    [
        "python",
        "python3",
        "sh",
        "bash",
        "dash",
        "zsh",
        "fish",
        "ksh",
        "node",
        "deno",
        "bun",
        "perl",
        "ruby",
        "php",
        "lua",
        "env",
        "xargs",
        "find",
        "make",
        "git",
        "sudo",
        "su",
        "nohup",
        "timeout",
        "nice",
        "busybox",
        "awk",
        "gawk",
        "sed",
        "ssh",
        "docker",
        "npx",
        "uv",
    ]
)
_ERROR_TAIL = 2000
_KILL_GRACE_S = 5.0


class CommandOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``options`` of a ``command`` worker."""

    allow: list[str] = []
    workspace: str | None = None
    timeout_s: float | None = 60.0
    max_output_bytes: int = 16 * 1024
    env: dict[str, str] = {}


class _Tail:
    """Keeps the last `limit` bytes of a stream, and how many came in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._buf += chunk
        if len(self._buf) > 2 * self.limit:
            del self._buf[: len(self._buf) - self.limit]

    def text(self) -> str:
        return bytes(self._buf[-self.limit :] if self.limit else b"").decode("utf-8", "replace")

    @property
    def truncated(self) -> bool:
        return self.total > self.limit


class CommandExecutor:
    """Runs ``payload.argv`` from the allowlist; the result is ``{exitCode, stdout, stderr}``.

    `timeout_s` is measured on the task's clock (None: no limit of its own; the task's
    ``timeoutS`` still applies). stdout and stderr keep their last `max_output_bytes` each,
    and are cut further if needed so that the result fits in 64 KiB of JSON
    (``truncated`` says so). A non-zero exit is ``command.exit_<code>``, death by a signal
    ``command.signal_<n>``, a program that cannot be started ``command.spawn``.
    """

    def __init__(
        self,
        *,
        allowlist: Iterable[str] = frozenset(),
        workspace: Path,
        timeout_s: float | None = 60.0,
        max_output_bytes: int = 16 * 1024,
        env: Mapping[str, str] | None = None,
        search_path: str | None = None,
    ) -> None:
        self.workspace = workspace.resolve()
        if not self.workspace.is_dir():
            raise ValueError(f"workspace {str(workspace)!r} is not a directory")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        if max_output_bytes < 0:
            raise ValueError(f"max_output_bytes must be >= 0, not {max_output_bytes}")
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self._names, self._paths = _split_allowlist(allowlist)
        raw_path = os.environ.get("PATH", os.defpath) if search_path is None else search_path
        self.search_path = _safe_search_path(raw_path, self.workspace)
        self._env = {"PATH": self.search_path, "HOME": str(self.workspace), "LANG": "C.UTF-8"}
        self._env.update(env or {})
        risky = sorted(e for e in self._names | self._paths if Path(e).name in _LAUNCHERS)
        if risky:
            log.warning(
                "command executor allows %s: an interpreter or launcher lets any task run "
                "arbitrary code on this worker",
                ", ".join(risky),
            )

    def resolve(self, program: str) -> str | None:
        """The absolute path `program` runs as, or None when this worker does not allow it."""
        if not program or "\x00" in program:
            return None
        if os.path.isabs(program):
            path = os.path.normpath(program)
            return path if path in self._paths and _is_executable(path) else None
        if "/" in program:
            return None  # relative paths: the workspace is the task's, not the worker's
        found = shutil.which(program, path=self.search_path)
        if found is None:
            return None
        found = os.path.normpath(found)
        return found if program in self._names or found in self._paths else None

    async def run(self, task: Assignment, ctx: ExecutionContext) -> Outcome:
        argv = _argv(task.payload)
        if isinstance(argv, Failed):
            return argv
        program = self.resolve(argv[0])
        if program is None:
            return Failed(
                error_key="executor.forbidden",
                error=f"{argv[0][:200]!r} is not allowed to run on worker {ctx.worker_id}",
            )
        done, ran = await run_with_timeout(
            ctx.clock, self.timeout_s, lambda: self._spawn([program, *argv[1:]])
        )
        if isinstance(ran, OSError):
            return Failed(error_key="command.spawn", error=f"{argv[0]}: {ran}")
        if not done or ran is None:
            return Failed(
                error_key="executor.timeout",
                error=f"{argv[0]} ran over {self.timeout_s} s; its process group was killed",
            )
        code, out, err = ran
        if code != 0:
            key = f"command.exit_{code}" if code > 0 else f"command.signal_{-code}"
            return Failed(error_key=key, error=err.text()[-_ERROR_TAIL:])
        return Completed(result=_fit_result(code, out, err))

    async def _spawn(self, argv: list[str]) -> tuple[int, _Tail, _Tail] | OSError:
        out, err = _Tail(self.max_output_bytes), _Tail(self.max_output_bytes)
        try:
            process = await anyio.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.workspace,
                env=self._env,
                start_new_session=True,
            )
        except OSError as exc:  # a value: run_with_timeout would wrap it in a group
            return exc
        try:
            async with anyio.create_task_group() as tg:
                assert process.stdout is not None and process.stderr is not None
                tg.start_soon(_drain, process.stdout, out)
                tg.start_soon(_drain, process.stderr, err)
            code = await process.wait()
        finally:
            # Also after a clean exit: whatever it left running in its group goes with it.
            _kill_group(process.pid)
            with anyio.move_on_after(_KILL_GRACE_S, shield=True):
                await process.aclose()
        return code, out, err


def _split_allowlist(allowlist: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    names: set[str] = set()
    paths: set[str] = set()
    for entry in allowlist:
        if not isinstance(entry, str) or not entry or "\x00" in entry:
            raise ValueError(f"allow entry {entry!r}: expected a program name or absolute path")
        if os.path.isabs(entry):
            paths.add(os.path.normpath(entry))
        elif "/" in entry:
            raise ValueError(f"allow entry {entry!r}: a relative path; give a name or /abs/path")
        else:
            names.add(entry)
    return frozenset(names), frozenset(paths)


def _safe_search_path(raw: str, workspace: Path) -> str:
    """`raw` without relative entries and without entries inside the workspace."""
    kept: list[str] = []
    for entry in raw.split(os.pathsep):
        if not os.path.isabs(entry):
            continue
        resolved = Path(entry).resolve()
        if resolved == workspace or workspace in resolved.parents:
            continue
        kept.append(os.path.normpath(entry))
    return os.pathsep.join(dict.fromkeys(kept))


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _argv(payload: dict[str, Any]) -> list[str] | Failed:
    argv = payload.get("argv")
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) and "\x00" not in a for a in argv)
    ):
        return Failed(
            error_key="executor.bad_payload",
            error="payload.argv must be a non-empty list of strings (never a shell string)",
        )
    return argv


async def _drain(stream: ByteReceiveStream, tail: _Tail) -> None:
    try:
        async for chunk in stream:
            tail.feed(chunk)
    except anyio.ClosedResourceError:
        pass


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _fit_result(code: int, out: _Tail, err: _Tail) -> dict[str, Any]:
    """``{exitCode, stdout, stderr, truncated}``, cut (keeping tails) to fit in an event."""
    stdout, stderr = out.text(), err.text()
    truncated = out.truncated or err.truncated
    budget = MAX_RESULT_BYTES - 256
    while True:
        result = {"exitCode": code, "stdout": stdout, "stderr": stderr, "truncated": truncated}
        if len(msgspec.json.encode(result)) <= budget:
            return result
        truncated = True
        if len(stdout) >= len(stderr):
            stdout = stdout[len(stdout) // 2 :]
        else:
            stderr = stderr[len(stderr) // 2 :]
