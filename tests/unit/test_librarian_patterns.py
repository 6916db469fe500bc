"""Pattern synthesis and ranking helpers (pure)."""

from __future__ import annotations

import msgspec
import pytest

from jarvis_kernel.librarian.formats import ContextMap, ExplicitPattern, FileEntry, Source
from jarvis_kernel.librarian.index import DocRow
from jarvis_kernel.librarian.patterns import (
    extract_patterns,
    global_index,
    iso_from_ms,
    ms_from_iso,
    reconcile,
)
from jarvis_kernel.librarian.search import match_expression, plan_query, rrf
from jarvis_kernel.librarian.taxonomy import Taxonomy, load_taxonomy

SOURCE = Source(
    context_map="projects/p/context_map.json",
    sha256="0" * 64,
    extracted_at="2026-11-20T10:00:00.000Z",
)


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


def _map(files: list[FileEntry], patterns: list[ExplicitPattern] | None = None) -> ContextMap:
    return ContextMap(project_id="p", files=files, patterns=patterns or [])


def test_files_are_named_by_what_they_are(taxonomy: Taxonomy) -> None:
    cmap = _map(
        [
            FileEntry(path="prisma/schema.prisma", summary="User and Order models"),
            FileEntry(
                path="src/pages/api/auth/[...nextauth].ts",
                summary="GitHub provider",
                tags=["nextauth"],
            ),
            FileEntry(path="src/auction.py", summary="Contract Net auction rules: award bids"),
            FileEntry(
                path="src/Login.tsx", summary="Login page with a GitHub button and more words"
            ),
            FileEntry(path="src/x.py"),
        ]
    )
    names = {p.file_path: p.name for p in extract_patterns("p", cmap, SOURCE, taxonomy)}
    assert names == {
        "prisma/schema.prisma": "Prisma schema",
        "src/pages/api/auth/[...nextauth].ts": "NextAuth config",
        "src/auction.py": "Contract Net auction rules",
        "src/Login.tsx": "Login page",
        "src/x.py": "x.py",
    }


def test_capabilities_and_tags_come_from_the_taxonomy(taxonomy: Taxonomy) -> None:
    cmap = _map(
        [
            FileEntry(
                path="src/pay.ts",
                summary="Stripe Checkout with Prisma orders",
                tags=["Payments", "stripe"],
                symbols=["createSession"],
            )
        ]
    )
    [pattern] = extract_patterns("p", cmap, SOURCE, taxonomy)
    assert {"payments", "database"} <= set(pattern.capabilities)
    assert "stripe" in pattern.tags
    assert "prisma" in pattern.tags
    assert "payments" not in pattern.tags  # a capability, not a tag
    assert pattern.symbols == ["createSession"]


def test_explicit_patterns_are_kept_as_written_and_absorb_their_file(taxonomy: Taxonomy) -> None:
    cmap = _map(
        [
            FileEntry(
                path="a.ts",
                summary="NextAuth GitHub provider",
                tags=["auth"],
                symbols=["authOptions"],
            ),
            FileEntry(path="b.ts", summary="Other"),
        ],
        [
            ExplicitPattern(
                name="My Auth Thing", description="As I wrote it", file_path="a.ts", tags=["Custom"]
            )
        ],
    )
    patterns = extract_patterns("p", cmap, SOURCE, taxonomy)
    assert [p.name for p in patterns] == ["My Auth Thing", "Other"]
    mine = patterns[0]
    assert mine.description == "As I wrote it"
    assert mine.tags[0] == "Custom"
    assert "auth" in mine.capabilities
    assert mine.symbols == ["authOptions"]


def test_the_same_pattern_twice_is_merged(taxonomy: Taxonomy) -> None:
    cmap = _map(
        [
            FileEntry(path="a.ts", summary="short", tags=["x"]),
            FileEntry(path="a.ts", summary="short", tags=["y"], symbols=["f"]),
        ],
        [
            ExplicitPattern(name="P", file_path="z.ts", tags=["one"]),
            ExplicitPattern(name="p", file_path="z.ts", description="d", tags=["two"]),
        ],
    )
    patterns = extract_patterns("p", cmap, SOURCE, taxonomy)
    assert len(patterns) == 2
    by_path = {p.file_path: p for p in patterns}
    assert by_path["a.ts"].tags == ["x", "y"]
    assert by_path["z.ts"].tags == ["one", "two"]
    assert by_path["z.ts"].description == "d"


