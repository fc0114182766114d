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


def test_real_example_in_one_click(browser, app_url, shot):
    """On the empty audit page one click on a pill opens a real example: the table shows, the
    link names it; the selected pill reads at 4.5:1 or more in dark mode."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, color_scheme="dark")
    page = context.new_page()
    try:
        page.goto(f"{app_url}/Adapter_audit")
        wait_for_app(page, timeout=120_000)
        page.get_by_role("radio", name="LyCORIS LoKr").click()  # the pills are a radio group
        page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)
        wait_for_app(page)
        assert_no_exception(page)
        assert "example=LyCORIS+LoKr" in page.url or "example=LyCORIS%20LoKr" in page.url
        body = page.get_by_test_id("stMain").inner_text()
        assert "Showing the real example LyCORIS LoKr" in body
        assert "Loaded: lycoris_lokr.safetensors" in body
        shot(page, "example_dark")
        page.get_by_test_id("stExpander").get_by_text("Upload your own adapter").click()  # the inputs fold; the pills are in them
        ratio = page.evaluate("""() => {
          const rgba = (css) => { const v = css.match(/[\\d.]+/g).map(Number); return [v[0], v[1], v[2], v.length > 3 ? v[3] : 1]; };
          const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
            return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
          const pill = [...document.querySelectorAll('[role=radio]')].find(b => b.innerText.trim() === 'LyCORIS LoKr');
          // the pill's background as painted: its translucent layers over the first opaque one
          const layers = [];
          for (let e = pill; e; e = e.parentElement) {
            const c = rgba(getComputedStyle(e).backgroundColor);
            if (c[3] > 0) layers.push(c);
            if (c[3] === 1) break;
          }
          let bg = layers.length && layers[layers.length - 1][3] === 1 ? layers.pop() : [255, 255, 255, 1];
          for (const c of layers.reverse()) bg = bg.map((v, i) => i < 3 ? c[i] * c[3] + v * (1 - c[3]) : 1);
          const text = rgba(getComputedStyle(pill.querySelector('p') || pill).color);
          const [a, b] = [lum(text), lum(bg)].sort((x, y) => y - x);
          return (a + 0.05) / (b + 0.05);
        }""")
        assert ratio >= 4.5, ratio
    finally:
        context.close()
