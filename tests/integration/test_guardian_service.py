"""The guardian service end to end through `Kernel`.

MemoryBus + FakeClock for the ladder's cases (stall, dead worker, error spiral, token
spike, RCA and pause). Time only moves when the test advances the FakeClock; every wait has
a `fail_after` net. The same healing with real processes and containers on a real Redis is
in test_guardian_healing.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from jarvis_kernel.bus.memory import MemoryBus
from jarvis_kernel.clock import FakeClock
from jarvis_kernel.config import (
    Config,
    GuardianConfig,
    LibrarianConfig,
    LivenessConfig,
    MarketConfig,
    WorkerConfig,
)
from jarvis_kernel.control import paused_info
from jarvis_kernel.guardian.incidents import Incident, read_incidents
from jarvis_kernel.kernel import Kernel
from jarvis_kernel.protocol import (
    Announce,
    Event,
    FileReverted,
    GenericEvent,
    GuardianIntervention,
    SwarmPaused,
    SwarmResumed,
    Task,
    TaskAssigned,
    TaskCompleted,
    TaskRequeued,
    decode_event,
)
from tests.support.events import kind_of
from tests.support.workers import ScriptedWorker

GUARDIAN = {
    "enabled": True,
    "tick_s": 0.5,
    "stall_after_s": 10.0,
    "dump_grace_s": 5.0,
    "restart_grace_s": 5.0,
}


MARKET = MarketConfig(window_s=5.0, max_rounds=2, round_backoff_s=0.01, pause_poll_s=30.0)
ROUNDS = msgspec.structs.replace(MARKET, max_rounds=20)
"""For three tasks and two workers: the third waits its turn over the rounds (with two it
could fall back to the shared list, which scripted workers never read)."""


def config(
    memory: Path,
    *,
    workers: list[WorkerConfig] | None = None,
    market: MarketConfig = MARKET,
    **guardian: object,
) -> Config:
    return Config(
        workers=workers or [],
        market=market,
        liveness=LivenessConfig(heartbeat_s=1.0, dead_after_s=3.0),
        guardian=GuardianConfig(**{**GUARDIAN, **guardian}),  # type: ignore[arg-type]
        librarian=LibrarianConfig(enabled=False),
        memory_dir=str(memory),
    )


@dataclass
class Swarm:
    kernel: Kernel
    clock: FakeClock
    tg: anyio.abc.TaskGroup
    memory: Path
    ended: list[Event]
    """The events that ended tasks (completed or dead), in order."""

    def worker(self, worker_id: str, **options: object) -> ScriptedWorker:
        k = self.kernel
        return ScriptedWorker(k.bus, k.keys, self.clock, worker_id, **options)  # type: ignore[arg-type]

    async def start(self, *workers: ScriptedWorker, tg: anyio.abc.TaskGroup | None = None) -> None:
        for worker in workers:
            await (tg or self.tg).start(worker.run)
        await self.kernel.market.refresh_workers()

    async def advance_until(self, done: Callable[[], object], step: float = 0.5) -> None:
        """Advance the FakeClock a step at a time until `done()` (async or not) is true."""
        while True:
            await settle()
            result = done()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return
            await self.clock.advance(step)

    async def settle(self) -> None:
        await settle()

    async def events(self) -> list[Event | GenericEvent]:
        entries = await self.kernel.bus.xrange(self.kernel.keys.events)
        return [decode_event(e.fields["event"]) for e in entries]

    async def interventions(self) -> list[GuardianIntervention]:
        return [e for e in await self.events() if isinstance(e, GuardianIntervention)]

    def incidents(self) -> list[Incident]:
        incidents, errors = read_incidents(self.memory / "incidents.jsonl")
        assert errors == []
        return incidents


async def settle() -> None:
    """Let every task run until it blocks, including those waiting on a worker thread
    (the incident log is written through one): fake time must not pass under them."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    while True:
        await anyio.wait_all_tasks_blocked()
        if not limiter.borrowed_tokens:
            return
        await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def open_swarm(
    tmp_path: Path,
    *,
    workers: list[WorkerConfig] | None = None,
    market: MarketConfig = MARKET,
    **guardian: object,
) -> AsyncIterator[Swarm]:
    """A kernel (guardian on) on MemoryBus + FakeClock, and a task group for workers.

    `workers` are the kernel's own (inline `WorkerAgent`s); tests add scripted ones.
    """
    clock = FakeClock()
    bus = MemoryBus(clock=clock)
    memory = tmp_path / ".memory"
    kernel = Kernel(
        config(memory, workers=workers, market=market, **guardian), bus=bus, clock=clock
    )
    try:
        with anyio.fail_after(20):
            async with kernel, anyio.create_task_group() as tg:
                swarm = Swarm(kernel, clock, tg, memory, [])
                kernel.market.add_listener(swarm.ended.append)
                yield swarm
                tg.cancel_scope.cancel()
    finally:
        await bus.aclose()


