"""The worker side of the wire protocol: a `WorkerAgent` on each bus.

On MemoryBus time is a FakeClock moved by `harness.advance`; on RedisBus it is real and the
durations are tiny. Either way nothing sleeps to wait for an effect: `until` polls the bus
between advances, under a `fail_after` safety net.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from jarvis_kernel.bus import Bus, Message
from jarvis_kernel.clock import Clock, SystemClock
from jarvis_kernel.config import LivenessConfig, ScoringConfig, WorkerConfig
from jarvis_kernel.market.scoring import bid_score
from jarvis_kernel.protocol import (
    Announce,
    Assignment,
    Bid,
    Control,
    DeadLetter,
    Event,
    GenericEvent,
    Keys,
    PauseInfo,
    WorkerInfo,
    WorkerState,
    decode,
    decode_event,
    encode,
)
from jarvis_kernel.worker.agent import WorkerAgent
from jarvis_kernel.worker.executors import Completed, ExecutionContext, Failed, Outcome

from .conftest import BusHarness

KEYS = Keys("jt")
MARKET = KEYS.market_for("w1")  # a worker of this version hears announcements there
LIVENESS = LivenessConfig(heartbeat_s=0.1, dead_after_s=0.3)
SCORING = ScoringConfig()
STEP_S = 0.05


class GateExecutor:
    """Reports progress once, then waits until the test opens the task's gate."""

    def __init__(self) -> None:
        self.gates: dict[str, anyio.Event] = {}
        self.runs: list[str] = []

    def gate(self, task_id: str) -> anyio.Event:
        return self.gates.setdefault(task_id, anyio.Event())

    def release(self, task_id: str) -> None:
        self.gate(task_id).set()

    async def run(self, task: Assignment, ctx: ExecutionContext) -> Outcome:
        self.runs.append(task.task_id)
        await ctx.progress(42, "thinking")
        await self.gate(task.task_id).wait()
        return Completed(result={"done": task.task_id}, token_usage=42)


class World:
    def __init__(self, harness: BusHarness, tmp_path: Path) -> None:
        self.h = harness
        self.bus: Bus = harness.bus
        self.clock: Clock = harness.clock or SystemClock()
        self.memory_dir = tmp_path / ".memory"
        self.executor = GateExecutor()

    def agent(self, **spec: Any) -> WorkerAgent:
        fields: dict[str, Any] = {"id": "w1", "expertise": {"react": 0.9, "auth": 0.4}}
        fields.update(spec)
        return WorkerAgent(
            WorkerConfig(**fields),
            bus=self.bus,
            keys=KEYS,
            clock=self.clock,
            scoring=SCORING,
            liveness=LIVENESS,
            memory_dir=self.memory_dir,
            executor=self.executor,
            poll_s=STEP_S,
        )

    async def until(self, check: Callable[[], Awaitable[bool]]) -> None:
        with anyio.fail_after(10):
            while not await check():
                await self.h.advance(STEP_S)

    async def events(self, kind: str | None = None) -> list[Event | GenericEvent]:
        entries = await self.bus.xrange(KEYS.events)
        found = [decode_event(e.fields["event"]) for e in entries]
        return [e for e in found if kind is None or _type(e) == kind]

    async def wait_event(self, kind: str, count: int = 1) -> list[Event | GenericEvent]:
        async def enough() -> bool:
            return len(await self.events(kind)) >= count

        await self.until(enough)
        return await self.events(kind)

    def announce(self, task_id: str, round_: int = 1, **fields: Any) -> Announce:
        closes = self.clock.time_ms() + 5_000
        return Announce(task_id=task_id, round=round_, closes_at_ms=closes, **fields)

    async def push(self, task: Assignment, worker_id: str = "w1") -> bytes:
        raw = encode(task)
        await self.bus.lpush(KEYS.tasks_for(worker_id), raw)
        return raw

    async def control(self, command: str, worker_id: str = "w1") -> None:
        await self.bus.publish(KEYS.control(worker_id), encode(Control(command=command)))  # type: ignore[arg-type]


def _type(event: Event | GenericEvent) -> str:
    return event.type if isinstance(event, GenericEvent) else type(event).__struct_config__.tag  # type: ignore[return-value]


