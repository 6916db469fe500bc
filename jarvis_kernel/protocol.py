"""Wire protocol v1: every message between the kernel and its workers, and every key name.

The contract is ``docs/protocol.md``. Payloads are JSON objects with camelCase keys;
unknown keys are ignored. Decoding goes through `decode`, which turns msgspec's errors into
`ProtocolError` carrying the path of the fault (``$.requiredSkills[1]``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from .errors import ProtocolError

__all__ = [
    "ID_PATTERN",
    "MAX_RAW_BYTES",
    "MAX_RESULT_BYTES",
    "PROTOCOL_VERSION",
    "Announce",
    "Assignment",
    "Bid",
    "Control",
    "DeadLetter",
    "Event",
    "FileReverted",
    "GenericEvent",
    "GuardianIntervention",
    "Keys",
    "MessageRejected",
    "PauseInfo",
    "SwarmPaused",
    "SwarmResumed",
    "Task",
    "TaskAnnounced",
    "TaskAssigned",
    "TaskCompleted",
    "TaskDead",
    "TaskFailed",
    "TaskFallback",
    "TaskProgress",
    "TaskRequeued",
    "TaskStalled",
    "TaskStarted",
    "TaskSubmitted",
    "WorkerInfo",
    "WorkerStarted",
    "WorkerState",
    "WorkerStopped",
    "decode",
    "decode_event",
    "encode",
    "validate_id",
]

PROTOCOL_VERSION: Final = 1
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
NAMESPACE_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_RESULT_BYTES: Final = 64 * 1024
MAX_RAW_BYTES: Final = 64 * 1024

Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
Skill = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0.0)]
Path = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class _Message(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Base of every wire message: frozen, keyword-only, camelCase on the wire."""


# --------------------------------------------------------------------------- tasks


class Task(_Message, frozen=True, kw_only=True):
    """A unit of work, as producers submit it (``LPUSH <ns>:intake``)."""

    task_id: Id
    description: Annotated[str, msgspec.Meta(max_length=100_000)] = ""
    required_skills: list[Skill] = []
    complexity: Unit = 0.5
    files: list[Path] = []
    required_model: str | None = None
    priority: int = 0
    timeout_s: PositiveFloat | None = None
    max_attempts: PositiveInt = 3
    project_id: Id | None = None
    payload: dict[str, Any] = {}


class Assignment(Task, frozen=True, kw_only=True):
    """A task as it lies on a worker's queue: the task plus the attempt it is."""

    attempt: PositiveInt = 1
    assigned_at_ms: NonNegInt = 0


# --------------------------------------------------------------------------- market


class Announce(_Message, frozen=True, kw_only=True, tag_field="type", tag="announce"):
    """Published on ``<ns>:market`` (and ``<ns>:market:<workerId>``) to open an auction
    round."""

    task_id: Id
    round: PositiveInt
    description: str = ""
    required_skills: list[Skill] = []
    complexity: Unit = 0.5
    files: list[Path] = []
    required_model: str | None = None
    closes_at_ms: NonNegInt
    eligible: list[str] | None = None
    """The workers the kernel waits for (alive with room when announced), sorted; `None`
    from a kernel that does not say. A worker of this version that is not named and has no
    room stays silent instead of refusing. (Plain strings: they are the field names of
    ``<ns>:workers``, which nobody validated, and one bad name must not spoil every
    announcement.)"""


class Bid(_Message, frozen=True, kw_only=True):
    """A worker's answer to an announcement, on ``<ns>:bids:<taskId>``. Score 0 refuses."""

    task_id: Id
    round: PositiveInt
    worker_id: Id
    score: Unit
    model: str = ""
    load: NonNegInt = 0
    capacity: PositiveInt = 1
    scoring: str | None = None
    """How the worker scores (`market.bounds.scoring_id`), sent by workers of this version;
    the kernel bounds the bids of silent workers only when it equals its own."""
    weights: dict[Skill, Unit] | None = None
    """The weights this bid was scored from, for the announced task's required skills (as
    read for bidding: optimistic by their evidence). Sent by workers of this version, so
    that the kernel's bound of the worker is exact again once it bid idle (docs/protocol.md,
    "Early close on bounds")."""


class WorkerInfo(_Message, frozen=True, kw_only=True):
    """What a worker says of itself in ``HSET <ns>:workers <workerId>``."""

    worker_id: Id
    model: str
    expertise: dict[Skill, Unit] = {}
    capacity: PositiveInt = 1
    version: str = ""
    evidence: dict[Skill, Annotated[float, msgspec.Meta(ge=0.0)]] = {}
    """How many outcomes each weight of `expertise` was learned from (it only grows). A
    worker of this version bids from its weights read optimistically by it (exploration,
    `market.scoring.optimistic_expertise`); the kernel's bounds read this (older is safe:
    less evidence, a larger bonus). Optional: none means the largest bonus."""
    direct_announce: bool = False
    """The worker listens for announcements on its own channel ``<ns>:market:<workerId>``
    (and not on ``<ns>:market``): the kernel may then announce a task to it alone, first,
    when its bid may decide the auction (docs/protocol.md, "Directed announcements")."""


