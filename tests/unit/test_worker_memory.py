"""Worker memory: learning rules and the `.memory/workers/<id>.json` file."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from jarvis_kernel.errors import MemoryFormatError
from jarvis_kernel.worker.memory import (
    LEGACY_POLICY,
    LearningPolicy,
    WorkerMemory,
    learn,
    learn_with_evidence,
    load_memory,
    memory_path,
    most_after_success,
    save_memory,
    touch_files,
)

POLICY = LearningPolicy()


def test_success_moves_up_failure_down_at_most_max_step() -> None:
    up = learn({"react": 0.5}, ["react"], success=True)
    down = learn({"react": 0.5}, ["react"], success=False)
    assert 0.5 < up["react"] <= 0.5 + POLICY.max_step * (POLICY.ceiling - 0.5)
    assert 0.5 - POLICY.max_step * (0.5 - POLICY.floor) <= down["react"] < 0.5


def test_only_the_task_skills_move_and_unknown_start_at_prior() -> None:
    after = learn({"react": 0.5, "css": 0.7}, ["react", "auth"], success=True)
    assert after["css"] == 0.7
    assert POLICY.prior < after["auth"] < POLICY.prior + POLICY.max_step


def test_legacy_policy_is_the_fixed_step_rule() -> None:
    assert LEGACY_POLICY.max_step == 0.1
    weights, evidence = {"a": 0.5, "b": 0.9}, {"a": 30.0}
    for success in (True, False, False, True):
        expected = {
            s: round(w + 0.1 * (0.99 - w) if success else w - 0.1 * (w - 0.05), 6)
            for s, w in weights.items()
        }
        weights, evidence = learn_with_evidence(
            weights, evidence, ["a", "b"], success=success, policy=LEGACY_POLICY
        )
        assert weights == expected


def test_one_skill_is_the_running_mean_of_its_outcomes() -> None:
    """Without a floor on the step, the declared weight counts as `prior_strength` outcomes."""
    policy = LearningPolicy(rate=0.0, prior_strength=2.0, floor=0.0, ceiling=1.0)
    weights, evidence = {"a": 0.9}, dict[str, float]()
    outcomes = [False, False, True, False, True, False]
    for n, success in enumerate(outcomes, start=1):
        weights, evidence = learn_with_evidence(
            weights, evidence, ["a"], success=success, policy=policy
        )
        assert weights["a"] == pytest.approx((2 * 0.9 + sum(outcomes[:n])) / (2 + n), abs=1e-5)
        assert evidence["a"] == n


def test_steps_shrink_with_evidence_down_to_the_rate() -> None:
    steps = []
    weights, evidence = {"a": 0.5}, dict[str, float]()
    for _ in range(60):
        before = weights["a"]
        weights, evidence = learn_with_evidence(weights, evidence, ["a"], success=True)
        steps.append((weights["a"] - before) / (POLICY.ceiling - before))
    assert steps[0] == pytest.approx(POLICY.max_step, abs=1e-4)
    assert all(a >= b - 1e-4 for a, b in itertools.pairwise(steps))
    assert steps[-1] == pytest.approx(POLICY.rate, rel=0.05)
    # of two skills at the same weight, the one seen less moves more
    after, _ = learn_with_evidence({"a": 0.6, "b": 0.6}, {"a": 10.0}, ["a", "b"], success=False)
    assert 0.6 - after["b"] > 0.6 - after["a"] > 0


def test_a_failed_task_mostly_blames_the_weaker_skill() -> None:
    weights = {"strong": 0.9, "weak": 0.3}
    after, evidence = learn_with_evidence(weights, {}, ["strong", "weak"], success=False)
    assert 0.9 - after["strong"] < 0.3 - after["weak"]
    assert evidence["weak"] > evidence["strong"] > 0
    assert sum(evidence.values()) == pytest.approx(1.0)  # one outcome, shared
    after, evidence = learn_with_evidence(weights, {}, ["strong", "weak"], success=True)
    assert evidence["strong"] > evidence["weak"] > 0  # a success, to the skill that explains it
    assert sum(evidence.values()) == pytest.approx(1.0)


def test_a_failure_the_model_explains_blames_the_skills_less() -> None:
    full, _ = learn_with_evidence({"a": 0.8}, {}, ["a"], success=False)
    some, _ = learn_with_evidence({"a": 0.8}, {}, ["a"], success=False, adequacy=0.4)
    none, evidence = learn_with_evidence({"a": 0.8}, {}, ["a"], success=False, adequacy=0.0)
    assert full["a"] < some["a"] < 0.8
    assert none == {"a": 0.8} and evidence == {"a": 0.0}
    up, _ = learn_with_evidence({"a": 0.8}, {}, ["a"], success=True, adequacy=0.4)
    assert up == learn({"a": 0.8}, ["a"], success=True)  # a success says the same


def test_property_monotone_bounded_and_never_beyond_the_largest_step() -> None:
    """What the kernel's bounds rely on (market/bounds.py), for any policy and evidence."""
    rng = random.Random(3)
    grid = [0.0, 0.05, 0.2, 0.5, 0.9, 0.99, 1.0]
    for _ in range(3000):
        policy = rng.choice([POLICY, LEGACY_POLICY, LearningPolicy(rate=0.0, prior_strength=0.0)])
        skills = rng.sample(["a", "b", "c", "d"], rng.randint(0, 3))
        # on 6-decimal weights, which is where learning rounds to
        weights = {s: rng.choice([*grid, round(rng.random(), 6)]) for s in rng.sample("abcd", 2)}
        evidence = {s: rng.choice([0.0, 0.5, 3.0, 100.0]) for s in rng.sample("abcd", 2)}
        success = rng.random() < 0.5
        after, counted = learn_with_evidence(
            weights,
            evidence,
            skills,
            success=success,
            policy=policy,
            adequacy=rng.choice([1.0, 0.5, 0.0]),
        )
        most = most_after_success(weights, skills, policy)
        for skill, w in after.items():
            before = weights.get(skill, policy.prior)
            assert (w >= before) if success else (w <= before), (skill, weights, after)
            assert w <= most.get(skill, before)
            assert counted.get(skill, 0.0) >= evidence.get(skill, 0.0)
            if policy.floor <= before <= policy.ceiling:
                assert policy.floor <= w <= policy.ceiling
        assert set(after) == set(weights) | set(skills)


