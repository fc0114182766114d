"""Singular values of a LoRA update from its factors, and what they say about its rank.

A LoRA update is ``dW = scale * B @ A`` with ``B`` of shape (d_out, r) and ``A`` of shape
(r, d_in). Its singular values come from the factors in O((d_out + d_in) r^2) time: QR of
``B`` and of ``A.T``, then the SVD of the small r x r core. The dense d_out x d_in product is
never formed.

The metrics take a spectrum ``sigma_1 >= ... >= sigma_q >= 0`` and follow PRODUCT.md:

- energy rank k(t): smallest k with ``sum_{i<=k} sigma_i^2 >= t * sum sigma^2``
- stable rank: ``sum sigma^2 / sigma_1^2``
- entropy effective rank (Roy and Vetterli 2007): ``exp(-sum p log p)``, ``p_i = sigma_i / sum sigma``
- kohya rules: ``sv_ratio`` R keeps ``sigma_i > sigma_1 / R``; ``sv_fro`` t keeps a Frobenius
  share t (energy t^2); ``sv_cumulative`` t keeps an L1 share t
- truncation error at k: ``sqrt(sum_{i>k} sigma^2 / sum sigma^2)``; the Eckart-Young optimum of
  a target at rank r is the same formula on the target's own singular values
- Gavish-Donoho (2014): the optimal hard threshold that separates signal from white noise.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from typing import Iterator, NamedTuple

import numpy as np
from threadpoolctl import ThreadpoolController

from ._validate import check_choice, check_int, check_matrix, check_real, check_spectrum
from .errors import ConfigError

__all__ = [
    "FactoredSVD",
    "factored_svd",
    "factored_svdvals",
    "energy_rank",
    "stable_rank",
    "entropy_rank",
    "kohya_rank",
    "truncation_error",
    "eckart_young_errors",
    "gavish_donoho_threshold",
    "gavish_donoho_rank",
    "noise_threshold",
    "numerical_rank",
    "recommend_rank",
    "RANK_RULES",
    "single_threaded_blas",
    "khatri_rao_rows",
    "hadamard_factors",
    "kron_svdvals",
    "kron_svd",
    "operator_svd",
    "operator_svdvals",
    "kron_values",
    "svdvals_unchecked",
]

#: Rules :func:`recommend_rank` understands, with the meaning of their ``value``.
RANK_RULES: dict[str, str] = {
    "energy": "keep the smallest k whose share of sum sigma^2 reaches the value (0 < t <= 1)",
    "sv_ratio": "kohya: keep sigma_i > sigma_1 / value (value >= 1)",
    "sv_fro": "kohya: keep a Frobenius-norm share of value (energy value^2, 0 < t <= 1)",
    "sv_cumulative": "kohya: keep an L1 share of value of sum sigma (0 < t <= 1)",
    "entropy": "entropy effective rank, rounded up (value ignored)",
}


class FactoredSVD(NamedTuple):
    """Thin SVD ``U @ diag(S) @ Vt`` of ``scale * B @ A``.

    Attributes
    ----------
    U : ndarray of shape (d_out, q)
        Left singular vectors, orthonormal columns; ``q = min(r, d_out, d_in)``.
    S : ndarray of shape (q,)
        Singular values, descending, float64.
    Vt : ndarray of shape (q, d_in)
        Right singular vectors, orthonormal rows.
    """

    U: np.ndarray
    S: np.ndarray
    Vt: np.ndarray


def _check_factors(B: object, A: object, scale: object) -> tuple[np.ndarray, np.ndarray, float]:
    B = check_matrix("B", B)
    A = check_matrix("A", A)
    if B.shape[1] != A.shape[0]:
        raise ConfigError(
            f"factors do not chain: B has shape {B.shape} (r = {B.shape[1]}) but A has shape "
            f"{A.shape} (r = {A.shape[0]})"
        )
    scale = check_real("scale", scale)
    return B.astype(np.float64, copy=False), A.astype(np.float64, copy=False), scale


def _core(B: np.ndarray, A: np.ndarray, scale: float, vectors: bool):
    if not vectors:
        return svdvals_unchecked(B, A, scale)
    # 0. Factors divided by their largest entries (unit carries them): no overflow near 1e160.
    B, A, unit = _normalised(B, A, scale)
    # 1. B = Q_B R_B and A^T = Q_A R_A (reduced QR: Q has min(d, r) orthonormal columns).
    qb, rb = np.linalg.qr(B)
    qa, ra = np.linalg.qr(A.T)
    # 2. scale * B @ A = Q_B (scale * R_B R_A^T) Q_A^T; the core is at most r x r.
    # 3. The SVD of the core gives the singular values; Q_B and Q_A rotate its vectors back.
    uc, s, vct = np.linalg.svd(np.sign(scale) * (rb @ ra.T), full_matrices=False)
    return qb @ uc, _rescaled(s, unit), vct @ qa.T


def svdvals_unchecked(B: np.ndarray, A: np.ndarray, scale: float, *, buffers=None,
                       narrow: bool = False) -> np.ndarray:
    """:func:`factored_svdvals` without validation, for factors already checked.

    Singular values need only the triangular factors R of ``B = Q_B R_B`` and
    ``A^T = Q_A R_A``: ``scale * B @ A = Q_B (scale * R_B R_A^T) Q_A^T``. R comes from
    :func:`_r_factor` (CholeskyQR2: three BLAS-3 passes over the factor, no copy of it;
    Householder QR for ill-conditioned or wide factors). When ``r >= min(d_out, d_in)`` the
    core is no smaller than the update, and the update's own values are taken (one product,
    no QR).

    Parameters
    ----------
    B : ndarray of shape (d_out, r), float64
    A : ndarray of shape (r, d_in), float64
    scale : float
    buffers : lorarank.adapters.Buffers, optional
        Scratch arrays for CholeskyQR2's intermediate ``Q`` (reused from module to module).
    narrow : bool, default=False
        The entries are values of a float32 (or narrower) array, so the Gram matrices can
        neither overflow nor underflow and the range check is skipped.

    Returns
    -------
    ndarray of shape (min(r, d_out, d_in),)
    """
    q = min(B.shape[0], B.shape[1], A.shape[1])
    if scale == 0.0:
        return np.zeros(q)
    b, a = (1.0, 1.0) if narrow else (_max_abs(B), _max_abs(A))
    if b == 0.0 or a == 0.0:
        return np.zeros(q)
    if B.shape[1] >= min(B.shape[0], A.shape[1]):
        # A rank at least one side (a full-rank 4096 x 4096 adapter): the core would be as
        # large as the update itself, so the two QRs only add work (a third of the time).
        if narrow or a * b * B.shape[1] < 1e150:  # B @ A cannot overflow: no normalised copies
            return _rescaled(np.linalg.svd(B @ A, compute_uv=False)[:q], abs(scale))
        B, A, unit = _normalised(B, A, scale)
        return _rescaled(np.linalg.svd(B @ A, compute_uv=False), unit)
    if not (_SAFE[0] <= b <= _SAFE[1] and _SAFE[0] <= a <= _SAFE[1]):
        # Entries near 1e160 (or 1e-160) would overflow (underflow) the Gram matrices.
        B, A, unit = _normalised(B, A, scale)
        rb = np.linalg.qr(B, mode="r")
        ra = np.linalg.qr(A.T, mode="r")
        return _rescaled(np.linalg.svd(rb @ ra.T, compute_uv=False), unit)
    rb = _r_factor(B, buffers)
    ra = _r_factor(A.T, buffers)
    return _rescaled(np.linalg.svd(rb @ ra.T, compute_uv=False)[:q], abs(scale))


#: Largest-entry range in which a factor's Gram matrix ``X^T X`` neither overflows nor loses
#: precision to underflow in float64 (every float32, float16 and bfloat16 factor is inside).
_SAFE = (1e-100, 1e100)


def _max_abs(X: np.ndarray) -> float:
    """``max |X|`` by two reductions (no array of X's size is made)."""
    if X.size == 0:
        return 0.0
    return max(float(np.max(X)), -float(np.min(X)))


#: Condition number of a factor up to which one Cholesky pass is as exact as Householder QR here.
_ONE_PASS_COND = 32.0


def _r_factor(X: np.ndarray, buffers=None) -> np.ndarray:
    """An upper-triangular R with ``X = Q R``, Q with orthonormal columns (X float64, (m, n)).

    CholeskyQR (``R1 = chol(X^T X)``), repeated once (CholeskyQR2, Fukaya, Nakatsukasa,
    Yanagisawa and Yamamoto 2014: ``Q1 = X R1^{-1}``, ``R = chol(Q1^T Q1) R1``) unless X is
    well conditioned:

    - With ``Q1 = X R1^{-1}``, ``Q1^T Q1 = I + E`` with ``||E|| = O(u c^2)``, c the condition
      number of X with its columns scaled to unit norm (Cholesky's errors do not depend on
      the columns' scales), so ``sigma_i(X M) = sigma_i(R1 M) (1 + O(u c^2))`` for every i: a
      relative error per singular value (Householder QR's is absolute, ``O(u sigma_1)``). Up
      to :data:`_ONE_PASS_COND` (``32^2 u < 3e-13``) one pass is kept.
    - Above it, the second pass makes Q orthonormal to O(u), which holds while cond(X) is
      below about ``u^{-1/2} / sqrt(m n)``; a tenth of that bound is the limit.
    - Anything else (a rank-deficient or zero factor, m < n, a failed Cholesky) goes to
      Householder QR (``np.linalg.qr``, which copies X).

    Every step is a matrix product on X as it is: no copy of the factor, and ``Q1`` lives in
    ``buffers`` when given.
    """
    m, n = X.shape
    if m < n:
        return np.linalg.qr(X, mode="r")
    G = X.T @ X
    norms = np.sqrt(np.diagonal(G))
    R1 = _cholesky_r(G) if np.all(norms > 0) else None
    if R1 is None:
        return np.linalg.qr(X, mode="r")
    # Cholesky's errors do not depend on the columns' scales (van der Sluis): the condition
    # number that counts is that of X with unit columns, R1 / norms.
    sv = np.linalg.svd(R1 / norms, compute_uv=False)
    if sv[-1] > 0 and sv[0] <= _ONE_PASS_COND * sv[-1]:
        return R1
    limit = 0.1 / math.sqrt(8 * np.finfo(np.float64).eps * (m * n + n * (n + 1)))
    if not sv[-1] > 0 or sv[0] / sv[-1] > limit:
        return np.linalg.qr(X, mode="r")
    Q1 = np.empty((m, n)) if buffers is None else buffers.take("cholqr", (m, n))
    np.matmul(X, np.linalg.inv(R1), out=Q1)
    R2 = _cholesky_r(Q1.T @ Q1)
    if R2 is None:  # pragma: no cover - Q1 is within O(u cond^2) of orthonormal here
        return np.linalg.qr(X, mode="r")
    return R2 @ R1


def _cholesky_r(G: np.ndarray) -> np.ndarray | None:
    """Upper-triangular R with ``G = R^T R``, or None when G is not numerically positive definite."""
    try:
        L = np.linalg.cholesky(G)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(L)):
        return None
    return L.T