def ordinary(announce: Announce) -> float | None:
    """Bid on ordinary tasks only (never on the gemini:pro RCA)."""
    return None if announce.required_model else 0.8


def first_round_only(score: float) -> Callable[[Announce], float | None]:
    """Bid on a task's first round only (a worker that will not take it back again)."""
    return lambda announce: score if announce.round == 1 else None


async def test_stalled_foreign_worker_is_dumped_then_reclaimed(tmp_path: Path) -> None:
    async with open_swarm(tmp_path) as swarm:
        await _stalled_foreign_worker_is_dumped_then_reclaimed(swarm)


async def _stalled_foreign_worker_is_dumped_then_reclaimed(swarm: Swarm) -> None:
    stuck = swarm.worker("w-stuck", score=first_round_only(0.9))
    stuck.hold = anyio.Event()  # starts its task and never progresses
    rescue = swarm.worker("w-rescue", score=0.5)
    await swarm.start(stuck, rescue)
    await swarm.kernel.submit(Task(task_id="t-stall"))
    await swarm.advance_until(lambda: stuck.ran)
    await swarm.advance_until(lambda: stuck.controls)
    assert stuck.controls == ["dump"]
    assert swarm.clock.monotonic() == 10.0  # stall_after_s
    await swarm.advance_until(lambda: swarm.ended)
    assert swarm.clock.monotonic() >= 15.0  # + dump_grace_s
    (ended,) = swarm.ended
    assert isinstance(ended, TaskCompleted)
    assert (ended.worker_id, ended.attempt) == ("w-rescue", 2)
    requeued = [e for e in await swarm.events() if isinstance(e, TaskRequeued)]
    assert [(e.task_id, e.attempt) for e in requeued] == [("t-stall", 2)]
    actions = [(i.level, i.action, i.worker_id) for i in await swarm.interventions()]
    assert actions == [(1, "dump", "w-stuck"), (2, "reclaim", "w-stuck")]
    incidents = swarm.incidents()
    assert [(i.kind, i.action, i.target) for i in incidents] == [
        ("stall", "dump", "w-stuck"),
        ("stall", "reclaim", "w-stuck"),
    ]
    assert incidents[1].outcome.startswith("1 task(s) taken back")
    assert incidents[1].evidence["taskId"] == "t-stall"
    ids = {i.incident_id for i in await swarm.interventions()}
    assert ids == {i.id for i in incidents}


async def test_dead_worker_tasks_are_reclaimed_once(tmp_path: Path) -> None:
    async with open_swarm(tmp_path) as swarm:
        await _dead_worker_tasks_are_reclaimed_once(swarm)