def test_learning_is_bounded() -> None:
    weights: dict[str, float] = {"a": 0.5}
    for _ in range(1000):
        weights = learn(weights, ["a"], success=True)
    assert POLICY.ceiling - 0.01 < weights["a"] <= POLICY.ceiling
    for _ in range(1000):
        weights = learn(weights, ["a"], success=False)
    assert POLICY.floor <= weights["a"] < POLICY.floor + 0.01


def test_configured_weights_outside_the_bounds_never_move_the_wrong_way() -> None:
    assert learn({"a": 1.0}, ["a"], success=True)["a"] == 1.0
    assert learn({"a": 0.0}, ["a"], success=False)["a"] == 0.0


def test_bid_expertise_reads_the_weights_by_their_evidence() -> None:
    policy = LearningPolicy(optimism=1.0)
    memory = WorkerMemory("w1", "gemini:flash", {"react": 0.5, "css": 0.5}, policy=policy)
    memory.evidence = {"react": 10.0}
    bid = memory.bid_expertise()
    assert memory.expertise == {"react": 0.5, "css": 0.5}  # learning is not touched
    assert 0.5 < bid["react"] < bid["css"]  # the skill seen less is bid higher
    assert bid["css"] == pytest.approx((0.5 * 2.0 + 1.0) / (2.0 + 1.0))
    memory.record(skills=["go"], files=[], success=True, now_ms=1)  # met, not declared
    assert memory.declared == {"react", "css"}
    assert memory.bid_expertise()["go"] == memory.expertise["go"]
    memory.policy = LearningPolicy(optimism=0.0)
    assert memory.bid_expertise() == memory.expertise
    assert LEGACY_POLICY.optimism == 0.0


def test_recent_files_are_bounded_newest_first() -> None:
    recent = touch_files({}, ["a", "b"], now_ms=10, limit=3)
    recent = touch_files(recent, ["c", "d"], now_ms=20, limit=3)
    assert set(recent) == {"c", "d"} | ({"a"} & set(recent)) | ({"b"} & set(recent))
    assert len(recent) == 3
    assert touch_files({"a": 50}, ["a"], now_ms=40, limit=3) == {"a": 50}


