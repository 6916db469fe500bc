"""A Model Context Protocol server over stdio offering the librarian's tools.

Uses the official `mcp` SDK, an optional extra: ``pip install 'jarvis-kernel[mcp]'``
(``MCPServer`` in mcp 2.x, ``FastMCP`` in 1.x). Start it with
``python -m jarvis_kernel librarian mcp [--memory DIR]``. The tools are those of
`tools.mcp_tools` (same names, descriptions and arguments), answered by `tools.dispatch`.
"""

from __future__ import annotations

from typing import Any

import anyio

from ..errors import JarvisError
from .store import Librarian
from .tools import dispatch, mcp_tools

__all__ = ["build_server", "serve_stdio"]


def _server_class() -> Any:
    try:
        from mcp.server.mcpserver import MCPServer
    except ImportError:
        try:
            from mcp.server.fastmcp import FastMCP  # type: ignore[attr-defined,unused-ignore]
        except ImportError as exc:
            raise JarvisError(
                "the MCP server needs the optional `mcp` package: pip install 'jarvis-kernel[mcp]'"
            ) from exc
        return FastMCP
    return MCPServer


def build_server(librarian: Librarian) -> Any:
    """An MCP server whose tools search `librarian` (blocking calls in a worker thread)."""
    server = _server_class()("jarvis-librarian")
    descriptions = {tool["name"]: tool["description"] for tool in mcp_tools()}

    async def call(name: str, arguments: dict[str, Any]) -> Any:
        return await anyio.to_thread.run_sync(lambda: dispatch(librarian, name, arguments))

    async def search_patterns(query: str, project: str | None = None, limit: int = 5) -> Any:
        args = {"query": query, "limit": limit} | ({"project": project} if project else {})
        return await call("search_patterns", args)

    async def search_global_memory(query: str, limit: int = 5) -> Any:
        return await call("searchGlobalMemory", {"query": query, "limit": limit})

    server.add_tool(
        search_patterns, name="search_patterns", description=descriptions["search_patterns"]
    )
    server.add_tool(
        search_global_memory,
        name="searchGlobalMemory",
        description=descriptions["searchGlobalMemory"],
    )

    return server


def serve_stdio(librarian: Librarian) -> int:
    """Serve MCP on stdin/stdout until the client closes it. Returns the exit code."""
    server = build_server(librarian)
    try:
        anyio.run(server.run_stdio_async)
    finally:
        librarian.close()
    return 0
