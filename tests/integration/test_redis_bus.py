"""RedisBus against real redis-servers: restarts, credentials, TLS, the Lua transaction.

The behaviour both buses share is in tests/contract/test_bus.py; this file covers what only a
real server can show. Every wait is for an event (a receiver count, a blocked client, a task
ending) under `fail_after`; the one deliberate sleep outlasts a socket timeout on purpose.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio

from jarvis_kernel.bus import Message, Tx, open_bus
from jarvis_kernel.bus.redis import RedisBus, RedisSubscription, redact_url
from jarvis_kernel.errors import BusError, BusUnavailable, ConfigError
from jarvis_kernel.testing import (
    FakeClock,
    RedisServer,
    RedisServerError,
    free_port,
)
from tests.fixtures.services import unavailable

pytestmark = pytest.mark.redis

BINARY = b"\x00\xff\xfe tx \x00\xc3\x28 \x80"
ServerFactory = Callable[..., RedisServer]


@pytest.fixture
def start_server() -> Iterator[ServerFactory]:
    """Start redis-servers of our own (stopped and removed at the end of the test)."""
    servers: list[RedisServer] = []

    def start(server: RedisServer | None = None, **kwargs: object) -> RedisServer:
        try:
            server = server or RedisServer(**kwargs)  # type: ignore[arg-type]
            servers.append(server)
            return server.start()
        except RedisServerError as exc:
            unavailable(f"no Redis: {exc}", "JARVIS_REQUIRE_REDIS")
            raise  # unreachable: unavailable() skips or fails

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def bus(redis_url: str) -> AsyncIterator[RedisBus]:
    redis_bus = RedisBus.from_url(redis_url, reconnect_timeout_s=5.0)
    yield redis_bus
    await redis_bus.aclose()


async def _wait_blocked(url: str, count: int = 1, *, at_most: bool = False) -> None:
    """Return once at least (`at_most`: at most) `count` clients are blocked in the server."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        while True:
            blocked = int((await client.info("clients"))["blocked_clients"])
            if blocked <= count if at_most else blocked >= count:
                return
            await anyio.lowlevel.checkpoint()
    finally:
        await client.aclose()


async def _publish_until_heard(bus: RedisBus, channel: str, data: bytes) -> None:
    """Publish until a subscriber receives it: the way to see a re-subscription land."""
    while await bus.publish(channel, data) == 0:
        await anyio.lowlevel.checkpoint()


# ---------------------------------------------------------------------------- restart


