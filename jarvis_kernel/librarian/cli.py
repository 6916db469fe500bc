"""``python -m jarvis_kernel librarian index|search|mcp``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from ..config import load_config
from .search import Hit
from .store import Librarian

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``librarian`` command and its subcommands."""
    parser = subparsers.add_parser("librarian", help="cross-project memory: index and search")
    sub = parser.add_subparsers(dest="librarian_command", metavar="SUBCOMMAND", required=True)

    index = sub.add_parser("index", help="build or update patterns.json and the search index")
    _common(index)
    index.add_argument("--json", action="store_true", help="print the report as JSON")
    index.set_defaults(handler=_index)

    search = sub.add_parser("search", help="search the patterns of every project")
    search.add_argument("query")
    _common(search)
    search.add_argument("--project", help="the active project (default: active_project.json)")
    search.add_argument("--all", action="store_true", help="ignore the active project")
    search.add_argument("--limit", type=int, default=5, help="hits per group (default 5)")
    search.add_argument(
        "--mode", choices=("keyword", "expanded", "fused", "semantic", "static"), default=None
    )
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    search.set_defaults(handler=_search)

    mcp = sub.add_parser("mcp", help="serve search_patterns over MCP (stdio)")
    _common(mcp)
    mcp.set_defaults(handler=_mcp)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory", metavar="DIR", help="the memory folder (default .memory)")
    parser.add_argument("--config", metavar="FILE", help="a jarvis TOML config file")


def _open(args: argparse.Namespace) -> Librarian:
    config = load_config(args.config)
    return Librarian.from_config(config, memory_dir=args.memory)


def _index(args: argparse.Namespace) -> int:
    lib = _open(args)
    try:
        report = lib.index()
    finally:
        lib.close()
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        print(
            f"{report.projects} projects, {report.patterns} patterns indexed "
            f"({len(report.reread)} maps re-read, {report.stale} stale, "
            f"{report.dropped} dropped) in {report.elapsed_s:.3f} s"
        )
        for error in report.errors:
            print(f"skipped: {error}", file=sys.stderr)
    return 0


def _search(args: argparse.Namespace) -> int:
    if args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    lib = _open(args)
    try:
        project = None if args.all else (args.project or lib.active_project())
        hits = lib.search(args.query, project=project, limit=args.limit, mode=args.mode)
    finally:
        lib.close()
    if args.json:
        sys.stdout.write(msgspec.json.encode(hits).decode() + "\n")
        return 0
    _print_hits(hits, project)
    return 0


def _print_hits(hits: list[Hit], project: str | None) -> None:
    if not hits:
        print("no match")
        return
    groups = (
        [("", hits)]
        if project is None
        else [
            (f"in {project} (active)", [h for h in hits if h.active]),
            ("in other projects", [h for h in hits if not h.active]),
        ]
    )
    for title, group in groups:
        if title:
            print(f"{title}:" if group else f"{title}: no match")
        for hit in group:
            caps = ", ".join(hit.capabilities)
            print(
                f"  {hit.score:8.3f}  {hit.project}: {hit.file_path}  -  {hit.name}"
                + (f"  [{caps}]" if caps else "")
            )
            if hit.description:
                print(f"            {hit.description}")


def _mcp(args: argparse.Namespace) -> int:
    from .mcp import serve_stdio

    return serve_stdio(_open(args))
