"""The tokenizer: camelCase, snake_case, paths and error codes."""

from __future__ import annotations

import pytest

from jarvis_kernel.librarian.text import fts_text, stem, tokens, words


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("OAuthCallbackError", {"oauth", "callback", "error", "oauthcallbackerror"}),
        ("create_access_token", {"create", "access", "token", "createaccesstoken"}),
        ("src/pages/api/auth/[...nextauth].ts", {"src", "pages", "api", "auth", "nextauth"}),
        ("TS2322", {"ts", "2322", "ts2322"}),
        ("ERR_MODULE_NOT_FOUND", {"err", "module", "found", "errmodulenotfound"}),
        ("getStaticProps", {"get", "static", "props", "getstaticprops"}),
        ("three.js scene", {"three", "threejs", "scene"}),
        ("HS256", {"hs", "256", "hs256"}),
    ],
)
def test_tokens_split_identifiers_and_keep_them_whole(text: str, expected: set[str]) -> None:
    assert expected <= set(tokens(text))


def test_queries_and_documents_meet() -> None:
    doc = set(tokens("fixes OAuthCallbackError by setting NEXTAUTH_URL"))
    assert {"callback", "error"} <= doc
    assert set(tokens("oauth callback")) <= doc
    assert "nextauth" in set(tokens("NextAuth")) & doc


def test_stopwords_and_single_letters_are_dropped() -> None:
    assert words("How did we set up a cache in X?") == ["cache"]


def test_fts_text_joins_with_spaces() -> None:
    assert fts_text(["fooBar", "baz"]) == "foo bar foobar baz"


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("tables", "table"),
        ("sending", "send"),
        ("failed", "fail"),
        ("queries", "query"),
        ("is", "is"),
        ("boxes", "box"),
    ],
)
def test_stem(word: str, expected: str) -> None:
    assert stem(word) == expected
