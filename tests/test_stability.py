"""Tests of lorarank.stability: the alpha/r grid's physics, its findings and the calculator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lorarank.errors import ConfigError
from lorarank.fit import SCALING_RULES, fit_lora
from lorarank.stability import (
    CONVENTIONS,
    StabilityGrid,
    StabilityRecord,
    alpha_to_keep,
    run_stability,
    scale_for,
    stability_findings,
)
from lorarank.synthetic import make_target

SIGMA_MAX = 38.0
RANKS = (4, 16, 64)
LRS = (0.001, 0.003, 0.01, 0.03, 0.1)


@pytest.fixture(scope="module")
def target():
    return make_target(sigma_max=SIGMA_MAX)


@pytest.fixture(scope="module")
def sgd_grid(target):
    return run_stability(target, ranks=RANKS, lrs=LRS, optimizer="sgd", steps=200, alpha=16.0)


@pytest.fixture(scope="module")
def sgd_findings(sgd_grid):
    return {f.rule: f for f in stability_findings(sgd_grid).rules}


def _row(grid: StabilityGrid, rule: str, rank: int) -> list[StabilityRecord]:
    return sorted((r for r in grid.records if r.rule == rule and r.rank == rank),
                  key=lambda r: r.lr)


class TestRunStabilityPhysics:
    """What the grid must show on the default target, measured."""

    def test_fixed_alpha_learning_slows_as_rank_grows(self, sgd_grid):
        """With a fixed alpha (s = 16/r) the loss after 50 SGD steps at lr 0.001 grows with r."""
        at50 = [sgd_grid.cell("fixed-alpha", r, 0.001).loss_curve[50] for r in RANKS]
        assert at50[0] < at50[1] < at50[2]
        # and the run at r = 64 is still far from done while r = 4 has converged
        assert sgd_grid.cell("fixed-alpha", 64, 0.001).rel_err > 0.5
        assert sgd_grid.cell("fixed-alpha", 4, 0.001).rel_err < 0.05

    def test_fixed_alpha_small_rank_diverges_first(self, sgd_findings):
        """Under fixed alpha the smallest rank has the lowest divergence edge, the edge rises with r."""
        windows = sgd_findings["fixed-alpha"].windows
        edges = [w.max_stable_lr for w in windows]
        assert edges[0] < edges[1] < edges[2]
        assert windows[0].min_diverged_lr is not None
        assert sgd_findings["fixed-alpha"].direction == "up"

    @pytest.mark.parametrize("lr", [0.01, 0.03])
    def test_fixed_alpha_same_lr_kills_small_rank_only(self, sgd_grid, lr):
        """At a large lr the r = 4 cell diverges while the r = 64 cell trains."""
        assert sgd_grid.cell("fixed-alpha", 4, lr).diverged
        assert not sgd_grid.cell("fixed-alpha", 64, lr).diverged

    @pytest.mark.parametrize("rule", ["alpha-eq-r", "alpha-eq-2r"])
    def test_constant_scale_keeps_window_in_place(self, sgd_findings, rule):
        """With alpha proportional to r the largest stable lr is the same at every rank and an lr above it diverges."""
        finding = sgd_findings[rule]
        assert {w.max_stable_lr for w in finding.windows} == {finding.windows[0].max_stable_lr}
        assert all(w.min_diverged_lr is not None for w in finding.windows)
        assert not finding.window_moves and finding.direction == "steady"

    def test_edge_tracks_one_over_s_sigma_max(self, sgd_grid):
        """Every row's stability edge brackets 1/(s * sigma_max) within a factor of 2 (the SGD bound)."""
        for finding in stability_findings(sgd_grid).rules:
            for w in finding.windows:
                bound = 1.0 / (w.scale * SIGMA_MAX)
                assert w.max_stable_lr is None or w.max_stable_lr < 2 * bound, w
                assert w.min_diverged_lr is None or w.min_diverged_lr > 0.5 * bound, w

    def test_rslora_is_reported(self, sgd_grid, sgd_findings):
        """rsLoRA cells carry s = alpha / sqrt(r) and its window is read at each rank."""
        for r in RANKS:
            assert sgd_grid.cell("rslora", r, 0.001).scale == pytest.approx(16 / math.sqrt(r))
        windows = sgd_findings["rslora"].windows
        assert [w.rank for w in windows] == list(RANKS)
        assert all(w.max_stable_lr is not None for w in windows)
        assert any("rslora" in s for s in sgd_findings["rslora"].sentences)

    def test_cells_match_a_direct_fit(self, target, sgd_grid):
        """A cell equals fit_lora run on its own for that rule and lr."""
        res = fit_lora(target, [16], lr=0.01, steps=200, rule="fixed-alpha", alpha=16.0)[0]
        cell = sgd_grid.cell("fixed-alpha", 16, 0.01)
        assert cell.rel_err == pytest.approx(res.rel_err, rel=1e-12)
        assert cell.max_update_norm == pytest.approx(res.max_update_norm, rel=1e-12)
        np.testing.assert_allclose(cell.loss_curve, res.loss, rtol=1e-12)


