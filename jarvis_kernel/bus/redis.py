"""`RedisBus`: the `Bus` on a real Redis, through redis.asyncio (hiredis parser, RESP2).

One connection pool per bus. Commands go out as raw RESP2 on a connection of the pool, which
the bus keeps between commands (`RedisBus._checkout`), and the replies are decoded here (keys,
fields, members and channels as UTF-8 ``str``; values stay ``bytes``), so nothing depends on
redis-py's reply callbacks.

Failure handling, at one boundary (`RedisBus._run`):

- a lost or unreachable server (redis-py ``ConnectionError``/``TimeoutError``) is retried
  with exponential backoff (50 ms doubling up to ``backoff_max_s``) for ``reconnect_timeout_s``
  in total, then becomes `BusUnavailable`; a blocked ``BLMOVE`` simply blocks again;
- rejected credentials and every other Redis error become `BusError` at once;
- `RedisBus.aclose` ends calls in flight, which then raise `BusError`: it cancels the
  blocking ones and disconnects the connections of the others.

The pool's socket timeout (``?socket_timeout=``, 5 s by default as in redis-py) is applied
here, not by redis-py: one `asyncio.timeout` over taking a connection (a new one connects and
greets the server), sending and reading the reply. redis-py would send every command through
`asyncio.wait_for`, a new task per command on Python 3.11, so that the bytes leave one
event-loop turn later; on the market's two pub/sub hops that is ~10 % of an award. Blocking
commands (``BLMOVE``, ``XREADGROUP BLOCK``, the pub/sub reader) read without the timeout,
relying on the server's own timeout, TCP keepalive (redis-py's default: 30 s idle, 3 probes
5 s apart) and a connection health check.

`RedisBus.publish_unconfirmed` (a worker's bids) writes on one more connection, not the
pool's, on which the server's replies are turned off: no answer wakes the sender.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import hiredis
from anyio.abc import TaskStatus
from redis import exceptions as rex
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..errors import BusError, BusUnavailable, ConfigError
from .base import End, Message, StreamEntry, Subscription, Tx, Value

__all__ = ["RedisBus", "RedisSubscription", "redact_url"]

T = TypeVar("T")
log = logging.getLogger(__name__)
Arg = bytes | str | int | float

_FIRST_DELAY_S = 0.05
_CLEANUP_GRACE_S = 5.0
_HEALTH_CHECK_S = 30
_SOCKET_TIMEOUT_S = 5.0  # redis-py's default
_CHUNK = 2000  # variadic Tx ops are split so Lua's unpack() stays far below its limit
_RETRIABLE = (rex.ConnectionError, rex.TimeoutError, OSError)
_REFUSED = (rex.AuthenticationError, rex.AuthorizationError)

# KEYS: one per guard, then one per keyed op. ARGV: #guards; per guard (kind, field, value)
# with kind "=" / "!" (string equals / absent), "h=" / "h!" (hash field equals / absent); per op
# (name, #args, args...), PUBLISH carrying its channel as first arg. Every guard is checked and
# every op is type-checked before the first write, so a failing tx writes nothing.
_TX_LUA = """
local g, a = tonumber(ARGV[1]), 2
for i = 1, g do
  local kind, field, want = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  a = a + 3
  local have
  if kind == '=' or kind == '!' then have = redis.call('GET', KEYS[i])
  else have = redis.call('HGET', KEYS[i], field) end
  if kind == '=' or kind == 'h=' then
    if have ~= want then return 0 end
  elseif have then return 0 end
end
local kinds = {SET = 'string', DEL = 'none', LPUSH = 'list', RPUSH = 'list', LREM = 'list',
  HSET = 'hash', HDEL = 'hash', HINCRBY = 'hash', ZADD = 'zset', ZREM = 'zset', XADD = 'stream'}
