"""Compare two adapters on their shared modules: do they learn the same directions?

Subspace similarity (Hu et al. 2022, section 7.2): with ``U_1`` (d_in, r_1) and ``U_2``
(d_in, r_2) the right singular vectors of the two ``A`` factors (orthonormal bases of their row
spaces, ordered by singular value),

    phi(i, j) = ||U_1[:, :i]^T U_2[:, :j]||_F^2 / min(i, j),   in [0, 1],

is 1 when the top-i and top-j directions nest and 0 when they are orthogonal. Two random
subspaces of R^d_in give ``E[phi(i, j)] = max(i, j) / d_in``, the chance level reported next to
it. Principal angles between the full row spaces are ``arccos`` of the singular values of
``U_1^T U_2``.

References
----------
E. J. Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, section 7.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ._validate import check_int, check_matrix
from .adapters import Adapter
from .spectrum import single_threaded_blas
from .errors import AdapterError, ConfigError

__all__ = [
    "ModuleComparison",
    "Comparison",
    "right_singular_vectors",
    "subspace_similarity",
    "principal_angles",
    "compare_adapters",
    "phi_from_overlap",
]


def right_singular_vectors(A: object) -> np.ndarray:
    """Orthonormal right singular vectors of ``A`` as columns, by decreasing singular value.

    Parameters
    ----------
    A : array_like of shape (r, d_in)

    Returns
    -------
    ndarray of shape (d_in, q)
        ``q = min(r, d_in)``, float64.
    """
    A = check_matrix("A", A).astype(np.float64, copy=False)
    # QR of A^T first, so the SVD runs on the small r x r factor.
    q, rr = np.linalg.qr(A.T)
    _, _, vt = np.linalg.svd(rr.T, full_matrices=False)
    return q @ vt.T


def phi_from_overlap(m: np.ndarray) -> np.ndarray:
    """``phi(i, j)`` for every i, j from the overlap ``m = U_1^T U_2`` of two orthonormal bases
    (Hu et al. 2022): ``||U_1[:, :i]^T U_2[:, :j]||_F^2 / min(i, j)``, clipped to [0, 1]."""
    # ||U1[:, :i]^T U2[:, :j]||_F^2 is the sum of m^2 over the top-left i x j block.
    blocks = np.cumsum(np.cumsum(m * m, axis=0), axis=1)
    i = np.arange(1, m.shape[0] + 1)[:, None]
    j = np.arange(1, m.shape[1] + 1)[None, :]
    return np.clip(blocks / np.minimum(i, j), 0.0, 1.0)


def subspace_similarity(A1: object, A2: object) -> np.ndarray:
    """``phi(i, j)`` of Hu et al. (2022) for every i <= r_1, j <= r_2.

    Parameters
    ----------
    A1 : array_like of shape (r_1, d_in)
    A2 : array_like of shape (r_2, d_in)

    Returns
    -------
    ndarray of shape (q_1, q_2)
        ``phi[i - 1, j - 1] = phi(i, j)``.
    """
    u1, u2 = right_singular_vectors(A1), right_singular_vectors(A2)
    if u1.shape[0] != u2.shape[0]:
        raise ConfigError(f"A factors have different input sizes: {u1.shape[0]} and {u2.shape[0]}")
    return phi_from_overlap(u1.T @ u2)


def principal_angles(A1: object, A2: object) -> np.ndarray:
    """Principal angles (radians, ascending) between the row spaces of ``A1`` and ``A2``.

    Returns
    -------
    ndarray of shape (min(q_1, q_2),)
    """
    u1, u2 = right_singular_vectors(A1), right_singular_vectors(A2)
    if u1.shape[0] != u2.shape[0]:
        raise ConfigError(f"A factors have different input sizes: {u1.shape[0]} and {u2.shape[0]}")
    cosines = np.linalg.svd(u1.T @ u2, compute_uv=False)
    return np.arccos(np.clip(cosines, -1.0, 1.0))


@dataclass(frozen=True)
class ModuleComparison:
    """One shared module.

    Attributes
    ----------
    name : str
    rank_a, rank_b : int
    d_in : int
    phi : ndarray of shape (q_a, q_b)
        ``phi[i - 1, j - 1] = phi(i, j)``.
    angles : ndarray of shape (min(q_a, q_b),)
        Principal angles in radians, ascending.
    top : int
        ``k = min(top, q_a, q_b)`` used by ``top_overlap``.
    top_overlap : float
        ``phi(k, k)``: share of the top-k directions the two adapters have in common.
    chance : float
        ``k / d_in``, what two random k-dim subspaces would give on average.
    """

    name: str
    rank_a: int
    rank_b: int
    d_in: int
    phi: np.ndarray
    angles: np.ndarray
    top: int
    top_overlap: float
    chance: float

    def to_dict(self) -> dict:
        """JSON-friendly (phi as nested lists, angles in degrees)."""
        return {
            "name": self.name, "rank_a": self.rank_a, "rank_b": self.rank_b, "d_in": self.d_in,
            "phi_1_1": float(self.phi[0, 0]), "top": self.top, "top_overlap": self.top_overlap,
            "chance": self.chance, "phi": self.phi.tolist(),
            "principal_angles_deg": [float(math.degrees(a)) for a in self.angles],
        }


@dataclass(frozen=True)
class Comparison:
    """Two adapters on their shared modules.

    Attributes
    ----------
    modules : list of ModuleComparison
    only_a, only_b : list of str
        Module names present in one adapter only.
    mismatched : list of str
        Shared names whose input sizes differ (not compared).
    summary : dict
    undefined : list of str
        Shared names whose update is exactly zero in one adapter or both: a zero update has no
        directions, so phi is undefined there (not compared, never reported as 0 or 1).
        Mean / min / max of ``top_overlap`` and ``phi(1, 1)`` over the shared modules.
    """

    modules: list[ModuleComparison]
    only_a: list[str]
    only_b: list[str]
    mismatched: list[str]
    summary: dict
    undefined: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-friendly."""
        return {"modules": [m.to_dict() for m in self.modules], "only_a": self.only_a,
                "only_b": self.only_b, "mismatched": self.mismatched, "undefined": list(self.undefined),
                "summary": dict(self.summary)}

    def table(self) -> list[dict]:
        """One flat row per shared module (no matrices), for CSV / JSON downloads."""
        return [{"name": m.name, "rank_a": m.rank_a, "rank_b": m.rank_b, "d_in": m.d_in,
                 "phi_1_1": float(m.phi[0, 0]), "top": m.top, "top_overlap": m.top_overlap,
                 "chance": m.chance,
                 "smallest_angle_deg": float(math.degrees(m.angles[0])) if m.angles.size else 90.0}
                for m in self.modules]


