"""bm25 computed in memory (keywords.py) gives SQLite's ``bm25()`` numbers, rows and order.

Every expression search.py writes for every query of the five query sets, scoped and not,
is ranked both ways on the sample memory and must agree to the last bit; and the in-memory
copy follows the index through incremental runs, other writers and compaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from jarvis_kernel.librarian.index import PatternIndex
from jarvis_kernel.librarian.keywords import Phrase, Terms, Tokenizer, bm25
from jarvis_kernel.librarian.search import DEFAULT_WEIGHTS, _quote, _scoped, plan_query
from jarvis_kernel.librarian.search import match_expression as expression
from jarvis_kernel.librarian.store import Librarian
from tests.support.memory import copy_sample_memory

ROOT = Path(__file__).resolve().parents[2]
QUERY_FILES = sorted((ROOT / "tests/data").glob("librarian_queries*.json"))


@pytest.fixture
def memory(tmp_path: Path) -> Path:
    return copy_sample_memory(tmp_path / "memory")


@pytest.fixture
def librarian(memory: Path) -> Iterator[Librarian]:
    lib = Librarian(memory)
    lib.index()
    yield lib
    lib.close()


def _queries() -> list[str]:
    out = []
    for path in QUERY_FILES:
        out += [q["q"] for q in json.loads(path.read_text())["queries"]]
    return out


def _expressions(lib: Librarian) -> Iterator[str]:
    """Every MATCH expression search.py issues for the query sets, unscoped and scoped."""
    projects = sorted(lib._index.states())
    for text in _queries():
        plan = plan_query(text, lib.taxonomy, projects)
        exprs = [expression(plan, expanded=True), expression(plan, expanded=False)]
        if len(plan.terms) > 1:
            exprs.append(" AND ".join(_quote(t) for t in plan.terms))
        for match in filter(None, exprs):
            yield match
            yield _scoped(match, projects[0], False)
            yield _scoped(match, projects[1], True)


def test_in_memory_bm25_ranks_exactly_as_sqlite(librarian: Librarian) -> None:
    index = librarian._index
    compared = tied = phrases = 0
    for match in _expressions(librarian):
        for limit, candidates in ((5, 500), (20, 500), (20, 7)):
            fast = index.search(match, DEFAULT_WEIGHTS, limit, candidates)
            slow = index.search_sql(match, DEFAULT_WEIGHTS, limit, candidates)
            assert fast == slow, match
            compared += bool(slow)
            tied += len({r.rank for r in slow}) < len(slow)
            phrases += bool(slow) and any(" " in p for p in match.split('"')[1::2])
    # not vacuous: many ranked lists, ties among them, and multi-word phrases that matched
    assert compared > 500 and tied > 20 and phrases > 20, (compared, tied, phrases)


def test_rows_past_the_cap_can_be_ranked_too(librarian: Librarian) -> None:
    index = librarian._index
    match = '"auth" OR "prisma" OR "stripe"'
    every = [r for (r,) in index._db.execute("SELECT rowid FROM fts WHERE fts MATCH ?", (match,))]
    late = every[-3:]
    assert not {r.rowid for r in index.search(match, DEFAULT_WEIGHTS, 50, 3)} & set(late)
    fast = index.search(match, DEFAULT_WEIGHTS, 50, 3, late)
    assert {r.rowid for r in fast} == {*every[:3], *late}
    assert fast == index.search_sql(match, DEFAULT_WEIGHTS, 50, 3, late)


def _statements(index: PatternIndex) -> list[str]:
    seen: list[str] = []
    index._db.set_trace_callback(seen.append)
    return seen


def test_a_phrase_is_counted_once_until_the_index_changes(memory: Path) -> None:
    lib = Librarian(memory)
    lib.index()
    index = lib._index
    query = "let users sign in with their GitHub account"
    seen = _statements(index)
    hits = lib.search(query, mode="expanded")
    assert hits
    assert not any("bm25(" in s for s in seen)
    assert [s for s in seen if "count(*)" in s]  # the phrases' rows, counted by FTS5 once...
    seen.clear()
    assert lib.search(query, mode="expanded") == hits
    assert not [s for s in seen if "count(*)" in s]  # ...and not again

    # a new file holding the query's words: the counts are taken again
    cmap = memory / "projects" / "atelier-sam" / "context_map.json"
    data = json.loads(cmap.read_text())
    data["files"].append({"path": "src/auth/gate.ts", "summary": "GitHub sign in account gate"})
    cmap.write_text(json.dumps(data))
    lib.index()
    seen.clear()
    plan = plan_query(query, lib.taxonomy, sorted(index.states()))
    match = expression(plan, expanded=True)
    assert index.search(match, DEFAULT_WEIGHTS, 20) == index.search_sql(match, DEFAULT_WEIGHTS, 20)
    assert "src/auth/gate.ts" in [h.file_path for h in lib.search(query, mode="expanded")]
    assert [s for s in seen if "count(*)" in s]
    lib.close()


def test_another_writers_rows_are_ranked_after_it_commits(memory: Path) -> None:
    reader, writer = Librarian(memory), Librarian(memory)
    reader.index()
    assert reader.search("auth", mode="keyword")  # the rows are now in memory
    cmap = memory / "projects" / "atelier-sam" / "context_map.json"
    data = json.loads(cmap.read_text())
    data["files"].append({"path": "src/quokka.ts", "summary": "quokka auth"})
    cmap.write_text(json.dumps(data))
    writer.index()
    index = reader._index
    # rows of another project, unchanged, whose scores moved with the table's totals
    other = _scoped('"auth" OR "quokka"', "ledger-api", False)
    assert index.search(other, DEFAULT_WEIGHTS, 20) == index.search_sql(other, DEFAULT_WEIGHTS, 20)
    assert index.search('"quokka"', DEFAULT_WEIGHTS, 5) == index.search_sql(
        '"quokka"', DEFAULT_WEIGHTS, 5
    )
    assert [r.file_path for r in index.search('"quokka"', DEFAULT_WEIGHTS, 5)] == ["src/quokka.ts"]
    match = '"auth" OR "quokka"'
    assert index.search(match, DEFAULT_WEIGHTS, 20) == index.search_sql(match, DEFAULT_WEIGHTS, 20)
    reader.close()
    writer.close()


def _row(name: str) -> list[str]:
    return [name, "tags", "", "path to file", "", "", "p1"]


def test_rows_kept_through_compaction_keep_their_tokens() -> None:
    tokenizer = Tokenizer()
    terms = Terms(tokenizer)
    terms.add_many((rowid, _row(f"name{rowid}")) for rowid in range(2000))
    for version in range(40):  # dead runs pile up: compacted at least once
        terms.add_many((rowid, _row(f"name{rowid} v{version}")) for rowid in range(100))
        assert len(terms) == 2000
    assert terms.tokens == 1900 * 6 + 100 * 7
    codes, rows, lengths = terms.codes([1500, 5])
    assert list(lengths) == [6, 7]
    for i, text in enumerate(["name1500 tags path to file p1", "name5 v39 tags path to file p1"]):
        assert {int(c) >> 3 for c, r in zip(codes, rows, strict=True) if r == i} == set(
            tokenizer.terms(text)
        )


def test_a_phrase_never_spans_two_rows() -> None:
    tokenizer = Tokenizer()
    terms = Terms(tokenizer)
    terms.add_many([(1, _row("user sign")), (2, _row("in page")), (3, _row("sign in"))])
    phrase = Phrase(tokenizer.terms("sign in"), None)
    scores = bm25(terms, [1, 2, 3], [phrase], [1.0], DEFAULT_WEIGHTS, 3)
    assert list(scores[:2]) == [0.0, 0.0] and scores[2] > 0


def test_text_fts5_would_split_is_split_the_same_way() -> None:
    tokenizer = Tokenizer()
    # unicode61 splits at '-' and folds case and accents; porter stems: as FTS5 itself
    assert tokenizer.terms("Running-FAST Café") == tokenizer.terms("run fast cafe")
    terms = Terms(tokenizer)
    terms.add_many([(1, ["Running-FAST", "", "", "", "", "", "p"])])
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE f USING fts5(a, tokenize = 'porter unicode61')")
    db.execute("INSERT INTO f VALUES ('Running-FAST')")
    db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(f, 'instance')")
    fts5 = [t for (t,) in db.execute("SELECT term FROM v ORDER BY offset")]
    assert [tokenizer.terms(t) for t in fts5] == [(i,) for i in tokenizer.terms("Running-FAST")]
    assert terms.tokens == 3


def test_without_numpy_the_index_ranks_in_sqlite(
    librarian: Librarian, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = librarian._index
    monkeypatch.setattr(index, "_in_memory", False)
    seen = _statements(index)
    match = '"auth" OR "prisma"'
    assert index.search(match, DEFAULT_WEIGHTS, 5) == index.search_sql(match, DEFAULT_WEIGHTS, 5)
    assert any("bm25(" in s for s in seen)
    assert index._terms is None


def test_a_row_missing_from_the_copy_is_ranked_in_sqlite(librarian: Librarian) -> None:
    index = librarian._index
    match = '"auth" OR "prisma"'
    expected = index.search_sql(match, DEFAULT_WEIGHTS, 5)
    terms = index._current_terms()
    terms.discard(expected[0].rowid)  # as if another connection wrote it since the load
    index._seen_version = int(index._db.execute("PRAGMA data_version").fetchone()[0])
    assert index.search(match, DEFAULT_WEIGHTS, 5) == expected
    assert index._terms is None  # dropped: loaded again by the next search
    assert index.search(match, DEFAULT_WEIGHTS, 5) == expected
