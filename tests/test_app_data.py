"""The data mode of the Rank sweep and alpha/r stability pages, run headless with AppTest."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from lorarank.data import DataConfig, fit_data
from lorarank.synthetic import make_target
from markdown_tables import tables
from ui.common import md_plain
import testkit

TIMEOUT = 120
SMALL = {"ranks": "2,4,16", "steps": "600"}


def open_page(page: str, **query: str) -> AppTest:
    return testkit.open_page(page, query, timeout=TIMEOUT, home_first=False)


text = testkit.page_text


class TestSweepDataMode:
    def test_exact_mode_default_shows_switch(self):
        """By default the section only offers the switch; no data-mode table is drawn."""
        at = open_page("pages/1_Rank_sweep.py", tab="Finite data", **SMALL)
        assert not at.exception
        assert at.radio(key="mode").value == "exact"
        assert len(at.dataframe) == 0 and len(tables(at)) == 1  # the exact table (markdown)
        assert any("Switch the training signal" in md_plain(c.value) for c in at.caption)
        assert not any("n → ∞ limit); the finite-data" in md_plain(c.value) for c in at.caption)

    def test_data_mode_from_url(self):
        """?mode=data&samples=128,2048: a row per (n, r) equal to the engine's numbers, the
        reading saying held-out loss rises past r = 4 at n = 128, and the loss chart."""
        at = open_page("pages/1_Rank_sweep.py", mode="data", samples="128,2048", **SMALL)
        assert not at.exception and not at.error
        # results first: the data's table is the page's first (and only) table; the exact
        # target's is in its own tab, not drawn until opened
        assert len(at.dataframe) == 1
        frame = at.dataframe[0].value
        assert frame["n"].tolist() == [128] * 3 + [2048] * 3
        engine = fit_data(make_target(), [2, 4, 16], data=DataConfig(samples=128), steps=600)
        assert frame["held-out loss"].tolist()[:3] == [f"{r.heldout_loss:.4g}" for r in engine]
        assert frame["rank-r optimum"].tolist()[:3] == [f"{r.optimal_train_loss:.4g}" for r in engine]
        words = text(at)
        assert "With **n = 128** pairs the held-out loss is lowest at **r = 4**" in words
        assert "more rank hurts" in words
        specs = [c.proto.spec for c in at.get("vega_lite_chart")]
        assert any('"held-out loss"' in s and '"training pairs"' in s for s in specs)
        assert "**Held-out loss against rank for each n" in words  # the chart's title, above it
        assert [t.label for t in at.tabs] == ["Held-out loss", "Spectra", "Loss curves", "Exact target"]

    def test_data_mode_tabs_show_the_data(self):
        """The Spectra and Loss curves tabs of the data mode draw the data's fits (one loss
        chart per n, titled with it); the Exact target tab draws the exact table, saying so."""
        at = open_page("pages/1_Rank_sweep.py", mode="data", samples="128,2048", tab="Loss curves",
                       **SMALL)
        assert not at.exception and not at.error
        titles = [json.loads(c.proto.spec).get("title") for c in at.get("vega_lite_chart")]
        assert titles == ["n = 128: training loss per rank", "n = 2048: training loss per rank"]
        assert any("one chart per n" in md_plain(c.value) for c in at.caption)
        at = open_page("pages/1_Rank_sweep.py", mode="data", samples="128,2048", tab="Spectra", **SMALL)
        assert any("Trained on n = 128 pairs (the smallest n)" in md_plain(c.value) for c in at.caption)
        at = open_page("pages/1_Rank_sweep.py", mode="data", samples="128,2048", tab="Exact target",
                       **SMALL)
        assert not at.exception and not at.error
        assert len(at.dataframe) == 1 and "Eckart-Young optimum" in tables(at)[0][0]
        assert any("This is the **exact target** T (the n → ∞ limit" in md_plain(c.value) for c in at.caption)

    def test_bad_samples_one_sentence(self):
        """A bad list of n is one error sentence, no traceback."""
        at = open_page("pages/1_Rank_sweep.py", mode="data", samples="128,abc", **SMALL)
        assert not at.exception
        assert [md_plain(e.value) for e in at.error] == [
            "`samples` should be whole numbers from 1 to 20,000 separated by commas, got 'abc' in '128,abc'"]

    def test_json_download_shape(self):
        """The JSON download carries train/held-out losses per (n, r)."""
        from ui.datamode import DataSweepConfig, data_json, run_data_sweep
        from ui.sweep import SweepConfig

        cfg = DataSweepConfig(sweep=SweepConfig(ranks=(2, 4), steps=50), samples=(100,))
        doc = data_json(run_data_sweep(cfg))
        json.dumps(doc, allow_nan=False)
        assert doc["config"]["samples"] == [100] and doc["config"]["lr"] == 0.005
        assert [r["samples"] for r in doc["results"]] == [100, 100]
        assert all(r["train_loss"] >= r["optimal_train_loss"] for r in doc["results"])


class TestEpochs:
    def test_epochs_from_the_link(self):
        """?epochs=3 with batches of 32: each n trains ceil(n / 32) * 3 steps (12 at n = 128, 48 at
        n = 512), shown in the table, the caption and the JSON, and equal to the engine's fit."""
        at = open_page("pages/1_Rank_sweep.py", mode="data", samples="128,512", batch_size="32",
                       epochs="3", ranks="2,4")
        assert not at.exception and not at.error, [md_plain(e.value) for e in at.error]
        assert at.number_input(key="epochs").value == 3
        frame = next(df.value for df in at.dataframe if "held-out loss" in df.value.columns)
        assert frame["steps run"].tolist() == ["12", "12", "48", "48"]
        assert any("3 epochs = ceil(n / batch) × 3 steps (12 at n = 128, 48 at n = 512)" in md_plain(c.value)
                   for c in at.caption)
        engine = fit_data(make_target(), [2, 4], data=DataConfig(samples=512, batch_size=32), steps=48)
        assert frame["held-out loss"].tolist()[2:] == [f"{r.heldout_loss:.4g}" for r in engine]

    def test_json_carries_the_steps_per_n(self):
        from ui.datamode import DataSweepConfig, data_json, run_data_sweep
        from ui.sweep import SweepConfig

        cfg = DataSweepConfig(sweep=SweepConfig(ranks=(2,), steps=50), samples=(100, 250),
                              batch_size=50, epochs=4)
        doc = data_json(run_data_sweep(cfg))
        assert doc["config"]["epochs"] == 4 and doc["config"]["steps_per_n"] == [8, 20]
        assert [r["steps"] for r in doc["results"]] == [8, 20]

    def test_too_many_steps_is_one_sentence(self):
        at = open_page("pages/1_Rank_sweep.py", mode="data", samples="2000", batch_size="1",
                       epochs="20", ranks="2")
        assert not at.exception
        assert [md_plain(e.value) for e in at.error] == [
            "20 epochs of 2,000 pairs in batches of 1 are 40,000 steps; this page runs at most "
            "20,000: ask for at most 10 epochs or a larger batch"]

    def test_stability_grid_in_epochs(self):
        """On the stability page every cell trains ceil(128 / 16) * 5 = 40 steps."""
        at = open_page("pages/2_Alpha_r_stability.py", mode="data", samples="128", batch_size="16",
                       epochs="5", ranks="4", lrs="0.003", steps="999", rules="alpha-eq-r")
        assert not at.exception and not at.error, [md_plain(e.value) for e in at.error]
        assert any("40 steps" in md_plain(c.value) and "(batches of 16, 5 epochs)" in md_plain(c.value) for c in at.caption)