async def _dead_worker_tasks_are_reclaimed_once(swarm: Swarm) -> None:
    dying = swarm.worker("w-dying", score=first_round_only(0.9))
    dying.hold = anyio.Event()
    rescue = swarm.worker("w-rescue", score=0.5)
    async with anyio.create_task_group() as crash:
        await swarm.start(dying, rescue, tg=crash)
        await swarm.kernel.submit(Task(task_id="t-orphan"))
        await swarm.advance_until(lambda: dying.ran)
        crash.cancel_scope.cancel()  # the worker dies: no more heartbeats, no drain
    await swarm.start(rescue)
    await swarm.advance_until(lambda: swarm.ended)
    (ended,) = swarm.ended
    assert isinstance(ended, TaskCompleted)
    assert (ended.task_id, ended.worker_id, ended.attempt) == ("t-orphan", "w-rescue", 2)
    for _ in range(60):  # long after: the dead worker is not reclaimed again
        await swarm.clock.advance(0.5)
        await settle()
    dead = [i for i in swarm.incidents() if i.kind == "worker_dead"]
    assert [(i.action, i.target, i.level) for i in dead] == [("reclaim", "w-dying", 2)]
    actions = [(i.action, i.worker_id) for i in await swarm.interventions()]
    assert actions == [("reclaim", "w-dying")]


async def test_error_spiral_pauses_swarm_until_rca_completes(tmp_path: Path) -> None:
    async with open_swarm(tmp_path, market=ROUNDS) as swarm:
        await _error_spiral_pauses_swarm_until_rca_completes(swarm)


async def _error_spiral_pauses_swarm_until_rca_completes(swarm: Swarm) -> None:
    failers = [swarm.worker(f"w-fail{i}", score=ordinary, fail_with="E.same") for i in (1, 2)]
    pro = swarm.worker(
        "w-pro",
        model="gemini:pro",
        score=lambda a: 0.9 if a.required_model == "gemini:pro" else None,
    )
    pro.hold = anyio.Event()  # the analysis takes a while
    await swarm.start(*failers, pro)
    kernel, guardian = swarm.kernel, swarm.kernel.guardian
    assert guardian is not None
    for i in range(3):
        await kernel.submit(Task(task_id=f"t-{i}", max_attempts=9))
    await swarm.advance_until(lambda: kernel.market.paused and pro.ran)
    rca_id = guardian.rca_task_id
    assert rca_id is not None and [a.task_id for a in pro.ran] == [rca_id]
    rca_announce = next(a for a in pro.announces if a.task_id == rca_id)
    assert rca_announce.required_model == "gemini:pro"
    for failer in failers:
        failer.fail_with = None  # the fix the analysis found
    assert swarm.ended == []
    pro.hold.set()
    await swarm.advance_until(lambda: not kernel.market.paused)
    await swarm.advance_until(lambda: len(swarm.ended) >= 4)
    assert swarm.ended[0].task_id == rca_id  # ordinary work waited for the resume
    assert all(isinstance(e, TaskCompleted) for e in swarm.ended)
    events = await swarm.events()
    paused = [e for e in events if isinstance(e, SwarmPaused)]
    resumed = [e for e in events if isinstance(e, SwarmResumed)]
    assert len(paused) == 1 and "E.same" in paused[0].reason and len(resumed) == 1
    assert await kernel.bus.get(kernel.keys.paused) is None
    awarded = [e for e in events if isinstance(e, TaskAssigned) and e.task_id == rca_id]
    assert [e.worker_id for e in awarded] == ["w-pro"]
    levels = [(i.level, i.action) for i in await swarm.interventions()]
    assert (3, "pause_and_rca") in levels
    spiral = [i for i in swarm.incidents() if i.action == "pause_and_rca"]
    assert len(spiral) == 1 and spiral[0].kind == "error_spiral" and spiral[0].target == "swarm"
    assert rca_id in spiral[0].outcome


async def test_a_pause_whose_rca_never_ends_is_resumed_after_rca_timeout(tmp_path: Path) -> None:
    async with open_swarm(tmp_path, rca_timeout_s=60.0) as swarm:
        failers = [swarm.worker(f"w-f{i}", score=ordinary, fail_with="E.same") for i in (1, 2)]
        pro = swarm.worker("w-pro", model="gemini:pro", score=rca_only)
        pro.hold = anyio.Event()  # the analysis hangs, for ever
        await swarm.start(*failers, pro)
        kernel = swarm.kernel
        for i in range(3):
            await kernel.submit(Task(task_id=f"t-{i}", max_attempts=9))
        await swarm.advance_until(lambda: kernel.market.paused)
        paused_at = swarm.clock.monotonic()
        for failer in failers:
            failer.fail_with = None
        await swarm.advance_until(lambda: not kernel.market.paused)
        assert swarm.clock.monotonic() - paused_at >= 60.0
        (timeout,) = [i for i in swarm.incidents() if i.kind == "rca_timeout"]
        assert (timeout.action, timeout.outcome) == ("resume", "swarm resumed")
        assert await kernel.bus.get(kernel.keys.paused) is None
        assert [a.task_id for a in pro.ran] == [timeout.evidence["rcaTaskId"]]


