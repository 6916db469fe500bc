"""The kernel's exceptions.

Expected outcomes (no bids, a worker exited, a message rejected) are values, not
exceptions. What is raised is either bad input the caller must fix, or a service that
cannot be reached::

    JarvisError
    ├── ConfigError            a setting is wrong: names the key, the value and what was expected
    ├── ProtocolError          a wire message failed to decode or validate (carries the path)
    ├── BusError               the bus failed
    │   └── BusUnavailable     the bus could not be reached within the reconnect budget
    ├── RuntimeUnavailable     a worker runtime (process spawner, Docker daemon) cannot be used
    ├── ExecutorError          an executor is misconfigured (not a task failure: those are events)
    └── MemoryFormatError      a `.memory/` file is malformed: names the file, the field and why

Foreign exceptions (redis-py, aiodocker, msgspec, pygit2) are translated at the boundary
with ``raise ... from exc`` so callers only ever catch these.
"""

from __future__ import annotations

__all__ = [
    "BusError",
    "BusUnavailable",
    "ConfigError",
    "ExecutorError",
    "JarvisError",
    "MemoryFormatError",
    "ProtocolError",
    "RuntimeUnavailable",
]


class JarvisError(Exception):
    """Root of every exception the kernel raises on purpose."""


class ConfigError(JarvisError):
    """A configuration value is wrong. The message names the key, the value and the expectation."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        super().__init__(f"{message} (from {source})" if source else message)
        self.key = key
        self.source = source


class ProtocolError(JarvisError):
    """A wire message is not valid JSON or fails validation.

    ``path`` is msgspec's location of the fault (for example ``$.requiredSkills[1]``) when known.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class BusError(JarvisError):
    """An operation on the bus failed."""


class BusUnavailable(BusError):
    """The bus could not be reached, even after reconnecting with backoff."""


class RuntimeUnavailable(JarvisError):
    """A worker runtime cannot be used (for example the Docker daemon does not answer)."""


class ExecutorError(JarvisError):
    """An executor is configured wrongly. Failures of a task are events, not this."""


class MemoryFormatError(JarvisError):
    """A `.memory/` file is malformed. The message names the file, the field and the reason."""

    def __init__(self, message: str, *, file: str, field: str | None = None) -> None:
        where = f"{file}" + (f" at {field}" if field else "")
        super().__init__(f"{where}: {message}")
        self.file = file
        self.field = field
