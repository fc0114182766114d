"""The data mode (LoRA trained on n pairs) against its oracles: the textbook loop, reduced-rank
regression in closed form, the exact-target mode as n grows, and the held-out loss's expectation."""

import json
import math

import numpy as np
import pytest

from lorarank import ConfigError
from lorarank.data import (
    DATA_DEFAULT_LR,
    DataConfig,
    data_macs,
    data_noise_floor,
    fit_data,
    fit_data_reference,
    fit_data_runs,
    make_dataset,
    reduced_rank_losses,
)
from lorarank.fit import fit_lora, lora_scale
from lorarank.stability import run_stability
from lorarank.synthetic import make_target


@pytest.fixture(scope="module")
def small():
    """A 16 x 12 target of intrinsic rank 2, small enough for the dense oracles."""
    return make_target(16, 12, true_rank=2, sigma_max=4.0, noise=0.01, seed=1)


class TestDataConfig:
    @pytest.mark.parametrize("kw, message", [
        ({"samples": 0}, "`samples` should be at least 1, got 0"),
        ({"samples": 10, "label_noise": -1.0}, "`label_noise` should be at least 0, got -1"),
        ({"samples": 10, "label_noise": float("nan")}, "`label_noise` should be finite, got nan"),
        ({"samples": 10, "batch_size": 0}, "`batch_size` should be at least 1, got 0"),
        ({"samples": 10, "heldout": 0}, "`heldout` should be at least 1, got 0"),
        ({"samples": 2.5}, "`samples` should be a whole number, got 2.5"),
    ])
    def test_bad_values_named(self, kw, message):
        """Each bad setting raises ConfigError quoting it."""
        with pytest.raises(ConfigError) as exc:
            DataConfig(**kw)
        assert str(exc.value) == message

    def test_batch_and_epochs(self):
        """A batch at least n is full batch; an epoch is ceil(n / batch) steps."""
        assert DataConfig(samples=100).full_batch and DataConfig(samples=100, batch_size=500).batch == 100
        cfg = DataConfig(samples=100, batch_size=25)
        assert not cfg.full_batch and cfg.epochs(8) == 2.0
        assert DataConfig(samples=100).steps_for_epochs(3) == 3  # full batch: a step per epoch
        assert DataConfig(samples=100, batch_size=16).steps_for_epochs(3) == 21
        assert DataConfig(samples=100, batch_size=16).epochs(21) == 3.0
        with pytest.raises(ConfigError, match="`epochs` should be at least 1, got 0"):
            cfg.steps_for_epochs(0)

    def test_an_epoch_visits_every_pair_once(self):
        """Oracle for steps_per_epoch: the batches the fit draws cover the n pairs exactly once
        per ceil(n / batch) steps, the last batch smaller (100 pairs, batches of 16: 6 x 16 + 4)."""
        from lorarank.data import _batch_order

        cfg = DataConfig(samples=100, batch_size=16)
        order = _batch_order(100, 16, 0, seed=3)
        for _ in range(2):
            batches = [next(order) for _ in range(cfg.steps_per_epoch)]
            assert [b.size for b in batches] == [16] * 6 + [4]
            assert sorted(np.concatenate(batches).tolist()) == list(range(100))

    def test_memory_bound(self, small):
        """Too many pairs for memory is one sentence, before anything is drawn."""
        big = make_target(1024, 8, true_rank=2)
        with pytest.raises(ConfigError, match="at most 33,554,432 are held in memory"):
            make_dataset(big, DataConfig(samples=100_000))