def test_ids_are_stable(taxonomy: Taxonomy) -> None:
    cmap = _map([FileEntry(path="a.ts", summary="Thing")])
    first = extract_patterns("p", cmap, SOURCE, taxonomy)
    again = extract_patterns("p", cmap, SOURCE, taxonomy)
    other = extract_patterns("q", cmap, SOURCE, taxonomy)
    assert first[0].id == again[0].id != other[0].id


def test_reconcile_marks_vanished_files_stale_then_drops_them(taxonomy: Taxonomy) -> None:
    old = extract_patterns(
        "p", _map([FileEntry(path="a.ts"), FileEntry(path="b.ts")]), SOURCE, taxonomy
    )
    fresh = extract_patterns("p", _map([FileEntry(path="a.ts")]), SOURCE, taxonomy)
    t0 = 1_800_000_000_000
    day = 86_400.0
    step1 = reconcile(old, fresh, now_ms=t0, drop_after_s=day)
    stale = [p for p in step1 if p.stale]
    assert [p.file_path for p in stale] == ["b.ts"]
    assert stale[0].stale_since == iso_from_ms(t0)
    step2 = reconcile(step1, fresh, now_ms=t0 + 1000, drop_after_s=day)
    assert [p.stale_since for p in step2 if p.stale] == [iso_from_ms(t0)]  # keeps first date
    step3 = reconcile(step2, fresh, now_ms=t0 + int(day * 1000), drop_after_s=day)
    assert [p.file_path for p in step3] == ["a.ts"]


def test_renamed_pattern_of_a_present_file_is_replaced_not_stale(taxonomy: Taxonomy) -> None:
    old = extract_patterns(
        "p", _map([FileEntry(path="a.ts", summary="Old name")]), SOURCE, taxonomy
    )
    new = extract_patterns(
        "p", _map([FileEntry(path="a.ts", summary="New name")]), SOURCE, taxonomy
    )
    assert reconcile(old, new, now_ms=0, drop_after_s=1.0) == new


def test_global_index_is_sorted_and_ignores_stale(taxonomy: Taxonomy) -> None:
    a = extract_patterns("b-proj", _map([FileEntry(path="x", tags=["auth"])]), SOURCE, taxonomy)
    b = extract_patterns(
        "a-proj", _map([FileEntry(path="y", tags=["auth", "testing"])]), SOURCE, taxonomy
    )
    c = [msgspec.structs.replace(p, project="c-proj", stale=True) for p in b]
    assert global_index([*a, *b, *c]) == {"auth": ["a-proj", "b-proj"], "testing": ["a-proj"]}


def test_iso_round_trip() -> None:
    assert ms_from_iso(iso_from_ms(1_800_000_000_123)) == 1_800_000_000_123
    assert ms_from_iso("not a date") is None


def test_query_plan_expands_synonyms_and_capabilities(taxonomy: Taxonomy) -> None:
    plan = plan_query("let users sign in with GitHub", taxonomy)
    assert "github" in plan.terms
    assert ("login",) in plan.expansions
    assert "auth" in plan.capabilities
    expr = match_expression(plan, expanded=True)
    assert '"login"' in expr
    assert 'tags : "auth"' in expr
    assert match_expression(plan, expanded=False).count("tags") == 0


def test_query_plan_finds_a_named_project(taxonomy: Taxonomy) -> None:
    plan = plan_query("how did we set up auth in atelier-sam?", taxonomy, ["atelier-sam", "jarvis"])
    assert plan.project == "atelier-sam"
    assert "atelier" not in plan.terms


def test_rrf_prefers_items_ranked_well_in_both_lists() -> None:
    def row(name: str) -> DocRow:
        return DocRow("p", name, "", name, [], 0.0)

    fused = rrf([[row("a"), row("b"), row("c")], [row("b"), row("c"), row("a")]], 2)
    assert [r.name for r in fused] == ["b", "a"]


def test_the_dense_list_is_waited_for_even_when_the_keyword_list_fails() -> None:
    from jarvis_kernel.librarian.search import _alongside

    collected: list[str] = []

    def dense() -> list[DocRow]:
        collected.append("dense")
        return [DocRow("p", "d", "", "d", [], 0.0)]

    def keyword() -> list[DocRow]:
        return [DocRow("p", "k", "", "k", [], 0.0)]

    assert [[r.name for r in rows] for rows in _alongside(keyword, dense)] == [["k"], ["d"]]

    def broken() -> list[DocRow]:
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="locked"):
        _alongside(broken, dense)
    assert collected == ["dense", "dense"]  # never left running past the search
