"""Resize an adapter: the best lower-rank approximation of every module, in a file its library loads.

Every module's update ``dW = U S V^T`` (from the factors, :func:`lorarank.audit.module_svd`) is
replaced by its best rank-k approximation ``B_k = U_k sqrt(S_k)``, ``A_k = sqrt(S_k) V_k^T``
with the scale folded in (scale 1, ``alpha = k``): by Eckart-Young no rank-k matrix is closer,
and the relative error is ``sqrt(sum_{i>k} sigma^2 / sum sigma^2)``.

What each family becomes, and what a resize keeps:

- **LoRA** (PEFT, kohya, diffusers, mlx-lm, npz): the truncated ``B_k, A_k``; a module whose
  target is at or above its rank is written as it was.
- **DoRA** (PEFT, mlx-lm): the directional update ``s B A`` is truncated and the magnitude
  vector ``m`` is kept as it is. The library normalises the rows of ``W0 + s B_k A_k`` and
  multiplies them by ``m``, so every row of the merged weight keeps its norm ``m_i`` exactly;
  what changes is the rows' directions (``W0 + s B_k A_k`` instead of ``W0 + s B A``), and the
  truncation error reported is that of ``s B A``, not of the merged weight.
- **LoHa, LoKr, AdaLoRA, LoCon Tucker**: written as plain LoRA factors of the best rank-k
  approximation of the same update (their own forms cannot hold it). Their factors are often
  more compact than any ``B A`` of the rank their update has: the plan says so
  (:attr:`ResizeResult.shrinks`), and the page offers only what shrinks.
- A module whose update is **exactly zero** has no direction to keep: it is left out (rank 0;
  PEFT lists it in ``exclude_modules``), except a DoRA module, whose magnitude still rescales
  ``W0`` and which is kept as it was.
- **mlx-lm** adapters hold one rank for every module (``lora_parameters.rank``): every module
  keeps the largest rank any module's target asks for (more directions than its rule needs,
  never fewer), padded with zero directions where its update has fewer.

The number of parameters after a resize has one definition (:func:`resize_plan`): what the
written file holds for its modules, ``k (d_out + d_in)`` per truncated module plus ``d_out``
for a DoRA magnitude vector, the stored count for a module left as it was, 0 for a module left
out. The audit's reading, the page's Resize tab, the CLI and the report all use it.

The new factors are formed when they are written (one factored SVD per module, on one BLAS
thread), not held: a resize preview of a large adapter costs its spectra only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import numpy as np

from ._validate import check_choice, check_int
from .adapters import (Adapter, Buffers, LazyArray, LoraModule, default_write_format, families, family, held_as,
                       writable)
from .audit import allocate_spectra, check_rule, dora_merged_change, module_spectrum, module_svd
from .errors import ConfigError
from .spectrum import recommend_rank, single_threaded_blas, truncation_error

__all__ = ["converted_families", "ResizeResult", "ModuleSize", "ResizePlan", "resize_plan",
           "resize_adapter", "kohya_metadata", "kohya_main_rank", "KOHYA_RULES", "resized_spectrum"]

#: kohya ``resize_lora.py``'s dynamic methods (lorarank's rules of the same names).
KOHYA_RULES = ("sv_ratio", "sv_fro", "sv_cumulative")

Progress = Callable[[int, int], None]


def converted_families() -> tuple[str, ...]:
    """Families whose resize writes plain LoRA factors of the best rank-k approximation of the
    update (each family's registration says so: ``Family.resize == "lora"``)."""
    return tuple(name for name, f in families().items() if f.resize == "lora")


#: Formats whose files hold one rank for every module (mlx-lm: ``lora_parameters.rank``).
UNIFORM_RANK_FORMATS = ("mlx",)


# ---------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class ModuleSize:
    """What the plan needs to know of a module.

    Attributes
    ----------
    family : str
    shape : (int, int)
        ``(d_out, d_in)`` of the update.
    stored_params : int
        Parameters the file stores for the module now.
    stored_rank : int
        The width of its factors now (``A.shape[0]``).
    update_rank : int
        Length of the spectrum the resize truncates: ``min(q, d_out, d_in)`` (for DoRA the
        directional part's).
    zero : bool
        That spectrum is exactly zero.
    """

    family: str
    shape: tuple[int, int]
    stored_params: int
    stored_rank: int
    update_rank: int
    zero: bool

    @classmethod
    def of(cls, module: LoraModule, spectrum: np.ndarray) -> "ModuleSize":
        """From a module and the spectrum a resize truncates (:func:`module_spectrum`)."""
        return cls(family=module.family, shape=tuple(int(d) for d in module.shape),
                   stored_params=module.num_params, stored_rank=module.rank,
                   update_rank=int(spectrum.size), zero=not (spectrum.size and spectrum[0] > 0))

    @classmethod
    def of_report(cls, report) -> "ModuleSize":
        """From an audit's :class:`~lorarank.audit.ModuleReport` (a DoRA module audited with
        its base weights is resized by its directional part, ``directional_singular_values``)."""
        s = resized_spectrum(report)
        return cls(family=report.family, shape=tuple(int(d) for d in report.shape),
                   stored_params=report.params, stored_rank=report.rank, update_rank=int(s.size),
                   zero=not (s.size and s[0] > 0))


def resized_spectrum(report) -> np.ndarray:
    """The spectrum a resize of the module truncates: its reported one, or a DoRA module's
    directional part when the report is of ``merged - W0`` (audited with base weights)."""
    directional = report.directional_singular_values
    return report.singular_values if directional is None else directional


@dataclass(frozen=True)
class ResizePlan:
    """What a resize to given targets keeps and writes, per module.

    Attributes
    ----------
    kept : list of int
        Directions kept (0: left out, or a zero DoRA direction kept as it was).
    width : list of int
        Rank of the written factors (``kept``, or the common rank of a uniform-rank format).
    params : list of int
        Parameters the written module holds (0 when left out).
    unchanged : list of bool
        Written exactly as it was.
    uniform : int or None
        The one rank of a uniform-rank format (mlx-lm), else None.
    """

    kept: list[int]
    width: list[int]
    params: list[int]
    unchanged: list[bool]
    uniform: int | None


def resize_plan(fmt: str, sizes: Sequence[ModuleSize], targets: Sequence[int]) -> ResizePlan:
    """The one definition of what a resize keeps and how many parameters it writes.

    Parameters
    ----------
    fmt : str
        The adapter's format (``"mlx"`` holds one rank for every module).
    sizes : sequence of ModuleSize
    targets : sequence of int
        The rank each module is asked for (a rule's recommended rank, a fixed rank, a budget's
        allocation; 0 = none).

    Returns
    -------
    ResizePlan
    """
    asked = []
    for s, t in zip(sizes, targets):
        t = max(int(t), 0)
        if s.zero:
            asked.append(0)
        elif s.family == "dora":
            asked.append(max(t, 1))  # a DoRA module cannot be left out without losing its magnitudes
        else:
            asked.append(t)
    uniform = None
    if fmt in UNIFORM_RANK_FORMATS:
        uniform = max((a for a in asked), default=0) or None
        asked = [uniform if (a and uniform) else a for a in asked]
    kept, width, params, unchanged = [], [], [], []
    for s, a in zip(sizes, asked):
        d_out, d_in = s.shape
        if s.zero and s.family == "dora":  # no direction, but m rescales W0: as it was
            kept.append(0), width.append(s.stored_rank), params.append(s.stored_params), unchanged.append(True)
            continue
        if a == 0:  # nothing to keep: left out
            kept.append(0), width.append(0), params.append(0), unchanged.append(False)
            continue
        k = min(a, s.update_rank)
        w = uniform if uniform is not None else k
        same = (k == s.update_rank and s.family in ("lora", "dora")
                and (uniform is None or s.stored_rank == uniform))
        if same:
            kept.append(k), width.append(s.stored_rank), params.append(s.stored_params), unchanged.append(True)
            continue
        n = w * (d_out + d_in) + (d_out if s.family == "dora" else 0)
        kept.append(k), width.append(w), params.append(n), unchanged.append(False)
    return ResizePlan(kept=kept, width=width, params=params, unchanged=unchanged, uniform=uniform)


# -------------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class ResizeResult:
    """A resized adapter and what the truncation cost.

    Attributes
    ----------
    adapter : Adapter
        Same format and module names (modules left out are missing); truncated modules have
        scale 1 and alpha = k.
    ranks : dict of str to int
        Directions kept per module (0: left out).
    errors : dict of str to float
        Relative Frobenius error ``||dW_k - dW|| / ||dW||`` per module (0 when unchanged or
        exactly zero; 1 for a non-zero module a budget leaves out).
    params : dict of str to int
        Parameters each module holds after the resize (:func:`resize_plan`).
    params_before, params_after : int
    retained_energy : float
        Over the whole adapter.
    changed : int
        Modules whose factors changed or that were left out (0: the resize changes nothing).
    notes : tuple of str
        Sentences about what the resize did that a reader must know.
    dropped : tuple of str
        Modules left out.
    write_format : str
        The format the resized adapter is written in (the input's family).
    unwritable : str or None
        Why no file can be written (one sentence), or None.
    merged_changes : dict of str to float or None
        With base weights, for each resized DoRA module: how far its merged weight moves,
        ``||W'_k - W'||_F / ||W' - W0||_F`` (:func:`lorarank.audit.dora_merged_change`).
    """

    adapter: Adapter
    ranks: dict[str, int]
    errors: dict[str, float]
    params_before: int
    params_after: int
    retained_energy: float
    changed: int = 0
    notes: tuple[str, ...] = ()
    params: dict[str, int] | None = None
    dropped: tuple[str, ...] = ()
    write_format: str = ""
    unwritable: str | None = None
    merged_changes: dict[str, float] | None = None

    @property
    def shrinks(self) -> bool:
        """The resized adapter holds fewer parameters than the input."""
        return self.params_after < self.params_before

    def to_dict(self) -> dict:
        """JSON-friendly summary (without the factors)."""
        return {"format": self.adapter.format, "write_format": self.write_format,
                "ranks": dict(self.ranks), "errors": dict(self.errors),
                "params": dict(self.params or {}),
                "params_before": self.params_before, "params_after": self.params_after,
                "shrinks": self.shrinks, "retained_energy": self.retained_energy,
                "max_error": max(self.errors.values(), default=0.0),
                "changed": self.changed, "dropped": list(self.dropped), "notes": list(self.notes),
                "unwritable": self.unwritable,
                "merged_changes": None if self.merged_changes is None else dict(self.merged_changes)}


# ----------------------------------------------------------------------------- new factors
def _as_lora(module: LoraModule, B, A, alpha: float) -> LoraModule:
    family = "lora" if module.family in converted_families() else module.family
    return replace(module, A=A, B=B, scale=1.0, alpha=alpha, family=family, stored_rank=None,
                   kept_rank=None, kron_left=None, stored_params=None)


def _store(arr: np.ndarray, dtype: np.dtype, name: str, stored: str) -> np.ndarray:
    try:
        return held_as(arr, dtype, what=f"module {name!r}: its resized factors")
    except ConfigError:  # the same verdict, in the words that say what to do
        raise ConfigError(overflow_sentence(name, float(np.max(np.abs(arr))), stored)) from None


def overflow_sentence(name: str, largest: float, dtype: str) -> str:
    """The one sentence that says a resized module's factors do not fit ``dtype``, and what to do."""
    wider = "float32" if dtype in ("float16", "bfloat16") else "float64"
    def number(v: float) -> str:
        return f"{v:,.0f}" if v < 1e7 else f"{v:.4g}"

    return (f"module {name!r}: its resized factors reach {number(largest)}, past the largest {dtype} value "
            f"({number(_finfo_max(dtype))}), so they cannot be stored as {dtype}; write {wider} factors instead "
            f"(`python -m lorarank resize ... --dtype {wider}`)")


def _finfo_max(dtype: str) -> float:
    return 3.3895313892515355e38 if dtype == "bfloat16" else float(np.finfo(np.dtype(dtype)).max)


class _Factors:
    """One factored SVD per module, shared by its two new factors: the writer takes B and A
    of a module one after the other, so the SVD is computed once and dropped after both (a
    factor taken again, as the writer's dry run then the writer do, is formed again)."""

    def __init__(self, module: LoraModule, k: int, width: int, dtype: np.dtype, stored: str):
        self.module, self.k, self.width, self.dtype, self.stored = module, k, width, dtype, stored
        self._parts: dict[str, np.ndarray] = {}

    def take(self, which: str) -> np.ndarray:
        if which not in self._parts:  # adapter_files runs this on one BLAS thread (issue 22)
            u, sv, vt = module_svd(self.module, self.k)
            root = np.sqrt(sv[: self.k])
            d_out, d_in = self.module.shape
            b = np.zeros((d_out, self.width))
            a = np.zeros((self.width, d_in))
            b[:, : self.k] = u[:, : self.k] * root
            a[: self.k] = root[:, None] * vt[: self.k]
            self._parts = {"B": _store(b, self.dtype, self.module.name, self.stored),
                           "A": _store(a, self.dtype, self.module.name, self.stored)}
        out = self._parts.pop(which)
        return out


#: A resized factor's entries are at most sqrt(sigma_1) (|U_ij|, |V_ij| <= 1); the bound given to
#: the writer's dry run is that, widened by far more than the rounding of the two SVDs apart.
_BOUND_SLACK = 1 + 1e-9


def _truncate(module: LoraModule, k: int, width: int, spectrum: np.ndarray, dtype: str | None) -> LoraModule:
    # 1. dW = U S V^T from the factors (Kronecker-aware for LoKr); 2. split sqrt(S) between the
    #    new factors so both are balanced; 3. the old scale lives in S, so the new scale is 1
    #    (alpha = k); 4. a uniform-rank format gets zero directions up to its width.
    # Every entry of U_k sqrt(S_k) and sqrt(S_k) V_k^T is at most sqrt(sigma_1) in size: the
    # writer's dry run (adapters.writable(values=True)) settles with that bound whether they
    # fit the stored dtype, and forms them only when it does not.
    stored = dtype or module.dtype
    if stored not in ("float64", "float32", "float16", "bfloat16"):
        stored = "float32"   # as the writer stores other dtypes
    held = np.dtype(np.float32 if stored == "bfloat16" else stored)
    bound = math.sqrt(float(spectrum[0])) * _BOUND_SLACK if spectrum.size else 0.0
    d_out, d_in = module.shape
    parts = _Factors(module, k, width, held, stored)
    new_b = LazyArray(lambda: parts.take("B"), (d_out, width), held, bound=bound)
    new_a = LazyArray(lambda: parts.take("A"), (width, d_in), held, bound=bound)
    return replace(_as_lora(module, new_b, new_a, float(k)),
                   stored_dtype="bfloat16" if stored == "bfloat16" else None)


# ---------------------------------------------------------------------------------- resize
def resize_adapter(adapter: Adapter, *, rank: int | Mapping[str, int] | None = None,
                   rule: str | None = None, value: float = 0.99, rank_budget: int | None = None,
                   param_budget: int | None = None, max_rank: int | None = None,
                   base=None, dtype: str | None = None, progress: Progress | None = None) -> ResizeResult:
    """Best lower-rank approximation of every module, from the factored SVD.

    Give exactly one target:

    Parameters
    ----------
    adapter : Adapter
    rank : int or mapping of str to int, optional
        New rank of every module, or per module name (modules not named stay as they are).
    rule : str, optional
        A rule of :data:`lorarank.spectrum.RANK_RULES` with ``value`` (``rule="energy",
        value=0.99`` keeps 99 % of each module's energy; ``rule="sv_ratio", value=10`` keeps
        ``sigma_i > sigma_1 / 10``, kohya's rule without its extra direction).
    rank_budget, param_budget : int, optional
        A global budget allocated by largest ``sigma^2`` first
        (:func:`lorarank.audit.allocate_budget`); a module it gives no direction is left out.
    max_rank : int, optional
        Cap on every module's rank (kohya's ``--new_rank`` with a dynamic method).
    base : lorarank.base.BaseWeights, optional
        The base model's weights: each resized DoRA module then says how far its merged weight
        moves (:attr:`ResizeResult.merged_changes`).
    dtype : {"float64", "float32", "float16", "bfloat16"}, optional
        The dtype the resized factors are stored in; default: each module's own. (Unchanged
        modules keep theirs; pass the same ``dtype`` to the writer to store them so too.)
    progress : callable(done, total), optional

    Returns
    -------
    ResizeResult

    Raises
    ------
    ConfigError
        A PEFT adapter whose init moved the base (PiSSA, OLoRA, ... saved without conversion):
        its ``B @ A`` is not the update, so a resize of it would be a resize of the wrong
        matrix (:mod:`lorarank.inits`; convert it first).

    Notes
    -----
    See the module docstring for what each family becomes. ``B_k = U_k sqrt(S_k)``,
    ``A_k = sqrt(S_k) V_k^T`` in the stored dtype, scale 1: by Eckart-Young ``B_k @ A_k`` is
    the closest rank-k matrix to ``dW``, with relative error
    ``sqrt(sum_{i>k} sigma^2 / sum sigma^2)``.
    """
    given = [x is not None for x in (rank, rule, rank_budget, param_budget)]
    if sum(given) != 1:
        raise ConfigError("give exactly one of `rank`, `rule`, `rank_budget` and `param_budget`")
    if max_rank is not None:
        max_rank = check_int("max_rank", max_rank, minimum=1)
    if dtype is not None:
        dtype = check_choice("dtype", dtype, ("float64", "float32", "float16", "bfloat16"))
    from .inits import init_of

    init = init_of(adapter)
    if init.moves_base:
        raise ConfigError(init.refusal("resize"))
    with single_threaded_blas():
        return _resize(adapter, rank=rank, rule=rule, value=value, rank_budget=rank_budget,
                       param_budget=param_budget, max_rank=max_rank, base=base, dtype=dtype, progress=progress)


def _targets(modules, spectra, *, rank, rule, value, rank_budget, param_budget) -> tuple[list[int], str]:
    """Each module's target rank, and how they were chosen (for notes and kohya metadata)."""
    if rank is not None and not isinstance(rank, Mapping):
        k = check_int("rank", rank, minimum=1)
        return [k] * len(modules), f"rank {k}"
    if rank is not None:
        names = {m.name for m in modules}
        unknown = [n for n in rank if n not in names]
        if unknown:
            raise ConfigError(f"`rank` names module {unknown[0]!r}, which the adapter does not have")
        return ([check_int(f"rank[{m.name!r}]", rank[m.name], minimum=1) if m.name in rank else max(sp.size, 1)
                 for m, sp in zip(modules, spectra)], "ranks per module")
    if rule is not None:
        rule, value = check_rule(rule, value)
        how = rule if rule == "entropy" else f"{rule} {value:g}"
        return [recommend_rank(s, rule=rule, value=value) for s in spectra], how
    costs = [sum(m.shape) for m in modules]
    allocation = allocate_spectra(spectra, costs, rank_budget=rank_budget, param_budget=param_budget)
    how = (f"a global budget of {rank_budget:,} directions" if rank_budget is not None
           else f"a global budget of {param_budget:,} parameters")
    return allocation.ranks, how


def _resize(adapter, *, rank, rule, value, rank_budget, param_budget, max_rank, base, dtype, progress) -> ResizeResult:
    modules = adapter.modules
    total = len(modules)
    if progress is not None:
        progress(0, total)
    buffers = Buffers()
    spectra = [module_spectrum(m, buffers=buffers) for m in modules]
    targets, how = _targets(modules, spectra, rank=rank, rule=rule, value=value, rank_budget=rank_budget,
                            param_budget=param_budget)
    if max_rank is not None:
        targets = [min(t, max_rank) for t in targets]
        how += f", at most {max_rank}"
    sizes = [ModuleSize.of(m, sp) for m, sp in zip(modules, spectra)]
    plan = resize_plan(adapter.format, sizes, targets)
    peak = max((float(sp[0]) for sp in spectra if sp.size), default=0.0)
    unit = peak if peak > 0 else 1.0
    new_modules, ranks, errors, params, dropped = [], {}, {}, {}, []
    merged: dict[str, float] | None = {} if base is not None and "dora" in adapter.families else None
    kept = energy = 0.0
    changed = 0
    for i, (m, sp, k, w, n, same) in enumerate(zip(modules, spectra, plan.kept, plan.width, plan.params,
                                                   plan.unchanged)):
        ranks[m.name], params[m.name] = k, n
        if same:
            new_modules.append(m)
            errors[m.name] = 0.0
        elif w == 0:
            dropped.append(m.name)
            errors[m.name] = truncation_error(sp, 0) if sp.size and sp[0] > 0 else 0.0
            changed += 1
        else:
            new = _truncate(m, k, w, sp, dtype)
            if new.num_params != n:  # pragma: no cover - the plan and the module must agree
                raise AssertionError(f"{m.name}: {new.num_params} parameters written, {n} planned")
            new_modules.append(new)
            errors[m.name] = truncation_error(sp, k)
            changed += 1
            if merged is not None and m.family == "dora":
                merged[m.name] = dora_merged_change(m, new, base)
        kept += float(np.sum((sp[: k] / unit) ** 2)) if sp.size else 0.0
        energy += float(np.sum((sp / unit) ** 2))
        if progress is not None:
            progress(i + 1, total)
    scaling = adapter.scaling
    if changed:
        scaling += "; resized modules: scale folded into the factors (scale 1)"
    resized = replace(adapter, modules=new_modules, scaling=scaling, dropped=tuple(dropped))
    if adapter.format == "kohya" and changed:
        resized = replace(resized, file_metadata=kohya_metadata(adapter, resized, how=how))
    retained = kept / energy if energy > 0 else 1.0
    if not math.isfinite(retained):
        raise ConfigError("the resize's retained energy is not finite: the adapter's values overflow float64")
    before, after = adapter.num_params, sum(params.values())
    fmt = default_write_format(adapter)
    # the writer's dry run: every refusal adapter_files would raise, a value too large for the
    # stored dtype included, known now (resized factors settled by their bound sqrt(sigma_1))
    reason = writable(resized, fmt, dtype=dtype, values=True) if changed else None
    notes = _notes(adapter, resized, plan, changed=changed, before=before, after=after, dropped=dropped)
    if merged:
        worst = max(merged, key=merged.get)
        notes.append(f"with the base weights: the merged weights move by up to {merged[worst]:.3g} of their "
                     f"update ||W' - W0||_F ({worst}), against a largest truncation error of s·B·A of "
                     f"{max(errors[n] for n in merged):.3g}")
    return ResizeResult(adapter=resized, ranks=ranks, errors=errors, params_before=before,
                        params_after=after, retained_energy=retained, changed=changed,
                        notes=tuple(notes), params=params, dropped=tuple(dropped), write_format=fmt,
                        unwritable=reason, merged_changes=merged)


def _notes(adapter, resized, plan, *, changed, before, after, dropped) -> list[str]:
    notes = []
    families = adapter.families
    conv = [f for f in families if f in converted_families()]
    if conv and changed:
        ratio = after / before if before else 1.0
        size = (f"at these ranks the LoRA form holds {after:,} parameters against the file's {before:,} "
                f"({ratio:.2f}x)")
        verdict = ("so it does not shrink the file: its own factors store this update more compactly "
                   "than any B·A of the rank the update needs" if after >= before else "a smaller file")
        labels = ", ".join(family(name).label for name in conv)   # "AdaLoRA", as people write it
        notes.append(f"{labels} modules are written as plain LoRA factors of the best rank-k "
                     f"approximation of the same update (the family's own form cannot hold it); {size}, "
                     f"{verdict}")
    if "dora" in families and changed:
        notes.append("DoRA: the directional update s·B·A is replaced by its best rank-k approximation and the "
                     "magnitude vector m is kept, so every row of the merged weight keeps its norm m_i; the "
                     "library renormalises the rows of W0 + s·B_k·A_k, so their directions change, and the "
                     "truncation error shown is that of s·B·A, not of the merged weight")
    if dropped:
        notes.append(f"{len(dropped)} module{'s' if len(dropped) > 1 else ''} left out (rank 0: "
                     f"{'an update that is' if len(dropped) == 1 else 'updates that are'} exactly zero, or "
                     f"given no direction by the budget), e.g. {dropped[0]}; PEFT lists them in "
                     "exclude_modules, other formats have no keys for them")
    if plan.uniform is not None and changed:
        notes.append(f"mlx-lm adapters hold one rank for every module (lora_parameters.rank): every module "
                     f"keeps {plan.uniform} directions, the most any module's target asks for")
    if changed == 0:
        notes.append("nothing to cut: every module's target rank is at or above its rank, so the adapter "
                     "is unchanged")
    return notes


def kohya_metadata(adapter: Adapter, resized: Adapter, *, how: str) -> dict[str, str]:
    """The file's ``__metadata__`` as kohya's ``resize_lora.py`` leaves it: every key kept;
    ``ss_network_dim`` / ``ss_network_alpha`` set to the one new rank and alpha, or
    ``"Dynamic"`` when modules differ; ``ss_training_comment`` says what was resized. (The
    ``sshs_*`` hashes are recomputed by the writer, on the bytes it writes.)"""
    meta = dict(adapter.file_metadata)
    if not meta:
        return meta
    ranks = sorted({m.rank for m in resized.modules})
    alphas = sorted({m.scale * m.rank for m in resized.modules})
    old = max((m.rank for m in adapter.modules), default=0)
    comment = meta.get("ss_training_comment", "")
    if len(ranks) == 1:
        meta["ss_network_dim"] = str(ranks[0])
        meta["ss_network_alpha"] = f"{alphas[0]:g}" if len(alphas) == 1 else "Dynamic"
    else:
        meta["ss_network_dim"] = meta["ss_network_alpha"] = "Dynamic"
    meta["ss_training_comment"] = f"lorarank resize by {how} from {old}; {comment}"
    return meta


def kohya_main_rank(singular_values: np.ndarray, *, rule: str, value: float, min_dim: int,
                    new_rank: int) -> int:
    """The rank kohya's ``resize_lora.py`` (sd-scripts main, 2026-02) keeps for one module.

    Its ``index_sv_*`` functions return the rule's k clamped to ``[1, min_dim - 1]`` (its SVD is
    of the dense ``up @ down``, so it has ``min(d_out, d_in)`` values), then ``rank_resize``
    adds one and caps at ``--new_rank`` (4 unless given); a module with ``sigma_1 <= 1e-6``
    keeps rank 1. lorarank keeps the rule's own k. (sd-scripts PR #2194 drops the extra
    direction for ``sv_fro`` and ``sv_cumulative``; ``sv_ratio`` still adds one there.)

    Parameters
    ----------
    singular_values : ndarray
        Of ``up @ down`` without the scale (kohya merges without it; the rules are scale-free).
    rule : {"sv_ratio", "sv_fro", "sv_cumulative"}
    value : float
    min_dim : int
        ``min(d_out, d_in)``.
    new_rank : int
    """
    from .spectrum import kohya_rank

    s = np.asarray(singular_values, dtype=np.float64)
    if not s.size or s[0] <= 1e-6:
        return 1
    k = kohya_rank(s, rule=rule, value=value)
    k = max(1, min(k, min_dim - 1))
    return min(k + 1, new_rank)