class TestDataset:
    def test_moments_and_loss(self, small):
        """S, C, q are the pairs' moments, and Dataset.loss is the mean half squared error."""
        cfg = DataConfig(samples=50, label_noise=0.3, heldout=40)
        ds = make_dataset(small, cfg, seed=2)
        np.testing.assert_allclose(ds.S, ds.X.T @ ds.X / 50, rtol=1e-12)
        np.testing.assert_allclose(ds.C, ds.Y.T @ ds.X / 50, rtol=1e-12)
        rng = np.random.default_rng(0)
        B, A = rng.standard_normal((16, 3)), rng.standard_normal((3, 12))
        dense = 0.5 * np.mean(np.sum((ds.X @ (0.7 * B @ A).T - ds.Y) ** 2, axis=1))
        assert ds.loss(B, A, 0.7) == pytest.approx(dense, rel=1e-10)

    def test_nested_and_shared_heldout(self, small):
        """With one seed, a smaller training set is the start of a larger one, and both share
        the held-out pairs (so held-out losses of different n compare the same pairs)."""
        a = make_dataset(small, DataConfig(samples=20, heldout=30), seed=4)
        b = make_dataset(small, DataConfig(samples=60, heldout=30), seed=4)
        np.testing.assert_array_equal(a.X, b.X[:20])
        np.testing.assert_array_equal(a.Y, b.Y[:20])
        np.testing.assert_array_equal(a.C_heldout, b.C_heldout)

    def test_labels_follow_the_model(self, small):
        """Y = X T^T + noise_y E: the residual's variance is noise_y^2."""
        ds = make_dataset(small, DataConfig(samples=4000, label_noise=0.5, heldout=10), seed=0)
        resid = ds.Y - ds.X @ small.matrix.T
        assert resid.std() == pytest.approx(0.5, rel=0.03)


class TestAgainstReferenceLoop:
    @pytest.mark.parametrize("optimizer", ["sgd", "adam"])
    @pytest.mark.parametrize("batch_size", [None, 7, 40])
    def test_batched_equals_textbook_loop(self, small, optimizer, batch_size):
        """Every rank of the batched fast path takes the textbook loop's steps: same loss
        curve, same final training loss (full batch: moments vs pairs; minibatch: stacked ranks)."""
        cfg = DataConfig(samples=40, label_noise=0.5, batch_size=batch_size)
        ds = make_dataset(small, cfg, seed=3)
        results = fit_data(small, [1, 2, 5], data=cfg, dataset=ds, seed=3, lr=0.01, steps=150,
                           optimizer=optimizer, rule="fixed-alpha", alpha=3.0)
        for res in results:
            B, A, loss = fit_data_reference(ds.X, ds.Y, res.rank, scale=res.scale, lr=0.01, steps=150,
                                            batch_size=batch_size, seed=3, optimizer=optimizer)
            np.testing.assert_allclose(res.loss, loss, rtol=1e-9, atol=1e-12)
            assert res.train_loss == pytest.approx(ds.loss(B, A, res.scale), rel=1e-9)
            dense = np.linalg.svd(res.scale * B @ A, compute_uv=False)[:res.rank]
            np.testing.assert_allclose(res.singular_values, dense, rtol=1e-7, atol=1e-10)

    def test_mixed_lrs_and_repeats(self, small):
        """fit_data_runs: runs with their own lr and repeated ranks match one-run fits."""
        cfg = DataConfig(samples=30, label_noise=0.2, batch_size=8)
        runs = [(2, 1.0, 0.01), (2, 1.0, 0.03), (6, 0.5, 0.02)]
        together = fit_data_runs(small, runs, data=cfg, steps=80)
        for run, res in zip(runs, together):
            alone = fit_data_runs(small, [run], data=cfg, steps=80)[0]
            np.testing.assert_allclose(res.loss, alone.loss, rtol=1e-10)


class TestReducedRankBound:
    @pytest.mark.parametrize("n", [60, 23, 13])  # Cholesky path (n >= 2 d_in), eigh path
    def test_closed_form_matches_brute_force(self, small, n):
        """The reduced-rank optimum equals truncating the least-squares fitted values (SVD)."""
        ds = make_dataset(small, DataConfig(samples=n, label_noise=0.5), seed=0)
        coef, *_ = np.linalg.lstsq(ds.X, ds.Y, rcond=None)
        fitted = ds.X @ coef
        sv = np.linalg.svd(fitted, compute_uv=False)
        for r in (0, 1, 3, 12):
            want = 0.5 * (np.sum(ds.Y**2) - np.sum(sv[:r] ** 2)) / n
            assert reduced_rank_losses(ds, [r])[0] == pytest.approx(want, rel=1e-9)

    def test_underdetermined(self, small):
        """With n < d_in the pairs are interpolated at full rank: the bound reaches 0."""
        ds = make_dataset(small, DataConfig(samples=8, label_noise=0.5), seed=0)
        assert reduced_rank_losses(ds, [8])[0] == pytest.approx(0.0, abs=1e-9)

    @pytest.mark.parametrize("batch_size", [None, 16])
    def test_bound_below_training_and_reached(self, small, batch_size):
        """No fit goes below the bound; long full-batch training reaches it."""
        cfg = DataConfig(samples=200, label_noise=0.5, batch_size=batch_size)
        for res in fit_data(small, [1, 2, 3], data=cfg, lr=0.02, steps=4000):
            assert res.train_loss >= res.optimal_train_loss * (1 - 1e-12)
            if batch_size is None:
                assert res.train_loss == pytest.approx(res.optimal_train_loss, rel=1e-4)


