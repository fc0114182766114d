"""Factored SVD against dense SVD, and every rank metric on spectra known by hand."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorarank import ConfigError
from lorarank.spectrum import (
    eckart_young_errors,
    energy_rank,
    entropy_rank,
    factored_svd,
    factored_svdvals,
    gavish_donoho_rank,
    gavish_donoho_threshold,
    kohya_rank,
    noise_threshold,
    numerical_rank,
    recommend_rank,
    stable_rank,
    truncation_error,
)


def dense_svdvals(B, A, scale, q):
    return np.linalg.svd(scale * (B @ A), compute_uv=False)[:q]


class TestFactoredSVD:
    @pytest.mark.parametrize("d_out,d_in,r", [(64, 64, 8), (200, 30, 6), (30, 200, 6), (10, 12, 16), (5, 3, 4)])
    @pytest.mark.parametrize("scale", [1.0, 2.0, 8 / math.sqrt(32), -0.5])
    def test_matches_dense_svd(self, d_out, d_in, r, scale):
        """Singular values from the factors equal numpy's SVD of the dense product, tall and wide."""
        rng = np.random.default_rng(d_out * 1000 + d_in + r)
        B, A = rng.standard_normal((d_out, r)), rng.standard_normal((r, d_in))
        q = min(r, d_out, d_in)
        got = factored_svdvals(B, A, scale=scale)
        assert got.shape == (q,)
        np.testing.assert_allclose(got, dense_svdvals(B, A, scale, q), rtol=1e-12, atol=1e-12 * got[0])

    def test_vectors_reconstruct_the_product(self):
        """U diag(S) Vt rebuilds scale * B @ A and U, Vt are orthonormal."""
        rng = np.random.default_rng(1)
        B, A = rng.standard_normal((50, 7)), rng.standard_normal((7, 40))
        U, S, Vt = factored_svd(B, A, scale=1.5)
        np.testing.assert_allclose((U * S) @ Vt, 1.5 * B @ A, atol=1e-11)
        np.testing.assert_allclose(U.T @ U, np.eye(7), atol=1e-12)
        np.testing.assert_allclose(Vt @ Vt.T, np.eye(7), atol=1e-12)

    def test_rank_deficient_factors(self):
        """A rank-2 update stored at r = 8 has exactly two non-zero singular values."""
        rng = np.random.default_rng(2)
        B = rng.standard_normal((40, 2)) @ rng.standard_normal((2, 8))
        A = rng.standard_normal((8, 30))
        got = factored_svdvals(B, A)
        np.testing.assert_allclose(got, dense_svdvals(B, A, 1.0, 8), atol=1e-10 * got[0])
        assert numerical_rank(got, shape=(40, 30)) == 2

    def test_zero_B_gives_zero_spectrum(self):
        """B initialised to zero (a fresh LoRA) has an all-zero spectrum."""
        got = factored_svdvals(np.zeros((16, 4)), np.ones((4, 9)))
        np.testing.assert_array_equal(got, np.zeros(4))

    def test_float32_factors(self):
        """float32 factors (as adapters store them) are handled in float64."""
        rng = np.random.default_rng(3)
        B, A = rng.standard_normal((30, 4)).astype(np.float32), rng.standard_normal((4, 20)).astype(np.float32)
        got = factored_svdvals(B, A)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, dense_svdvals(B.astype(float), A.astype(float), 1.0, 4), rtol=1e-10)

    @settings(max_examples=40, deadline=None)
    @given(d_out=st.integers(1, 40), d_in=st.integers(1, 40), r=st.integers(1, 12),
           seed=st.integers(0, 2**31), scale=st.floats(0.01, 100))
    def test_property_matches_dense(self, d_out, d_in, r, seed, scale):
        """For any shape, rank and scale the factored spectrum is the dense one."""
        rng = np.random.default_rng(seed)
        B, A = rng.standard_normal((d_out, r)), rng.standard_normal((r, d_in))
        got = factored_svdvals(B, A, scale=scale)
        want = dense_svdvals(B, A, scale, min(r, d_out, d_in))
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10 * max(want[0], 1e-300))

    @pytest.mark.parametrize("B,A,message", [
        (np.ones((4, 3)), np.ones((2, 5)), "factors do not chain: B has shape (4, 3) (r = 3) but A has shape (2, 5) (r = 2)"),
        (np.ones(4), np.ones((1, 5)), "`B` should be a 2-D matrix, got shape (4,)"),
        (np.full((2, 1), np.nan), np.ones((1, 2)), "`B` contains NaN or infinite values"),
        (np.ones((2, 1)), np.array([["a", "b"]]), "`A` should hold real numbers, got dtype <U1"),
    ])
    def test_bad_factors(self, B, A, message):
        """Bad factors raise ConfigError naming the problem."""
        with pytest.raises(ConfigError) as info:
            factored_svdvals(B, A)
        assert str(info.value) == message