class TestRunStabilityOutput:
    """Shape, order and cleanliness of the records."""

    def test_one_record_per_cell_in_order(self, sgd_grid):
        """Records come rule by rule, then lr, then rank, one per (rule, rank, lr)."""
        keys = [(r.rule, r.lr, r.rank) for r in sgd_grid.records]
        assert keys == [(rule, lr, rank) for rule in SCALING_RULES for lr in LRS for rank in RANKS]

    def test_divergence_flagged_without_nan(self, sgd_grid):
        """Diverged cells have rel_err None, a step, finite numbers, and the document has no NaN."""
        diverged = [r for r in sgd_grid.records if r.diverged]
        assert diverged, "the grid should contain diverged cells"
        for rec in diverged:
            assert rec.rel_err is None
            assert isinstance(rec.diverged_at, int) and 0 < rec.diverged_at <= 200
            assert len(rec.loss_curve) == rec.diverged_at + 1
        for rec in sgd_grid.records:
            assert all(math.isfinite(v) for v in rec.loss_curve)
            assert math.isfinite(rec.max_update_norm)
            if not rec.diverged:
                assert rec.diverged_at is None and len(rec.loss_curve) == 201
        text = json.dumps(sgd_grid.to_dict(), allow_nan=False)
        doc = json.loads(text)
        assert set(doc) == {"config", "records"}
        assert set(doc["records"][0]) == {"rule", "rank", "lr", "scale", "rel_err", "diverged",
                                          "diverged_at", "max_update_norm", "loss_curve",
                                          "train_loss", "heldout_loss"}

    def test_config_records_settings(self, sgd_grid):
        """The config names the target and the grid."""
        cfg = sgd_grid.config
        assert cfg["ranks"] == list(RANKS) and cfg["lrs"] == list(LRS)
        assert cfg["rules"] == list(SCALING_RULES)
        assert (cfg["d_out"], cfg["d_in"], cfg["true_rank"], cfg["sigma_max"]) == (64, 64, 4, 38.0)
        assert cfg["optimizer"] == "sgd" and cfg["steps"] == 200 and cfg["alpha"] == 16.0

    def test_progress_spans_whole_grid(self, target):
        """Progress counts steps over all cells from 0 to total, never backwards."""
        calls = []
        run_stability(target, ranks=[4, 8], rules=["alpha-eq-r", "rslora"], lrs=[0.001, 0.01],
                      steps=30, progress=lambda d, t: calls.append((d, t)))
        totals = {t for _, t in calls}
        assert totals == {2 * 2 * 2 * 30}
        done = [d for d, _ in calls]
        assert done[0] == 0 and done[-1] == 240
        assert all(b >= a for a, b in zip(done, done[1:]))
        assert len(calls) > 4

    def test_adam_runs_and_is_stable_at_small_lr(self, target):
        """Adam cells train without divergence at lr 0.01 and report the same fields."""
        grid = run_stability(target, ranks=[4, 16], rules=["fixed-alpha"], lrs=[0.01],
                             optimizer="adam", steps=100)
        assert grid.config["optimizer"] == "adam"
        assert all(not r.diverged and r.rel_err < 0.5 for r in grid.records)

    def test_cell_lookup_names_missing_cell(self, sgd_grid):
        """Asking for a cell outside the grid names it."""
        with pytest.raises(ConfigError, match=r"no cell rule='rslora', rank=5, lr=0.01"):
            sgd_grid.cell("rslora", 5, 0.01)


