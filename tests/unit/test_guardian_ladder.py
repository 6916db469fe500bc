"""The escalation ladder, on plain times: dump, grace, restart, backoff, intensity, RCA."""

from __future__ import annotations

import msgspec
import pytest

from jarvis_kernel.config import GuardianConfig
from jarvis_kernel.guardian.heuristics import SWARM, Finding, FindingKind
from jarvis_kernel.guardian.ladder import Action, Ladder, LadderBook, TargetState
from jarvis_kernel.protocol import Task, decode, encode

CFG = GuardianConfig(
    dump_grace_s=30.0,
    restart_grace_s=15.0,
    max_restarts=3,
    restart_window_s=60.0,
    backoff_base_s=1.0,
    backoff_max_s=60.0,
    quiet_period_s=300.0,
)


def stall(worker: str = "w1", task: str = "t1") -> Finding:
    return Finding(
        kind="stall",
        target=worker,
        task_id=task,
        reason=f"task {task}: no progress",
        evidence={"rule": "no_progress", "idleS": 300.0},
    )


def dead(worker: str = "w1") -> Finding:
    return Finding(kind="worker_dead", target=worker, reason="no heartbeat", evidence={})


def swarm_spiral() -> Finding:
    return Finding(
        kind="error_spiral",
        target=SWARM,
        reason="3 failures in a row with 'tsc.TS2322'",
        evidence={"errorKey": "tsc.TS2322", "count": 3},
    )


class Run:
    """Feeds one target's findings to the ladder, keeping its state."""

    def __init__(self, cfg: GuardianConfig = CFG, *, managed: bool = True) -> None:
        self.ladder = Ladder(cfg)
        self.state = TargetState()
        self.managed = managed

    def at(self, now_s: float, finding: Finding) -> Action:
        self.state, action = self.ladder.decide(finding, self.state, now_s, managed=self.managed)
        return action


def test_stall_dump_then_grace_then_restart() -> None:
    run = Run()
    first = run.at(0.0, stall())
    assert (first.kind, first.level, first.via) == ("dump", 1, "signal")
    assert first.acts
    waiting = run.at(29.0, stall())
    assert waiting.kind == "wait" and not waiting.acts
    restart = run.at(30.0, stall())
    assert (restart.kind, restart.level, restart.delay_s) == ("restart", 2, 0.0)
    assert restart.take_back_tasks


def test_a_foreign_worker_is_dumped_by_control_command_and_reclaimed() -> None:
    run = Run(managed=False)
    assert run.at(0.0, stall()).via == "control"
    action = run.at(30.0, stall())
    assert action.kind == "reclaim" and action.take_back_tasks and action.level == 2


def test_dead_worker_skips_the_dump() -> None:
    run = Run()
    action = run.at(0.0, dead())
    assert (action.kind, action.level, action.delay_s) == ("restart", 2, 0.0)
    assert action.take_back_tasks
    assert run.at(10.0, dead()).kind == "wait"  # restart grace
    assert run.at(15.0, dead()).kind == "restart"


def test_a_dead_worker_while_dumped_is_restarted_at_once() -> None:
    run = Run()
    assert run.at(0.0, stall()).kind == "dump"
    assert run.at(1.0, dead()).kind == "restart"