def _normalised(B: np.ndarray, A: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, float]:
    """``(B / b, A / a, |scale| * a * b)`` with ``b``, ``a`` the factors' largest entries.

    Factors near 1e160 (or a scale of 1e300) give products that overflow float64 inside the
    QR / SVD (LinAlgError) although every singular value is representable; the singular
    values scale linearly, so dividing first and multiplying the (few) values back is exact
    up to rounding. An all-zero factor gives ``unit = 0`` (every singular value 0).
    """
    b = float(np.max(np.abs(B))) if B.size else 0.0
    a = float(np.max(np.abs(A))) if A.size else 0.0
    if b == 0.0 or a == 0.0 or scale == 0.0:
        return B, A, 0.0
    return B / b, A / a, abs(scale) * a * b


def _rescaled(s: np.ndarray, unit: float) -> np.ndarray:
    with np.errstate(over="ignore"):  # an overflow is reported below, in one sentence
        out = s * unit if unit else np.zeros_like(s)
    if not np.all(np.isfinite(out)):
        raise ConfigError(f"a singular value overflows float64 (sigma_1 = {float(s[0])!r} x {unit!r}): "
                          "the scale or the factors are too large to give a finite update")
    return out


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Context manager: BLAS uses one thread inside the block (restored when the last block
    open in the process closes).

    Many small products and thin QRs gain nothing from threads, and OpenBLAS's spinning
    threads make them many times slower when the cores are busy (measured 30x on two busy
    cores). Built on ``threadpoolctl``, which finds the BLAS libraries the process loaded
    (numpy's, and scipy's own, which the base-SVD and intruder paths use): a
    :class:`~threadpoolctl.ThreadpoolController` is kept for later calls, since looking through
    the loaded libraries costs ~0.24 ms a call, a tenth of a small adapter's audit, against
    ~7 us with the kept controller. It is found again when modules were imported since (a BLAS
    comes with the extension module that loads it: scipy after the first call was left with
    its threads).

    The thread count is the process's, not the thread's, so the blocks of every thread count
    as one (a shared server audits for several sessions at once): the count is set when the
    first opens and restored when the last closes, never while another thread is inside.
    When every BLAS already uses one thread (a fleet's worker process) nothing is set: set
    again in a forked process, OpenBLAS starts its thread pool anew and its new thread spins.
    """
    with _GUARD:
        controller, seen = _CONTROLLER
        if controller is None or seen != len(sys.modules):
            controller = ThreadpoolController()
            _CONTROLLER[:] = [controller, len(sys.modules)]
        if any(lib.num_threads != 1 for lib in controller.lib_controllers if lib.user_api == "blas"):
            _release(controller)
            _OPEN[1].append((controller, controller.limit(limits=1, user_api="blas")))
            _release(controller)
        _OPEN[0] += 1
    try:
        yield
    finally:
        with _GUARD:
            _OPEN[0] -= 1
            if _OPEN[0] == 0:
                while _OPEN[1]:   # the latest first: each restores what it found
                    controller, limiter = _OPEN[1].pop()
                    _release(controller)
                    limiter.restore_original_limits()
                    _release(controller)


def _release(controller: ThreadpoolController) -> None:
    """Let any thread set OpenBLAS's thread count next. threadpoolctl (3.8) ignores a count set
    by another thread than the one that set it last while that one lives; the guard's own
    changes are made one at a time under ``_GUARD`` by whichever thread opens the first block
    or closes the last, so it hands control back after each."""
    for lib in controller.lib_controllers:
        clear = getattr(lib, "clear_controlling_thread", None)
        if clear is not None:
            clear(force=True)


#: The BLAS libraries this process loaded (:func:`single_threaded_blas`), and how many modules
#: were imported when they were found.
_CONTROLLER: list = [None, 0]
#: Blocks of :func:`single_threaded_blas` open in this process (all threads), and the limits to
#: restore when the last one closes; changed under ``_GUARD``.
_OPEN: list = [0, []]
_GUARD = threading.Lock()


def factored_svd(B: object, A: object, *, scale: float = 1.0) -> FactoredSVD:
    """Thin SVD of ``scale * B @ A`` computed from the factors.

    Parameters
    ----------
    B : array_like of shape (d_out, r)
        The up-projection (PEFT ``lora_B``).
    A : array_like of shape (r, d_in)
        The down-projection (PEFT ``lora_A``).
    scale : float, default=1.0
        The adapter's multiplier ``s`` (PEFT ``lora_alpha / r``).

    Returns
    -------
    FactoredSVD
        ``(U, S, Vt)`` with ``U`` (d_out, q), ``S`` (q,), ``Vt`` (q, d_in), ``q = min(r, d_out, d_in)``.

    Raises
    ------
    ConfigError
        If a factor is not a finite 2-D real matrix or the inner dimensions differ.

    Notes
    -----
    Costs O((d_out + d_in) r^2 + r^3) instead of the O(d_out d_in r) of forming ``B @ A``
    plus the O(d_out d_in min(d_out, d_in)) of its dense SVD. Computed in float64.
    """
    B, A, scale = _check_factors(B, A, scale)
    u, s, vt = _core(B, A, scale, vectors=True)
    return FactoredSVD(u, s, vt)


def factored_svdvals(B: object, A: object, *, scale: float = 1.0) -> np.ndarray:
    """Singular values of ``scale * B @ A`` from the factors, descending.

    Parameters
    ----------
    B : array_like of shape (d_out, r)
    A : array_like of shape (r, d_in)
    scale : float, default=1.0

    Returns
    -------
    ndarray of shape (min(r, d_out, d_in),)
        float64, descending, non-negative.
    """
    B, A, scale = _check_factors(B, A, scale)
    return _core(B, A, scale, vectors=False)


def energy_rank(singular_values: object, *, threshold: float = 0.99) -> int:
    """Smallest k whose top-k singular values hold ``threshold`` of the energy ``sum sigma^2``.

    Parameters
    ----------
    singular_values : array_like of shape (q,)
        Descending, non-negative.
    threshold : float, default=0.99
        Share of energy to keep, in (0, 1].

    Returns
    -------
    int
        In [1, q]; 0 for an all-zero (or empty) spectrum.
    """
    s = check_spectrum(singular_values)
    t = check_real("threshold", threshold, minimum=0.0, maximum=1.0, strict_minimum=True)
    u = _unit(s)
    return _share_rank(u * u, t)


def _unit(s: np.ndarray) -> np.ndarray:
    """``s / s[0]`` (or ``s`` when zero): ratios need no squares near float64's limit."""
    return s / s[0] if s.size and s[0] > 0 else s


def _share_rank(weights: np.ndarray, share: float) -> int:
    """Smallest k with ``sum(weights[:k]) >= share * sum(weights)``; 0 when the sum is 0."""
    if weights.size == 0:
        return 0
    cumulative = np.cumsum(weights)
    total = cumulative[-1]
    if total <= 0:
        return 0
    k = int(np.searchsorted(cumulative, share * total, side="left")) + 1
    return min(k, weights.size)


def stable_rank(singular_values: object) -> float:
    """Stable rank ``sum sigma^2 / sigma_1^2``, in [1, q]; 0.0 for an all-zero spectrum."""
    s = check_spectrum(singular_values)
    if s.size == 0 or s[0] == 0:
        return 0.0
    return float(np.sum((s / s[0]) ** 2))


def entropy_rank(singular_values: object) -> float:
    """Entropy effective rank ``exp(-sum p_i log p_i)`` with ``p_i = sigma_i / sum sigma``.

    Returns a real number in [1, q] (Roy and Vetterli 2007); 0.0 for an all-zero spectrum.

    References
    ----------
    O. Roy and M. Vetterli, "The effective rank: a measure of effective dimensionality",
    EUSIPCO 2007.
    """
    s = _unit(check_spectrum(singular_values))
    total = float(np.sum(s))
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def kohya_rank(singular_values: object, *, rule: str, value: float) -> int:
    """Rank kept by one of kohya ``resize_lora.py``'s dynamic rules.

    Parameters
    ----------
    singular_values : array_like of shape (q,)
    rule : {"sv_ratio", "sv_fro", "sv_cumulative"}
        ``sv_ratio`` keeps ``sigma_i > sigma_1 / value``; ``sv_fro`` keeps the smallest k whose
        Frobenius share reaches ``value`` (energy ``value^2``); ``sv_cumulative`` the smallest k
        whose share of ``sum sigma`` reaches ``value``.
    value : float
        ``sv_ratio``: a ratio >= 1; the others: a share in (0, 1].

    Returns
    -------
    int
        In [1, q]; 0 for an all-zero spectrum.

    Notes
    -----
    kohya's ``resize_lora.py`` clamps this k to ``[1, min(d_out, d_in) - 1]`` and then keeps
    one direction more (k + 1, at most its ``--new_rank``;
    :func:`lorarank.resize.kohya_main_rank`); lorarank keeps the rule's own k.
    """
    s = check_spectrum(singular_values)
    rule = check_choice("rule", rule, ("sv_ratio", "sv_fro", "sv_cumulative"))
    if s.size == 0 or s[0] == 0:
        return 0
    if rule == "sv_ratio":
        ratio = check_real("value", value, minimum=1.0)
        return max(1, int(np.count_nonzero(s > s[0] / ratio)))
    share = check_real("value", value, minimum=0.0, maximum=1.0, strict_minimum=True)
    u = _unit(s)
    if rule == "sv_fro":
        return _share_rank(u * u, share * share)
    return _share_rank(u, share)


def truncation_error(singular_values: object, k: int) -> float:
    """Relative error ``sqrt(sum_{i>k} sigma^2 / sum sigma^2)`` of keeping the top ``k``.

    By Eckart-Young this is the smallest relative Frobenius error any rank-``k`` matrix can
    reach; 0.0 for ``k >= q`` or an all-zero spectrum.
    """
    s = check_spectrum(singular_values)
    k = check_int("k", k, minimum=0)
    return float(_tail_errors(s, np.array([k]))[0])


def _tail_errors(s: np.ndarray, ks: np.ndarray) -> np.ndarray:
    # Tail sums from the small end, so that a tiny tail is not lost to cancellation; ratios
    # only, so spectra near 1e160 do not overflow when squared.
    s = _unit(s)
    sq = s * s
    tails = np.concatenate([np.cumsum(sq[::-1])[::-1], [0.0]])
    total = tails[0] if s.size else 0.0
    if total <= 0:
        return np.zeros(ks.shape)
    return np.sqrt(tails[np.minimum(ks, s.size)] / total)


def eckart_young_errors(singular_values: object, ranks: object) -> np.ndarray:
    """Best relative Frobenius error of a rank-r approximation, for each r in ``ranks``.

    Parameters
    ----------
    singular_values : array_like of shape (q,)
        The target's singular values, descending.
    ranks : array_like of int, shape (n,)

    Returns
    -------
    ndarray of shape (n,)
        ``sqrt(sum_{i>r} sigma_i^2 / sum sigma^2)`` for each rank.

    References
    ----------
    C. Eckart and G. Young, "The approximation of one matrix by another of lower rank",
    Psychometrika 1 (1936).
    """
    s = check_spectrum(singular_values)
    ks = np.asarray(ranks)
    if ks.ndim != 1 or ks.dtype.kind not in "iu" or (ks.size and ks.min() < 0):
        raise ConfigError(f"`ranks` should be a 1-D list of non-negative integers, got {ranks!r}")
    return _tail_errors(s, ks.astype(np.int64))


def _gd_lambda(beta: float) -> float:
    # Gavish-Donoho (2014) eq. (11): the threshold coefficient for a known noise level.
    return math.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + math.sqrt(beta**2 + 14 * beta + 1)))


