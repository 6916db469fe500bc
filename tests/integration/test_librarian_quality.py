"""Retrieval quality over the sample `.memory/`: recall@3 and MRR, per half of the query set.

The queries (tests/data/librarian_queries.json) were written before tuning, as agents ask;
a second, held-out set of paraphrases (tests/data/librarian_queries_heldout.json) was written
before the ``semantic`` mode was built, without running any method on it; a third
(tests/data/librarian_queries_heldout2.json) after the taxonomy's everyday-phrasing lexicon was
written and before anything was measured with it (never used for tuning); a fourth
(tests/data/librarian_queries_heldout3.json) before the taxonomy's glossary and the semantic
mode's glossary step were tried, measured once with them final (never used for tuning); a
fifth (tests/data/librarian_queries_heldout4.json) before the static word vectors were tried,
measured once with them final (never used for tuning).

Modes measured: ``expanded`` (keywords with the taxonomy's synonyms and glossary; always),
``static`` (the default: static word vectors distilled from the sentence model, fused with
``expanded``) and ``semantic`` (static pattern vectors, the query embedded by the model); the
last two are skipped unless the ``embed`` extra and the model weights are installed (without
them ``static`` falls back to ``expanded``): docs/memory.md.
Run as a script to print the comparison of ranking modes recorded in benchmarks/RESULTS.md:
``.venv/bin/python -m tests.integration.test_librarian_quality``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jarvis_kernel.config import LibrarianConfig
from jarvis_kernel.librarian import embed
from jarvis_kernel.librarian.search import Mode
from jarvis_kernel.librarian.store import Librarian
from jarvis_kernel.librarian.taxonomy import (
    Glossary,
    GlossEntry,
    Taxonomy,
    TaxonomyData,
    load_taxonomy,
)
from jarvis_kernel.librarian.text import plain_words, stem, words
from tests.support.memory import copy_sample_memory

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / ".memory"
QUERIES = json.loads((ROOT / "tests/data/librarian_queries.json").read_text())["queries"]
HELDOUT = json.loads((ROOT / "tests/data/librarian_queries_heldout.json").read_text())["queries"]
HELDOUT2 = json.loads((ROOT / "tests/data/librarian_queries_heldout2.json").read_text())["queries"]
HELDOUT3 = json.loads((ROOT / "tests/data/librarian_queries_heldout3.json").read_text())["queries"]
HELDOUT4 = json.loads((ROOT / "tests/data/librarian_queries_heldout4.json").read_text())["queries"]
PARAPHRASE_SETS = [QUERIES, HELDOUT, HELDOUT2, HELDOUT3, HELDOUT4]
PARAPHRASE_IDS = ["original", "heldout", "heldout2", "heldout3", "heldout4"]
needs_embed = pytest.mark.skipif(
    not embed.available(), reason="semantic mode needs the embed extra and the model weights"
)


def _copy_sample(dest: Path) -> Path:
    memory = dest / "memory"
    copy_sample_memory(memory)
    return memory


def evaluate(
    lib: Librarian, mode: Mode, queries: list[dict[str, Any]] = QUERIES
) -> dict[str, dict[str, float]]:
    """recall@3 and MRR (over the top 10) for each kind of query."""
    out: dict[str, dict[str, float]] = {}
    for kind in ("direct", "paraphrase"):
        items = [q for q in queries if q["kind"] == kind]
        if not items:
            continue
        hits3 = 0
        rr = 0.0
        for item in items:
            answers = {tuple(a) for a in item["answers"]}
            ranked = [(h.project, h.file_path) for h in lib.search(item["q"], limit=10, mode=mode)]
            rank = next((i for i, key in enumerate(ranked, 1) if key in answers), None)
            hits3 += rank is not None and rank <= 3
            rr += 1.0 / rank if rank else 0.0
        out[kind] = {"n": len(items), "recall@3": hits3 / len(items), "mrr": rr / len(items)}
    return out


def misses(lib: Librarian, mode: Mode, queries: list[dict[str, Any]] = QUERIES) -> list[str]:
    lines = []
    for item in queries:
        answers = {tuple(a) for a in item["answers"]}
        ranked = [(h.project, h.file_path) for h in lib.search(item["q"], limit=3, mode=mode)]
        if not answers & set(ranked):
            lines.append(f"{item['kind']}: {item['q']!r} -> {ranked}")
    return lines


def _answer_text(project: str, file_path: str) -> str:
    cmap = json.loads((SAMPLE / "projects" / project / "context_map.json").read_text())
    files = cmap["files"]
    entries: list[dict[str, Any]] = (
        [dict(v, path=k) for k, v in files.items()] if isinstance(files, dict) else files
    )
    parts: list[str] = []
    for entry in entries:
        if entry["path"] == file_path:
            parts += [
                entry["path"],
                entry.get("summary", ""),
                *entry.get("tags", []),
                *entry.get("symbols", []),
            ]
    for pattern in cmap.get("patterns", []):
        if pattern["filePath"] == file_path:
            parts += [pattern["name"], pattern.get("description", ""), *pattern.get("tags", [])]
    return " ".join(parts)


def _stems(text: str) -> set[str]:
    return {stem(w) for w in [*words(text), *plain_words(text)]}


@pytest.mark.parametrize(
    ("queries", "least", "paraphrase_share"),
    [
        (QUERIES, 40, 0.5),
        (HELDOUT, 24, 1.0),
        (HELDOUT2, 20, 1.0),
        (HELDOUT3, 30, 1.0),
        (HELDOUT4, 30, 1.0),
    ],
    ids=PARAPHRASE_IDS,
)
def test_query_set_is_big_enough_and_paraphrases_share_no_word(
    queries: list[dict[str, Any]], least: int, paraphrase_share: float
) -> None:
    kinds = [q["kind"] for q in queries]
    assert len(queries) >= least
    assert kinds.count("paraphrase") + 1 >= paraphrase_share * len(queries)
    for item in queries:
        if item["kind"] != "paraphrase":
            continue
        for project, file_path in item["answers"]:
            shared = _stems(item["q"]) & _stems(_answer_text(project, file_path))
            assert not shared, f"{item['q']!r} shares {shared} with {project}:{file_path}"


def test_glossary_finds_terms_by_form_and_in_order_of_mention() -> None:
    glossary = Glossary(
        [
            GlossEntry(terms=["redis", "ioredis"], text="in-memory data store"),
            GlossEntry(terms=["three.js", "threejs"], text="3D graphics in the browser"),
            GlossEntry(terms=["dead letter"], text="holding place for failed messages"),
            GlossEntry(terms=["webhook"], text="HTTP callback from another service"),
            GlossEntry(terms=["git"], text="version control"),
        ]
    )
    # plurals, ".js" names, order of first mention (natural text first, then identifiers)
    assert glossary.match(["Webhooks for a three.js scene", "ioredis"], ["src/redis.ts"]) == [
        3,
        1,
        0,
    ]
    # identifiers by their parts; a word is not matched inside another (GitHub is not git)
    assert glossary.match(["GitHub Actions"], ["src/deadLetter.ts"]) == [2]
    assert glossary.match(["nothing here"], ["src/app.ts"]) == []


def _frob_memory(dest: Path) -> Path:
    folder = dest / "projects" / "shop"
    folder.mkdir(parents=True)
    (dest / "projects.json").write_text(json.dumps({"projects": [{"id": "shop"}]}))
    files = [
        {"path": "src/frob.ts", "summary": "Frobnicator client with retries"},
        {"path": "src/theme.js", "summary": "Dark/light theme toggle stored in localStorage"},
    ]
    (folder / "context_map.json").write_text(json.dumps({"projectId": "shop", "files": files}))
    return dest


@pytest.mark.parametrize("with_glossary", [True, False])
def test_glossary_lets_everyday_words_find_the_file_naming_a_term(
    tmp_path: Path, with_glossary: bool
) -> None:
    entries = [GlossEntry(terms=["frobnicator"], text="machine that polishes widgets")]
    taxonomy = Taxonomy(TaxonomyData(glossary=entries if with_glossary else []))
    lib = Librarian(_frob_memory(tmp_path / "memory"), taxonomy=taxonomy)
    try:
        lib.index()
        found = [h.file_path for h in lib.search("polish the widgets", mode="expanded")]
    finally:
        lib.close()
    assert found == (["src/frob.ts"] if with_glossary else [])


@pytest.fixture(scope="module")
def librarian(tmp_path_factory: pytest.TempPathFactory) -> Any:
    lib = Librarian(_copy_sample(tmp_path_factory.mktemp("quality")))
    lib.index()
    yield lib
    lib.close()


def test_recall_at_3_on_direct_queries_meets_the_target(librarian: Librarian) -> None:
    scores = evaluate(librarian, "expanded")
    detail = "\n".join(misses(librarian, "expanded"))
    assert scores["direct"]["recall@3"] >= 0.9, f"{scores}\n{detail}"
    assert scores["direct"]["mrr"] >= 0.9, f"{scores}\n{detail}"


def test_expansion_helps_paraphrases(librarian: Librarian) -> None:
    keyword = evaluate(librarian, "keyword")["paraphrase"]
    expanded = evaluate(librarian, "expanded")["paraphrase"]
    assert expanded["recall@3"] > keyword["recall@3"]


def test_the_default_mode_is_static() -> None:
    # its recall is checked below, per set ("static"); `expanded` (the fallback without the
    # embed extra or the word table) reaches 0.67-0.79 on the paraphrases: RESULTS.md
    assert LibrarianConfig().search_mode == "static"


@needs_embed
@pytest.mark.parametrize("mode", ["static", "semantic"])
def test_dense_modes_keep_direct_queries_and_beat_expanded(
    librarian: Librarian, mode: Mode
) -> None:
    dense = evaluate(librarian, mode)
    assert dense["direct"]["recall@3"] >= 0.9, dense
    for queries in PARAPHRASE_SETS:
        expanded = evaluate(librarian, "expanded", queries)["paraphrase"]
        assert evaluate(librarian, mode, queries)["paraphrase"]["recall@3"] > expanded["recall@3"]


_MISSED = {
    "static": pytest.mark.xfail(
        strict=True,
        reason="target not met on this set: static word vectors distilled from "
        "all-MiniLM-L6-v2, with the glossary step, fused with expanded reach recall@3 0.93 "
        "(original), 0.90 (held-out), 0.90 (held-out 2), 0.88 (held-out 3), 0.86 (held-out 4) "
        "on paraphrases (benchmarks/RESULTS.md)",
    ),
    "semantic": pytest.mark.xfail(
        strict=True,
        reason="target not met on this set: static pattern vectors against the query's "
        "all-MiniLM-L6-v2 embedding, with the glossary step, reach recall@3 0.97 (original), "
        "0.87 (held-out), 0.93 (held-out 2), 0.88 (held-out 3), 0.90 (held-out 4) on "
        "paraphrases (benchmarks/RESULTS.md)",
    ),
}
_MISSED_ON = {"static": {"heldout3", "heldout4"}, "semantic": {"heldout", "heldout3"}}


@needs_embed
@pytest.mark.parametrize(
    ("mode", "queries"),
    [
        pytest.param(
            mode,
            queries,
            id=f"{mode}-{name}",
            marks=[_MISSED[mode]] if name in _MISSED_ON[mode] else [],
        )
        for mode in ("static", "semantic")
        for queries, name in zip(PARAPHRASE_SETS, PARAPHRASE_IDS, strict=True)
    ],
)
def test_dense_recall_at_3_on_paraphrases_meets_the_target(
    librarian: Librarian, mode: Mode, queries: list[dict[str, Any]]
) -> None:
    scores = evaluate(librarian, mode, queries)
    assert scores["paraphrase"]["recall@3"] >= 0.9, scores


def _without_glossary() -> Taxonomy:
    data = load_taxonomy().data
    return Taxonomy(msgspec.structs.replace(data, glossary=[]))


def main() -> None:
    """Print recall@3 / MRR of every mode on every set (``-v``: the misses; ``--ablation``:
    also without the taxonomy's glossary, i.e. the methods as they were before it)."""
    import tempfile

    variants: list[tuple[str, Taxonomy | None]] = [("", None)]
    if "--ablation" in sys.argv:
        variants.append((" (no glossary)", _without_glossary()))
    with tempfile.TemporaryDirectory() as tmp:
        for n, (label, taxonomy) in enumerate(variants):
            lib = Librarian(_copy_sample(Path(tmp) / str(n)), taxonomy=taxonomy)
            lib.index()
            modes: list[Mode] = ["keyword", "expanded", "fused"]
            modes += ["static", "semantic"] if embed.available() else []
            for mode in modes:
                for name, queries in zip(PARAPHRASE_IDS, PARAPHRASE_SETS, strict=True):
                    print(f"{mode}{label}", name, json.dumps(evaluate(lib, mode, queries)))
                    if "-v" in sys.argv:
                        print("\n".join("   " + m for m in misses(lib, mode, queries)))
            lib.close()


if __name__ == "__main__":
    main()
