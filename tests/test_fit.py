"""Synthetic targets and LoRA fitting, against the textbook loop and the Eckart-Young optimum."""

import json
import math

import numpy as np
import pytest

from lorarank import ConfigError
from lorarank.fit import (
    DEFAULT_LR,
    fit_lora,
    macs_per_step,
    fit_lora_reference,
    fit_lora_runs,
    init_lora,
    lora_scale,
)
from lorarank.synthetic import make_target, noise_spectrum, planted_spectrum, random_orthogonal


@pytest.fixture(scope="module")
def article():
    """The article's setup: 64 x 64, intrinsic rank 4, noise 0.01."""
    return make_target()


@pytest.fixture(scope="module")
def article_fit(article):
    return {r.rank: r for r in fit_lora(article, [2, 4, 16])}


class TestTarget:
    @pytest.mark.parametrize("shape", [(64, 64), (30, 80), (80, 30), (600, 300), (257, 700)])
    def test_exact_singular_values(self, shape):
        """The spectrum built in is the dense SVD's of the matrix (Haar and layered bases alike),
        and the orthogonal bases rebuild the matrix."""
        t = make_target(*shape, true_rank=3)
        dense = np.linalg.svd(t.matrix, compute_uv=False)
        np.testing.assert_allclose(t.singular_values, dense, rtol=1e-12, atol=1e-14 * dense[0])
        m = min(shape)
        np.testing.assert_allclose(t.U.T @ t.U, np.eye(shape[0]), atol=1e-13)
        np.testing.assert_allclose(t.Vt @ t.Vt.T, np.eye(shape[1]), atol=1e-13)
        np.testing.assert_allclose((t.U[:, :m] * t.singular_values) @ t.Vt[:m], t.matrix, atol=1e-12)
        np.testing.assert_allclose(t.singular_values[:3], t.signal_values, rtol=1e-15)

    def test_noise_floor_is_a_gaussian_matrix_spectrum(self):
        """The noise floor's values sit where a sampled Gaussian matrix's singular values do."""
        rng = np.random.default_rng(7)
        for rows, cols in [(300, 300), (150, 600), (500, 100)]:
            want = noise_spectrum(rows, cols, noise=0.5)
            sample = np.linalg.svd(0.5 * rng.standard_normal((rows, cols)), compute_uv=False)
            assert want.shape == sample.shape and np.all(np.diff(want) <= 0)
            np.testing.assert_allclose(want, sample, atol=0.03 * sample[0])
            assert want.mean() == pytest.approx(sample.mean(), rel=0.01)
            assert want[0] < 0.5 * (math.sqrt(rows) + math.sqrt(cols))

    def test_noise_sits_off_the_planted_directions(self):
        """T = U_k diag(planted) V_k^T plus noise that the planted directions do not see."""
        t = make_target(300, 280, true_rank=4, noise=0.05, seed=3)
        u, v = t.U[:, :4], t.Vt[:4].T
        residual = t.matrix - (u * t.signal_values) @ v.T
        assert np.abs(u.T @ residual).max() < 1e-12 and np.abs(residual @ v).max() < 1e-12
        noise = np.linalg.svd(residual, compute_uv=False)
        np.testing.assert_allclose(noise[:276], noise_spectrum(296, 276, noise=0.05), rtol=1e-10, atol=1e-13)

    @pytest.mark.parametrize("d", [40, 256, 257, 1000])
    def test_random_orthogonal(self, d):
        """Orthogonal to round-off, reproducible, and no column is aligned with a coordinate axis."""
        Q = random_orthogonal(d, seed=5)
        np.testing.assert_allclose(Q @ Q.T, np.eye(d), atol=1e-13)
        np.testing.assert_array_equal(Q, random_orthogonal(d, seed=5))
        assert not np.allclose(Q, random_orthogonal(d, seed=6))
        assert np.abs(Q).max() < 0.7  # an aligned column would hold an entry of 1
        assert np.count_nonzero(np.abs(Q) > 1e-12) > 0.99 * d * d  # every coordinate mixed in

    def test_plain_descent_never_forms_the_dense_target(self):
        """SGD runs on the spectrum and Vt alone: neither T nor U is formed; Adam forms T."""
        t = make_target(512, 512, true_rank=4)
        fit_lora(t, [2, 8], steps=20)
        assert "matrix" not in t.__dict__ and "U" not in t.__dict__
        fit_lora(t, [2], optimizer="adam", steps=5)
        assert "matrix" in t.__dict__

    def test_noise_free_target_has_exact_rank(self):
        """With no noise the target's spectrum is exactly the planted one."""
        t = make_target(50, 40, true_rank=5, spectrum="geometric", noise=0.0)
        np.testing.assert_allclose(t.singular_values[:5], t.signal_values, rtol=1e-12)
        assert np.all(t.singular_values[5:] < 1e-12)

    def test_spectra_by_hand(self):
        """flat, linear and geometric spectra follow their documented formulas."""
        np.testing.assert_allclose(planted_spectrum(3, spectrum="flat", sigma_max=2), [2, 2, 2])
        np.testing.assert_allclose(planted_spectrum(4, spectrum="linear", sigma_max=38), [38, 33.25, 28.5, 23.75])
        np.testing.assert_allclose(planted_spectrum(3, spectrum="geometric", sigma_max=10), [10, 10 / math.sqrt(10), 1])
        np.testing.assert_allclose(planted_spectrum(1, spectrum="geometric", sigma_max=7), [7])

    def test_article_like_spectrum(self, article):
        """The default target's top values sit near the article's 37.8, 33.1, 25.8, 24.2."""
        np.testing.assert_allclose(article.singular_values[:4], [38.0, 33.25, 28.5, 23.75], rtol=2e-3)
        assert article.singular_values[4] < 0.01 * (8 + 8)

    def test_seed_reproducible(self):
        """The same seed gives the same matrix; another seed another."""
        a, b, c = make_target(seed=3), make_target(seed=3), make_target(seed=4)
        np.testing.assert_array_equal(a.matrix, b.matrix)
        assert not np.allclose(a.matrix, c.matrix)

    @pytest.mark.parametrize("kwargs,message", [
        ({"true_rank": 65}, "`true_rank` = 65 is larger than the matrix allows: min(d_out, d_in) = 64"),
        ({"d_out": 10, "d_in": 5, "true_rank": 6}, "`true_rank` = 6 is larger than the matrix allows: min(d_out, d_in) = 5"),
        ({"true_rank": 0}, "`true_rank` should be at least 1, got 0"),
        ({"noise": -0.1}, "`noise` should be at least 0, got -0.1"),
        ({"noise": float("nan")}, "`noise` should be finite, got nan"),
        ({"sigma_max": 0}, "`sigma_max` should be greater than 0, got 0"),
        ({"spectrum": "cubic"}, "`spectrum` should be one of flat, linear, geometric; got 'cubic'"),
        ({"d_out": 0}, "`d_out` should be at least 1, got 0"),
        ({"d_in": 5000}, "`d_in` should be at most 4096, got 5000"),
        ({"true_rank": 2.5}, "`true_rank` should be a whole number, got 2.5"),
    ])
    def test_bad_settings(self, kwargs, message):
        """Impossible targets raise ConfigError naming the value."""
        with pytest.raises(ConfigError) as info:
            make_target(**kwargs)
        assert str(info.value) == message