def gavish_donoho_threshold(*, shape: tuple[int, int], noise: float | None = None,
                            singular_values: object = None) -> float:
    """Optimal hard threshold for the singular values of a ``shape`` matrix with white noise.

    Parameters
    ----------
    shape : (int, int)
        ``(d_out, d_in)`` of the noisy matrix.
    noise : float, optional
        Standard deviation of the noise in each entry, when known. The threshold is then
        ``lambda*(beta) * sqrt(n) * noise`` with ``n = max(shape)``, ``beta = min/max``.
    singular_values : array_like, optional
        All ``min(shape)`` singular values of the matrix, used when ``noise`` is unknown:
        the threshold is then ``omega(beta) * median(sigma)``.

    Returns
    -------
    float

    References
    ----------
    M. Gavish and D. L. Donoho, "The optimal hard threshold for singular values is 4/sqrt(3)",
    IEEE Trans. Inf. Theory 60 (2014).
    """
    if len(shape) != 2:
        raise ConfigError(f"`shape` should be (d_out, d_in), got {shape!r}")
    m, n = sorted(check_int("shape", d, minimum=1) for d in shape)
    beta = m / n
    if noise is not None:
        sigma = check_real("noise", noise, minimum=0.0)
        return _gd_lambda(beta) * math.sqrt(n) * sigma
    if singular_values is None:
        raise ConfigError("give `noise` or the matrix's `singular_values` for the threshold")
    s = check_spectrum(singular_values)
    if s.size == 0:
        return 0.0
    # Gavish-Donoho eq. (5): the polynomial approximation of omega(beta) = lambda*(beta) / sqrt(mu_beta).
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    return float(omega * np.median(s))


