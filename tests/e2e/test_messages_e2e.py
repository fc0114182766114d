"""What the pages say while they work and how it reads, in headless Chromium: a long run's
progress bar gives the whole run's progress and the time left."""

from __future__ import annotations

import re
import time
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


def test_long_run_progress_covers_the_whole_run(page, asking_server, shot):
    """A sweep run rank by rank: the bar names the rank running among all of them, how much of
    the whole run is done, and soon the time left (it covered the current rank only)."""
    page.goto(f"{asking_server.url}/Rank_sweep?d_out=256&d_in=256&true_rank=8&ranks=8,32,64"
              "&steps=3000")
    wait_for_app(page, timeout=120_000)
    page.locator(".st-key-sweep_gate_run").get_by_role("button").click()
    texts: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = page.evaluate("() => document.querySelector('[data-testid=\"stProgress\"]')?.innerText")
        if text:
            if not texts or text != texts[-1]:
                texts.append(text)
            if len(texts) == 3:
                shot(page, "progress")
        elif texts and page.get_by_test_id("stDataFrame").count():
            break
        page.wait_for_timeout(100)
    wait_for_app(page, timeout=120_000)
    assert_no_exception(page)
    assert texts, "no progress bar was seen"
    parts = [re.search(r"at r = (\d+): .*; rank (\d) of 3, (\d+) % of the run", t) for t in texts]
    seen = [(m.group(1), m.group(2), int(m.group(3))) for m in parts if m]
    assert seen, texts
    assert {(r, i) for r, i, _ in seen} <= {("8", "1"), ("32", "2"), ("64", "3")}
    shares = [p for _, _, p in seen]
    assert shares == sorted(shares)  # the whole run's share only grows
    assert any(t.endswith("left)") for t in texts), texts