@pytest.fixture
def world(harness: BusHarness, tmp_path: Path) -> World:
    return World(harness, tmp_path)


@asynccontextmanager
async def running(agent: WorkerAgent) -> AsyncIterator[anyio.abc.TaskGroup]:
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            await tg.start(agent.run)
        yield tg
        tg.cancel_scope.cancel()


async def next_bid(bids: AsyncIterator[Message]) -> Bid:
    with anyio.fail_after(5):
        message = await bids.__anext__()
    return decode(message.data, Bid)


# --------------------------------------------------------------------------- registration


async def test_registers_heartbeats_and_deregisters_on_stop(world: World) -> None:
    agent = world.agent()
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            await tg.start(agent.run)
        raw = await world.bus.hget(KEYS.workers, "w1")
        assert raw is not None
        info = decode(raw, WorkerInfo)
        assert (info.model, info.capacity, info.expertise) == (
            "gemini:flash",
            1,
            {"react": 0.9, "auth": 0.4},
        )
        assert await world.bus.hget(KEYS.load, "w1") == b"0"
        first = await world.bus.zscore(KEYS.heartbeats, "w1")
        assert first is not None

        async def beat_again() -> bool:
            score = await world.bus.zscore(KEYS.heartbeats, "w1")
            return score is not None and score > first

        await world.until(beat_again)
        assert len(await world.events("worker.started")) == 1
        await world.control("stop")
    assert await world.bus.hget(KEYS.workers, "w1") is None
    assert await world.bus.zscore(KEYS.heartbeats, "w1") is None
    assert await world.bus.hget(KEYS.load, "w1") is None
    assert len(await world.events("worker.stopped")) == 1


# --------------------------------------------------------------------------- market


async def test_bids_on_announce_once_per_round(world: World) -> None:
    agent = world.agent()
    async with (
        world.bus.subscribe(patterns=[KEYS.bids_pattern]) as sub,
        running(agent),
    ):
        bids = sub.__aiter__()
        announce = world.announce("t1", required_skills=["react"], complexity=0.4)
        await world.bus.publish(MARKET, encode(announce))
        bid = await next_bid(bids)
        expected = bid_score(
            announce,
            expertise=agent.memory.bid_expertise(),  # {"react": 0.9, "auth": 0.4}, explored
            model="gemini:flash",
            recent_files={},
            now_ms=world.clock.time_ms(),
            config=SCORING,
        )
        assert (bid.task_id, bid.round, bid.worker_id) == ("t1", 1, "w1")
        assert bid.score == pytest.approx(expected)
        assert (bid.model, bid.load, bid.capacity) == ("gemini:flash", 0, 1)

        await world.bus.publish(MARKET, encode(announce))  # the same round: no answer
        closed = Announce(task_id="t9", round=1, closes_at_ms=world.clock.time_ms() - 1)
        await world.bus.publish(MARKET, encode(closed))  # already closed: no answer
        wrong_model = world.announce("t2", required_model="gemini:pro")
        await world.bus.publish(MARKET, encode(wrong_model))
        bid = await next_bid(bids)
        assert (bid.task_id, bid.score) == ("t2", 0.0)
        await world.bus.publish(MARKET, encode(world.announce("t1", round_=2)))
        bid = await next_bid(bids)
        assert (bid.task_id, bid.round) == ("t1", 2)
        assert bid.score > 0


async def test_full_worker_refuses(world: World) -> None:
    agent = world.agent()
    async with (
        world.bus.subscribe(patterns=[KEYS.bids_pattern]) as sub,
        running(agent),
    ):
        bids = sub.__aiter__()
        await world.push(Assignment(task_id="t1"))
        await world.wait_event("task.started")
        await world.bus.publish(MARKET, encode(world.announce("t2")))
        bid = await next_bid(bids)
        assert (bid.task_id, bid.score, bid.load) == ("t2", 0.0, 1)
        world.executor.release("t1")
        await world.wait_event("task.completed")
        await world.bus.publish(MARKET, encode(world.announce("t3")))
        assert (await next_bid(bids)).score > 0


