"""The simulated executor, on a FakeClock."""

from __future__ import annotations

import anyio
import pytest

from jarvis_kernel.clock import FakeClock
from jarvis_kernel.config import WorkerConfig
from jarvis_kernel.errors import ExecutorError
from jarvis_kernel.protocol import Assignment
from jarvis_kernel.worker.executors import (
    SIM_ERROR_KEYS,
    Completed,
    ExecutionContext,
    Failed,
    Outcome,
    SimExecutor,
    make_executor,
)


def context(clock: FakeClock, fit: float, reports: list[tuple[int, str]]) -> ExecutionContext:
    async def progress(tokens: int, note: str) -> None:
        reports.append((tokens, note))

    return ExecutionContext(worker_id="w1", clock=clock, fit=fit, progress=progress)


async def run_to_end(
    executor: SimExecutor, task: Assignment, ctx: ExecutionContext, clock: FakeClock
) -> tuple[Outcome, float]:
    outcome: list[Outcome] = []
    start = clock.monotonic()

    async def go() -> None:
        outcome.append(await executor.run(task, ctx))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(go)
            while not outcome:
                await clock.wait_for_sleepers()
                await clock.advance(0.1)
    return outcome[0], clock.monotonic() - start


async def test_duration_from_complexity_with_progress_steps() -> None:
    clock = FakeClock()
    reports: list[tuple[int, str]] = []
    executor = SimExecutor(seed=1, base_s=2.0, steps=4)
    task = Assignment(task_id="t1", complexity=0.5)
    outcome, took = await run_to_end(executor, task, context(clock, 1.0, reports), clock)
    assert took == pytest.approx(2.0, abs=0.11)  # base * (0.5 + 0.5)
    assert [note for _, note in reports] == [f"step {i}/4" for i in range(1, 5)]
    assert all(tokens > 0 for tokens, _ in reports)
    assert isinstance(outcome, Completed)
    assert outcome.token_usage == sum(tokens for tokens, _ in reports)


async def test_fixed_duration_and_certain_failure() -> None:
    clock = FakeClock()
    executor = SimExecutor(duration_s=1.0, fail_rate=1.0, seed=3, steps=2)
    task = Assignment(task_id="t1", complexity=0.9)
    outcome, took = await run_to_end(executor, task, context(clock, 1.0, []), clock)
    assert took == pytest.approx(1.0, abs=0.11)
    assert isinstance(outcome, Failed)
    assert outcome.error_key in SIM_ERROR_KEYS


async def test_failures_draw_their_error_key_from_error_keys() -> None:
    clock = FakeClock()

    async def keys_of(executor: SimExecutor) -> list[str]:
        keys = []
        for i in range(100):
            out = await executor.run(Assignment(task_id=f"t{i}"), context(clock, 1.0, []))
            assert isinstance(out, Failed)
            keys.append(out.error_key)
        return keys

    chance = await keys_of(SimExecutor(duration_s=0.0, fail_rate=1.0, seed=5, steps=1))
    assert set(chance) == set(SIM_ERROR_KEYS)  # chance failures do not look systematic
    spec = WorkerConfig(id="w1", duration_s=0.0, fail_rate=1.0, options={"error_keys": ["E.x"]})
    systematic = make_executor(spec)
    assert isinstance(systematic, SimExecutor)
    assert set(await keys_of(systematic)) == {"E.x"}


@pytest.mark.parametrize("bad", ["E.x", [], [""], [3], ["k" * 201]])
def test_bad_error_keys_are_refused_with_the_worker_named(bad: object) -> None:
    spec = WorkerConfig(id="w-bad", options={"error_keys": bad})
    with pytest.raises(ExecutorError, match=r"worker 'w-bad': bad options for 'sim': error_keys"):
        make_executor(spec)


async def test_zero_duration_still_reports_progress() -> None:
    clock = FakeClock()
    reports: list[tuple[int, str]] = []
    executor = SimExecutor(duration_s=0.0, seed=1, steps=2)
    with anyio.fail_after(1):
        outcome = await executor.run(Assignment(task_id="t"), context(clock, 1.0, reports))
    assert isinstance(outcome, Completed)
    assert len(reports) == 2


def test_success_probability_follows_fit_minus_fail_rate() -> None:
    executor = SimExecutor(fail_rate=0.0, base_success=0.6)
    assert executor.success_probability(1.0) == 1.0
    assert executor.success_probability(0.0) == pytest.approx(0.6)
    assert SimExecutor(fail_rate=0.3).success_probability(1.0) == pytest.approx(0.7)
    assert SimExecutor(fail_rate=1.0).success_probability(1.0) == 0.0


async def test_seeded_runs_repeat_and_fit_matters() -> None:
    async def outcomes(seed: int, fit: float) -> list[bool]:
        executor = SimExecutor(duration_s=0.0, seed=seed, steps=1, base_success=0.0)
        clock = FakeClock()
        results = []
        for i in range(200):
            out = await executor.run(Assignment(task_id=f"t{i}"), context(clock, fit, []))
            results.append(isinstance(out, Completed))
        return results

    assert await outcomes(7, 0.5) == await outcomes(7, 0.5)
    assert sum(await outcomes(7, 0.9)) > sum(await outcomes(7, 0.2))


def test_make_executor_registry() -> None:
    sim = make_executor(WorkerConfig(id="w1", duration_s=0.5, fail_rate=0.2))
    assert isinstance(sim, SimExecutor)
    assert sim.duration_s == 0.5
    assert sim.fail_rate == 0.2
    with pytest.raises(ExecutorError, match="'llm'"):
        make_executor(WorkerConfig(id="w1", executor="llm"))
