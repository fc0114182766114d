"""Spectra of the LoRA families from their factors, each against numpy's dense SVD (the oracle)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorarank import ConfigError
from lorarank.spectrum import (
    energy_rank,
    entropy_rank,
    factored_svd,
    factored_svdvals,
    hadamard_factors,
    khatri_rao_rows,
    kohya_rank,
    kron_svd,
    kron_svdvals,
    operator_svd,
    operator_svdvals,
    stable_rank,
    truncation_error,
)


def dense(M, q=None):
    s = np.linalg.svd(M, compute_uv=False)
    return s if q is None else s[:q]


class TestKhatriRao:
    def test_rows_are_kronecker_products(self):
        rng = np.random.default_rng(0)
        X, Y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
        out = khatri_rao_rows(X, Y)
        assert out.shape == (5, 6)
        for i in range(5):
            np.testing.assert_array_equal(out[i], np.kron(X[i], Y[i]))

    def test_row_count_mismatch_is_named(self):
        with pytest.raises(ConfigError, match="same number of rows"):
            khatri_rao_rows(np.ones((3, 2)), np.ones((4, 2)))

    @settings(max_examples=40, deadline=None)
    @given(d_out=st.integers(1, 40), d_in=st.integers(1, 40), r1=st.integers(1, 5), r2=st.integers(1, 5),
           seed=st.integers(0, 2**31 - 1))
    def test_hadamard_factors_are_exact(self, d_out, d_in, r1, r2, seed):
        """LoHa: (B1 A1) * (B2 A2) == B @ A with inner dimension r1 r2; same singular values."""
        rng = np.random.default_rng(seed)
        B1, A1 = rng.standard_normal((d_out, r1)), rng.standard_normal((r1, d_in))
        B2, A2 = rng.standard_normal((d_out, r2)), rng.standard_normal((r2, d_in))
        B, A = hadamard_factors(B1, A1, B2, A2)
        assert B.shape == (d_out, r1 * r2) and A.shape == (r1 * r2, d_in)
        truth = (B1 @ A1) * (B2 @ A2)
        np.testing.assert_allclose(B @ A, truth, atol=1e-12 * max(1.0, np.abs(truth).max()))
        q = min(r1 * r2, d_out, d_in)
        want = dense(3.0 * truth, q)
        np.testing.assert_allclose(factored_svdvals(B, A, scale=3.0), want, atol=1e-10 * max(want[0], 1.0))

    def test_hadamard_shape_mismatch_is_named(self):
        with pytest.raises(ConfigError, match="Hadamard halves differ"):
            hadamard_factors(np.ones((4, 2)), np.ones((2, 5)), np.ones((4, 2)), np.ones((2, 6)))


class TestKron:
    @settings(max_examples=40, deadline=None)
    @given(o1=st.integers(1, 5), i1=st.integers(1, 5), d_out=st.integers(1, 20), d_in=st.integers(1, 20),
           q=st.integers(1, 6), scale=st.sampled_from([1.0, 0.5, -2.0]), seed=st.integers(0, 2**31 - 1))
    def test_kron_svdvals_match_dense(self, o1, i1, d_out, d_in, q, scale, seed):
        """LoKr: sigma(kron(L, B A)) are the products sigma(L)_i sigma(B A)_j."""
        rng = np.random.default_rng(seed)
        L, B, A = rng.standard_normal((o1, i1)), rng.standard_normal((d_out, q)), rng.standard_normal((q, d_in))
        got = kron_svdvals(L, B, A, scale=scale)
        want = dense(scale * np.kron(L, B @ A))
        assert got.size == min(o1, i1) * min(q, d_out, d_in)
        np.testing.assert_allclose(got, want[: got.size], atol=1e-10 * want[0])
        np.testing.assert_allclose(want[got.size:], 0.0, atol=1e-10 * want[0])

    @pytest.mark.parametrize("k", [1, 3, 7, None])
    def test_kron_svd_is_the_best_rank_k(self, k):
        """The top-k triplets rebuild the Eckart-Young truncation of the dense Kronecker product."""
        rng = np.random.default_rng(3)
        L, B, A = rng.standard_normal((3, 4)), rng.standard_normal((12, 4)), rng.standard_normal((4, 9))
        M = 0.5 * np.kron(L, B @ A)
        f = kron_svd(L, B, A, scale=0.5, k=k)
        u, s, vt = np.linalg.svd(M, full_matrices=False)
        kk = f.S.size
        np.testing.assert_allclose(f.S, s[:kk], rtol=1e-12)
        np.testing.assert_allclose(f.U.T @ f.U, np.eye(kk), atol=1e-12)
        np.testing.assert_allclose(f.Vt @ f.Vt.T, np.eye(kk), atol=1e-12)
        np.testing.assert_allclose((f.U * f.S) @ f.Vt, (u[:, :kk] * s[:kk]) @ vt[:kk], atol=1e-10 * s[0])


class TestOperator:
    @pytest.mark.parametrize("method", ["iterative", "dense", "auto"])
    @pytest.mark.parametrize("m,n,k", [(300, 200, 20), (120, 400, 64), (50, 50, 50), (64, 10, 3)])
    def test_top_k_match_dense(self, method, m, n, k):
        """A full-rank matrix with a decaying spectrum, reached only by products."""
        rng = np.random.default_rng(m + n + k)
        M = rng.standard_normal((m, n)) * np.geomspace(1, 1e-3, n)
        got = operator_svdvals(lambda X: M @ X, lambda Y: M.T @ Y, (m, n), k=k, method=method)
        want = dense(M, min(k, m, n))
        np.testing.assert_allclose(got, want, atol=1e-10 * want[0])

    def test_vectors_reconstruct_the_truncation(self):
        rng = np.random.default_rng(9)
        M = rng.standard_normal((400, 300))
        f = operator_svd(lambda X: M @ X, lambda Y: M.T @ Y, M.shape, k=10, method="iterative", vectors=True)
        u, s, vt = np.linalg.svd(M, full_matrices=False)
        np.testing.assert_allclose(f.S, s[:10], rtol=1e-10)
        np.testing.assert_allclose((f.U * f.S) @ f.Vt, (u[:, :10] * s[:10]) @ vt[:10], atol=1e-8 * s[0])

    def test_bad_method_is_named(self):
        with pytest.raises(ConfigError, match="method"):
            operator_svdvals(lambda X: X, lambda Y: Y, (3, 3), k=1, method="magic")


class TestOverflow:
    def test_factors_near_1e160_keep_their_spectrum(self):
        """Products that overflow float64 inside the SVD are normalised: values stay exact."""
        rng = np.random.default_rng(5)
        B, A = rng.standard_normal((40, 4)), rng.standard_normal((4, 30))
        base = factored_svdvals(B, A)
        big = factored_svdvals(B * 1e160, A * 1e140, scale=1e-10)
        np.testing.assert_allclose(big, base * 1e290, rtol=1e-12)
        f = factored_svd(B * 1e160, A * 1e160, scale=1e-300)
        np.testing.assert_allclose(f.S, base * 1e20, rtol=1e-12)

    def test_scale_1e300_gives_finite_metrics(self):
        rng = np.random.default_rng(6)
        B, A = rng.standard_normal((40, 4)), rng.standard_normal((4, 30))
        s = factored_svdvals(B, A, scale=1e300 / 4)
        s0 = factored_svdvals(B, A)
        assert np.all(np.isfinite(s))
        assert energy_rank(s, threshold=0.9) == energy_rank(s0, threshold=0.9)
        assert truncation_error(s, 2) == pytest.approx(truncation_error(s0, 2), rel=1e-12)
        assert entropy_rank(s) == pytest.approx(entropy_rank(s0), rel=1e-12)
        assert stable_rank(s) == pytest.approx(stable_rank(s0), rel=1e-12)
        assert kohya_rank(s, rule="sv_fro", value=0.9) == kohya_rank(s0, rule="sv_fro", value=0.9)

    def test_infinite_singular_value_is_an_error(self):
        rng = np.random.default_rng(7)
        B, A = rng.standard_normal((40, 4)) * 1e200, rng.standard_normal((4, 30)) * 1e200
        with pytest.raises(ConfigError, match="overflows float64"):
            factored_svdvals(B, A)

    def test_all_zero_factor_gives_zeros(self):
        np.testing.assert_array_equal(factored_svdvals(np.zeros((5, 2)), np.ones((2, 4))), [0.0, 0.0])
