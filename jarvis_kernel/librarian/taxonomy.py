"""The capability taxonomy: what a file is for (auth, database, payments, 3d, queues, ...).

It ships as data (``jarvis_kernel/data/taxonomy.json``) and users extend it: a JSON file of
the same shape (`LibrarianConfig.taxonomy_path`) is merged over it, and
`LibrarianConfig.capabilities` adds keywords per capability. Shape::

    { "capabilities": { "auth": { "keywords": ["oauth", ...], "phrases": ["sign in", ...] } },
      "technologies": ["nextauth", ...],      # tags worth recording on a pattern
      "rules": [ { "name": "Prisma schema", "path": "schema\\\\.prisma$",
                   "terms": [...], "capabilities": ["database"] } ],
      "synonyms": [ ["login", "sign in", ...], ... ] }

`keywords` found in a file's path, tags, symbols or summary give it the capability; in a
query, keywords and `phrases` expand it with the capability. `rules` name well-known files.
`synonyms` are groups of words that mean the same to someone searching.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import msgspec

from ..errors import ConfigError
from .text import stem, words

__all__ = ["Capability", "Rule", "Taxonomy", "TaxonomyData", "load_taxonomy"]


class Capability(msgspec.Struct, frozen=True, kw_only=True):
    keywords: list[str] = []
    phrases: list[str] = []


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    path: str
    capabilities: list[str] = []
    terms: list[str] = []


class TaxonomyData(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 1
    capabilities: dict[str, Capability] = {}
    technologies: list[str] = []
    rules: list[Rule] = []
    synonyms: list[list[str]] = []


Phrase = tuple[str, ...]


def _phrase(text: str) -> Phrase:
    return tuple(stem(w) for w in words(text))


class Taxonomy:
    """The taxonomy, compiled for fast matching. Build with `load_taxonomy`."""

    def __init__(self, data: TaxonomyData) -> None:
        self.data = data
        self.capability_names = frozenset(data.capabilities)
        self.technologies = frozenset(t.lower() for t in data.technologies)
        # stemmed keyword -> capabilities (documents and queries)
        self.keyword_caps: dict[str, set[str]] = {}
        # stemmed phrase -> capabilities (queries only)
        self.phrase_caps: dict[Phrase, set[str]] = {}
        for name, cap in data.capabilities.items():
            self.keyword_caps.setdefault(stem(name.lower()), set()).add(name)
            for kw in cap.keywords:
                self.keyword_caps.setdefault(stem(kw.lower()), set()).add(name)
            for phrase in cap.phrases:
                key = _phrase(phrase)
                if key:
                    self.phrase_caps.setdefault(key, set()).add(name)
        self.rules = [
            (rule, re.compile(rule.path), frozenset(t.lower() for t in rule.terms))
            for rule in data.rules
        ]
        # stemmed phrase -> the members of its synonym groups (as unstemmed words)
        self.synonyms: dict[Phrase, set[Phrase]] = {}
        for group in data.synonyms:
            members = {tuple(words(m)) for m in group} - {()}
            for member in members:
                self.synonyms.setdefault(tuple(map(stem, member)), set()).update(members)
        self.max_phrase = max((len(p) for p in [*self.phrase_caps, *self.synonyms]), default=1)

    def capabilities_of(self, token_stems: set[str]) -> set[str]:
        """Capabilities whose keywords (stemmed) are among `token_stems`."""
        caps: set[str] = set()
        for tok in token_stems:
            found = self.keyword_caps.get(tok)
            if found:
                caps |= found
        return caps


def _merge(base: TaxonomyData, extra: TaxonomyData) -> TaxonomyData:
    caps = dict(base.capabilities)
    for name, cap in extra.capabilities.items():
        old = caps.get(name, Capability())
        caps[name] = Capability(
            keywords=[*old.keywords, *cap.keywords], phrases=[*old.phrases, *cap.phrases]
        )
    return TaxonomyData(
        capabilities=caps,
        technologies=[*base.technologies, *extra.technologies],
        rules=[*extra.rules, *base.rules],  # the user's rules first: they win
        synonyms=[*base.synonyms, *extra.synonyms],
    )


def load_taxonomy(
    extra_path: str | Path | None = None,
    extra_keywords: Mapping[str, Sequence[str]] | None = None,
) -> Taxonomy:
    """The shipped taxonomy, extended by the file `extra_path` and `extra_keywords`."""
    raw = resources.files("jarvis_kernel").joinpath("data/taxonomy.json").read_bytes()
    data = msgspec.json.decode(raw, type=TaxonomyData)
    if extra_path is not None:
        try:
            extra = msgspec.json.decode(Path(extra_path).read_bytes(), type=TaxonomyData)
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(
                f"cannot load taxonomy {extra_path}: {exc}", key="librarian.taxonomy_path"
            ) from exc
        data = _merge(data, extra)
    if extra_keywords:
        caps = {name: Capability(keywords=list(kws)) for name, kws in extra_keywords.items()}
        data = _merge(data, TaxonomyData(capabilities=caps))
    try:
        return Taxonomy(data)
    except re.error as exc:
        raise ConfigError(f"bad rule pattern in taxonomy: {exc}") from exc
