"""Answering a query: plan it (pure), run it on the index, rank and label the hits.

A query is tokenized like the documents (`text.tokens`). Five ranking modes:

- ``keyword``: bm25 over the query's own tokens, with weighted columns.
- ``expanded``: the same, plus the taxonomy's synonyms of the query's words and phrases
  (``sign in`` -> ``login``) and the capabilities they imply, matched in the tags column.
  Both match the ``gloss`` column too: the glossary's plain-words texts of the technical
  terms a pattern mentions.
- ``fused``: reciprocal rank fusion of the two lists (measured worse than ``expanded``:
  the literal list ranks noise for queries that share no word with their answer).
- ``static`` (the default, chosen by measurement: benchmarks/RESULTS.md; needs the
  ``embed`` extra and the word table, semantic.py): reciprocal rank fusion of the
  ``expanded`` list (weight 0.3, k 10) and the patterns closest to the query by static word
  vectors distilled from the sentence model (plus the glossary entries closest to it);
  equal vector scores share a rank (`dense_ranks`).
- ``semantic`` (same extra): reciprocal rank fusion of the patterns closest to the query's
  sentence embedding (the full model runs on the query only) and the patterns holding every
  query word.

Without the extra or the table, ``static`` and ``semantic`` fall back to ``expanded``.

A project id named in the query ("... in atelier-sam") scopes the search to it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Collection, Sequence
from typing import Literal

import msgspec

from .index import DocRow, PatternIndex, project_token
from .taxonomy import Taxonomy
from .text import stem, tokens, words

__all__ = [
    "DEFAULT_WEIGHTS",
    "Hit",
    "Mode",
    "QueryPlan",
    "dense_ranks",
    "plan_query",
    "rrf",
    "run_search",
]

Mode = Literal["keyword", "expanded", "fused", "semantic", "static"]
# (limit, (project, exclude)) -> started: a call that returns the patterns nearest the
# query by embedding, computed meanwhile (the keyword list is fetched in between)
Dense = Callable[[int, tuple[str | None, bool]], Callable[[], list[DocRow]]]
# rows -> the score the dense pass gives each (None: it has no vector)
Rescore = Callable[[Sequence[DocRow]], list[float | None]]

# bm25 weights of the columns name, tags (and capabilities), description, path, symbols and
# gloss (what the technical terms a pattern mentions mean: taxonomy.Glossary).
DEFAULT_WEIGHTS: tuple[float, ...] = (8.0, 4.0, 2.0, 3.0, 4.0, 1.0)
_RRF_K = 60.0
# ``static``: RRF(k 10) of the expanded list (weight 0.3) and the static-vector list (1.0)
_STATIC_RRF = (10.0, (0.3, 1.0))


class Hit(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """One search result. `active` is set when the search had an active project."""

    name: str
    description: str
    file_path: str
    project: str
    capabilities: list[str]
    score: float
    active: bool | None = None


class QueryPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What a query asks, ready for FTS5."""

    terms: list[str]
    expansions: list[tuple[str, ...]]
    capabilities: list[str]
    project: str | None = None


def _quote(tok: str) -> str:
    return f'"{tok}"'


_ID_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


def _project_in(text: str, project_ids: Collection[str]) -> str | None:
    for match in _ID_WORD_RE.finditer(text):
        word = match.group(0).rstrip(".:")
        if word in project_ids:
            return word
    return None


def plan_query(text: str, taxonomy: Taxonomy, project_ids: Collection[str] = ()) -> QueryPlan:
    """Tokens, synonym expansions and implied capabilities of `text` (pure)."""
    project = _project_in(text, project_ids)
    if project is not None:
        text = re.sub(re.escape(project), " ", text, flags=re.IGNORECASE)
    terms = list(dict.fromkeys(tokens(text)))
    stems = [stem(w) for w in words(text)]
    expansions: dict[tuple[str, ...], None] = {}
    caps: set[str] = set()
    for n in range(1, taxonomy.max_phrase + 1):
        for i in range(len(stems) - n + 1):
            gram = tuple(stems[i : i + n])
            for member in taxonomy.synonyms.get(gram, ()):
                expansions[member] = None
                caps |= (
                    taxonomy.keyword_caps.get(stem(member[0]), set()) if len(member) == 1 else set()
                )
            caps |= taxonomy.phrase_caps.get(gram, set())
            if n == 1:
                caps |= taxonomy.keyword_caps.get(gram[0], set())
    known = set(terms)
    extra = [e for e in expansions if not (len(e) == 1 and e[0] in known)]
    return QueryPlan(terms=terms, expansions=extra, capabilities=sorted(caps), project=project)


def match_expression(plan: QueryPlan, *, expanded: bool) -> str:
    """The FTS5 MATCH text for `plan` (empty when there is nothing to look for)."""
    parts = [_quote(t) for t in plan.terms]
    if expanded:
        parts += [_quote(" ".join(e)) for e in plan.expansions]
        for cap in plan.capabilities:
            cap_tokens = tokens(cap)
            if cap_tokens:
                parts.append(f"tags : {_quote(cap_tokens[-1])}")
    return " OR ".join(dict.fromkeys(parts))


def _scoped(match: str, project: str | None, exclude: bool) -> str:
    if project is None:
        return match
    token = _quote(project_token(project))
    return f"({match}) NOT proj : {token}" if exclude else f"proj : {token} AND ({match})"