class TestRunStabilityErrors:
    """Bad settings raise ConfigError naming the value."""

    @pytest.mark.parametrize("kwargs, message", [
        ({"ranks": []}, "`ranks` should not be empty"),
        ({"ranks": [0]}, "`ranks[0]` should be at least 1, got 0"),
        ({"ranks": [4, 4]}, "`ranks` lists 4 twice"),
        ({"ranks": [4, 2.5]}, "`ranks[1]` should be a whole number, got 2.5"),
        ({"ranks": [65]}, "rank 65 is larger than min(d_out, d_in) = 64"),
        ({"rules": ["alpha=r"]}, "`rules[0]` should be one of fixed-alpha, alpha-eq-r, "
                                 "alpha-eq-2r, rslora; got 'alpha=r'"),
        ({"lrs": [0.01, 0.0]}, "`lrs[1]` should be greater than 0, got 0"),
        ({"lrs": [float("nan")]}, "`lrs[0]` should be finite, got nan"),
        ({"lrs": "0.01"}, "`lrs` should be a list, got '0.01'"),
        ({"optimizer": "sgdm"}, "`optimizer` should be one of sgd, adam; got 'sgdm'"),
        ({"steps": 0}, "`steps` should be at least 1, got 0"),
        ({"alpha": -16}, "`alpha` should be greater than 0, got -16"),
        ({"ranks": list(range(1, 51)), "lrs": [i / 1000 + 0.001 for i in range(11)]},
         "the grid has 2200 cells (rules x ranks x lrs); at most 2000 are allowed"),
    ])
    def test_bad_settings(self, target, kwargs, message):
        """Each bad knob gives one message that names it."""
        with pytest.raises(ConfigError) as info:
            run_stability(target, **{"steps": 5, **kwargs})
        assert str(info.value) == message


def _rec(rule, rank, lr, rel_err, scale=1.0):
    diverged = rel_err is None
    return StabilityRecord(rule=rule, rank=rank, lr=lr, scale=scale, rel_err=rel_err,
                           diverged=diverged, diverged_at=3 if diverged else None,
                           max_update_norm=1.0, loss_curve=(1.0, 0.5))


