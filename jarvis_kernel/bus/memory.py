"""`MemoryBus`: the bus inside one process, with Redis's semantics.

The embedded default (no Redis URL). It passes the same contract suite as `RedisBus`:
blocking moves wake in the order they started waiting, consumer groups keep pending
lists, TTLs and idle times follow the injected `Clock`. Every operation is applied
without awaiting in between, which is what makes `execute` atomic here.
"""

from __future__ import annotations

import fnmatch
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..clock import Clock, SystemClock, run_with_timeout
from ..errors import BusError
from .base import End, Message, Op, StreamEntry, Tx, Value

__all__ = ["MemoryBus"]


def _b(value: Value) -> bytes:
    return value.encode() if isinstance(value, str) else value


class _Waiter:
    __slots__ = ("done", "dst", "dst_end", "result", "src_end")

    def __init__(self, dst: str, src_end: End, dst_end: End) -> None:
        self.dst, self.src_end, self.dst_end = dst, src_end, dst_end
        self.done = anyio.Event()
        self.result: bytes | None = None


class _Group:
    __slots__ = ("last", "pending")

    def __init__(self, last: tuple[int, int]) -> None:
        self.last = last
        # id -> [consumer, delivered-at (clock monotonic)]
        self.pending: dict[tuple[int, int], list[Any]] = {}


class _Stream:
    __slots__ = ("changed", "entries", "groups", "last_id")

    def __init__(self) -> None:
        self.entries: dict[tuple[int, int], dict[str, bytes]] = {}
        self.groups: dict[str, _Group] = {}
        self.last_id = (0, 0)
        self.changed = anyio.Event()


def _parse_id(text: str) -> tuple[int, int]:
    if text == "-":
        return (0, 0)
    if text == "+":
        return (2**63, 2**63)
    ms, _, seq = text.partition("-")
    return (int(ms), int(seq or 0))


def _fmt_id(sid: tuple[int, int]) -> str:
    return f"{sid[0]}-{sid[1]}"


class _MemorySubscription:
    def __init__(self, bus: MemoryBus) -> None:
        self._bus = bus
        self.channels: set[str] = set()
        self.patterns: set[str] = set()
        send, receive = anyio.create_memory_object_stream[Message](max_buffer_size=math.inf)
        self._send: MemoryObjectSendStream[Message] = send
        self._receive: MemoryObjectReceiveStream[Message] = receive

    async def subscribe(self, *channels: str) -> None:
        self.channels.update(channels)
        await anyio.lowlevel.checkpoint()

    async def psubscribe(self, *patterns: str) -> None:
        self.patterns.update(patterns)
        await anyio.lowlevel.checkpoint()

    async def unsubscribe(self, *channels: str) -> None:
        self.channels.difference_update(channels)
        await anyio.lowlevel.checkpoint()

    def deliver(self, channel: str, data: bytes) -> bool:
        if channel in self.channels:
            self._send.send_nowait(Message(channel, data))
            return True
        for pattern in self.patterns:
            if fnmatch.fnmatchcase(channel, pattern):
                self._send.send_nowait(Message(channel, data, pattern))
                return True
        return False

    def close(self) -> None:
        self._send.close()
        self._receive.close()

    async def __aiter__(self) -> AsyncIterator[Message]:
        async for message in self._receive:
            yield message


