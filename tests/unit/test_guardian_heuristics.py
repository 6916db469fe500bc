"""The guardian's view and detectors, on plain times (seconds of a fake monotonic clock)."""

from __future__ import annotations

import pytest

from jarvis_kernel.config import GuardianConfig
from jarvis_kernel.guardian.heuristics import (
    SWARM,
    detect_all,
    detect_dead_workers,
    detect_error_spirals,
    detect_stalls,
    detect_token_spikes,
    robust_z,
)
from jarvis_kernel.guardian.view import SwarmState
from jarvis_kernel.protocol import (
    SwarmResumed,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskRequeued,
    TaskStarted,
    WorkerStarted,
    WorkerStopped,
)

CFG = GuardianConfig()


def start(state: SwarmState, task: str, worker: str, at: float, attempt: int = 1) -> None:
    state.apply(TaskStarted(at_ms=0, task_id=task, worker_id=worker, attempt=attempt), at)


def progress(
    state: SwarmState, task: str, worker: str, at: float, tokens: int = 0, attempt: int = 1
) -> None:
    event = TaskProgress(
        at_ms=0, task_id=task, worker_id=worker, token_usage=tokens, attempt=attempt
    )
    state.apply(event, at)


def complete(state: SwarmState, task: str, worker: str, at: float, tokens: int = 0) -> None:
    state.apply(TaskCompleted(at_ms=0, task_id=task, worker_id=worker, token_usage=tokens), at)


def fail(state: SwarmState, task: str, worker: str, key: str, at: float = 0.0) -> None:
    state.apply(TaskFailed(at_ms=0, task_id=task, worker_id=worker, error_key=key), at)


# --------------------------------------------------------------------------- stalls


def test_a_long_but_busy_task_is_not_a_stall() -> None:
    state = SwarmState()
    start(state, "t1", "w1", 0.0)
    for at in range(100, 2001, 100):  # 2000 s running, progress every 100 s
        progress(state, "t1", "w1", float(at), tokens=10)
    assert detect_stalls(state, 2050.0, CFG) == []


def test_no_progress_for_stall_after_s_is_a_stall() -> None:
    state = SwarmState()
    start(state, "t1", "w1", 0.0)
    progress(state, "t1", "w1", 100.0)
    assert detect_stalls(state, 399.0, CFG) == []
    [finding] = detect_stalls(state, 400.0, CFG)
    assert finding.kind == "stall" and finding.target == "w1" and finding.task_id == "t1"
    assert finding.evidence["rule"] == "no_progress"
    assert finding.evidence["idleS"] == 300.0
    assert finding.key == "stall:w1:t1:no_progress"


def test_past_its_own_timeout_is_a_stall_even_when_busy() -> None:
    state = SwarmState()
    state.set_timeout("t1", 60.0)  # known before it starts
    start(state, "t1", "w1", 0.0)
    progress(state, "t1", "w1", 59.0)
    assert detect_stalls(state, 60.0, CFG) == []
    progress(state, "t1", "w1", 61.0)
    [finding] = detect_stalls(state, 61.0, CFG)
    assert finding.evidence["rule"] == "timeout"
    assert finding.evidence["timeoutS"] == 60.0


def test_timeout_set_after_start_applies() -> None:
    state = SwarmState()
    start(state, "t1", "w1", 0.0)
    state.set_timeout("t1", 10.0)
    assert [f.evidence["rule"] for f in detect_stalls(state, 11.0, CFG)] == ["timeout"]


def test_finished_or_requeued_tasks_are_not_judged() -> None:
    state = SwarmState()
    start(state, "t1", "w1", 0.0)
    start(state, "t2", "w1", 0.0)
    complete(state, "t1", "w1", 1.0)
    state.apply(TaskRequeued(at_ms=0, task_id="t2", attempt=2), 2.0)
    assert detect_stalls(state, 10_000.0, CFG) == []
    assert state.workers["w1"].tasks == set()


