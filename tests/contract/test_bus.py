"""One contract, two buses: MemoryBus must behave as RedisBus does on a real redis-server."""

from __future__ import annotations

import anyio
import pytest

from jarvis_kernel.bus import Bus, Message, Subscription, Tx
from jarvis_kernel.errors import BusError

from .conftest import BusHarness

BINARY = b"\x00\xff\xfe binary \x00 payload \xc3\x28"


# ---------------------------------------------------------------------------- pub/sub


async def _take(sub: Subscription, count: int) -> list[Message]:
    """The next `count` messages of `sub` (5 s at most)."""
    received: list[Message] = []
    with anyio.fail_after(5):
        async for message in sub:
            received.append(message)
            if len(received) == count:
                break
    return received


async def test_subscription_is_live_when_entered(bus: Bus) -> None:
    async with bus.subscribe(channels=["ch:a"], patterns=["bids:*"]) as sub:
        assert await bus.publish("ch:a", "one") == 1
        assert await bus.publish("bids:t-1", BINARY) == 1
        assert await bus.publish("other", "nobody") == 0
        received = await _take(sub, 2)
    assert received[0] == Message("ch:a", b"one", None)
    assert received[1] == Message("bids:t-1", BINARY, "bids:*")


async def test_subscribe_and_unsubscribe_while_open(bus: Bus) -> None:
    async with bus.subscribe(channels=["first"]) as sub:
        await sub.subscribe("second")
        await sub.unsubscribe("first")
        assert await bus.publish("first", "x") == 0
        assert await bus.publish("second", "y") == 1
        with anyio.fail_after(5):
            message = await sub.__aiter__().__anext__()
    assert (message.channel, message.data) == ("second", b"y")


async def test_every_subscriber_gets_its_copy(bus: Bus) -> None:
    async with bus.subscribe(channels=["fan"]) as one, bus.subscribe(patterns=["f*"]) as two:
        assert await bus.publish("fan", "out") == 2
        with anyio.fail_after(5):
            first = await one.__aiter__().__anext__()
            second = await two.__aiter__().__anext__()
    assert first.data == second.data == b"out"
    assert second.pattern == "f*"


async def test_unconfirmed_publishes_arrive_in_order(bus: Bus) -> None:
    async with bus.subscribe(channels=["ch:a"], patterns=["bids:*"]) as sub:
        await bus.publish_unconfirmed("ch:a", "one")
        await bus.publish_unconfirmed("bids:t-1", BINARY)
        await bus.publish_unconfirmed("ch:a", "three")
        received = await _take(sub, 3)
    assert received == [
        Message("ch:a", b"one", None),
        Message("bids:t-1", BINARY, "bids:*"),
        Message("ch:a", b"three", None),
    ]


# ---------------------------------------------------------------------------- strings


async def test_set_get_nx_delete_exists(bus: Bus) -> None:
    assert await bus.get("k") is None
    assert await bus.set("k", "v1") is True
    assert await bus.set("k", "v2", nx=True) is False
    assert await bus.get("k") == b"v1"
    assert await bus.exists("k")
    assert await bus.delete("k", "missing") == 1
    assert not await bus.exists("k")
    assert await bus.set("k", BINARY, nx=True) is True
    assert await bus.get("k") == BINARY


async def test_ttl_expires_key(harness: BusHarness) -> None:
    bus = harness.bus
    await bus.set("lease", "me", ttl_s=0.05)
    await bus.set("forever", "x")
    assert await bus.get("lease") == b"me"
    await harness.advance(0.2)
    assert await bus.get("lease") is None
    assert await bus.set("lease", "you", nx=True) is True
    assert await bus.get("forever") == b"x"


async def test_scan_keys(bus: Bus) -> None:
    await bus.set("ns:a:1", "x")
    await bus.lpush("ns:a:2", "x")
    await bus.set("ns:b:1", "x")
    assert await bus.scan_keys("ns:a:*") == ["ns:a:1", "ns:a:2"]


async def test_wrong_type_is_a_bus_error(bus: Bus) -> None:
    await bus.set("str", "x")
    with pytest.raises(BusError):
        await bus.lpush("str", "y")
    assert await bus.get("str") == b"x"


# ---------------------------------------------------------------------------- lists


