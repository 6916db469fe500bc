"""The optional dense modes (embed.py, static.py, semantic.py) and the writer they rely on.

The model tests run only with the ``embed`` extra and the weights installed (docs/memory.md);
the word-table and ranking tests use a tiny hand-made table and need numpy only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jarvis_kernel.config import LibrarianConfig
from jarvis_kernel.fsutil import atomic_write_parts
from jarvis_kernel.librarian import embed
from jarvis_kernel.librarian.formats import Pattern, Source
from jarvis_kernel.librarian.index import PatternIndex
from jarvis_kernel.librarian.semantic import SemanticRanker
from jarvis_kernel.librarian.static import WordTable, default_table_path
from jarvis_kernel.librarian.store import Librarian
from jarvis_kernel.librarian.taxonomy import Glossary, GlossEntry, Taxonomy, TaxonomyData
from jarvis_kernel.librarian.vectors import Slots, dot, top

np = pytest.importorskip("numpy")
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


# -- a tiny table: 6 words in 384 dims, "cat"/"kitten" and "car"/"truck" close
_WORDS = ["cat", "kitten", "dog", "car", "truck", "road"]


def _table() -> WordTable:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((3, 384)).astype(np.float32)
    noise = 0.2 * rng.standard_normal((6, 384)).astype(np.float32)
    matrix = base[[0, 0, 1, 2, 2, 2]] + noise
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return WordTable(_WORDS, matrix, ranks=[500, 9000, 400, 300, 5000, 800])


def test_word_table_sums_weighted_centred_vectors_of_known_words() -> None:
    table = _table()
    got = table.sums(["the cat_dog", "unknown words only", "", "Kitten-kitten"])
    weights = {w: 1e-3 / (1e-3 + 0.1 / r) for w, r in zip(_WORDS, [500, 9000, 400], strict=False)}
    vec = table._matrix
    want = weights["cat"] * (vec[0] - table.center) + weights["dog"] * (vec[2] - table.center)
    assert np.allclose(got[0], want, atol=1e-5)
    assert not got[1].any() and not got[2].any()
    assert np.allclose(got[3], 2 * weights["kitten"] * (vec[1] - table.center), atol=1e-5)
    # a rarer word weighs more (smooth inverse frequency over its rank)
    assert weights["kitten"] > weights["cat"]
    assert table.missing(["cat zebra", "zebra okapi"]) == ["zebra", "okapi"]


def test_word_table_adds_words_and_round_trips_through_a_file(tmp_path: Path) -> None:
    table = _table()
    table.add([("zebra", table._matrix[3].copy())])
    assert table.missing(["zebra"]) == []
    assert float(table.vector("zebra") @ table.vector("car")) > 0.99
    path = tmp_path / "words.npz"
    table.save(path)
    again = WordTable.open(path, embedder=None)  # type: ignore[arg-type]
    assert again.missing(["zebra"]) == ["zebra"]  # added words belong to the index, not here
    assert np.allclose(again.sums(["cat road"]), table.sums(["cat road"]), atol=1e-5)
    assert again.projection.shape == table.projection.shape


def test_top_finds_the_best_scores_without_sorting_everything() -> None:
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(100_000).astype(np.float32)
    scores[rng.choice(100_000, 500, replace=False)] = -np.inf
    found = top(scores, 1000)
    best = set(np.argsort(-scores)[:1000].tolist())
    assert len(best & set(found.tolist())) >= 990
    assert np.isfinite(scores[found]).all()
    assert sorted(top(np.array([3.0, -np.inf, 1.0]), 5).tolist()) == [0, 2]


def test_slots_are_reused_after_a_project_is_dropped() -> None:
    slots = Slots(np.eye(384, 4, dtype=np.float32))
    first = slots.alloc(3)
    slots.projects["a"] = type("P", (), {"slots": first, "pairs": np.zeros((0, 2), np.int64)})()
    slots.code[first] = 0
    slots.drop("a")
    assert (slots.code[first] == -1).all()
    again = slots.alloc(3)
    assert sorted(again.tolist()) == sorted(first.tolist())
    assert len(set(slots.alloc(100).tolist()) & set(again.tolist())) == 0
    assert slots.used == 103 and len(slots.code) >= 103


def test_slots_are_sized_exactly_for_a_full_load_and_grow_by_half_after() -> None:
    slots = Slots(np.eye(384, 4, dtype=np.float32))
    slots.reserve(1000)
    assert slots.alloc(1000).tolist() == list(range(1000))
    assert len(slots.code) == slots.used == 1000  # no slack for a query to scan
    slots.alloc(1)
    assert slots.used == 1001 and len(slots.code) == 1500


def test_products_without_blas_match_numpy() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((50, 8)).astype(np.float32)
    vec = rng.standard_normal(8).astype(np.float32)
    assert np.allclose(dot(matrix, vec), matrix @ vec, atol=1e-5)
    assert np.allclose(dot(vec, matrix.T), vec @ matrix.T, atol=1e-5)


def _pattern(project: str, path: str, description: str) -> Pattern:
    source = Source(context_map=f"projects/{project}/context_map.json", sha256="x", extracted_at="")
    return Pattern(
        id=f"{project}:{path}",
        name=path,
        description=description,
        file_path=path,
        project=project,
        capabilities=[],
        tags=[],
        source=source,
    )


def test_ranker_follows_the_index_project_by_project(tmp_path: Path) -> None:
    from jarvis_kernel.librarian.index import ProjectState

    state = ProjectState(map_rel="m", mtime_ns=0, size=0, sha256="x")
    index = PatternIndex(tmp_path / "lib.sqlite", glossary=Glossary([]))
    ranker = SemanticRanker(_table())
    with index.transaction():
        index.replace_project("zoo", [_pattern("zoo", "a.txt", "cat and kitten")], state)
        index.replace_project("garage", [_pattern("garage", "b.txt", "car truck road")], state)
    assert ranker.sync(index) == 2
    assert len(ranker._slots.code) == 2  # a full load: arrays of the right size
    assert ranker.sync(index) == 0  # nothing touched since
    top = ranker.rank(index, "kitten", 2, (None, False))
    assert [r.project for r in top] == ["zoo", "garage"]
    found, scores = ranker.nearest("kitten", 2, (None, False))
    assert scores.tolist() == sorted(scores.tolist(), reverse=True)
    assert [r.rank for r in ranker.rows(index, found, scores)] == [r.rank for r in top]
    assert [r.project for r in ranker.rank(index, "kitten", 2, ("zoo", True))] == ["garage"]
    with index.transaction():
        index.replace_project("zoo", [_pattern("zoo", "c.txt", "truck")], state)
    assert ranker.sync(index) == 1
    assert {r.file_path for r in ranker.rank(index, "car", 5, (None, False))} == {"b.txt", "c.txt"}
    index.close()


def test_ranker_fits_a_basis_to_many_patterns_and_still_ranks_exactly(tmp_path: Path) -> None:
    from jarvis_kernel.librarian.index import ProjectState

    state = ProjectState(map_rel="m", mtime_ns=0, size=0, sha256="x")
    index = PatternIndex(tmp_path / "lib.sqlite", glossary=Glossary([]))
    ranker = SemanticRanker(_table())
    rng = np.random.default_rng(5)
    with index.transaction():
        for p in range(3):
            texts = [" ".join(rng.choice(_WORDS, 4)) for _ in range(500)]
            patterns = [_pattern(f"p{p}", f"f{n}.txt", t) for n, t in enumerate(texts)]
            index.replace_project(f"p{p}", patterns, state)
    assert ranker.sync(index) == 1500
    slots = ranker._slots
    assert slots.fitted == 1500  # a basis of their own (vectors.py)
    for query, scope in [("kitten road", (None, False)), ("truck", ("p1", True))]:
        _, scores = ranker.nearest(query, 10, scope)
        exact = slots.full[: slots.used] @ ranker.query_vector(query)
        if scope[0] is not None:
            exact[slots.code[: slots.used] == slots.codes[scope[0]]] = -np.inf
        assert np.allclose(scores, np.sort(exact)[::-1][:10], atol=1e-5)
    index.close()


@needs_embed
def test_default_table_path_is_per_user_and_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_table_path()
    assert path is not None and path.parent == tmp_path / "jarvis-kernel"


@needs_embed
@pytest.mark.parametrize("mode", ["static", "semantic"])
def test_dense_modes_vectorise_incrementally_and_rank_by_meaning(tmp_path: Path, mode: str) -> None:
    memory = _memory(tmp_path)
    lib = Librarian(memory, config=LibrarianConfig(search_mode=mode))  # type: ignore[arg-type]
    try:
        first = lib.index()
        assert first.embedded == 2
        assert lib.index().embedded == 0
        hits = lib.search("night mode switch", limit=1)
        assert [h.file_path for h in hits] == ["src/theme.js"]
        # a word outside the model's vocabulary is run through it once and stored
        stored = dict(lib._index.get_words())
        vocab = embed.Embedder.load().tokenizer.get_vocab()
        assert stored and not set(stored) & set(vocab)
        cmap = memory / "projects" / "shop" / "context_map.json"
        files = [{"path": "src/theme.js", "summary": "Theme toggle following the OS setting"}]
        cmap.write_text(json.dumps({"projectId": "shop", "files": files}))
        assert lib.index().embedded == 1
        assert [h.file_path for h in lib.search("take card payments", limit=1)] == ["src/theme.js"]
    finally:
        lib.close()


@needs_embed
def test_glossary_step_reaches_the_file_naming_the_term(tmp_path: Path) -> None:
    memory = _memory(tmp_path)
    text = "online payment processor: cards, hosted pay pages and refunds"
    taxonomy = Taxonomy(TaxonomyData(glossary=[GlossEntry(terms=["stripe"], text=text)]))
    lib = Librarian(memory, config=LibrarianConfig(search_mode="static"), taxonomy=taxonomy)
    try:
        lib.index()
        hits = lib.search("refund a purchase made by card", limit=1, mode="static")
        assert [h.file_path for h in hits] == ["src/pages/api/checkout.ts"]
    finally:
        lib.close()


@pytest.mark.parametrize("mode", ["static", "semantic"])
def test_dense_modes_fall_back_to_expanded_without_the_model(tmp_path: Path, mode: str) -> None:
    memory = _memory(tmp_path)
    config = LibrarianConfig(search_mode=mode, embed_model_dir=str(tmp_path / "none"))  # type: ignore[arg-type]
    lib = Librarian(memory, config=config)
    try:
        assert lib.index().embedded == 0
        expanded = lib.search("stripe checkout", mode="expanded")
        assert lib.search("stripe checkout") == expanded
    finally:
        lib.close()


class _FakeTokenizer:
    @staticmethod
    def get_vocab() -> dict[str, int]:
        return {w: 2000 + i for i, w in enumerate(_WORDS)} | {"##s": 1500, "[CLS]": 101}


class _FakeModel:
    """Encodes the six words of `_table` as it does; no other."""

    tokenizer = _FakeTokenizer()

    def encode(self, texts: list[str], batch: int = 64) -> object:
        table = _table()
        return np.stack([table.vector(t) + table.center for t in texts])


def test_a_missing_or_corrupt_table_file_is_built_again(tmp_path: Path) -> None:
    path = tmp_path / "words.npz"
    path.write_bytes(b"not a zip")
    table = WordTable.open(path, _FakeModel())  # type: ignore[arg-type]
    assert table.build_s > 0
    assert table.missing(["cat truck road zebra"]) == ["zebra"]
    again = WordTable.open(path, embedder=None)  # type: ignore[arg-type]
    assert again.build_s == 0.0  # read from the file this time
    assert np.allclose(again.sums(["kitten road"]), table.sums(["kitten road"]), atol=1e-5)


def test_the_word_table_is_built_by_index_never_by_a_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(embed.Embedder, "load", classmethod(lambda cls, folder=None: _FakeModel()))
    path = tmp_path / "words.npz"
    config = LibrarianConfig(static_table_path=str(path))  # the default mode: static
    assert config.search_mode == "static"
    caplog.set_level("INFO", logger="jarvis_kernel.librarian.store")
    lib = Librarian(_memory(tmp_path), config=config, taxonomy=Taxonomy(TaxonomyData()))
    try:
        lib.index(build_table=False)  # as the kernel's service does
        for _ in range(2):
            assert lib.search("cat road") == lib.search("cat road", mode="expanded")
        assert not path.exists()
        assert sum("no word table yet" in r.getMessage() for r in caplog.records) == 1
        lib.index()  # as `librarian index` does
        assert path.is_file()
        assert isinstance(lib._semantic, SemanticRanker)
    finally:
        lib.close()


def test_words_outside_the_vocabulary_are_cached_beside_the_table(tmp_path: Path) -> None:
    path = tmp_path / "words.npz"
    table = WordTable.open(path, _FakeModel())  # type: ignore[arg-type]
    table.encode_and_cache(["kitten zebra", "yak"])
    assert (tmp_path / "words.extra.npz").is_file()
    again = WordTable.open(path, embedder=None)  # type: ignore[arg-type]
    assert again.missing(["zebra yak cat"]) == []  # no model needed: read beside the table
    assert np.array_equal(again.sums(["zebra yak"]), table.sums(["zebra yak"]))