async def test_malformed_announce_is_dead_lettered(world: World) -> None:
    agent = world.agent()
    async with (
        world.bus.subscribe(patterns=[KEYS.bids_pattern]) as sub,
        running(agent),
    ):
        await world.bus.publish(MARKET, b"{not json")
        bad = {"type": "announce", "taskId": "t1", "round": 0, "closesAtMs": 1}
        await world.bus.publish(MARKET, json.dumps(bad))
        await world.bus.publish(MARKET, encode(world.announce("t2")))
        bid = await next_bid(sub.__aiter__())
        assert bid.task_id == "t2"
        rejected = await world.wait_event("message.rejected", 2)
    letters = [decode(raw, DeadLetter) for raw in await world.bus.lrange(KEYS.deadletter, 0, -1)]
    assert sorted(letter.raw for letter in letters) == sorted(["{not json", json.dumps(bad)])
    assert all(letter.source == MARKET for letter in letters)
    assert "$.round" in letters[0].error + letters[1].error
    assert len(rejected) == 2


# --------------------------------------------------------------------------- doing the work


async def test_runs_a_task_events_in_order_then_lrem(world: World) -> None:
    agent = world.agent()
    task = Assignment(task_id="t1", required_skills=["react"], files=["src/a.ts"], attempt=2)
    async with running(agent):
        await world.push(task)
        await world.wait_event("task.progress")
        assert await world.bus.llen(KEYS.processing("w1")) == 1
        assert await world.bus.hget(KEYS.load, "w1") in (b"0", b"1")
        world.executor.release("t1")
        await world.wait_event("task.completed")

        async def republished() -> bool:
            raw = await world.bus.hget(KEYS.workers, "w1")
            return raw is not None and decode(raw, WorkerInfo).expertise["react"] > 0.9

        await world.until(republished)
    kinds = [_type(e) for e in await world.events() if getattr(e, "task_id", None) == "t1"]
    assert kinds == ["task.started", "task.progress", "task.completed"]
    started, progress, completed = [e for e in await world.events() if e.task_id == "t1"]
    assert started.attempt == 2  # type: ignore[union-attr]
    assert (progress.token_usage, progress.note) == (42, "thinking")  # type: ignore[union-attr]
    assert completed.result == {"done": "t1"}  # type: ignore[union-attr]
    assert await world.bus.llen(KEYS.processing("w1")) == 0
    saved = json.loads((world.memory_dir / "workers" / "w1.json").read_text("utf-8"))
    assert saved["stats"] == {"completed": 1, "failed": 0}
    assert saved["recentFiles"][0]["path"] == "src/a.ts"


async def test_an_end_says_the_weights_it_bids_from_now_when_it_holds_nothing_else(
    world: World,
) -> None:
    """It learns from an outcome before writing it: the end of its last task in hand says the
    weights its next bid is scored from (`weights`, the task's skills); the end of one while
    it holds another says none (that one will teach it more)."""
    agent = world.agent(capacity=2, expertise={"react": 0.5, "sql": 0.5})
    async with (
        world.bus.subscribe(patterns=[KEYS.bids_pattern]) as sub,
        running(agent),
    ):
        await world.push(Assignment(task_id="t1", required_skills=["react"]))
        await world.push(Assignment(task_id="t2", required_skills=["react", "sql"]))
        await world.until(lambda: _true(world.executor.runs == ["t1", "t2"]))
        world.executor.release("t1")
        (first,) = await world.wait_event("task.completed")
        world.executor.release("t2")
        _, last = await world.wait_event("task.completed", 2)
        announce = world.announce("t3", required_skills=["react", "sql"])
        await world.bus.publish(MARKET, encode(announce))
        bid = await next_bid(sub.__aiter__())
    assert first.task_id == "t1" and first.weights is None  # type: ignore[union-attr]
    assert last.task_id == "t2" and last.weights == bid.weights  # type: ignore[union-attr]
    assert bid.load == 0 and bid.weights is not None
    assert set(bid.weights) == {"react", "sql"} and bid.weights["sql"] > 0.5  # learned