def _input_basis(module) -> np.ndarray:
    """Orthonormal basis (d_in, q) of the directions the module reads, ordered by importance.

    Hu et al. use the right singular vectors of ``A``; for LoKr, whose ``A`` is only the
    Kronecker factor's half, they are the right singular vectors of the whole update. Only
    directions with a nonzero singular value count (a zero or collapsed factor has fewer).
    """
    if getattr(module, "kron_left", None) is not None:
        from .audit import module_svd

        f = module_svd(module)
        keep = f.S > f.S[0] * _RANK_TOL if f.S.size and f.S[0] > 0 else np.zeros(f.S.size, bool)
        return f.Vt[keep].T
    if module.scale == 0 or not np.any(module.B):
        return np.zeros((module.A.shape[1], 0))
    A = module.A.astype(np.float64)
    peak = float(np.max(np.abs(A))) if A.size else 0.0
    if peak == 0.0:
        return np.zeros((A.shape[1], 0))
    A = A / peak
    q, rr = np.linalg.qr(A.T)
    _, sv, vt = np.linalg.svd(rr.T, full_matrices=False)
    keep = sv > sv[0] * _RANK_TOL
    return (q @ vt.T)[:, keep]


#: Directions below this share of sigma_1 do not count as directions of a factor.
_RANK_TOL = 1e-10


