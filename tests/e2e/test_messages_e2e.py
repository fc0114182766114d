"""What the pages say while they work and how it reads, in headless Chromium: a long run's
progress bar gives the whole run's progress and the time left."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from apphelpers import AppServer, assert_no_exception, wait_for_app

pytestmark = pytest.mark.e2e


@pytest.fixture
def asking_server(tmp_path: Path):
    """A server that asks before any sweep of more than 0.2 s (so it runs rank by rank)."""
    server = AppServer(tmp_path / "streamlit.log", env={"LORARANK_ASK_SECONDS": "0.2"})
    yield server
    server.stop()


#: Records every text the page's progress bars show, as the browser draws it (installed before
#: Run, so neither the run's first bar nor its last can be missed by a poll that comes late), each
#: once, in the order first drawn: as a bar goes, the browser can draw one of its earlier texts
#: again for a moment (seen under load: "98 %" after "100 %"), which says nothing new.
_RECORD_PROGRESS_JS = """() => {
  window.__progress = [];
  const seen = new Set();
  const record = () => {
    for (const bar of document.querySelectorAll('[data-testid="stProgress"]')) {
      const text = bar.innerText;
      if (text && !seen.has(text)) { seen.add(text); window.__progress.push(text); }
    }
  };
  new MutationObserver(record).observe(document.body, {childList: true, subtree: true, characterData: true});
}"""

#: The run is over: a bar was drawn, none is left, and the script is not running.
_RUN_OVER_JS = """() => window.__progress.length > 0 && !document.querySelector('[data-testid="stProgress"]')
  && document.querySelector('[data-testid="stApp"]')?.dataset.testScriptState === 'notRunning'"""


def test_long_run_progress_covers_the_whole_run(page, asking_server, shot):
    """A sweep run rank by rank: the bar names the rank running among all of them, how much of
    the whole run is done, and soon the time left (it covered the current rank only).

    Every text the bars show is recorded by the page as it is drawn (a MutationObserver), so a
    busy machine that runs the sweep faster or slower than a poll samples it changes nothing.
    The run is long enough by construction to show the time left (it appears after 1 s and 1 %):
    3.4 s on the team's 2-core machine under a load of 4 with ranks 8, 32, 64, most of it 512 x 512 at
    r = 64 for 5,000 steps (the old 256 x 256, 3,000 steps took under a second: the time left could miss).
    The wait for its end has no poll of its own to break off (the old loop waited for a results
    table drawn as markdown, so it always ran to its 180 s deadline). The first rank is 32, not
    8: a first rank of a few tenths of a second could run, with the suite's other worker busy,
    between two of the browser's renders, and its bar was never drawn (CI, 2026-12-07).
    """
    page.goto(f"{asking_server.url}/Rank_sweep?d_out=512&d_in=512&true_rank=8&ranks=32,48,64"
              "&steps=5000")
    wait_for_app(page, timeout=120_000)
    page.evaluate(_RECORD_PROGRESS_JS)
    page.locator(".st-key-sweep_gate_run").get_by_role("button").click()
    page.wait_for_function(_RUN_OVER_JS, timeout=240_000, polling=200)
    wait_for_app(page, timeout=120_000)
    shot(page, "after-run")
    assert_no_exception(page)
    assert page.get_by_text("steps run", exact=False).count() > 0  # the run's results are shown
    texts: list[str] = page.evaluate("() => window.__progress")
    counted = [t for t in texts if t.endswith(")")]  # a new bar shows its label alone until its first tick
    parts = [re.search(r"at r = (\d+): .*; rank (\d) of 3, (\d+) % of the run", t) for t in counted]
    seen = [(m.group(1), m.group(2), int(m.group(3))) for m in parts if m]
    assert len(seen) == len(counted), texts  # every count says which rank of the run
    assert {(r, i) for r, i, _ in seen} == {("32", "1"), ("48", "2"), ("64", "3")}, texts
    shares = [p for _, _, p in seen]
    assert shares == sorted(shares), texts  # the whole run's share only grows
    assert any(t.endswith("left)") for t in texts), texts


#: WCAG contrast of every selected multiselect option ("chip"): its text on its background.
_CHIP_CONTRAST_JS = """() => {
  const lum = (css) => {
    const [r, g, b] = css.match(/[\\d.]+/g).slice(0, 3).map(Number).map(v => {
      v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  return [...document.querySelectorAll('[data-testid="stMultiSelectTagsContainer"] span[data-tag]')].map(tag => {
    const s = getComputedStyle(tag);
    const [a, b] = [lum(s.color), lum(s.backgroundColor)].sort((x, y) => y - x);
    return [tag.innerText.trim(), Math.round(100 * (a + 0.05) / (b + 0.05)) / 100];
  });
}"""


@pytest.mark.parametrize("scheme", ["dark", "light"])
def test_selected_chips_are_readable(browser, app_url, scheme):
    """The scaling rules' chips: at least 4.5:1 in both colour schemes (dark mode drew white on
    light indigo, 2.8:1); the style that sets them adds no element to the page."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, color_scheme=scheme)
    page = context.new_page()
    try:
        page.goto(f"{app_url}/Alpha_r_stability")
        wait_for_app(page, timeout=120_000)
        chips = page.evaluate(_CHIP_CONTRAST_JS)
        assert [name for name, _ in chips] == ["fixed-alpha", "alpha-eq-r", "alpha-eq-2r", "rslora"]
        assert all(ratio >= 4.5 for _, ratio in chips), chips
        # the style rides in the Copy link button's element: no element of its own
        htmls = page.get_by_test_id("stHtml")
        assert htmls.count() == 1 and htmls.first.get_by_role("button", name="Copy link").count() == 1
    finally:
        context.close()
