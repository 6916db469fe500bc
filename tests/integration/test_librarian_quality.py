"""Retrieval quality over the sample `.memory/`: recall@3 and MRR, per half of the query set.

The queries (tests/data/librarian_queries.json) were written before tuning, as agents ask;
a second, held-out set of paraphrases (tests/data/librarian_queries_heldout.json) was written
before the ``semantic`` mode was built, without running any method on it; a third
(tests/data/librarian_queries_heldout2.json) after the taxonomy's everyday-phrasing lexicon was
written and before anything was measured with it (never used for tuning).

Modes measured: ``expanded`` (the default, always) and ``semantic`` (sentence embeddings;
skipped unless the ``embed`` extra and the model weights are installed: docs/memory.md).
Run as a script to print the comparison of ranking modes recorded in benchmarks/RESULTS.md:
``.venv/bin/python -m tests.integration.test_librarian_quality``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from jarvis_kernel.librarian import embed
from jarvis_kernel.librarian.search import Mode
from jarvis_kernel.librarian.store import Librarian
from jarvis_kernel.librarian.text import plain_words, stem, words
from tests.support.memory import copy_sample_memory

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / ".memory"
QUERIES = json.loads((ROOT / "tests/data/librarian_queries.json").read_text())["queries"]
HELDOUT = json.loads((ROOT / "tests/data/librarian_queries_heldout.json").read_text())["queries"]
HELDOUT2 = json.loads((ROOT / "tests/data/librarian_queries_heldout2.json").read_text())["queries"]
PARAPHRASE_SETS = [QUERIES, HELDOUT, HELDOUT2]
PARAPHRASE_IDS = ["original", "heldout", "heldout2"]
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
    [(QUERIES, 40, 0.5), (HELDOUT, 24, 1.0), (HELDOUT2, 20, 1.0)],
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


@pytest.mark.xfail(
    strict=True,
    reason="target not met: taxonomy synonyms and the everyday-phrasing lexicon reach recall@3 "
    "0.52 (original), 0.23 (held-out), 0.30 (held-out 2) on paraphrases that share no word "
    "with their answer (benchmarks/RESULTS.md)",
)
@pytest.mark.parametrize("queries", PARAPHRASE_SETS, ids=PARAPHRASE_IDS)
def test_recall_at_3_on_paraphrases_meets_the_target(
    librarian: Librarian, queries: list[dict[str, Any]]
) -> None:
    scores = evaluate(librarian, "expanded", queries)
    assert scores["paraphrase"]["recall@3"] >= 0.9, scores


@needs_embed
def test_semantic_mode_keeps_direct_queries_and_beats_expanded(librarian: Librarian) -> None:
    semantic = evaluate(librarian, "semantic")
    assert semantic["direct"]["recall@3"] >= 0.9, semantic
    for queries in PARAPHRASE_SETS:
        expanded = evaluate(librarian, "expanded", queries)["paraphrase"]
        assert (
            evaluate(librarian, "semantic", queries)["paraphrase"]["recall@3"]
            > expanded["recall@3"]
        )


@needs_embed
@pytest.mark.xfail(
    strict=True,
    reason="target not met: all-MiniLM-L6-v2 embeddings reach recall@3 0.83 (original), "
    "0.67 (held-out), 0.77 (held-out 2) on paraphrases (benchmarks/RESULTS.md)",
)
@pytest.mark.parametrize("queries", PARAPHRASE_SETS, ids=PARAPHRASE_IDS)
def test_semantic_recall_at_3_on_paraphrases_meets_the_target(
    librarian: Librarian, queries: list[dict[str, Any]]
) -> None:
    scores = evaluate(librarian, "semantic", queries)
    assert scores["paraphrase"]["recall@3"] >= 0.9, scores


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        lib = Librarian(_copy_sample(Path(tmp)))
        lib.index()
        modes: list[Mode] = ["keyword", "expanded", "fused"]
        modes += ["semantic"] if embed.available() else []
        for mode in modes:
            for name, queries in zip(PARAPHRASE_IDS, PARAPHRASE_SETS, strict=True):
                print(mode, name, json.dumps(evaluate(lib, mode, queries)))
                if "-v" in sys.argv:
                    print("\n".join("   " + m for m in misses(lib, mode, queries)))
        lib.close()


if __name__ == "__main__":
    main()
