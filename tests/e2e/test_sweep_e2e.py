"""The Rank sweep page and the home page in headless Chromium against a real server."""

from __future__ import annotations

import csv
import io
import re
import time

import pytest
from apphelpers import assert_no_exception, error_sentences, input_value, set_number, visit, wait_for_app

from ui.common import available_pages

pytestmark = pytest.mark.e2e


def table_rows(page) -> list[list[str]]:
    """Cell texts of the results table (a markdown table in its keyed container), row by row."""
    rows = page.locator(".st-key-sweep_table table tbody tr")
    rows.first.wait_for(state="attached", timeout=10_000)
    return [[t.strip() for t in row.locator("td").all_text_contents()] for row in rows.all()]


def wait_for_ranks(page, ranks: list[str], *, timeout: float = 10.0) -> list[list[str]]:
    """Poll the table until its first column reads ``ranks``; return its rows."""
    deadline = time.monotonic() + timeout
    while True:
        rows = table_rows(page)
        if [row[0] for row in rows] == ranks or time.monotonic() > deadline:
            return rows
        page.wait_for_timeout(100)






class TestColdDeepLink:
    """A shared link opened on a server that has never served a page."""

    def test_first_request_restores_every_setting(self, page, fresh_server, shot):
        """The settings in the URL reach the widgets and the table on a cold server."""
        url = fresh_server()
        visit(page, f"{url}/Rank_sweep?d_out=96&d_in=48&true_rank=6&spectrum=geometric"
                    "&ranks=3,6,12&optimizer=adam&steps=300&seed=2", shot, "cold_deep_link")
        assert page.get_by_role("heading", name="Rank sweep").count() == 1
        assert [input_value(page, k) for k in ("d_out", "d_in", "true_rank", "steps", "seed")] \
            == ["96", "48", "6", "300", "2"]
        assert input_value(page, "ranks") == "3,6,12"
        assert page.locator(".st-key-optimizer input[type=radio]").nth(1).is_checked()
        assert input_value(page, "spectrum") == "geometric"
        rows = wait_for_ranks(page, ["3", "6", "12"])
        assert [row[0] for row in rows] == ["3", "6", "12"]
        assert all(row[5] == "300" for row in rows)

    @pytest.mark.parametrize("page_info", available_pages()[1:], ids=lambda p: p.label)
    def test_every_page_opens_cold(self, page, fresh_server, shot, page_info):
        """Each page's URL as the first request of a fresh server runs that page, not home."""
        url = fresh_server()
        path = page_info.path.removeprefix("pages/").removesuffix(".py").split("_", 1)[1]
        visit(page, f"{url}/{path}", shot, f"cold_{path}")
        assert page.get_by_role("heading", name=page_info.label, exact=True).count() == 1
        sidebar = page.get_by_test_id("stSidebar")
        assert sidebar.get_by_role("link", name=page_info.label).count() == 1

    @pytest.mark.parametrize("query, sentence", [
        ("true_rank=-3", "The link sets `true_rank=-3`, but intrinsic rank k should be at "
                         "least 1; the default 4 is used instead."),
        ("true_rank=abc", "The link sets `true_rank=abc`, but intrinsic rank k should be a "
                          "whole number; the default 4 is used instead."),
        ("true_rank=65", "`true_rank` = 65 is larger than the matrix allows: "
                         "min(d_out, d_in) = 64"),
        ("ranks=2,x", "`ranks` should be whole numbers of at least 1 separated by commas, "
                      "got 'x' in '2,x'"),
    ])
    def test_bad_value_is_one_sentence(self, page, app_url, shot, query, sentence):
        """A hand-edited bad value shows one error sentence and no traceback."""
        visit(page, f"{app_url}/Rank_sweep?{query}", shot, "bad_" + re.sub(r"\W", "_", query))
        assert error_sentences(page) == [sentence.replace("`", "")]  # code spans rendered


