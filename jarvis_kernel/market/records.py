"""The kernel's durable view of each live task, and the atomic changes that move it.

Every task the kernel has taken from intake lives in the hash ``<ns>:kernel:live`` (taskId
-> `TaskRecord` JSON) until it completes or dies, so a kernel killed at any point finds
all of it again. Each change of a record is a `Tx` guarded by the record's previous bytes:
if anything else changed the record in between, nothing is written. That guard is what
makes an award happen at most once per attempt, also across a crash and restart.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ..bus import Tx
from ..protocol import Assignment, Event, Keys, Task, dead_letter, encode

__all__ = ["LiveState", "TaskRecord", "assignment_for", "event_fields", "transition"]

LiveState = Literal["queued", "auctioning", "assigned", "running", "fallback"]


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Where a live task stands. `seq` orders submissions (oldest first among equals)."""

    task: Task
    state: LiveState = "queued"
    attempt: int = 1
    round: int = 0
    worker_id: str | None = None
    seq: int = 0
    submitted_ms: int = 0


def event_fields(event: Event) -> dict[str, bytes]:
    """The stream fields of one event: ``event <json>``."""
    return {"event": encode(event)}


def assignment_for(record: TaskRecord, assigned_at_ms: int) -> Assignment:
    """The message a worker takes from its queue for this record's attempt."""
    fields = {f: getattr(record.task, f) for f in record.task.__struct_fields__}
    return Assignment(**fields, attempt=record.attempt, assigned_at_ms=assigned_at_ms)


def transition(
    keys: Keys, before: bytes | None, after: TaskRecord | None
) -> tuple[Tx, bytes | None]:
    """A Tx that replaces record `before` (None: must be absent) by `after` (None: remove).

    Returns the Tx (add more writes to it) and the new raw record.
    """
    task_id = after.task.task_id if after is not None else None
    tx = Tx()
    raw_after = encode(after) if after is not None else None
    if task_id is None:
        return tx, None
    tx.require_field(keys.internal("live"), task_id, before)
    tx.hset(keys.internal("live"), {task_id: raw_after or b""})
    return tx, raw_after


def removal(keys: Keys, task_id: str, before: bytes) -> Tx:
    """A Tx that removes the live record of `task_id`, if it still is `before`."""
    live = keys.internal("live")
    return Tx().require_field(live, task_id, before).hdel(live, task_id)


def dead_letter_tx(tx: Tx, keys: Keys, source: str, error: str, raw: bytes, at_ms: int) -> Tx:
    """Add to `tx` the dead-letter entry for `raw`."""
    return tx.lpush(keys.deadletter, encode(dead_letter(source, error, raw, at_ms)))
