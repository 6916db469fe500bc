"""Helpers for tests — ours and those of applications that embed the kernel.

- `FakeClock`: time that moves only when the test says so.
- `RedisServer`: a throwaway ``redis-server`` on a free loopback port, started and
  stopped for real (used by the contract, integration and benchmark suites).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from .clock import FakeClock

__all__ = ["FakeClock", "RedisServer", "RedisServerError", "free_port"]


class RedisServerError(RuntimeError):
    """redis-server is missing or did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` process of our own on 127.0.0.1.

    By default nothing is persisted (``--save "" --appendonly no``). With ``persist=True``
    every write goes to an append-only file (fsync always), so `restart` keeps the data, as
    a production Redis with AOF would.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        persist: bool = False,
        password: str | None = None,
        binary: str | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        found = binary or shutil.which("redis-server")
        if not found:
            raise RedisServerError("redis-server is not installed (apt-get install redis-server)")
        self.binary = found
        self.port = port or free_port()
        self.persist = persist
        self.password = password
        self.start_timeout_s = start_timeout_s
        self._dir = tempfile.TemporaryDirectory(prefix="jarvis-redis-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _argv(self) -> list[str]:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", self._dir.name, "--save", "", "--protected-mode", "no"]
        if self.persist:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def start(self) -> RedisServer:
        """Start the server and return once it says it accepts connections."""
        if self.running:
            return self
        proc = subprocess.Popen(self._argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._proc = proc
        ready = threading.Event()
        lines: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                lines.append(line)
                if "Ready to accept connections" in line:
                    ready.set()
            ready.set()  # EOF: the process ended

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(self.start_timeout_s) or proc.poll() is not None:
            self.stop()
            tail = "\n".join(lines[-10:])
            raise RedisServerError(f"redis-server did not start on port {self.port}:\n{tail}")
        return self

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are still accepted, nothing is answered."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, which saves the AOF; SIGKILL with `kill`)."""
        self.resume()  # a paused server would not act on SIGTERM
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)  # it ends at EOF, once the process is gone
        if proc.stdout is not None:
            proc.stdout.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def env_flag(name: str) -> bool:
    """True when environment variable `name` is set to 1/true/yes."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}


def project_root() -> Path:
    """The folder that holds the `jarvis_kernel` package."""
    return Path(__file__).resolve().parent.parent
