"""Targets for the ``python`` executor's tests (``tests.support.pytargets:<name>``)."""

from __future__ import annotations

from typing import Any

import anyio.from_thread

from jarvis_kernel.protocol import Assignment
from jarvis_kernel.worker.executors import ExecutionContext, Failed

NOT_CALLABLE = 42


def echo_payload(task: Assignment) -> dict[str, Any]:
    return {"taskId": task.task_id, "payload": task.payload}


def sync_with_ctx(task: Assignment, ctx: ExecutionContext) -> str:
    anyio.from_thread.run(ctx.progress, 7, "from a thread")
    return f"{task.task_id} on {ctx.worker_id}"


async def async_with_ctx(task: Assignment, ctx: ExecutionContext) -> dict[str, int]:
    await ctx.progress(11, "async")
    return {"n": len(task.description)}


async def async_task_only(task: Assignment) -> str:
    return task.description.upper()


def raises(task: Assignment) -> None:
    raise KeyError(task.payload.get("missing", "nope"))


def unencodable(task: Assignment) -> object:
    return {"value": object()}


def too_big(task: Assignment) -> str:
    return "x" * 70_000


def fails_on_purpose(task: Assignment) -> Failed:
    return Failed(error_key="lint.E501", error="line too long")


async def spend(task: Assignment, ctx: ExecutionContext) -> dict[str, int]:
    """Report ``payload["tokens"]`` tokens, then hold ``payload["hold_s"]`` seconds."""
    tokens = int(task.payload.get("tokens", 100))
    await ctx.progress(tokens, "spent")
    await ctx.clock.sleep(float(task.payload.get("hold_s", 0.0)))
    return {"tokens": tokens}