class Control(_Message, frozen=True, kw_only=True):
    """A command on ``<ns>:control:<workerId>``."""

    command: Literal["dump", "pause", "resume", "stop"]


class PauseInfo(_Message, frozen=True, kw_only=True):
    """The value of ``<ns>:swarm:paused`` while the swarm is paused.

    `exempt_task_ids` names the tasks the pause does not hold back (the guardian's
    root-cause analysis): the kernel still announces them, workers still bid on, take and
    start them. Everything else waits.
    """

    reason: str
    at_ms: NonNegInt = 0
    by: str = ""
    exempt_task_ids: tuple[Id, ...] = ()


class DeadLetter(_Message, frozen=True, kw_only=True):
    """An entry of ``<ns>:deadletter``: a rejected payload, or a task out of attempts."""

    source: str
    error: str
    raw: str
    at_ms: NonNegInt


# --------------------------------------------------------------------------- events


class Event(_Message, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event written to ``<ns>:events``."""

    at_ms: NonNegInt
    task_id: Id | None = None
    worker_id: Id | None = None


class TaskSubmitted(Event, frozen=True, kw_only=True, tag="task.submitted"):
    priority: int = 0
    description: str = ""


class TaskAnnounced(Event, frozen=True, kw_only=True, tag="task.announced"):
    round: PositiveInt = 1
    attempt: PositiveInt = 1
    eligible: NonNegInt = 0
    closes_at_ms: NonNegInt = 0


class TaskAssigned(Event, frozen=True, kw_only=True, tag="task.assigned"):
    score: Unit = 0.0
    round: PositiveInt = 1
    attempt: PositiveInt = 1
    auction_ms: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    bids: NonNegInt = 0


class TaskFallback(Event, frozen=True, kw_only=True, tag="task.fallback"):
    round: PositiveInt = 1
    attempt: PositiveInt = 1


class TaskStarted(Event, frozen=True, kw_only=True, tag="task.started"):
    attempt: PositiveInt = 1


class TaskProgress(Event, frozen=True, kw_only=True, tag="task.progress"):
    token_usage: NonNegInt = 0
    note: str = ""
    attempt: PositiveInt = 1


def _check_result_size(result: Any) -> None:
    size = len(msgspec.json.encode(result))
    if size > MAX_RESULT_BYTES:
        raise ValueError(f"`$.result` is {size} bytes encoded; at most {MAX_RESULT_BYTES}")


class TaskCompleted(Event, frozen=True, kw_only=True, tag="task.completed"):
    result: Any = None
    token_usage: NonNegInt = 0
    attempt: PositiveInt = 1
    weights: dict[Skill, Unit] | None = None
    """The weights the worker bids from now, having learned from this outcome, for the
    task's required skills (as `Bid.weights` reads them). Sent by workers of this version
    holding no other task, so that the kernel's bound of the worker is exact at once
    (docs/protocol.md, "Early close on bounds")."""

    def __post_init__(self) -> None:
        _check_result_size(self.result)


class TaskFailed(Event, frozen=True, kw_only=True, tag="task.failed"):
    error_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    error: str = ""
    attempt: PositiveInt = 1
    weights: dict[Skill, Unit] | None = None
    """As `TaskCompleted.weights`."""


class TaskRequeued(Event, frozen=True, kw_only=True, tag="task.requeued"):
    attempt: PositiveInt = 1
    reason: str = ""


class TaskStalled(Event, frozen=True, kw_only=True, tag="task.stalled"):
    attempt: PositiveInt = 1
    reason: str = ""
    idle_s: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0


class TaskDead(Event, frozen=True, kw_only=True, tag="task.dead"):
    attempts: NonNegInt = 0
    reason: str = ""


class WorkerStarted(Event, frozen=True, kw_only=True, tag="worker.started"):
    model: str = ""
    capacity: PositiveInt = 1


class WorkerStopped(Event, frozen=True, kw_only=True, tag="worker.stopped"):
    reason: str = ""


class WorkerState(Event, frozen=True, kw_only=True, tag="worker.state"):
    state: dict[str, Any] = {}


class GuardianIntervention(Event, frozen=True, kw_only=True, tag="guardian.intervention"):
    level: Annotated[int, msgspec.Meta(ge=1, le=3)]
    action: str
    reason: str
    incident_id: str = ""


class SwarmPaused(Event, frozen=True, kw_only=True, tag="swarm.paused"):
    reason: str = ""


class SwarmResumed(Event, frozen=True, kw_only=True, tag="swarm.resumed"):
    reason: str = ""


class FileReverted(Event, frozen=True, kw_only=True, tag="file.reverted"):
    path: str
    incident_id: str = ""
    quarantine_path: str = ""


class MessageRejected(Event, frozen=True, kw_only=True, tag="message.rejected"):
    source: str
    error: str


AnyEvent = (
    TaskSubmitted
    | TaskAnnounced
    | TaskAssigned
    | TaskFallback
    | TaskStarted
    | TaskProgress
    | TaskCompleted
    | TaskFailed
    | TaskRequeued
    | TaskStalled
    | TaskDead
    | WorkerStarted
    | WorkerStopped
    | WorkerState
    | GuardianIntervention
    | SwarmPaused
    | SwarmResumed
    | FileReverted
    | MessageRejected
)


class GenericEvent(_Message, frozen=True, kw_only=True):
    """An event of a type this version does not know: kept, not rejected (forward compat)."""

    type: str
    at_ms: NonNegInt = 0
    task_id: str | None = None
    worker_id: str | None = None


# --------------------------------------------------------------------------- coding

T = TypeVar("T")
_ENCODER: Final = msgspec.json.Encoder()
_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}
_PATH = re.compile(r" - at `(\$[^`]*)`$")


def encode(message: msgspec.Struct | dict[str, Any] | list[Any]) -> bytes:
    """Encode a message as compact JSON."""
    return _ENCODER.encode(message)


def _decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    dec = _DECODERS.get(tp)
    if dec is None:
        dec = _DECODERS[tp] = msgspec.json.Decoder(tp)
    return dec


def decode(data: bytes | str, tp: type[T]) -> T:
    """Decode and validate `data` as `tp`, or raise `ProtocolError` saying where and why."""
    try:
        return _decoder(tp).decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        raise ProtocolError(
            f"invalid {tp.__name__}: {text}", path=match and match.group(1)
        ) from exc
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"invalid {tp.__name__}: not valid JSON: {exc}") from exc


def decode_event(data: bytes | str) -> Event | GenericEvent:
    """Decode an event; an unknown ``type`` gives a `GenericEvent` rather than an error."""
    try:
        return _decoder(AnyEvent).decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        text = str(exc)
        if text.startswith("Invalid value") and text.endswith("`$.type`"):
            return decode(data, GenericEvent)
        match = _PATH.search(text)
        raise ProtocolError(f"invalid event: {text}", path=match and match.group(1)) from exc
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"invalid event: not valid JSON: {exc}") from exc


_ID_RE: Final = re.compile(ID_PATTERN)
_NS_RE: Final = re.compile(NAMESPACE_PATTERN)


def validate_id(value: str, what: str = "id") -> str:
    """Return `value` if it is a valid protocol id, else raise `ProtocolError`."""
    if not _ID_RE.match(value):
        raise ProtocolError(f"{what} {value!r} must match {ID_PATTERN}")
    return value


def dead_letter(source: str, error: str, raw: bytes | str, at_ms: int) -> DeadLetter:
    """Build the dead-letter entry for a rejected payload (raw text cut at 64 KiB)."""
    text = raw if isinstance(raw, str) else raw[:MAX_RAW_BYTES].decode("utf-8", "replace")
    return DeadLetter(source=source, error=error, raw=text[:MAX_RAW_BYTES], at_ms=at_ms)


# --------------------------------------------------------------------------- keys


class Keys:
    """Every Redis key and channel of the protocol, for one namespace."""

    __slots__ = (
        "bids_pattern",
        "deadletter",
        "events",
        "heartbeats",
        "intake",
        "load",
        "market",
        "namespace",
        "paused",
        "tasks",
        "workers",
    )

    def __init__(self, namespace: str = "jarvis") -> None:
        if not _NS_RE.match(namespace):
            raise ProtocolError(f"namespace {namespace!r} must match {NAMESPACE_PATTERN}")
        ns = self.namespace = namespace
        self.intake = f"{ns}:intake"
        self.market = f"{ns}:market"
        self.bids_pattern = f"{ns}:bids:*"
        self.workers = f"{ns}:workers"
        self.heartbeats = f"{ns}:heartbeats"
        self.load = f"{ns}:load"
        self.tasks = f"{ns}:tasks"
        self.deadletter = f"{ns}:deadletter"
        self.events = f"{ns}:events"
        self.paused = f"{ns}:swarm:paused"

    def bids(self, task_id: str) -> str:
        return f"{self.namespace}:bids:{task_id}"

    def task_id_from_bids(self, channel: str) -> str:
        return channel[len(self.namespace) + 6 :]

    def tasks_for(self, worker_id: str) -> str:
        return f"{self.namespace}:tasks:{worker_id}"

    def market_for(self, worker_id: str) -> str:
        """The announcement channel of a worker that registered with ``directAnnounce``."""
        return f"{self.namespace}:market:{worker_id}"

    def processing(self, worker_id: str) -> str:
        return f"{self.namespace}:processing:{worker_id}"

    def control(self, worker_id: str) -> str:
        return f"{self.namespace}:control:{worker_id}"

    def internal(self, name: str) -> str:
        """A key private to the kernel (not part of the contract)."""
        return f"{self.namespace}:kernel:{name}"