class TestStabilityFindings:
    """The reading of a grid comes from its numbers."""

    def test_windows_from_hand_made_grid(self):
        """Largest stable lr, smallest diverged lr and smallest lr reaching the target per row."""
        recs = [_rec("fixed-alpha", 4, 0.01, 0.2, 4.0), _rec("fixed-alpha", 4, 0.1, 0.01, 4.0),
                _rec("fixed-alpha", 4, 1.0, None, 4.0),
                _rec("fixed-alpha", 32, 0.01, 0.9, 0.5), _rec("fixed-alpha", 32, 0.1, 0.3, 0.5),
                _rec("fixed-alpha", 32, 1.0, 0.04, 0.5)]
        (f,) = stability_findings(recs, target_err=0.05).rules
        w4, w32 = f.windows
        assert (w4.max_stable_lr, w4.min_diverged_lr, w4.min_lr_reaching) == (0.1, 1.0, 0.1)
        assert (w4.best_lr, w4.best_rel_err) == (0.1, 0.01)
        assert (w32.max_stable_lr, w32.min_diverged_lr, w32.min_lr_reaching) == (1.0, None, 1.0)
        assert f.direction == "up" and f.window_moves
        assert f.common_lr == 0.1 and f.common_errors == (0.01, 0.3)
        assert f.sentences == (
            "fixed-alpha (s = 4 at r = 4 to 0.5 at r = 32): the largest stable learning rate is "
            "0.1 at r = 4, above 1 at r = 32 (no tested lr diverged); the window moves to larger "
            "learning rates as r grows.",
            "At lr = 0.1, stable at every rank, the final relative error is 0.01 at r = 4 and "
            "0.3 at r = 32: learning slows as r grows.",
            "Smallest learning rate reaching relative error 0.05: 0.1 at r = 4, 1 at r = 32.",
        )

    def test_steady_window_sentence(self):
        """Equal edges with a diverged lr above them read as a window in place."""
        recs = [_rec("alpha-eq-r", r, lr, e) for r in (4, 8)
                for lr, e in ((0.01, 0.02), (0.1, None))]
        (f,) = stability_findings(recs).rules
        assert f.direction == "steady" and not f.window_moves
        assert f.sentences[0] == ("alpha-eq-r (s = 1 at every rank): the largest stable learning "
                                  "rate is 0.01 at every rank (the next one tested, 0.1, "
                                  "diverged), so the window stays in place as r grows.")
        assert f.sentences[2] == "Smallest learning rate reaching relative error 0.05: 0.01 at every rank."

    def test_all_diverged_and_none_diverged(self):
        """A rule where everything diverged, and one where nothing did, are said as such."""
        recs = [_rec("rslora", 4, 0.1, None, 8.0), _rec("rslora", 8, 0.1, None, 5.0),
                _rec("alpha-eq-2r", 4, 0.1, 0.5, 2.0), _rec("alpha-eq-2r", 8, 0.1, 0.5, 2.0)]
        by_rule = {f.rule: f for f in stability_findings(recs).rules}
        assert by_rule["rslora"].sentences[0].endswith("every tested learning rate diverged at every rank.")
        assert by_rule["rslora"].common_lr is None
        assert "no tested learning rate diverged at any rank (up to 0.1)" in by_rule["alpha-eq-2r"].sentences[0]
        assert by_rule["alpha-eq-2r"].sentences[-1] == (
            "No tested learning rate reaches a relative error of 0.05 at any rank within the steps run.")

    def test_sentences_follow_the_measured_grid(self, sgd_grid, sgd_findings):
        """Every lr quoted as an edge in the fixed-alpha sentence is a stable lr of the grid."""
        sentence = sgd_findings["fixed-alpha"].sentences[0]
        for w in sgd_findings["fixed-alpha"].windows:
            if w.min_diverged_lr is not None:
                assert f"{w.max_stable_lr:g} at r = {w.rank}" in sentence
                assert not sgd_grid.cell("fixed-alpha", w.rank, w.max_stable_lr).diverged
                assert sgd_grid.cell("fixed-alpha", w.rank, w.min_diverged_lr).diverged

    def test_capacity_is_told_apart_from_speed(self):
        """A rank whose Eckart-Young optimum is above the target is called capacity-limited."""
        recs = [_rec("alpha-eq-r", 2, 0.01, 0.5921), _rec("alpha-eq-r", 32, 0.01, 0.0082)]
        (f,) = stability_findings(recs, optimal_rel_err={2: 0.5920, 32: 0.0017}).rules
        assert f.windows[0].optimal_rel_err == 0.5920
        assert f.sentences[1].endswith("0.592 at r = 2 and 0.0082 at r = 32: both reached what "
                                       "their rank can hold.")
        assert f.sentences[-1] == ("Capacity, not scaling, limits the smallest ranks: the best "
                                   "error any matrix of that rank reaches (Eckart-Young) is "
                                   "0.592 at r = 2, above 0.05.")
        # without the optimum the same numbers read as slower learning at small r
        (g,) = stability_findings(recs).rules
        assert g.sentences[1].endswith("learning is faster at larger r.")

    def test_grid_carries_eckart_young(self, target, sgd_grid):
        """The grid's optimum per rank is Eckart-Young on the target's singular values."""
        from lorarank.spectrum import eckart_young_errors

        expected = eckart_young_errors(target.singular_values, np.array(RANKS))
        assert [sgd_grid.optimal_rel_err[r] for r in RANKS] == pytest.approx(list(expected))
        assert "optimal_rel_err" not in sgd_grid.to_dict()

    @pytest.mark.parametrize("kwargs, message", [
        ({"records": []}, "`records` should not be empty"),
        ({"records": [_rec("rslora", 4, 0.1, 0.1)], "target_err": 0}, "`target_err` should be greater than 0, got 0"),
        ({"records": [_rec("rslora", 4, 0.1, 0.1)], "target_err": 2}, "`target_err` should be at most 1, got 2"),
    ])
    def test_bad_inputs(self, kwargs, message):
        """Empty grids and targets outside (0, 1] are refused by name."""
        records = kwargs.pop("records")
        with pytest.raises(ConfigError) as info:
            stability_findings(records, **kwargs)
        assert str(info.value) == message


