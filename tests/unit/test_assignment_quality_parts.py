"""The pure parts of benchmarks/assignment_quality.py: fit, optimum, workload, summary."""

from __future__ import annotations

import pytest

from benchmarks.assignment_quality import (
    SKILLS,
    GroundTruthSim,
    Placement,
    SimWorker,
    fit_ratio,
    greedy_assignment,
    has_every_skill,
    make_workload,
    optimum_assignment,
    summarize,
    true_fit,
)
from jarvis_kernel.config import ScoringConfig
from jarvis_kernel.protocol import Assignment, Task
from jarvis_kernel.worker.executors import SimExecutor

SCORING = ScoringConfig()


def task(skills: list[str], complexity: float, task_id: str = "t") -> Task:
    return Task(task_id=task_id, required_skills=skills, complexity=complexity)


def test_true_fit_is_mean_true_skill_times_adequacy() -> None:
    truth = {"a": 0.8, "b": 0.4}
    # gemini:flash has capability 0.6: able at 0.3, (0.6 / 0.8) ** 2 at 0.8
    assert true_fit(task(["a", "b"], 0.3), truth, "gemini:flash", SCORING) == pytest.approx(0.6)
    assert true_fit(task(["a", "b"], 0.8), truth, "gemini:flash", SCORING) == pytest.approx(
        0.6 * 0.5625
    )
    assert true_fit(task([], 0.1), truth, "local:small", SCORING) == pytest.approx(1.0)
    assert true_fit(task(["c"], 0.1), truth, "gemini:pro", SCORING) == 0.0


def test_has_every_skill_reads_the_truth() -> None:
    truth = {"a": 0.9, "b": 0.3}
    assert has_every_skill(task(["a"], 0.5), truth)
    assert not has_every_skill(task(["a", "b"], 0.5), truth)
    assert has_every_skill(task([], 0.5), truth)


def test_optimum_beats_greedy_on_a_hand_made_case() -> None:
    pytest.importorskip("scipy")
    fit = [[0.9, 0.8, 0.0], [0.85, 0.1, 0.0], [0.5, 0.5, 0.5]]
    assert greedy_assignment(fit) == [0, 1, 2]  # 0.9 + 0.1 + 0.5 = 1.5
    assert optimum_assignment(fit) == [1, 0, 2]  # 0.8 + 0.85 + 0.5 = 2.15


def test_optimum_breaks_ties_of_fit_towards_the_cheaper_slot() -> None:
    pytest.importorskip("scipy")
    assert optimum_assignment([[1.0, 1.0]], [[0.8, 0.2]]) == [1]
    assert optimum_assignment([[1.0, 0.99]], [[0.8, 0.2]]) == [0]


def test_workload_is_seeded_square_and_has_wrong_claims() -> None:
    one, again = make_workload(4, batches=3), make_workload(4, batches=3)
    assert one == again
    k = len(one.slots)
    assert [len(b) for b in one.batches] == [k, k, k]
    assert all(t.max_attempts == 1 for t in one.tasks)
    for skill in SKILLS:  # somebody truly has every skill
        assert any(w.true[skill] >= 0.8 for w in one.workers)
    over = [(w, s) for w in one.workers for s in w.overclaims]
    under = [(w, s) for w in one.workers for s in w.underclaims]
    assert len(over) == 3
    assert len(under) == 1
    assert all(w.declared[s] >= 0.85 and w.true[s] <= 0.25 for w, s in over)
    assert all(w.declared[s] == 0.2 and w.true[s] >= 0.8 for w, s in under)


def test_summarize() -> None:
    pro = SimWorker(id="p", model="gemini:pro", declared={}, true={"a": 0.9})
    small = SimWorker(id="s", model="local:small", declared={}, true={"a": 0.2})
    placements = [
        Placement(task(["a"], 0.1, "t1"), pro, 0.9, 1.0),
        Placement(task(["a"], 0.1, "t2"), small, 0.2, 0.0),
        Placement(task(["a"], 0.9, "t3"), pro, 0.9, 1.0),
    ]
    out = summarize(placements, SCORING)
    assert out["successRate"] == pytest.approx(2 / 3)
    assert out["totalFit"] == pytest.approx(2.0)
    assert out["everySkill"] == pytest.approx(2 / 3)
    assert out["trivialToCostly"] == pytest.approx(0.5)  # t1 of the two trivial ones


def test_fit_ratio_compares_the_same_tasks_and_is_nan_on_none() -> None:
    pro = SimWorker(id="p", model="gemini:pro", declared={}, true={"a": 0.9})
    market = [
        Placement(task(["a"], 0.1, f"t{i}"), pro, fit, 1.0) for i, fit in enumerate([0.5, 0.9])
    ]
    best = [Placement(task(["a"], 0.1, f"t{i}"), pro, 0.9, 0.9) for i in range(2)]
    assert fit_ratio(market, best) == pytest.approx(1.4 / 1.8)
    assert fit_ratio(market[:1], best[:1]) == pytest.approx(0.5 / 0.9)  # the cold start
    assert fit_ratio(market[1:], best[1:]) == pytest.approx(1.0)  # once learned
    assert fit_ratio(market[2:], best[2:]) != fit_ratio(market[2:], best[2:])  # NaN


def test_an_outcome_is_drawn_once_per_seed_task_and_worker() -> None:
    """Common random numbers: the same worker on the same task in the same seed has the
    same outcome whatever happened before; the frequency of success is the true fit."""

    def sim(key: str, fit: float) -> GroundTruthSim:
        return GroundTruthSim(SimExecutor(seed=1, base_success=0.0), lambda _: fit, key)

    tasks = [Assignment(task_id=f"t{i}") for i in range(4000)]
    first, again = sim("1:w0", 0.3), sim("1:w0", 0.3)
    outcomes = [first.succeeds(t) for t in tasks]
    assert [again.succeeds(t) for t in reversed(tasks)] == outcomes[::-1]
    assert sum(outcomes) / len(tasks) == pytest.approx(0.3, abs=0.03)
    other = [sim("1:w1", 0.3).succeeds(t) for t in tasks]
    assert other != outcomes  # another worker draws its own
    # a better fit never turns a success into a failure (one draw, compared with the fit)
    better = [sim("1:w0", 0.6).succeeds(t) for t in tasks]
    assert all(b for b, o in zip(better, outcomes, strict=True) if o)
