"""Pattern synthesis (pure): from a context map's files and explicit patterns, `Pattern`s.

Every file of a map becomes a pattern, named by what it is: a taxonomy rule's name when
one matches ("Prisma schema", "NextAuth config"), else the head of its summary ("Contract
Net auction rules"), else its file name. Capabilities come from the taxonomy's keywords in
the file's path, tags, symbols and summary; tags are the file's tags plus the technologies
it mentions. Explicit patterns are kept as written and absorb the pattern derived from
their file; the same pattern found twice (same file, same name) is merged, not doubled.

`reconcile` carries staleness from one run to the next: a pattern whose file left the map
(or whose map vanished) is marked stale, dated, and dropped after `drop_after_s`.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import msgspec

from .formats import ContextMap, ExplicitPattern, FileEntry, Pattern, Source
from .taxonomy import Taxonomy
from .text import plain_words, stem, value_tokens

__all__ = [
    "extract_patterns",
    "global_index",
    "iso_from_ms",
    "ms_from_iso",
    "pattern_id",
    "reconcile",
]

_HEAD_SPLIT_RE = re.compile(r"[:;,(]|\. | - | — ")
_CLAUSE_RE = re.compile(
    r" (?:with|that|which|for|from|using|through|issuing|to|on|in|by|and) ", re.IGNORECASE
)
_MAX_NAME_WORDS = 8


def pattern_id(project: str, file_path: str, name: str) -> str:
    """Stable id of a pattern: a hash of project, file path and name."""
    digest = hashlib.sha256(f"{project}\0{file_path}\0{name.casefold()}".encode())
    return digest.hexdigest()[:20]


def iso_from_ms(ms: int) -> str:
    """``2026-11-20T10:00:00.000Z`` for epoch milliseconds."""
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def ms_from_iso(text: str) -> int | None:
    """Epoch milliseconds of an ISO-8601 time, None if it is not one."""
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return round(stamp.timestamp() * 1000)


def _dedupe(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _name_for(
    entry: FileEntry, toks: Sequence[str], lowered_tags: Sequence[str], taxonomy: Taxonomy
) -> tuple[str, list[str]]:
    for rule, regex, terms in taxonomy.rules:
        if regex.search(entry.path) and (
            not terms or not terms.isdisjoint(toks) or not terms.isdisjoint(lowered_tags)
        ):
            return rule.name, list(rule.capabilities)
    head = _HEAD_SPLIT_RE.split(entry.summary, maxsplit=1)[0].strip()
    if len(head.split()) > _MAX_NAME_WORDS:
        head = _CLAUSE_RE.split(head, maxsplit=1)[0].strip()
    if head and len(head.split()) <= _MAX_NAME_WORDS:
        return head[0].upper() + head[1:], []
    return entry.path.rsplit("/", 1)[-1], []


def _derive(entry: FileEntry, taxonomy: Taxonomy) -> tuple[str, list[str], list[str]]:
    """(name, capabilities, tags) of one file."""
    lowered_tags = [t.strip().lower() for t in entry.tags]
    values = [entry.path, entry.summary, *entry.symbols, *lowered_tags]
    text = " ".join(values)
    toks = list(itertools.chain.from_iterable(map(value_tokens, values)))  # tokens(text)
    name, rule_caps = _name_for(entry, toks, lowered_tags, taxonomy)
    whole = set(map(stem, plain_words(text)))
    whole.update(map(stem, lowered_tags))
    caps = set(rule_caps) | taxonomy.capabilities_of(whole)
    caps |= {t for t in lowered_tags if t in taxonomy.capability_names}
    techs = [t for t in toks if t in taxonomy.technologies]
    tags = [t for t in _dedupe([*lowered_tags, *techs]) if t not in taxonomy.capability_names]
    return name, sorted(caps), tags


def _from_explicit(
    explicit: ExplicitPattern, project: str, taxonomy: Taxonomy
) -> tuple[list[str], list[str]]:
    lowered = [t.lower() for t in explicit.tags]
    toks = {stem(t) for t in plain_words(" ".join([explicit.name, explicit.description, *lowered]))}
    caps = set(explicit.capabilities) | {t for t in lowered if t in taxonomy.capability_names}
    caps |= taxonomy.capabilities_of(toks)
    return sorted(caps), list(explicit.tags)


def extract_patterns(
    project: str, cmap: ContextMap, source: Source, taxonomy: Taxonomy
) -> list[Pattern]:
    """The patterns of one project's map, explicit ones first, merged by (file, name)."""
    by_file: dict[str, FileEntry] = {}
    for entry in cmap.files:  # the same file listed twice: merge its entries
        old = by_file.get(entry.path)
        by_file[entry.path] = entry if old is None else _merge_entries(old, entry)
    out: dict[tuple[str, str], Pattern] = {}
    absorbed: set[str] = set()
    for explicit in cmap.patterns:
        caps, tags = _from_explicit(explicit, project, taxonomy)
        symbols: list[str] = []
        found = by_file.get(explicit.file_path)
        if found is not None and explicit.file_path not in absorbed:
            absorbed.add(explicit.file_path)
            _, file_caps, file_tags = _derive(found, taxonomy)
            caps = sorted(set(caps) | set(file_caps))
            tags = _dedupe([*tags, *file_tags])
            symbols = list(found.symbols)
        _add(
            out,
            Pattern(
                id=pattern_id(project, explicit.file_path, explicit.name),
                name=explicit.name,
                description=explicit.description,
                file_path=explicit.file_path,
                project=project,
                capabilities=caps,
                tags=tags,
                source=source,
                symbols=symbols,
            ),
        )
    for path, entry in by_file.items():
        if path in absorbed:
            continue
        name, caps, tags = _derive(entry, taxonomy)
        _add(
            out,
            Pattern(
                id=pattern_id(project, path, name),
                name=name,
                description=entry.summary,
                file_path=path,
                project=project,
                capabilities=caps,
                tags=tags,
                source=source,
                symbols=list(entry.symbols),
            ),
        )
    return list(out.values())