def numerical_rank(singular_values: object, *, shape: tuple[int, int]) -> int:
    """Number of singular values above ``sigma_1 * max(shape) * eps`` (numpy's ``matrix_rank``)."""
    s = check_spectrum(singular_values)
    if s.size == 0:
        return 0
    tol = s[0] * max(shape) * np.finfo(np.float64).eps
    return int(np.count_nonzero(s > tol))


def noise_threshold(singular_values: object, *, shape: tuple[int, int],
                    noise: float | None = None) -> float:
    """The singular value below which a direction is noise.

    The Gavish-Donoho threshold (:func:`gavish_donoho_threshold`), raised to the round-off
    level ``sigma_1 * max(shape) * eps`` so that a noise-free matrix still has a floor.
    """
    s = check_spectrum(singular_values)
    tau = gavish_donoho_threshold(shape=shape, noise=noise, singular_values=s)
    if s.size == 0:
        return tau
    return max(tau, float(s[0]) * max(shape) * np.finfo(np.float64).eps)


def gavish_donoho_rank(singular_values: object, *, shape: tuple[int, int],
                       noise: float | None = None) -> int:
    """Number of singular values above :func:`noise_threshold`.

    With ``noise`` known this counts the directions that rise above a white-noise floor of that
    level; without it, ``singular_values`` must be the full spectrum of the matrix.
    """
    s = check_spectrum(singular_values)
    if s.size == 0:
        return 0
    return int(np.count_nonzero(s > noise_threshold(s, shape=shape, noise=noise)))