async def test_no_pause_when_no_live_worker_can_run_the_rca(tmp_path: Path) -> None:
    async with open_swarm(tmp_path) as swarm:
        failers = [swarm.worker(f"w-f{i}", score=ordinary, fail_with="E.same") for i in (1, 2)]
        await swarm.start(*failers)  # nobody runs gemini:pro
        kernel = swarm.kernel
        for i in range(3):
            await kernel.submit(Task(task_id=f"t-{i}", max_attempts=1))
        await swarm.advance_until(lambda: len(swarm.ended) == 3)
        await swarm.advance_until(lambda: [i for i in swarm.incidents() if i.level == 3])
        (incident,) = [i for i in swarm.incidents() if i.level == 3]
        assert (incident.kind, incident.target) == ("error_spiral", "swarm")
        assert incident.outcome == "not paused: no live worker has model gemini:pro to analyse it"
        assert not kernel.market.paused and await kernel.bus.get(kernel.keys.paused) is None
        assert kernel.guardian is not None and kernel.guardian.rca_task_id is None
        await kernel.submit(Task(task_id="t-after"))  # the swarm still works
        for failer in failers:
            failer.fail_with = None
        await swarm.advance_until(lambda: len(swarm.ended) == 4)
        assert isinstance(swarm.ended[-1], TaskCompleted)
        for _ in range(10):  # ticks later: said once, not at every tick
            await swarm.clock.advance(GUARDIAN["tick_s"])
            await settle()
        assert len([i for i in swarm.incidents() if i.level == 3]) == 1


def rca_only(announce: Announce) -> float | None:
    return 0.9 if announce.required_model == "gemini:pro" else None


async def test_real_workers_run_the_rca_while_the_swarm_is_paused(tmp_path: Path) -> None:
    """The kernel's own WorkerAgents: a pause exempts the RCA task, and only it."""
    flash = {"model": "gemini:flash", "expertise": {"go": 0.9}, "fail_rate": 1.0}
    workers = [
        WorkerConfig(id=f"bad{i}", duration_s=1.0, options={"error_keys": ["E.build"]}, **flash)
        for i in (1, 2)
    ] + [WorkerConfig(id="pro", model="gemini:pro", duration_s=2.0, options={"seed": 1})]
    async with open_swarm(tmp_path, workers=workers) as swarm:
        kernel, guardian = swarm.kernel, swarm.kernel.guardian
        assert guardian is not None
        await kernel.market.refresh_workers()
        for i in range(3):
            task = Task(task_id=f"t-{i}", required_skills=["go"], required_model="gemini:flash")
            await kernel.submit(task)
        await swarm.advance_until(lambda: kernel.market.paused)
        rca_id = guardian.rca_task_id
        assert rca_id is not None
        info = await paused_info(kernel.bus, kernel.keys)
        assert info is not None and info.exempt_task_ids == (rca_id,) and info.by == "guardian"
        held = Task(task_id="t-held", required_skills=["go"], required_model="gemini:flash")
        await kernel.submit(held)  # submitted while paused: waits
        await swarm.advance_until(lambda: not kernel.market.paused)
        await swarm.advance_until(lambda: any(e.task_id == "t-held" for e in swarm.ended))
        events = await swarm.events()
    order = [(kind_of(e), getattr(e, "task_id", None)) for e in events]
    paused_at = order.index(("swarm.paused", None))
    resumed_at = order.index(("swarm.resumed", None))
    rca = [k for k, w in order[paused_at:resumed_at] if w == rca_id and k != "task.progress"]
    assert rca == [
        "task.submitted",
        "task.announced",
        "task.assigned",
        "task.started",
        "task.completed",
    ]
    assigned = next(e for e in events if isinstance(e, TaskAssigned) and e.task_id == rca_id)
    assert assigned.worker_id == "pro"
    # nothing but the RCA was announced or started while paused
    during = [
        (k, w) for k, w in order[paused_at:resumed_at] if k in ("task.announced", "task.started")
    ]
    assert {w for _, w in during} == {rca_id}
    assert order.index(("task.started", "t-held")) > resumed_at


