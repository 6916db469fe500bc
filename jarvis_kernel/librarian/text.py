"""Turning code-ish text into search tokens (pure).

SQLite's FTS5 cannot run a Python tokenizer, so the librarian tokenizes in Python and
stores space-joined tokens; FTS5's ``porter unicode61`` then only lower-cases and stems.
Identifiers are split and kept whole::

    OAuthCallbackError  -> o auth callback error oauth authcallback callbackerror oauthcallbackerror
    create_access_token -> create access token createaccess accesstoken createaccesstoken
    TS2322              -> ts 2322 ts2322
    src/pages/api/auth/[...nextauth].ts -> src pages api auth nextauth ts

so that a query for ``OAuthCallbackError``, ``oauth callback`` or ``callback error`` finds
the same file.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable

__all__ = ["STOPWORDS", "fts_text", "plain_words", "stem", "tokens", "value_tokens", "words"]

# An identifier: letters, digits and underscores (paths, dots, dashes and brackets split).
_CHUNK_RE = re.compile(r"[A-Za-z0-9_]+")
# Parts of an identifier: ALLCAPS before a Capitalised word, Capitalised words, digit runs.
_PART_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")

STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "done",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "should",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "up",
        "us",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "set",
        "find",
        "solution",
        "solutions",
        "project",
        "projects",
        "other",
        "others",
        "example",
        "examples",
        "code",
        "file",
        "files",
    ]
)


def words(text: str) -> list[str]:
    """The lower-cased identifier parts of `text`, in order, without stopwords or joins."""
    out: list[str] = []
    for chunk in _CHUNK_RE.findall(text):
        for part in _PART_RE.findall(chunk):
            low = part.lower()
            if low not in STOPWORDS and (len(low) > 1 or low.isdigit()):
                out.append(low)
    return out


_DOTJS_RE = re.compile(r"\b([A-Za-z]+)\.js\b")


def tokens(text: str) -> list[str]:
    """Search tokens of `text`: parts, adjacent pairs and whole identifiers, lower-cased.

    ``three.js`` also gives ``threejs`` (and ``next.js`` ``nextjs``).
    """
    if ".js" in text:
        text = _DOTJS_RE.sub(r"\1.js \1js", text)
    out: list[str] = []
    for chunk in _CHUNK_RE.findall(text):
        out.extend(_chunk_tokens(chunk))
    return out


@functools.lru_cache(maxsize=1 << 16)
def _chunk_tokens(chunk: str) -> tuple[str, ...]:
    parts = [p.lower() for p in _PART_RE.findall(chunk)]
    out = [p for p in parts if p not in STOPWORDS and (len(p) > 1 or p.isdigit())]
    if len(parts) > 1:
        out.extend(a + b for a, b in itertools.pairwise(parts))
        if len(parts) > 2:
            out.append("".join(parts))
    return tuple(out)


@functools.lru_cache(maxsize=1 << 12)
def value_tokens(value: str) -> tuple[str, ...]:
    """`tokens` of one short value (a name, tag, symbol, path, summary), cached: they recur
    from file to file, and indexing a file tokenizes its values twice (patterns.py, then
    its FTS columns). The tokens of values joined by spaces are theirs, concatenated."""
    return tuple(tokens(value))


def fts_text(values: Iterable[str]) -> str:
    """The tokens of all `values`, space-joined, as stored in an FTS5 column."""
    return " ".join(itertools.chain.from_iterable(map(value_tokens, values)))


_SUFFIXES = ("ies", "ing", "ed", "es", "s")


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """A crude stem (plural and -ing/-ed stripped) for matching words against the taxonomy."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: -len(suffix)]
            if suffix == "ies":
                return base + "y"
            if suffix == "es" and not base.endswith(("s", "x", "ch", "sh")):
                return base + "e"
            return base
    return word


def plain_words(text: str) -> list[str]:
    """Lower-cased words of `text` split at non-alphanumerics only (``GitHub`` stays whole)."""
    if ".js" in text:
        text = _DOTJS_RE.sub(r"\1.js \1js", text)
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS]