class TestLimitIsExactMode:
    def test_large_n_full_batch_converges_to_exact_mode(self, small):
        """Noise-free pairs, full batch: the loss curves approach the exact mode's as n grows
        (the sample covariance's error shrinks like 1/sqrt(n))."""
        exact = fit_lora(small, [1, 2, 5], steps=300, lr=0.02)
        gaps = []
        for n in (1_000, 20_000, 400_000):
            cfg = DataConfig(samples=n, label_noise=0.0, heldout=10)
            res = fit_data(small, [1, 2, 5], data=cfg, lr=0.02, steps=300)
            gaps.append(max(np.max(np.abs(a.loss - b.loss)) / a.loss[0] for a, b in zip(exact, res)))
            for a, b in zip(exact, res):
                assert b.rel_err == pytest.approx(a.rel_err, abs=0.5 / math.sqrt(n) + 1e-4)
        assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.01

    def test_heldout_is_population_loss(self, small):
        """Many held-out pairs: held-out loss = 0.5 ||sBA - T||^2 + 0.5 d_out noise^2."""
        cfg = DataConfig(samples=100, label_noise=0.4, heldout=200_000)
        res = fit_data(small, [2], data=cfg, lr=0.02, steps=300)[0]
        expected = 0.5 * (res.rel_err * small.norm) ** 2 + 0.5 * 16 * 0.4**2
        assert res.heldout_loss == pytest.approx(expected, rel=0.02)


class TestFiniteDataShowsOverfitting:
    def test_default_target_heldout_rises_past_k(self):
        """The article's target from 128 noisy pairs: held-out loss is lowest at r = k = 4 and
        rises with every extra rank, while the training loss keeps falling; with 16x more
        pairs the rise shrinks."""
        target = make_target()
        res = fit_data(target, [2, 4, 8, 16, 32], data=DataConfig(samples=128))
        held = [r.heldout_loss for r in res]
        train = [r.train_loss for r in res]
        assert int(np.argmin(held)) == 1
        assert held[1] < held[2] < held[3] < held[4]
        assert train[1] > train[2] > train[3] > train[4]
        many = fit_data(target, [4, 32], data=DataConfig(samples=2048))
        assert many[1].heldout_loss - many[0].heldout_loss < 0.2 * (held[4] - held[1])

    def test_noise_floor_for_n(self):
        """The floor separates the 4 task directions from the ones fitting label noise, and is
        None when n <= d_in + 1 cannot determine T."""
        target = make_target()
        cfg = DataConfig(samples=128)
        floor = data_noise_floor(target, cfg)
        assert floor == pytest.approx((4 / math.sqrt(3)) * 8 * math.sqrt(0.01**2 + 1 / 63), rel=1e-6)
        res = fit_data(target, [16], data=cfg)[0]
        assert res.effective_rank == 4 and res.noise_floor == floor
        assert data_noise_floor(target, DataConfig(samples=65)) is None
        assert data_noise_floor(target, DataConfig(samples=10, label_noise=0.0)) > 0


