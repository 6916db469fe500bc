"""The bid score (market/scoring.py): its documented properties."""

from __future__ import annotations

import itertools

import pytest

from jarvis_kernel.config import ModelSpec, ScoringConfig
from jarvis_kernel.market.scoring import (
    NEUTRAL,
    bid_score,
    capability_fit,
    context_score,
    expertise_match,
    model_spec,
    optimistic_expertise,
    task_fit,
)
from jarvis_kernel.protocol import Announce, Task

NOW_MS = 1_800_000_000_000
CONFIG = ScoringConfig()


def announce(**fields: object) -> Announce:
    base: dict[str, object] = {"task_id": "t-1", "round": 1, "closes_at_ms": NOW_MS + 500}
    base.update(fields)
    return Announce(**base)  # type: ignore[arg-type]


def score(
    task: Announce | Task,
    *,
    expertise: dict[str, float] | None = None,
    model: str = "gemini:flash",
    recent: dict[str, int] | None = None,
    config: ScoringConfig = CONFIG,
) -> float:
    return bid_score(
        task,
        expertise=expertise or {},
        model=model,
        recent_files=recent or {},
        now_ms=NOW_MS,
        config=config,
    )


def test_required_model_mismatch_is_a_refusal() -> None:
    task = announce(required_skills=["react"], required_model="gemini:pro")
    assert score(task, expertise={"react": 1.0}, model="gemini:flash") == 0.0
    assert score(task, expertise={"react": 1.0}, model="gemini:pro") > 0.0


def test_more_expertise_on_required_skills_scores_higher() -> None:
    task = announce(required_skills=["react", "auth"], complexity=0.4)
    low = score(task, expertise={"react": 0.2, "auth": 0.2})
    mid = score(task, expertise={"react": 0.9, "auth": 0.2})
    high = score(task, expertise={"react": 0.9, "auth": 0.9})
    unrelated = score(task, expertise={"python": 1.0})
    assert unrelated < low < mid < high


def test_expertise_match_parts() -> None:
    assert expertise_match([], {"react": 0.9}) == NEUTRAL
    assert expertise_match(["react", "react"], {"react": 0.8}) == pytest.approx(0.8)
    assert expertise_match(["react", "auth"], {"react": 0.8}) == pytest.approx(0.4)


def test_no_required_skill_is_neutral_not_zero() -> None:
    assert score(announce(required_skills=[])) > 0.3


def test_weak_model_on_hard_task_scores_low() -> None:
    hard = announce(required_skills=["react"], complexity=0.9)
    expert_but_weak = score(hard, expertise={"react": 1.0}, model="local:small")
    middling_but_able = score(hard, expertise={"react": 0.5}, model="gemini:pro")
    assert expert_but_weak < 0.2
    assert expert_but_weak < middling_but_able
    easy = announce(required_skills=["react"], complexity=0.2)
    assert score(easy, expertise={"react": 1.0}, model="local:small") > 0.6


def test_costly_strong_model_on_trivial_task_a_little_lower() -> None:
    trivial = announce(required_skills=["react"], complexity=0.05)
    cheap = score(trivial, expertise={"react": 0.8}, model="gemini:flash")
    costly = score(trivial, expertise={"react": 0.8}, model="gemini:pro")
    assert costly < cheap
    assert cheap - costly < 0.05  # a little
    hard = announce(required_skills=["react"], complexity=0.9)
    assert score(hard, expertise={"react": 0.8}, model="gemini:pro") > score(
        hard, expertise={"react": 0.8}, model="gemini:flash"
    )


def test_capability_fit_monotonic_in_capability_and_cost() -> None:
    for complexity in (0.0, 0.3, 0.7, 1.0):
        fits = [
            capability_fit(complexity, ModelSpec(capability=c / 10, cost=0.5), cost_penalty=0.15)
            for c in range(11)
        ]
        assert fits == sorted(fits)
        costs = [
            capability_fit(complexity, ModelSpec(capability=0.8, cost=c / 10), cost_penalty=0.15)
            for c in range(11)
        ]
        assert costs == sorted(costs, reverse=True)


def test_context_decays_with_age() -> None:
    half = CONFIG.context_half_life_s
    files = ["src/auth.ts"]
    fresh = context_score(files, {"src/auth.ts": NOW_MS}, now_ms=NOW_MS, half_life_s=half)
    old = context_score(
        files, {"src/auth.ts": NOW_MS - int(half * 1000)}, now_ms=NOW_MS, half_life_s=half
    )
    assert fresh == pytest.approx(1.0)
    assert old == pytest.approx(0.5)
    assert context_score(files, {}, now_ms=NOW_MS, half_life_s=half) == 0.0
    assert context_score([], {"src/auth.ts": NOW_MS}, now_ms=NOW_MS, half_life_s=half) == 0.0
    task = announce(required_skills=["react"], files=files)
    recent = score(task, expertise={"react": 0.5}, recent={"src/auth.ts": NOW_MS - 1000})
    stale = score(
        task, expertise={"react": 0.5}, recent={"src/auth.ts": NOW_MS - 3 * int(half * 1000)}
    )
    none = score(task, expertise={"react": 0.5})
    assert recent > stale > none


