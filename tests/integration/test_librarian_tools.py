"""Agent tool schemas, the dispatcher, and the MCP server over stdio."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import anyio
import pytest

from jarvis_kernel.librarian.store import Librarian
from jarvis_kernel.librarian.tools import (
    TOOL_NAMES,
    dispatch,
    gemini_function_declarations,
    mcp_tools,
    openai_tools,
)
from tests.support.memory import copy_sample_memory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def memory(tmp_path: Path) -> Path:
    mem = tmp_path / "memory"
    copy_sample_memory(mem)
    return mem


def test_the_three_shapes_describe_the_same_tools() -> None:
    assert TOOL_NAMES == ("search_patterns", "searchGlobalMemory")
    openai = openai_tools()
    assert [t["type"] for t in openai] == ["function", "function"]
    assert [t["function"]["name"] for t in openai] == list(TOOL_NAMES)
    assert openai[0]["function"]["parameters"]["required"] == ["query"]
    gemini = gemini_function_declarations()
    assert [t["name"] for t in gemini] == list(TOOL_NAMES)
    assert all("additionalProperties" not in t["parameters"] for t in gemini)
    mcp = mcp_tools()
    assert [t["name"] for t in mcp] == list(TOOL_NAMES)
    assert mcp[1]["inputSchema"]["properties"]["query"]["type"] == "string"


def test_dispatch_answers_and_rejects_bad_arguments(memory: Path) -> None:
    lib = Librarian(memory)
    result = dispatch(lib, "searchGlobalMemory", '{"query": "NextAuth callback error"}')
    assert result["hits"][0]["filePath"] == "src/pages/api/auth/[...nextauth].ts"
    scoped = dispatch(lib, "search_patterns", {"query": "prisma schema", "project": "jarvis"})
    assert {h["active"] for h in scoped["hits"]} <= {True, False}
    assert "error" in dispatch(lib, "search_patterns", {"query": ""})
    assert "error" in dispatch(lib, "search_patterns", {"query": "x", "limit": "many"})
    assert "error" in dispatch(lib, "search_patterns", "{not json")
    assert "unknown tool" in dispatch(lib, "rm_rf", {})["error"]
    lib.close()


@pytest.mark.skipif(importlib.util.find_spec("mcp") is None, reason="optional extra `mcp`")
async def test_mcp_server_over_stdio(memory: Path) -> None:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "jarvis_kernel", "librarian", "mcp", "--memory", str(memory)],
        cwd=str(ROOT),
    )
    with anyio.fail_after(30):
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
            assert {t.name for t in listed.tools} == set(TOOL_NAMES)
            result = await session.call_tool(
                "searchGlobalMemory", {"query": "stripe webhook signature"}
            )
            payload = json.loads(result.content[0].text)  # type: ignore[union-attr]
            assert payload["hits"][0]["filePath"] == "src/pages/api/webhooks/stripe.ts"