class TestDivergenceAndJson:
    def test_divergence_reported(self, small):
        """A too-large step diverges with its step count, no NaN in the result."""
        res = fit_data(small, [2], data=DataConfig(samples=50, batch_size=5), lr=5.0, steps=200)[0]
        assert res.diverged and res.diverged_at is not None and res.train_loss is None
        assert np.all(np.isfinite(res.loss))
        json.dumps(res.to_dict(), allow_nan=False)

    def test_to_dict_fields(self, small):
        """Data-mode results carry train_loss and heldout_loss; exact-mode ones carry nulls."""
        d = fit_data(small, [2], data=DataConfig(samples=50), steps=20)[0].to_dict()
        assert isinstance(d["train_loss"], float) and isinstance(d["heldout_loss"], float)
        e = fit_lora(small, [2], steps=20)[0].to_dict()
        assert e["train_loss"] is None and e["heldout_loss"] is None

    def test_default_lr(self, small):
        """Without lr the data mode uses its own default (the exact mode's SGD 0.02 sits at the
        edge of stability for a few pairs)."""
        assert DATA_DEFAULT_LR["sgd"] == 0.005
        a = fit_data(small, [2], data=DataConfig(samples=50), steps=30)[0]
        b = fit_data(small, [2], data=DataConfig(samples=50), steps=30, lr=0.005)[0]
        np.testing.assert_array_equal(a.loss, b.loss)

    def test_bad_dataset(self, small):
        """A dataset drawn for other settings is refused."""
        ds = make_dataset(small, DataConfig(samples=20))
        with pytest.raises(ConfigError, match="drawn for other settings"):
            fit_data(small, [2], data=DataConfig(samples=30), dataset=ds)


class TestStabilityDataMode:
    def test_grid_records_and_minibatch_moves_window(self):
        """The grid's data mode gives losses per cell; small minibatches make lrs diverge that
        full batch survives (the stable window moves)."""
        target = make_target(32, 32, true_rank=4)
        lrs = [0.003, 0.01, 0.02, 0.04]
        grid = {bs: run_stability(target, ranks=[4, 16], rules=["alpha-eq-r"], lrs=lrs, steps=150,
                                  data=DataConfig(samples=256, batch_size=bs))
                for bs in (None, 4)}
        full, mini = grid[None], grid[4]
        assert full.config["samples"] == 256 and full.config["batch_size"] is None
        rec = full.records[0].to_dict()
        assert {"train_loss", "heldout_loss"} <= set(rec)
        stable = {bs: sum(not r.diverged for r in g.records) for bs, g in grid.items()}
        assert stable[4] < stable[None]
        ok = [r for r in full.records if not r.diverged]
        assert all(r.train_loss is not None and r.heldout_loss is not None for r in ok)
        exact = run_stability(target, ranks=[4], rules=["alpha-eq-r"], lrs=[0.01], steps=20)
        assert exact.config["samples"] is None and exact.records[0].train_loss is None


class TestMacs:
    def test_counts_scale(self):
        """Minibatch cost grows with the batch, full-batch cost does not grow with n per step."""
        base = dict(steps=100, optimizer="sgd")
        mb = [data_macs(64, 64, [4, 8], config=DataConfig(samples=1000, batch_size=b), **base) for b in (10, 100)]
        assert mb[1] > mb[0]
        fb = [data_macs(64, 64, [4], config=DataConfig(samples=n), **base) for n in (1000, 10_000)]
        per_step = [f - (n + 1000) * 64 * 192 for f, n in zip(fb, (1000, 10_000))]
        assert per_step[0] == pytest.approx(per_step[1])


class TestMemoryBoundedBatches:
    def test_split_batches_give_the_same_fits(self, small, monkeypatch):
        """With the per-step memory cap forcing one run per batch, every fit is unchanged."""
        import lorarank.data as data_module

        cfg = DataConfig(samples=60, label_noise=0.3, batch_size=20)
        ranks = [6, 3, 4]
        together = fit_data(small, ranks, data=cfg, steps=60)
        per_rank = data_module.step_values(16, 12, 20, False)
        assert data_module.rank_groups(ranks, lambda total: total * per_rank <= data_module.MAX_STEP_VALUES) == [[1, 2, 0]]
        monkeypatch.setattr(data_module, "MAX_STEP_VALUES", 6 * per_rank)
        groups = data_module.rank_groups(ranks, lambda total: total * per_rank <= data_module.MAX_STEP_VALUES)
        assert groups == [[1], [2], [0]]
        apart = fit_data(small, ranks, data=cfg, steps=60)
        for a, b in zip(together, apart):
            np.testing.assert_allclose(a.loss, b.loss, rtol=1e-10)