class TestScaleFor:
    """The multiplier s under each convention, against hand-computed values."""

    @pytest.mark.parametrize("convention, kwargs, expected", [
        ("peft", {"r": 8, "alpha": 16}, 2.0),
        ("peft", {"r": 64, "alpha": 16}, 0.25),
        ("rslora", {"r": 16, "alpha": 8}, 2.0),
        ("rslora", {"r": 4, "alpha": 16}, 8.0),
        ("kohya", {"r": 32, "alpha": 16}, 0.5),
        ("kohya", {"r": 32}, 1.0),
        ("mlx-lm", {"r": 8, "scale": 20.0}, 20.0),
    ])
    def test_hand_values(self, convention, kwargs, expected):
        """PEFT alpha/r, rsLoRA alpha/sqrt(r), kohya alpha/r or 1, mlx-lm the stored scale."""
        assert scale_for(convention, **kwargs) == pytest.approx(expected, rel=1e-15)

    def test_conventions_listed(self):
        """The four conventions of PRODUCT.md are known."""
        assert set(CONVENTIONS) == {"peft", "rslora", "kohya", "mlx-lm"}

    @pytest.mark.parametrize("convention, kwargs, message", [
        ("lora", {"r": 8, "alpha": 16}, "`convention` should be one of peft, rslora, kohya, mlx-lm; got 'lora'"),
        ("peft", {"r": 0, "alpha": 16}, "`r` should be at least 1, got 0"),
        ("peft", {"r": True, "alpha": 16}, "`r` should be a whole number, got True"),
        ("peft", {"r": 8, "alpha": -1}, "`alpha` should be greater than 0, got -1"),
        ("rslora", {"r": 8, "alpha": float("inf")}, "`alpha` should be finite, got inf"),
        ("peft", {"r": 8}, "peft needs `alpha` (lora_alpha); got None"),
        ("peft", {"r": 8, "alpha": 16, "scale": 2.0}, "peft computes s from alpha and r; `scale` "
                                                      "applies only to mlx-lm, got scale=2.0"),
        ("mlx-lm", {"r": 8}, "mlx-lm needs `scale` (lora_parameters.scale); got None"),
        ("mlx-lm", {"r": 8, "alpha": 16, "scale": 2.0}, "mlx-lm stores `scale`, not `alpha`; got alpha=16"),
        ("mlx-lm", {"r": 8, "scale": 0}, "`scale` should be greater than 0, got 0"),
    ])
    def test_bad_inputs(self, convention, kwargs, message):
        """Each bad input gives one message naming the value."""
        with pytest.raises(ConfigError) as info:
            scale_for(convention, **kwargs)
        assert str(info.value) == message


