"""The HTML report opens from file:// in headless Chromium with the network blocked and draws
every chart, with tooltips."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from apphelpers import REPO

pytestmark = pytest.mark.e2e
SAMPLES = REPO.parent / "shared" / "samples"
if not SAMPLES.is_dir():
    SAMPLES = Path("/work/shared/samples")


def open_offline(context, path: Path):
    """A page with every non-file request refused, showing ``path``; returns (page, refused)."""
    refused: list[str] = []

    def block(route):
        if route.request.url.startswith("file://"):
            return route.continue_()
        refused.append(route.request.url)
        return route.abort()

    context.set_offline(True)
    page = context.new_page()
    page.route("**/*", block)
    page.goto(path.as_uri())
    return page, refused


def check_every_chart(page, count: int) -> None:
    charts = page.locator("div.chart")
    assert charts.count() == count
    page.wait_for_function(
        "n => document.querySelectorAll('div.chart[data-rendered]').length === n", arg=count,
        timeout=60_000)
    for i in range(count):
        chart = charts.nth(i)
        assert chart.get_attribute("data-rendered") == "true", chart.inner_text()
        assert chart.locator("svg .mark-rect, svg .mark-symbol, svg .mark-line, svg .mark-rule, "
                             "svg .mark-text, svg path").count() > 0


def hover_tooltip(page, selector: str) -> str:
    """Hover the first mark matching ``selector`` and return the Vega tooltip's text."""
    page.locator(selector).first.hover(force=True)
    tip = page.locator("#vg-tooltip-element")
    tip.wait_for(state="visible", timeout=10_000)
    return tip.inner_text()


@pytest.mark.skipif(not (SAMPLES / "peft_llama_r8").is_dir(), reason="samples not present")
def test_cli_audit_report_opens_offline(context, tmp_path, shot):
    out = tmp_path / "audit.html"
    folder = SAMPLES / "peft_llama_r8"
    run = subprocess.run([sys.executable, "-m", "lorarank", "audit", str(folder), "--json",
                          "--html", str(out)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    html = out.read_text()
    embedded = re.search(r'id="lorarank-document">(.*?)</script>', html, re.S).group(1)
    assert json.loads(embedded) == json.loads(run.stdout)  # the --json document, in the file

    page, refused = open_offline(context, out)
    check_every_chart(page, 3)
    shot(page, "audit_report")
    assert page.locator("table tbody tr").count() == 14
    text = hover_tooltip(page, "#chart-0 svg .mark-rect path")
    assert "module" in text and "model.layers" in text
    assert refused == []  # it never asked for anything
    page.close()
