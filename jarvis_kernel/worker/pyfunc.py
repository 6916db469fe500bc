"""The ``python`` executor: calls a configured ``package.module:function`` with the task.

The target comes from the worker's own configuration, never from the task: a task only
chooses the arguments. It is imported when the executor is built, so a typo fails at
start-up (`ExecutorError` naming it), not on the first task.

Calling convention:

- ``fn(task)`` with the `Assignment`, or ``fn(task, ctx)`` with the `ExecutionContext` too
  when the function takes two positional parameters (or ``*args``);
- ``async def`` functions are awaited; plain ones run in a worker thread
  (``anyio.to_thread.run_sync``), from which ``ctx.progress`` is reached with
  ``anyio.from_thread.run(ctx.progress, tokens, note)``. A thread cannot be interrupted:
  when the task times out the worker moves on and the thread runs to its end unobserved;
- the return value is the result (JSON, at most 64 KiB, else ``executor.bad_result``);
  returning a `Completed` or `Failed` sets the outcome directly;
- an exception is ``python.<ExceptionClass>`` with its message.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import msgspec

from ..errors import ExecutorError
from ..protocol import Assignment
from .executors import Completed, ExecutionContext, Failed, Outcome, check_result

__all__ = ["PythonExecutor", "PythonOptions", "load_target"]


class PythonOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``options`` of a ``python`` worker."""

    target: str


def load_target(target: str) -> Callable[..., Any]:
    """Import ``package.module:attr.path``; `ExecutorError` naming `target` if it fails."""
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise ExecutorError(f"python target {target!r}: expected 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # a module that fails to import can raise anything
        raise ExecutorError(
            f"python target {target!r}: cannot import {module_name!r}: {exc}"
        ) from exc
    for name in attr_path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError as exc:
            raise ExecutorError(f"python target {target!r}: no attribute {name!r}") from exc
    if not callable(obj):
        raise ExecutorError(f"python target {target!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _is_async(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _takes_ctx(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: call with the task
        return False
    positional = 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


class PythonExecutor:
    """Calls `target` (``module:function``) with the task (and the context, if it takes it)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._fn = load_target(target)
        self._async = _is_async(self._fn)
        self._with_ctx = _takes_ctx(self._fn)

    async def _call(self, task: Assignment, ctx: ExecutionContext) -> Any:
        args: tuple[Any, ...] = (task, ctx) if self._with_ctx else (task,)
        if self._async:
            return await self._fn(*args)
        value = await anyio.to_thread.run_sync(
            functools.partial(self._fn, *args), abandon_on_cancel=True
        )
        if inspect.isawaitable(value):
            value = await value
        return value

    async def run(self, task: Assignment, ctx: ExecutionContext) -> Outcome:
        try:
            value = await self._call(task, ctx)
        except Exception as exc:  # the function's failure is the task's, as a value
            return Failed(error_key=f"python.{type(exc).__name__}"[:200], error=str(exc)[:4000])
        if isinstance(value, Failed):
            return value
        if isinstance(value, Completed):
            return check_result(value.result) or value
        return check_result(value) or Completed(result=value, token_usage=ctx.token_usage)
