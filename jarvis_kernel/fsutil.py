"""Files the kernel writes under `.memory/`: atomically, and under a lock.

`atomic_write` follows the memory contract: temporary file in the same folder, flush,
fsync, `os.replace`, fsync of the folder. A reader never sees half a file. `locked` holds
an exclusive `flock` on ``<file>.lock`` so two writers (threads or processes) doing
read-modify-write never lose each other's update. These are blocking calls: from async
code run them through `anyio.to_thread.run_sync`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["append_line", "atomic_write", "atomic_write_parts", "locked"]

# iovecs per writev call (Linux IOV_MAX is 1024)
_IOV_MAX = 1024


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never half."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def atomic_write_parts(path: str | os.PathLike[str], parts: Sequence[bytes]) -> None:
    """`atomic_write` of the concatenation of `parts`, without building it in memory.

    For big files assembled from cached pieces: the pieces go to the kernel with
    ``writev``, so no joined copy is made (at 100 MB the copy costs more than the write).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        try:
            _writev_all(fd, parts)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _writev_all(fd: int, parts: Sequence[bytes]) -> None:
    pending = [memoryview(p) for p in parts if p]
    while pending:
        batch = pending[:_IOV_MAX]
        written = os.writev(fd, batch)
        done = 0
        while done < len(batch) and written >= len(batch[done]):
            written -= len(batch[done])
            done += 1
        rest = pending[done:]
        if written:  # a short write stopped inside a part
            rest[0] = rest[0][written:]
        pending = rest


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock for `path` (on ``<path>.lock``) for the block's duration."""
    lock_path = Path(f"{os.fspath(path)}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def append_line(path: str | os.PathLike[str], line: bytes) -> None:
    """Append one line (a newline is added) under the lock, flushed and fsynced."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target), open(target, "ab") as handle:
        handle.write(line.rstrip(b"\n") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