class TestInteraction:
    """Changing settings on a running page."""

    def test_changing_a_setting_updates_table_and_url(self, page, app_url, shot):
        """A new rank list reruns the sweep, updates the table and lands in the URL."""
        page.goto(f"{app_url}/Rank_sweep")
        wait_for_app(page)
        before = wait_for_ranks(page, ["2", "4", "16"])
        assert [row[0] for row in before] == ["2", "4", "16"]
        box = page.locator(".st-key-ranks input")
        box.fill("1,4,8")
        box.press("Enter")
        wait_for_app(page)
        set_number(page, "true_rank", 8)
        shot(page, "after_change")
        assert_no_exception(page)
        rows = wait_for_ranks(page, ["1", "4", "8"])
        assert [row[0] for row in rows] == ["1", "4", "8"]
        assert rows != before
        assert "true_rank=8" in page.url and re.search(r"ranks=1(%2C|,)4(%2C|,)8", page.url)
        reading = " ".join(page.get_by_test_id("stMarkdown").all_inner_texts())
        assert "r = 8 matches the intrinsic rank" in reading

    def test_long_run_shows_progress_then_removes_it(self, page, app_url, shot):
        """A sweep of a few seconds shows a progress bar that is gone when the table appears."""
        page.goto(f"{app_url}/Rank_sweep?d_out=256&d_in=256&true_rank=8&ranks=8,32,64&steps=3000")
        bar = page.get_by_test_id("stProgress")
        # read the bar's text the moment it shows: on a quiet machine the run may end (and the
        # bar go) between a wait and a second look (CI: inner_text timed out after wait_for)
        text = page.wait_for_function(
            "() => document.querySelector('[data-testid=\"stProgress\"]')?.innerText",
            timeout=30_000, polling=20).json_value()
        assert "Fitting LoRA at r = 8, 32, 64" in text
        shot(page, "progress")
        wait_for_app(page)
        assert bar.count() == 0
        assert [row[0] for row in wait_for_ranks(page, ["8", "32", "64"])] == ["8", "32", "64"]
        assert_no_exception(page)

    def test_csv_download_matches_table(self, page, app_url, tmp_path):
        """The CSV download holds one row per rank with the table's numbers."""
        page.goto(f"{app_url}/Rank_sweep")
        wait_for_app(page)
        with page.expect_download() as info:
            page.get_by_role("button", name="Download CSV").click()
        download = info.value
        assert download.suggested_filename == "lorarank-sweep.csv"
        path = tmp_path / download.suggested_filename
        download.save_as(path)
        records = list(csv.DictReader(io.StringIO(path.read_text())))
        assert [r["rank"] for r in records] == ["2", "4", "16"]
        shown = {row[0]: row[2] for row in wait_for_ranks(page, ["2", "4", "16"])}
        for rec in records:
            assert f"{float(rec['rel_err']):.4g}" == shown[rec["rank"]]
        assert_no_exception(page)


class TestHome:
    """The home page and the navigation."""

    def test_home_links_open_pages(self, page, app_url, shot):
        """The home page's link to the Rank sweep opens it; the sidebar link goes back."""
        visit(page, app_url, shot, "home")
        assert page.get_by_text("h = W x + s · B A x").count() == 1
        main = page.get_by_test_id("stMain")
        main.get_by_role("link", name="Rank sweep").click()
        wait_for_app(page)
        assert page.url.rstrip("/").endswith("/Rank_sweep")
        assert page.get_by_role("heading", name="Rank sweep").count() == 1
        assert_no_exception(page)
        page.get_by_test_id("stSidebar").get_by_role("link", name="Home").click()
        wait_for_app(page)
        assert page.get_by_role("heading", name="lorarank").count() == 1

    def test_sidebar_uses_readable_labels(self, page, app_url):
        """The sidebar lists pages by readable names, not file names."""
        page.goto(app_url)
        wait_for_app(page)
        sidebar = page.get_by_test_id("stSidebar")
        for label in ("Home", "Rank sweep"):
            assert sidebar.get_by_role("link", name=label).count() == 1
        texts = sidebar.get_by_role("link").all_inner_texts()
        assert not any(re.search(r"\d_|Rank_sweep", text) for text in texts)
