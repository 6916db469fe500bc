"""Agent tools: `search_patterns` and `searchGlobalMemory`, in three schema shapes.

- `openai_tools()`: OpenAI function calling (``{"type": "function", "function": {...}}``)
- `gemini_function_declarations()`: Gemini ``functionDeclarations`` (OpenAPI subset: no
  ``additionalProperties``)
- `mcp_tools()`: Model Context Protocol tools (``{"name", "description", "inputSchema"}``)

`dispatch` runs a call by name with the model's arguments (a dict or a JSON string) and
returns a JSON-able dict: ``{"hits": [...]}`` or ``{"error": "..."}`` for bad arguments.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

import msgspec

from .store import Librarian

__all__ = [
    "TOOL_NAMES",
    "dispatch",
    "gemini_function_declarations",
    "mcp_tools",
    "openai_tools",
]

_QUERY = {
    "type": "string",
    "description": "What you need, in your own words or with exact names and error messages, "
    'e.g. "how did we set up auth in atelier-sam" or "NextAuth callback error".',
}
_LIMIT = {
    "type": "integer",
    "minimum": 1,
    "maximum": 20,
    "description": "How many hits to return (default 5).",
}

_TOOLS: dict[str, dict[str, Any]] = {
    "search_patterns": {
        "description": "Search the patterns (files and solutions) the swarm has recorded in "
        "its projects' context maps. With `project` (or the active project), that project's "
        "hits and other projects' hits are both returned, each labelled `active`.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": _QUERY,
                "project": {
                    "type": "string",
                    "description": "Project id to favour (the one you work on).",
                },
                "limit": _LIMIT,
            },
            "required": ["query"],
            "additionalProperties": False,
        },
    },
    "searchGlobalMemory": {
        "description": "Search every project's memory for a solution or an example, "
        "e.g. \"find a solution for 'NextAuth callback error' in other projects\". Returns "
        "the best files with their project, path, capabilities and a score.",
        "parameters": {
            "type": "object",
            "properties": {"query": _QUERY, "limit": _LIMIT},
            "required": ["query"],
            "additionalProperties": False,
        },
    },
}
TOOL_NAMES = tuple(_TOOLS)


def openai_tools() -> list[dict[str, Any]]:
    """The tools for OpenAI function calling (Chat Completions ``tools``)."""
    return [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": spec["description"],
                "parameters": copy.deepcopy(spec["parameters"]),
            },
        }
        for name, spec in _TOOLS.items()
    ]


def gemini_function_declarations() -> list[dict[str, Any]]:
    """The tools as Gemini ``functionDeclarations``."""
    out = []
    for name, spec in _TOOLS.items():
        params = copy.deepcopy(spec["parameters"])
        params.pop("additionalProperties", None)
        out.append({"name": name, "description": spec["description"], "parameters": params})
    return out


def mcp_tools() -> list[dict[str, Any]]:
    """The tools as MCP ``tools/list`` entries."""
    return [
        {
            "name": name,
            "description": spec["description"],
            "inputSchema": copy.deepcopy(spec["parameters"]),
        }
        for name, spec in _TOOLS.items()
    ]


class _Args(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    project: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5


def dispatch(librarian: Librarian, name: str, arguments: dict[str, Any] | str | bytes) -> Any:
    """Run tool `name` with `arguments`; bad input gives ``{"error": ...}``, not an exception."""
    if name not in _TOOLS:
        return {"error": f"unknown tool {name!r}; known: {', '.join(TOOL_NAMES)}"}
    try:
        if isinstance(arguments, str | bytes):
            args = msgspec.json.decode(arguments or b"{}", type=_Args)
        else:
            args = msgspec.convert(arguments, _Args)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return {"error": f"bad arguments for {name}: {exc}"}
    if name == "searchGlobalMemory":
        hits = librarian.search(args.query, limit=args.limit)
    else:
        project = args.project or librarian.active_project()
        hits = librarian.search(args.query, project=project, limit=args.limit)
    return {"hits": msgspec.to_builtins(hits)}