class TestRankMetrics:
    def test_energy_rank_by_hand(self):
        """Energies 16, 9, 0.25 (total 25.25): 0.9 of it needs 2 values, 0.999 needs 3."""
        s = [4.0, 3.0, 0.5]
        assert energy_rank(s, threshold=0.6) == 1  # 16/25.25 = 0.634
        assert energy_rank(s, threshold=0.9) == 2
        assert energy_rank(s, threshold=0.999) == 3
        assert energy_rank(s, threshold=1.0) == 3

    def test_energy_rank_exact_boundary(self):
        """A share reached exactly counts as reached."""
        assert energy_rank([1.0, 1.0, 1.0, 1.0], threshold=0.5) == 2

    @pytest.mark.parametrize("fn", [energy_rank, kohya_rank, recommend_rank])
    def test_zero_spectrum_has_rank_zero(self, fn):
        """An all-zero update needs no direction at all."""
        kwargs = {"rule": "sv_ratio", "value": 10} if fn is kohya_rank else {}
        assert fn([0.0, 0.0], **kwargs) == 0

    def test_stable_rank(self):
        """sum sigma^2 / sigma_1^2: (4 + 1 + 1) / 4 = 1.5; k equal values give k."""
        assert stable_rank([2.0, 1.0, 1.0]) == 1.5
        assert stable_rank([3.0] * 5) == 5.0
        assert stable_rank([0.0, 0.0]) == 0.0

    def test_entropy_rank(self):
        """k equal values have entropy rank k; p = (1/2, 1/4, 1/4) gives 2^(3/2)."""
        assert entropy_rank([2.0] * 4 + [0.0] * 3) == pytest.approx(4.0, rel=1e-14)
        assert entropy_rank([2.0, 1.0, 1.0]) == pytest.approx(2 ** 1.5, rel=1e-14)
        assert entropy_rank([5.0]) == pytest.approx(1.0)

    def test_kohya_rules(self):
        """sv_ratio keeps sigma_i > sigma_1/R; sv_fro a Frobenius share; sv_cumulative an L1 share."""
        s = [10.0, 5.0, 2.0, 1.0]  # sum 18; energy 100, 25, 4, 1 (total 130)
        assert kohya_rank(s, rule="sv_ratio", value=4) == 2  # 10/4 = 2.5: keeps 10, 5
        assert kohya_rank(s, rule="sv_ratio", value=5) == 2  # 2 is not > 2
        assert kohya_rank(s, rule="sv_ratio", value=20) == 4
        assert kohya_rank(s, rule="sv_cumulative", value=15 / 18) == 2
        assert kohya_rank(s, rule="sv_cumulative", value=0.84) == 3
        assert kohya_rank(s, rule="sv_fro", value=0.98) == 2  # 0.9604 * 130 = 124.9 <= 125
        assert kohya_rank(s, rule="sv_fro", value=0.99) == 3  # 0.9801 * 130 = 127.4 > 125

    def test_truncation_and_eckart_young(self):
        """The error of keeping k values is sqrt(tail energy / total)."""
        s = [3.0, 2.0, 1.0]
        assert truncation_error(s, 0) == 1.0
        assert truncation_error(s, 1) == pytest.approx(math.sqrt(5 / 14), rel=1e-15)
        assert truncation_error(s, 3) == 0.0
        assert truncation_error(s, 10) == 0.0
        np.testing.assert_allclose(eckart_young_errors(s, [1, 2]), [math.sqrt(5 / 14), math.sqrt(1 / 14)])

    def test_eckart_young_is_dense_truncated_svd_error(self):
        """The optimum equals the error of the dense truncated SVD of a random matrix."""
        rng = np.random.default_rng(4)
        T = rng.standard_normal((30, 20))
        U, s, Vt = np.linalg.svd(T, full_matrices=False)
        for r in (1, 5, 19, 20):
            dense = np.linalg.norm(T - (U[:, :r] * s[:r]) @ Vt[:r]) / np.linalg.norm(T)
            assert eckart_young_errors(s, [r])[0] == pytest.approx(dense, rel=1e-10, abs=1e-14)

    def test_tiny_tail_is_not_lost(self):
        """A tail 1e-20 below the head is still resolved (tail sums, not 1 - head share)."""
        assert truncation_error([1.0, 1e-10], 1) == pytest.approx(1e-10, rel=1e-12)

    def test_recommend_rank_rules(self):
        """Each rule routes to its metric; entropy rounds up."""
        s = [10.0, 5.0, 2.0, 1.0]
        assert recommend_rank(s, rule="energy", value=0.9) == 2
        assert recommend_rank(s, rule="sv_ratio", value=4) == 2
        assert recommend_rank(s, rule="entropy") == math.ceil(entropy_rank(s))
        assert recommend_rank([1.0, 1.0, 0.0], rule="entropy") == 2

    @pytest.mark.parametrize("call,message", [
        (lambda: energy_rank([1.0, 2.0]), "`singular_values` should be sorted in descending order"),
        (lambda: energy_rank([1.0, -1.0]), "`singular_values` should be non-negative, got minimum -1"),
        (lambda: energy_rank([1.0, np.nan]), "`singular_values` contains NaN or infinite values"),
        (lambda: energy_rank([1.0], threshold=0), "`threshold` should be greater than 0, got 0"),
        (lambda: energy_rank([1.0], threshold=1.5), "`threshold` should be at most 1, got 1.5"),
        (lambda: kohya_rank([1.0], rule="sv_max", value=1), "`rule` should be one of sv_ratio, sv_fro, sv_cumulative; got 'sv_max'"),
        (lambda: kohya_rank([1.0], rule="sv_ratio", value=0.5), "`value` should be at least 1, got 0.5"),
        (lambda: truncation_error([1.0], -1), "`k` should be at least 0, got -1"),
        (lambda: eckart_young_errors([1.0], [1.5]), "`ranks` should be a 1-D list of non-negative integers, got [1.5]"),
    ])
    def test_bad_input_named(self, call, message):
        """Bad spectra and knobs raise ConfigError naming the value."""
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value) == message