def recommend_rank(singular_values: object, *, rule: str = "energy", value: float = 0.99) -> int:
    """The rank a rule keeps, for resizing an adapter.

    Parameters
    ----------
    singular_values : array_like of shape (q,)
    rule : {"energy", "sv_ratio", "sv_fro", "sv_cumulative", "entropy"}, default="energy"
        See :data:`RANK_RULES`.
    value : float, default=0.99
        The rule's parameter (ignored by ``"entropy"``).

    Returns
    -------
    int
        In [1, q] for a non-zero spectrum, 0 for an all-zero one.
    """
    rule = check_choice("rule", rule, tuple(RANK_RULES))
    if rule == "energy":
        return energy_rank(singular_values, threshold=value)
    if rule == "entropy":
        s = check_spectrum(singular_values)
        erank = entropy_rank(s)
        if erank == 0.0:
            return 0
        return int(min(s.size, max(1, math.ceil(erank - 1e-9))))
    return kohya_rank(singular_values, rule=rule, value=value)


# ------------------------------------------------------------------------ family spectra
def khatri_rao_rows(X: object, Y: object) -> np.ndarray:
    """Row-wise Kronecker (face-splitting) product: row i is ``kron(X[i], Y[i])``.

    Parameters
    ----------
    X : array_like of shape (n, p)
    Y : array_like of shape (n, q)

    Returns
    -------
    ndarray of shape (n, p * q)
        ``out[i, a * q + b] = X[i, a] * Y[i, b]``, float64.
    """
    X = check_matrix("X", X).astype(np.float64, copy=False)
    Y = check_matrix("Y", Y).astype(np.float64, copy=False)
    if X.shape[0] != Y.shape[0]:
        raise ConfigError(f"row-wise Khatri-Rao needs the same number of rows, got {X.shape} and {Y.shape}")
    return (X[:, :, None] * Y[:, None, :]).reshape(X.shape[0], -1)


