"""Command line: the only place that touches signals, `anyio.run` and the terminal.

Each subcommand lives in a module with ``register(subparsers)``; the parser it adds sets
``handler`` to a function ``(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import JarvisError

# Modules whose `register(subparsers)` adds subcommands, in the order --help lists them.
_COMMAND_MODULES = (
    "jarvis_kernel.librarian.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jarvis_kernel",
        description="Orchestration kernel for swarms of AI coding agents.",
    )
    parser.add_argument("--version", action="version", version=f"jarvis-kernel {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # not built yet
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        sys.exit(2)
    try:
        code = handler(args)
    except JarvisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)
