"""The Rank sweep's pure pieces: rank parsing, the tables, the JSON and the reading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lorarank.errors import ConfigError
from ui.sweep import (
    SweepConfig,
    parse_ranks,
    reading,
    results_json,
    results_records,
    results_table,
    run_sweep,
)


class TestParseRanks:
    """``parse_ranks`` turns the ranks text box into a tuple."""

    @pytest.mark.parametrize("text, ranks", [
        ("2,4,16", (2, 4, 16)), (" 2 , 4,16 ", (2, 4, 16)), ("8", (8,)), ("1;2", (1, 2)),
        ("4.0,2", (4, 2)), ("2,4,", (2, 4)),
    ])
    def test_good(self, text, ranks):
        """Commas (or semicolons) separate whole numbers; blanks are ignored."""
        assert parse_ranks(text) == ranks

    @pytest.mark.parametrize("text, message", [
        ("", "`ranks` should list at least one rank, e.g. 2,4,16"),
        ("2,abc", "`ranks` should be whole numbers of at least 1 separated by commas, got 'abc' in '2,abc'"),
        ("2.5", "`ranks` should be whole numbers of at least 1 separated by commas, got '2.5' in '2.5'"),
        ("-1", "`ranks` should be whole numbers of at least 1 separated by commas, got '-1' in '-1'"),
        ("inf", "`ranks` should be whole numbers of at least 1 separated by commas, got 'inf' in 'inf'"),
    ])
    def test_bad(self, text, message):
        """A bad entry raises ConfigError quoting it."""
        with pytest.raises(ConfigError) as info:
            parse_ranks(text)
        assert str(info.value) == message


class TestTables:
    """The shown table, the CSV records and the JSON document."""

    def test_diverged_rows(self):
        """A diverged fit reads "diverged at step N" in the table and null in JSON/CSV."""
        run = run_sweep(SweepConfig(lr=0.5, steps=100))
        table = results_table(run)
        assert all(v.startswith("diverged at step ") for v in table["final relative error"])
        doc = json.loads(json.dumps(results_json(run), allow_nan=False))
        assert [r["rel_err"] for r in doc["results"]] == [None, None, None]
        assert all(r["diverged"] for r in doc["results"])
        csv = results_records(run).to_csv(index=False)
        assert "nan" not in csv.lower()

    def test_json_shaped_like_cli(self):
        """The JSON has the CLI's config/results/seconds keys and the learning rate used."""
        run = run_sweep(SweepConfig())
        doc = results_json(run)
        assert set(doc) == {"config", "results", "seconds"}
        assert doc["config"]["ranks"] == [2, 4, 16]
        assert doc["config"]["lr"] == SweepConfig().lr_used
        for key in ("rank", "rel_err", "optimal_rel_err", "singular_values", "effective_rank",
                    "diverged", "steps"):
            assert key in doc["results"][0]

    def test_records_round_trip_values(self):
        """The CSV records hold the fit's numbers at full precision."""
        run = run_sweep(SweepConfig())
        frame = results_records(run)
        assert frame["rank"].tolist() == [2, 4, 16]
        np.testing.assert_allclose(frame["rel_err"], [r.rel_err for r in run.results], rtol=1e-12)
        first = [float(x) for x in frame["singular_values"][0].split()]
        np.testing.assert_allclose(first, run.results[0].singular_values, rtol=1e-8)


class TestReading:
    """The plain-words reading is read off the run's numbers."""

    def test_default_article_setup(self):
        """r = 2 under, r = 4 matches, r = 16 over with 12 directions at the floor."""
        run = run_sweep(SweepConfig())
        text = "\n".join(reading(run))
        over = run.results[2]
        assert "The target has **4** directions above the noise floor" in text
        assert "**r = 2** is under-parameterised: it has room for 2 of the 4 directions" in text
        assert "**r = 4** matches the intrinsic rank: it learned all 4 directions" in text
        at_floor = over.singular_values.size - over.effective_rank
        assert at_floor == 12
        assert f"drove the other {at_floor} to it" in text
        assert "smallest rank here that captures every direction above the noise is **r = 4**" in text

    def test_numbers_follow_the_run(self):
        """Another setup gives other numbers: k = 6, ranks 3, 6, 12."""
        run = run_sweep(SweepConfig(d_out=96, d_in=48, true_rank=6, ranks=(3, 6, 12)))
        text = "\n".join(reading(run))
        assert "**6** directions" in text
        assert "room for 3 of the 6 directions" in text
        assert f"drove the other {12 - run.results[2].effective_rank} to it" in text

    def test_unconverged_run_says_so(self):
        """Too few steps: the reading says the fit has not converged."""
        run = run_sweep(SweepConfig(steps=20))
        assert any("has not converged yet" in s for s in reading(run))

    def test_diverged_run_says_so(self):
        """A diverged rank is named with its step."""
        run = run_sweep(SweepConfig(lr=0.5, steps=100))
        lines = reading(run)
        for res in run.results:
            assert any(f"**r = {res.rank}** diverged at step {res.diverged_at}" in s for s in lines)

    def test_noise_hides_planted_directions(self):
        """With loud noise fewer directions rise above the floor than were planted."""
        run = run_sweep(SweepConfig(noise=3.0, spectrum="geometric", ranks=(2, 8)))
        assert run.signal_rank < 4
        assert "4 were planted" in reading(run)[0]

    def test_no_rank_large_enough(self):
        """If every rank is below k, the reading says which r to try."""
        run = run_sweep(SweepConfig(true_rank=8, ranks=(2, 4)))
        assert reading(run)[-1] == "No rank here captures all 8 directions above the noise: try r ≥ 8."