class MemoryBus:
    """An in-process `Bus`. See the module docstring."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._data: dict[str, Any] = {}
        self._expiry: dict[str, float] = {}
        self._waiters: dict[str, deque[_Waiter]] = {}
        self._subs: set[_MemorySubscription] = set()
        self._closed = False

    # ------------------------------------------------------------------ internals
    def _check(self) -> None:
        if self._closed:
            raise BusError("the bus is closed")

    def _live(self, key: str) -> Any:
        deadline = self._expiry.get(key)
        if deadline is not None and self._clock.monotonic() >= deadline:
            del self._expiry[key]
            self._data.pop(key, None)
        return self._data.get(key)

    def _typed(self, key: str, kind: type, create: bool = False) -> Any:
        value = self._live(key)
        if value is None:
            if not create:
                return None
            value = self._data[key] = kind()
        elif not isinstance(value, kind):
            raise BusError(
                f"WRONGTYPE: {key!r} holds a {type(value).__name__}, not a {kind.__name__}"
            )
        return value

    def _drop_if_empty(self, key: str) -> None:
        value = self._data.get(key)
        if value is not None and not isinstance(value, bytes | _Stream) and not value:
            del self._data[key]
            self._expiry.pop(key, None)

    def _push(self, key: str, values: Sequence[bytes], left: bool) -> int:
        items: deque[bytes] = self._typed(key, deque, create=True)
        for value in values:
            if left:
                items.appendleft(value)
            else:
                items.append(value)
        length = len(items)
        self._serve_waiters(key)
        return length

    def _serve_waiters(self, key: str) -> None:
        waiters = self._waiters.get(key)
        while waiters:
            items = self._typed(key, deque)
            if not items:
                break
            waiter = waiters.popleft()
            if waiter.done.is_set():
                continue
            waiter.result = self._move(key, waiter.dst, waiter.src_end, waiter.dst_end)
            waiter.done.set()
        if waiters is not None and not waiters:
            self._waiters.pop(key, None)

    def _move(self, src: str, dst: str, src_end: End, dst_end: End) -> bytes | None:
        items = self._typed(src, deque)
        if not items:
            return None
        self._typed(dst, deque)  # type check before mutating anything
        value: bytes = items.pop() if src_end == "RIGHT" else items.popleft()
        self._drop_if_empty(src)
        self._push(dst, [value], left=dst_end == "LEFT")
        return value

    # ------------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        self._closed = True
        for sub in list(self._subs):
            sub.close()
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.done.set()
        for value in self._data.values():
            if isinstance(value, _Stream):
                value.changed.set()

    async def ping(self) -> None:
        self._check()
        await anyio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ pub/sub
    async def publish(self, channel: str, data: Value) -> int:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self._publish(channel, _b(data))

    async def publish_unconfirmed(self, channel: str, data: Value) -> None:
        await self.publish(channel, data)

    def _publish(self, channel: str, data: bytes) -> int:
        return sum(1 for sub in list(self._subs) if sub.deliver(channel, data))

    @asynccontextmanager
    async def subscribe(
        self, channels: Sequence[str] = (), patterns: Sequence[str] = ()
    ) -> AsyncIterator[_MemorySubscription]:
        self._check()
        sub = _MemorySubscription(self)
        sub.channels.update(channels)
        sub.patterns.update(patterns)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)
            sub.close()

    # ------------------------------------------------------------------ strings
    async def get(self, key: str) -> bytes | None:
        self._check()
        await anyio.lowlevel.checkpoint()
        value: bytes | None = self._typed(key, bytes)
        return value

    async def set(
        self, key: str, value: Value, *, ttl_s: float | None = None, nx: bool = False
    ) -> bool:
        self._check()
        await anyio.lowlevel.checkpoint()
        if nx and self._live(key) is not None:
            return False
        self._set(key, _b(value), ttl_s)
        return True

    def _set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        self._data[key] = value
        if ttl_s is None:
            self._expiry.pop(key, None)
        else:
            self._expiry[key] = self._clock.monotonic() + ttl_s

    async def delete(self, *keys: str) -> int:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self._delete(*keys)

    def _delete(self, *keys: str) -> int:
        count = 0
        for key in keys:
            if self._live(key) is not None:
                del self._data[key]
                self._expiry.pop(key, None)
                count += 1
        return count

    async def exists(self, key: str) -> bool:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self._live(key) is not None

    async def scan_keys(self, pattern: str) -> list[str]:
        self._check()
        await anyio.lowlevel.checkpoint()
        return sorted(
            k
            for k in list(self._data)
            if fnmatch.fnmatchcase(k, pattern) and self._live(k) is not None
        )

    # ------------------------------------------------------------------ lists
    async def lpush(self, key: str, *values: Value) -> int:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self._push(key, [_b(v) for v in values], left=True)

    async def rpush(self, key: str, *values: Value) -> int:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self._push(key, [_b(v) for v in values], left=False)

    async def lrange(self, key: str, start: int, stop: int) -> list[bytes]:
        self._check()
        await anyio.lowlevel.checkpoint()
        items = list(self._typed(key, deque) or ())
        return items[start : None if stop == -1 else stop + 1]  # Redis's stop is inclusive

    async def llen(self, key: str) -> int:
        self._check()
        await anyio.lowlevel.checkpoint()
        return len(self._typed(key, deque) or ())

    async def lrem(self, key: str, count: int, value: Value) -> int:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self._lrem(key, count, _b(value))

    def _lrem(self, key: str, count: int, value: bytes) -> int:
        items: deque[bytes] | None = self._typed(key, deque)
        if not items:
            return 0
        order = list(items) if count >= 0 else list(reversed(items))
        limit = abs(count) or len(order)
        kept, removed = [], 0
        for item in order:
            if item == value and removed < limit:
                removed += 1
            else:
                kept.append(item)
        items.clear()
        items.extend(kept if count >= 0 else reversed(kept))
        self._drop_if_empty(key)
        return removed

    async def lmove(
        self, src: str, dst: str, src_end: End = "RIGHT", dst_end: End = "LEFT"
    ) -> bytes | None:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self._move(src, dst, src_end, dst_end)

    async def blmove(
        self,
        src: str,
        dst: str,
        timeout_s: float | None,
        src_end: End = "RIGHT",
        dst_end: End = "LEFT",
    ) -> bytes | None:
        self._check()
        await anyio.lowlevel.checkpoint()
        if not self._waiters.get(src):
            value = self._move(src, dst, src_end, dst_end)
            if value is not None:
                return value
        waiter = _Waiter(dst, src_end, dst_end)
        self._waiters.setdefault(src, deque()).append(waiter)
        try:
            await run_with_timeout(self._clock, timeout_s, waiter.done.wait)
        finally:
            waiter.done.set()  # withdrawn: never served after this
        self._check()
        return waiter.result

    # ------------------------------------------------------------------ hashes
    async def hset(self, key: str, mapping: Mapping[str, Value]) -> int:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self._hset(key, {f: _b(v) for f, v in mapping.items()})

    def _hset(self, key: str, mapping: Mapping[str, bytes]) -> int:
        fields: dict[str, bytes] = self._typed(key, dict, create=True)
        added = sum(1 for f in mapping if f not in fields)
        fields.update(mapping)
        return added

    async def hget(self, key: str, field: str) -> bytes | None:
        self._check()
        await anyio.lowlevel.checkpoint()
        fields = self._typed(key, dict) or {}
        value: bytes | None = fields.get(field)
        return value

    async def hgetall(self, key: str) -> dict[str, bytes]:
        self._check()
        await anyio.lowlevel.checkpoint()
        return dict(self._typed(key, dict) or {})

    async def hdel(self, key: str, *fields: str) -> int:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self._hdel(key, *fields)

    def _hdel(self, key: str, *names: str) -> int:
        fields = self._typed(key, dict)
        if not fields:
            return 0
        removed = sum(1 for f in names if fields.pop(f, None) is not None)
        self._drop_if_empty(key)
        return removed

    def _hincrby(self, key: str, field: str, amount: int) -> int:
        fields: dict[str, bytes] = self._typed(key, dict, create=True)
        value = int(fields.get(field, b"0")) + amount
        fields[field] = str(value).encode()
        return value

    # ------------------------------------------------------------------ sorted sets
    async def zadd(self, key: str, mapping: Mapping[str, float]) -> int:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self._zadd(key, mapping)

    def _zadd(self, key: str, mapping: Mapping[str, float]) -> int:
        members = self._typed(key, _ZSet, create=True)
        added = sum(1 for m in mapping if m not in members)
        members.update({m: float(s) for m, s in mapping.items()})
        return added

    async def zrem(self, key: str, *members: str) -> int:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self._zrem(key, *members)

    def _zrem(self, key: str, *names: str) -> int:
        members = self._typed(key, _ZSet)
        if not members:
            return 0
        removed = sum(1 for m in names if members.pop(m, None) is not None)
        self._drop_if_empty(key)
        return removed

    async def zscore(self, key: str, member: str) -> float | None:
        self._check()
        await anyio.lowlevel.checkpoint()
        members = self._typed(key, _ZSet) or {}
        score: float | None = members.get(member)
        return score

    async def zrangebyscore(
        self, key: str, min_score: float, max_score: float
    ) -> list[tuple[str, float]]:
        self._check()
        await anyio.lowlevel.checkpoint()
        members = self._typed(key, _ZSet) or {}
        hits = [(m, s) for m, s in members.items() if min_score <= s <= max_score]
        return sorted(hits, key=lambda item: (item[1], item[0]))

    # ------------------------------------------------------------------ streams
    async def xadd(
        self, stream: str, fields: Mapping[str, Value], *, maxlen: int | None = None
    ) -> str:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self._xadd(stream, {f: _b(v) for f, v in fields.items()}, maxlen)

    def _xadd(self, key: str, fields: dict[str, bytes], maxlen: int | None) -> str:
        stream: _Stream = self._typed(key, _Stream, create=True)
        ms = self._clock.time_ms()
        last_ms, last_seq = stream.last_id
        sid = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        stream.entries[sid] = fields
        stream.last_id = sid
        if maxlen is not None:
            while len(stream.entries) > maxlen:
                del stream.entries[next(iter(stream.entries))]
        stream.changed.set()
        stream.changed = anyio.Event()
        return _fmt_id(sid)

    async def xlen(self, stream: str) -> int:
        self._check()
        await anyio.lowlevel.checkpoint()
        found = self._typed(stream, _Stream)
        return len(found.entries) if found else 0

    async def xrange(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[StreamEntry]:
        self._check()
        await anyio.lowlevel.checkpoint()
        found = self._typed(stream, _Stream)
        if found is None:
            return []
        lo, hi = _parse_id(start), _parse_id(end)
        hits = [StreamEntry(_fmt_id(i), dict(f)) for i, f in found.entries.items() if lo <= i <= hi]
        return hits if count is None else hits[:count]

    async def xrevrange(
        self, stream: str, end: str = "+", start: str = "-", count: int | None = None
    ) -> list[StreamEntry]:
        hits = list(reversed(await self.xrange(stream, start, end)))
        return hits if count is None else hits[:count]

    async def xgroup_destroy(self, stream: str, group: str) -> bool:
        self._check()
        await anyio.lowlevel.checkpoint()
        found = self._typed(stream, _Stream)
        return found is not None and found.groups.pop(group, None) is not None

    async def xgroup_create(self, stream: str, group: str, *, start_id: str = "0") -> bool:
        self._check()
        await anyio.lowlevel.checkpoint()
        found: _Stream = self._typed(stream, _Stream, create=True)
        if group in found.groups:
            return False
        found.groups[group] = _Group(found.last_id if start_id == "$" else _parse_id(start_id))
        return True

    def _group(self, stream: str, group: str) -> tuple[_Stream, _Group]:
        found = self._typed(stream, _Stream)
        if found is None or group not in found.groups:
            raise BusError(f"NOGROUP: no consumer group {group!r} on stream {stream!r}")
        return found, found.groups[group]

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
        self._check()
        await anyio.lowlevel.checkpoint()
        found, grp = self._group(stream, group)
        if pending:
            mine = sorted(i for i, (c, _) in grp.pending.items() if c == consumer)[:count]
            return [StreamEntry(_fmt_id(i), dict(found.entries.get(i, {}))) for i in mine]
        entries = self._deliver(found, grp, consumer, count)
        if entries or block_s is None:
            return entries
        await run_with_timeout(self._clock, block_s, found.changed.wait)
        self._check()
        return self._deliver(found, grp, consumer, count)

    def _deliver(self, found: _Stream, grp: _Group, consumer: str, count: int) -> list[StreamEntry]:
        out = []
        now = self._clock.monotonic()
        for sid, fields in found.entries.items():
            if sid <= grp.last:
                continue
            grp.pending[sid] = [consumer, now]
            grp.last = sid
            out.append(StreamEntry(_fmt_id(sid), dict(fields)))
            if len(out) >= count:
                break
        return out

    async def xack(self, stream: str, group: str, *ids: str) -> int:
        self._check()
        await anyio.lowlevel.checkpoint()
        _, grp = self._group(stream, group)
        return sum(1 for i in ids if grp.pending.pop(_parse_id(i), None) is not None)

    async def xautoclaim(
        self, stream: str, group: str, consumer: str, *, min_idle_s: float, count: int = 100
    ) -> list[StreamEntry]:
        self._check()
        await anyio.lowlevel.checkpoint()
        found, grp = self._group(stream, group)
        now = self._clock.monotonic()
        out = []
        for sid in sorted(grp.pending):
            owner = grp.pending[sid]
            if now - owner[1] < min_idle_s:
                continue
            if sid not in found.entries:  # trimmed away: drop it, as Redis 7 does
                del grp.pending[sid]
                continue
            grp.pending[sid] = [consumer, now]
            out.append(StreamEntry(_fmt_id(sid), dict(found.entries[sid])))
            if len(out) >= count:
                break
        return out

    # ------------------------------------------------------------------ atomic change
    async def execute(self, tx: Tx) -> bool:
        self._check()
        await anyio.lowlevel.checkpoint()
        for guard in tx.guards:
            if guard.field is None:
                current = self._typed(guard.key, bytes)
            else:
                current = (self._typed(guard.key, dict) or {}).get(guard.field)
            if current != guard.value:
                return False
        for op in tx.ops:
            self._apply(op)
        return True

    async def execute_many(self, txs: Sequence[Tx]) -> list[bool]:
        # As on Redis: a Tx that raises does not stop the ones after it; raised at the end.
        out, error = [], None
        for tx in txs:
            try:
                out.append(await self.execute(tx))
            except BusError as exc:
                out.append(False)
                error = error or exc
        if error is not None:
            raise error
        return out

    def _apply(self, op: Op) -> None:
        handler = self._OPS.get(op.name)
        if handler is None:
            raise BusError(f"unsupported operation in Tx: {op.name}")
        handler(self, op.key, op.args)

    def _op_set(self, key: str, args: tuple[Any, ...]) -> None:
        ttl = args[2] / 1000 if len(args) > 2 else None
        self._set(key, args[0], ttl)

    def _op_xadd(self, key: str, args: tuple[Any, ...]) -> None:
        maxlen = args[2] if args[0] == "MAXLEN" else None
        flat = args[4:] if maxlen is not None else args[1:]
        self._xadd(key, {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}, maxlen)

    _OPS: dict[str, Callable[[MemoryBus, str, tuple[Any, ...]], Any]] = {
        "SET": _op_set,
        "DEL": lambda bus, key, _: bus._delete(key),
        "LPUSH": lambda bus, key, args: bus._push(key, list(args), left=True),
        "RPUSH": lambda bus, key, args: bus._push(key, list(args), left=False),
        "LREM": lambda bus, key, args: bus._lrem(key, args[0], args[1]),
        "HSET": lambda bus, key, a: bus._hset(key, {a[i]: a[i + 1] for i in range(0, len(a), 2)}),
        "HDEL": lambda bus, key, args: bus._hdel(key, *args),
        "HINCRBY": lambda bus, key, args: bus._hincrby(key, args[0], args[1]),
        "ZADD": lambda bus, key, a: bus._zadd(key, {a[i + 1]: a[i] for i in range(0, len(a), 2)}),
        "ZREM": lambda bus, key, args: bus._zrem(key, *args),
        "XADD": _op_xadd,
        "PUBLISH": lambda bus, key, args: bus._publish(key, args[0]),
    }


class _ZSet(dict[str, float]):
    """A sorted set: member -> score (ordered on read)."""
