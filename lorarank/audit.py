"""Audit and resize a trained adapter: how many directions each module really uses.

For every module the spectrum ``sigma_1 >= ... >= sigma_r`` of ``scale * B @ A`` comes from
the factors (:func:`lorarank.spectrum.factored_svdvals`); the metrics are those of
PRODUCT.md (energy rank at 0.9 / 0.95 / 0.99, stable rank, entropy effective rank), plus the
rank a chosen rule recommends (:data:`lorarank.spectrum.RANK_RULES`) and the relative error of
truncating there, ``sqrt(sum_{i>k} sigma^2 / sum sigma^2)``.

Across the adapter, a budget of ``N`` directions (or of parameters, a direction of a module
costing ``d_out + d_in``) is allocated by largest ``sigma^2`` first; by Eckart-Young this keeps
the most energy ``sum sigma^2`` of the whole update that any allocation can keep.

:func:`resize_adapter` replaces each module by the best rank-k approximation of its ``dW``:
``B_k = U_k sqrt(S_k)``, ``A_k = sqrt(S_k) V_k^T`` with the scale folded in (new scale 1,
alpha = k); a module whose target rank is >= its rank is left exactly as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import numpy as np

from ._validate import check_choice, check_int, check_real
from .adapters import Adapter, Buffers, LoraModule, parse_module_name
from .adapters import family as family_info
from .documents import json_clean
from .errors import AdapterError, ConfigError
from .spectrum import (
    RANK_RULES,
    FactoredSVD,
    kron_values,
    svdvals_unchecked,
    single_threaded_blas,
    energy_rank,
    entropy_rank,
    factored_svd,
    kron_svd,
    operator_svdvals,
    recommend_rank,
    stable_rank,
    truncation_error,
    numerical_rank,
)

__all__ = [
    "ENERGY_THRESHOLDS",
    "ModuleReport",
    "AuditReport",
    "Allocation",
    "audit_adapter",
    "module_spectrum",
    "module_svd",
    "dora_update",
    "dora_merged_change",
    "spectrum_of",
    "COLLAPSE_RATIO",
    "BASE_TOP_K",
    "allocate_budget",
    "budget_curve",
    "check_rule",
    "allocate_spectra",
]

#: Thresholds t of the energy ranks k(t) every module report carries.
ENERGY_THRESHOLDS: tuple[float, ...] = (0.9, 0.95, 0.99)

Progress = Callable[[int, int], None]

#: A module is "collapsed to one direction" when ``sigma_2 <= COLLAPSE_RATIO * sigma_1``
#: (every direction but the first holds less than 1e-12 of its energy).
COLLAPSE_RATIO = 1e-6

#: How many leading singular values of ``merged - W0`` a DoRA module with base weights reports.
BASE_TOP_K = 64


def _tick(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def check_rule(rule: str, value: float) -> tuple[str, float]:
    """``(rule, value)`` checked: a rule of :data:`RANK_RULES` and its value in range (sv_ratio
    >= 1; energy shares in (0, 1]; none for entropy); ConfigError naming the bad one."""
    rule = check_choice("rule", rule, tuple(RANK_RULES))
    if rule == "sv_ratio":
        value = check_real("value", value, minimum=1.0)
    elif rule != "entropy":
        value = check_real("value", value, minimum=0.0, maximum=1.0, strict_minimum=True)
    else:
        value = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0
    return rule, value


def _family(module: LoraModule) -> str:
    return getattr(module, "family", "lora")


def _kron_left(module: LoraModule) -> np.ndarray | None:
    left = getattr(module, "kron_left", None)
    return None if left is None else np.asarray(left, dtype=np.float64)


def _magnitude(module: LoraModule) -> np.ndarray | None:
    m = getattr(module, "magnitude", None)
    return None if m is None else np.asarray(m, dtype=np.float64).ravel()


def module_spectrum(module: LoraModule, *, buffers: Buffers | None = None) -> np.ndarray:
    """Singular values of what ``(B, A, scale)`` describe, from the factors, descending, float64.

    For every family but DoRA that is the update the library applies: ``scale * B @ A``
    (LoRA, AdaLoRA with E folded into A, LoCon with its Tucker core folded, LoHa's exact
    Khatri-Rao factors), or ``scale * kron(kron_left, B @ A)`` for LoKr (all products of the
    halves' singular values). For DoRA it is the directional part ``scale * B @ A``; the true
    update needs the base weight (:func:`dora_update`).

    Parameters
    ----------
    module : LoraModule
    buffers : lorarank.adapters.Buffers, optional
        Scratch arrays reused from module to module (one per audit): each factor is decoded
        to float64 once, into them, and nothing of a factor's size is allocated.

    Returns
    -------
    ndarray of shape (q,)
        ``q = min(r, d_out, d_in)``; for LoKr ``min(o1, i1) * min(r, d_out2, d_in2)``.

    Notes
    -----
    :func:`lorarank.spectrum.factored_svdvals` without its validation: the factors were
    checked finite when the adapter was read.
    """
    narrow = module.B.dtype.itemsize <= 4 and module.A.dtype.itemsize <= 4  # float32 or narrower
    B, A = module.factors(np.float64, buffers=buffers)
    right = svdvals_unchecked(B, A, module.scale, buffers=buffers, narrow=narrow)
    left = _kron_left(module)
    if left is not None:
        return kron_values(svdvals_unchecked(left, np.eye(left.shape[1]), 1.0), right)
    return right


def module_svd(module: LoraModule, k: int | None = None) -> FactoredSVD:
    """Thin SVD (top ``k``) of the update ``(B, A, scale)`` describe (the directional part for DoRA).

    Returns
    -------
    FactoredSVD
        ``U`` (d_out, k), ``S`` (k,), ``Vt`` (k, d_in) in the orientation of ``B @ A``.
    """
    B, A = module.factors(np.float64)
    left = _kron_left(module)
    if left is not None:
        return kron_svd(left, B, A, scale=module.scale, k=k)
    u, sv, vt = factored_svd(B, A, scale=module.scale)
    k = sv.size if k is None else min(k, sv.size)
    return FactoredSVD(u[:, :k], sv[:k], vt[:k])


def spectrum_of(module: LoraModule, *, with_base: bool = False) -> str:
    """One phrase naming what the module's reported singular values are of."""
    info = family_info("dora" if _magnitude(module) is not None else _family(module))
    return info.spectrum_with_base if with_base and info.spectrum_with_base else info.spectrum


# ------------------------------------------------------------------------------- base weights
def _update_shape(module: LoraModule) -> tuple[int, int]:
    return tuple(int(d) for d in module.shape)


def _base_weight(module: LoraModule, base) -> np.ndarray:
    return base.weight(module.name, _update_shape(module), transposed=bool(module.transposed))


def _dora_parts(module: LoraModule, W0: np.ndarray):
    """``(c, s, B, A)`` with ``dW = diag(c) (W0 + s B A) - W0``, ``c = m / ||W0 + s B A||_row``.

    The row norms come from the factors: ``||w_i + s (BA)_i||^2 = ||w_i||^2 + 2 s b_i . (A w_i)
    + s^2 b_i (A A^T) b_i^T``; the d_out x d_in product ``B @ A`` is never formed.
    """
    B, A = module.factors(np.float64)
    s = float(module.scale)
    m = _magnitude(module)
    if m is None or m.size != W0.shape[0]:
        raise AdapterError(f"module {module.name!r}: DoRA magnitude vector has {0 if m is None else m.size} "
                           f"entries, the layer has {W0.shape[0]} outputs")
    w_sq = np.einsum("ij,ij->i", W0, W0)
    cross = np.einsum("ij,ij->i", B, W0 @ A.T)
    ba_sq = np.einsum("ij,ij->i", B @ (A @ A.T), B)
    norms_sq = w_sq + 2 * s * cross + s * s * ba_sq
    norms = np.sqrt(np.maximum(norms_sq, 0.0))
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise AdapterError(f"module {module.name!r}: a row of W0 + s*B@A is zero or not finite, so DoRA's "
                           "magnitude scaling is undefined")
    c = m / norms
    return c, s, B, A, (w_sq, cross, ba_sq)


def dora_update(module: LoraModule, W0: np.ndarray, *, k: int = BASE_TOP_K,
                method: str = "auto") -> tuple[np.ndarray, float]:
    """Top-``k`` singular values and the Frobenius norm of DoRA's true update.

    ``dW = diag(c) (W0 + s B A) - W0 = diag(c - 1) W0 + s diag(c) B A`` with
    ``c = m / ||W0 + s B A||_row`` (PEFT ``lora_magnitude_vector`` and mlx-lm ``fuse()``).

    Parameters
    ----------
    module : LoraModule
        With ``magnitude`` of shape (d_out,).
    W0 : ndarray of shape (d_out, d_in)
        The base weight, in the orientation of ``B @ A``.
    k : int, default=BASE_TOP_K
    method : {"auto", "iterative", "dense"}
        Passed to :func:`lorarank.spectrum.operator_svdvals`: products ``dW @ X`` only, so a
        4096 x 4096 layer is never decomposed densely.

    Returns
    -------
    singular_values : ndarray of shape (min(k, d_out, d_in),)
    norm : float
        ``||dW||_F`` from the rows: ``(c_i - 1)^2 ||w_i||^2 + 2 (c_i - 1) c_i s b_i.(A w_i)
        + c_i^2 s^2 ||(BA)_i||^2`` summed.
    """
    c, s, B, A, (w_sq, cross, ba_sq) = _dora_parts(module, W0)
    d = c - 1.0
    rows = d * d * w_sq + 2 * d * c * s * cross + c * c * s * s * ba_sq
    norm = float(np.sqrt(max(float(np.sum(rows)), 0.0)))
    sB = s * (c[:, None] * B)

    def matmat(X):
        return d[:, None] * (W0 @ X) + sB @ (A @ X)

    def rmatmat(Y):
        return W0.T @ (d[:, None] * Y) + A.T @ (sB.T @ Y)

    values = operator_svdvals(matmat, rmatmat, W0.shape, k=k, method=method)
    if not np.all(np.isfinite(values)) or not np.isfinite(norm):
        raise AdapterError(f"module {module.name!r}: DoRA's update overflows float64")
    return values, norm


#: Rows per block when two DoRA merged weights are compared (bounded memory, exact).
_ROW_BLOCK = 256


def dora_merged_change(module: LoraModule, resized: LoraModule, base) -> float:
    """How far a resize moves a DoRA module's merged weight, relative to its update.

    ``||W'_k - W'||_F / ||W' - W0||_F`` with ``W' = diag(c) (W0 + s B A)``, ``c = m / ||W0 + s B
    A||_row`` (PEFT, mlx-lm), and ``W'_k`` the same with the resized factors and the same m:
    the library renormalises the rows of ``W0 + s B_k A_k``, so the merged weight moves by more
    or less than the directional truncation error, and only the base weights tell.

    Parameters
    ----------
    module, resized : LoraModule
        The DoRA module before and after the resize (same magnitude vector).
    base : lorarank.base.BaseWeights

    Returns
    -------
    float
        0 when the module's update is zero.

    Notes
    -----
    Formed in blocks of :data:`_ROW_BLOCK` rows, exactly in float64: the difference of two
    nearly equal merged weights loses its digits when expanded into Gram terms, and a block
    of rows never holds the whole ``d_out x d_in`` matrix.
    """
    W0 = _base_weight(module, base)
    c, s, B, A, _ = _dora_parts(module, W0)
    ck, sk, Bk, Ak, _ = _dora_parts(resized, W0)
    moved = update = 0.0
    for start in range(0, W0.shape[0], _ROW_BLOCK):
        rows = slice(start, start + _ROW_BLOCK)
        w = W0[rows]
        old = c[rows, None] * (w + s * (B[rows] @ A))
        new = ck[rows, None] * (w + sk * (Bk[rows] @ Ak))
        moved += float(np.sum((new - old) ** 2))
        update += float(np.sum((old - w) ** 2))
    return math.sqrt(moved) / math.sqrt(update) if update > 0 else 0.0


def _frobenius(s: np.ndarray) -> float:
    """``sqrt(sum s^2)`` without overflow for values near float64's limit."""
    if s.size == 0 or s[0] == 0:
        return 0.0
    return float(s[0] * np.sqrt(np.sum((s / s[0]) ** 2)))


# ------------------------------------------------------------------------------------ reports
@dataclass(frozen=True)
class ModuleReport:
    """What one module's spectrum says.

    Attributes
    ----------
    name : str
        Module path without the factor suffix.
    layer : int or None
        First integer in the path (the transformer block), for the rank map.
    module_type : str
        ``q_proj``, ``down_proj``, ... for the rank map.
    shape : (int, int)
        ``(d_out, d_in)``.
    rank : int
        Stored rank r.
    alpha : float or None
    scale : float
    singular_values : ndarray of shape (q,)
        Of ``scale * B @ A``, descending.
    energy_rank : dict of str to int
        ``{"0.9": k, "0.95": k, "0.99": k}``: smallest k keeping that share of ``sum sigma^2``.
    stable_rank : float
        ``sum sigma^2 / sigma_1^2``.
    entropy_rank : float
        ``exp(-sum p log p)``, ``p = sigma / sum sigma``.
    recommended_rank : int
        The rank the audit's rule keeps.
    truncation_error : float
        Relative Frobenius error of truncating to ``recommended_rank``.
    params : int
        ``r * (d_out + d_in)``.
    params_after : int
        Parameters after a resize to ``recommended_rank``, as it would be written
        (:func:`lorarank.resize.resize_plan`: ``k (d_out + d_in)``, plus ``d_out`` for a DoRA
        magnitude vector; the stored count when the module stays as it is; 0 when it is left
        out).
    family : str
        ``lora``, ``dora``, ``adalora``, ``loha``, ``lokr`` or ``locon-tucker``.
    spectrum_of : str
        What ``singular_values`` are the singular values of (:func:`spectrum_of`).
    stored_rank : int or None
        The r the file declares when it differs from the inner dimension (LoHa r, AdaLoRA init_r).
    kept_rank : int or None
        AdaLoRA: nonzero entries of E, the rank its budget left.
    update_rank : int or None
        The numerical rank of the reported spectrum (values above ``sigma_1 max(d_out, d_in)
        eps``, as ``np.linalg.matrix_rank``): the rank of the update, which for LoHa (up to r²)
        and LoKr (``rank(W1) rank(W2)``) exceeds the file's r (a lower bound for DoRA with base
        weights, whose top values only are reported).
    magnitude : dict or None
        DoRA: ``{"min", "mean", "max"}`` of the magnitude vector m (and, with base weights,
        ``row_scale_min`` / ``row_scale_max`` of ``m / ||W0 + s B A||_row``).
    directional_singular_values : ndarray or None
        DoRA with base weights: the spectrum of ``s * B @ A`` (``singular_values`` is then of
        ``merged - W0``).
    norm : float
        ``||dW||_F`` of the update (of the directional part for DoRA without base).
    relative_size : float or None
        ``||dW||_F / ||W0||_F`` when base weights were given.
    flags : list of str
        ``zero`` (the update is exactly zero: never trained, or a zero scale), ``collapsed``
        (``sigma_2 <= 1e-6 sigma_1``: one direction).
    intruders : dict or None
        With base weights and ``intruders=True``: :meth:`lorarank.intruders.Intruders.to_dict`
        (PEFT's definition), or ``{"error": sentence}`` when it is not defined for the module.
    amplification : float or None
        ``||dW||_F / ||U_r^T W0 V_r||_F`` (Hu et al. 2021), with ``intruders``.
    """

    name: str
    layer: int | None
    module_type: str
    shape: tuple[int, int]
    rank: int
    alpha: float | None
    scale: float
    singular_values: np.ndarray
    energy_rank: dict[str, int]
    stable_rank: float
    entropy_rank: float
    recommended_rank: int
    truncation_error: float
    params: int
    params_after: int
    family: str = "lora"
    spectrum_of: str = "update s*B@A"
    stored_rank: int | None = None
    kept_rank: int | None = None
    update_rank: int | None = None
    magnitude: dict | None = None
    directional_singular_values: np.ndarray | None = None
    norm: float = 0.0
    relative_size: float | None = None
    flags: tuple[str, ...] = ()
    intruders: dict | None = None
    amplification: float | None = None

    @property
    def energy(self) -> float:
        """``sum sigma^2`` of the reported values (``||dW||_F^2`` when they are all of them)."""
        return float(np.sum(self.singular_values**2))

    def to_dict(self) -> dict:
        """JSON-friendly: PRODUCT.md's ``audit --json`` module keys plus the family fields."""
        out = {
            "name": self.name,
            "shape": [int(self.shape[0]), int(self.shape[1])],
            "rank": self.rank,
            "alpha": self.alpha,
            "scale": self.scale,
            "singular_values": [float(s) for s in self.singular_values],
            "energy_rank": dict(self.energy_rank),
            "stable_rank": self.stable_rank,
            "entropy_rank": self.entropy_rank,
            "recommended_rank": self.recommended_rank,
            "family": self.family,
            "spectrum_of": self.spectrum_of,
            "stored_rank": self.stored_rank,
            "kept_rank": self.kept_rank,
            "update_rank": self.update_rank,
            "magnitude": None if self.magnitude is None else dict(self.magnitude),
            "norm": self.norm,
            "relative_size": self.relative_size,
            "flags": list(self.flags),
        }
        if self.directional_singular_values is not None:
            out["directional_singular_values"] = [float(v) for v in self.directional_singular_values]
        if self.intruders is not None:
            out["intruders"] = dict(self.intruders)
            out["amplification"] = self.amplification
        return out


@dataclass(frozen=True)
class AuditReport:
    """Per-module reports plus the whole-adapter summary.

    Attributes
    ----------
    format, source, scaling : str
        As detected by :mod:`lorarank.adapters`.
    rule : str
    value : float
        The rule that chose ``recommended_rank``.
    modules : list of ModuleReport
    summary : dict
        JSON-friendly: module count, parameters now and after the recommendation, the energy
        the recommendation retains, distinct ranks and dtypes.
    detected : dict
        :meth:`Adapter.describe` of the audited adapter.
    """

    format: str
    source: str
    scaling: str
    rule: str
    value: float
    modules: list[ModuleReport]
    summary: dict
    detected: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """``{"format", "modules": [...], "summary": {...}}`` (PRODUCT.md ``audit --json``)."""
        return {
            "format": self.format,
            "modules": [m.to_dict() for m in self.modules],
            "summary": dict(self.summary),
        }

    def table(self) -> list[dict]:
        """One flat row per module (no arrays), for a data frame, CSV or JSON download."""
        rows = []
        for m in self.modules:
            s = m.singular_values
            rows.append({
                "name": m.name, "layer": m.layer, "module_type": m.module_type,
                "d_out": m.shape[0], "d_in": m.shape[1], "rank": m.rank, "alpha": m.alpha,
                "scale": m.scale, "sigma_1": float(s[0]) if s.size else 0.0,
                "norm": math.sqrt(m.energy),
                **{f"energy_rank_{t}": k for t, k in m.energy_rank.items()},
                "stable_rank": m.stable_rank, "entropy_rank": m.entropy_rank,
                "recommended_rank": m.recommended_rank, "truncation_error": m.truncation_error,
                "params": m.params, "params_after": m.params_after,
            })
        return rows

    def rank_map(self, metric: str = "recommended_rank") -> list[dict]:
        """Records ``{layer, module_type, name, value}`` for a layer x module-type heatmap.

        ``metric`` is a key of :meth:`table` rows (``recommended_rank``, ``energy_rank_0.99``,
        ``stable_rank``, ``entropy_rank``, ``truncation_error``, ...).
        """
        rows = self.table()
        if rows and metric not in rows[0]:
            raise ConfigError(f"`metric` should be one of {', '.join(k for k in rows[0] if k != 'name')}; "
                              f"got {metric!r}")
        return [{"layer": r["layer"], "module_type": r["module_type"], "name": r["name"],
                 "value": r[metric]} for r in rows]


def _flags(module: LoraModule, s: np.ndarray) -> tuple[str, ...]:
    if s.size == 0 or s[0] == 0:
        return ("zero",)
    if s.size > 1 and s[1] <= COLLAPSE_RATIO * s[0]:
        return ("collapsed",)
    if s.size == 1 and module.rank > 1:
        return ("collapsed",)
    return ()


def _magnitude_summary(m: np.ndarray | None, row_scale: np.ndarray | None = None) -> dict | None:
    if m is None:
        return None
    out = {"min": float(m.min()), "mean": float(m.mean()), "max": float(m.max())} if m.size else {}
    if row_scale is not None and row_scale.size:
        out.update(row_scale_min=float(row_scale.min()), row_scale_max=float(row_scale.max()))
    return out


def _report(module: LoraModule, s: np.ndarray, rule: str, value: float, *, base=None,
            base_k: int = BASE_TOP_K) -> ModuleReport:
    layer, kind = parse_module_name(module.name)
    family = _family(module)
    magnitude = _magnitude(module)
    directional = None
    norm = _frobenius(s)
    relative = None
    row_scale = None
    flags = _flags(module, s)
    if base is not None:
        W0 = _base_weight(module, base)
        w_norm = float(np.linalg.norm(W0))
        if magnitude is not None:
            directional = s
            c = _dora_parts(module, W0)[0]
            row_scale = c
            s, norm = dora_update(module, W0, k=base_k)
            flags = _flags(module, s)
        relative = norm / w_norm if w_norm > 0 else None
    k = recommend_rank(s, rule=rule, value=value)
    d_out, d_in = _update_shape(module)
    if (s.size and not math.isfinite(float(s[0]))) or not math.isfinite(norm):
        raise AdapterError(f"module {module.name!r}: its update overflows float64 (scale {module.scale!r})")
    if relative is not None and not math.isfinite(relative):
        raise AdapterError(f"module {module.name!r}: ||dW|| / ||W0|| overflows float64 (||dW|| {norm:.3g}, "
                           f"||W0|| {w_norm:.3g})")
    return ModuleReport(
        name=module.name, layer=layer, module_type=kind, shape=(d_out, d_in), rank=module.rank,
        alpha=module.alpha, scale=float(module.scale), singular_values=s,
        energy_rank={f"{t:g}": energy_rank(s, threshold=t) for t in ENERGY_THRESHOLDS},
        stable_rank=stable_rank(s), entropy_rank=entropy_rank(s), recommended_rank=k,
        truncation_error=truncation_error(s, k), params=module.num_params,
        params_after=k * (d_out + d_in), family=family,
        spectrum_of=spectrum_of(module, with_base=base is not None),
        stored_rank=getattr(module, "stored_rank", None), kept_rank=getattr(module, "kept_rank", None),
        update_rank=numerical_rank(s, shape=(d_out, d_in)),
        magnitude=_magnitude_summary(magnitude, row_scale), directional_singular_values=directional,
        norm=norm, relative_size=relative, flags=flags,
    )


def audit_adapter(adapter: Adapter, *, rule: str = "energy", value: float = 0.99,
                  progress: Progress | None = None, base=None, base_k: int = BASE_TOP_K,
                  intruders: bool = False, top_k: int = 10, epsilon: float = 0.5, svd_cache=None,
                  replay: str = "float64") -> AuditReport:
    """Spectrum, rank metrics and a recommended rank for every module of ``adapter``.

    Parameters
    ----------
    adapter : Adapter
        From :func:`lorarank.adapters.load_adapter` or :func:`load_adapter_bytes`.
    rule : {"energy", "sv_ratio", "sv_fro", "sv_cumulative", "entropy"}, default="energy"
        How ``recommended_rank`` is chosen (:data:`lorarank.spectrum.RANK_RULES`).
    value : float, default=0.99
        The rule's parameter.
    progress : callable(done, total), optional
        Called after each module (and once with ``(0, total)`` at the start).
    base : lorarank.base.BaseWeights, optional
        The base model's weights (:func:`lorarank.base.open_base`). With them every module
        gets ``relative_size = ||dW||_F / ||W0||_F``, and a DoRA module's spectrum becomes
        that of ``merged - W0`` (top ``base_k`` values, by products only).
    base_k : int, default=BASE_TOP_K
    intruders : bool, default=False
        With ``base``: every module's intruder dimensions (PEFT's definition, ``top_k`` and
        ``epsilon``) and amplification factor (:mod:`lorarank.intruders`), the base's SVD
        from ``svd_cache`` (a :class:`~lorarank.base_svd.BaseSVDCache`; default: the
        process-wide one).
    top_k : int, default=10
    epsilon : float, default=0.5
    svd_cache : BaseSVDCache, optional
    replay : {"float64", "torch"}, default="float64"
        How a PiSSA / OLoRA init is recomputed from ``base`` (:func:`lorarank.inits.replay_init`).

    Returns
    -------
    AuditReport

    Notes
    -----
    A PEFT adapter whose ``init_lora_weights`` moved the base (PiSSA, OLoRA, ...): without
    ``base`` its modules' ``spectrum_of`` says the values are of ``B@A`` as stored, not the
    update, and ``summary["warnings"]`` says why; with the original base and a deterministic
    init the spectra are of the exact update (:mod:`lorarank.against_base`).

    Raises
    ------
    AdapterError
        A base weight is missing or misshapen, or a result overflows float64.

    Notes
    -----
    Costs O((d_out + d_in) r^2) per module; the dense ``d_out x d_in`` update is never formed.
    """
    from . import against_base

    rule, value = check_rule(rule, value)
    base_k = check_int("base_k", base_k, minimum=1)
    if intruders:
        if base is None:
            raise ConfigError("intruder dimensions compare the update with the base weights: give `base`")
        top_k = check_int("top_k", top_k, minimum=1)
        epsilon = check_real("epsilon", epsilon, minimum=0.0, maximum=1.0)
        if svd_cache is None:
            from .base_svd import shared_cache

            svd_cache = shared_cache()
    work, init, replayed = against_base.prepare(adapter, base, replay=replay)
    total = len(work.modules)
    _tick(progress, 0, total)
    reports = []
    buffers = Buffers()  # each factor decoded once, into arrays reused from module to module
    with single_threaded_blas():
        for i, module in enumerate(work.modules):
            spectrum = module_spectrum(module, buffers=buffers)
            rep = _report(module, spectrum, rule, value, base=base, base_k=base_k)
            if intruders:
                rep = replace(rep, **against_base.intruder_fields(module, base, cache=svd_cache,
                                                                  top_k=top_k, epsilon=epsilon))
            reports.append(rep)
            _tick(progress, i + 1, total)
    reports = against_base.label(reports, adapter, init, replayed=replayed, replay=replay)
    reports, kept = _with_resize_plan(adapter.format, reports, rule, value)
    detected = {**adapter.describe(), "metadata": dict(getattr(adapter, "metadata", {}) or {})}
    summary = _summary(adapter, reports, rule, value, kept=kept)
    summary["name"] = getattr(adapter, "name", "")
    summary["metadata"] = json_clean(detected["metadata"])
    if base is not None:
        detected["base"] = summary["base"] = base.source
    fields, notes = against_base.summary_fields(reports, init, replayed=replayed, base=base, adapter=adapter)
    summary.update(fields)
    summary["warnings"] = notes + summary["warnings"]
    _check_finite(summary)
    return AuditReport(format=adapter.format, source=adapter.source, scaling=adapter.scaling,
                       rule=rule, value=value, modules=reports, summary=summary, detected=detected)


def _check_finite(doc, path: str = "summary") -> None:
    """Raise when a number in the summary is NaN or infinite: never print "nan %"."""
    if isinstance(doc, float) and not math.isfinite(doc):
        raise AdapterError(f"the audit's {path} is not finite ({doc}): the adapter's values overflow float64")
    if isinstance(doc, dict):
        for key, v in doc.items():
            _check_finite(v, f"{path}.{key}")
    elif isinstance(doc, (list, tuple)):
        for v in doc:
            _check_finite(v, path)


def _warnings(adapter: Adapter, reports: Sequence[ModuleReport]) -> list[str]:
    """Sentences about the whole adapter a reader must not miss."""
    out = []
    zero = [m for m in reports if "zero" in m.flags]
    if reports and len(zero) == len(reports):
        if all(m.scale == 0 for m in reports):
            out.append("every module has scale 0, so the adapter changes nothing whatever its factors hold")
        else:
            out.append("every module's update is exactly zero: the adapter was never trained "
                       "(or saved at initialisation) and changes nothing")
    elif zero:
        out.append(f"{len(zero)} of {len(reports)} modules are exactly zero (never trained or scale 0), "
                   f"e.g. {zero[0].name}")
    collapsed = [m for m in reports if "collapsed" in m.flags]
    if collapsed:
        out.append(f"{len(collapsed)} of {len(reports)} modules collapsed to one direction "
                   f"(sigma_2 <= 1e-6 sigma_1), e.g. {collapsed[0].name}")
    if any(m.family == "dora" or m.magnitude is not None for m in reports) and \
            all(m.directional_singular_values is None for m in reports if m.magnitude is not None):
        out.append("DoRA without base weights: the spectra are of the directional part s*B@A, not of the "
                   "update; give the base weights for the exact merged - W0")
    return out


def _with_resize_plan(fmt: str, reports: list[ModuleReport], rule: str, value: float
                      ) -> tuple[list[ModuleReport], list[int]]:
    """Each report's ``params_after`` and directions kept as the resize to the recommended ranks
    would write them (:func:`lorarank.resize.resize_plan`: the one count the reading, the
    Resize tab, the CLI and the report share). A DoRA module with base weights is resized by
    its directional part's spectrum, so that is the one planned."""
    from .resize import ModuleSize, resize_plan, resized_spectrum

    targets = [m.recommended_rank if m.directional_singular_values is None
               else recommend_rank(resized_spectrum(m), rule=rule, value=value) for m in reports]
    plan = resize_plan(fmt, [ModuleSize.of_report(m) for m in reports], targets)
    kept = [k if m.directional_singular_values is None else m.recommended_rank
            for m, k in zip(reports, plan.kept)]
    return [replace(m, params_after=n) for m, n in zip(reports, plan.params)], kept


def _summary(adapter: Adapter, reports: Sequence[ModuleReport], rule: str, value: float, *,
             kept: Sequence[int] | None = None) -> dict:
    params = sum(m.params for m in reports)
    after = sum(m.params_after for m in reports)
    # Energies relative to the largest sigma_1, so spectra near 1e160 do not overflow squared.
    peak = max((float(m.singular_values[0]) for m in reports if m.singular_values.size), default=0.0)
    unit = peak if peak > 0 else 1.0
    energy = sum(float(np.sum((m.singular_values / unit) ** 2)) for m in reports)
    kept_ranks = [m.recommended_rank for m in reports] if kept is None else kept
    kept = sum(float(np.sum((m.singular_values[: k] / unit) ** 2)) for m, k in zip(reports, kept_ranks))
    recs = [m.recommended_rank for m in reports]
    families = list(dict.fromkeys(m.family for m in reports))
    return {
        "source": adapter.source,
        "modules": len(reports),
        "params": params,
        "params_after": after,
        "compression": after / params if params else 1.0,
        "rule": rule,
        "value": value,
        "recommended_rank": {"min": min(recs), "median": float(np.median(recs)), "max": max(recs)}
        if recs else {},
        "retained_energy": kept / energy if energy > 0 else 1.0,
        "ranks": sorted({m.rank for m in reports}),
        "dtypes": adapter.dtypes,
        "scaling": adapter.scaling,
        "truncation_error": {m.name: m.truncation_error for m in reports},
        "families": families,
        "zero_modules": [m.name for m in reports if "zero" in m.flags],
        "collapsed_modules": [m.name for m in reports if "collapsed" in m.flags],
        "warnings": _warnings(adapter, reports),
    }


# ------------------------------------------------------------------------------------ budgets
@dataclass(frozen=True)
class Allocation:
    """Ranks chosen by a global budget.

    Attributes
    ----------
    ranks : list of int
        Kept directions per module, in the order the spectra were given.
    retained_energy : float
        ``sum of kept sigma^2 / sum of all sigma^2``, over the whole adapter.
    directions : int
        ``sum(ranks)``.
    params : int
        ``sum(ranks[i] * cost[i])``.
    """

    ranks: list[int]
    retained_energy: float
    directions: int
    params: int

    def to_dict(self) -> dict:
        """JSON-friendly."""
        return {"ranks": list(self.ranks), "retained_energy": self.retained_energy,
                "directions": self.directions, "params": self.params}


def _spectra_and_costs(source) -> tuple[list[np.ndarray], list[int]]:
    if isinstance(source, AuditReport):
        return [m.singular_values for m in source.modules], [sum(m.shape) for m in source.modules]
    if isinstance(source, Adapter):
        return [module_spectrum(m) for m in source.modules], [sum(m.shape) for m in source.modules]
    raise ConfigError(f"expected an AuditReport or an Adapter, got {type(source).__name__}")


def allocate_budget(source: AuditReport | Adapter, *, rank_budget: int | None = None,
                    param_budget: int | None = None) -> Allocation:
    """Spend a global budget on the directions with the largest ``sigma^2`` first.

    Parameters
    ----------
    source : AuditReport or Adapter
    rank_budget : int, optional
        Total directions kept over all modules.
    param_budget : int, optional
        Total parameters kept; a direction of a module costs ``d_out + d_in``. Directions are
        taken by decreasing ``sigma^2`` and skipped when they no longer fit.

    Returns
    -------
    Allocation
        Each module keeps a prefix of its own spectrum (its largest values).
    """
    if (rank_budget is None) == (param_budget is None):
        raise ConfigError("give exactly one of `rank_budget` and `param_budget`")
    spectra, costs = _spectra_and_costs(source)
    return allocate_spectra(spectra, costs, rank_budget=rank_budget, param_budget=param_budget)


def _ordered(spectra: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    # Relative to the largest value, so spectra near 1e160 do not overflow when squared.
    peak = max((float(s[0]) for s in spectra if s.size), default=0.0)
    unit = peak if peak > 0 else 1.0
    energy = np.concatenate([(s / unit) ** 2 for s in spectra]) if spectra else np.zeros(0)
    owner = np.concatenate([np.full(s.size, i) for i, s in enumerate(spectra)]) if spectra else np.zeros(0, int)
    # Stable sort: ties keep the module order and, within a module, the spectrum's order.
    order = np.argsort(-energy, kind="stable")
    return energy[order], owner[order].astype(np.int64), float(energy.sum())


def allocate_spectra(spectra: Sequence[np.ndarray], costs: Sequence[int], *, rank_budget: int | None = None,
                     param_budget: int | None = None) -> Allocation:
    """:func:`allocate_budget` on spectra and per-direction costs (``d_out + d_in``) given directly."""
    energy, owner, total = _ordered(spectra)
    ranks = [0] * len(spectra)
    if rank_budget is not None:
        n = min(check_int("rank_budget", rank_budget, minimum=0), energy.size)
        for i in owner[:n]:
            ranks[i] += 1
        kept = float(energy[:n].sum())
    else:
        left = check_int("param_budget", param_budget, minimum=0)
        kept = 0.0
        for e, i in zip(energy, owner):
            if costs[i] <= left:
                ranks[i] += 1
                left -= costs[i]
                kept += float(e)
    params = sum(r * c for r, c in zip(ranks, costs))
    return Allocation(ranks=ranks, retained_energy=kept / total if total > 0 else 1.0,
                      directions=sum(ranks), params=params)


def budget_curve(source: AuditReport | Adapter) -> dict:
    """Retained energy of the whole adapter versus a global budget, largest ``sigma^2`` first.

    Returns
    -------
    dict
        ``{"directions": [0, 1, ..., N], "params": [...], "retained_energy": [...],
        "mean_rank": [...]}`` (JSON-friendly lists): keeping the top ``directions[i]``
        directions of the adapter costs ``params[i]`` parameters and keeps
        ``retained_energy[i]`` of ``sum sigma^2``; ``mean_rank`` is directions per module.
    """
    spectra, costs = _spectra_and_costs(source)
    energy, owner, total = _ordered(spectra)
    kept = np.concatenate([[0.0], np.cumsum(energy)])
    params = np.concatenate([[0], np.cumsum(np.asarray(costs, dtype=np.int64)[owner])]) if owner.size else np.zeros(1, int)
    n = max(len(spectra), 1)
    return {
        "directions": list(range(energy.size + 1)),
        "params": [int(p) for p in params],
        "retained_energy": [float(k / total) if total > 0 else 1.0 for k in kept],
        "mean_rank": [d / n for d in range(energy.size + 1)],
    }


# ------------------------------------------------------------------------------------- resize
# The resize has its own module (lorarank.resize); these names are kept here for old imports.
_MOVED_TO_RESIZE = ("resize_adapter", "ResizeResult", "converted_families")


def __getattr__(name: str):
    if name in _MOVED_TO_RESIZE:
        from . import resize

        return getattr(resize, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
