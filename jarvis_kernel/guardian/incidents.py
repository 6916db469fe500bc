"""The incident log, ``.memory/incidents.jsonl`` (docs/memory.md, "Written by the guardian").

One JSON object a line, appended under the file's lock (`fsutil.append_line`), so writers
in several threads or processes never interleave. `append_incident` and `read_incidents`
block: from async code run them through `anyio.to_thread.run_sync`. A reader tolerates
malformed lines: they are reported with their line number and skipped.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Final

import msgspec

from ..fsutil import append_line
from .heuristics import Finding
from .ladder import Action

__all__ = [
    "INCIDENTS_FILE",
    "Incident",
    "append_incident",
    "incident_from_action",
    "incident_id",
    "read_incidents",
]

INCIDENTS_FILE: Final = "incidents.jsonl"

_ENCODER: Final = msgspec.json.Encoder()


class Incident(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One guardian intervention, as memory.md describes it."""

    id: str
    at_ms: int
    kind: str
    """``stall`` | ``error_spiral`` | ``token_spike`` | ``worker_dead`` | ``build_broken``..."""
    level: int
    action: str
    target: str
    evidence: dict[str, Any] = {}
    outcome: str = ""


_DECODER: Final = msgspec.json.Decoder(Incident)


def incident_id(at_ms: int, key: str) -> str:
    """A stable id (a valid protocol id, usable as a folder name): time plus a hash of `key`."""
    digest = hashlib.sha256(f"{at_ms}\0{key}".encode()).hexdigest()[:10]
    return f"inc-{at_ms}-{digest}"


def incident_from_action(action: Action, at_ms: int, outcome: str = "") -> Incident:
    """The incident recording `action` (its finding's kind and evidence, and the reason)."""
    finding: Finding | None = action.finding
    kind = finding.kind if finding is not None else "intervention"
    key = finding.key if finding is not None else action.target
    evidence: dict[str, Any] = dict(finding.evidence) if finding is not None else {}
    evidence["reason"] = action.reason
    if finding is not None and finding.task_id is not None:
        evidence["taskId"] = finding.task_id
    if action.kind == "restart" or action.kind == "reclaim":
        evidence["delayS"] = action.delay_s
    if action.kind == "dump":
        evidence["via"] = action.via
    return Incident(
        id=incident_id(at_ms, f"{key}\0{action.kind}"),
        at_ms=at_ms,
        kind=kind,
        level=action.level,
        action=action.kind,
        target=action.target,
        evidence=evidence,
        outcome=outcome,
    )


def append_incident(memory_dir: str | os.PathLike[str], incident: Incident) -> Path:
    """Append `incident` to ``<memory_dir>/incidents.jsonl`` (blocking); returns the path."""
    path = Path(memory_dir) / INCIDENTS_FILE
    append_line(path, _ENCODER.encode(incident))
    return path


def read_incidents(path: str | os.PathLike[str]) -> tuple[list[Incident], list[str]]:
    """Every well-formed incident of the file, and one error per bad line (``line 3: ...``).

    A missing file is an empty log. Blank lines are skipped silently.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], []
    incidents: list[Incident] = []
    errors: list[str] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            incidents.append(_DECODER.decode(line))
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            errors.append(f"line {number}: {exc}")
    return incidents, errors
