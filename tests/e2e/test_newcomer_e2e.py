"""What a newcomer looks for, in headless Chromium: a Copy link button on every view that copies
the view's link (settings and tab), and a glossary reachable from the pages."""

from __future__ import annotations

import pytest
from apphelpers import assert_no_exception, wait_for_app

pytestmark = pytest.mark.e2e

#: Every page, with settings and an open tab in the link where the page has them.
VIEWS = ["/", "/Rank_sweep?ranks=2%2C8&true_rank=2", "/Alpha_r_stability?tab=Scaling+calculator",
         "/Adapter_audit?demo=true&tab=Spectrum", "/Fleet", "/Glossary?term=stable-rank"]


def test_copy_link_on_every_view(browser, app_url):
    """Each view has one "Copy link" button; it puts the address with every setting and the
    open tab on the clipboard, and a setting changed on the page is in the next copy."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app_url)
    page = context.new_page()
    try:
        for view in VIEWS:
            page.goto(app_url + view)
            wait_for_app(page, timeout=120_000)
            assert_no_exception(page)
            button = page.get_by_role("button", name="Copy link")
            assert button.count() == 1, view
            button.click()
            page.get_by_role("button", name="Link copied").wait_for(timeout=5_000)
            copied = page.evaluate("navigator.clipboard.readText()")
            assert copied == page.url, view
            for part in view.split("?", 1)[1:]:
                for pair in part.split("&"):
                    assert pair in copied, (view, copied)
        # a setting changed on the page is in the link copied next
        page.goto(app_url + "/Rank_sweep")
        wait_for_app(page, timeout=120_000)
        box = page.locator(".st-key-true_rank input")
        box.fill("3")
        box.press("Enter")
        wait_for_app(page)
        page.get_by_role("button", name="Copy link").click()
        page.get_by_role("button", name="Link copied").wait_for(timeout=5_000)
        assert "true_rank=3" in page.evaluate("navigator.clipboard.readText()")
    finally:
        context.close()


def test_glossary_reachable_from_a_page(page, app_url):
    """A page's About box links its terms to the Glossary, filtered to the term; the Glossary
    is in the navigation and explains the term."""
    page.goto(f"{app_url}/Rank_sweep")
    wait_for_app(page, timeout=120_000)
    assert page.get_by_test_id("stSidebar").get_by_role("link", name="Glossary").count() == 1
    page.get_by_text("About this page").click()
    link = page.get_by_role("link", name="Eckart-Young theorem")
    link.wait_for(timeout=10_000)
    href = link.get_attribute("href")
    assert href.endswith("/Glossary?term=eckart-young-theorem")
    page.goto(app_url + "/Glossary?term=eckart-young-theorem")
    wait_for_app(page, timeout=120_000)
    assert_no_exception(page)
    body = page.get_by_test_id("stMain").inner_text()
    assert "Eckart-Young theorem: Cutting dW to its top k directions is the best rank-k" in body
    assert "Stable rank" not in body and "stable rank:" not in body  # only the term asked for
    page.locator(".st-key-term input").fill("")
    page.locator(".st-key-term input").press("Enter")
    wait_for_app(page)
    body = page.get_by_test_id("stMain").inner_text()
    for term in ("Gavish-Donoho threshold", "subspace similarity φ", "stable rank",
                 "entropy rank", "intruder dimensions", "energy rank k(t)"):
        assert f"{term}:" in body, term