def test_late_events_of_a_superseded_attempt_are_ignored() -> None:
    state = SwarmState()
    start(state, "t1", "w2", 100.0, attempt=2)
    start(state, "t1", "w1", 101.0, attempt=1)  # late start of attempt 1
    progress(state, "t1", "w1", 500.0, attempt=1)  # does not count as progress of attempt 2
    [finding] = detect_stalls(state, 400.0, CFG)
    assert finding.target == "w2"


def test_progress_seen_first_tracks_the_task_from_then() -> None:
    state = SwarmState()
    progress(state, "t1", "w1", 50.0, tokens=5)  # the guardian started mid-task
    assert state.tasks["t1"].tokens == 5
    assert detect_stalls(state, 349.0, CFG) == []
    assert len(detect_stalls(state, 350.0, CFG)) == 1


def test_a_stopped_worker_drops_its_tasks() -> None:
    state = SwarmState()
    start(state, "t1", "w1", 0.0)
    state.apply(WorkerStopped(at_ms=0, worker_id="w1"), 1.0)
    assert detect_stalls(state, 1000.0, CFG) == []


def test_task_table_is_bounded() -> None:
    state = SwarmState(max_tasks=3)
    for i in range(5):
        start(state, f"t{i}", "w1", float(i))
    assert list(state.tasks) == ["t2", "t3", "t4"]
    assert state.workers["w1"].tasks == {"t2", "t3", "t4"}


# --------------------------------------------------------------------------- dead workers


def test_dead_after_dead_after_s() -> None:
    state = SwarmState()
    start(state, "t1", "w1", 0.0)
    # heartbeats read at wall time 10_000 ms (monotonic 100 s): w1 beat 1 s ago, w2 now
    state.observe_heartbeats({"w1": 9_000, "w2": 10_000}, now_ms=10_000, now_s=100.0)
    assert detect_dead_workers(state, 102.0, CFG) == []  # w1's beat is exactly 3 s old
    [finding] = detect_dead_workers(state, 102.5, CFG)  # 3.5 s; w2's 2.5 s
    assert finding.kind == "worker_dead" and finding.target == "w1"
    assert finding.evidence["heartbeatAgeS"] == 3.5
    assert finding.evidence["tasks"] == ["t1"]
    assert finding.evidence["kind"] == "foreign"
    state.set_kind("w2", "managed")
    assert state.managed_workers() == {"w2"}


def test_dead_after_s_falls_back_to_liveness_setting() -> None:
    state = SwarmState()
    state.observe_heartbeats({"w1": 0}, now_ms=0, now_s=0.0)
    assert detect_dead_workers(state, 5.0, CFG, liveness_dead_after_s=10.0) == []
    cfg = GuardianConfig(dead_after_s=4.0)
    assert len(detect_dead_workers(state, 5.0, cfg, liveness_dead_after_s=10.0)) == 1


def test_a_worker_gone_from_the_zset_left_and_is_not_dead() -> None:
    state = SwarmState()
    state.observe_heartbeats({"w1": 0, "w2": 0}, now_ms=0, now_s=0.0)
    state.observe_heartbeats({"w2": 1000}, now_ms=1000, now_s=1.0)
    assert [f.target for f in detect_dead_workers(state, 10.0, CFG)] == ["w2"]


def test_worker_started_gives_a_fresh_heartbeat() -> None:
    state = SwarmState()
    state.observe_heartbeats({"w1": 0}, now_ms=0, now_s=0.0)
    state.apply(WorkerStarted(at_ms=0, worker_id="w1"), 20.0)
    assert detect_dead_workers(state, 22.0, CFG) == []


# --------------------------------------------------------------------------- error spirals