async def test_list_order_range_and_length(bus: Bus) -> None:
    assert await bus.lpush("l", "b", "a") == 2  # a b
    assert await bus.rpush("l", "c", "d") == 4  # a b c d
    assert await bus.lrange("l", 0, -1) == [b"a", b"b", b"c", b"d"]
    assert await bus.lrange("l", 1, 2) == [b"b", b"c"]
    assert await bus.lrange("l", -2, -1) == [b"c", b"d"]
    assert await bus.llen("l") == 4
    assert await bus.llen("missing") == 0
    assert await bus.lrange("missing", 0, -1) == []


async def test_lrem_counts(bus: Bus) -> None:
    await bus.rpush("l", "x", "y", "x", "z", "x")
    assert await bus.lrem("l", 1, "x") == 1
    assert await bus.lrange("l", 0, -1) == [b"y", b"x", b"z", b"x"]
    assert await bus.lrem("l", -1, "x") == 1
    assert await bus.lrange("l", 0, -1) == [b"y", b"x", b"z"]
    assert await bus.lrem("l", 0, "x") == 1
    assert await bus.lrem("l", 0, "absent") == 0
    assert await bus.lrange("l", 0, -1) == [b"y", b"z"]


async def test_lmove_ends(bus: Bus) -> None:
    await bus.rpush("src", "1", "2", "3")
    assert await bus.lmove("src", "dst") == b"3"  # RIGHT -> LEFT
    assert await bus.lmove("src", "dst", "LEFT", "RIGHT") == b"1"
    assert await bus.lrange("dst", 0, -1) == [b"3", b"1"]
    assert await bus.lmove("empty", "dst") is None


async def test_blmove_takes_available_item_at_once(bus: Bus) -> None:
    await bus.lpush("q", BINARY)
    with anyio.fail_after(5):
        assert await bus.blmove("q", "processing", timeout_s=None) == BINARY
    assert await bus.lrange("processing", 0, -1) == [BINARY]
    assert await bus.llen("q") == 0


async def test_blmove_times_out_with_none(harness: BusHarness) -> None:
    results: list[bytes | None] = []

    async def take() -> None:
        results.append(await harness.bus.blmove("q", "p", timeout_s=0.1))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            await harness.advance(0.3)
    assert results == [None]


async def test_blocked_moves_wake_in_order_and_land_in_dst(harness: BusHarness) -> None:
    bus = harness.bus
    got: dict[str, bytes | None] = {}

    async def take(name: str, started: anyio.Event) -> None:
        started.set()
        got[name] = await bus.blmove("q", f"proc:{name}", timeout_s=None)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for name in ("first", "second"):
                started = anyio.Event()
                tg.start_soon(take, name, started)
                await started.wait()
                await harness.settle()
            await bus.lpush("q", "task-1")
            await bus.lpush("q", "task-2")
    assert got == {"first": b"task-1", "second": b"task-2"}
    assert await bus.lrange("proc:first", 0, -1) == [b"task-1"]
    assert await bus.lrange("proc:second", 0, -1) == [b"task-2"]


# ---------------------------------------------------------------------------- hashes, zsets


async def test_hashes(bus: Bus) -> None:
    assert await bus.hset("h", {"a": "1", "b": BINARY}) == 2
    assert await bus.hset("h", {"a": "2", "c": "3"}) == 1
    assert await bus.hget("h", "a") == b"2"
    assert await bus.hget("h", "zz") is None
    assert await bus.hgetall("h") == {"a": b"2", "b": BINARY, "c": b"3"}
    assert await bus.hdel("h", "a", "zz") == 1
    assert await bus.hgetall("missing") == {}


async def test_sorted_sets(bus: Bus) -> None:
    assert await bus.zadd("z", {"w1": 100.0, "w2": 50.0, "w3": 300.0}) == 3
    assert await bus.zadd("z", {"w1": 200.0}) == 0
    assert await bus.zscore("z", "w1") == 200.0
    assert await bus.zscore("z", "nobody") is None
    assert await bus.zrangebyscore("z", 60, 1e12) == [("w1", 200.0), ("w3", 300.0)]
    assert await bus.zrem("z", "w3", "nobody") == 1
    assert await bus.zrangebyscore("z", float("-inf"), float("inf")) == [
        ("w2", 50.0),
        ("w1", 200.0),
    ]


# ---------------------------------------------------------------------------- streams