async def test_token_spike_asks_for_a_dump(tmp_path: Path) -> None:
    async with open_swarm(tmp_path) as swarm:
        await _token_spike_asks_for_a_dump(swarm)


async def _token_spike_asks_for_a_dump(swarm: Swarm) -> None:
    spender = swarm.worker(
        "w-spender",
        progress_tokens=lambda a: 50_000 if a.task_id == "t-big" else 100,
        token_usage=100,
    )
    await swarm.start(spender)
    kernel = swarm.kernel
    baseline = [Task(task_id=f"t-{i}") for i in range(5)]
    for task in baseline:
        await kernel.submit(task)
    await swarm.advance_until(lambda: len(swarm.ended) >= 5)
    spender.hold = anyio.Event()
    await kernel.submit(Task(task_id="t-big"))
    await swarm.advance_until(lambda: spender.controls)
    assert spender.controls == ["dump"]
    assert swarm.clock.monotonic() < GUARDIAN["stall_after_s"] * 2  # not a stall
    (incident,) = swarm.incidents()
    assert (incident.kind, incident.action, incident.level) == ("token_spike", "dump", 1)
    assert incident.evidence["tokens"] == 50_000 and incident.evidence["median"] == 100
    (event,) = await swarm.interventions()
    assert (event.action, event.task_id, event.incident_id) == ("dump", "t-big", incident.id)
    spender.hold.set()


async def test_workspace_still_broken_after_revert_pauses_for_rca(tmp_path: Path) -> None:
    async with open_swarm(tmp_path) as swarm:
        await _workspace_still_broken_after_revert_pauses_for_rca(swarm)


async def _workspace_still_broken_after_revert_pauses_for_rca(swarm: Swarm) -> None:
    kernel, guardian = swarm.kernel, swarm.kernel.guardian
    assert guardian is not None
    pro = swarm.worker(
        "w-pro", model="gemini:pro", score=lambda a: 0.9 if a.required_model else 0.5
    )
    pro.hold = anyio.Event()
    await swarm.start(pro)
    record = {  # what WorkspaceWatcher hands to on_incident (it logged the revert itself)
        "id": "inc-1-abc",
        "kind": "build_broken",
        "target": "/ws",
        "evidence": {"buildOutputTail": "SyntaxError: a.py", "afterOutputTail": "still bad"},
        "outcome": "still_broken_escalated",
        "reverted": ["a.py"],
        "quarantined": ["a.py", "new.py"],
        "quarantineDir": "/mem/quarantine/inc-1-abc",
    }
    await guardian.on_workspace_incident(record)
    rca_id = guardian.rca_task_id
    assert kernel.market.paused and rca_id is not None
    await kernel.submit(Task(task_id="t-ordinary"))  # waits for the resume
    await swarm.advance_until(lambda: pro.ran)
    pro.hold.set()
    await swarm.advance_until(lambda: swarm.ended)
    assert swarm.ended[0].task_id == rca_id  # auctioned while paused
    await swarm.advance_until(lambda: len(swarm.ended) == 2)
    assert swarm.ended[1].task_id == "t-ordinary"  # after the resume
    assert await kernel.bus.get(kernel.keys.paused) is None
    events = await swarm.events()
    reverted = [(e.path, e.quarantine_path) for e in events if isinstance(e, FileReverted)]
    assert reverted == [
        ("a.py", "/mem/quarantine/inc-1-abc/a.py"),
        ("new.py", "/mem/quarantine/inc-1-abc/new.py"),
    ]
    levels = [(e.level, e.action) for e in await swarm.interventions()]
    assert levels == [(2, "revert"), (3, "pause_and_rca")]
    (incident,) = swarm.incidents()
    assert (incident.kind, incident.level, incident.action) == ("build_broken", 3, "pause_and_rca")
    assert incident.evidence["buildOutputTail"] == "SyntaxError: a.py"


