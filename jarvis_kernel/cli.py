"""Command line: the only place that touches signals, `anyio.run` and the terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jarvis_kernel",
        description="Orchestration kernel for swarms of AI coding agents.",
    )
    parser.add_argument("--version", action="version", version=f"jarvis-kernel {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        sys.exit(2)
