"""Credit figures and client-supplied return paths."""

from __future__ import annotations

import pytest
from billing_platform.money import credits_text
from billing_platform.paths import is_local_path


@pytest.mark.parametrize(
    ("millicredits", "text"),
    [(12_500, "12.500"), (0, "0.000"), (-1, "-0.001"), (50_000_000, "50000.000"), (999, "0.999")],
)
def test_credit_figures_have_three_places(millicredits: int, text: str) -> None:
    assert credits_text(millicredits) == text


@pytest.mark.parametrize("path", ["/", "/chat", "/chat?x=1#top", "/a/b%2Fc"])
def test_same_origin_paths_are_accepted(path: str) -> None:
    assert is_local_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "chat",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "/a\nb",
        "/" + "a" * 512,
    ],
)
def test_anything_a_browser_could_read_as_another_host_is_refused(path: str) -> None:
    assert not is_local_path(path)
