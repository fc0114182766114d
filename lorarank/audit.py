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
from .adapters import Adapter, LoraModule, parse_module_name
from .errors import ConfigError
from .spectrum import (
    RANK_RULES,
    _svdvals_unchecked,
    single_threaded_blas,
    energy_rank,
    entropy_rank,
    factored_svd,
    recommend_rank,
    stable_rank,
    truncation_error,
)

__all__ = [
    "ENERGY_THRESHOLDS",
    "ModuleReport",
    "AuditReport",
    "Allocation",
    "ResizeResult",
    "audit_adapter",
    "module_spectrum",
    "allocate_budget",
    "budget_curve",
    "resize_adapter",
]

#: Thresholds t of the energy ranks k(t) every module report carries.
ENERGY_THRESHOLDS: tuple[float, ...] = (0.9, 0.95, 0.99)

Progress = Callable[[int, int], None]


def _tick(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _check_rule(rule: str, value: float) -> tuple[str, float]:
    rule = check_choice("rule", rule, tuple(RANK_RULES))
    if rule == "sv_ratio":
        value = check_real("value", value, minimum=1.0)
    elif rule != "entropy":
        value = check_real("value", value, minimum=0.0, maximum=1.0, strict_minimum=True)
    else:
        value = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0
    return rule, value


def module_spectrum(module: LoraModule) -> np.ndarray:
    """Singular values of ``module.scale * B @ A`` from the factors, descending, float64.

    Returns
    -------
    ndarray of shape (min(r, d_out, d_in),)

    Notes
    -----
    :func:`lorarank.spectrum.factored_svdvals` without its validation: the factors were
    checked finite when the adapter was read.
    """
    B, A = module.factors(np.float64)
    return _svdvals_unchecked(B, A, module.scale)


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
        ``recommended_rank * (d_out + d_in)``.
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

    @property
    def energy(self) -> float:
        """``sum sigma^2 = ||scale * B @ A||_F^2``."""
        return float(np.sum(self.singular_values**2))

    def to_dict(self) -> dict:
        """JSON-friendly, exactly the keys of PRODUCT.md's ``audit --json`` modules (see :meth:`AuditReport.table` for more)."""
        return {
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
        }


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


def _report(module: LoraModule, s: np.ndarray, rule: str, value: float) -> ModuleReport:
    layer, kind = parse_module_name(module.name)
    k = recommend_rank(s, rule=rule, value=value)
    d_out, d_in = module.shape
    return ModuleReport(
        name=module.name, layer=layer, module_type=kind, shape=(d_out, d_in), rank=module.rank,
        alpha=module.alpha, scale=float(module.scale), singular_values=s,
        energy_rank={f"{t:g}": energy_rank(s, threshold=t) for t in ENERGY_THRESHOLDS},
        stable_rank=stable_rank(s), entropy_rank=entropy_rank(s), recommended_rank=k,
        truncation_error=truncation_error(s, k), params=module.num_params,
        params_after=k * (d_out + d_in),
    )


def audit_adapter(adapter: Adapter, *, rule: str = "energy", value: float = 0.99,
                  progress: Progress | None = None) -> AuditReport:
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

    Returns
    -------
    AuditReport

    Notes
    -----
    Costs O((d_out + d_in) r^2) per module; the dense ``d_out x d_in`` update is never formed.
    """
    rule, value = _check_rule(rule, value)
    total = len(adapter.modules)
    _tick(progress, 0, total)
    reports = []
    with single_threaded_blas():
        for i, module in enumerate(adapter.modules):
            reports.append(_report(module, module_spectrum(module), rule, value))
            _tick(progress, i + 1, total)
    return AuditReport(format=adapter.format, source=adapter.source, scaling=adapter.scaling,
                       rule=rule, value=value, modules=reports,
                       summary=_summary(adapter, reports, rule, value), detected=adapter.describe())


def _summary(adapter: Adapter, reports: Sequence[ModuleReport], rule: str, value: float) -> dict:
    params = sum(m.params for m in reports)
    after = sum(m.params_after for m in reports)
    energy = sum(m.energy for m in reports)
    kept = sum(float(np.sum(m.singular_values[: m.recommended_rank] ** 2)) for m in reports)
    recs = [m.recommended_rank for m in reports]
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
    return _allocate(spectra, costs, rank_budget=rank_budget, param_budget=param_budget)


def _ordered(spectra: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    energy = np.concatenate([s * s for s in spectra]) if spectra else np.zeros(0)
    owner = np.concatenate([np.full(s.size, i) for i, s in enumerate(spectra)]) if spectra else np.zeros(0, int)
    # Stable sort: ties keep the module order and, within a module, the spectrum's order.
    order = np.argsort(-energy, kind="stable")
    return energy[order], owner[order].astype(np.int64), float(energy.sum())


def _allocate(spectra, costs, *, rank_budget=None, param_budget=None) -> Allocation:
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
@dataclass(frozen=True)
class ResizeResult:
    """A resized adapter and what the truncation cost.

    Attributes
    ----------
    adapter : Adapter
        Same format and module names; truncated modules have scale 1 and alpha = k.
    ranks : dict of str to int
        New rank per module.
    errors : dict of str to float
        Relative Frobenius error ``||dW_k - dW|| / ||dW||`` per module (0 when unchanged).
    params_before, params_after : int
    retained_energy : float
        Over the whole adapter.
    """

    adapter: Adapter
    ranks: dict[str, int]
    errors: dict[str, float]
    params_before: int
    params_after: int
    retained_energy: float

    def to_dict(self) -> dict:
        """JSON-friendly summary (without the factors)."""
        return {"format": self.adapter.format, "ranks": dict(self.ranks), "errors": dict(self.errors),
                "params_before": self.params_before, "params_after": self.params_after,
                "retained_energy": self.retained_energy,
                "max_error": max(self.errors.values(), default=0.0)}


def _truncate(module: LoraModule, k: int) -> LoraModule:
    # 1. dW = U S V^T from the factors; 2. split sqrt(S) between the new factors so both are
    #    balanced; 3. the old scale lives in S, so the new scale is 1 (alpha = k).
    B, A = module.factors(np.float64)
    u, s, vt = factored_svd(B, A, scale=module.scale)
    root = np.sqrt(s[:k])
    new_b = (u[:, :k] * root).astype(module.B.dtype)
    new_a = (root[:, None] * vt[:k]).astype(module.A.dtype)
    return replace(module, A=new_a, B=new_b, scale=1.0, alpha=float(k))


def resize_adapter(adapter: Adapter, *, rank: int | Mapping[str, int] | None = None,
                   rule: str | None = None, value: float = 0.99, rank_budget: int | None = None,
                   param_budget: int | None = None, progress: Progress | None = None) -> ResizeResult:
    """Best lower-rank approximation of every module, from the factored SVD.

    Give exactly one target:

    Parameters
    ----------
    adapter : Adapter
    rank : int or mapping of str to int, optional
        New rank of every module, or per module name (modules not named stay as they are).
    rule : str, optional
        A rule of :data:`lorarank.spectrum.RANK_RULES` with ``value`` (``rule="energy",
        value=0.99`` keeps 99 % of each module's energy).
    rank_budget, param_budget : int, optional
        A global budget allocated by largest ``sigma^2`` first (:func:`allocate_budget`).
    progress : callable(done, total), optional

    Returns
    -------
    ResizeResult

    Notes
    -----
    A module whose target is >= its rank is returned unchanged (same factors, scale, alpha).
    Otherwise ``B_k = U_k sqrt(S_k)``, ``A_k = sqrt(S_k) V_k^T`` in the stored dtype, scale 1:
    by Eckart-Young ``B_k @ A_k`` is the closest rank-k matrix to ``dW``, with relative error
    ``sqrt(sum_{i>k} sigma^2 / sum sigma^2)``. A target of 0 keeps one direction.
    """
    given = [x is not None for x in (rank, rule, rank_budget, param_budget)]
    if sum(given) != 1:
        raise ConfigError("give exactly one of `rank`, `rule`, `rank_budget` and `param_budget`")
    with single_threaded_blas():
        return _resize(adapter, rank=rank, rule=rule, value=value, rank_budget=rank_budget,
                       param_budget=param_budget, progress=progress)


def _resize(adapter, *, rank, rule, value, rank_budget, param_budget, progress) -> ResizeResult:
    modules = adapter.modules
    total = len(modules)
    _tick(progress, 0, total)
    spectra = [module_spectrum(m) for m in modules]
    if rank is not None and not isinstance(rank, Mapping):
        k = check_int("rank", rank, minimum=1)
        targets = [k] * total
    elif rank is not None:
        names = {m.name for m in modules}
        unknown = [n for n in rank if n not in names]
        if unknown:
            raise ConfigError(f"`rank` names module {unknown[0]!r}, which the adapter does not have")
        targets = [check_int(f"rank[{m.name!r}]", rank[m.name], minimum=1) if m.name in rank else m.rank
                   for m in modules]
    elif rule is not None:
        rule, value = _check_rule(rule, value)
        targets = [recommend_rank(s, rule=rule, value=value) for s in spectra]
    else:
        costs = [sum(m.shape) for m in modules]
        targets = _allocate(spectra, costs, rank_budget=rank_budget, param_budget=param_budget).ranks
    new_modules, ranks, errors = [], {}, {}
    kept = energy = 0.0
    for i, (m, s, k) in enumerate(zip(modules, spectra, targets)):
        k = max(int(k), 1)
        if k >= m.rank:
            new_modules.append(m)
            errors[m.name] = 0.0
        else:
            new_modules.append(_truncate(m, k))
            errors[m.name] = truncation_error(s, k)
        ranks[m.name] = min(k, m.rank)
        kept += float(np.sum(s[: ranks[m.name]] ** 2))
        energy += float(np.sum(s**2))
        _tick(progress, i + 1, total)
    resized = replace(adapter, modules=new_modules,
                      scaling=adapter.scaling + "; resized modules: scale folded into the factors (scale 1)")
    return ResizeResult(adapter=resized, ranks=ranks, errors=errors, params_before=adapter.num_params,
                        params_after=resized.num_params,
                        retained_energy=kept / energy if energy > 0 else 1.0)