def _ms_seq(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


async def test_stream_add_range_and_cap(bus: Bus) -> None:
    ids = [await bus.xadd("s", {"event": f"e{i}"}) for i in range(3)]
    assert ids == sorted(ids, key=_ms_seq) and len(set(ids)) == 3
    entries = await bus.xrange("s")
    assert [e.fields["event"] for e in entries] == [b"e0", b"e1", b"e2"]
    assert [e.id for e in await bus.xrange("s", count=2)] == ids[:2]
    for i in range(400):
        await bus.xadd("capped", {"n": str(i)}, maxlen=10)
    length = await bus.xlen("capped")
    assert 10 <= length <= 10 + 200  # "~": approximate, Redis trims whole nodes
    assert (await bus.xrange("capped"))[-1].fields["n"] == b"399"


async def test_reverse_range_newest_first(bus: Bus) -> None:
    ids = [await bus.xadd("s", {"n": str(i)}) for i in range(5)]
    assert [e.id for e in await bus.xrevrange("s")] == ids[::-1]
    assert [e.fields["n"] for e in await bus.xrevrange("s", count=2)] == [b"4", b"3"]
    assert [e.id for e in await bus.xrevrange("s", end=ids[2], count=10)] == ids[2::-1]
    assert await bus.xrevrange("missing") == []


async def test_group_destroy(bus: Bus) -> None:
    assert await bus.xgroup_destroy("missing", "g") is False
    await bus.xgroup_create("ev", "g")
    await bus.xadd("ev", {"event": "x"})
    await bus.xreadgroup("ev", "g", "c")
    assert await bus.xgroup_destroy("ev", "g") is True
    assert await bus.xgroup_destroy("ev", "g") is False
    assert await bus.xgroup_create("ev", "g", start_id="0") is True  # anew: nothing pending
    assert await bus.xreadgroup("ev", "g", "c", pending=True) == []


async def test_consumer_group_read_pending_ack(bus: Bus) -> None:
    assert await bus.xgroup_create("ev", "guardian") is True
    assert await bus.xgroup_create("ev", "guardian") is False
    first = await bus.xadd("ev", {"event": "a"})
    second = await bus.xadd("ev", {"event": "b"})
    got = await bus.xreadgroup("ev", "guardian", "c1", count=10)
    assert [e.id for e in got] == [first, second]
    assert await bus.xreadgroup("ev", "guardian", "c1") == []  # nothing new
    pending = await bus.xreadgroup("ev", "guardian", "c1", pending=True)
    assert [e.id for e in pending] == [first, second]
    assert await bus.xack("ev", "guardian", first) == 1
    pending = await bus.xreadgroup("ev", "guardian", "c1", pending=True)
    assert [e.id for e in pending] == [second]
    assert pending[0].fields == {"event": b"b"}


async def test_group_created_late_starts_from_zero(bus: Bus) -> None:
    await bus.xadd("ev", {"event": "before"})
    await bus.xgroup_create("ev", "late")
    got = await bus.xreadgroup("ev", "late", "c")
    assert [e.fields["event"] for e in got] == [b"before"]


async def test_xreadgroup_blocks_until_an_entry_arrives(harness: BusHarness) -> None:
    bus = harness.bus
    await bus.xgroup_create("ev", "g")
    got = []

    async def read() -> None:
        got.extend(await bus.xreadgroup("ev", "g", "c", block_s=30))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await harness.settle()
            await bus.xadd("ev", {"event": "wake"})
    assert [e.fields["event"] for e in got] == [b"wake"]


async def test_xreadgroup_block_times_out_empty(harness: BusHarness) -> None:
    await harness.bus.xgroup_create("ev", "g")
    got = []

    async def read() -> None:
        got.append(await harness.bus.xreadgroup("ev", "g", "c", block_s=0.1))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await harness.advance(0.3)
    assert got == [[]]


async def test_autoclaim_takes_over_idle_entries(harness: BusHarness) -> None:
    bus = harness.bus
    await bus.xgroup_create("ev", "g")
    eid = await bus.xadd("ev", {"event": "orphan"})
    assert [e.id for e in await bus.xreadgroup("ev", "g", "dead-consumer")] == [eid]
    assert await bus.xautoclaim("ev", "g", "heir", min_idle_s=60) == []
    await harness.advance(0.1)
    claimed = await bus.xautoclaim("ev", "g", "heir", min_idle_s=0.05)
    assert [(e.id, e.fields) for e in claimed] == [(eid, {"event": b"orphan"})]
    assert [e.id for e in await bus.xreadgroup("ev", "g", "heir", pending=True)] == [eid]
    assert await bus.xreadgroup("ev", "g", "dead-consumer", pending=True) == []


async def test_unknown_group_is_a_bus_error(bus: Bus) -> None:
    await bus.xadd("ev", {"event": "x"})
    with pytest.raises(BusError):
        await bus.xreadgroup("ev", "nogroup", "c")


# ---------------------------------------------------------------------------- atomic change


async def test_tx_applies_everything_when_guards_hold(bus: Bus) -> None:
    await bus.set("auction:t1", "round-1")
    await bus.hset("live", {"t1": "auctioning"})
    await bus.rpush("processing", "other", "job")
    await bus.xgroup_create("ev", "g")
    async with bus.subscribe(channels=["note"]) as sub:
        tx = (
            Tx()
            .require("auction:t1", "round-1")
            .require("absent", None)
            .require_field("live", "t1", "auctioning")
            .require_field("live", "t2", None)
            .delete("auction:t1")
            .lpush("tasks:w1", BINARY)
            .lrem("processing", 1, "job")
            .hset("live", {"t1": "assigned"})
            .hincrby("counts", "w1", 2)
            .hdel("live", "gone")
            .zadd("z", {"w1": 1.5})
            .zrem("z", "nobody")
            .set("lease", "x", ttl_s=60)
            .xadd("ev", {"event": "assigned"}, maxlen=1000)
            .publish("note", "done")
        )
        assert await bus.execute(tx) is True
        with anyio.fail_after(5):
            message = await sub.__aiter__().__anext__()
    assert message.data == b"done"
    assert await bus.get("auction:t1") is None
    assert await bus.lrange("tasks:w1", 0, -1) == [BINARY]
    assert await bus.lrange("processing", 0, -1) == [b"other"]
    assert await bus.hget("live", "t1") == b"assigned"
    assert await bus.hget("counts", "w1") == b"2"
    assert await bus.zscore("z", "w1") == 1.5
    assert await bus.get("lease") == b"x"
    assert [e.fields for e in await bus.xreadgroup("ev", "g", "c")] == [{"event": b"assigned"}]


@pytest.mark.parametrize(
    "guard",
    [
        lambda tx: tx.require("auction:t1", "round-2"),
        lambda tx: tx.require("auction:t1", None),
        lambda tx: tx.require_field("live", "t1", "assigned"),
        lambda tx: tx.require_field("live", "t1", None),
    ],
)
async def test_tx_writes_nothing_when_a_guard_fails(bus: Bus, guard) -> None:  # type: ignore[no-untyped-def]
    await bus.set("auction:t1", "round-1")
    await bus.hset("live", {"t1": "auctioning"})
    tx = Tx().require("auction:t1", "round-1")
    guard(tx)
    tx.delete("auction:t1").lpush("tasks:w1", "task").hset("live", {"t1": "assigned"})
    assert await bus.execute(tx) is False
    assert await bus.get("auction:t1") == b"round-1"
    assert await bus.llen("tasks:w1") == 0
    assert await bus.hget("live", "t1") == b"auctioning"


async def test_execute_many_applies_each_tx_on_its_own_in_order(harness: BusHarness) -> None:
    bus = harness.bus
    if harness.kind == "redis":  # the first use after a restart: not in the script cache
        from jarvis_kernel.bus.redis import RedisBus

        assert isinstance(bus, RedisBus)
        await bus._call("SCRIPT", "FLUSH")
    await bus.hset("live", {"t1": "auctioning", "t2": "auctioning"})
    txs = [
        Tx().require_field("live", "t1", "auctioning").hset("live", {"t1": "assigned"}),
        Tx().require_field("live", "t2", "gone").hset("live", {"t2": "x"}).lpush("l", "no"),
        # sees the first one's write: they are applied in order
        Tx().require_field("live", "t1", "assigned").hdel("live", "t1").lpush("l", "yes"),
    ]
    assert await bus.execute_many(txs) == [True, False, True]
    assert await bus.execute_many([]) == []
    assert await bus.hgetall("live") == {"t2": b"auctioning"}
    assert await bus.lrange("l", 0, -1) == [b"yes"]


async def test_tx_push_wakes_blocked_move(harness: BusHarness) -> None:
    bus = harness.bus
    got: list[bytes | None] = []

    async def take() -> None:
        got.append(await bus.blmove("tasks:w1", "processing:w1", timeout_s=None))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            await harness.settle()
            assert await bus.execute(Tx().lpush("tasks:w1", "job")) is True
    assert got == [b"job"]
    assert await bus.lrange("processing:w1", 0, -1) == [b"job"]