class TestScaleAndInit:
    @pytest.mark.parametrize("rule,r,alpha,want", [
        ("fixed-alpha", 8, 16, 2.0), ("fixed-alpha", 64, 16, 0.25), ("alpha-eq-r", 128, 16, 1.0),
        ("alpha-eq-2r", 3, 16, 2.0), ("rslora", 16, 8, 2.0), ("rslora", 32, 8, 8 / math.sqrt(32)),
    ])
    def test_lora_scale(self, rule, r, alpha, want):
        """Each rule's multiplier, computed by hand."""
        assert lora_scale(rule, r, alpha=alpha) == pytest.approx(want, rel=1e-15)

    def test_peft_initialisation(self):
        """B is zero and A is uniform within 1/sqrt(d_in), PEFT's kaiming_uniform_(a=sqrt(5))."""
        B, A = init_lora(30, 100, 8, seed=1)
        assert B.shape == (30, 8) and not B.any()
        assert A.shape == (8, 100) and np.abs(A).max() <= 0.1
        assert np.abs(A).max() > 0.09  # the whole interval is used
        np.testing.assert_array_equal(A, init_lora(30, 100, 8, seed=1)[1])


class TestFitAgainstReference:
    @pytest.mark.parametrize("optimizer,lr", [("sgd", 0.002), ("adam", 0.01)])
    @pytest.mark.parametrize("shape", [(48, 48), (30, 70), (70, 30)])
    def test_same_iterates_as_textbook_loop(self, optimizer, lr, shape):
        """Rotated, batched fitting gives the textbook loop's loss history, error and spectrum."""
        t = make_target(*shape, true_rank=3, seed=2)
        results = fit_lora(t, [1, 3, 8, 20], optimizer=optimizer, lr=lr, steps=150,
                           rule="fixed-alpha", alpha=8)
        for res in results:
            B, A, loss = fit_lora_reference(t.matrix, res.rank, scale=res.scale, optimizer=optimizer,
                                            lr=lr, steps=150)
            dense = res.scale * B @ A
            assert not res.diverged
            np.testing.assert_allclose(res.loss, loss, rtol=1e-9)
            rel = np.linalg.norm(dense - t.matrix) / np.linalg.norm(t.matrix)
            assert res.rel_err == pytest.approx(rel, rel=1e-10)
            want = np.linalg.svd(dense, compute_uv=False)[: res.rank]
            np.testing.assert_allclose(res.singular_values, want, rtol=1e-9, atol=1e-12 * want[0])
            norms = [res.scale * np.linalg.norm(B2 @ A2) for B2, A2 in [(B, A)]]
            assert res.max_update_norm >= norms[0] * (1 - 1e-9)

    def test_wide_target_basis_applied_not_formed(self):
        """Above HAAR_MAX input features SGD moves the initial A with the basis's layers (Vt is
        never formed) and still gives the textbook loop's iterates on the dense T."""
        t = make_target(40, 300, true_rank=3, seed=6)
        results = fit_lora(t, [2, 5], lr=0.002, steps=60)
        assert "Vt" not in vars(t)
        for res in results:
            B, A, loss = fit_lora_reference(t.matrix, res.rank, scale=res.scale, lr=0.002, steps=60)
            np.testing.assert_allclose(res.loss, loss, rtol=1e-9)
            rel = np.linalg.norm(res.scale * B @ A - t.matrix) / np.linalg.norm(t.matrix)
            assert res.rel_err == pytest.approx(rel, rel=1e-10)

    @pytest.mark.parametrize("optimizer", ["sgd", "adam"])
    def test_grid_of_runs_matches_textbook_loop(self, optimizer):
        """fit_lora_runs with its own scale and lr per run (both step forms) matches the loop."""
        t = make_target(24, 20, true_rank=3, seed=5)
        runs = [(2, 1.0, 0.003), (2, 2.0, 0.001), (19, 0.5, 0.004), (20, 1.0, 0.002), (20, 1.0, 0.003)]
        for (r, scale, lr), res in zip(runs, fit_lora_runs(t, runs, optimizer=optimizer, steps=120)):
            B, A, loss = fit_lora_reference(t.matrix, r, scale=scale, optimizer=optimizer, lr=lr, steps=120)
            assert (res.rank, res.scale) == (r, scale) and not res.diverged
            np.testing.assert_allclose(res.loss, loss, rtol=1e-9)
            rel = np.linalg.norm(scale * B @ A - t.matrix) / np.linalg.norm(t.matrix)
            assert res.rel_err == pytest.approx(rel, rel=1e-10)

    def test_step_form_follows_flop_count(self):
        """The residual form is used exactly when it needs fewer multiply-adds."""
        gram, residual = macs_per_step(64, 64, 8, "sgd")
        assert gram < residual
        gram, residual = macs_per_step(64, 64, 60, "sgd")
        assert gram > residual
        gram, residual = macs_per_step(256, 256, 128, "adam")
        assert gram > residual

    def test_rank_result_does_not_depend_on_company(self, article):
        """A rank fitted alone equals the same rank fitted in a batch with others."""
        alone = fit_lora(article, [4], steps=300)[0]
        together = {r.rank: r for r in fit_lora(article, [2, 4, 16], steps=300)}[4]
        np.testing.assert_allclose(alone.loss, together.loss, rtol=1e-9)  # round-off of the padded batch