def hadamard_factors(B1: object, A1: object, B2: object, A2: object) -> tuple[np.ndarray, np.ndarray]:
    """An exact factorisation ``(B, A)`` of the Hadamard product ``(B1 @ A1) * (B2 @ A2)``.

    This is LoHa's update (``hada_w1_a @ hada_w1_b`` times ``hada_w2_a @ hada_w2_b``, element
    by element): ``(B1 A1)_ij (B2 A2)_ij = sum_{a,b} B1_ia B2_ib A1_aj A2_bj``, so with the
    row-wise Khatri-Rao products ``B = B1 (*) B2`` and ``A^T = A1^T (*) A2^T`` the update is
    ``B @ A`` with inner dimension ``r1 * r2``.

    Parameters
    ----------
    B1 : array_like of shape (d_out, r1)
    A1 : array_like of shape (r1, d_in)
    B2 : array_like of shape (d_out, r2)
    A2 : array_like of shape (r2, d_in)

    Returns
    -------
    B : ndarray of shape (d_out, r1 * r2)
    A : ndarray of shape (r1 * r2, d_in)
    """
    B1, A1 = check_matrix("B1", B1), check_matrix("A1", A1)
    B2, A2 = check_matrix("B2", B2), check_matrix("A2", A2)
    if B1.shape[1] != A1.shape[0] or B2.shape[1] != A2.shape[0]:
        raise ConfigError(f"factors do not chain: {B1.shape} @ {A1.shape} and {B2.shape} @ {A2.shape}")
    if (B1.shape[0], A1.shape[1]) != (B2.shape[0], A2.shape[1]):
        raise ConfigError(f"Hadamard halves differ in shape: {(B1.shape[0], A1.shape[1])} and "
                          f"{(B2.shape[0], A2.shape[1])}")
    return khatri_rao_rows(B1, B2), khatri_rao_rows(A1.T, A2.T).T