async def test_timeout_fails_the_task(world: World) -> None:
    agent = world.agent()
    async with running(agent):
        await world.push(Assignment(task_id="t1", timeout_s=0.2))
        (failed,) = await world.wait_event("task.failed")
    assert failed.error_key == "executor.timeout"  # type: ignore[union-attr]
    assert await world.bus.llen(KEYS.processing("w1")) == 0
    assert agent.state()["recentErrors"][0]["errorKey"] == "executor.timeout"


async def test_takes_from_the_shared_list_when_idle(world: World) -> None:
    agent = world.agent()
    async with running(agent):
        await world.bus.lpush(KEYS.tasks, encode(Assignment(task_id="fcfs")))
        await world.wait_event("task.started")
        world.executor.release("fcfs")
        await world.wait_event("task.completed")
    assert world.executor.runs == ["fcfs"]


async def test_takes_from_the_shared_list_while_its_own_keeps_it_busy(world: World) -> None:
    """A task that fell back to the shared list is not left there until the worker's own
    list runs dry: a busy worker tries the shared list again once `poll_s` has passed."""
    agent = world.agent()
    for i in range(30):
        await world.push(Assignment(task_id=f"own-{i:02d}"))
    await world.bus.lpush(KEYS.tasks, encode(Assignment(task_id="fcfs")))

    async def shared_ran() -> bool:
        for task_id in world.executor.runs:  # each task ends as soon as it has started
            world.executor.release(task_id)
        return "fcfs" in world.executor.runs

    async with running(agent):
        await world.until(shared_ran)
        left = await world.bus.llen(KEYS.tasks_for("w1"))
    assert left > 0, "the shared task waited until the worker's own list was empty"
    assert world.executor.runs[0].startswith("own-")


async def test_leaves_shared_tasks_that_require_another_model(world: World) -> None:
    agent = world.agent()  # gemini:flash
    pro_only = encode(Assignment(task_id="t-pro", required_model="gemini:pro"))
    await world.bus.lpush(KEYS.tasks, pro_only)  # the oldest: taken first, and put back
    await world.bus.lpush(KEYS.tasks, encode(Assignment(task_id="t-flash")))
    async with running(agent):
        await world.wait_event("task.started")
        world.executor.release("t-flash")
        await world.wait_event("task.completed")
    assert await world.bus.lrange(KEYS.tasks, 0, -1) == [pro_only]
    assert await world.bus.llen(KEYS.processing("w1")) == 0
    assert world.executor.runs == ["t-flash"]


async def test_invalid_queued_task_is_dead_lettered_and_removed(world: World) -> None:
    agent = world.agent()
    async with running(agent):
        await world.bus.lpush(KEYS.tasks_for("w1"), b'{"taskId": "bad id!"}')
        await world.wait_event("message.rejected")

        async def removed() -> bool:
            return await world.bus.llen(KEYS.processing("w1")) == 0

        await world.until(removed)
        (raw,) = await world.bus.lrange(KEYS.deadletter, 0, -1)
        assert decode(raw, DeadLetter).source == KEYS.processing("w1")
        await world.push(Assignment(task_id="t2"))  # and it goes on
        world.executor.release("t2")
        await world.wait_event("task.completed")


async def test_duplicate_delivery_is_not_run_twice(world: World) -> None:
    agent = world.agent(capacity=2)
    task = Assignment(task_id="t1", attempt=1)
    async with running(agent):
        raw = await world.push(task)
        await world.wait_event("task.started")
        await world.bus.lpush(KEYS.tasks_for("w1"), raw)

        async def dropped() -> bool:
            return (
                await world.bus.llen(KEYS.tasks_for("w1")) == 0
                and await world.bus.llen(KEYS.processing("w1")) == 1
            )

        await world.until(dropped)
        world.executor.release("t1")
        await world.wait_event("task.completed")
        await world.push(Assignment(task_id="t1", attempt=2))  # a new attempt does run
        await world.wait_event("task.completed", 2)
    assert world.executor.runs == ["t1", "t1"]
    assert len(await world.events("task.started")) == 2
    assert await world.bus.llen(KEYS.processing("w1")) == 0


