"""Issue 23's link and name cases in headless Chromium: nothing a link or a zip carries renders.

The Hub and series views put ``str(exc)``, notes and URL values into markdown unescaped: a
crafted link, with no upload, drew a "sign in again" link and a remote image inside the app's
own error and note boxes. These tests open such links and upload such a zip on a real server and
look at the rendered DOM: no ``<a>``, no ``<img>``, no KaTeX, no coloured span inside an alert,
while the sentence still names the bad value as text. The CSV download of an adapter whose
module names are spreadsheet formulas holds them as text (a leading ``'``).
"""

from __future__ import annotations

import csv
import io
import sys
import urllib.parse
from pathlib import Path

import pytest
from apphelpers import adapter_uploader, alerts_are_inert, assert_no_exception, open_tab, uploader, visit, wait_for_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hostile"))
import corpus23  # noqa: E402  (the hostile corpus's builders)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("query", [
    {"hf": corpus23.PHISH},
    {"series_hf": "owner/name", "series_revisions": f"main,{corpus23.PHISH}", "tab": "Rank over training"},
], ids=["hf", "series-revisions"])
def test_link_cannot_render_markup(page, app_url, query):
    """A link alone: the error names the bad value as text; no link, image or maths renders."""
    visit(page, f"{app_url}/Adapter_audit?{urllib.parse.urlencode(query)}")
    texts = alerts_are_inert(page)
    assert any("evil.example" in t for t in texts), texts


@pytest.mark.parametrize("query", [
    {"q": "hf://" + corpus23.PHISH},
    {"q": "hf://?author=" + corpus23.PHISH},
    {"keep": corpus23.PHISH},
], ids=["fleet-q", "fleet-author", "fleet-keep"])
def test_fleet_link_cannot_render_markup(page, app_url, query):
    """The Fleet page's link (its Hub sources and settings): the error names the value as text."""
    visit(page, f"{app_url}/Fleet?{urllib.parse.urlencode(query)}")
    texts = alerts_are_inert(page)
    assert any("evil.example" in t for t in texts), texts


def test_zip_member_names_cannot_render_markup(page, app_url):
    """A zipped run whose left-out file is named with link markup: the note shows the name."""
    page.goto(f"{app_url}/Adapter_audit?tab={urllib.parse.quote('Rank over training')}")
    wait_for_app(page)
    open_tab(page, "Rank over training")
    (name, data), = corpus23.run_phishing_names().items()
    uploader(page, "audit_series_upload").set_input_files(files=[
        {"name": name, "mimeType": "application/zip", "buffer": data}])
    page.get_by_text("left out").first.wait_for(timeout=90_000)
    wait_for_app(page)
    assert_no_exception(page)
    texts = alerts_are_inert(page)
    assert any("evil.example" in t and "left out" in t for t in texts), texts


def test_csv_download_holds_formulas_as_text(page, app_url):
    """Module names =HYPERLINK(...), +cmd|..., -2+3, @SUM(...) reach the CSV with a leading '."""
    page.goto(f"{app_url}/Adapter_audit")
    wait_for_app(page)
    (name, data), = corpus23.formula_names().items()
    adapter_uploader(page).set_input_files(files=[
        {"name": name, "mimeType": "application/octet-stream", "buffer": data}])
    page.locator(".st-key-audit_download_csv").wait_for(timeout=90_000)
    wait_for_app(page)
    assert_no_exception(page)
    with page.expect_download() as info:
        page.locator(".st-key-audit_download_csv").get_by_role("button").click()
    rows = list(csv.reader(io.StringIO(Path(info.value.path()).read_text(encoding="utf-8"))))
    header, body = rows[0], rows[1:]
    names = [row[header.index("name")] for row in body]
    assert sorted(n.lstrip("'") for n in names) == sorted(corpus23.FORMULAS), names
    assert all(n.startswith("'") for n in names), names
