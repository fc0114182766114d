"""Top singular values (and vectors) of a large dense matrix, each with a computed error bound.

A full fine-tune's update ``dW = W_ft - W0`` has no small factorisation, and a dense SVD of a
4096 x 14336 matrix costs minutes. :func:`top_svd` finds the leading ``k`` singular triplets by
block subspace iteration with a Rayleigh-Ritz step on every pass (Halko, Martinsson and Tropp
2011, Algorithms 4.4 and 5.1), in float64 whatever the matrix's storage dtype, and stops when
every reported value carries an error bound below ``tol * sigma_1``.

The error bound
---------------
On every pass the right basis ``Z`` (n x l, orthonormal) gives ``Y = M Z`` and its SVD
``Y = U diag(s) W^T``; the triplets are ``(s_i, u_i, v_i = Z w_i)``. By construction
``M v_i = s_i u_i`` exactly, and the residual ``r_i = M^T u_i - s_i v_i`` is computed (it is
the next pass's product, so it costs nothing extra). Then, for each reported i:

1. ``s_i <= sigma_i(M)``: the ``s_i`` are the singular values of ``M Z`` with ``Z`` orthonormal
   (Cauchy interlacing), so a reported value is never above the true one of the same index;
2. some singular value of ``M`` lies within ``bound_i = ||r_i|| / sqrt(2)`` of ``s_i``: the unit
   vector ``x = [u_i; v_i] / sqrt(2)`` has residual ``||H x - s_i x|| = ||r_i|| / sqrt(2)`` for
   the symmetric ``H = [[0, M], [M^T, 0]]``, whose eigenvalues are ``+-sigma_j(M)``, and a
   symmetric matrix has an eigenvalue within the residual norm of any Rayleigh quotient.

The iteration stops once ``bound_i <= tol * s_1`` for every ``i <= k`` (default ``tol`` 1e-6,
the product's target "to 1e-6 of sigma_1"). The residual bound is linear; the error it bounds
converges quadratically, so the actual errors are far smaller (1e-11 of sigma_1 on the test
spectra). That the value near ``s_i`` is the i-th one, i.e. that no leading direction was
missed entirely, rests on the Gaussian start: a direction the start misses has probability
zero, and one it barely touches is found at the rate of every other (Halko et al. 2011,
section 10). The test suite checks values and bounds against LAPACK's dense SVD in float64.

Small matrices (``min(m, n) <= DENSE_BELOW``) and requests for a large share of the spectrum
use LAPACK's dense SVD instead (exact to rounding; the reported bound is then
``max(m, n) * eps * sigma_1``, LAPACK's backward error).

References
----------
N. Halko, P. G. Martinsson and J. A. Tropp, "Finding structure with randomness: probabilistic
algorithms for constructing approximate matrix decompositions", SIAM Review 53 (2011).
B. N. Parlett, "The Symmetric Eigenvalue Problem", SIAM (1998), theorem 4.5.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ._validate import check_choice, check_int, check_real
from .errors import ConfigError

__all__ = ["TopSVD", "top_svd", "uses_dense", "DENSE_BELOW", "SMALL_ENTRIES", "DEFAULT_TOL", "blocked_matmul",
           "blocked_rmatmul", "frobenius_squared"]

#: Matrices whose smaller side is at most this go to LAPACK's dense SVD (exact, and as fast).
DENSE_BELOW = 512
#: Default stopping tolerance: every reported bound <= DEFAULT_TOL * sigma_1.
DEFAULT_TOL = 1e-6
#: Matrices of at most this many entries are worked on with one BLAS thread: their products
#: gain little from threads, and spinning threads on busy cores make them many times slower
#: (see lorarank.spectrum.single_threaded_blas).
SMALL_ENTRIES = 2**22
#: Bytes of float64 converted at a time when the matrix is stored in float32.
_BLOCK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class TopSVD:
    """The leading singular triplets of a matrix M of shape (m, n).

    Attributes
    ----------
    S : ndarray of shape (k,)
        Singular values, descending, float64.
    bounds : ndarray of shape (k,)
        ``bounds[i]``: a singular value of M lies within it of ``S[i]``, and ``S[i]`` is at most
        the i-th singular value (see the module docstring).
    U : ndarray of shape (m, k) or None
        Left singular vectors (orthonormal), when asked for.
    UtM : ndarray of shape (k, n) or None
        ``U.T @ M``: with ``U`` it gives ``U @ UtM``, the projection of M on the top-k left
        subspace (the best rank-k approximation when the bounds are small), when asked for.
    method : {"dense", "randomized"}
    iterations : int
        Passes of the subspace iteration (0 for dense).
    converged : bool
        Whether every bound reached ``tol * S[0]`` (always True for dense).
    """

    S: np.ndarray
    bounds: np.ndarray
    U: np.ndarray | None
    UtM: np.ndarray | None
    method: str
    iterations: int
    converged: bool

    @property
    def max_bound(self) -> float:
        """The largest bound, 0.0 when no value was asked for."""
        return float(self.bounds.max()) if self.bounds.size else 0.0


def _rows_per_block(M: np.ndarray) -> int:
    return max(1, _BLOCK_BYTES // max(1, 8 * M.shape[1]))


def blocked_matmul(M: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``M @ X`` in float64 (M converted a block of rows at a time when stored in float32)."""
    if M.dtype == np.float64:
        return M @ X
    out = np.empty((M.shape[0], X.shape[1]))
    step = _rows_per_block(M)
    for start in range(0, M.shape[0], step):
        out[start:start + step] = M[start:start + step].astype(np.float64) @ X
    return out