def test_unknown_model_uses_configured_capability() -> None:
    spec = model_spec("acme:mystery", ScoringConfig(unknown_model_capability=0.2))
    assert spec.capability == 0.2
    hard = announce(complexity=0.9)
    weak = score(hard, model="acme:mystery", config=ScoringConfig(unknown_model_capability=0.2))
    able = score(hard, model="acme:mystery", config=ScoringConfig(unknown_model_capability=0.95))
    assert weak < able


@pytest.mark.parametrize("complexity", [0.0, 0.01, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("model", [*CONFIG.models, "unknown"])
def test_bounds_and_determinism(complexity: float, model: str) -> None:
    task = announce(required_skills=["a", "b"], complexity=complexity, files=["x", "y"])
    for expertise in ({}, {"a": 1.0, "b": 1.0}, {"a": 0.0}):
        for recent in ({}, {"x": NOW_MS, "y": NOW_MS + 5000}):
            first = score(task, expertise=expertise, model=model, recent=recent)
            assert 0.0 <= first <= 1.0
            assert first == score(task, expertise=expertise, model=model, recent=recent)


def test_zero_weights_and_task_shapes() -> None:
    flat = ScoringConfig(expertise_weight=0, context_weight=0, capability_weight=0)
    assert score(announce(), config=flat) == pytest.approx(NEUTRAL)
    as_task = Task(task_id="t-1", required_skills=["react"], complexity=0.3)
    assert score(as_task, expertise={"react": 0.7}) == score(
        announce(required_skills=["react"], complexity=0.3), expertise={"react": 0.7}
    )


def test_task_fit() -> None:
    assert task_fit(announce(complexity=0.1), expertise={}, model="gemini:pro", config=CONFIG) == 1
    hard = announce(required_skills=["react"], complexity=0.9)
    good = task_fit(hard, expertise={"react": 0.9}, model="gemini:pro", config=CONFIG)
    weak = task_fit(hard, expertise={"react": 0.9}, model="local:small", config=CONFIG)
    assert weak < good == pytest.approx(0.9)


def optimistic(weight: float, evidence: float, optimism: float = 1.0) -> float:
    read = optimistic_expertise(
        {"react": weight}, {"react": evidence}, optimism=optimism, prior_strength=2.0
    )
    return read["react"]


def test_optimistic_expertise_is_the_belief_with_imagined_successes() -> None:
    # (w * N + optimism) / (N + optimism), N = prior_strength + evidence
    assert optimistic(0.2, 0.0) == pytest.approx((0.2 * 2 + 1) / 3)
    assert optimistic(0.2, 6.0, optimism=2.0) == pytest.approx((0.2 * 8 + 2) / 10)
    assert optimistic(0.9, 1.0, optimism=0.0) == 0.9  # no exploration: the weight itself
    assert optimistic(1.0, 0.0) == 1.0
    # only the skills listed, clamped to [0, 1]; evidence of an unlisted skill is ignored
    read = optimistic_expertise(
        {"css": 1.5, "go": -0.2}, {"auth": 3.0}, optimism=1.0, prior_strength=2.0
    )
    assert set(read) == {"css", "go"} and read["css"] == 1.0 and 0.0 < read["go"] < 0.5


def test_optimism_lifts_a_thin_low_belief_most_and_fades_with_evidence() -> None:
    assert optimistic(0.2, 0.0) - 0.2 > optimistic(0.9, 0.0) - 0.9 > 0.0
    bonuses = [optimistic(0.2, n) - 0.2 for n in (0.0, 1.0, 4.0, 40.0)]
    assert bonuses == sorted(bonuses, reverse=True) and bonuses[-1] < 0.03


def test_property_optimism_is_monotone_as_the_kernel_bound_needs() -> None:
    """Never below the weight, never falling as it rises, never rising with evidence: the
    kernel bounds it at no evidence (market/bounds.py), to the last bit."""
    weights = [0.0, 0.05, 0.2, 1 / 3, 0.5, 0.62, 0.9, 0.99, 0.999999, 1.0]
    evidence = [0.0, 0.001, 0.5, 1.0, 3.0, 50.0, 1e6]
    for optimism in (0.1, 1.0, 4.0):
        for w, low in itertools.pairwise(weights):
            for e, more in itertools.pairwise(evidence):
                assert w <= optimistic(w, e, optimism) <= 1.0
                assert optimistic(w, e, optimism) <= optimistic(low, e, optimism)
                assert optimistic(w, more, optimism) <= optimistic(w, e, optimism)
                assert optimistic(w, e, optimism) <= optimistic(low, 0.0, optimism)
