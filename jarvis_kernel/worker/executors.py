"""Executors: what actually does a task once a worker has it.

An `Executor` gets the `Assignment` and an `ExecutionContext` (clock, progress reporting,
how well this worker fits the task) and returns an `Outcome` value: `Completed` or
`Failed`. A task failing is an outcome, not an exception; an executor that raises is
reported by the worker as ``executor.error``, one that overruns ``timeoutS`` as
``executor.timeout``.

`make_executor` builds one from a `WorkerConfig` (``executor`` and its ``options`` table);
it is the only entry point, and a bad option is an `ExecutorError` naming the worker:

- ``sim``: `SimExecutor`, a pretend agent (demos, tests, benchmarks);
- ``command``: `CommandExecutor` (``worker/command.py``), runs ``payload.argv`` if allowlisted;
- ``python``: `PythonExecutor` (``worker/pyfunc.py``), calls a configured ``module:function``;
- ``llm``: `LlmExecutor` (``worker/llm.py``), an OpenAI-compatible chat-completions call.

The last three are imported when asked for, so a worker that only simulates never loads
aiohttp.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from ..clock import Clock
from ..config import WorkerConfig
from ..errors import ExecutorError
from ..protocol import MAX_RESULT_BYTES, Assignment

__all__ = [
    "Completed",
    "ExecutionContext",
    "Executor",
    "Failed",
    "Outcome",
    "SimExecutor",
    "check_result",
    "make_executor",
]


class Completed(msgspec.Struct, frozen=True, kw_only=True):
    """The task is done. `result` must encode to at most 64 KiB of JSON."""

    result: Any = None
    token_usage: int = 0


class Failed(msgspec.Struct, frozen=True, kw_only=True):
    """The task failed; `error_key` is stable and short (``tsc.TS2322``, ``sim.failed``)."""

    error_key: str
    error: str = ""


Outcome = Completed | Failed


def check_result(result: Any) -> Failed | None:
    """`Failed` (``executor.bad_result``) if `result` is not JSON or too big for an event."""
    try:
        size = len(msgspec.json.encode(result))
    except Exception as exc:  # msgspec raises TypeError, OverflowError, EncodeError...
        return Failed(
            error_key="executor.bad_result", error=f"the result is not JSON: {exc}"[:1000]
        )
    if size > MAX_RESULT_BYTES:
        return Failed(
            error_key="executor.bad_result",
            error=f"the result is {size} bytes as JSON; at most {MAX_RESULT_BYTES}",
        )
    return None


ProgressFn = Callable[[int, str], Awaitable[None]]


class ExecutionContext:
    """What an executor may use while it runs one task."""

    def __init__(self, *, worker_id: str, clock: Clock, fit: float, progress: ProgressFn) -> None:
        self.worker_id = worker_id
        self.clock = clock
        self.fit = fit
        """How well this worker suits the task, in [0, 1] (`scoring.task_fit`)."""
        self._progress = progress
        self.token_usage = 0
        """Tokens reported so far through `progress`."""

    async def progress(self, token_usage: int, note: str = "") -> None:
        """Report tokens used since the previous report (a ``task.progress`` event)."""
        usage = max(0, int(token_usage))
        self.token_usage += usage
        await self._progress(usage, note)


class Executor(Protocol):
    """Runs one task. Must honour cancellation (the worker cancels on timeout or kill)."""

    async def run(self, task: Assignment, ctx: ExecutionContext) -> Outcome: ...


SIM_ERROR_KEYS: Final = (
    "sim.tests_failed",
    "sim.type_error",
    "sim.lint_failed",
    "sim.merge_conflict",
    "sim.wrong_approach",
)


class SimExecutor:
    """A pretend agent for demos, tests and benchmarks.

    - duration: `duration_s` if given, else ``base_s * (0.5 + complexity)``, slept on
      ``ctx.clock`` in `steps` equal steps, each reporting token usage as progress;
    - tokens: about ``tokens_base + tokens_per_complexity * complexity`` in all;
    - success with probability ``base_success + (1 - base_success) * ctx.fit - fail_rate``
      (clamped to [0, 1]); a failure's ``errorKey`` is drawn from `error_keys` (by default
      five kinds of everyday failure, so that chance failures look like chance to the
      guardian; give one key to simulate a systematic error).

    Randomness comes from this executor's own seeded `random.Random`.
    """

    def __init__(
        self,
        *,
        duration_s: float | None = None,
        fail_rate: float = 0.0,
        seed: int | None = None,
        base_s: float = 2.0,
        steps: int = 4,
        base_success: float = 0.6,
        tokens_base: int = 500,
        tokens_per_complexity: int = 4000,
        error_keys: Sequence[str] = SIM_ERROR_KEYS,
    ) -> None:
        if (
            isinstance(error_keys, str)
            or not error_keys
            or not all(isinstance(k, str) and 0 < len(k) <= 200 for k in error_keys)
        ):
            raise ValueError(
                f"error_keys must be a non-empty list of strings of 1-200 characters, "
                f"got {error_keys!r}"
            )
        self.duration_s = duration_s
        self.fail_rate = fail_rate
        self.base_s = base_s
        self.steps = max(1, steps)
        self.base_success = base_success
        self.tokens_base = tokens_base
        self.tokens_per_complexity = tokens_per_complexity
        self.error_keys = tuple(error_keys)
        self._rng = random.Random(seed)

    def duration_for(self, task: Assignment) -> float:
        if self.duration_s is not None:
            return max(0.0, self.duration_s)
        return self.base_s * (0.5 + task.complexity)

    def success_probability(self, fit: float) -> float:
        p = self.base_success + (1.0 - self.base_success) * fit - self.fail_rate
        return min(1.0, max(0.0, p))

    async def run(self, task: Assignment, ctx: ExecutionContext) -> Outcome:
        step_s = self.duration_for(task) / self.steps
        total = self.tokens_base + self.tokens_per_complexity * task.complexity
        for step in range(1, self.steps + 1):
            await ctx.clock.sleep(step_s)
            tokens = round(total / self.steps * self._rng.uniform(0.8, 1.2))
            await ctx.progress(tokens, f"step {step}/{self.steps}")
        p = self.success_probability(ctx.fit)
        if self._rng.random() < p:
            return Completed(
                result={"summary": f"simulated {task.task_id}", "steps": self.steps},
                token_usage=ctx.token_usage,
            )
        key = self._rng.choice(self.error_keys)
        return Failed(error_key=key, error=f"simulated failure (p_success={p:.2f})")


def _sim(spec: WorkerConfig, seed: int | None) -> Executor:
    opts: Mapping[str, Any] = spec.options
    return SimExecutor(
        duration_s=spec.duration_s,
        fail_rate=spec.fail_rate,
        seed=seed if seed is not None else opts.get("seed"),
        base_s=float(opts.get("base_s", 2.0)),
        steps=int(opts.get("steps", 4)),
        error_keys=opts.get("error_keys", SIM_ERROR_KEYS),
    )


def _command(spec: WorkerConfig, seed: int | None) -> Executor:
    from .command import CommandExecutor, CommandOptions

    opts = msgspec.convert(spec.options, CommandOptions)
    return CommandExecutor(
        allowlist=frozenset(opts.allow),
        workspace=Path(opts.workspace) if opts.workspace else Path.cwd(),
        timeout_s=opts.timeout_s,
        max_output_bytes=opts.max_output_bytes,
        env=opts.env,
    )


def _python(spec: WorkerConfig, seed: int | None) -> Executor:
    from .pyfunc import PythonExecutor, PythonOptions

    return PythonExecutor(msgspec.convert(spec.options, PythonOptions).target)


def _llm(spec: WorkerConfig, seed: int | None) -> Executor:
    from .llm import LlmExecutor

    return LlmExecutor.from_options(spec.options, environ=os.environ)


_FACTORIES: Mapping[str, Callable[[WorkerConfig, int | None], Executor]] = {
    "sim": _sim,
    "command": _command,
    "python": _python,
    "llm": _llm,
}


def make_executor(spec: WorkerConfig, *, seed: int | None = None) -> Executor:
    """The executor named by ``spec.executor``, or `ExecutorError` if there is none."""
    factory = _FACTORIES.get(spec.executor)
    if factory is None:
        raise ExecutorError(
            f"worker {spec.id!r}: executor {spec.executor!r} is not available "
            f"(available: {', '.join(sorted(_FACTORIES))})"
        )
    try:
        return factory(spec, seed)
    except (TypeError, ValueError) as exc:
        raise ExecutorError(
            f"worker {spec.id!r}: bad options for {spec.executor!r}: {exc}"
        ) from exc