def blocked_rmatmul(M: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``M.T @ Y`` in float64 (M converted a block of rows at a time when stored in float32)."""
    if M.dtype == np.float64:
        return M.T @ Y
    out = np.zeros((M.shape[1], Y.shape[1]))
    step = _rows_per_block(M)
    for start in range(0, M.shape[0], step):
        out += M[start:start + step].astype(np.float64).T @ Y[start:start + step]
    return out


def frobenius_squared(M: np.ndarray) -> float:
    """``||M||_F^2`` accumulated in float64 (block by block for float32 storage)."""
    total = 0.0
    step = _rows_per_block(M)
    for start in range(0, M.shape[0], step):
        block = M[start:start + step].astype(np.float64, copy=False)
        total += float(np.einsum("ij,ij->", block, block))
    return total


def _check(M: object) -> np.ndarray:
    if not isinstance(M, np.ndarray) or M.ndim != 2:
        raise ConfigError(f"`M` should be a 2-D numpy array, got {type(M).__name__} "
                          f"{getattr(M, 'shape', '')}")
    if M.dtype not in (np.float32, np.float64):
        raise ConfigError(f"`M` should be float32 or float64, got {M.dtype}")
    if M.size == 0:
        raise ConfigError(f"`M` should not be empty, got shape {M.shape}")
    return M


def _dense(M: np.ndarray, k: int, vectors: bool) -> TopSVD:
    M64 = M.astype(np.float64, copy=False)
    if vectors:
        u, s, vt = np.linalg.svd(M64, full_matrices=False)
        U, S = u[:, :k], s[:k]
        UtM = S[:, None] * vt[:k]
    else:
        S = np.linalg.svd(M64, compute_uv=False)[:k]
        U = UtM = None
    bound = max(M.shape) * np.finfo(np.float64).eps * (float(S[0]) if S.size else 0.0)
    return TopSVD(S=S, bounds=np.full(S.shape, bound), U=U, UtM=UtM, method="dense",
                  iterations=0, converged=True)


def uses_dense(shape: tuple[int, int], k: int, *, method: str = "auto",
               oversample: int | None = None) -> bool:
    """Whether :func:`top_svd` would use LAPACK's dense SVD for these arguments (then every
    singular value costs the same as the first ``k``)."""
    small = min(shape)
    k = min(max(1, int(k)), small)
    p = max(16, k) if oversample is None else int(oversample)
    l = min(k + p, small)
    if method == "dense" or l >= small:
        return True
    return method == "auto" and (small <= DENSE_BELOW or 4 * l >= small)


def top_svd(M: np.ndarray, k: int, *, tol: float = DEFAULT_TOL, oversample: int | None = None,
            max_iter: int = 300, method: str = "auto", vectors: bool = False, seed: int = 0,
            check: Callable[[], None] | None = None) -> TopSVD:
    """The ``k`` largest singular values of ``M`` (and vectors), each with an error bound.

    Parameters
    ----------
    M : ndarray of shape (m, n), float32 or float64
        The matrix; float32 storage is converted to float64 a block of rows at a time, so the
        arithmetic is float64 either way.
    k : int
        How many leading values (clipped to ``min(m, n)``).
    tol : float, default=DEFAULT_TOL
        Stop when every reported bound is at most ``tol * sigma_1``.
    oversample : int, optional
        Extra basis columns beyond ``k`` (default ``max(16, k)``): more columns converge in
        fewer passes.
    max_iter : int, default=300
        Passes at most; a result that did not converge says so (``converged`` False) and its
        bounds say how far it got.
    method : {"auto", "randomized", "dense"}, default="auto"
        ``auto``: dense when ``min(m, n) <= DENSE_BELOW`` or the basis would span a quarter of
        the smaller side (then LAPACK is no slower), else randomized.
    vectors : bool, default=False
        Also return ``U`` and ``U.T @ M``.
    seed : int, default=0
        Seed of the Gaussian start (the result is reproducible).
    check : callable, optional
        Called once per pass (e.g. to honour a stop request by raising).

    Returns
    -------
    TopSVD

    Raises
    ------
    ConfigError
        ``M`` not a 2-D float array, bad ``k``, ``tol`` or ``method``.

    Notes
    -----
    Cost per pass: two products of M with an (n or m) x l block, ``l = k + oversample``, plus
    an ``m x l`` SVD; memory: M plus a few ``(m + n) x l`` float64 blocks.
    """
    M = _check(M)
    if M.size <= SMALL_ENTRIES:
        from .spectrum import single_threaded_blas

        with single_threaded_blas():
            return _top_svd(M, k, tol=tol, oversample=oversample, max_iter=max_iter, method=method,
                            vectors=vectors, seed=seed, check=check)
    return _top_svd(M, k, tol=tol, oversample=oversample, max_iter=max_iter, method=method,
                    vectors=vectors, seed=seed, check=check)


def _top_svd(M: np.ndarray, k: int, *, tol: float, oversample: int | None, max_iter: int, method: str,
             vectors: bool, seed: int, check: Callable[[], None] | None) -> TopSVD:
    m, n = M.shape
    k = min(check_int("k", k, minimum=1), m, n)
    tol = check_real("tol", tol, minimum=0.0, strict_minimum=True)
    method = check_choice("method", method, ("auto", "randomized", "dense"))
    max_iter = check_int("max_iter", max_iter, minimum=1)
    p = max(16, k) if oversample is None else check_int("oversample", oversample, minimum=0)
    small = min(m, n)
    l = min(k + p, small)
    if uses_dense((m, n), k, method=method, oversample=p):
        return _dense(M, k, vectors)
    # 1. A Gaussian start for the right subspace.
    rng = np.random.default_rng(seed)
    Z = np.linalg.qr(rng.standard_normal((n, l)))[0]
    S = bounds = U = G = None
    iterations = 0
    converged = False
    from .spectrum import single_threaded_blas

    for iterations in range(1, max_iter + 1):
        if check is not None:
            check()
        # 2. Rayleigh-Ritz on the right subspace: M Z = U diag(S) W^T, v_i = Z w_i. The thin
        #    factorisations run on one BLAS thread: they gain little from threads, and spinning
        #    threads on busy cores made them 10-15x slower (measured: 20 s against 1.3 s for
        #    the SVD of a 14336 x 128 block on two loaded cores).
        Y = blocked_matmul(M, Z)
        with single_threaded_blas():
            U, S, Wt = np.linalg.svd(Y, full_matrices=False)
        # 3. The other side's product, and each triplet's residual r_i = M^T u_i - S_i v_i.
        G = blocked_rmatmul(M, U)
        R = G - (Z @ Wt.T) * S
        bounds = np.linalg.norm(R[:, :k], axis=0) / np.sqrt(2.0)
        if S[0] == 0.0 or np.all(bounds <= tol * S[0]):
            converged = True
            break
        # 4. The next right basis: orthonormalised M^T U (one pass of subspace iteration).
        with single_threaded_blas():
            Z = np.linalg.qr(G)[0]
    return TopSVD(S=S[:k].copy(), bounds=bounds, U=U[:, :k].copy() if vectors else None,
                  UtM=G[:, :k].T.copy() if vectors else None, method="randomized",
                  iterations=iterations, converged=converged)