def _kron_parts(left: object, B: object, A: object, scale: object):
    left = check_matrix("left", left).astype(np.float64, copy=False)
    B, A, scale = _check_factors(B, A, scale)
    return left, B, A, scale


def kron_svdvals(left: object, B: object, A: object, *, scale: float = 1.0) -> np.ndarray:
    """Singular values of ``scale * kron(left, B @ A)`` (LoKr), descending.

    The singular values of a Kronecker product are all products ``sigma_i(left) *
    sigma_j(B @ A)``; ``left`` is small and dense, ``B @ A`` is never formed.

    Parameters
    ----------
    left : array_like of shape (o1, i1)
    B : array_like of shape (d_out2, q)
    A : array_like of shape (q, d_in2)
    scale : float, default=1.0

    Returns
    -------
    ndarray of shape (min(o1, i1) * min(q, d_out2, d_in2),)
        float64, descending.
    """
    left, B, A, scale = _kron_parts(left, B, A, scale)
    s_left = svdvals_unchecked(left, np.eye(left.shape[1]), 1.0)
    s_right = svdvals_unchecked(B, A, scale)
    return kron_values(s_left, s_right)


def kron_values(s_left: np.ndarray, s_right: np.ndarray) -> np.ndarray:
    """All products ``s_left[i] * s_right[j]``, descending: the singular values of a Kronecker
    product from its halves'. ConfigError when one overflows float64."""
    out = np.outer(s_left, s_right).ravel()
    if not np.all(np.isfinite(out)):
        raise ConfigError("a singular value of the Kronecker product overflows float64")
    return -np.sort(-out)


def kron_svd(left: object, B: object, A: object, *, scale: float = 1.0,
             k: int | None = None) -> FactoredSVD:
    """Top-``k`` thin SVD of ``scale * kron(left, B @ A)`` from the halves' SVDs.

    ``kron(U1 S1 V1^T, U2 S2 V2^T) = kron(U1, U2) kron(S1, S2) kron(V1, V2)^T``; the top ``k``
    products are picked and only their ``k`` singular-vector pairs are formed.

    Parameters
    ----------
    left : array_like of shape (o1, i1)
    B : array_like of shape (d_out2, q)
    A : array_like of shape (q, d_in2)
    scale : float, default=1.0
    k : int, optional
        How many leading triplets (default: all ``min(o1, i1) * min(q, d_out2, d_in2)``).

    Returns
    -------
    FactoredSVD
        ``U`` (o1 * d_out2, k), ``S`` (k,), ``Vt`` (k, i1 * d_in2).
    """
    left, B, A, scale = _kron_parts(left, B, A, scale)
    u1, s1, vt1 = np.linalg.svd(left, full_matrices=False)
    u2, s2, vt2 = _core(B, A, scale, vectors=True)
    values = np.outer(s1, s2).ravel()
    order = np.argsort(-values, kind="stable")
    if k is not None:
        order = order[: check_int("k", k, minimum=0)]
    i, j = np.divmod(order, s2.size)
    U = (u1[:, i][:, None, :] * u2[:, j][None, :, :]).reshape(-1, order.size)
    Vt = (vt1[i][:, :, None] * vt2[j][:, None, :]).reshape(order.size, -1)
    return FactoredSVD(U, kron_values(values[order], np.ones(1)) if order.size else values[:0], Vt)


