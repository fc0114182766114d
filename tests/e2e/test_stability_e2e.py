"""The alpha/r stability page in headless Chromium against a real server."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from apphelpers import assert_no_exception, error_sentences, input_value, set_number, visit, wait_for_app

pytestmark = pytest.mark.e2e

COLD_QUERY = ("d_out=48&d_in=40&sigma_max=20&ranks=2,8,32&lrs=0.003,0.03,0.3&steps=120&seed=3"
              "&alpha=8&rules=fixed-alpha&rules=alpha-eq-r&curves_rule=alpha-eq-r"
              "&curves_mode=every+lr+at+one+rank&curves_rank=8&calc_convention=rslora&calc_r=8"
              "&calc_alpha=16&calc_r_new=32")






def markdown_text(page) -> str:
    return " ".join(page.get_by_test_id("stMarkdown").all_inner_texts())


def heatmap_spec_rules(page) -> list[str]:
    """Panel titles of the rendered heatmap (facet headers are SVG text)."""
    chart = page.get_by_test_id("stVegaLiteChart").first
    chart.locator("svg, canvas").first.wait_for(state="attached", timeout=10_000)
    return chart.locator("svg text").all_text_contents()


class TestColdDeepLink:
    """A shared link opened on a server that has never served a page."""

    def test_first_request_restores_every_setting(self, page, fresh_server, shot):
        """Target, grid, curve and calculator settings in the URL reach the page on a cold server."""
        url = fresh_server()
        visit(page, f"{url}/Alpha_r_stability?{COLD_QUERY}", shot, "stability_cold_deep_link")
        assert page.get_by_role("heading", name="alpha/r stability").count() == 1
        assert [input_value(page, k) for k in ("d_out", "d_in", "steps", "seed")] == \
            ["48", "40", "120", "3"]
        assert float(input_value(page, "sigma_max")) == 20.0
        assert float(input_value(page, "alpha")) == 8.0
        assert input_value(page, "ranks") == "2,8,32"
        assert input_value(page, "lrs") == "0.003,0.03,0.3"
        chips = page.locator(".st-key-rules").get_by_role("button").all_inner_texts()
        text = " ".join(page.locator(".st-key-rules").all_inner_texts())
        assert "fixed-alpha" in text and "alpha-eq-r" in text and "rslora" not in text, chips
        # the reading covers exactly the two rules asked for, at the ranks asked for
        reading = markdown_text(page)
        assert "fixed-alpha (s = 4 at r = 2 to 0.25 at r = 32)" in reading
        assert "alpha-eq-r (s = 1 at every rank)" in reading
        assert "rslora (" not in reading
        # curve selectors and calculator restored
        assert page.locator(".st-key-curves_mode input[type=radio]").nth(1).is_checked()
        assert input_value(page, "curves_rule") == "alpha-eq-r"
        assert input_value(page, "calc_convention") == "rslora"
        assert [input_value(page, k) for k in ("calc_r", "calc_r_new")] == ["8", "32"]
        metrics = page.get_by_test_id("stMetricValue").all_inner_texts()
        assert metrics[0] == "5.65685"  # 16 / sqrt(8)

    @pytest.mark.parametrize("query, sentence", [
        ("lrs=0.01,-3", "lrs should be positive numbers separated by commas, got '-3' in "
                        "'0.01,-3'"),
        ("rules=bogus&rules=rslora&steps=30", "The link sets rules=bogus, but scaling rules are "
                                              "fixed-alpha, alpha-eq-r, alpha-eq-2r, rslora; it "
                                              "is ignored."),
        ("steps=0", "The link sets steps=0, but steps should be at least 1; the default 200 is "
                    "used instead."),
    ])
    def test_bad_value_is_one_sentence(self, page, app_url, shot, query, sentence):
        """A hand-edited bad value shows one error sentence and no traceback."""
        visit(page, f"{app_url}/Alpha_r_stability?{query}", shot, "stability_bad_" + re.sub(r"\W", "_", query))
        assert error_sentences(page) == [sentence]


class TestInteraction:
    """Changing settings on a running page."""

    def test_default_page_and_downloads(self, page, app_url, tmp_path, shot):
        """The default grid renders four heatmap panels; CSV and JSON downloads hold every cell."""
        visit(page, f"{app_url}/Alpha_r_stability", shot, "stability_default")
        assert "the window moves to larger learning rates as r grows" in markdown_text(page)
        with page.expect_download() as info:
            page.get_by_role("button", name="Download CSV").click()
        path = tmp_path / info.value.suggested_filename
        info.value.save_as(path)
        assert path.name == "lorarank-stability.csv"
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        assert len(rows) == 4 * 5 * 5
        with page.expect_download() as info:
            page.get_by_role("button", name="Download JSON").click()
        jpath = tmp_path / info.value.suggested_filename
        info.value.save_as(jpath)
        doc = json.loads(jpath.read_text())
        assert set(doc) == {"config", "records"} and len(doc["records"]) == 100
        assert_no_exception(page)

    def test_changing_steps_reruns_and_lands_in_url(self, page, app_url):
        """A new step count reruns the grid and appears in the URL."""
        page.goto(f"{app_url}/Alpha_r_stability?ranks=4,16&lrs=0.001,0.1")
        wait_for_app(page)
        set_number(page, "steps", 40)
        assert_no_exception(page)
        assert "steps=40" in page.url
        assert re.search(r"40 steps", markdown_text(page) + " ".join(
            page.get_by_test_id("stCaptionContainer").all_inner_texts()))