def _merge_entries(a: FileEntry, b: FileEntry) -> FileEntry:
    summary = a.summary if len(a.summary) >= len(b.summary) else b.summary
    return FileEntry(
        path=a.path,
        summary=summary,
        tags=_dedupe([*a.tags, *b.tags]),
        symbols=_dedupe([*a.symbols, *b.symbols]),
    )


def _add(out: dict[tuple[str, str], Pattern], pattern: Pattern) -> None:
    key = (pattern.file_path, pattern.name.casefold())
    old = out.get(key)
    if old is None:
        out[key] = pattern
        return
    out[key] = msgspec.structs.replace(
        old,
        description=old.description or pattern.description,
        capabilities=sorted(set(old.capabilities) | set(pattern.capabilities)),
        tags=_dedupe([*old.tags, *pattern.tags]),
        symbols=_dedupe([*old.symbols, *pattern.symbols]),
    )


def reconcile(
    previous: Sequence[Pattern],
    fresh: Sequence[Pattern],
    *,
    now_ms: int,
    drop_after_s: float,
) -> list[Pattern]:
    """One project's patterns after a run: `fresh`, plus `previous` ones gone stale.

    A previous pattern whose file has no pattern in `fresh` is kept with ``stale: true``
    (dated the first time) until it has been stale `drop_after_s`; then it is dropped.
    Pass ``fresh=[]`` when the project's map vanished.
    """
    fresh_paths = {p.file_path for p in fresh}
    out = list(fresh)
    for old in previous:
        if old.file_path in fresh_paths:  # still there (maybe renamed): replaced, not stale
            continue
        since = old.stale_since if old.stale and old.stale_since else iso_from_ms(now_ms)
        since_ms = ms_from_iso(since)
        if since_ms is not None and now_ms - since_ms >= drop_after_s * 1000:
            continue
        out.append(msgspec.structs.replace(old, stale=True, stale_since=since))
    return out


def global_index(patterns: Iterable[Pattern]) -> dict[str, list[str]]:
    """Capability -> sorted projects having a live pattern with it (keys sorted too)."""
    index: dict[str, set[str]] = {}
    for pattern in patterns:
        if pattern.stale:
            continue
        for cap in pattern.capabilities:
            index.setdefault(cap, set()).add(pattern.project)
    return {cap: sorted(index[cap]) for cap in sorted(index)}