def test_three_same_keys_across_the_swarm_is_a_spiral() -> None:
    state = SwarmState()
    fail(state, "t1", "w1", "tsc.TS2322")
    fail(state, "t2", "w2", "tsc.TS2322")
    assert detect_error_spirals(state, 0.0, CFG) == []
    fail(state, "t3", "w3", "tsc.TS2322")
    [finding] = detect_error_spirals(state, 0.0, CFG)
    assert finding.target == SWARM
    assert finding.evidence == {
        "errorKey": "tsc.TS2322",
        "count": 3,
        "workers": ["w1", "w2", "w3"],
        "tasks": ["t1", "t2", "t3"],
    }


def test_an_interleaved_different_key_breaks_the_run() -> None:
    state = SwarmState()
    fail(state, "t1", "w1", "a")
    fail(state, "t2", "w2", "a")
    fail(state, "t3", "w3", "b")
    fail(state, "t4", "w1", "a")
    assert detect_error_spirals(state, 0.0, CFG) == []


def test_per_worker_spiral_not_counted_swarm_wide() -> None:
    state = SwarmState()
    for i in range(3):
        fail(state, f"t{i}", "w1", "executor.timeout")
    [finding] = detect_error_spirals(state, 0.0, CFG)
    assert finding.target == "w1" and finding.kind == "error_spiral"
    assert finding.evidence == {"errorKey": "executor.timeout", "count": 3}


def test_per_worker_run_survives_other_workers_failures_but_not_a_completion() -> None:
    state = SwarmState()
    fail(state, "t1", "w1", "a")
    fail(state, "t2", "w2", "b")
    fail(state, "t3", "w1", "a")
    fail(state, "t4", "w1", "a")
    assert [f.target for f in detect_error_spirals(state, 0.0, CFG)] == ["w1"]
    complete(state, "t5", "w1", 1.0)
    assert detect_error_spirals(state, 0.0, CFG) == []


def test_spiral_count_is_configurable_and_resume_or_restart_clears() -> None:
    cfg = GuardianConfig(spiral_count=2)
    state = SwarmState.from_config(cfg)
    fail(state, "t1", "w1", "a")
    fail(state, "t2", "w2", "a")
    assert [f.target for f in detect_error_spirals(state, 0.0, cfg)] == [SWARM]
    state.apply(SwarmResumed(at_ms=0), 1.0)
    assert detect_error_spirals(state, 0.0, cfg) == []
    fail(state, "t3", "w1", "a")
    fail(state, "t4", "w1", "a")
    assert [f.target for f in detect_error_spirals(state, 0.0, cfg)] == ["w1"]
    state.apply(WorkerStarted(at_ms=0, worker_id="w1"), 2.0)
    assert [f.target for f in detect_error_spirals(state, 0.0, cfg)] == []


# --------------------------------------------------------------------------- token spikes


def baseline(state: SwarmState, worker: str, totals: list[int]) -> None:
    for i, total in enumerate(totals):
        complete(state, f"b{worker}{i}", worker, 0.0, tokens=total)


def test_robust_z_is_the_modified_z_score() -> None:
    z, med, mad = robust_z(20.0, [8, 9, 10, 11, 12])
    assert (med, mad) == (10, 1)
    assert z == pytest.approx(0.6745 * 10)
    assert robust_z(10.0, [10, 10, 10])[0] == 0.0
    assert robust_z(11.0, [10, 10, 10])[0] == float("inf")


def test_mad_spike_against_the_workers_own_baseline() -> None:
    state = SwarmState()
    baseline(state, "w1", [10_000, 11_000, 9_000, 10_500, 9_500])
    start(state, "t1", "w1", 0.0)
    progress(state, "t1", "w1", 1.0, tokens=12_000)  # z = 0.6745*2000/500 = 2.7: no
    assert detect_token_spikes(state, 1.0, CFG) == []
    progress(state, "t1", "w1", 2.0, tokens=3_000)  # 15000: z = 6.7
    [finding] = detect_token_spikes(state, 2.0, CFG)
    assert finding.kind == "token_spike" and finding.target == "w1" and finding.task_id == "t1"
    assert finding.evidence["median"] == 10_000 and finding.evidence["mad"] == 500
    assert finding.evidence["z"] == pytest.approx(6.75, abs=0.01)