def rrf(
    lists: Sequence[Sequence[DocRow]],
    limit: int,
    k: float = _RRF_K,
    weights: Sequence[float] | None = None,
    ranks: Sequence[Sequence[int] | None] | None = None,
) -> list[DocRow]:
    """Reciprocal rank fusion: score = sum of weight / (k + rank) over the lists (a row's
    rank: its place in its list, or `ranks[n]` where given)."""
    scores: dict[tuple[str, str, str], float] = {}
    rows: dict[tuple[str, str, str], DocRow] = {}
    for n, ranked in enumerate(lists):
        weight = 1.0 if weights is None else weights[n]
        given = None if ranks is None else ranks[n]
        for place, row in enumerate(ranked):
            rank = place + 1 if given is None else given[place]
            key = (row.project, row.file_path, row.name)
            scores[key] = scores.get(key, 0.0) + weight / (k + rank)
            rows.setdefault(key, row)
    best = sorted(scores, key=lambda key: -scores[key])[:limit]
    return [msgspec.structs.replace(rows[key], rank=scores[key]) for key in best]


_TIE = 1e-6  # dense scores closer than this are equal (float32 sums in another order)


def dense_ranks(
    dense: Sequence[DocRow], depth: int, others: Sequence[DocRow], rescore: Rescore | None
) -> tuple[list[DocRow], list[int]]:
    """The dense list with ranks by score (1 + how many score higher: equal scores share a
    rank), extended by those of `others` (the keyword list) that score as high as its
    last, found by `rescore`: patterns with the same vector tie, so which of them the
    dense pass happened to list must not decide the fusion (an identifier's own file
    among 20,000 look-alikes)."""
    rows, scores = list(dense), [r.rank for r in dense]
    if rescore is not None and len(dense) >= depth:
        listed = {(r.project, r.rowid) for r in dense}
        todo = [r for r in others if (r.project, r.rowid) not in listed]
        for row, score in zip(todo, rescore(todo) if todo else [], strict=True):
            if score is not None and score >= scores[-1] - _TIE:
                rows.append(msgspec.structs.replace(row, rank=score))
                scores.append(score)
    ranks = [1 + sum(other > score + _TIE for other in scores) for score in scores]
    return rows, ranks


def _alongside(
    keyword: Callable[[], list[DocRow]], dense: Callable[[], list[DocRow]]
) -> list[list[DocRow]]:
    """[the keyword list, the dense list]: the first fetched while the second is computed
    (started before); the dense one is always waited for, even when the first fails."""
    try:
        first = keyword()
    except BaseException:
        with contextlib.suppress(Exception):
            dense()
        raise
    return [first, dense()]


def _ranked(
    index: PatternIndex,
    plan: QueryPlan,
    mode: Mode,
    limit: int,
    scope: tuple[str | None, bool],
    weights: Sequence[float],
    candidates: int,
    dense: Dense | None = None,
    rescore: Rescore | None = None,
) -> list[DocRow]:
    project, exclude = scope

    def ranked(expanded: bool, depth: int) -> list[DocRow]:
        # Every query word present first (precise, and few rows to rank); else any of them,
        # those with every word always among the rows ranked (not lost past the cap)
        every: list[int] = []
        if len(plan.terms) > 1:
            match = " AND ".join(_quote(t) for t in plan.terms)
            rows = index.search(_scoped(match, project, exclude), weights, depth, candidates)
            if len(rows) >= depth:
                return rows
            every = [r.rowid for r in rows]
        match = match_expression(plan, expanded=expanded)
        return index.search(_scoped(match, project, exclude), weights, depth, candidates, every)

    def every_word(depth: int) -> list[DocRow]:
        if not plan.terms:
            return []
        every = " AND ".join(_quote(t) for t in plan.terms)
        return index.search(_scoped(every, project, exclude), weights, depth, candidates)

    if mode == "keyword":
        return ranked(False, limit) if plan.terms else []
    if mode == "expanded" or (mode in ("semantic", "static") and dense is None):
        return ranked(True, limit)
    depth = max(limit * 4, 20)
    if mode == "semantic" and dense is not None:
        return rrf(_alongside(lambda: every_word(depth), dense(depth, scope)), limit)
    if mode == "static" and dense is not None:
        k, shares = _STATIC_RRF
        keyword, near = _alongside(lambda: ranked(True, depth), dense(depth, scope))
        near, ranks = dense_ranks(near, depth, keyword, rescore)
        return rrf([keyword, near], limit, k, shares, [None, ranks])
    first = ranked(False, depth) if plan.terms else []
    return rrf([first, ranked(True, depth)], limit)


def _hit(row: DocRow, active: bool | None) -> Hit:
    return Hit(
        name=row.name,
        description=row.description,
        file_path=row.file_path,
        project=row.project,
        capabilities=row.capabilities,
        score=round(row.rank, 6),
        active=active,
    )


def run_search(
    index: PatternIndex,
    plan: QueryPlan,
    *,
    active_project: str | None = None,
    limit: int = 5,
    mode: Mode = "expanded",
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    candidates: int = 500,
    dense: Dense | None = None,
    rescore: Rescore | None = None,
) -> list[Hit]:
    """Hits best first. A project named in the query scopes it; else with `active_project`
    up to `limit` hits of that project and up to `limit` of the others, labelled `active`."""
    if not plan.terms and not plan.expansions and not plan.capabilities and dense is None:
        return []

    def ranked(scope: tuple[str | None, bool]) -> list[DocRow]:
        return _ranked(index, plan, mode, limit, scope, weights, candidates, dense, rescore)

    if plan.project is not None:
        return [_hit(r, None) for r in ranked((plan.project, False))]
    if active_project is None:
        return [_hit(r, None) for r in ranked((None, False))]
    mine = [_hit(r, True) for r in ranked((active_project, False))]
    others = [_hit(r, False) for r in ranked((active_project, True))]
    return sorted([*mine, *others], key=lambda h: -h.score)