async def test_a_restarted_kernel_picks_up_the_rca_of_the_pause_it_finds(tmp_path: Path) -> None:
    """The pause is the record of the RCA in flight: a new guardian waits for that task."""
    clock = FakeClock()
    bus = MemoryBus(clock=clock)
    memory = tmp_path / ".memory"
    ended: list[Event] = []
    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as workers:
                first = Kernel(config(memory, market=ROUNDS), bus=bus, clock=clock)
                async with first:
                    swarm = Swarm(first, clock, workers, memory, ended)
                    failers = [
                        swarm.worker(f"w-f{i}", score=ordinary, fail_with="E.same") for i in (1, 2)
                    ]
                    pro = swarm.worker("w-pro", model="gemini:pro", score=rca_only)
                    pro.hold = anyio.Event()
                    await swarm.start(*failers, pro)
                    for i in range(3):
                        await first.submit(Task(task_id=f"t-{i}", max_attempts=9))
                    await swarm.advance_until(lambda: pro.ran)
                    assert first.guardian is not None
                    rca_id = first.guardian.rca_task_id
                # the first kernel is gone; the swarm stays paused, the RCA in pro's hands
                second = Kernel(config(memory, market=ROUNDS), bus=bus, clock=clock)
                async with second:
                    second.market.add_listener(ended.append)
                    assert second.guardian is not None
                    assert second.guardian.rca_task_id == rca_id is not None
                    assert second.market.paused
                    for failer in failers:
                        failer.fail_with = None
                    pro.hold.set()
                    swarm = Swarm(second, clock, workers, memory, ended)
                    await swarm.advance_until(lambda: not second.market.paused)
                    await swarm.advance_until(lambda: len(ended) >= 4)
                    events = await swarm.events()
                workers.cancel_scope.cancel()
    finally:
        await bus.aclose()
    assert ended[0].task_id == rca_id
    assert all(isinstance(e, TaskCompleted) for e in ended)
    resumed = [e for e in events if isinstance(e, SwarmResumed)]
    assert len(resumed) == 1 and rca_id in resumed[0].reason


async def test_an_exempt_task_waits_for_its_worker_rather_than_falling_back(
    tmp_path: Path,
) -> None:
    """While paused nobody takes from the shared list: the RCA must not end up there when
    the only worker that may run it is busy for longer than the rounds last."""
    async with open_swarm(tmp_path) as swarm:
        pro = swarm.worker("w-pro", model="gemini:pro", score=0.9)
        pro.hold = anyio.Event()
        flash = swarm.worker("w-flash", score=ordinary)  # free, silent on gemini:pro tasks
        await swarm.start(pro)
        kernel = swarm.kernel
        await kernel.submit(Task(task_id="t-long", required_model="gemini:pro"))
        await swarm.advance_until(lambda: pro.ran)  # busy: not eligible for a while
        await swarm.start(flash)  # room in the swarm: the RCA is auctioned, in vain
        await kernel.pause("rca", by="guardian", exempt=["t-rca"])
        await kernel.submit(Task(task_id="t-rca", required_model="gemini:pro"))
        for _ in range(60):  # 30 s: the rounds (two 5 s windows) three times over
            await swarm.clock.advance(0.5)
            await settle()
        announced = [a for a in flash.announces if a.task_id == "t-rca"]
        assert len(announced) >= 3  # auctioned again after its rounds, not sent to the shared list
        assert [a.task_id for a in pro.ran] == ["t-long"] and flash.ran == []
        assert await kernel.bus.llen(kernel.keys.tasks) == 0  # no fallback
        pro.hold.set()
        await swarm.advance_until(lambda: len(pro.ran) == 2)
        assert pro.ran[1].task_id == "t-rca"
        events = await swarm.events()
    assert not [e for e in events if kind_of(e) == "task.fallback"]
