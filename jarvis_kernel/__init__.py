"""jarvis-kernel: an asyncio orchestration kernel for swarms of AI coding agents."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .clock import Clock, FakeClock, SystemClock
from .config import Config, load_config
from .errors import (
    BusError,
    BusUnavailable,
    ConfigError,
    ExecutorError,
    JarvisError,
    MemoryFormatError,
    ProtocolError,
    RuntimeUnavailable,
)
from .kernel import Kernel
from .protocol import Keys, Task

try:
    __version__ = version("jarvis-kernel")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+src"

__all__ = [
    "BusError",
    "BusUnavailable",
    "Clock",
    "Config",
    "ConfigError",
    "ExecutorError",
    "FakeClock",
    "JarvisError",
    "Kernel",
    "Keys",
    "MemoryFormatError",
    "ProtocolError",
    "RuntimeUnavailable",
    "SystemClock",
    "Task",
    "__version__",
    "load_config",
]
