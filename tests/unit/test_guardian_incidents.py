"""The incident log: round trip, malformed lines reported, concurrent appends kept whole."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgspec

from jarvis_kernel.config import GuardianConfig
from jarvis_kernel.guardian.heuristics import Finding
from jarvis_kernel.guardian.incidents import (
    INCIDENTS_FILE,
    Incident,
    append_incident,
    incident_from_action,
    incident_id,
    read_incidents,
)
from jarvis_kernel.guardian.ladder import Ladder, TargetState
from jarvis_kernel.protocol import validate_id


def incident(n: int, evidence: dict[str, Any] | None = None) -> Incident:
    return Incident(
        id=incident_id(1_800_000_000_000 + n, f"k{n}"),
        at_ms=1_800_000_000_000 + n,
        kind="stall",
        level=1,
        action="dump",
        target="w1",
        evidence=evidence or {"idleS": 301.5, "taskId": "t1"},
        outcome="signalled",
    )


def test_round_trip_in_the_memory_md_shape(tmp_path: Path) -> None:
    first, second = incident(1), incident(2)
    path = append_incident(tmp_path, first)
    append_incident(tmp_path, second)
    assert path == tmp_path / INCIDENTS_FILE
    assert read_incidents(path) == ([first, second], [])
    line = path.read_bytes().splitlines()[0]
    assert set(msgspec.json.decode(line)) == {
        "id",
        "atMs",
        "kind",
        "level",
        "action",
        "target",
        "evidence",
        "outcome",
    }


def test_missing_file_is_an_empty_log(tmp_path: Path) -> None:
    assert read_incidents(tmp_path / "nope.jsonl") == ([], [])


def test_malformed_lines_are_reported_with_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / INCIDENTS_FILE
    good = msgspec.json.encode(incident(1)).decode()
    path.write_text("\n".join([good, "{not json", "", '{"id": "x", "atMs": "soon"}', good]) + "\n")
    incidents, errors = read_incidents(path)
    assert incidents == [incident(1), incident(1)]
    assert len(errors) == 2
    assert errors[0].startswith("line 2: ")
    assert errors[1].startswith("line 4: ") and "atMs" in errors[1]


def test_concurrent_appends_from_threads_do_not_interleave(tmp_path: Path) -> None:
    big = {"blob": "x" * 100_000}  # far above PIPE_BUF: a torn write would show
    threads, per_thread = 8, 10

    def writer(t: int) -> None:
        for i in range(per_thread):
            append_incident(tmp_path, incident(t * 100 + i, big))

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    incidents, errors = read_incidents(tmp_path / INCIDENTS_FILE)
    assert errors == []
    assert len(incidents) == threads * per_thread
    assert len({i.id for i in incidents}) == threads * per_thread


def test_incident_from_a_ladder_action() -> None:
    finding = Finding(
        kind="stall",
        target="w1",
        task_id="t1",
        reason="task t1: no progress for 300s",
        evidence={"rule": "no_progress", "idleS": 300.0},
    )
    _, action = Ladder(GuardianConfig()).decide(finding, TargetState(), 0.0, managed=True)
    record = incident_from_action(action, 1_800_000_000_000, outcome="signalled")
    assert (record.kind, record.level, record.action, record.target) == ("stall", 1, "dump", "w1")
    assert record.evidence == {
        "rule": "no_progress",
        "idleS": 300.0,
        "reason": "task t1: no progress for 300s",
        "taskId": "t1",
        "via": "signal",
    }
    assert record.outcome == "signalled"
    assert validate_id(record.id) == record.id  # usable as a quarantine folder name
    assert incident_from_action(action, 1_800_000_000_000).id == record.id  # stable
