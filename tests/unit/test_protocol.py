"""Wire messages: round trips, and a clear error (with its path) for every kind of bad input."""

from __future__ import annotations

import json

import pytest

from jarvis_kernel.errors import ProtocolError
from jarvis_kernel.protocol import (
    MAX_RESULT_BYTES,
    Announce,
    Assignment,
    Bid,
    Control,
    GenericEvent,
    Keys,
    Task,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    WorkerInfo,
    dead_letter,
    decode,
    decode_event,
    encode,
    validate_id,
)


def test_task_round_trip_uses_camel_case_and_ignores_unknown_keys() -> None:
    raw = (
        b'{"taskId":"t-42","description":"Add NextAuth GitHub login",'
        b'"requiredSkills":["react","auth"],'
        b'"complexity":0.7,"files":["src/auth.ts"],"requiredModel":null,"priority":2,"timeoutS":30,'
        b'"maxAttempts":3,"projectId":"atelier-sam","payload":{"k":1},"someFutureKey":true}'
    )
    task = decode(raw, Task)
    assert task.required_skills == ["react", "auth"] and task.timeout_s == 30 and task.priority == 2
    encoded = json.loads(encode(task))
    assert "requiredSkills" in encoded and "required_skills" not in encoded
    assert "someFutureKey" not in encoded
    assert decode(encode(task), Task) == task


def test_assignment_is_a_task_with_attempt() -> None:
    raw = encode(Assignment(task_id="t-1", attempt=2, assigned_at_ms=5))
    assert json.loads(raw)["attempt"] == 2
    assert decode(raw, Task).task_id == "t-1"  # a worker that ignores attempt still reads it


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        (b'{"taskId":"has space"}', "$.taskId", "regex"),
        (b'{"taskId":"a/b"}', "$.taskId", "regex"),
        (b'{"taskId":"-leading-dash"}', "$.taskId", "regex"),
        (b'{"taskId":"' + b"x" * 129 + b'"}', "$.taskId", "regex"),
        (b'{"taskId":"t","complexity":1.5}', "$.complexity", "<= 1.0"),
        (b'{"taskId":"t","complexity":"high"}', "$.complexity", "Expected `float`"),
        (b'{"taskId":"t","requiredSkills":["react",""]}', "$.requiredSkills[1]", "length"),
        (b'{"taskId":"t","requiredSkills":"react"}', "$.requiredSkills", "Expected `array`"),
        (b'{"taskId":"t","maxAttempts":0}', "$.maxAttempts", ">= 1"),
        (b'{"taskId":"t","projectId":"bad id"}', "$.projectId", "regex"),
        (b'{"description":"no id"}', None, "taskId"),
    ],
)
def test_bad_task_says_where_and_why(raw: bytes, path: str | None, words: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(raw, Task)
    assert caught.value.path == path
    assert words in str(caught.value)


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1,2", b"\xff\xfe", b"null"])
def test_malformed_json_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError, match="invalid Task"):
        decode(raw, Task)


@pytest.mark.parametrize(
    ("score", "ok"), [(0.0, True), (1.0, True), (0.5, True), (-0.1, False), (1.01, False)]
)
def test_bid_score_range(score: float, ok: bool) -> None:
    raw = json.dumps({"taskId": "t", "round": 1, "workerId": "w", "score": score}).encode()
    if ok:
        assert decode(raw, Bid).score == score
    else:
        with pytest.raises(ProtocolError) as caught:
            decode(raw, Bid)
        assert caught.value.path == "$.score"


def test_oversized_result_is_rejected_and_a_big_one_is_not() -> None:
    fits = {"text": "x" * (MAX_RESULT_BYTES - 100)}
    event = TaskCompleted(at_ms=1, task_id="t", result=fits)
    assert decode_event(encode(event)) == event
    too_big = {"text": "x" * MAX_RESULT_BYTES}
    with pytest.raises(ValueError, match=r"\$\.result"):
        TaskCompleted(at_ms=1, task_id="t", result=too_big)
    raw = json.dumps(
        {"type": "task.completed", "atMs": 1, "taskId": "t", "result": too_big}
    ).encode()
    with pytest.raises(ProtocolError, match="result"):
        decode_event(raw)


def test_events_are_a_tagged_union_and_unknown_types_pass_through() -> None:
    assigned = TaskAssigned(at_ms=1, task_id="t", worker_id="w", score=0.8, round=2, auction_ms=0.4)
    decoded = decode_event(encode(assigned))
    assert decoded == assigned
    body = json.loads(encode(assigned))
    assert body["type"] == "task.assigned" and body["auctionMs"] == 0.4 and body["round"] == 2
    future = decode_event(b'{"type":"task.teleported","atMs":5,"taskId":"t","extra":1}')
    assert isinstance(future, GenericEvent) and future.type == "task.teleported"
    with pytest.raises(ProtocolError) as caught:
        decode_event(b'{"type":"task.failed","atMs":1,"taskId":"t"}')
    assert "errorKey" in str(caught.value)
    with pytest.raises(ProtocolError) as caught:
        decode_event(b'{"type":"task.failed","atMs":"yesterday","errorKey":"x"}')
    assert caught.value.path == "$.atMs"


def test_failed_event_needs_a_stable_error_key() -> None:
    event = TaskFailed(at_ms=1, task_id="t", error_key="tsc.TS2322", error="type error")
    assert decode_event(encode(event)) == event


def test_announce_worker_info_and_control() -> None:
    announce = Announce(task_id="t", round=1, closes_at_ms=10, required_skills=["x"])
    assert json.loads(encode(announce))["type"] == "announce"
    assert decode(encode(announce), Announce) == announce
    info = decode(b'{"workerId":"w1","model":"gemini:flash","expertise":{"react":0.9}}', WorkerInfo)
    assert info.capacity == 1
    with pytest.raises(ProtocolError) as caught:
        decode(b'{"workerId":"w1","model":"m","expertise":{"react":1.9}}', WorkerInfo)
    assert "expertise" in str(caught.value)
    assert decode(b'{"command":"dump"}', Control).command == "dump"
    with pytest.raises(ProtocolError, match="command"):
        decode(b'{"command":"rm -rf"}', Control)


def test_dead_letter_cuts_raw_at_64_kib_and_keeps_bad_bytes_readable() -> None:
    letter = dead_letter("jarvis:intake", "bad", b"\xff" + b"y" * 100_000, 7)
    assert len(letter.raw) <= 64 * 1024
    assert letter.raw.startswith("\ufffd")
    assert json.loads(encode(letter))["atMs"] == 7


def test_keys_are_namespaced_and_namespace_is_checked() -> None:
    keys = Keys("swarm-1")
    assert keys.intake == "swarm-1:intake"
    assert (
        keys.bids("t-1") == "swarm-1:bids:t-1"
        and keys.task_id_from_bids("swarm-1:bids:t-1") == "t-1"
    )
    assert (
        keys.tasks_for("w") == "swarm-1:tasks:w" and keys.processing("w") == "swarm-1:processing:w"
    )
    assert keys.paused == "swarm-1:swarm:paused" and keys.control("w") == "swarm-1:control:w"
    for bad in ("", "has space", "a:b", "x/y"):
        with pytest.raises(ProtocolError, match="namespace"):
            Keys(bad)


def test_validate_id() -> None:
    assert validate_id("t-1.2:x_y") == "t-1.2:x_y"
    with pytest.raises(ProtocolError, match="taskId 'a b'"):
        validate_id("a b", "taskId")
