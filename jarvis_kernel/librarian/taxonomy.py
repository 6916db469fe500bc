"""The capability taxonomy: what a file is for (auth, database, payments, 3d, queues, ...).

It ships as data (``jarvis_kernel/data/taxonomy.json``) and users extend it: a JSON file of
the same shape (`LibrarianConfig.taxonomy_path`) is merged over it, and
`LibrarianConfig.capabilities` adds keywords per capability. Shape::

    { "capabilities": { "auth": { "keywords": ["oauth", ...], "phrases": ["sign in", ...] } },
      "technologies": ["nextauth", ...],      # tags worth recording on a pattern
      "rules": [ { "name": "Prisma schema", "path": "schema\\\\.prisma$",
                   "terms": [...], "capabilities": ["database"] } ],
      "synonyms": [ ["login", "sign in", ...], ... ],
      "glossary": [ { "terms": ["redis", "ioredis"], "text": "in-memory key-value ..." } ] }

`keywords` found in a file's path, tags, symbols or summary give it the capability; in a
query, keywords and `phrases` expand it with the capability. `rules` name well-known files.
`synonyms` are groups of words that mean the same to someone searching. `glossary` says in
plain words what a technical term is (general knowledge, not about any project): a pattern
mentioning one of its `terms` is indexed with its `text` too, so that a query in everyday
words ("background job queue") finds the file that only says "BullMQ" (`Glossary`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import msgspec

from ..errors import ConfigError
from .text import fts_text, stem, tokens, words

__all__ = [
    "Capability",
    "GlossEntry",
    "Glossary",
    "Rule",
    "Taxonomy",
    "TaxonomyData",
    "load_taxonomy",
]


class Capability(msgspec.Struct, frozen=True, kw_only=True):
    keywords: list[str] = []
    phrases: list[str] = []


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    path: str
    capabilities: list[str] = []
    terms: list[str] = []


class GlossEntry(msgspec.Struct, frozen=True, kw_only=True):
    terms: list[str]
    text: str


class TaxonomyData(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 1
    capabilities: dict[str, Capability] = {}
    technologies: list[str] = []
    rules: list[Rule] = []
    synonyms: list[list[str]] = []
    glossary: list[GlossEntry] = []


Phrase = tuple[str, ...]


def _phrase(text: str) -> Phrase:
    return tuple(stem(w) for w in words(text))


class Glossary:
    """The glossary compiled for matching: which entries a pattern's text mentions.

    Natural text (name, description, tags) is matched by whole words, so "GitHub" is not
    "git"; identifiers (symbols, path) by their parts too, so `PrismaClient` is "prisma".
    Entries are numbered in order; `texts[i]` is entry i's text, `tokens[i]` its FTS tokens.
    """

    def __init__(self, entries: Sequence[GlossEntry]) -> None:
        self.texts = [e.text for e in entries]
        self.tokens = [fts_text([e.text]) for e in entries]
        # one-word terms by every form of the word (stems equal): matched by set intersection
        self._single: dict[str, list[int]] = {}
        # longer terms by their stems, found from their first word
        self._multi: dict[Phrase, list[int]] = {}
        self._starts: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            for term in entry.terms:
                for seq in {tuple(_plain(term)), tuple(words(term))} - {()}:
                    self._add(i, seq)
        self._single_words = frozenset(self._single)
        self._multi_words = frozenset(self._starts)
        # identifier -> the entries it mentions, in order (symbols and paths recur)
        self._identifiers: dict[str, tuple[int, ...]] = {}

    def _add(self, entry: int, seq: Sequence[str]) -> None:
        if len(seq) == 1:
            for form in _forms(seq[0]):
                _append_new(self._single.setdefault(form, []), entry)
            return
        key = _stems(seq)
        _append_new(self._multi.setdefault(key, []), entry)
        for form in _forms(seq[0]):
            _append_new(self._starts.setdefault(form, []), len(key))

    def _scan(self, seq: Sequence[str], found: dict[int, None]) -> None:
        """Add the entries `seq` mentions to `found`, in the order they appear in `seq`."""
        hits: list[tuple[int, int]] = []
        for word in self._single_words.intersection(seq):
            at = seq.index(word)
            hits += [(at, entry) for entry in self._single[word]]
        if not self._multi_words.isdisjoint(seq):
            stems = [stem(w) for w in seq]
            for at, word in enumerate(seq):
                for n in self._starts.get(word, ()):
                    hits += [
                        (at, entry) for entry in self._multi.get(tuple(stems[at : at + n]), ())
                    ]
        for _, entry in sorted(hits):
            found.setdefault(entry, None)

    def _identifier(self, text: str) -> tuple[int, ...]:
        """The entries identifier `text` mentions (its parts too), in order; cached."""
        got = self._identifiers.get(text)
        if got is None:
            found: dict[int, None] = {}
            self._scan(tokens(text), found)
            got = tuple(found)
            if len(self._identifiers) >= _IDENTIFIER_CACHE:
                self._identifiers.clear()
            self._identifiers[text] = got
        return got

    def match(self, natural: Sequence[str], identifiers: Sequence[str] = ()) -> list[int]:
        """Numbers of the entries whose terms `natural` or `identifiers` mention, in the
        order they are mentioned."""
        found: dict[int, None] = {}
        if self._single or self._multi:
            # all the natural text in one pass (a term spanning two values is rare, harmless)
            self._scan(_plain(" ".join(natural)), found)
            for text in identifiers:
                for entry in self._identifier(text):
                    found.setdefault(entry, None)
        return list(found)


_IDENTIFIER_CACHE = 1 << 16
_PLAIN_RE = re.compile(r"[a-z0-9]+")
_DOTJS_RE = re.compile(r"\b([a-z]+)\.js\b")


def _plain(text: str) -> list[str]:
    """Lower-cased words (stopwords kept: this only looks terms up); `three.js` is `threejs`
    too."""
    low = text.lower()
    if ".js" in low:
        low = _DOTJS_RE.sub(r"\1.js \1js", low)
    return _PLAIN_RE.findall(low)


def _append_new(values: list[int], value: int) -> None:
    if value not in values:
        values.append(value)


def _forms(word: str) -> set[str]:
    """`word` and its inflections that `stem` takes back to the same stem."""
    base = stem(word)
    forms = {word, base, f"{base}s", f"{base}es", f"{base}ed", f"{base}ing"}
    if base.endswith("y"):
        forms.add(f"{base[:-1]}ies")
    if base.endswith("e"):
        forms |= {f"{base}s", f"{base}d", f"{base[:-1]}ing"}
    return {f for f in forms if stem(f) == base}


def _stems(seq: Sequence[str]) -> Phrase:
    return tuple(stem(w) for w in seq)


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
        self.glossary = Glossary(data.glossary)

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
        glossary=[*base.glossary, *extra.glossary],
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