def test_record_updates_stats() -> None:
    memory = WorkerMemory("w1", "gemini:flash", {"react": 0.5})
    memory.record(skills=["react"], files=["src/a.ts"], success=True, now_ms=100)
    memory.record(skills=["react"], files=[], success=False, now_ms=200)
    assert (memory.completed, memory.failed) == (1, 1)
    assert memory.recent_files == {"src/a.ts": 100}


async def test_file_round_trip_matches_memory_md(tmp_path: Path) -> None:
    memory = WorkerMemory("w1", "gemini:flash", {"react": 0.9})
    memory.record(skills=["react", "auth"], files=["src/auth.ts"], success=True, now_ms=1234)
    await save_memory(tmp_path, memory)
    path = tmp_path / "workers" / "w1.json"
    assert memory_path(tmp_path, "w1") == path
    data = json.loads(path.read_text("utf-8"))
    assert set(data) == {"workerId", "model", "expertise", "evidence", "recentFiles", "stats"}
    assert data["workerId"] == "w1"
    assert data["model"] == "gemini:flash"
    assert data["recentFiles"] == [{"path": "src/auth.ts", "touchedAtMs": 1234}]
    assert data["stats"] == {"completed": 1, "failed": 0}
    assert data["expertise"]["react"] > 0.9
    assert set(data["evidence"]) == {"react", "auth"}
    assert sum(data["evidence"].values()) == pytest.approx(1.0)

    loaded, error = await load_memory(
        tmp_path, "w1", model="gemini:flash", expertise={"react": 0.1, "css": 0.6}
    )
    assert error is None
    assert loaded.expertise["react"] == data["expertise"]["react"]  # learned wins
    assert loaded.expertise["css"] == 0.6  # configured, never learned: kept
    assert loaded.recent_files == {"src/auth.ts": 1234}
    assert loaded.completed == 1
    assert loaded.evidence == data["evidence"]
    assert loaded.declared == {"react", "css"}  # the configured skills, not "auth"


async def test_a_file_without_evidence_still_loads(tmp_path: Path) -> None:
    """Files written before `evidence` existed: the learned weights, no evidence yet."""
    path = memory_path(tmp_path, "w1")
    path.parent.mkdir(parents=True)
    path.write_text(
        '{"workerId": "w1", "model": "m", "expertise": {"react": 0.7}, '
        '"recentFiles": [], "stats": {"completed": 3, "failed": 1}}'
    )
    loaded, error = await load_memory(tmp_path, "w1", model="m", expertise={"react": 0.2})
    assert error is None
    assert (loaded.expertise, loaded.evidence) == ({"react": 0.7}, {})
    # evidence without a learned weight (the configured one wins) is dropped
    path.write_text('{"workerId": "w1", "expertise": {}, "evidence": {"react": 5}}')
    loaded, error = await load_memory(tmp_path, "w1", model="m", expertise={"react": 0.2})
    assert error is None
    assert (loaded.expertise, loaded.evidence) == ({"react": 0.2}, {})


async def test_no_file_and_no_dir_give_defaults(tmp_path: Path) -> None:
    loaded, error = await load_memory(tmp_path, "w9", model="m", expertise={"a": 0.4})
    assert error is None
    assert loaded.expertise == {"a": 0.4}
    loaded, error = await load_memory(None, "w9", model="m", expertise={"a": 0.4})
    assert error is None
    await save_memory(None, loaded)  # a no-op


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"{not json", None),
        (b'{"workerId": "w1", "expertise": {"react": 7}}', "$.expertise[...]"),
        (b'{"workerId": "w1", "recentFiles": [{"path": "a"}]}', "$.recentFiles[0]"),
        (b'{"workerId": "w1", "evidence": {"react": -1}}', "$.evidence[...]"),
        (b'{"workerId": "other"}', "$.workerId"),
    ],
)
async def test_corrupt_file_is_reported_and_replaced(
    tmp_path: Path, content: bytes, field: str | None
) -> None:
    path = memory_path(tmp_path, "w1")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    loaded, error = await load_memory(tmp_path, "w1", model="m", expertise={"a": 0.4})
    assert isinstance(error, MemoryFormatError)
    assert error.file == str(path)
    assert error.field == field
    assert loaded.expertise == {"a": 0.4}
    await save_memory(tmp_path, loaded)
    assert json.loads(path.read_text("utf-8"))["workerId"] == "w1"