def test_backoff_grows_and_is_capped() -> None:
    cfg = msgspec.structs.replace(
        CFG, max_restarts=100, restart_grace_s=0.0, backoff_base_s=1.0, backoff_max_s=4.0
    )
    run = Run(cfg)
    delays = []
    now = 0.0
    for _ in range(6):
        action = run.at(now, dead())
        assert action.kind == "restart"
        delays.append(action.delay_s)
        now += action.delay_s
    assert delays == [0.0, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_more_than_r_restarts_in_t_escalates_to_pause_and_rca() -> None:
    run = Run()
    run.at(0.0, stall())  # dump
    restarts = []
    now = 30.0
    for _ in range(3):
        action = run.at(now, stall())
        assert action.kind == "restart"
        restarts.append(action.delay_s)
        now += action.delay_s + CFG.restart_grace_s
    assert restarts == [0.0, 1.0, 2.0]
    # three restarts (at 30, 46, 63) inside 60 s: the fourth is not made
    action = run.at(now, stall())
    assert (action.kind, action.level) == ("pause_and_rca", 3)
    assert action.rca is not None
    assert action.rca.required_model == "gemini:pro"
    assert "3 restarts in 60s" in action.rca.description
    assert action.rca.payload["findings"][0]["kind"] == "stall"
    assert action.rca.payload["findings"][0]["taskId"] == "t1"
    assert action.rca.payload["findings"][0]["evidence"]["idleS"] == 300.0
    assert action.rca.payload["ladder"]["restartsInWindow"] == 3
    # latched at level 3 until the RCA is done
    assert run.at(now + 1000.0, stall()).kind == "none"


def test_restarts_spread_beyond_the_window_do_not_escalate() -> None:
    cfg = msgspec.structs.replace(CFG, max_restarts=2, restart_window_s=10.0, restart_grace_s=0)
    run = Run(cfg)
    kinds = [run.at(t, dead()).kind for t in (0.0, 20.0, 40.0, 60.0)]
    assert kinds == ["restart"] * 4


def test_zero_max_restarts_escalates_at_once() -> None:
    run = Run(msgspec.structs.replace(CFG, max_restarts=0))
    assert run.at(0.0, dead()).kind == "pause_and_rca"


def test_quiet_period_resets_level_and_backoff() -> None:
    run = Run()
    run.at(0.0, stall())
    assert run.at(30.0, stall()).kind == "restart"
    # it stalls again soon: still on level 2, restarted again with backoff
    again = run.at(100.0, stall())
    assert (again.kind, again.delay_s) == ("restart", 1.0)
    # quiet for the whole period: back to the first rung, no backoff
    assert run.ladder.settle(run.state, 100.0 + 299.0).level == 2
    assert run.ladder.settle(run.state, 100.0 + 300.0) == TargetState()
    assert run.at(400.0, stall()).kind == "dump"
    restart = run.at(430.0, stall())
    assert (restart.kind, restart.delay_s) == ("restart", 0.0)


def test_a_finding_that_clears_during_the_grace_resets_after_quiet_period() -> None:
    run = Run()
    run.at(0.0, stall())  # dump; progress resumes, the finding is gone
    assert run.at(100.0, stall()).kind == "restart"  # came back within the quiet period
    run2 = Run()
    run2.at(0.0, stall())
    assert run2.at(300.0, stall()).kind == "dump"  # came back after it


def test_swarm_spiral_goes_straight_to_level_3() -> None:
    run = Run()
    action = run.at(0.0, swarm_spiral())
    assert (action.kind, action.level, action.target) == ("pause_and_rca", 3, SWARM)
    assert action.rca is not None
    assert action.rca.payload["findings"][0]["evidence"]["errorKey"] == "tsc.TS2322"


def test_per_worker_spiral_and_budget_start_at_restart() -> None:
    ladder = Ladder(CFG)
    restart_first: tuple[FindingKind, ...] = ("error_spiral", "token_budget", "worker_dead")
    dump_first: tuple[FindingKind, ...] = ("stall", "token_spike")
    for kind in restart_first:
        assert ladder.first_level(Finding(kind=kind, target="w1", reason="")) == 2
    for kind in dump_first:
        assert ladder.first_level(Finding(kind=kind, target="w1", reason="")) == 1


def test_rca_request_becomes_a_task() -> None:
    _, action = Ladder(CFG).decide(swarm_spiral(), TargetState(), 0.0, managed=False)
    assert action.rca is not None
    task = action.rca.to_task("rca-1")
    assert isinstance(task, Task)
    assert task.required_model == "gemini:pro" and task.payload["kind"] == "guardian.rca"
    assert decode(encode(task), Task) == task  # valid on the wire


# --------------------------------------------------------------------------- whole rounds


def test_plan_picks_the_most_severe_finding_per_target() -> None:
    ladder = Ladder(CFG)
    book, actions = ladder.plan([stall("w1"), dead("w1"), stall("w2")], LadderBook(), 0.0)
    assert [(a.target, a.kind) for a in actions] == [("w1", "reclaim"), ("w2", "dump")]
    book, actions = ladder.plan([stall("w2")], book, 1.0, managed={"w2"})
    assert [(a.target, a.kind) for a in actions] == [("w2", "wait")]
    assert set(book.targets) == {"w1", "w2"}


def test_plan_settles_quiet_targets_and_drops_fresh_ones() -> None:
    ladder = Ladder(CFG)
    book, _ = ladder.plan([stall("w1")], LadderBook(), 0.0)
    book, actions = ladder.plan([], book, 299.0)
    assert actions == [] and book.targets["w1"].level == 1
    book, _ = ladder.plan([], book, 300.0)
    assert book.targets == {}


def test_one_rca_at_a_time_with_all_evidence() -> None:
    ladder = Ladder(CFG)
    spiral = swarm_spiral()
    other = Finding(kind="error_spiral", target=SWARM, reason="also", evidence={"x": 1})
    book, [action] = ladder.plan([spiral, other], LadderBook(), 0.0)
    assert action.kind == "pause_and_rca" and book.rca_pending
    assert action.rca is not None
    assert [f["reason"] for f in action.rca.payload["findings"]] == [spiral.reason, "also"]
    zero = msgspec.structs.replace(CFG, max_restarts=0)
    ladder0 = Ladder(zero)
    book, [second] = ladder0.plan([dead("w9")], book, 1.0)
    assert second.kind == "none" and second.reason == "swarm already paused for RCA"
    assert book.targets["w9"].level == 3


def test_rca_done_resets_level_3_and_says_resume() -> None:
    ladder = Ladder(CFG)
    book, _ = ladder.plan([swarm_spiral()], LadderBook(), 0.0)
    book, _ = ladder.plan([swarm_spiral()], book, 5000.0)
    assert book.targets[SWARM].level == 3  # quiet periods do not reset a pending RCA
    book, resume = ladder.rca_done(book)
    assert resume is True and not book.rca_pending
    assert book.targets[SWARM].level == 0
    _, resume = Ladder(msgspec.structs.replace(CFG, resume_after_rca=False)).rca_done(book)
    assert resume is False


@pytest.mark.parametrize("streak", [0, 1, 2, 3, 10])
def test_backoff_formula(streak: int) -> None:
    ladder = Ladder(msgspec.structs.replace(CFG, backoff_base_s=2.0, backoff_max_s=10.0))
    expected = 0.0 if streak == 0 else min(10.0, 2.0 * 2 ** (streak - 1))
    assert ladder.backoff_s(streak) == expected
