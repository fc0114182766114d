"""Top singular values by block subspace iteration: values and error bounds against LAPACK's dense SVD."""

import numpy as np
import pytest

from lorarank import ConfigError
from lorarank.randsvd import DEFAULT_TOL, blocked_matmul, blocked_rmatmul, frobenius_squared, top_svd, uses_dense


def planted(m, n, s, seed=0, dtype=np.float64):
    """A matrix of shape (m, n) with singular values ``s`` (padded with zeros)."""
    rng = np.random.default_rng(seed)
    q = min(m, n)
    s = np.concatenate([np.asarray(s, float), np.zeros(q - len(s))])[:q]
    U = np.linalg.qr(rng.standard_normal((m, q)))[0]
    V = np.linalg.qr(rng.standard_normal((n, q)))[0]
    return ((U * s) @ V.T).astype(dtype)


SPECTRA = {
    "power law 0.5 (a full fine-tune's slow decay)": lambda q: np.arange(1, q + 1) ** -0.5,
    "power law 1.0": lambda q: np.arange(1, q + 1) ** -1.0,
    "clustered (repeated top values)": lambda q: np.r_[np.full(8, 3.0), np.full(8, 2.0), 0.5 ** np.arange(q - 16)],
    "low rank 5 plus noise": lambda q: np.r_[np.linspace(10, 6, 5), np.full(q - 5, 1e-3)],
    "exactly rank 3": lambda q: np.r_[[5.0, 4.0, 1.0], np.zeros(q - 3)],
}


class TestTopSVD:
    @pytest.mark.parametrize("name", list(SPECTRA))
    def test_randomized_matches_dense_within_its_bounds(self, name):
        """Every value is within its bound of LAPACK's, and every bound is at most tol * sigma_1."""
        m, n = 300, 700
        M = planted(m, n, SPECTRA[name](300), seed=1)
        exact = np.linalg.svd(M, compute_uv=False)
        got = top_svd(M, 24, method="randomized")
        assert got.method == "randomized" and got.converged and got.iterations >= 1
        err = np.abs(got.S - exact[:24])
        assert np.all(err <= got.bounds + 1e-13 * exact[0])
        assert got.max_bound <= DEFAULT_TOL * exact[0]
        assert np.all(got.S <= exact[:24] + 1e-13 * exact[0])  # never above the one of its index (to rounding)
        assert err.max() <= 1e-6 * exact[0]

    def test_float32_storage_is_computed_in_float64(self):
        """A float32 matrix gives float64 values exact for the float32 entries."""
        M32 = planted(400, 600, np.arange(1, 401) ** -0.7, seed=2, dtype=np.float32)
        exact = np.linalg.svd(M32.astype(np.float64), compute_uv=False)
        got = top_svd(M32, 16, method="randomized")
        assert got.S.dtype == np.float64
        assert np.max(np.abs(got.S - exact[:16])) <= 1e-6 * exact[0]

    def test_vectors_project_onto_the_top_subspace(self):
        """U @ UtM is the best rank-k approximation: its error is Eckart-Young's."""
        M = planted(250, 500, np.arange(1, 251) ** -0.8, seed=3)
        got = top_svd(M, 10, method="randomized", vectors=True)
        assert np.allclose(got.U.T @ got.U, np.eye(10), atol=1e-12)
        assert np.allclose(got.UtM, got.U.T @ M, atol=1e-12)
        s = np.linalg.svd(M, compute_uv=False)
        best = np.sqrt(np.sum(s[10:] ** 2))
        assert abs(np.linalg.norm(M - got.U @ got.UtM) - best) <= 1e-6 * s[0]

    def test_dense_path_for_small_matrices(self):
        M = planted(40, 90, np.linspace(3, 1, 40))
        got = top_svd(M, 64)
        assert got.method == "dense" and got.S.size == 40 and got.iterations == 0
        assert np.allclose(got.S, np.linalg.svd(M, compute_uv=False))
        assert uses_dense((40, 90), 8) and not uses_dense((2000, 3000), 64)

    def test_zero_matrix(self):
        got = top_svd(np.zeros((600, 700)), 8, method="randomized")
        assert np.all(got.S == 0) and got.converged and got.max_bound == 0

    def test_unconverged_result_says_so(self):
        """Too few passes: converged False, and the bounds still hold."""
        M = planted(300, 500, np.arange(1, 301) ** -0.3, seed=4)
        got = top_svd(M, 20, method="randomized", max_iter=1, oversample=4)
        exact = np.linalg.svd(M, compute_uv=False)[:20]
        assert not got.converged
        # The bound is a distance to *some* singular value; the value is never above its own.
        assert np.all(got.S <= exact + 1e-13 * exact[0])
        assert got.max_bound > DEFAULT_TOL * exact[0]

    def test_check_is_called_every_pass(self):
        calls = []
        M = planted(300, 500, np.arange(1, 301) ** -0.5, seed=5)
        got = top_svd(M, 8, method="randomized", check=lambda: calls.append(1))
        assert len(calls) == got.iterations

    @pytest.mark.parametrize("bad, message", [
        ({"M": np.zeros((3, 3, 3))}, "2-D"), ({"M": np.zeros((3, 4), dtype=int)}, "float32 or float64"),
        ({"k": 0}, "`k` should be at least 1"), ({"tol": 0.0}, "`tol` should be greater than 0"),
        ({"method": "lanczos"}, "`method` should be one of"),
    ])
    def test_bad_arguments_name_the_value(self, bad, message):
        args = {"M": np.ones((5, 6)), "k": 2, **bad}
        M, k = args.pop("M"), args.pop("k")
        with pytest.raises(ConfigError, match=message):
            top_svd(M, k, **args)


def test_blocked_products_equal_plain_products():
    rng = np.random.default_rng(6)
    M = rng.standard_normal((70, 50)).astype(np.float32)
    X, Y = rng.standard_normal((50, 4)), rng.standard_normal((70, 4))
    M64 = M.astype(np.float64)
    assert np.allclose(blocked_matmul(M, X), M64 @ X, atol=1e-12)
    assert np.allclose(blocked_rmatmul(M, Y), M64.T @ Y, atol=1e-12)
    assert frobenius_squared(M) == pytest.approx(float(np.sum(M64 ** 2)), rel=1e-14)
