"""Intruder dimensions and the amplification factor: what an update does to its base weight.

Definitions
-----------
*Intruder dimensions* (Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of
Equivalence", arXiv 2410.21228), exactly as PEFT's ``reduce_intruder_dimension``
(``peft/tuners/lora/intruders.py``) computes them:

1. ``U0`` = the left singular vectors of the base weight ``W0`` (m x n, as the layer stores
   it; ``full_matrices=False``: ``q = min(m, n)`` of them), ``U`` those of ``W = W0 + dW``;
2. for each of ``U``'s first ``top_k`` columns, ``max_cos`` = the largest ``|cos|`` with any
   column of ``U0`` (``(U^T U0).abs().max(dim=1)``);
3. an intruder is a column whose ``max_cos`` is below ``epsilon`` (default k = 10,
   epsilon = 0.5): a new high-ranking direction of the fine-tuned weight unlike any of the
   base's.

Reported with them: their singular values, their ``share`` of ``||W0 + dW||_F^2`` (the sum of
their sigma^2 over it), and ``share_of_update`` = ``||U_I^T dW||_F^2 / ||dW||_F^2`` (how much of
the update lies along them).

The *amplification factor* (Hu et al., "LoRA", 2021, section 7.3) is
``||dW||_F / ||U_r^T W0 V_r||_F`` with ``U_r``, ``V_r`` the left and right singular vectors of
``dW`` (its ``r`` nonzero directions): how strongly the update amplifies directions that
``W0`` barely uses (about 1 when it only reweights ``W0``'s strong directions, large when it
introduces weak ones).

How it is computed
------------------
:func:`intruders_dense` is the definition itself (dense SVDs; the oracle, and the path for a
full fine-tune). :func:`intruders_lowrank` gives the same numbers for ``W = W0 + L R`` (L m x r,
R r x n) from the cached SVD of ``W0`` (:mod:`lorarank.base_svd`) without any dense SVD:

1. ``L`` is split into its coordinates ``m = U0^T L`` and an orthonormal basis ``P`` of what is
   left outside ``U0``'s span (Brand, "Fast low-rank modifications of the thin singular value
   decomposition", 2006, step 1); in the basis ``E = [U0 P]``, ``L = E M``;
2. with ``y = U0^T W0 R^T`` (``W0 R^T`` lies in ``U0``'s span), ``E^T W W^T E`` is
   ``G = diag(S0^2, 0) + [y;0] M^T + M [y;0]^T + M (R R^T) M^T``: a diagonal plus rank ``2r``;
3. the top-``k`` eigenpairs of ``G`` (Lanczos, ``scipy.sparse.linalg.eigsh``, each product
   ``O((q + r) r)``; a dense ``eigh`` when ``G`` is small) are ``W``'s top singular values
   squared and its left singular vectors in the basis ``E``;
4. so a vector's cosines with the columns of ``U0`` are its first ``q`` coordinates: no
   ``m x q`` product per direction.

Where Brand forms and decomposes the (q + r) x (q + r) core densely, which for a full-rank
``W0`` costs as much as a fresh SVD, step 3 only needs products with it. The cost per module
is a few passes over ``W0`` and ``U0`` with ``r`` columns: ``O(m n r)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ._validate import check_int, check_real
from .base_svd import BaseSVD
from .errors import ConfigError
from .spectrum import single_threaded_blas

__all__ = [
    "DEFAULT_TOP_K",
    "DEFAULT_EPSILON",
    "DEFAULT_LAMBDA",
    "DENSE_CORE",
    "Intruders",
    "LowRankAnalysis",
    "intruder_cosines",
    "intruders_dense",
    "intruders_lowrank",
    "mitigation_factors",
    "update_factors",
    "module_against_base",
]

#: PEFT's defaults: ``top_k``, ``threshold_epsilon`` and ``mitigation_lambda`` of
#: ``reduce_intruder_dimension``.
DEFAULT_TOP_K = 10
DEFAULT_EPSILON = 0.5
DEFAULT_LAMBDA = 0.75

#: Size of the core ``G`` at or below which its eigenproblem is solved densely.
DENSE_CORE = 384

_BLOCK_BYTES = 32 * 2**20


# ------------------------------------------------------------------------------------ result
@dataclass(frozen=True)
class Intruders:
    """Intruder dimensions of one weight against its base (PEFT's definition).

    Attributes
    ----------
    top_k : int
        How many top directions of ``W0 + dW`` were tested: ``min(top_k asked, m, n)``.
    epsilon : float
        The threshold on ``max_cos``.
    indices : tuple of int
        Positions (0-based, among the top ``top_k``) of the intruders.
    max_cos : ndarray of shape (top_k,)
        Largest ``|cos|`` of each top direction with any left singular vector of ``W0``.
    nearest : ndarray of shape (top_k,)
        Which left singular vector of ``W0`` (0-based, by decreasing singular value) gives it.
    singular_values : ndarray of shape (top_k,)
        The top singular values of ``W0 + dW``.
    share : float
        The intruders' part of ``||W0 + dW||_F^2``: ``sum_{i in I} sigma_i^2 / ||W0 + dW||_F^2``.
    share_of_update : float or None
        ``||U_I^T dW||_F^2 / ||dW||_F^2``: the update's energy along the intruders (None when
        the update is zero or unknown).
    """

    top_k: int
    epsilon: float
    indices: tuple[int, ...]
    max_cos: np.ndarray
    nearest: np.ndarray
    singular_values: np.ndarray
    share: float
    share_of_update: float | None = None

    @property
    def count(self) -> int:
        """Number of intruders."""
        return len(self.indices)

    def to_dict(self) -> dict:
        """PRODUCT.md's ``intruders`` object plus the intruders' singular values and nearest
        base directions (JSON-friendly)."""
        return {
            "top_k": self.top_k,
            "epsilon": self.epsilon,
            "count": self.count,
            "indices": [int(i) for i in self.indices],
            "max_cos": [float(c) for c in self.max_cos],
            "share": float(self.share),
            "share_of_update": None if self.share_of_update is None else float(self.share_of_update),
            "singular_values": [float(s) for s in self.singular_values],
            "nearest": [int(j) for j in self.nearest],
        }


@dataclass(frozen=True)
class LowRankAnalysis:
    """What :func:`intruders_lowrank` finds for ``W = W0 + L R``.

    Attributes
    ----------
    intruders : Intruders
    amplification : float or None
        ``||dW||_F / ||U_r^T W0 V_r||_F`` (None for a zero update, or when ``W0`` is zero on
        the update's directions).
    update_norm : float
        ``||L R||_F``.
    merged_norm : float
        ``||W0 + L R||_F``.
    vectors : tuple of ndarray or None
        With ``vectors=True`` and at least one intruder: ``(U_I (m, c), S_I (c,), V_I (n, c))``,
        the intruders' singular triplets of ``W`` (what mitigation removes a share of).
    cosines : ndarray of shape (top_k, c) or None
        With ``cos_columns=c``: ``|cos|`` of each top direction of ``W`` with ``W0``'s first
        ``c`` left singular vectors (the picture of Shuttleworth et al.'s figures).
    """

    intruders: Intruders
    amplification: float | None
    update_norm: float
    merged_norm: float
    vectors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    cosines: np.ndarray | None = None


# ---------------------------------------------------------------------------- chunked algebra
def _one_blas_thread(func):
    """Run ``func`` with one BLAS thread: many mid-sized products gain little from threads
    and lose 10-100x to spinning threads on busy cores (see ``single_threaded_blas``)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return func(*args, **kwargs)

    return wrapper


def _rows(cols: int) -> int:
    return max(1, _BLOCK_BYTES // (8 * max(1, cols)))


def _tdot(M: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``M^T @ X`` in float64, ``M`` (m, q) of any float dtype read in row blocks (a float32 or
    memory-mapped ``M`` is never copied whole to float64)."""
    if M.dtype == np.float64 and isinstance(M, np.ndarray) and type(M) is np.ndarray:
        return M.T @ X
    out = np.zeros((M.shape[1], X.shape[1]))
    step = _rows(M.shape[1])
    for i in range(0, M.shape[0], step):
        out += np.asarray(M[i:i + step], dtype=np.float64).T @ X[i:i + step]
    return out


def _dot(M: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``M @ Y`` in float64, ``M`` (m, q) read in row blocks."""
    if M.dtype == np.float64 and type(M) is np.ndarray:
        return M @ Y
    out = np.empty((M.shape[0], Y.shape[1]))
    step = _rows(M.shape[1])
    for i in range(0, M.shape[0], step):
        out[i:i + step] = np.asarray(M[i:i + step], dtype=np.float64) @ Y
    return out


def _frob(s: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.asarray(s, dtype=np.float64) ** 2)))


# ------------------------------------------------------------------------------- the definition
def _check_options(top_k: int, epsilon: float) -> tuple[int, float]:
    return (check_int("top_k", top_k, minimum=1),
            check_real("epsilon", epsilon, minimum=0.0, maximum=1.0))


def intruder_cosines(base_left: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``|cos|`` of each column of ``U`` with any column of ``base_left``.

    Parameters
    ----------
    base_left : ndarray of shape (m, q)
        Orthonormal columns (``W0``'s left singular vectors).
    U : ndarray of shape (m, k)
        Unit columns (the top left singular vectors of ``W0 + dW``).

    Returns
    -------
    max_cos : ndarray of shape (k,)
    nearest : ndarray of shape (k,)
        Index of the column of ``base_left`` reaching it.
    """
    if base_left.ndim != 2 or U.ndim != 2 or base_left.shape[0] != U.shape[0]:
        raise ConfigError(f"`base_left` {base_left.shape} and `U` {U.shape} should both have m rows")
    cos = np.abs(_tdot(base_left, np.asarray(U, dtype=np.float64)))  # (q, k)
    return cos.max(axis=0), cos.argmax(axis=0)


def _result(max_cos, nearest, singular_values, *, top_k: int, epsilon: float, total_sq: float,
            share_of_update: float | None) -> Intruders:
    k = min(top_k, max_cos.size)
    max_cos, nearest, sv = max_cos[:k], nearest[:k], singular_values[:k]
    indices = tuple(int(i) for i in np.flatnonzero(max_cos < epsilon))  # PEFT: cos_sim[:top_k] < eps
    share = float(np.sum(sv[list(indices)] ** 2) / total_sq) if indices and total_sq > 0 else 0.0
    return Intruders(top_k=k, epsilon=float(epsilon), indices=indices,
                     max_cos=np.asarray(max_cos, dtype=np.float64), nearest=np.asarray(nearest, dtype=np.int64),
                     singular_values=np.asarray(sv, dtype=np.float64), share=min(share, 1.0),
                     share_of_update=share_of_update)


@_one_blas_thread
def intruders_dense(base: BaseSVD | np.ndarray, W: np.ndarray | None = None, *, W0: np.ndarray | None = None,
                    svd: tuple[np.ndarray, np.ndarray] | None = None, top_k: int = DEFAULT_TOP_K,
                    epsilon: float = DEFAULT_EPSILON) -> Intruders:
    """Intruder dimensions by the definition: dense SVDs (the oracle; also for full fine-tunes).

    Parameters
    ----------
    base : BaseSVD or ndarray of shape (m, n)
        The base weight ``W0`` itself (its SVD is computed here, float64), or its cached SVD
        (:func:`lorarank.base_svd.base_svd`, :class:`~lorarank.base_svd.BaseSVDCache`).
    W : ndarray of shape (m, n), optional
        The fine-tuned (merged) weight ``W0 + dW``, as the layer stores it.
    W0 : ndarray of shape (m, n), optional
        The base weight when ``base`` is its SVD: needed for ``share_of_update`` only.
    svd : (U, S), optional
        The SVD of ``W`` instead of ``W``: ``U`` (m, >= top_k) its top left singular vectors,
        ``S`` all ``min(m, n)`` singular values (their squares sum to ``||W||_F^2``).
    top_k : int, default=10
    epsilon : float, default=0.5

    Returns
    -------
    Intruders
    """
    top_k, epsilon = _check_options(top_k, epsilon)
    if isinstance(base, BaseSVD):
        base_left = base.U
    else:
        W0 = np.asarray(base, dtype=np.float64)
        if W0.ndim != 2:
            raise ConfigError(f"`base` should be a 2-D weight or a BaseSVD, got shape {W0.shape}")
        base_left = np.linalg.svd(W0, full_matrices=False)[0]
    if svd is None:
        if W is None:
            raise ConfigError("give the fine-tuned weight `W` or its SVD `svd`")
        Wd = np.asarray(W, dtype=np.float64)
        if Wd.shape[0] != base_left.shape[0]:
            raise ConfigError(f"`W` has shape {Wd.shape}, the base has {base_left.shape[0]} rows")
        U, S, _ = np.linalg.svd(Wd, full_matrices=False)
    else:
        U, S = np.asarray(svd[0], dtype=np.float64), np.asarray(svd[1], dtype=np.float64)
    k = min(top_k, U.shape[1])
    max_cos, nearest = intruder_cosines(base_left, U[:, :k])
    share_upd = None
    if W0 is not None and W is not None:
        dW = np.asarray(W, dtype=np.float64) - np.asarray(W0, dtype=np.float64)
        total = float(np.sum(dW * dW))
        idx = np.flatnonzero(max_cos[:k] < epsilon)
        if total > 0:
            share_upd = float(np.sum((U[:, idx].T @ dW) ** 2) / total)
    return _result(max_cos, nearest, S, top_k=top_k, epsilon=epsilon, total_sq=float(np.sum(S ** 2)),
                   share_of_update=share_upd)


# ------------------------------------------------------------------------------ the fast path
def _top_eigh(d: np.ndarray, X: np.ndarray, Z: np.ndarray, k: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs of ``G = diag(d) + X Z X^T`` (symmetric PSD), descending."""
    n = d.size
    if method == "auto":
        method = "dense" if n <= DENSE_CORE or k >= n // 2 else "iterative"
    if method == "iterative" and k >= n - 1:
        method = "dense"
    if method == "dense":
        G = X @ Z @ X.T
        G[np.diag_indices(n)] += d
        G = 0.5 * (G + G.T)
        w, V = np.linalg.eigh(G)
        return w[::-1][:k], V[:, ::-1][:, :k]
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh  # lazy

    def matmat(Y):
        Y = np.asarray(Y, dtype=np.float64)
        if Y.ndim == 1:
            return d * Y + X @ (Z @ (X.T @ Y))
        return d[:, None] * Y + X @ (Z @ (X.T @ Y))

    op = LinearOperator((n, n), dtype=np.float64, matvec=matmat, matmat=matmat, rmatvec=matmat)
    v0 = np.random.default_rng(0).standard_normal(n)  # fixed start: reproducible results
    ncv = min(n, max(2 * k + 1, 40))
    try:
        w, V = eigsh(op, k=k, which="LA", tol=0, v0=v0, ncv=ncv, maxiter=max(1000, 20 * n))
    except ArpackNoConvergence:
        if n > 8192:
            raise ConfigError(f"the top-{k} directions of a {n}-dimensional core did not converge") from None
        return _top_eigh(d, X, Z, k, "dense")
    order = np.argsort(-w)
    return w[order], V[:, order]


@_one_blas_thread
def intruders_lowrank(base: BaseSVD, W0: np.ndarray, L: np.ndarray, R: np.ndarray, *,
                      top_k: int = DEFAULT_TOP_K, epsilon: float = DEFAULT_EPSILON,
                      method: str = "auto", vectors: bool = False, cos_columns: int = 0) -> LowRankAnalysis:
    """Intruders and amplification of ``W = W0 + L @ R`` from ``W0``'s cached SVD.

    Parameters
    ----------
    base : BaseSVD
        SVD of ``W0`` (``U`` of shape (m, min(m, n))).
    W0 : ndarray of shape (m, n)
        The base weight as stored (any float dtype; read in row blocks).
    L : ndarray of shape (m, r)
    R : ndarray of shape (r, n)
        The update's factors: ``dW = L @ R`` (for a LoRA module ``L = s * B``, ``R = A``).
    top_k : int, default=10
    epsilon : float, default=0.5
    method : {"auto", "dense", "iterative"}, default="auto"
        How the (q + r)-dimensional core's top eigenpairs are found: ``dense`` (``eigh``),
        ``iterative`` (Lanczos on products), ``auto`` (dense up to :data:`DENSE_CORE`).
    vectors : bool, default=False
        Also return the intruders' singular triplets (for mitigation).
    cos_columns : int, default=0
        Also return the ``|cos|`` of the top directions with ``W0``'s first ``cos_columns``
        left singular vectors.

    Returns
    -------
    LowRankAnalysis

    Notes
    -----
    The same numbers as :func:`intruders_dense` on ``W0 + L R`` (to the precision of
    ``base``: about 1e-7 with float32 singular vectors, about 1e-12 with float64); cost
    ``O(m n r)`` plus the core's eigenproblem, never a dense SVD. See the module docstring.
    """
    top_k, epsilon = _check_options(top_k, epsilon)
    if method not in ("auto", "dense", "iterative"):
        raise ConfigError(f"`method` should be one of auto, dense, iterative; got {method!r}")
    W0 = np.asarray(W0) if not isinstance(W0, np.ndarray) else W0
    L = np.asarray(L, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    m, n = W0.shape
    q = min(m, n)
    if base.U.shape != (m, q) or base.S.shape != (q,):
        raise ConfigError(f"the base SVD has U {base.U.shape} and S {base.S.shape}; a {m} x {n} weight needs "
                          f"({m}, {q}) and ({q},)")
    if L.ndim != 2 or R.ndim != 2 or L.shape[0] != m or R.shape[1] != n or L.shape[1] != R.shape[0]:
        raise ConfigError(f"factors L {L.shape} and R {R.shape} do not make a {m} x {n} update")
    r = L.shape[1]
    U0, S0 = base.U, base.S
    # 1. The update's own thin SVD from its factors (norm, amplification).
    ql, rl = np.linalg.qr(L)
    qr_, rr = np.linalg.qr(R.T)
    uc, sc, vct = np.linalg.svd(rl @ rr.T)
    update_norm = _frob(sc)
    # 2. One pass over W0: Z = W0 Q_R, so W0 R^T = Z R_R^T and W0 V_r = Z V_c.
    Z = _dot(W0, qr_)
    z = Z @ rr
    # 3. Coordinates in U0 of L and of W0 R^T (one pass over U0).
    coords = _tdot(U0, np.hstack([L, z]))
    mco, y = coords[:, :r], coords[:, r:]
    # 4. What L has outside span(U0) (tall W0 only), re-orthogonalised once more.
    if m > q and r:
        rest = L - _dot(U0, mco)
        up, sp, _ = np.linalg.svd(rest, full_matrices=False)
        lnorm = float(np.linalg.norm(L, 2)) if L.size else 0.0
        tol = 64 * np.finfo(U0.dtype if U0.dtype in (np.float32, np.float64) else np.float64).eps * max(lnorm, 1e-300)
        P = up[:, sp > tol]
        if P.shape[1]:
            P = P - _dot(U0, _tdot(U0, P))
            P = np.linalg.qr(P)[0]
        rc = P.T @ L
    else:
        P = np.zeros((m, 0))
        rc = np.zeros((0, r))
    t = P.shape[1]
    M = np.vstack([mco, rc])                      # L = [U0 P] M
    Yp = np.vstack([y, np.zeros((t, r))])         # [U0 P]^T W0 R^T
    C = R @ R.T
    d = np.concatenate([S0 ** 2, np.zeros(t)])
    merged_sq = float(np.sum(S0 ** 2) + 2 * np.sum(mco * y) + np.sum((M.T @ M) * C))
    merged_sq = max(merged_sq, 0.0)
    # 5. Top-k eigenpairs of G = diag(d) + [Yp M] [[0 I] [I C]] [Yp M]^T.
    k = min(top_k, q)
    X = np.hstack([Yp, M])
    Zc = np.block([[np.zeros((r, r)), np.eye(r)], [np.eye(r), C]])
    lam, Yk = _top_eigh(d, X, Zc, k, method)
    sig = np.sqrt(np.maximum(lam, 0.0))
    # 6. Cosines with U0's columns are the first q coordinates.
    absq = np.abs(Yk[:q])
    max_cos, nearest = absq.max(axis=0), absq.argmax(axis=0)
    idx = np.flatnonzero(max_cos < epsilon)
    share_upd = None
    if update_norm > 0:
        T = Yk[:, idx].T @ M                     # U_I^T L
        share_upd = float(min(np.sum((T @ C) * T) / update_norm ** 2, 1.0))
    result = _result(max_cos, nearest, sig, top_k=top_k, epsilon=epsilon, total_sq=merged_sq,
                     share_of_update=share_upd)
    # 7. Amplification: ||dW|| / ||U_r^T W0 V_r||, U_r = Q_L U_c, V_r = Q_R V_c (nonzero directions).
    amp = None
    if update_norm > 0:
        keep = sc > sc[0] * max(m, n) * np.finfo(np.float64).eps
        core = uc[:, keep].T @ (ql.T @ Z) @ vct[keep].T
        denom = float(np.linalg.norm(core))
        amp = update_norm / denom if denom > 0 else None
    trip = None
    if vectors and idx.size:
        Yi = Yk[:, idx]
        u = _dot(U0, Yi[:q]) + P @ Yi[q:]
        v = (_tdot(W0, u) + R.T @ (M.T @ Yi)) / sig[idx]
        trip = (u, sig[idx], v)
    cols = min(check_int("cos_columns", cos_columns, minimum=0), q)
    return LowRankAnalysis(intruders=result, amplification=amp, update_norm=update_norm,
                           merged_norm=float(np.sqrt(merged_sq)), vectors=trip,
                           cosines=absq[:cols].T.copy() if cols else None)


def mitigation_factors(L: np.ndarray, R: np.ndarray, vectors: tuple[np.ndarray, np.ndarray, np.ndarray], *,
                       mitigation_lambda: float = DEFAULT_LAMBDA) -> tuple[np.ndarray, np.ndarray]:
    """Factors of the mitigated update ``L R + (lambda - 1) U_I S_I V_I^T`` (PEFT's formula).

    ``reduce_intruder_dimension`` replaces ``W0 + dW`` by ``W0 + dW + (lambda - 1) B_I A_I``
    with ``B_I A_I = U_I S_I V_I^T`` the intruders' part of ``W0 + dW``; ``lambda = 1`` changes
    nothing, ``lambda = 0`` removes them.

    Returns
    -------
    (L2, R2) : ndarrays of shape (m, r + c) and (r + c, n)
    """
    lam = check_real("mitigation_lambda", mitigation_lambda)
    u, s, v = vectors
    return np.hstack([L, (lam - 1.0) * (u * s)]), np.vstack([R, v.T])


# ------------------------------------------------------------------------------ adapter modules
def update_factors(module) -> tuple[np.ndarray, np.ndarray]:
    """``(L, R)`` with ``L @ R`` the module's update **as its base layer stores it**.

    PEFT computes intruders on ``get_base_layer().weight`` and ``get_delta_weight()``, both in
    the layer's own orientation: ``(d_out, d_in)`` for ``nn.Linear``, ``(d_in, d_out)`` for a
    ``fan_in_fan_out`` (GPT-2 ``Conv1D``) layer and for an embedding (``module.transposed``).

    Returns
    -------
    L : ndarray of shape (m, q)
    R : ndarray of shape (q, n)
        float64; ``(m, n)`` is the stored weight's shape.

    Raises
    ------
    UnsupportedAdapterError
        Conv kernels, DoRA (its merged weight rescales the rows of ``W0``: not a low-rank update
        of it) and LoKr modules whose Kronecker factors are wider than the weight.
    """
    from .errors import UnsupportedAdapterError

    if module.kernel is not None:
        raise UnsupportedAdapterError("conv layers: PEFT's function decomposes a 4-D conv weight per kernel "
                                      "position, which is not this definition")
    if getattr(module, "magnitude", None) is not None:
        raise UnsupportedAdapterError("DoRA: the merged weight rescales the rows of W0, so W0 + dW is not a "
                                      "low-rank update of W0 (PEFT's function reads only s*B@A there)")
    B, A = module.factors(np.float64)
    L, R = float(module.scale) * B, A
    left = getattr(module, "kron_left", None)
    if left is not None:
        left = np.asarray(left, dtype=np.float64)
        o1, i1 = left.shape
        if i1 * A.shape[0] > min(module.shape):
            raise UnsupportedAdapterError("LoKr modules whose Kronecker factors are wider than the weight")
        L, R = np.kron(left, L), np.kron(np.eye(i1), A)
    if module.transposed:
        L, R = R.T, L.T
    return L, R


def module_against_base(module, base, *, cache, top_k: int = DEFAULT_TOP_K, epsilon: float = DEFAULT_EPSILON,
                        vectors: bool = False, method: str = "auto", cos_columns: int = 0) -> LowRankAnalysis:
    """:func:`intruders_lowrank` of an adapter module on its base weight, the base's SVD from
    ``cache`` (:class:`~lorarank.base_svd.BaseSVDCache`).

    Parameters
    ----------
    module : LoraModule
    base : lorarank.base.BaseWeights
    cache : BaseSVDCache

    Raises
    ------
    UnsupportedAdapterError
        See :func:`update_factors`.
    AdapterError
        The base has no (or a misshapen) weight for the module.
    """
    L, R = update_factors(module)
    W0 = base.stored(module.name, tuple(int(d) for d in module.shape), transposed=bool(module.transposed))
    svd = cache.get(W0)
    return intruders_lowrank(svd, W0, L, R, top_k=top_k, epsilon=epsilon, vectors=vectors, method=method,
                             cos_columns=cos_columns)
