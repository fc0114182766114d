"""Shared links and uploads cannot phish through the app's own boxes (issue 12, "Seen" 4).

A backtick in a URL value (``?d_out=``, ``?rules=``, ``?module=``) or in a tensor name used to
close the code span of the error sentence, so a markdown link ("Session expired - sign in
again") and an external image rendered inside the red box. Every user value now reaches
markdown through ``ui.common.md_code`` / ``md_escape``; these tests look at the rendered DOM
in headless Chromium: no link, no image, no coloured span, no KaTeX inside an alert.
"""

from __future__ import annotations

import urllib.parse

import pytest

from apphelpers import alerts_are_inert, visit

pytestmark = pytest.mark.e2e

LINK = "[Session expired - sign in again](https://evil.example/login)"
IMAGE = "![x](https://evil.example/pixel.png)"
PAYLOADS = [
    f"1` {LINK} {IMAGE} `",
    f"``` {LINK} ``` ``",
    f"x` <img src=https://evil.example/i.png> https://evil.example www.evil.example :red[RED] $x^2$ `",
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("path, key", [("Rank_sweep", "d_out"), ("Alpha_r_stability", "rules"),
                                       ("Rank_sweep", "ranks")])
def test_url_value_cannot_render_markup(page, app_url, path, key, payload):
    """The bad value is named in the error box, as text: the evil link is shown, not linked."""
    visit(page, f"{app_url}/{path}?{key}={urllib.parse.quote(payload)}")
    texts = alerts_are_inert(page)
    assert any("evil.example" in t for t in texts), texts


@pytest.mark.parametrize("payload", PAYLOADS[:2])
def test_module_value_cannot_render_markup(page, app_url, payload):
    """``?module=`` on the audit page (demo adapter): the error names it without markup."""
    visit(page, f"{app_url}/Adapter_audit?demo=true&module={urllib.parse.quote(payload)}")
    texts = alerts_are_inert(page)
    assert any("evil.example" in t for t in texts), texts