async def test_a_model_too_weak_for_the_task_takes_less_of_a_failure_on_its_skills(
    world: World,
) -> None:
    """The worker learns from a failure with its model's adequacy for the task: a hard task
    failed by a small model says less about the worker's skill than one failed by a strong
    model."""

    class Fails:
        async def run(self, task: Assignment, ctx: ExecutionContext) -> Outcome:
            return Failed(error_key="E.x", error="no")

    world.executor = Fails()  # type: ignore[assignment]
    learned = {}
    for worker_id, model in (("w-small", "local:small"), ("w-pro", "gemini:pro")):
        agent = world.agent(id=worker_id, model=model, expertise={"react": 0.9})
        async with running(agent):
            await world.push(
                Assignment(task_id=f"t-{worker_id}", required_skills=["react"], complexity=1.0),
                worker_id,
            )
            await world.until(lambda a=agent: _true(a.memory.failed == 1))
        learned[model] = agent.memory.expertise["react"]
    assert learned["gemini:pro"] < learned["local:small"] < 0.9


# --------------------------------------------------------------------------- control


async def test_pause_resume_and_dump(world: World) -> None:
    agent = world.agent()
    async with (
        world.bus.subscribe(patterns=[KEYS.bids_pattern]) as sub,
        running(agent),
    ):
        bids = sub.__aiter__()
        await world.control("pause")
        await world.until(lambda: _true(agent.paused))
        await world.bus.publish(MARKET, encode(world.announce("t0")))
        assert (await next_bid(bids)).score == 0.0
        await world.push(Assignment(task_id="t1"))
        for _ in range(4):
            await world.h.advance(STEP_S)
        assert await world.events("task.started") == []

        await world.control("dump")
        (state,) = await world.wait_event("worker.state")
        assert isinstance(state, WorkerState)
        assert state.state["state"] == "paused"
        assert state.state["paused"] is True

        await world.control("resume")
        await world.wait_event("task.started")
        await agent.dump()
        dumps = await world.wait_event("worker.state", 2)
        body = dumps[-1].state  # type: ignore[union-attr]
        assert body["state"] == "busy"
        assert [t["taskId"] for t in body["tasks"]] == ["t1"]
        assert body["tasks"][0]["phase"] == "running"
        world.executor.release("t1")
        await world.wait_event("task.completed")


async def test_swarm_pause_holds_new_tasks(world: World) -> None:
    agent = world.agent()
    async with running(agent):
        await world.bus.set(KEYS.paused, b'{"reason": "test"}')
        await world.until(lambda: _true(agent.swarm_paused))
        await world.push(Assignment(task_id="t1"))
        for _ in range(4):
            await world.h.advance(STEP_S)
        assert await world.events("task.started") == []
        await world.bus.delete(KEYS.paused)
        await world.wait_event("task.started")
        world.executor.release("t1")
        await world.wait_event("task.completed")


async def test_a_swarm_pause_lets_its_exempt_task_through(world: World) -> None:
    agent = world.agent(capacity=2)
    async with (
        world.bus.subscribe(patterns=[KEYS.bids_pattern]) as sub,
        running(agent),
    ):
        bids = sub.__aiter__()
        await world.push(Assignment(task_id="t-held"))  # awarded before the pause
        await world.wait_event("task.started")
        world.executor.release("t-held")
        await world.wait_event("task.completed")
        await world.bus.set(KEYS.paused, encode(PauseInfo(reason="operator")))
        await world.until(lambda: _true(agent.swarm_paused))
        # Paused again with t-rca exempt, unknown to the worker: its bid reads the key anew.
        pause = PauseInfo(reason="rca", by="guardian", exempt_task_ids=("t-rca",))
        await world.bus.set(KEYS.paused, encode(pause))
        await world.bus.publish(MARKET, encode(world.announce("t-other")))
        assert (await next_bid(bids)).score == 0.0
        await world.bus.publish(MARKET, encode(world.announce("t-rca")))
        assert (await next_bid(bids)).score > 0.0
        assert agent.pause_info == pause
        await world.push(Assignment(task_id="t-late"))  # not exempt: taken, not started
        await world.push(Assignment(task_id="t-rca"))
        await world.wait_event("task.started", 2)
        world.executor.release("t-rca")
        await world.wait_event("task.completed", 2)
        for _ in range(4):
            await world.h.advance(STEP_S)
        started = [e.task_id for e in await world.events("task.started")]
        assert started == ["t-held", "t-rca"]
        await world.bus.delete(KEYS.paused)
        await world.wait_event("task.started", 3)
        world.executor.release("t-late")
        await world.wait_event("task.completed", 3)
    assert world.executor.runs == ["t-held", "t-rca", "t-late"]