class TestFitPhysics:
    def test_article_table(self, article_fit):
        """r=2 stays at its optimum (~0.59), r=4 reaches ~0.01, r=16 keeps 4 large directions."""
        r2, r4, r16 = article_fit[2], article_fit[4], article_fit[16]
        assert r2.rel_err == pytest.approx(0.59, abs=0.02)
        assert r2.rel_err == pytest.approx(r2.optimal_rel_err, rel=1e-3)
        assert r4.rel_err == pytest.approx(0.0095, abs=0.001)
        assert r16.effective_rank == 4
        assert r16.singular_values[4] < r16.singular_values[3] / 100  # two orders smaller
        assert r16.singular_values[3] > 20

    @pytest.mark.parametrize("optimizer", ["sgd", "adam"])
    def test_never_beats_the_optimum(self, article, optimizer):
        """No fit goes below the Eckart-Young optimum of its rank."""
        for res in fit_lora(article, [1, 2, 3, 4, 6, 16, 64], optimizer=optimizer, steps=800):
            assert res.rel_err >= res.optimal_rel_err * (1 - 1e-9)

    def test_reaches_optimum_at_true_rank(self):
        """At r = k the fit reaches the optimum within a few percent."""
        for spectrum in ("flat", "linear", "geometric"):
            t = make_target(80, 60, true_rank=5, spectrum=spectrum, seed=1)
            res = fit_lora(t, [5], steps=4000)[0]
            assert res.rel_err <= 1.05 * res.optimal_rel_err, spectrum

    def test_extra_directions_fit_noise_slowly(self, article):
        """Above k the error keeps creeping towards the (lower) optimum as steps grow."""
        short, long = (fit_lora(article, [16], steps=n)[0] for n in (500, 4000))
        assert long.rel_err < short.rel_err
        assert long.rel_err > long.optimal_rel_err * 1.02

    def test_divergence_flagged_not_nan(self, article):
        """A too-large learning rate is reported as diverged with its step, no NaN anywhere."""
        res = fit_lora(article, [4, 16], lr=1.0, steps=500)
        for r in res:
            assert r.diverged and r.rel_err is None and 0 < r.diverged_at < 50
            assert r.steps == r.diverged_at
            assert np.all(np.isfinite(r.loss)) and r.loss.size <= r.diverged_at + 1
            json.dumps(r.to_dict(loss_curve=True), allow_nan=False)

    def test_divergence_only_where_lr_too_large(self, article):
        """The default lr is stable; ten times it is not."""
        assert not fit_lora(article, [4], steps=300)[0].diverged
        assert fit_lora(article, [4], lr=10 * DEFAULT_LR["sgd"], steps=300)[0].diverged

    def test_early_stop(self, article):
        """With tol the run stops before the step budget once the loss stalls."""
        res = fit_lora(article, [4], steps=5000, tol=1e-6)[0]
        assert 50 < res.steps < 5000 and res.loss.size == res.steps + 1
        assert res.rel_err == pytest.approx(res.optimal_rel_err, rel=0.01)

    def test_progress_reaches_total(self, article):
        """The progress callback ends at (total, total), total = steps x ranks."""
        seen = []
        fit_lora(article, [2, 4], steps=100, progress=lambda done, total: seen.append((done, total)))
        assert seen[-1] == (200, 200)
        assert all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))

    def test_progress_comes_at_least_every_quarter_second(self, article, monkeypatch):
        """When a hundredth of the fit takes long (a loaded server), progress still comes at
        least every PROGRESS_INTERVAL: the app stops a closed tab's fit from it. Raising from
        progress stops the fit there."""
        import lorarank.fit as fit_module

        clock = [0.0]
        monkeypatch.setattr(fit_module.time, "monotonic", lambda: clock[0])
        seen = []

        def progress(done, total):
            seen.append(done)
            clock[0] += 0.1  # every step is 0.1 s apart from here on: 10 000 steps per tick
            if len(seen) == 6:
                raise KeyboardInterrupt("closed tab")

        original = fit_module.ProgressTicker.add

        def slow_add(self, n):
            clock[0] += 0.1
            original(self, n)

        monkeypatch.setattr(fit_module.ProgressTicker, "add", slow_add)
        with pytest.raises(KeyboardInterrupt):
            fit_lora(article, [2], steps=1_000_000, progress=progress)
        assert len(seen) == 6 and seen[-1] < 20, seen  # about every 3 steps, not every 10 000

    @pytest.mark.parametrize("kwargs,message", [
        ({"ranks": [0]}, "`rank` should be at least 1, got 0"),
        ({"ranks": [65]}, "rank 65 is larger than min(d_out, d_in) = 64"),
        ({"ranks": []}, "`ranks` should name at least one rank"),
        ({"ranks": [4, 4]}, "`ranks` lists a rank twice: [4, 4]"),
        ({"ranks": [4], "lr": 0}, "`lr` should be greater than 0, got 0"),
        ({"ranks": [4], "lr": -1e-3}, "`lr` should be greater than 0, got -0.001"),
        ({"ranks": [4], "steps": 0}, "`steps` should be at least 1, got 0"),
        ({"ranks": [4], "optimizer": "rmsprop"}, "`optimizer` should be one of sgd, adam; got 'rmsprop'"),
        ({"ranks": [4], "rule": "alpha"}, "`rule` should be one of fixed-alpha, alpha-eq-r, alpha-eq-2r, rslora; got 'alpha'"),
        ({"ranks": [4], "alpha": 0}, "`alpha` should be greater than 0, got 0"),
    ])
    def test_bad_settings(self, article, kwargs, message):
        """Bad fit settings raise ConfigError naming the value."""
        with pytest.raises(ConfigError) as info:
            fit_lora(article, **kwargs)
        assert str(info.value) == message
