"""returnTo validation and the success/cancel URLs given to Stripe."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from checkout.redirects import is_valid_return_to, redirect_urls, with_query


@pytest.mark.parametrize(
    "value", ["/", "/chat", "/credits?tab=buy", "/a/b#section", "/x?y=1&z=2", "/" + "a" * 511]
)
def test_relative_paths_are_accepted(value: str) -> None:
    assert is_valid_return_to(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "chat",
        "//evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "/\t/evil.example",
        "/\n",
        "/" + "a" * 512,
    ],
)
def test_anything_else_is_refused(value: str) -> None:
    assert not is_valid_return_to(value)


def test_query_is_added_to_a_plain_path() -> None:
    assert with_query("/chat", {"checkout": "success"}) == "/chat?checkout=success"


def test_query_is_appended_to_an_existing_one() -> None:
    assert with_query("/chat?tab=1", {"checkout": "success"}) == "/chat?tab=1&checkout=success"
    assert with_query("/chat?", {"checkout": "success"}) == "/chat?checkout=success"


def test_query_goes_before_the_fragment() -> None:
    assert with_query("/chat#end", {"a": "b"}) == "/chat?a=b#end"


def test_success_and_cancel_urls() -> None:
    success, cancel = redirect_urls("http://localhost:5173/", "/chat?tab=1", "p-1")

    assert success == "http://localhost:5173/chat?tab=1&checkout=success&purchase=p-1"
    assert cancel == "http://localhost:5173/chat?tab=1&checkout=cancelled&purchase=p-1"
    query = parse_qs(urlsplit(success).query)
    assert query == {"tab": ["1"], "checkout": ["success"], "purchase": ["p-1"]}