def _compare_module(ma, mb, top, progress, i, total) -> ModuleComparison | None:
    u1 = _input_basis(ma)
    u2 = _input_basis(mb)
    if progress is not None:
        progress(i + 1, total)
    if u1.shape[1] == 0 or u2.shape[1] == 0:
        return None
    overlap = u1.T @ u2
    phi = phi_from_overlap(overlap)
    angles = np.arccos(np.clip(np.linalg.svd(overlap, compute_uv=False), -1.0, 1.0))
    k = min(top, phi.shape[0], phi.shape[1])
    d_in = int(u1.shape[0])
    return ModuleComparison(name=ma.name, rank_a=ma.rank, rank_b=mb.rank, d_in=d_in, phi=phi,
                            angles=angles, top=k, top_overlap=float(phi[k - 1, k - 1]), chance=k / d_in)


def compare_adapters(a: Adapter, b: Adapter, *, top: int = 4,
                     progress: Callable[[int, int], None] | None = None) -> Comparison:
    """Subspace similarity and principal angles of two adapters, module by module.

    Parameters
    ----------
    a, b : Adapter
    top : int, default=4
        ``top_overlap`` is ``phi(k, k)`` with ``k = min(top, r_a, r_b)``.
    progress : callable(done, total), optional

    Returns
    -------
    Comparison

    Raises
    ------
    AdapterError
        If the adapters share no module name with equal input size, or every shared module is
        exactly zero in one of them (similarity undefined).
    """
    top = check_int("top", top, minimum=1)
    by_name_b = {m.name: m for m in b.modules}
    names_a = {m.name for m in a.modules}
    shared = [m for m in a.modules if m.name in by_name_b]
    mismatched = [m.name for m in shared if m.shape[1] != by_name_b[m.name].shape[1]]
    shared = [m for m in shared if m.name not in mismatched]
    if not shared:
        raise AdapterError(
            f"{a.source or 'adapter A'} and {b.source or 'adapter B'} share no module with the same "
            f"input size (e.g. {a.modules[0].name!r} vs {b.modules[0].name!r})"
        )
    total = len(shared)
    if progress is not None:
        progress(0, total)
    with single_threaded_blas():
        results = [_compare_module(ma, by_name_b[ma.name], top, progress, i, total)
                   for i, ma in enumerate(shared)]
    out = [r for r in results if r is not None]
    undefined = [ma.name for ma, r in zip(shared, results) if r is None]
    if not out:
        raise AdapterError(
            f"every shared module is exactly zero in {a.source or 'adapter A'} or {b.source or 'adapter B'} "
            f"(e.g. {undefined[0]!r}): a zero update has no directions, so their similarity is undefined"
        )
    tops = np.array([m.top_overlap for m in out])
    firsts = np.array([float(m.phi[0, 0]) for m in out])
    summary = {
        "shared_modules": len(out),
        "top": top,
        "top_overlap": {"mean": float(tops.mean()), "min": float(tops.min()), "max": float(tops.max())},
        "phi_1_1": {"mean": float(firsts.mean()), "min": float(firsts.min()), "max": float(firsts.max())},
        "chance_mean": float(np.mean([m.chance for m in out])),
        "only_a": len(names_a - set(by_name_b)),
        "only_b": len(set(by_name_b) - names_a),
        "undefined": len(undefined),
    }
    return Comparison(modules=out, only_a=sorted(names_a - set(by_name_b)),
                      only_b=sorted(set(by_name_b) - names_a), mismatched=mismatched, summary=summary,
                      undefined=undefined)
