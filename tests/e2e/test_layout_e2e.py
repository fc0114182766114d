"""Every page fits the window: no element wider than the viewport, at desktop and phone sizes,
in light and dark colour schemes (headless Chromium against a real server)."""

from __future__ import annotations

import pytest
from apphelpers import assert_no_exception, open_tab, wait_for_app

pytestmark = pytest.mark.e2e

#: Pages with charts, with a link that draws every chart the page has.
PAGES = {
    "Rank sweep": "Rank_sweep?ranks=1,2,4,8,16,32,64",
    "alpha/r stability": "Alpha_r_stability?rules=fixed-alpha&rules=alpha-eq-r&rules=rslora",
    "Adapter audit": "Adapter_audit?demo=true&compare=true",
}
SIZES = {"desktop": (1400, 900), "phone": (390, 844)}

#: The right edge of the widest element that is not clipped by a scrolling ancestor (a data
#: frame's own horizontal scroll is fine; the page's is not), and the document's scroll width.
_OVERFLOW_JS = """() => {
  const clipped = (el) => {
    for (let p = el.parentElement; p; p = p.parentElement) {
      const s = getComputedStyle(p);
      if (p === document.body || p === document.documentElement) return false;
      // The page's own scrollers: what they clip is exactly the overflow this test is about.
      if (['stMain', 'stAppViewContainer', 'stApp'].includes(p.getAttribute('data-testid'))) return false;
      if (['auto', 'scroll', 'hidden', 'clip'].includes(s.overflowX) &&
          p.getBoundingClientRect().right <= window.innerWidth + 1) return true;
    }
    return false;
  };
  let worst = 0, who = '';
  for (const el of document.querySelectorAll('[data-testid="stMain"] *')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || r.right <= window.innerWidth + 1) continue;
    if (clipped(el)) continue;
    if (r.right > worst) { worst = r.right;
      who = (el.getAttribute('data-testid') || el.tagName) + ' ' + (el.className.baseVal ?? el.className); }
  }
  const main = document.querySelector('[data-testid="stMain"]');
  return {worst: Math.round(worst), who, inner: window.innerWidth,
          // stMain starts after the sidebar: its overflow is scrollWidth - clientWidth.
          scroll: Math.max(document.documentElement.scrollWidth,
                           main ? main.scrollWidth - main.clientWidth + window.innerWidth : 0)};
}"""


#: Chart texts Vega cut short ("…") or hid as overlapping, per visible chart: titles and axis
#: titles cut at the chart's width or the plot's height, and the rank map's module-type labels
#: (a phone hid q_proj and two more of seven). Other axes may thin their tick labels.
_CHART_TEXT_JS = """() => {
  const out = [];
  for (const chart of document.querySelectorAll('[data-testid="stVegaLiteChart"]')) {
    if (!chart.checkVisibility()) continue;
    const title = [...chart.querySelectorAll('.role-title-text text')].map(t => t.textContent).join(' ');
    for (const t of chart.querySelectorAll('svg text'))
      if (t.textContent.endsWith('\u2026')) out.push(`cut: ${t.textContent}`);
    if (title.startsWith('Rank map'))
      for (const t of chart.querySelectorAll('.role-axis-label text'))
        if (t.getAttribute('opacity') === '0') out.push(`hidden label: ${t.textContent}`);
  }
  return out;
}"""


#: Each width once, each colour scheme once: the widths are what the check is about; the scheme
#: only changes colours (both schemes' looks are checked on screenshots, not here).
LOOKS = [("desktop", "light"), ("phone", "dark")]


@pytest.mark.parametrize(("size", "scheme"), LOOKS, ids=[f"{a}-{b}" for a, b in LOOKS])
@pytest.mark.parametrize("label", list(PAGES))
def test_nothing_wider_than_the_window(browser, app_url, shot, label, size, scheme):
    """Every element, charts and legends included, ends inside the window; every tab's too;
    no chart text is cut short or hidden where it should show."""
    width, height = SIZES[size]
    context = browser.new_context(viewport={"width": width, "height": height},
                                  color_scheme=scheme)
    page = context.new_page()
    try:
        page.goto(f"{app_url}/{PAGES[label]}")
        wait_for_app(page, timeout=120_000)  # the session's first page may be a cold start
        assert_no_exception(page)
        names = [t.strip() for t in page.get_by_role("tab").all_inner_texts()] or [""]
        for name in names:
            if name:
                open_tab(page, name)  # a tab draws its charts when open: a rerun
            charts = page.get_by_test_id("stVegaLiteChart")
            for j in range(charts.count()):
                if charts.nth(j).is_visible():
                    charts.nth(j).locator("svg, canvas").first.wait_for(state="attached",
                                                                          timeout=10_000)
            page.wait_for_timeout(300)
            found = page.evaluate(_OVERFLOW_JS)
            if found["worst"] or found["scroll"] > width:
                shot(page, f"overflow_{size}_{scheme}_{label}_{name}")
            assert found["scroll"] <= width, (label, name, found)
            assert found["worst"] == 0, (label, name, found)
            assert page.evaluate(_CHART_TEXT_JS) == [], (label, name)
    finally:
        context.close()