def operator_svd(matmat, rmatmat, shape: tuple[int, int], *, k: int, method: str = "auto",
                 vectors: bool = False):
    """Top-``k`` singular values (and vectors) of a matrix known only by its products.

    For updates that have no small exact factorisation once the base weight is involved
    (DoRA's ``merged - W0``), the matrix is reached through ``matmat(X) = M @ X`` and
    ``rmatmat(Y) = M.T @ Y`` only.

    Parameters
    ----------
    matmat : callable
        ``X`` of shape (d_in, p) -> ``M @ X`` of shape (d_out, p).
    rmatmat : callable
        ``Y`` of shape (d_out, p) -> ``M.T @ Y`` of shape (d_in, p).
    shape : (int, int)
        ``(d_out, d_in)``.
    k : int
        How many leading singular values (clipped to ``min(shape)``).
    method : {"auto", "iterative", "dense"}, default="auto"
        ``iterative``: ARPACK (``scipy.sparse.linalg.svds`` on a ``LinearOperator``, tolerance
        at machine precision), cost about a few hundred products; ``dense``: ``min(shape)``
        products with the identity, then LAPACK's SVD (exact, for small matrices);
        ``auto``: dense when ``min(shape) <= max(2 k, 256)`` (then no cheaper), else iterative.
    vectors : bool, default=False
        Also return the singular vectors.

    Returns
    -------
    ndarray of shape (k,), or FactoredSVD with ``U`` (d_out, k), ``S`` (k,), ``Vt`` (k, d_in)
        Descending, float64.

    Notes
    -----
    ARPACK needs ``k < min(shape)``: asking for all singular values uses the dense method.
    scipy is imported here only (the rest of the engine needs numpy alone).
    """
    if len(shape) != 2:
        raise ConfigError(f"`shape` should be (d_out, d_in), got {shape!r}")
    m = check_int("shape[0]", shape[0], minimum=1)
    n = check_int("shape[1]", shape[1], minimum=1)
    k = min(check_int("k", k, minimum=1), m, n)
    method = check_choice("method", method, ("auto", "iterative", "dense"))
    if method == "auto":
        method = "dense" if min(m, n) <= max(2 * k, 256) else "iterative"
    if method == "iterative" and k >= min(m, n):
        method = "dense"
    if method == "dense":
        # Materialise through the smaller side: min(m, n) products with the identity.
        if n <= m:
            M = np.asarray(matmat(np.eye(n)), dtype=np.float64)
        else:
            M = np.asarray(rmatmat(np.eye(m)), dtype=np.float64).T
        if not np.all(np.isfinite(M)):
            raise ConfigError("the operator's matrix has NaN or infinite entries")
        if not vectors:
            return np.linalg.svd(M, compute_uv=False)[:k]
        u, s, vt = np.linalg.svd(M, full_matrices=False)
        return FactoredSVD(u[:, :k], s[:k], vt[:k])
    from scipy.sparse.linalg import LinearOperator, svds  # lazy: only this path needs scipy

    op = LinearOperator(
        (m, n), dtype=np.float64,
        matvec=lambda x: np.asarray(matmat(np.asarray(x, dtype=np.float64).reshape(n, 1))).ravel(),
        rmatvec=lambda y: np.asarray(rmatmat(np.asarray(y, dtype=np.float64).reshape(m, 1))).ravel(),
        matmat=lambda X: np.asarray(matmat(np.asarray(X, dtype=np.float64))),
        rmatmat=lambda Y: np.asarray(rmatmat(np.asarray(Y, dtype=np.float64))),
    )
    # A fixed start vector makes the result reproducible run to run.
    v0 = np.random.default_rng(0).standard_normal(min(m, n))
    out = svds(op, k=k, tol=0, v0=v0, return_singular_vectors=vectors, solver="arpack")
    if not vectors:
        s = np.sort(np.abs(out))[::-1]
        if not np.all(np.isfinite(s)):
            raise ConfigError("the operator's singular values are not finite")
        return s
    u, s, vt = out
    order = np.argsort(-s)
    return FactoredSVD(u[:, order], s[order], vt[order])


def operator_svdvals(matmat, rmatmat, shape: tuple[int, int], *, k: int,
                     method: str = "auto") -> np.ndarray:
    """Top-``k`` singular values of a matrix given by products; see :func:`operator_svd`."""
    return operator_svd(matmat, rmatmat, shape, k=k, method=method, vectors=False)
