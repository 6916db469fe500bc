"""Decoding `.memory/` files: both shapes, error paths, path escapes."""

from __future__ import annotations

import json

import pytest

from jarvis_kernel.errors import MemoryFormatError
from jarvis_kernel.librarian import formats


def _map(**fields: object) -> bytes:
    return json.dumps({"projectId": "p1", **fields}).encode()


def test_files_as_a_list_and_as_an_object_decode_the_same() -> None:
    listed = formats.decode_context_map(
        _map(files=[{"path": "src/a.ts", "summary": "A", "tags": ["x"], "symbols": ["f"]}]),
        file="m.json",
    )
    keyed = formats.decode_context_map(
        _map(files={"src/a.ts": {"summary": "A", "tags": ["x"], "symbols": ["f"]}}),
        file="m.json",
    )
    assert listed.files == keyed.files
    assert listed.files[0].path == "src/a.ts"


def test_unknown_keys_are_ignored_and_defaults_apply() -> None:
    cmap = formats.decode_context_map(
        _map(files=[{"path": "a", "extra": 1}], future=True), file="m.json"
    )
    assert cmap.files[0].summary == ""
    assert cmap.patterns == []


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        (
            _map(files=[{"path": "a"}, {"path": "b"}, {"path": 3}]),
            "$.files[2].path",
            "Expected `str`",
        ),
        (_map(files=[{"path": "a", "tags": "auth"}]), "$.files[0].tags", "Expected `array`"),
        (json.dumps({"files": []}).encode(), None, "projectId"),
        (_map(files=[{"path": "../../etc/passwd"}]), "$.files[0].path", "climbs out"),
        (_map(files=[{"path": "/etc/passwd"}]), "$.files[0].path", "absolute"),
        (_map(files={"a/../../b": {}}), "$.files['a/../../b']", "climbs out"),
        (
            _map(files=[], patterns=[{"name": "x", "filePath": "C:\\\\x"}]),
            "$.patterns[0].filePath",
            "absolute",
        ),
        (_map(files=[], patterns=[{"filePath": "a"}]), None, "name"),
        (b'{"projectId": "p1", "files": [', None, "not valid JSON"),
        (_map(projectId="p2"), "$.projectId", "does not match"),
    ],
)
def test_bad_maps_name_the_file_the_field_and_the_reason(
    data: bytes, field: str | None, reason: str
) -> None:
    with pytest.raises(MemoryFormatError) as info:
        formats.decode_context_map(data, file="projects/p1/context_map.json", project_id="p1")
    assert info.value.file == "projects/p1/context_map.json"
    if field is not None:
        assert info.value.field == field
    assert reason in str(info.value)


def test_paths_are_normalised() -> None:
    assert formats.check_relative_path("./src//a.ts", file="f", field="$") == "src/a.ts"
    assert formats.check_relative_path("src\\a.ts", file="f", field="$") == "src/a.ts"
    assert formats.check_relative_path("src/..a/b", file="f", field="$") == "src/..a/b"


def test_projects_file_in_both_shapes() -> None:
    entry = {"id": "atelier-sam", "name": "Atelier Sam", "path": "/srv/a", "tags": ["nextjs"]}
    wrapped = formats.decode_projects(json.dumps({"projects": [entry]}).encode())
    bare = formats.decode_projects(json.dumps([entry]).encode())
    assert wrapped == bare
    assert wrapped[0].id == "atelier-sam"


def test_projects_file_errors() -> None:
    with pytest.raises(MemoryFormatError, match=r"\$\.projects\[1\]\.id"):
        formats.decode_projects(json.dumps({"projects": [{"id": "a"}, {"id": "a b"}]}).encode())
    with pytest.raises(MemoryFormatError, match="duplicate"):
        formats.decode_projects(json.dumps([{"id": "a"}, {"id": "a"}]).encode())


def test_active_project() -> None:
    assert formats.decode_active_project(b'{"projectId": "jarvis"}') == "jarvis"
    with pytest.raises(MemoryFormatError):
        formats.decode_active_project(b'{"projectId": 3}')