async def test_stop_drains_the_task_in_hand(world: World) -> None:
    agent = world.agent()
    done = anyio.Event()

    async def run_agent(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        await agent.run(task_status=task_status)
        done.set()

    async with (
        world.bus.subscribe(patterns=[KEYS.bids_pattern]) as sub,
        anyio.create_task_group() as tg,
    ):
        with anyio.fail_after(10):
            await tg.start(run_agent)
        await world.push(Assignment(task_id="t1"))
        await world.wait_event("task.started")
        agent.request_stop()
        await world.bus.publish(MARKET, encode(world.announce("t2")))
        assert (await next_bid(sub.__aiter__())).score == 0.0  # still answers, refusing
        await world.push(Assignment(task_id="t3"))
        for _ in range(3):
            await world.h.advance(STEP_S)
        assert not done.is_set()
        world.executor.release("t1")
        with anyio.fail_after(10):
            await done.wait()
    kinds = [_type(e) for e in await world.events()]
    assert kinds.index("task.completed") < kinds.index("worker.stopped")
    assert world.executor.runs == ["t1"]
    assert await world.bus.llen(KEYS.tasks_for("w1")) == 1  # t3 left for the kernel
    assert await world.bus.hget(KEYS.workers, "w1") is None


async def test_corrupt_memory_file_does_not_stop_the_worker(world: World) -> None:
    path = world.memory_dir / "workers" / "w1.json"
    path.parent.mkdir(parents=True)
    path.write_text("{broken", "utf-8")
    agent = world.agent()
    async with running(agent):
        assert agent.state()["recentErrors"][0]["errorKey"] == "memory.format"
        await world.push(Assignment(task_id="t1", required_skills=["react"]))
        world.executor.release("t1")
        await world.wait_event("task.completed")
    assert json.loads(path.read_text("utf-8"))["workerId"] == "w1"


async def _true(value: bool) -> bool:
    return value


# --------------------------------------------------------------------------- inline runtime


async def test_inline_runtime_lifecycle(world: World) -> None:
    from jarvis_kernel.runtime.inline import InlineRuntime

    runtime = InlineRuntime(
        bus=world.bus,
        keys=KEYS,
        clock=world.clock,
        scoring=SCORING,
        liveness=LIVENESS,
        memory_dir=world.memory_dir,
        poll_s=STEP_S,
        default_grace_s=5.0,
        executor_factory=lambda spec: world.executor,
    )
    spec = WorkerConfig(id="w1")
    async with runtime:
        with anyio.fail_after(10):
            await runtime.start(spec)
        assert runtime.workers() == ["w1"]
        assert runtime.status("w1").state == "running"
        assert await world.bus.hget(KEYS.workers, "w1") is not None

        await runtime.signal("w1", signal.SIGUSR1)
        await world.wait_event("worker.state")

        with anyio.fail_after(10):
            await runtime.stop("w1", grace_s=5.0)
        assert runtime.status("w1").exit_code == 0
        assert await world.bus.hget(KEYS.workers, "w1") is None

        with anyio.fail_after(10):
            await runtime.restart("w1")
        status = runtime.status("w1")
        assert (status.state, status.restarts) == ("running", 1)
        assert await world.bus.hget(KEYS.workers, "w1") is not None

        with anyio.fail_after(10):
            await runtime.kill("w1")
        status = runtime.status("w1")
        assert (status.state, status.exit_code) == ("exited", -signal.SIGKILL)
        assert runtime.workers() == []
        # Killed, not drained: it is still registered until the kernel sees it dead.
        assert await world.bus.hget(KEYS.workers, "w1") is not None
        assert len(await world.events("worker.stopped")) == 1

        await runtime.start(WorkerConfig(id="w2"))
    assert runtime.status("w2").state == "exited"  # leaving the runtime stops everyone
    assert await world.bus.hget(KEYS.workers, "w2") is None
    assert runtime.status("nobody").state == "unknown"