def test_the_absolute_floor_keeps_small_numbers_quiet() -> None:
    state = SwarmState()
    baseline(state, "w1", [10, 11, 9, 10, 10])
    start(state, "t1", "w1", 0.0)
    progress(state, "t1", "w1", 1.0, tokens=1_500)  # z huge, but only 1490 over the median
    assert detect_token_spikes(state, 1.0, CFG) == []
    progress(state, "t1", "w1", 1.0, tokens=510)  # 2010: 2000 over
    assert len(detect_token_spikes(state, 1.0, CFG)) == 1


def test_too_few_samples_never_spike() -> None:
    state = SwarmState()
    baseline(state, "w1", [100, 100, 100, 100])
    start(state, "t1", "w1", 0.0)
    progress(state, "t1", "w1", 1.0, tokens=1_000_000)
    assert detect_token_spikes(state, 1.0, CFG) == []
    baseline(state, "w1", [100])
    assert len(detect_token_spikes(state, 1.0, CFG)) == 1


def test_completed_total_counts_even_without_progress_events() -> None:
    state = SwarmState()
    start(state, "t1", "w1", 0.0)
    progress(state, "t1", "w1", 1.0, tokens=30)
    complete(state, "t1", "w1", 2.0, tokens=100)
    assert list(state.workers["w1"].token_history) == [100]
    assert state.worker_usage("w1", 2.0) == 100


def test_per_task_budget() -> None:
    cfg = GuardianConfig(task_token_budget=1_000)
    state = SwarmState()
    start(state, "t1", "w1", 0.0)
    progress(state, "t1", "w1", 1.0, tokens=1_000)
    assert detect_token_spikes(state, 1.0, cfg) == []
    progress(state, "t1", "w1", 2.0, tokens=1)
    [finding] = detect_token_spikes(state, 2.0, cfg)
    assert finding.kind == "token_budget" and finding.evidence["rule"] == "task"
    assert finding.key == "token_budget:w1:t1:task"


def test_per_worker_budget_over_its_window() -> None:
    cfg = GuardianConfig(worker_token_budget=5_000, worker_budget_window_s=600.0)
    state = SwarmState.from_config(cfg)
    for i in range(6):  # 1000 tokens a task, one task a minute
        start(state, f"t{i}", "w1", i * 60.0)
        complete(state, f"t{i}", "w1", i * 60.0 + 30, tokens=1_000)
    [finding] = detect_token_spikes(state, 400.0, cfg)
    assert finding.kind == "token_budget" and finding.target == "w1"
    assert finding.evidence["tokens"] == 6_000
    assert finding.evidence["rule"] == "worker"
    # ten minutes later the first tasks have left the window
    assert detect_token_spikes(state, 30.0 + 600.0 + 120.0, cfg) == []
    assert state.worker_usage("w1", 750.0) == 3_000


def test_budgets_are_off_by_default() -> None:
    state = SwarmState()
    start(state, "t1", "w1", 0.0)
    progress(state, "t1", "w1", 1.0, tokens=10**9)
    assert detect_token_spikes(state, 1.0, CFG) == []


def test_detect_all_puts_dead_workers_first() -> None:
    state = SwarmState()
    start(state, "t1", "w1", 0.0)
    state.observe_heartbeats({"w1": 0}, now_ms=0, now_s=0.0)
    kinds = [f.kind for f in detect_all(state, 500.0, CFG)]
    assert kinds == ["worker_dead", "stall"]


def test_history_is_bounded() -> None:
    state = SwarmState(history=5, failure_cap=4)
    baseline(state, "w1", list(range(20)))
    assert list(state.workers["w1"].token_history) == [15, 16, 17, 18, 19]
    for i in range(10):
        fail(state, f"f{i}", "w1", "k")
    assert len(state.failures) == 4 and len(state.workers["w1"].failures) == 4
