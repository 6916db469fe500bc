"""Retrieval quality over the sample `.memory/`: recall@3 and MRR, per half of the query set.

The queries (tests/data/librarian_queries.json) were written before tuning, as agents ask.
Run as a script to print the comparison of ranking modes recorded in benchmarks/RESULTS.md:
``.venv/bin/python -m tests.integration.test_librarian_quality``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from jarvis_kernel.librarian.search import Mode
from jarvis_kernel.librarian.store import Librarian
from jarvis_kernel.librarian.text import plain_words, stem, words

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / ".memory"
QUERIES = json.loads((ROOT / "tests/data/librarian_queries.json").read_text())["queries"]


def _copy_inputs(source: Path, dest: Path) -> None:
    """Copy the sample's inputs only (other processes may be writing the rest of it)."""
    shutil.copytree(source / "projects", dest / "projects")
    for name in ("projects.json", "active_project.json"):
        shutil.copy(source / name, dest / name)


def _copy_sample(dest: Path) -> Path:
    memory = dest / "memory"
    _copy_inputs(SAMPLE, memory)
    return memory


def evaluate(lib: Librarian, mode: Mode) -> dict[str, dict[str, float]]:
    """recall@3 and MRR (over the top 10) for each kind of query."""
    out: dict[str, dict[str, float]] = {}
    for kind in ("direct", "paraphrase"):
        items = [q for q in QUERIES if q["kind"] == kind]
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


def misses(lib: Librarian, mode: Mode) -> list[str]:
    lines = []
    for item in QUERIES:
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


def test_query_set_is_big_enough_and_paraphrases_share_no_word() -> None:
    kinds = [q["kind"] for q in QUERIES]
    assert len(QUERIES) >= 40
    assert kinds.count("paraphrase") * 2 >= len(QUERIES) - 1
    for item in QUERIES:
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
    reason="target not met: taxonomy synonyms reach recall@3 0.34 on paraphrases that share "
    "no word with their answer; needs an embedding model (benchmarks/RESULTS.md)",
)
def test_recall_at_3_on_paraphrases_meets_the_target(librarian: Librarian) -> None:
    scores = evaluate(librarian, "expanded")
    assert scores["paraphrase"]["recall@3"] >= 0.9, scores


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        lib = Librarian(_copy_sample(Path(tmp)))
        lib.index()
        for mode in ("keyword", "expanded", "fused"):
            scores = evaluate(lib, mode)
            print(mode, json.dumps(scores))
            if "-v" in sys.argv:
                print("\n".join("   " + m for m in misses(lib, mode)))
        lib.close()


if __name__ == "__main__":
    main()