class TestStabilityDataMode:
    def test_grid_in_data_mode(self):
        """?mode=data on the stability page: the grid trains on n pairs, says so, and lists
        training and held-out loss per cell."""
        at = open_page("pages/2_Alpha_r_stability.py", mode="data", samples="128", batch_size="16",
                       ranks="4,16", lrs="0.003,0.03", steps="100", rules="alpha-eq-r")
        assert not at.exception and not at.error
        assert any("Every cell learns from the same 128 pairs" in md_plain(c.value) for c in at.caption)
        losses = next(df.value for df in at.dataframe if "held-out loss" in df.value.columns)
        assert list(losses.columns) == ["rule", "r", "lr", "training loss", "held-out loss",
                                        "relative error vs T"]
        assert len(losses) == 4


class TestAppLimits:
    def test_too_many_pairs_for_the_app(self):
        """A set of pairs beyond the app's memory limit is one sentence saying how many fit."""
        at = open_page("pages/1_Rank_sweep.py", mode="data", samples="20000", d_out="1024", d_in="1024",
                       heldout="1000", **SMALL)
        assert not at.exception
        assert [md_plain(e.value) for e in at.error] == [
            "20,000 training + 1,000 held-out pairs of a 1024 x 1024 layer are 43,008,000 numbers; the "
            "app holds at most 4,194,304, so at most 1,048 training pairs here"]
