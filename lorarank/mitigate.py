"""Intruder-dimension mitigation: PEFT's ``reduce_intruder_dimension``, without torch.

For every LoRA module with intruders (:mod:`lorarank.intruders`), PEFT replaces the merged
weight ``W = W0 + dW`` by ``W + (lambda - 1) U_I S_I V_I^T`` (the intruders' singular triplets
of ``W``; ``lambda`` = ``mitigation_lambda``, default 0.75: a quarter of each intruder
removed), divides the new update by the module's scale and keeps its best rank-r
approximation as the new factors, ``B = U_r sqrt(S_r)``, ``A = sqrt(S_r) V_r^T``; modules
without intruders keep their factors. Here the new update is held as factors of rank
``r + |I|`` and its rank-r SVD comes from them (:func:`lorarank.spectrum.factored_svd`): no
dense SVD. The result is written in the input's format, each module in its stored dtype.

Differences from PEFT's function, by design: the base's singular vectors come from the shared
cache (float32 by default, PEFT's precision); a layer stored transposed (``fan_in_fan_out``,
embeddings) gets factors of the right shape (PEFT assigns mis-shaped ones there); conv layers
are left as they are (PEFT decomposes a 4-D weight per kernel position).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ._validate import check_real
from .adapters import Adapter, held_as
from .errors import ConfigError, UnsupportedAdapterError
from .intruders import DEFAULT_EPSILON, DEFAULT_LAMBDA, DEFAULT_TOP_K, mitigation_factors, module_against_base
from .spectrum import factored_svd, single_threaded_blas, truncation_error

__all__ = ["MitigationResult", "mitigate_adapter"]


@dataclass(frozen=True)
class MitigationResult:
    """A mitigated adapter and what changed.

    Attributes
    ----------
    adapter : Adapter
        Same format, names, ranks, scales and extras; new factors where there were intruders.
    intruders : dict of str to int
        Intruders found (and reduced) per module.
    truncation : dict of str to float
        Per changed module, the share of the mitigated update's Frobenius norm lost by keeping
        rank r (PEFT's truncation), ``sqrt(sum_{i>r} sigma^2 / sum sigma^2)``.
    skipped : dict of str to str
        Modules left as they are because the definition does not apply, with why.
    mitigation_lambda, top_k, epsilon : float, int, float
    """

    adapter: Adapter
    intruders: dict[str, int]
    truncation: dict[str, float]
    skipped: dict[str, str]
    mitigation_lambda: float
    top_k: int
    epsilon: float

    @property
    def changed(self) -> list[str]:
        """Modules whose factors changed."""
        return list(self.truncation)

    def to_dict(self) -> dict:
        """JSON-friendly summary (without the factors)."""
        return {"mitigation_lambda": self.mitigation_lambda, "top_k": self.top_k, "epsilon": self.epsilon,
                "modules": len(self.adapter.modules), "changed": len(self.truncation),
                "intruders_total": sum(self.intruders.values()), "intruders": dict(self.intruders),
                "truncation_error": dict(self.truncation), "skipped": dict(self.skipped)}


def mitigate_adapter(adapter: Adapter, base, *, mitigation_lambda: float = DEFAULT_LAMBDA,
                     top_k: int = DEFAULT_TOP_K, epsilon: float = DEFAULT_EPSILON, cache=None,
                     progress: Callable[[int, int], None] | None = None) -> MitigationResult:
    """The intruder-reduced adapter (PEFT's ``reduce_intruder_dimension``), from the files.

    Parameters
    ----------
    adapter : Adapter
        A LoRA adapter (PEFT, kohya, diffusers, mlx-lm, npz; plain LoRA modules).
    base : lorarank.base.BaseWeights
        The base model's weights.
    mitigation_lambda : float, default=0.75
        Share of each intruder direction kept (1 changes nothing, 0 removes them).
    top_k, epsilon : int, float
        The intruder definition's parameters (PEFT's ``top_k``, ``threshold_epsilon``).
    cache : BaseSVDCache, optional
        Where the base's SVDs come from (default: the process-wide cache).
    progress : callable(done, total), optional

    Returns
    -------
    MitigationResult

    Raises
    ------
    ConfigError
        A family other than plain LoRA (PEFT's function supports LoRA only), an init that moved
        the base (mitigate the converted adapter), a bad lambda.
    """
    from .base_svd import shared_cache
    from .inits import init_of

    lam = check_real("mitigation_lambda", mitigation_lambda)
    init = init_of(adapter)
    if init.moves_base:
        raise ConfigError(init.refusal("mitigate"))
    other = [m for m in adapter.modules if m.family != "lora"]
    if other:
        raise ConfigError(f"not mitigated: PEFT's intruder mitigation is defined for plain LoRA, and "
                          f"{len(other)} modules are {other[0].family} (e.g. {other[0].name})")
    cache = cache if cache is not None else shared_cache()
    total = len(adapter.modules)
    modules, counts, cut, skipped = [], {}, {}, {}
    with single_threaded_blas():
        for i, m in enumerate(adapter.modules):
            try:
                analysis = module_against_base(m, base, cache=cache, top_k=top_k, epsilon=epsilon, vectors=True)
            except UnsupportedAdapterError as exc:
                skipped[m.name] = str(exc)
                modules.append(m)
                continue
            counts[m.name] = analysis.intruders.count
            if analysis.vectors is None:
                modules.append(m)
            else:
                modules.append(_mitigated(m, analysis, lam, cut))
            if progress is not None:
                progress(i + 1, total)
    scaling = adapter.scaling + f"; intruders reduced (lambda {lam:g}) in {len(cut)} modules"
    return MitigationResult(adapter=replace(adapter, modules=modules, scaling=scaling), intruders=counts,
                            truncation=cut, skipped=skipped, mitigation_lambda=lam, top_k=int(top_k),
                            epsilon=float(epsilon))


def _mitigated(m, analysis, lam: float, cut: dict):
    from .intruders import update_factors

    L, R = update_factors(m)  # as the layer stores it
    L2, R2 = mitigation_factors(L, R, analysis.vectors, mitigation_lambda=lam)
    if m.transposed:  # back to the update's orientation, (d_out, d_in)
        L2, R2 = R2.T, L2.T
    scale = float(m.scale)
    if scale == 0:
        raise ConfigError(f"module {m.name!r} has scale 0: its update is zero and cannot carry intruders")
    u, s, vt = factored_svd(L2 / scale, R2)   # PEFT: dW_mitigated /= scaling, then its SVD
    r = m.rank
    cut[m.name] = truncation_error(s, r) if s.size else 0.0
    root = np.sqrt(s[:r])
    dtype = m.A.dtype if m.A.dtype.kind == "f" else np.dtype(np.float32)
    B = np.zeros((u.shape[0], r))
    A = np.zeros((r, vt.shape[1]))
    B[:, :root.size] = u[:, :r] * root
    A[:root.size] = root[:, None] * vt[:r]
    what = f"module {m.name!r}: the intruder-reduced factors"
    return replace(m, B=held_as(B, dtype, what=what), A=held_as(A, dtype, what=what), stored_dtype=m.dtype)
