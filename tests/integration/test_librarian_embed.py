"""The optional sentence-embedding path (embed.py, semantic.py) and the writer it relies on.

The model tests run only with the ``embed`` extra and the weights installed (docs/memory.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jarvis_kernel.config import LibrarianConfig
from jarvis_kernel.fsutil import atomic_write_parts
from jarvis_kernel.librarian import embed
from jarvis_kernel.librarian.index import embed_key
from jarvis_kernel.librarian.store import Librarian
from jarvis_kernel.librarian.taxonomy import GlossEntry, Taxonomy, TaxonomyData

needs_embed = pytest.mark.skipif(
    not embed.available(), reason="needs the embed extra and the model weights"
)


def test_atomic_write_parts_writes_the_concatenation(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    parts = [b"a" * 10, b"", b"b" * 70_000, *(b"%d," % i for i in range(3000))]
    atomic_write_parts(target, parts)
    assert target.read_bytes() == b"".join(parts)
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


@needs_embed
def test_numpy_minilm_matches_known_behaviour() -> None:
    model = embed.Embedder.load()
    vecs = model.encode(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
            "let users sign in with their GitHub account",
            "NextAuth config with GitHub OAuth provider",
        ]
    )
    sims = vecs @ vecs.T
    assert vecs.shape == (5, embed.DIMS)
    assert abs(float(sims[0, 0]) - 1.0) < 1e-4
    # sentence-transformers' documented cosine for this pair is 0.7553
    assert abs(float(sims[0, 1]) - 0.7553) < 0.005
    assert sims[0, 1] > 0.5 > sims[0, 2]
    assert sims[3, 4] > max(sims[3, 0], sims[3, 2])
    # batching (and the padding it needs) does not change a sentence's vector
    alone = model.encode(["The girl is carrying a baby."])[0]
    assert float(alone @ vecs[2]) > 0.9999


def _memory(tmp_path: Path) -> Path:
    memory = tmp_path / "memory"
    folder = memory / "projects" / "shop"
    folder.mkdir(parents=True)
    (memory / "projects.json").write_text(json.dumps({"projects": [{"id": "shop"}]}))
    files = [
        {"path": "src/pages/api/checkout.ts", "summary": "Stripe Checkout Session from the cart"},
        {"path": "src/theme.js", "summary": "Dark/light theme toggle stored in localStorage"},
    ]
    (folder / "context_map.json").write_text(json.dumps({"projectId": "shop", "files": files}))
    return memory


@needs_embed
def test_semantic_mode_embeds_incrementally_and_ranks_by_meaning(tmp_path: Path) -> None:
    memory = _memory(tmp_path)
    lib = Librarian(memory, config=LibrarianConfig(search_mode="semantic"))
    try:
        first = lib.index()
        assert first.embedded == 2
        assert lib.index().embedded == 0
        hits = lib.search("night mode switch", limit=1)
        assert [h.file_path for h in hits] == ["src/theme.js"]
    finally:
        lib.close()


@needs_embed
def test_semantic_mode_embeds_the_glossary_once_and_keeps_it(tmp_path: Path) -> None:
    memory = _memory(tmp_path)
    text = "online payment processor: cards, hosted pay pages and refunds"
    taxonomy = Taxonomy(TaxonomyData(glossary=[GlossEntry(terms=["stripe"], text=text)]))
    lib = Librarian(memory, config=LibrarianConfig(search_mode="semantic"), taxonomy=taxonomy)
    try:
        assert lib.index().embedded == 2
        key = embed_key(text)
        assert key in lib._index.get_embeddings([key])
        # a changed map prunes the embeddings no pattern uses: not the glossary's
        cmap = memory / "projects" / "shop" / "context_map.json"
        files = [{"path": "src/theme.js", "summary": "Theme toggle following the OS setting"}]
        cmap.write_text(json.dumps({"projectId": "shop", "files": files}))
        assert lib.index().embedded == 1
        assert key in lib._index.get_embeddings([key])
        assert [h.file_path for h in lib.search("take card payments", limit=1)] == ["src/theme.js"]
    finally:
        lib.close()


def test_semantic_mode_falls_back_to_expanded_without_the_model(tmp_path: Path) -> None:
    memory = _memory(tmp_path)
    config = LibrarianConfig(search_mode="semantic", embed_model_dir=str(tmp_path / "none"))
    lib = Librarian(memory, config=config)
    try:
        assert lib.index().embedded == 0
        expanded = lib.search("stripe checkout", mode="expanded")
        assert lib.search("stripe checkout") == expanded
    finally:
        lib.close()