class TestAlphaToKeep:
    """The alpha that keeps behaviour at a new rank, against hand-computed values."""

    @pytest.mark.parametrize("convention, kwargs, expected", [
        ("peft", {"r_old": 8, "alpha_old": 16, "r_new": 32}, 64.0),
        ("peft", {"r_old": 64, "alpha_old": 128, "r_new": 16}, 32.0),
        ("rslora", {"r_old": 8, "alpha_old": 16, "r_new": 32}, 32.0),
        ("kohya", {"r_old": 8, "alpha_old": 4, "r_new": 32}, 16.0),
        ("kohya", {"r_old": 8, "alpha_old": None, "r_new": 32}, 32.0),
        ("mlx-lm", {"r_old": 8, "alpha_old": 20.0, "r_new": 32}, 20.0),
        # keep rsLoRA-style behaviour: s_new = s_old * sqrt(r_old / r_new)
        ("peft", {"r_old": 16, "alpha_old": 32, "r_new": 64, "keep": "rslora"}, 64.0),
        ("rslora", {"r_old": 16, "alpha_old": 32, "r_new": 64, "keep": "rslora"}, 32.0),
        ("mlx-lm", {"r_old": 4, "alpha_old": 20.0, "r_new": 16, "keep": "rslora"}, 10.0),
    ])
    def test_hand_values(self, convention, kwargs, expected):
        """alpha scales with r (PEFT, kohya), with sqrt(r) (rsLoRA), not at all (mlx-lm scale)."""
        assert alpha_to_keep(convention, **kwargs) == pytest.approx(expected, rel=1e-14)

    @pytest.mark.parametrize("convention", ["peft", "rslora", "kohya"])
    @pytest.mark.parametrize("r_old, r_new", [(1, 7), (8, 8), (16, 4), (3, 128)])
    @pytest.mark.parametrize("keep", ["scale", "rslora"])
    def test_round_trip(self, convention, r_old, r_new, keep):
        """scale_for at the new rank with the returned alpha gives the wanted multiplier."""
        s_old = scale_for(convention, r=r_old, alpha=12.0)
        alpha_new = alpha_to_keep(convention, r_old=r_old, alpha_old=12.0, r_new=r_new, keep=keep)
        wanted = s_old if keep == "scale" else s_old * math.sqrt(r_old / r_new)
        assert scale_for(convention, r=r_new, alpha=alpha_new) == pytest.approx(wanted, rel=1e-13)

    @pytest.mark.parametrize("convention, kwargs, message", [
        ("peft", {"r_old": 8, "alpha_old": 16, "r_new": 0}, "`r_new` should be at least 1, got 0"),
        ("peft", {"r_old": -2, "alpha_old": 16, "r_new": 4}, "`r_old` should be at least 1, got -2"),
        ("peft", {"r_old": 8, "alpha_old": 16, "r_new": 4, "keep": "energy"},
         "`keep` should be one of scale, rslora; got 'energy'"),
        ("peft", {"r_old": 8, "alpha_old": None, "r_new": 4}, "peft needs `alpha_old` (lora_alpha); got None"),
        ("rslora", {"r_old": 8, "alpha_old": 0.0, "r_new": 4}, "`alpha_old` should be greater than 0, got 0"),
        ("mlx-lm", {"r_old": 8, "alpha_old": None, "r_new": 4}, "mlx-lm needs the old `scale` as alpha_old; got None"),
    ])
    def test_bad_inputs(self, convention, kwargs, message):
        """Each bad input gives one message naming the value."""
        with pytest.raises(ConfigError) as info:
            alpha_to_keep(convention, **kwargs)
        assert str(info.value) == message