class TestGavishDonoho:
    def test_square_known_noise_is_4_over_sqrt3(self):
        """For a square matrix with known noise the threshold is (4/sqrt(3)) sqrt(n) sigma."""
        tau = gavish_donoho_threshold(shape=(100, 100), noise=0.5)
        assert tau == pytest.approx(4 / math.sqrt(3) * 10 * 0.5, rel=1e-12)

    def test_separates_planted_rank_from_noise(self):
        """A rank-3 signal well above the noise floor is counted as 3, with or without the level."""
        rng = np.random.default_rng(5)
        n, m, sigma = 200, 120, 0.1
        u, _ = np.linalg.qr(rng.standard_normal((n, 3)))
        v, _ = np.linalg.qr(rng.standard_normal((m, 3)))
        X = (u * [30.0, 20.0, 10.0]) @ v.T + sigma * rng.standard_normal((n, m))
        s = np.linalg.svd(X, compute_uv=False)
        assert gavish_donoho_rank(s, shape=X.shape, noise=sigma) == 3
        assert gavish_donoho_rank(s, shape=X.shape) == 3

    def test_noise_threshold_is_gavish_donoho_for_known_noise(self):
        """With noise the floor equals the Gavish-Donoho threshold for that noise level."""
        s = np.array([38.0, 1.0, 0.1])
        assert noise_threshold(s, shape=(64, 32), noise=0.01) == gavish_donoho_threshold(shape=(64, 32), noise=0.01)

    def test_noise_threshold_round_off_without_noise(self):
        """Without noise the floor is the round-off level, positive so a log axis can draw it."""
        s = np.array([38.0, 1e-15])
        assert noise_threshold(s, shape=(64, 64), noise=0.0) == pytest.approx(38.0 * 64 * np.finfo(float).eps)

    def test_noise_free_counts_numerical_rank(self):
        """With zero noise only round-off is thresholded away."""
        assert gavish_donoho_rank([5.0, 1e-3, 1e-20], shape=(10, 10), noise=0.0) == 2
