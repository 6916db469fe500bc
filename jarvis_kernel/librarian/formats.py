"""The `.memory/` files the librarian reads and writes (docs/memory.md), as msgspec Structs.

Decoding never lets a foreign exception out: a malformed file raises `MemoryFormatError`
naming the file, the field (``$.files[2].path``) and the reason. Paths inside a project are
normalised (``./a`` -> ``a``, ``\\`` -> ``/``) and rejected when absolute or climbing out
of the project (``..``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from ..errors import MemoryFormatError
from ..protocol import ID_PATTERN

__all__ = [
    "ActiveProject",
    "ContextMap",
    "ExplicitPattern",
    "FileEntry",
    "Pattern",
    "PatternsFile",
    "Project",
    "Source",
    "check_relative_path",
    "decode_active_project",
    "decode_context_map",
    "decode_patterns_file",
    "decode_projects",
    "encode",
]

ProjectId = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]


class _In(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Input shapes: unknown keys are ignored (forward compatibility)."""


class Project(_In, frozen=True):
    """One entry of ``projects.json``."""

    id: ProjectId
    name: str | None = None
    path: str | None = None
    tags: list[str] = []


class _ProjectsObject(_In, frozen=True):
    projects: list[Project]


class FileInfo(_In, frozen=True):
    """A file of a context map, in the object shape (keyed by path)."""

    summary: str = ""
    tags: list[str] = []
    symbols: list[str] = []


class FileEntry(_In, frozen=True):
    """A file of a context map, in the list shape."""

    path: str
    summary: str = ""
    tags: list[str] = []
    symbols: list[str] = []


class ExplicitPattern(_In, frozen=True):
    """A pattern named by a person or an agent in a context map: kept as written."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    file_path: str
    description: str = ""
    tags: list[str] = []
    capabilities: list[str] = []


class _RawContextMap(_In, frozen=True):
    project_id: ProjectId
    files: list[FileEntry] | dict[str, FileInfo] = []
    updated_at: str | None = None
    summary: str = ""
    stack: list[str] = []
    patterns: list[ExplicitPattern] = []


class ContextMap(msgspec.Struct, frozen=True, kw_only=True):
    """A decoded ``context_map.json`` with `files` always a list and every path checked."""

    project_id: str
    files: list[FileEntry]
    updated_at: str | None = None
    summary: str = ""
    stack: list[str] = []
    patterns: list[ExplicitPattern] = []


class ActiveProject(_In, frozen=True):
    project_id: ProjectId


class _Out(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=False):
    pass


class Source(_Out, frozen=True):
    """Where a pattern came from: the map (relative to `.memory/`), its sha256 and when."""

    context_map: str
    sha256: str
    extracted_at: str


class Pattern(_Out, frozen=True, omit_defaults=True):
    """One entry of ``patterns.json``.

    `symbols` and `staleSince` are the librarian's additions to the v1 shape (readers ignore
    unknown keys): the first feeds the index, the second dates a stale pattern for dropping.
    """

    id: str
    name: str
    description: str
    file_path: str
    project: str
    capabilities: list[str]
    tags: list[str]
    source: Source
    stale: bool = msgspec.field(default=False)
    symbols: list[str] = []
    stale_since: str | None = None


class PatternsFile(_Out, frozen=True):
    version: int
    generated_at: str
    patterns: list[Pattern]


_ERROR_PATH_RE = re.compile(r" - at `(\$[^`]*)`$")
_ENCODER = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    """Encode a Struct (or plain data) to compact JSON."""
    return _ENCODER.encode(value)


def _decode(data: bytes, type_: type[Any], file: str) -> Any:
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _ERROR_PATH_RE.search(text)
        field = match.group(1) if match else None
        reason = text[: match.start()] if match else text
        raise MemoryFormatError(reason, file=file, field=field) from exc
    except msgspec.DecodeError as exc:
        raise MemoryFormatError(f"not valid JSON ({exc})", file=file) from exc


def check_relative_path(path: str, *, file: str, field: str) -> str:
    """`path` normalised, or `MemoryFormatError` if it is absolute or climbs out (``..``)."""
    unified = path.replace("\\", "/")
    if not unified.strip() or "\x00" in unified:
        raise MemoryFormatError("path is empty or contains NUL", file=file, field=field)
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise MemoryFormatError(f"absolute path {path!r} is not allowed", file=file, field=field)
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise MemoryFormatError(f"path {path!r} climbs out of the project", file=file, field=field)
    return "/".join(parts)


def decode_projects(data: bytes, *, file: str = "projects.json") -> list[Project]:
    """Decode ``projects.json``: ``{"projects": [...]}`` or a bare list of the same objects."""
    stripped = data.lstrip()
    if stripped.startswith(b"["):
        projects: list[Project] = _decode(data, list[Project], file)
        prefix = "$"
    else:
        projects = _decode(data, _ProjectsObject, file).projects
        prefix = "$.projects"
    seen: set[str] = set()
    for i, project in enumerate(projects):
        if project.id in seen:
            raise MemoryFormatError(
                f"duplicate project id {project.id!r}", file=file, field=f"{prefix}[{i}].id"
            )
        seen.add(project.id)
    return projects


def decode_context_map(data: bytes, *, file: str, project_id: str | None = None) -> ContextMap:
    """Decode a ``context_map.json``; both shapes of `files`; every path checked.

    With `project_id`, the map's ``projectId`` must be that id (the folder it lives in).
    """
    raw: _RawContextMap = _decode(data, _RawContextMap, file)
    if project_id is not None and raw.project_id != project_id:
        raise MemoryFormatError(
            f"projectId {raw.project_id!r} does not match the folder {project_id!r}",
            file=file,
            field="$.projectId",
        )
    files: list[FileEntry] = []
    if isinstance(raw.files, dict):
        for key, info in raw.files.items():
            path = check_relative_path(key, file=file, field=f"$.files[{key!r}]")
            files.append(
                FileEntry(path=path, summary=info.summary, tags=info.tags, symbols=info.symbols)
            )
    else:
        for i, entry in enumerate(raw.files):
            path = check_relative_path(entry.path, file=file, field=f"$.files[{i}].path")
            files.append(msgspec.structs.replace(entry, path=path))
    patterns = [
        msgspec.structs.replace(
            p,
            file_path=check_relative_path(
                p.file_path, file=file, field=f"$.patterns[{i}].filePath"
            ),
        )
        for i, p in enumerate(raw.patterns)
    ]
    return ContextMap(
        project_id=raw.project_id,
        files=files,
        updated_at=raw.updated_at,
        summary=raw.summary,
        stack=raw.stack,
        patterns=patterns,
    )


def decode_patterns_file(data: bytes, *, file: str = "patterns.json") -> PatternsFile:
    """Decode ``patterns.json`` (the librarian's own output)."""
    result: PatternsFile = _decode(data, PatternsFile, file)
    return result


def decode_active_project(data: bytes, *, file: str = "active_project.json") -> str:
    """The project id in ``active_project.json``."""
    active: ActiveProject = _decode(data, ActiveProject, file)
    return active.project_id