async def test_subscription_and_blocked_move_survive_a_restart(
    start_server: ServerFactory,
) -> None:
    server = start_server(persist=True)
    bus = RedisBus.from_url(server.url, reconnect_timeout_s=30.0, backoff_max_s=0.2)
    moved: list[bytes | None] = []

    async def take() -> None:
        moved.append(await bus.blmove("jobs", "processing", timeout_s=None))

    try:
        await bus.lpush("queued", "t1", "t2", "t3")
        with anyio.fail_after(30):
            async with (
                bus.subscribe(channels=["news"], patterns=["bids:*"]) as sub,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(take)
                await _wait_blocked(server.url)
                await anyio.to_thread.run_sync(server.stop)  # SIGTERM, with both live
                assert moved == []
                await anyio.to_thread.run_sync(server.start)  # same port, AOF reloaded

                await _publish_until_heard(bus, "news", b"after")
                await _publish_until_heard(bus, "bids:t-9", b"bid")
                assert await sub.__aiter__().__anext__() == Message("news", b"after")
                assert await sub.__aiter__().__anext__() == Message("bids:t-9", b"bid", "bids:*")
                assert isinstance(sub, RedisSubscription)
                assert sub.connections == 2  # it reconnected, once

                await _wait_blocked(server.url)  # the move blocks again on the new server
                await bus.lpush("jobs", "job-1")
        assert moved == [b"job-1"]
        assert await bus.lrange("processing", 0, -1) == [b"job-1"]
        assert await bus.lrange("queued", 0, -1) == [b"t3", b"t2", b"t1"]
    finally:
        await bus.aclose()


async def test_blocking_move_outlasts_the_socket_timeout(redis_url: str) -> None:
    bus = RedisBus.from_url(f"{redis_url}?socket_timeout=0.1")
    probe = redis.asyncio.Redis.from_url(redis_url)
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(bus.blmove, "q", "p", None)
                await _wait_blocked(redis_url)
                before = (await probe.info("stats"))["total_connections_received"]
                await anyio.sleep(0.4)  # the point: 4 socket timeouts pass, nothing reconnects
                assert (await probe.info("stats"))["total_connections_received"] == before
                assert await probe.lpush("q", "late") == 1
        assert await bus.lrange("p", 0, -1) == [b"late"]
    finally:
        await probe.aclose()
        await bus.aclose()


async def test_aclose_ends_blocked_calls_with_bus_error(redis_url: str) -> None:
    bus = RedisBus.from_url(redis_url)
    errors: list[BaseException] = []

    async def take() -> None:
        try:
            await bus.blmove("q", "p", timeout_s=None)
        except BusError as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        async with bus.subscribe(channels=["c"]) as sub, anyio.create_task_group() as tg:
            tg.start_soon(take)
            await _wait_blocked(redis_url)
            await bus.aclose()
            with pytest.raises(BusError):
                await sub.__aiter__().__anext__()
    assert len(errors) == 1
    with pytest.raises(BusError, match="closed"):
        await bus.get("k")


async def test_aclose_ends_a_command_waiting_for_its_reply(start_server: ServerFactory) -> None:
    """A command that does not block runs without a cancel scope: `aclose` ends it by
    disconnecting its connection, at once, not after the socket timeout (20 s here)."""
    server = start_server()
    bus = RedisBus.from_url(f"{server.url}?socket_timeout=20", reconnect_timeout_s=60.0)
    errors: list[BaseException] = []

    async def get() -> None:
        try:
            await bus.get("k")
        except BusError as exc:
            errors.append(exc)

    try:
        await bus.set("k", "v")
        server.pause()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(get)
                await anyio.wait_all_tasks_blocked()  # sent, waiting for the reply
                await bus.aclose()
        assert len(errors) == 1
        assert "closed" in str(errors[0])
    finally:
        server.resume()
        await bus.aclose()


async def test_a_connection_the_server_closed_is_not_used_again(
    start_server: ServerFactory,
) -> None:
    """The bus keeps its connections between commands. One that the server closed (a restart,
    a client kill) is replaced before a command is sent on it: no failed attempt, so even a
    bus with no reconnect budget at all does not notice."""
    server = start_server(persist=True)
    bus = RedisBus.from_url(server.url, reconnect_timeout_s=0.0)
    probe = redis.asyncio.Redis.from_url(server.url)
    try:
        with anyio.fail_after(30):
            await bus.set("k", "v")
            await anyio.to_thread.run_sync(server.stop)
            await anyio.to_thread.run_sync(server.start)
            assert await bus.get("k") == b"v"
            killed = await probe.client_kill_filter(skipme=True)
            assert killed >= 1  # the bus's connection
            await probe.ping()  # the kill is done; its connection's end is read by the bus's loop
            await anyio.wait_all_tasks_blocked()
            assert await bus.get("k") == b"v"
            assert await bus.execute_many([Tx().set("k", "w")]) == [True]
    finally:
        await probe.aclose()
        await bus.aclose()


async def test_outage_beyond_the_budget_is_bus_unavailable(start_server: ServerFactory) -> None:
    server = start_server()
    bus = RedisBus.from_url(server.url, reconnect_timeout_s=0.3, backoff_max_s=0.1)
    try:
        with anyio.fail_after(10):
            async with bus.subscribe(channels=["c"]) as sub:
                await anyio.to_thread.run_sync(server.stop)
                with pytest.raises(BusUnavailable):  # not an ExceptionGroup
                    await sub.__aiter__().__anext__()
                with pytest.raises(BusUnavailable):
                    await sub.subscribe("d")
            with pytest.raises(BusUnavailable):
                await bus.blmove("q", "p", timeout_s=None)
            with pytest.raises(BusUnavailable):
                async with bus.subscribe(channels=["c"]):
                    pytest.fail("subscribed with the server down")
    finally:
        await bus.aclose()


async def test_a_server_that_never_answers_times_out(start_server: ServerFactory) -> None:
    """A frozen server accepts connections and answers nothing: the socket timeout, which the
    bus applies itself, ends each command and each greeting of a new connection, and the
    reconnect budget then ends the call; once the server runs again, the same bus works."""
    server = start_server()
    url = f"{server.url}?socket_timeout=0.2"
    used, fresh = (RedisBus.from_url(url, reconnect_timeout_s=0.4) for _ in range(2))
    try:
        await used.set("k", "v")  # `used` has a connection; `fresh` will have to greet anew
        server.pause()
        with anyio.fail_after(20):
            with pytest.raises(BusUnavailable, match=r"no reply from Redis at .* in 0\.2 s"):
                await used.get("k")
            with pytest.raises(BusUnavailable, match="no reply"):
                await used.execute_many([Tx().set("k", "w")])
            with pytest.raises(BusUnavailable, match="no reply"):
                await fresh.get("k")
            with pytest.raises(BusUnavailable, match="no reply"):
                async with fresh.subscribe(channels=["c"]):
                    pytest.fail("subscribed to a frozen server")
        server.resume()
        with anyio.fail_after(10):
            assert await used.get("k") == b"v"  # the Tx never got past a new connection's greeting
            assert await fresh.execute(Tx().set("k", "x"))
            assert await used.get("k") == b"x"
    finally:
        server.resume()
        await used.aclose()
        await fresh.aclose()


async def test_errors_in_the_subscription_body_pass_unwrapped(bus: RedisBus) -> None:
    with pytest.raises(KeyError):
        async with bus.subscribe(channels=["c"]):
            raise KeyError("mine")


async def test_a_subscription_is_read_by_one_task_at_a_time(bus: RedisBus) -> None:
    async with bus.subscribe(channels=["c"]) as sub, anyio.create_task_group() as tg:
        messages = sub.__aiter__()
        tg.start_soon(messages.__anext__)
        await anyio.lowlevel.checkpoint()  # the first reader waits now
        with pytest.raises(BusError, match="one task at a time"):
            await messages.__anext__()
        tg.cancel_scope.cancel()


async def test_cancelled_calls_leave_nothing_behind(bus: RedisBus, redis_url: str) -> None:
    async def listen() -> None:
        async with bus.subscribe(channels=["c"]) as sub:
            async for _ in sub:
                pass

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(bus.blmove, "q", "p", None)
            tg.start_soon(listen)
            await _wait_blocked(redis_url)
            await _publish_until_heard(bus, "c", b"x")
            tg.cancel_scope.cancel()
        assert await bus.publish("c", "nobody") == 0
        await _wait_blocked(redis_url, 0, at_most=True)
        await bus.lpush("q", "job")  # nothing still waits on q: the job stays there
        assert await bus.lrange("q", 0, -1) == [b"job"]
        assert await bus.blmove("q", "p", timeout_s=None) == b"job"


# ---------------------------------------------------------------------------- unconfirmed


async def test_an_unconfirmed_publish_waits_for_no_reply(start_server: ServerFactory) -> None:
    """To a frozen server a confirmed publish waits out the socket timeout (2 s); an
    unconfirmed one returns at once, and its message arrives once the server runs again."""
    server = start_server()
    bus = RedisBus.from_url(f"{server.url}?socket_timeout=2", reconnect_timeout_s=2.0)
    try:
        async with bus.subscribe(channels=["bids:t-1"]) as sub:
            messages = sub.__aiter__()
            with anyio.fail_after(10):
                await bus.publish_unconfirmed("bids:t-1", b"first")  # its connection is made
                assert await messages.__anext__() == Message("bids:t-1", b"first")
            server.pause()
            with anyio.fail_after(1):
                await bus.publish_unconfirmed("bids:t-1", b"second")
            server.resume()
            with anyio.fail_after(10):
                assert await messages.__anext__() == Message("bids:t-1", b"second")
    finally:
        server.resume()
        await bus.aclose()


async def test_unconfirmed_publishes_reconnect_after_a_restart(
    start_server: ServerFactory,
) -> None:
    """The server closed the connection: the next message goes on a new one, not lost."""
    server = start_server()
    bus = RedisBus.from_url(server.url, reconnect_timeout_s=30.0, backoff_max_s=0.2)
    try:
        with anyio.fail_after(30):
            async with bus.subscribe(channels=["news"]) as sub:
                messages = sub.__aiter__()
                await bus.publish_unconfirmed("news", b"before")
                assert await messages.__anext__() == Message("news", b"before")
                await anyio.to_thread.run_sync(server.stop)
                await anyio.to_thread.run_sync(server.start)
                await _publish_until_heard(bus, "news", b"subscribed again")
                assert await messages.__anext__() == Message("news", b"subscribed again")
                await bus.publish_unconfirmed("news", b"after")
                assert await messages.__anext__() == Message("news", b"after")
    finally:
        await bus.aclose()


async def test_unconfirmed_publishes_where_client_reply_is_refused(
    start_server: ServerFactory,
) -> None:
    """A user whose ACL forbids CLIENT still publishes, confirmed instead: the replies are
    read (none is left to pile up), so that a frozen server makes them time out."""
    server = start_server(password="s3cret")
    admin = redis.Redis.from_url(server.url)
    try:
        admin.execute_command(
            "ACL", "SETUSER", "bidder", "on", ">pw", "~*", "&*", "+@all", "-client"
        )
    finally:
        admin.close()
    url = f"redis://bidder:pw@127.0.0.1:{server.port}/0?socket_timeout=0.3"
    async with (
        open_bus(url, reconnect_timeout_s=0.3) as bus,
        bus.subscribe(channels=["bids:t-1"]) as sub,
    ):
        await bus.publish_unconfirmed("bids:t-1", b"one")
        await bus.publish_unconfirmed("bids:t-1", b"two")
        with anyio.fail_after(5):
            messages = sub.__aiter__()
            assert await messages.__anext__() == Message("bids:t-1", b"one")
            assert await messages.__anext__() == Message("bids:t-1", b"two")
        server.pause()
        try:
            with anyio.fail_after(10), pytest.raises(BusUnavailable, match="no reply"):
                await bus.publish_unconfirmed("bids:t-1", b"three")
        finally:
            server.resume()


# ---------------------------------------------------------------------------- reaching Redis


async def test_unreachable_redis_is_bus_unavailable_naming_the_url() -> None:
    port = free_port()
    started = anyio.current_time()
    with anyio.fail_after(10), pytest.raises(BusUnavailable) as info:
        async with open_bus(f"redis://:hunter2@127.0.0.1:{port}/0", reconnect_timeout_s=0.5):
            pytest.fail("opened a bus on a closed port")
    assert 0.45 <= anyio.current_time() - started < 5
    assert f"redis://:***@127.0.0.1:{port}/0" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_redact_url() -> None:
    assert redact_url("redis://alice:p%40ss@h:1/2?x=1") == "redis://alice:***@h:1/2?x=1"
    assert redact_url("rediss://:pw@h:1") == "rediss://:***@h:1"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


async def test_built_from_a_client_or_a_pool(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, protocol=2)
    pool = redis.asyncio.ConnectionPool.from_url(redis_url, protocol=2)
    for bus in (RedisBus(client), RedisBus(pool)):
        try:
            assert await bus.set("k", "v")
            assert bus.where.startswith("redis://127.0.0.1:")
        finally:
            await bus.aclose()
    with pytest.raises(ConfigError, match="RESP2"):  # redis-py's default is RESP3
        RedisBus(redis.asyncio.ConnectionPool.from_url(redis_url))
    with pytest.raises(ConfigError, match="invalid Redis URL"):
        RedisBus.from_url("http://:pw@127.0.0.1")


async def test_open_bus_without_url_is_in_memory() -> None:
    async with open_bus(None, clock=FakeClock()) as bus:
        assert type(bus).__name__ == "MemoryBus"
        assert await bus.set("k", "v")


async def test_password_url(start_server: ServerFactory) -> None:
    server = start_server(password="s3cret")
    async with open_bus(server.url) as bus:
        assert await bus.set("k", BINARY)
        assert await bus.get("k") == BINARY


async def test_acl_user_url(start_server: ServerFactory) -> None:
    server = start_server(password="s3cret")
    admin = redis.Redis.from_url(server.url)
    try:
        admin.execute_command("ACL", "SETUSER", "alice", "on", ">pw", "~*", "&*", "+@all")
    finally:
        admin.close()
    async with open_bus(f"redis://alice:pw@127.0.0.1:{server.port}/0") as bus:
        async with bus.subscribe(patterns=["acl:*"]) as sub:
            assert await bus.publish("acl:x", "hi") == 1
            with anyio.fail_after(5):
                assert (await sub.__aiter__().__anext__()).data == b"hi"
        assert await bus.execute(Tx().require("k", None).set("k", "v"))


@pytest.mark.parametrize("auth", ["", ":wrong-pw@", "alice:wrong-pw@"])
async def test_bad_credentials_are_a_bus_error_at_once(
    start_server: ServerFactory, auth: str
) -> None:
    server = start_server(password="s3cret")
    started = anyio.current_time()
    with anyio.fail_after(10), pytest.raises(BusError) as info:
        async with open_bus(f"redis://{auth}127.0.0.1:{server.port}/0", reconnect_timeout_s=5):
            pytest.fail("opened a bus with bad credentials")
    assert anyio.current_time() - started < 2  # not retried until the reconnect budget ends
    assert "refused access" in str(info.value)
    assert "wrong-pw" not in str(info.value)
    assert isinstance(info.value.__cause__, redis.AuthenticationError)


# ---------------------------------------------------------------------------- TLS


class _TlsRedisServer(RedisServer):
    """redis-server speaking only TLS on its port."""

    def __init__(self, certs: Path) -> None:
        super().__init__()
        self.certs = certs

    def _argv(self) -> list[str]:
        argv = super()._argv()
        argv[argv.index("--port") + 1] = "0"
        tls = {"cert-file": "server.crt", "key-file": "server.key", "ca-cert-file": "ca.crt"}
        for option, name in tls.items():
            argv += [f"--tls-{option}", str(self.certs / name)]
        return [*argv, "--tls-port", str(self.port), "--tls-auth-clients", "no"]


def _make_certs(folder: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1, with the openssl CLI."""

    def openssl(*args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True)
        assert done.returncode == 0, f"openssl {' '.join(args)}:\n{done.stderr}"

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = ["-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=jarvis test CA"]
    openssl("req", "-x509", *key, *ca)
    openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext",
    )  # fmt: skip


def _tls_unsupported_reason(exc: RedisServerError) -> str | None:
    text = str(exc).lower()
    if "tls" in text and ("not supported" in text or "bad directive" in text):
        return f"this redis-server was built without TLS: {exc}"
    return None


async def test_tls_url(start_server: ServerFactory, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a test certificate")
    _make_certs(tmp_path)
    try:
        tls_server = _TlsRedisServer(tmp_path)
    except RedisServerError as exc:
        unavailable(f"no Redis: {exc}", "JARVIS_REQUIRE_REDIS")
        raise
    try:
        start_server(tls_server)
    except RedisServerError as exc:  # pragma: no cover - depends on how Redis was built
        reason = _tls_unsupported_reason(exc)
        if reason is None:
            raise
        pytest.skip(reason)
    url = f"rediss://127.0.0.1:{tls_server.port}/0?ssl_ca_certs={tmp_path / 'ca.crt'}"
    async with open_bus(url) as bus:
        async with bus.subscribe(channels=["tls"]) as sub:
            assert await bus.execute(Tx().set("k", BINARY).publish("tls", BINARY))
            with anyio.fail_after(5):
                assert (await sub.__aiter__().__anext__()).data == BINARY
        assert await bus.get("k") == BINARY
    with anyio.fail_after(10), pytest.raises(BusUnavailable):  # plain text on the TLS port
        async with open_bus(f"redis://127.0.0.1:{tls_server.port}/0", reconnect_timeout_s=0.3):
            pass


# ---------------------------------------------------------------------------- Tx via Lua


async def test_tx_guard_failure_writes_nothing(bus: RedisBus) -> None:
    await bus.set("lease", BINARY)
    await bus.hset("live", {"t1": BINARY})
    tx = (
        Tx()
        .require("lease", BINARY)
        .require_field("live", "t1", BINARY)
        .require_field("live", "t2", None)
        .require("nothing-here", b"")  # absent is not the empty string
        .set("lease", "mine")
        .lpush("tasks", "job")
        .publish("note", "x")
    )
    assert await bus.execute(tx) is False
    assert await bus.get("lease") == BINARY
    assert await bus.llen("tasks") == 0


async def test_tx_applies_every_op_and_keeps_binary_values(bus: RedisBus) -> None:
    await bus.set("lease", BINARY)
    await bus.xgroup_create("ev", "g")
    async with bus.subscribe(channels=["note"]) as sub:
        tx = (
            Tx()
            .require("lease", BINARY)
            .require("absent", None)
            .require_field("live", "t1", None)
            .set("lease", BINARY + b"2", ttl_s=60)
            .hset("live", {"t1": BINARY})
            .rpush("tasks", BINARY, b"")
            .xadd("ev", {"raw": BINARY}, maxlen=100)
            .publish("note", BINARY)
        )
        assert await bus.execute(tx) is True
        with anyio.fail_after(5):
            assert await sub.__aiter__().__anext__() == Message("note", BINARY)
    assert await bus.get("lease") == BINARY + b"2"
    assert await bus.hgetall("live") == {"t1": BINARY}
    assert await bus.lrange("tasks", 0, -1) == [BINARY, b""]
    assert [e.fields for e in await bus.xreadgroup("ev", "g", "c")] == [{"raw": BINARY}]


async def test_tx_wrong_type_midway_writes_nothing(bus: RedisBus) -> None:
    await bus.set("a-string", "x")
    tx = Tx().lpush("tasks", "job").hset("h", {"f": "1"}).lpush("a-string", "boom")
    with pytest.raises(BusError, match="WRONGTYPE"):
        await bus.execute(tx)
    assert await bus.llen("tasks") == 0
    assert await bus.hgetall("h") == {}
    # types are followed through the tx: after DEL the key may become a list
    assert await bus.execute(Tx().delete("a-string").lpush("a-string", "ok")) is True
    assert await bus.lrange("a-string", 0, -1) == [b"ok"]


async def test_tx_script_is_loaded_once_and_reloaded_after_flush(
    bus: RedisBus, redis_url: str
) -> None:
    probe = redis.asyncio.Redis.from_url(redis_url)
    try:
        await probe.script_flush()
        await probe.config_resetstat()
        for i in range(3):
            assert await bus.execute(Tx().rpush("l", str(i)))
        stats = await probe.info("commandstats")
        assert stats["cmdstat_eval"]["calls"] == 1  # NOSCRIPT once, then EVALSHA only
        await probe.script_flush()  # as after a restart without the script cache
        assert await bus.execute(Tx().rpush("l", "3"))
        assert await bus.lrange("l", 0, -1) == [b"0", b"1", b"2", b"3"]
    finally:
        await probe.aclose()


async def test_tx_with_many_values(bus: RedisBus) -> None:
    values = [str(i) for i in range(20_000)]
    fields = {f"f{i}": str(i) for i in range(10_000)}
    assert await bus.execute(Tx().rpush("big", *values).hset("bigh", fields)) is True
    assert await bus.lrange("big", 0, -1) == [v.encode() for v in values]
    assert len(await bus.hgetall("bigh")) == 10_000


async def test_arguments_of_every_kind_are_sent_exactly(bus: RedisBus) -> None:
    """Commands are packed by hiredis: non-ASCII text, ints and floats to the last bit."""
    odd, big = 0.1 + 0.2, 2.0**60 + 2.0**8
    assert await bus.zadd("zset-ü", {"mémoire": odd, "big": big}) == 2
    assert await bus.zscore("zset-ü", "mémoire") == odd
    assert await bus.zscore("zset-ü", "big") == big
    assert await bus.execute(Tx().hset("h", {"ü": BINARY}).lrem("l", -3, "x")) is True
    assert await bus.hgetall("h") == {"ü": BINARY}
    with pytest.raises(BusError):  # a value of no RESP kind: at once, no retry
        await bus.set("k", None)  # type: ignore[arg-type]
    assert await bus.get("k") is None
