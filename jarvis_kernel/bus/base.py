"""The `Bus`: what the wire protocol needs from Redis, as a small interface.

Two implementations pass one contract suite (``tests/contract/test_bus.py``):
`RedisBus` (redis.asyncio, the bus between processes and machines) and `MemoryBus`
(in-process, the embedded default). Values go in as ``bytes`` or ``str`` and come out
as ``bytes``; keys, hash fields, set members and channels are ``str``.

Expected outcomes are values: an empty list pops as ``None``, a failed guard makes
`Bus.execute` return ``False``. Only an unreachable bus raises (`BusUnavailable`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Literal, Protocol

import msgspec

__all__ = ["Bus", "End", "Guard", "Message", "Op", "StreamEntry", "Subscription", "Tx", "Value"]

Value = bytes | str
End = Literal["LEFT", "RIGHT"]


class Message(msgspec.Struct, frozen=True):
    """One pub/sub message. `pattern` is the pattern that matched, for pattern subscriptions."""

    channel: str
    data: bytes
    pattern: str | None = None


class StreamEntry(msgspec.Struct, frozen=True):
    """One stream entry: its id (``"<ms>-<seq>"``) and its fields."""

    id: str
    fields: dict[str, bytes]


class Guard(msgspec.Struct, frozen=True):
    """A condition checked, atomically, before a `Tx` applies.

    `field` None: the string key `key` must hold `value` (``None``: must not exist).
    `field` set: hash `key` must hold `value` at `field` (``None``: field must be absent).
    """

    key: str
    value: bytes | None
    field: str | None = None


class Op(msgspec.Struct, frozen=True):
    """One write in a `Tx`. `name` is the Redis command; `args` its arguments after the key."""

    name: str
    key: str
    args: tuple[bytes | str | int | float, ...] = ()


def _b(value: Value) -> bytes:
    return value.encode() if isinstance(value, str) else value


class Tx:
    """A multi-step change applied all-or-nothing by `Bus.execute`.

    Record guards with ``require*`` and writes with the command methods; nothing runs until
    `execute`. Either every guard holds and every write is applied with no other client's
    command in between, or nothing is written.
    """

    __slots__ = ("guards", "ops")

    def __init__(self) -> None:
        self.guards: list[Guard] = []
        self.ops: list[Op] = []

    def require(self, key: str, value: Value | None) -> Tx:
        """String `key` must equal `value` (None: must not exist)."""
        self.guards.append(Guard(key, None if value is None else _b(value)))
        return self

    def require_field(self, key: str, field: str, value: Value | None) -> Tx:
        """Hash `key` must hold `value` at `field` (None: field absent)."""
        self.guards.append(Guard(key, None if value is None else _b(value), field))
        return self

    def _op(self, name: str, key: str, *args: bytes | str | int | float) -> Tx:
        self.ops.append(Op(name, key, args))
        return self

    def set(self, key: str, value: Value, *, ttl_s: float | None = None) -> Tx:
        if ttl_s is None:
            return self._op("SET", key, _b(value))
        return self._op("SET", key, _b(value), "PX", max(1, round(ttl_s * 1000)))

    def delete(self, key: str) -> Tx:
        return self._op("DEL", key)

    def lpush(self, key: str, *values: Value) -> Tx:
        return self._op("LPUSH", key, *map(_b, values))

    def rpush(self, key: str, *values: Value) -> Tx:
        return self._op("RPUSH", key, *map(_b, values))

    def lrem(self, key: str, count: int, value: Value) -> Tx:
        return self._op("LREM", key, count, _b(value))

    def hset(self, key: str, mapping: Mapping[str, Value]) -> Tx:
        flat: list[bytes | str] = []
        for field, value in mapping.items():
            flat += [field, _b(value)]
        return self._op("HSET", key, *flat)

    def hdel(self, key: str, *fields: str) -> Tx:
        return self._op("HDEL", key, *fields)

    def hincrby(self, key: str, field: str, amount: int) -> Tx:
        return self._op("HINCRBY", key, field, amount)

    def zadd(self, key: str, mapping: Mapping[str, float]) -> Tx:
        flat: list[str | float] = []
        for member, score in mapping.items():
            flat += [score, member]
        return self._op("ZADD", key, *flat)

    def zrem(self, key: str, *members: str) -> Tx:
        return self._op("ZREM", key, *members)

    def xadd(self, stream: str, fields: Mapping[str, Value], *, maxlen: int | None = None) -> Tx:
        args: list[bytes | str | int] = ["MAXLEN", "~", maxlen, "*"] if maxlen else ["*"]
        for field, value in fields.items():
            args += [field, _b(value)]
        return self._op("XADD", stream, *args)

    def publish(self, channel: str, data: Value) -> Tx:
        return self._op("PUBLISH", channel, _b(data))


class Subscription(Protocol):
    """A live pub/sub subscription. Iterate it for `Message`s; add channels as you go.

    Subscriptions are confirmed by the server before `Bus.subscribe`'s context is entered
    and before `subscribe`/`psubscribe` return, so a publish made after that is delivered.
    A `RedisBus` subscription survives a reconnect: it subscribes again to everything it had.
    """

    def __aiter__(self) -> AsyncIterator[Message]: ...

    async def subscribe(self, *channels: str) -> None: ...

    async def psubscribe(self, *patterns: str) -> None: ...

    async def unsubscribe(self, *channels: str) -> None: ...


class Bus(Protocol):
    """What the kernel and the workers need from Redis. See the module docstring."""

    # -- lifecycle
    async def aclose(self) -> None:
        """Release connections. Blocked calls on this bus end with `BusError`."""
        ...

    async def ping(self) -> None:
        """Round-trip to the server, raising `BusUnavailable` if it cannot be reached."""
        ...

    # -- pub/sub
    async def publish(self, channel: str, data: Value) -> int:
        """Publish; returns how many subscribers received it."""
        ...

    async def publish_unconfirmed(self, channel: str, data: Value) -> None:
        """Publish without waiting for the server's answer: one write, no round trip.

        For messages whose loss the protocol tolerates (a bid: its window runs to the
        deadline). Messages are sent in order; one sent just as the connection is lost can be
        lost, unreported (the next one notices and reconnects).
        """
        ...

    def subscribe(
        self, channels: Sequence[str] = (), patterns: Sequence[str] = ()
    ) -> AbstractAsyncContextManager[Subscription]:
        """Open a subscription to `channels` and glob `patterns` (``*``, ``?``, ``[..]``)."""
        ...

    # -- strings and keys
    async def get(self, key: str) -> bytes | None: ...

    async def set(
        self, key: str, value: Value, *, ttl_s: float | None = None, nx: bool = False
    ) -> bool:
        """Set `key`; with `nx` only if absent. Returns whether it was set."""
        ...

    async def delete(self, *keys: str) -> int: ...

    async def exists(self, key: str) -> bool: ...

    async def scan_keys(self, pattern: str) -> list[str]:
        """Every key matching glob `pattern` (sorted). For recovery, not for hot paths."""
        ...

    # -- lists
    async def lpush(self, key: str, *values: Value) -> int: ...

    async def rpush(self, key: str, *values: Value) -> int: ...

    async def lrange(self, key: str, start: int, stop: int) -> list[bytes]: ...

    async def llen(self, key: str) -> int: ...

    async def lrem(self, key: str, count: int, value: Value) -> int:
        """Remove up to `count` elements equal to `value` (0: all; < 0: from the tail)."""
        ...

    async def lmove(
        self, src: str, dst: str, src_end: End = "RIGHT", dst_end: End = "LEFT"
    ) -> bytes | None: ...

    async def blmove(
        self,
        src: str,
        dst: str,
        timeout_s: float | None,
        src_end: End = "RIGHT",
        dst_end: End = "LEFT",
    ) -> bytes | None:
        """Move one element, waiting up to `timeout_s` (None: forever) for one to arrive.

        Waiters on the same list are served in the order they started waiting. Returns
        None on timeout. The element is in `dst` before this returns it, never only here.
        """
        ...

    # -- hashes
    async def hset(self, key: str, mapping: Mapping[str, Value]) -> int: ...

    async def hget(self, key: str, field: str) -> bytes | None: ...

    async def hgetall(self, key: str) -> dict[str, bytes]: ...

    async def hdel(self, key: str, *fields: str) -> int: ...

    # -- sorted sets
    async def zadd(self, key: str, mapping: Mapping[str, float]) -> int: ...

    async def zrem(self, key: str, *members: str) -> int: ...

    async def zscore(self, key: str, member: str) -> float | None: ...

    async def zrangebyscore(
        self, key: str, min_score: float, max_score: float
    ) -> list[tuple[str, float]]:
        """Members with `min_score` <= score <= `max_score`, lowest score first."""
        ...

    # -- streams
    async def xadd(
        self, stream: str, fields: Mapping[str, Value], *, maxlen: int | None = None
    ) -> str:
        """Append an entry; with `maxlen` trim (approximately) to about that length."""
        ...

    async def xlen(self, stream: str) -> int: ...

    async def xrange(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[StreamEntry]: ...

    async def xrevrange(
        self, stream: str, end: str = "+", start: str = "-", count: int | None = None
    ) -> list[StreamEntry]:
        """Entries from `end` back to `start`, newest first (for status views)."""
        ...

    async def xgroup_create(self, stream: str, group: str, *, start_id: str = "0") -> bool:
        """Create consumer group (and the stream). False if it already existed."""
        ...

    async def xreadgroup(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int = 100,
        block_s: float | None = None,
        pending: bool = False,
    ) -> list[StreamEntry]:
        """Read new entries as `consumer` (`pending`: re-read its unacked ones instead).

        New entries become pending for `consumer` until acked. `block_s` None does not block;
        otherwise waits up to that long for an entry.
        """
        ...

    async def xack(self, stream: str, group: str, *ids: str) -> int: ...

    async def xgroup_destroy(self, stream: str, group: str) -> bool:
        """Remove a consumer group (and its pending list). False if it did not exist."""
        ...

    async def xautoclaim(
        self, stream: str, group: str, consumer: str, *, min_idle_s: float, count: int = 100
    ) -> list[StreamEntry]:
        """Take over entries pending longer than `min_idle_s` for any consumer of `group`."""
        ...

    # -- atomic change
    async def execute(self, tx: Tx) -> bool:
        """Apply `tx` all-or-nothing. False (and nothing written) when a guard fails."""
        ...

    async def execute_many(self, txs: Sequence[Tx]) -> list[bool]:
        """Apply each of `txs` as `execute` does, in order; on Redis in one round trip.

        Each is all-or-nothing on its own (not all of them together): per Tx, False when
        its guard failed. For the writes of many tasks that are ready at once.
        """
        ...