local shrink = {LREM = true, HDEL = true, ZREM = true}
local ops, types, k = {}, {}, g
while a <= #ARGV do
  local op = {name = ARGV[a], first = a + 2, last = a + 1 + tonumber(ARGV[a + 1])}
  a = op.last + 1
  if op.last - op.first > 7000 then return redis.error_reply('ERR tx: too many args') end
  if op.name ~= 'PUBLISH' then
    k = k + 1
    op.key = KEYS[k]
    local want = kinds[op.name]
    if not want then return redis.error_reply('ERR tx: unknown op ' .. op.name) end
    local t = types[op.key] or redis.call('TYPE', op.key).ok
    if op.name == 'SET' or op.name == 'DEL' then t = want
    elseif t ~= 'none' and t ~= want then
      return redis.error_reply('WRONGTYPE tx: ' .. op.name .. ' on ' .. op.key .. ', a ' .. t)
    elseif not shrink[op.name] then t = want end
    types[op.key] = t
  end
  ops[#ops + 1] = op
end
for _, op in ipairs(ops) do
  if op.key then redis.call(op.name, op.key, unpack(ARGV, op.first, op.last))
  else redis.call('PUBLISH', unpack(ARGV, op.first, op.last)) end
end
return 1
"""
_TX_SHA = hashlib.sha1(_TX_LUA.encode()).hexdigest()


def redact_url(url: str) -> str:
    """`url` with its password replaced by ``***`` (user names stay: they help debugging)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _describe(pool: ConnectionPool) -> str:
    kw = pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    scheme = "rediss" if issubclass(pool.connection_class, SSLConnection) else "redis"
    user = f"{kw['username']}@" if kw.get("username") else ""
    return (
        f"{scheme}://{user}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
    )


def _str(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _opt_bytes(raw: Any) -> bytes | None:
    return None if raw is None else bytes(raw)


def _entries(raw: Any) -> list[StreamEntry]:
    """``[[id, [f, v, ...]], ...]`` to entries, skipping deleted ones (fields nil)."""
    out = []
    for entry_id, flat in raw or ():
        if flat is not None:
            fields = {_str(f): bytes(v) for f, v in zip(flat[::2], flat[1::2], strict=True)}
            out.append(StreamEntry(_str(entry_id), fields))
    return out


def _pairs(mapping: Mapping[str, Value]) -> list[Arg]:
    return [item for pair in mapping.items() for item in pair]


def _encode_tx(tx: Tx) -> tuple[list[str], list[Arg]]:
    keys: list[str] = [guard.key for guard in tx.guards]
    argv: list[Arg] = [len(tx.guards)]
    for guard in tx.guards:
        kind = ("h" if guard.field is not None else "") + ("!" if guard.value is None else "=")
        argv += [kind, guard.field or "", guard.value or b""]
    for op in tx.ops:
        step = _CHUNK if op.name in {"LPUSH", "RPUSH", "HSET", "HDEL", "ZADD", "ZREM"} else None
        chunks = [op.args[i : i + step] for i in range(0, len(op.args), step)] if step else []
        for args in chunks or [op.args]:
            if op.name == "PUBLISH":
                argv += [op.name, 1 + len(args), op.key, *args]
            else:
                keys.append(op.key)
                argv += [op.name, len(args), *args]
    return keys, argv


def _pack(commands: Sequence[Sequence[Arg]]) -> list[bytes]:
    """`commands` in RESP, packed by hiredis (C): redis-py's asyncio connection packs in
    Python, about 30 us for a 28-argument Tx against 4 us here, on every command sent."""
    try:
        # the stub types the argument as a 1-tuple: any length is meant
        packed = (hiredis.pack_command(tuple(args)) for args in commands)  # type: ignore[arg-type]
        return [b"".join(packed)]
    except TypeError as exc:  # as redis-py's own packer reports it
        raise rex.DataError(str(exc)) from exc


def _closed_by_server(conn: AbstractConnection) -> bool:
    """Has the server closed `conn`, which it sends nothing on (replies off)? A write would
    still succeed, and be lost. (redis-py keeps the stream reader private; None: closed.)"""
    reader: asyncio.StreamReader | None = getattr(conn, "_reader", None)
    return reader is None or reader.at_eof() or reader.exception() is not None


def _deadline(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else anyio.current_time() + timeout_s


def _left(deadline: float | None) -> float:
    """Seconds to `deadline`, 0 for none; at least 1 ms otherwise, as Redis reads 0 as forever."""
    return 0.0 if deadline is None else max(deadline - anyio.current_time(), 0.001)


class RedisBus:
    """The `Bus` on Redis. The bus owns the pool (or the client's pool) it is given.

    Use `from_url` for the defaults: no redis-py internal retry (this class retries), a health
    check on connections idle for 30 s, and TCP keepalive.
    """

    def __init__(
        self,
        connection: Redis | ConnectionPool,
        *,
        reconnect_timeout_s: float = 30.0,
        backoff_max_s: float = 2.0,
        where: str | None = None,
    ) -> None:
        pool = connection.connection_pool if isinstance(connection, Redis) else connection
        if str(pool.connection_kwargs.get("protocol")) != "2":  # redis-py 8 defaults to RESP3
            raise ConfigError("RedisBus speaks RESP2: make its pool with protocol=2")
        self._pool = pool
        # The bus times its commands itself (see the module's docstring); a connection made
        # from now on gets no socket timeout of its own, but keeps it for connecting.
        kwargs = pool.connection_kwargs
        self._timeout_s: float | None = kwargs.get("socket_timeout", _SOCKET_TIMEOUT_S)
        if kwargs.get("socket_connect_timeout") is None:
            kwargs["socket_connect_timeout"] = self._timeout_s
        kwargs["socket_timeout"] = None
        self._reconnect_timeout_s = reconnect_timeout_s
        self._backoff_max_s = backoff_max_s
        self.where = where or _describe(pool)
        self._closed = False
        self._scopes: set[anyio.CancelScope] = set()
        # Connections between commands, kept out of the pool (see `_checkout`)
        self._idle: list[AbstractConnection] = []
        # `publish_unconfirmed`'s own connection (``CLIENT REPLY OFF``), made at first use;
        # False once the server refused to turn its replies off: confirmed publishes then
        self._unconfirmed: AbstractConnection | Literal[False] | None = None
        self._unconfirmed_lock = asyncio.Lock()

    @classmethod
    def from_url(
        cls, url: str, *, reconnect_timeout_s: float = 30.0, backoff_max_s: float = 2.0
    ) -> RedisBus:
        """A bus on ``redis://[user:pass@]host:port/db``, ``rediss://...`` (TLS) or ``unix://``.

        Query options are redis-py's (``?ssl_ca_certs=...&socket_timeout=...``).
        """
        try:
            pool = ConnectionPool.from_url(
                url,
                protocol=2,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=_HEALTH_CHECK_S,
            )
        except ValueError as exc:
            msg = f"invalid Redis URL {redact_url(url)!r}: {exc}"
            raise ConfigError(msg, key="bus.redis_url") from exc
        return cls(
            pool,
            reconnect_timeout_s=reconnect_timeout_s,
            backoff_max_s=backoff_max_s,
            where=redact_url(url),
        )

    # ------------------------------------------------------------------ plumbing
    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for scope in list(self._scopes):
            scope.cancel()
        if self._unconfirmed is not None and self._unconfirmed is not False:
            await self._drop(self._unconfirmed)
        self._idle.clear()  # in use, for the pool: its close disconnects them with the rest
        with anyio.move_on_after(_CLEANUP_GRACE_S, shield=True):
            await self._pool.aclose()

    @contextmanager
    def _closable(self) -> Iterator[None]:
        """Run the body so that `aclose` can end it: it then raises `BusError`."""
        if self._closed:
            raise BusError(f"the bus on {self.where} is closed")
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                yield
            finally:
                self._scopes.discard(scope)
        if scope.cancelled_caught:
            raise BusError(f"the bus on {self.where} was closed")

    async def _retrying(
        self, attempt: Callable[[], Awaitable[T]], failed: BaseException | None = None
    ) -> T:
        """Run `attempt` until it succeeds or fails for good; `failed`: it has just failed so."""
        delay, deadline = _FIRST_DELAY_S, None
        while True:
            try:
                if failed is not None:
                    exc, failed = failed, None
                    raise exc
                return await attempt()
            except _REFUSED as exc:
                raise BusError(f"Redis at {self.where} refused access: {exc}") from exc
            except _RETRIABLE as exc:
                now = anyio.current_time()
                deadline = now + self._reconnect_timeout_s if deadline is None else deadline
                if now >= deadline:
                    raise BusUnavailable(
                        f"Redis at {self.where} unreachable for "
                        f"{self._reconnect_timeout_s:g} s: {exc}"
                    ) from exc
                await anyio.sleep(min(delay, deadline - now))
                delay = min(delay * 2, self._backoff_max_s)
            except rex.RedisError as exc:
                raise BusError(f"Redis at {self.where}: {exc}") from exc

    async def _run(self, attempt: Callable[[], Awaitable[T]], *, blocking: bool = False) -> T:
        """Run a command's `attempt` at the failure boundary (see the module's docstring).

        A command that does not block is first tried without a cancel scope (~20 us less
        per command): `aclose` then ends it by disconnecting its connection, which fails
        it as a lost server; retries, and blocking commands, run under the scope.
        """
        if not blocking:
            if self._closed:
                raise BusError(f"the bus on {self.where} is closed")
            try:
                return await attempt()
            except _REFUSED as exc:
                raise BusError(f"Redis at {self.where} refused access: {exc}") from exc
            except _RETRIABLE as exc:
                failed: BaseException | None = exc
            except rex.RedisError as exc:
                raise BusError(f"Redis at {self.where}: {exc}") from exc
        else:
            failed = None
        with self._closable():
            return await self._retrying(attempt, failed)
        raise AssertionError("unreachable")  # for mypy: _closable raises rather than swallow

    def _timed_out(self) -> rex.TimeoutError:
        return rex.TimeoutError(f"no reply from Redis at {self.where} in {self._timeout_s:g} s")

    async def _roundtrip(self, args: Sequence[Arg], *, blocking: bool = False) -> Any:
        """Send one command and read its reply; `blocking`: the read waits without a timeout.

        redis-py disconnects a connection interrupted while sending or reading, so a reply
        that comes after the timeout cannot be read as the next command's.
        """
        conn: AbstractConnection | None = None
        in_step = False  # the reply is read whole: the connection may serve the next command
        try:
            try:
                async with asyncio.timeout(self._timeout_s):
                    conn = await self._checkout()
                    await conn.send_packed_command(_pack((args,)))
                    if not blocking:
                        reply = await conn.read_response(disable_decoding=True)
                        in_step = True
                        return reply
            except TimeoutError:
                raise self._timed_out() from None
            # inf: no socket timeout, also on a connection made with one (a pool given)
            reply = await conn.read_response(disable_decoding=True, timeout=math.inf)
            in_step = True
            return reply
        except rex.ResponseError:  # an error reply, read whole
            in_step = True
            raise
        finally:
            if conn is not None:
                await self._checkin(conn, in_step)

    async def _checkout(self) -> AbstractConnection:
        """A connection for one command: the last one put back, else one from the pool.

        The pool's own checkout costs ~25 us a command (a lock, observability hooks, and a
        read-readiness check); the bus keeps the connections it used instead. One the
        server closed meanwhile is seen by its reader (a restart, a client kill) and
        handed back to the pool, which reconnects it.
        """
        while self._idle:
            conn = self._idle.pop()
            if conn.is_connected and not _closed_by_server(conn):
                return conn
            await self._release(conn)
        new: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        return new

    async def _checkin(self, conn: AbstractConnection, in_step: bool) -> None:
        """Keep `conn` for the next command if it is in step (every reply read), else hand it
        back to the pool (redis-py has disconnected a connection interrupted mid-command)."""
        if in_step and not self._closed:
            self._idle.append(conn)
        else:
            await self._release(conn)

    async def _release(self, conn: AbstractConnection) -> None:
        with anyio.CancelScope(shield=True):
            await self._pool.release(conn)

    async def _call(self, *args: Arg) -> Any:
        return await self._run(lambda: self._roundtrip(args))

    async def _discard(self, conn: AbstractConnection) -> None:
        with anyio.move_on_after(_CLEANUP_GRACE_S, shield=True):
            await conn.disconnect(nowait=True)
            await self._pool.release(conn)

    async def ping(self) -> None:
        await self._call("PING")

    # ------------------------------------------------------------------ pub/sub
    async def publish(self, channel: str, data: Value) -> int:
        return int(await self._call("PUBLISH", channel, data))

    async def publish_unconfirmed(self, channel: str, data: Value) -> None:
        """`PUBLISH` on a connection of its own that has the server's replies turned off
        (``CLIENT REPLY OFF``), so that nothing comes back to be read: the sender's process
        is not woken by the answer, ~100 us of CPU less per message, and Redis writes none.

        A connection lost is noticed at the next write, which raises: it is then sent again
        on a new connection (the one before it may be lost). A server that refuses
        ``CLIENT REPLY`` (an ACL, a proxy) gets confirmed publishes instead.
        """
        packed = _pack((("PUBLISH", channel, data),))

        async def attempt() -> None:
            conn = self._unconfirmed
            if conn is not None and conn is not False and _closed_by_server(conn):
                self._unconfirmed = None  # e.g. a restart: not a write into the void
                await self._drop(conn)
                conn = None
            if conn is None:
                conn = await self._unconfirmed_connection()
            if conn is False:
                await self._roundtrip(("PUBLISH", channel, data))
                return
            try:
                async with asyncio.timeout(self._timeout_s):
                    await conn.send_packed_command(packed, check_health=False)
            except BaseException as exc:
                if self._unconfirmed is conn:
                    self._unconfirmed = None
                await self._drop(conn)
                if isinstance(exc, TimeoutError):  # held up by a server that stopped reading
                    raise self._timed_out() from None
                raise

        await self._run(attempt)

    async def _unconfirmed_connection(self) -> AbstractConnection | Literal[False]:
        """`publish_unconfirmed`'s connection: made once, however many callers wait for it."""
        async with self._unconfirmed_lock:
            if self._unconfirmed is None:
                self._unconfirmed = await self._reply_off_connection()
            return self._unconfirmed

    async def _reply_off_connection(self) -> AbstractConnection | Literal[False]:
        """A new connection with replies turned off; False if the server will not do it.

        ``OFF`` then ``ON`` answers only ``ON`` (OK) where the server accepts the command,
        and an error first where it does not; then ``OFF`` again, for good.
        """
        conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(self._timeout_s):
                await conn.connect()  # type: ignore[no-untyped-call]
                await conn.send_packed_command(
                    _pack((("CLIENT", "REPLY", "OFF"), ("CLIENT", "REPLY", "ON"))),
                    check_health=False,
                )
                try:
                    await conn.read_response(disable_decoding=True)
                except rex.ResponseError as exc:
                    log.info(
                        "Redis at %s refuses CLIENT REPLY OFF (%s): publishes wait for "
                        "their replies",
                        self.where,
                        exc,
                    )
                    await self._drop(conn)
                    return False
                off = _pack((("CLIENT", "REPLY", "OFF"),))
                await conn.send_packed_command(off, check_health=False)
        except BaseException as exc:
            await self._drop(conn)
            if isinstance(exc, TimeoutError):
                raise self._timed_out() from None
            raise
        return conn

    async def _drop(self, conn: AbstractConnection) -> None:
        """Close a connection that is not the pool's."""
        with anyio.move_on_after(_CLEANUP_GRACE_S, shield=True):
            await conn.disconnect(nowait=True)

    @asynccontextmanager
    async def subscribe(
        self, channels: Sequence[str] = (), patterns: Sequence[str] = ()
    ) -> AsyncIterator[Subscription]:
        """Open a subscription; it is confirmed by the server when this is entered."""
        sub, error = RedisSubscription(self), None
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(sub.run)
                try:
                    await sub.subscribe(*channels)
                    await sub.psubscribe(*patterns)
                    yield sub
                except Exception as exc:  # raised below, not wrapped in an ExceptionGroup
                    error = exc
                finally:
                    tg.cancel_scope.cancel()
        finally:
            sub._buffer.clear()  # the reader has ended: iterating ends here
            sub._close()
        if error is not None:
            raise error

    # ------------------------------------------------------------------ strings and keys
    async def get(self, key: str) -> bytes | None:
        return _opt_bytes(await self._call("GET", key))

    async def set(
        self, key: str, value: Value, *, ttl_s: float | None = None, nx: bool = False
    ) -> bool:
        args: list[Arg] = ["SET", key, value]
        if ttl_s is not None:
            args += ["PX", max(1, round(ttl_s * 1000))]
        if nx:
            args.append("NX")
        return await self._call(*args) is not None

    async def delete(self, *keys: str) -> int:
        return int(await self._call("DEL", *keys)) if keys else 0

    async def exists(self, key: str) -> bool:
        return bool(await self._call("EXISTS", key))

    async def scan_keys(self, pattern: str) -> list[str]:
        found: set[str] = set()
        cursor: bytes = b"0"
        while True:
            cursor, keys = await self._call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            found.update(map(_str, keys))
            if cursor == b"0":
                return sorted(found)

    # ------------------------------------------------------------------ lists
    async def lpush(self, key: str, *values: Value) -> int:
        return int(await self._call("LPUSH", key, *values)) if values else await self.llen(key)

    async def rpush(self, key: str, *values: Value) -> int:
        return int(await self._call("RPUSH", key, *values)) if values else await self.llen(key)

    async def lrange(self, key: str, start: int, stop: int) -> list[bytes]:
        return list(await self._call("LRANGE", key, start, stop))

    async def llen(self, key: str) -> int:
        return int(await self._call("LLEN", key))

    async def lrem(self, key: str, count: int, value: Value) -> int:
        return int(await self._call("LREM", key, count, value))

    async def lmove(
        self, src: str, dst: str, src_end: End = "RIGHT", dst_end: End = "LEFT"
    ) -> bytes | None:
        return _opt_bytes(await self._call("LMOVE", src, dst, src_end, dst_end))

    async def blmove(
        self,
        src: str,
        dst: str,
        timeout_s: float | None,
        src_end: End = "RIGHT",
        dst_end: End = "LEFT",
    ) -> bytes | None:
        deadline = _deadline(timeout_s)

        async def attempt() -> Any:  # after a reconnect, block again for what is left
            args = ("BLMOVE", src, dst, src_end, dst_end, f"{_left(deadline):.3f}")
            return await self._roundtrip(args, blocking=True)

        return _opt_bytes(await self._run(attempt, blocking=True))

    # ------------------------------------------------------------------ hashes
    async def hset(self, key: str, mapping: Mapping[str, Value]) -> int:
        return int(await self._call("HSET", key, *_pairs(mapping))) if mapping else 0

    async def hget(self, key: str, field: str) -> bytes | None:
        return _opt_bytes(await self._call("HGET", key, field))

    async def hgetall(self, key: str) -> dict[str, bytes]:
        flat = await self._call("HGETALL", key)
        return {_str(f): bytes(v) for f, v in zip(flat[::2], flat[1::2], strict=True)}

    async def hdel(self, key: str, *fields: str) -> int:
        return int(await self._call("HDEL", key, *fields)) if fields else 0

    # ------------------------------------------------------------------ sorted sets
    async def zadd(self, key: str, mapping: Mapping[str, float]) -> int:
        flat = [item for member, score in mapping.items() for item in (score, member)]
        return int(await self._call("ZADD", key, *flat)) if flat else 0

    async def zrem(self, key: str, *members: str) -> int:
        return int(await self._call("ZREM", key, *members)) if members else 0

    async def zscore(self, key: str, member: str) -> float | None:
        raw = await self._call("ZSCORE", key, member)
        return None if raw is None else float(raw)

    async def zrangebyscore(
        self, key: str, min_score: float, max_score: float
    ) -> list[tuple[str, float]]:
        flat = await self._call("ZRANGEBYSCORE", key, min_score, max_score, "WITHSCORES")
        return [(_str(m), float(s)) for m, s in zip(flat[::2], flat[1::2], strict=True)]

    # ------------------------------------------------------------------ streams
    async def xadd(
        self, stream: str, fields: Mapping[str, Value], *, maxlen: int | None = None
    ) -> str:
        cap: list[Arg] = ["MAXLEN", "~", maxlen] if maxlen else []
        return _str(await self._call("XADD", stream, *cap, "*", *_pairs(fields)))

    async def xlen(self, stream: str) -> int:
        return int(await self._call("XLEN", stream))

    async def xrange(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[StreamEntry]:
        limit: list[Arg] = ["COUNT", count] if count is not None else []
        return _entries(await self._call("XRANGE", stream, start, end, *limit))

    async def xrevrange(
        self, stream: str, end: str = "+", start: str = "-", count: int | None = None
    ) -> list[StreamEntry]:
        limit: list[Arg] = ["COUNT", count] if count is not None else []
        return _entries(await self._call("XREVRANGE", stream, end, start, *limit))

    async def xgroup_destroy(self, stream: str, group: str) -> bool:
        if not await self.exists(stream):
            return False
        return bool(await self._call("XGROUP", "DESTROY", stream, group))

    async def xgroup_create(self, stream: str, group: str, *, start_id: str = "0") -> bool:
        try:
            await self._call("XGROUP", "CREATE", stream, group, start_id, "MKSTREAM")
        except BusError as exc:
            if isinstance(exc.__cause__, rex.ResponseError) and "BUSYGROUP" in str(exc):
                return False
            raise
        return True

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
        deadline = _deadline(block_s if block_s and block_s > 0 else None)
        start = "0" if pending else ">"

        async def attempt() -> Any:
            block: list[Arg] = [] if deadline is None else ["BLOCK", round(_left(deadline) * 1000)]
            args = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count, *block)
            return await self._roundtrip((*args, "STREAMS", stream, start), blocking=bool(block))

        reply = await self._run(attempt, blocking=deadline is not None)
        return _entries(reply[0][1]) if reply else []

    async def xack(self, stream: str, group: str, *ids: str) -> int:
        return int(await self._call("XACK", stream, group, *ids)) if ids else 0

    async def xautoclaim(
        self, stream: str, group: str, consumer: str, *, min_idle_s: float, count: int = 100
    ) -> list[StreamEntry]:
        claimed: list[StreamEntry] = []
        cursor: bytes = b"0-0"
        idle_ms = max(0, round(min_idle_s * 1000))
        while len(claimed) < count:
            want = count - len(claimed)
            reply = await self._call(
                "XAUTOCLAIM", stream, group, consumer, idle_ms, cursor, "COUNT", want
            )
            cursor = reply[0]
            claimed += _entries(reply[1])
            if cursor == b"0-0":
                break
        return claimed

    # ------------------------------------------------------------------ atomic change
    async def execute(self, tx: Tx) -> bool:
        """Apply `tx` in one round trip: a Lua script checks the guards, then writes."""
        keys, argv = _encode_tx(tx)

        async def attempt() -> Any:
            try:
                return await self._roundtrip(("EVALSHA", _TX_SHA, len(keys), *keys, *argv))
            except rex.NoScriptError:  # first use, or the server restarted: EVAL caches it
                return await self._roundtrip(("EVAL", _TX_LUA, len(keys), *keys, *argv))

        return bool(await self._run(attempt) == 1)

    async def execute_many(self, txs: Sequence[Tx]) -> list[bool]:
        """Apply each of `txs` as `execute` does, in order, in one round trip (pipelined).

        Each Tx is checked and written on its own (others' commands may come in between);
        one whose guard fails writes nothing and is False. A Redis error raises `BusError`
        once every reply is read, as `execute` would have for that Tx (the ones before it
        are written; the ones after it too, as they would be if sent one by one).
        """
        if not txs:
            return []
        encoded = [_encode_tx(tx) for tx in txs]

        def commands(script: Sequence[Arg], todo: Sequence[int]) -> list[tuple[Arg, ...]]:
            return [(*script, len(encoded[i][0]), *encoded[i][0], *encoded[i][1]) for i in todo]

        async def attempt() -> list[Any]:
            replies: list[Any] = [None] * len(encoded)
            todo = list(range(len(encoded)))
            for script in (("EVALSHA", _TX_SHA), ("EVAL", _TX_LUA)):
                got = await self._pipeline(commands(script, todo))
                for i, reply in zip(todo, got, strict=True):
                    replies[i] = reply
                # first use, or the server restarted: EVAL caches the script
                todo = [i for i in todo if isinstance(replies[i], rex.NoScriptError)]
                if not todo:
                    break
            for reply in replies:
                if isinstance(reply, rex.ResponseError):
                    raise reply
            return replies

        return [reply == 1 for reply in await self._run(attempt)]

    async def _pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send `commands` in one write, read every reply (an error reply as its exception)."""
        conn: AbstractConnection | None = None
        replies: list[Any] = []
        try:
            async with asyncio.timeout(self._timeout_s):
                conn = await self._checkout()
                await conn.send_packed_command(_pack(commands))
                for _ in commands:
                    try:
                        replies.append(await conn.read_response(disable_decoding=True))
                    except rex.ResponseError as exc:  # read whole: the connection stays in step
                        replies.append(exc)
        except TimeoutError:
            raise self._timed_out() from None
        finally:
            if conn is not None:
                await self._checkin(conn, len(replies) == len(commands))
        return replies


class RedisSubscription:
    """A `Subscription` on its own connection, read by a task that `RedisBus.subscribe` owns.

    The reader survives connection loss: it reconnects with the bus's backoff and subscribes
    again to every channel and pattern (what was published meanwhile is lost: that is pub/sub).
    If it gives up, iterating and (un)subscribing raise its `BusUnavailable`.
    """

    def __init__(self, bus: RedisBus) -> None:
        self._bus = bus
        self._channels: set[str] = set()
        self._patterns: set[str] = set()
        self._conn: AbstractConnection | None = None
        self._acks: dict[tuple[bytes, str], anyio.Event] = {}
        self._failure: BusError | None = None
        self._done = False
        # Messages read and not yet taken. The reader hands each one over directly, waking
        # the task that iterates: an anyio memory stream costs that task one more loop turn
        # per message (its receive checkpoints first), ~45 us of CPU on each message.
        self._buffer: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.connections = 0  # how many times the reader has (re)subscribed; for tests, logs

    def __aiter__(self) -> RedisSubscription:
        return self

    async def __anext__(self) -> Message:
        while not self._buffer:
            if self._done:
                self._raise_failure(closed_ok=True)
                raise StopAsyncIteration
            if self._waiter is not None:
                raise BusError("a subscription is read by one task at a time")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._buffer.popleft()

    async def subscribe(self, *channels: str) -> None:
        self._channels.update(channels)
        await self._request(b"subscribe", "SUBSCRIBE", channels)

    async def psubscribe(self, *patterns: str) -> None:
        self._patterns.update(patterns)
        await self._request(b"psubscribe", "PSUBSCRIBE", patterns)

    async def unsubscribe(self, *channels: str) -> None:
        """Stop receiving from `channels` (none given: from every channel, not pattern)."""
        channels = channels or tuple(self._channels)
        self._channels.difference_update(channels)
        await self._request(b"unsubscribe", "UNSUBSCRIBE", channels)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The reader: connect, subscribe, dispatch; reconnect on loss. Ends when cancelled."""
        task_status.started()
        try:
            with self._bus._closable():
                while True:
                    conn = await self._bus._retrying(self._connect)
                    try:
                        await self._pump(conn)
                    except _REFUSED:
                        raise
                    except _RETRIABLE:
                        continue  # the connection was lost: connect and subscribe again
                    finally:
                        self._conn = None
                        await self._bus._discard(conn)
        except BusError as exc:
            self._failure = exc
        except rex.RedisError as exc:
            self._failure = BusError(f"pub/sub on {self._bus.where} failed: {exc}")
            self._failure.__cause__ = exc
        finally:
            self._close()

    # ------------------------------------------------------------------ internals
    def _raise_failure(self, *, closed_ok: bool = False) -> None:
        if (failure := self._failure) is not None:  # a fresh exception object per raise
            raise type(failure)(str(failure)) from failure.__cause__ or failure
        if self._done and not closed_ok:
            raise BusError("the subscription is closed")

    async def _request(self, kind: bytes, command: str, names: Sequence[str]) -> None:
        self._raise_failure()
        if not names:
            return
        waits = [self._acks.setdefault((kind, name), anyio.Event()) for name in names]
        if self._conn is not None:
            with suppress(*_RETRIABLE):  # if the connection is lost, the reader sends it again
                async with asyncio.timeout(self._bus._timeout_s):
                    await self._conn.send_command(command, *names, check_health=False)
        for event in waits:
            await event.wait()
        self._raise_failure()

    async def _connect(self) -> AbstractConnection:
        try:
            async with asyncio.timeout(self._bus._timeout_s):  # as for a command: see RedisBus
                return await self._subscribed_connection()
        except TimeoutError:
            raise self._bus._timed_out() from None

    async def _subscribed_connection(self) -> AbstractConnection:
        conn: AbstractConnection = await self._bus._pool.get_connection()  # type: ignore[no-untyped-call]
        # Same step as the snapshot below: later (un)subscribe calls send on this connection,
        # and pending unsubscribes are done (the new connection never had those channels).
        self._conn = conn
        channels, patterns = sorted(self._channels), sorted(self._patterns)
        for key in [key for key in self._acks if key[0] == b"unsubscribe"]:
            self._acks.pop(key).set()
        try:
            if channels:
                await conn.send_command("SUBSCRIBE", *channels, check_health=False)
            if patterns:
                await conn.send_command("PSUBSCRIBE", *patterns, check_health=False)
        except BaseException:
            self._conn = None
            await self._bus._discard(conn)
            raise
        self.connections += 1
        return conn

    async def _pump(self, conn: AbstractConnection) -> None:
        while True:
            reply = await conn.read_response(disable_decoding=True, timeout=math.inf)
            self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        kind = bytes(reply[0])
        if kind == b"message" and _str(reply[1]) in self._channels:
            self._deliver(Message(_str(reply[1]), bytes(reply[2])))
        elif kind == b"pmessage" and _str(reply[1]) in self._patterns:
            self._deliver(Message(_str(reply[2]), bytes(reply[3]), _str(reply[1])))
        elif kind in (b"subscribe", b"psubscribe", b"unsubscribe") and reply[1] is not None:
            event = self._acks.pop((kind, _str(reply[1])), None)
            if event is not None:
                event.set()

    def _deliver(self, message: Message) -> None:
        self._buffer.append(message)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _close(self) -> None:
        self._done = True
        self._wake()
        for event in self._acks.values():
            event.set()
        self._acks.clear()
