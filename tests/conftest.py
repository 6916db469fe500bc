"""Shared fixtures. Real services (Redis, Docker) live in tests/fixtures/ as plugins."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.fixtures.services"]


@pytest.fixture(scope="session", autouse=True)
def word_table() -> None:
    """The librarian's word table (its default search mode needs it), as a machine has it
    after its first ``librarian index``: built once per machine (a minute or more, the first
    time only) and the glossary's words beside it. Without it every search ranks as
    ``expanded``, so which tests saw ``static`` would depend on their order, and a test
    that happens to index first would spend the build inside its own timeout. Nothing to do
    without the embed extra."""
    from jarvis_kernel.librarian import embed

    if not embed.available():
        return
    from jarvis_kernel.librarian.semantic import SemanticRanker
    from jarvis_kernel.librarian.static import WordTable, default_table_path
    from jarvis_kernel.librarian.taxonomy import load_taxonomy

    table = WordTable.open(default_table_path(), embed.Embedder.load())
    SemanticRanker(table, load_taxonomy().glossary)  # caches the glossary's words
