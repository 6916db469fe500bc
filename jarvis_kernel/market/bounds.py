"""Upper bounds of the bids a silent worker could still make. Pure: no I/O, no clock.

The early close on bounds (`auction.bids_decide`) needs, for every eligible worker that has
not answered yet, a number its bid cannot exceed. `BoundBook` keeps what the kernel knows
of each worker for that, and `BoundBook.bound` gives the number:

- 1.0 (no bound) for a worker whose bids do not carry this kernel's `scoring_id`: a foreign
  worker, one of another version, one scoring with another configuration, and any worker
  the kernel has not heard a bid from since it (re)started or the worker (re)registered;
- otherwise `score_bound`: `scoring.bid_score` itself on the worker's published model and
  an expertise that cannot be below the one it bids from, every file the task names
  touched just now (the context term at its maximum).

Why the expertise is an upper bound. A worker's weights change only by
`worker.memory.learn_with_evidence`, once per outcome of a task it ran, after it wrote the
outcome. The book starts from the published `WorkerInfo` (each weight raised to its
6-decimal rounding, which is where learning rounds to) and, for every task the kernel awards
to the worker (or puts on the shared FCFS list, which any worker may take), raises the
task's skills at once, before the worker can have it, by the largest step the policy can
take (`worker.memory.most_after_success`: `LearningPolicy.max_step` of the way to the
ceiling, the step of a skill with no evidence and all the credit). A success never lowers a
weight and moves it at most that step, a failure never raises one (on 6-decimal weights),
and ``w + max_step * (ceiling - w)`` is monotone in ``w``, so whatever subset of those
outcomes the worker has learned from, in whatever order, with whatever evidence and credit
split, its weights stay at or under the book's. A fresh `WorkerInfo` is merged by the
maximum, never replaces: it may be older than learning the book already counts. `bid_score`
is monotone in each weight and in each file's freshness (tests/unit/test_scoring.py), so the
score is bounded too.

Exact again after an idle bid: a bid of this version carries the weights it was scored
from (`Bid.weights`, for the task's skills). When it was made with nothing owed that the
worker could still learn from (load 0 in the bid, no task awarded to it and not ended, and
its last task's end read before the announcement the bid answers: the auctioneer's
`_owes_nothing`), those weights are what it bids from until it may learn again: an award
(`will_learn`) or a task on the shared list with the skill drops them back to the rule
above. Without this the book's weights only rise (raised per award, merged by the
maximum), and a worker that won often stays bounded near the ceiling: asked first by the
directed announcements (docs/protocol.md) though its bid no longer decides. The end of a
task says them too (`TaskCompleted.weights`, `TaskFailed.weights`: the worker learns before
it writes the end, and says them only when it holds no other task); read when no other
task of this kernel's is awarded to the worker and not ended, they are exact at once.

A worker bids from an optimistic reading of its weights (`scoring.optimistic_expertise`,
exploration: the policy's `optimism` imagined successes on a belief worth `prior_strength`
plus the skill's evidence). The reading never falls as a weight rises nor rises as evidence
grows, and evidence only grows, so the book reads its own weights with the evidence the
worker last published (`WorkerInfo.evidence`; none if it published none): at least the
bonus the worker can add.

What it assumes (docs/protocol.md, "Early close on bounds"): workers of this version learn
only from tasks this kernel awarded or put on the shared list, and a worker that registers
again (with another expertise, say) is not bounded until the kernel has read its
``worker.started`` event and a bid of the new registration.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Final

import msgspec

from ..config import ScoringConfig
from ..worker.memory import DEFAULT_POLICY, LearningPolicy, most_after_success
from .scoring import TaskLike, bid_score, optimistic_expertise

__all__ = ["NO_BOUND", "BoundBook", "score_bound", "scoring_id"]

NO_BOUND: Final = 1.0
"""The bound of a worker the kernel cannot bound: any valid bid is possible."""

# Sums of more than two terms may differ in the last bit with the order of a set's
# iteration, which differs between processes: bounds over 3+ skills get this slack.
_SUM_SLACK: Final = 1e-12


def _version() -> str:
    try:
        return importlib.metadata.version("jarvis-kernel")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source tree
        return "0.0.0+src"


@lru_cache(maxsize=16)
def _digest(config: bytes, policy: bytes) -> str:
    text = b"|".join((_version().encode(), config, policy))
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def scoring_id(config: ScoringConfig, policy: LearningPolicy = DEFAULT_POLICY) -> str:
    """A short id of how a worker of this version scores and learns with `config`.

    A worker of this version sends it in its bids (``scoring``); the kernel bounds only the
    workers whose id equals its own.
    """
    return _digest(msgspec.json.encode(config), msgspec.json.encode(policy))


def _ceil6(weight: float) -> float:
    """The weight, or its 6-decimal rounding if that is higher (`learn` rounds to it)."""
    return max(weight, round(weight, 6))


def score_bound(
    task: TaskLike, *, expertise: Mapping[str, float], model: str, config: ScoringConfig
) -> float:
    """The most a worker with (at most) `expertise` and `model` can bid for `task`.

    `bid_score` with every file the task names touched just now; 0.0 when the task requires
    another model (the worker must refuse).
    """
    score = bid_score(
        task,
        expertise=expertise,
        model=model,
        recent_files=dict.fromkeys(task.files, 0),
        now_ms=0,
        config=config,
    )
    if score > 0.0 and len(set(task.required_skills)) > 2:
        score = min(NO_BOUND, score + _SUM_SLACK)
    return score


class _Worker:
    __slots__ = ("evidence", "exact", "expertise", "model", "pending", "scoring_ok", "version")

    def __init__(self) -> None:
        self.version = 0  # grows at every change of this worker (keys the bound cache)
        self.model: str | None = None
        self.expertise: dict[str, float] = {}
        self.evidence: dict[str, float] = {}  # as last published: no more than it has now
        # skill -> the weight it bids from now, as its last idle bid said (`observe_weights`)
        self.exact: dict[str, float] = {}
        self.pending: list[tuple[str, ...]] = []  # learning owed before any info was read
        self.scoring_ok = False


class BoundBook:
    """What the kernel knows of each worker for bounding its bids. See the module docstring.

    `generation` grows at every change, so a caller may keep bounds until it moves.
    """

    def __init__(self, config: ScoringConfig, *, policy: LearningPolicy = DEFAULT_POLICY):
        self.config = config
        self.policy = policy
        self.scoring_id = scoring_id(config, policy)
        self.generation = 0
        self._workers: dict[str, _Worker] = {}
        self._shared: dict[str, tuple[str, ...]] = {}  # task id -> skills, on the FCFS list
        # (worker, what of a task the bound depends on) -> (version, shared version, bound)
        self._cache: dict[tuple[object, ...], tuple[int, int, float]] = {}
        self._shared_version = 0

    def _changed(self, worker: _Worker | None = None) -> None:
        self.generation += 1
        if worker is None:
            self._shared_version += 1
        else:
            worker.version += 1

    def _worker(self, worker_id: str) -> _Worker:
        worker = self._workers.get(worker_id)
        if worker is None:
            worker = self._workers[worker_id] = _Worker()
        return worker

    def _learn(self, expertise: dict[str, float], skills: Iterable[str]) -> dict[str, float]:
        learned = most_after_success(expertise, skills, self.policy)
        return {k: max(v, expertise.get(k, 0.0)) for k, v in learned.items()}

    def observe_info(
        self,
        worker_id: str,
        model: str,
        expertise: Mapping[str, float],
        *,
        evidence: Mapping[str, float] | None = None,
    ) -> None:
        """Merge a `WorkerInfo` just read (by the maximum: it may lag learning counted).

        Its `evidence` replaces the one known: evidence only grows, so what was published
        is at most what the worker has now, and less evidence means a larger bonus.
        """
        worker = self._worker(worker_id)
        known = dict(evidence or {})
        if known != worker.evidence:
            worker.evidence = known
            self._changed(worker)
        first = worker.model is None
        merged = dict(worker.expertise)
        for skill, weight in expertise.items():
            merged[skill] = max(merged.get(skill, 0.0), _ceil6(min(1.0, max(0.0, weight))))
        if first:
            for skills in worker.pending:
                merged = self._learn(merged, skills)
            worker.pending.clear()
        if model != worker.model or merged != worker.expertise:
            worker.model, worker.expertise = model, merged
            self._changed(worker)

    def observe_bid(self, worker_id: str, scoring: str | None) -> None:
        """A bid came from `worker_id` carrying `scoring` (None: a foreign worker)."""
        worker = self._worker(worker_id)
        ok = scoring == self.scoring_id
        if ok != worker.scoring_ok:
            worker.scoring_ok = ok
            self._changed(worker)

    def forget(self, worker_id: str) -> None:
        """The worker registered again: no bound until a bid of the new registration."""
        worker = self._workers.get(worker_id)
        if worker is not None and (worker.scoring_ok or worker.exact):
            worker.scoring_ok = False
            worker.exact = {}
            self._changed(worker)

    def observe_weights(self, worker_id: str, weights: Mapping[str, float]) -> None:
        """A bid of `worker_id` said the weights it bids from (`Bid.weights`), made when
        nothing it could still learn from was owed: no task of its own awarded and not
        ended, none in hand, none ended since the bid's announcement (call it only then).
        Until it may learn again (`will_learn`, a task on the shared list) those weights are
        its bids' exactly: the bound uses them."""
        worker = self._worker(worker_id)
        if any(worker.exact.get(s) != w for s, w in weights.items()):
            worker.exact.update(weights)
            self._changed(worker)

    def will_learn(self, worker_id: str, skills: Sequence[str]) -> None:
        """`worker_id` may learn from a task requiring `skills` (it was awarded it)."""
        if not skills:
            return
        worker = self._worker(worker_id)
        if worker.model is None:
            worker.pending.append(tuple(skills))
        else:
            worker.expertise = self._learn(worker.expertise, skills)
        for skill in skills:
            worker.exact.pop(skill, None)
        self._changed(worker)

    def shared(self, task_id: str, skills: Sequence[str]) -> None:
        """The task is on the shared FCFS list: any worker may take it and learn from it."""
        if skills:
            self._shared[task_id] = tuple(skills)
            self._changed()

    def taken(self, task_id: str, worker_id: str | None) -> None:
        """The shared task was taken by `worker_id` (None: it ended): only it may learn."""
        skills = self._shared.pop(task_id, None)
        if skills is not None:
            if worker_id is not None:
                self.will_learn(worker_id, skills)
            self._changed()

    def bound(self, worker_id: str, task: TaskLike) -> float:
        """At most what `worker_id` can bid for `task`; `NO_BOUND` when it cannot be bounded."""
        worker = self._workers.get(worker_id)
        if worker is None or not worker.scoring_ok or worker.model is None:
            return NO_BOUND
        key = (
            worker_id,
            frozenset(task.required_skills),
            task.complexity,
            bool(task.files),  # the context term is at its maximum for any named file
            task.required_model,
        )
        cached = self._cache.get(key)
        if cached is not None and cached[:2] == (worker.version, self._shared_version):
            return cached[2]
        expertise = worker.expertise
        for skills in self._shared.values():
            expertise = self._learn(expertise, skills)
        optimism = self.policy.optimism
        if optimism > 0.0:  # at least the evidence it published: at most that bonus
            expertise = optimistic_expertise(
                expertise,
                worker.evidence,
                optimism=optimism,
                prior_strength=self.policy.prior_strength,
            )
        if worker.exact:  # what its last idle bid said, unless it may have learned since
            shared = {s for skills in self._shared.values() for s in skills}
            expertise = {
                **expertise,
                **{s: w for s, w in worker.exact.items() if s not in shared},
            }
        bound = score_bound(task, expertise=expertise, model=worker.model, config=self.config)
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[key] = (worker.version, self._shared_version, bound)
        return bound
