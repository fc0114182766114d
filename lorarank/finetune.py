"""What LoRA rank would a full fine-tune have needed? The update ``W_ft - W0``, module by module.

People who fine-tuned every weight ask the rank question the other way round. For each weight
matrix the fine-tuned model and its base share (every linear layer and conv kernel, and the
embeddings), :func:`audit_finetune` computes the spectrum of the update ``dW = W_ft - W0``:

- the top singular values, by :func:`lorarank.randsvd.top_svd` (block subspace iteration with
  a computed error bound per value, LAPACK's dense SVD for small matrices);
- the energy ranks k(t) at t = 0.5, 0.9, 0.99 of the update's energy: the smallest k with
  ``sum_{i<=k} sigma_i^2 >= t ||dW||_F^2``. The total ``||dW||_F^2`` is summed exactly from the
  entries, so a rank is known as soon as enough values are computed; when more than
  ``max_rank`` would be needed the rank is reported as unknown ("> max_rank"), never guessed;
- the relative error of the best rank-8 / 16 / 64 approximation,
  ``sqrt(1 - sum_{i<=k} sigma_i^2 / ||dW||_F^2)`` (Eckart-Young);
- the stable rank ``||dW||_F^2 / sigma_1^2`` and the relative size ``||dW||_F / ||W0||_F``.

Streaming: one module pair is in memory at a time, read a block of rows at a time (bfloat16 and
float16 decoded per block, exactly), so memory follows the largest module, not the number of
layers. ``dW`` is held in float64, or, when that would pass 512 MiB (an 8B model's embeddings),
in float32 if both weights are stored in 16 bits (their difference is then exact in float32
except when the two differ by more than 2^16 in magnitude, where it is rounded by at most 2^-24
of the larger); every product is float64.

:func:`extract_lora` writes the best rank-k approximation of every module's update as a PEFT
LoRA adapter (``B = U_k``, ``A = U_k^T dW``, ``lora_alpha = r``), at one rank or at the rank
each module needs to keep an energy share; what it cannot hold (embeddings, norms and biases
that changed) is listed, never dropped silently.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from ._validate import check_choice, check_int, check_real
from .adapters.names import PEFT_PREFIX, natural_key, parse_module_name
from .bounded import clip
from .documents import format_seconds
from .errors import AdapterError, ConfigError, LoraRankError
from .randsvd import DEFAULT_TOL, TopSVD, blocked_rmatmul, frobenius_squared, top_svd, uses_dense
from .weights import ModelWeights

__all__ = [
    "FINETUNE_METRICS",
    "ENERGY_THRESHOLDS", "ERROR_RANKS", "DEFAULT_TOP", "DEFAULT_MAX_RANK", "FinetuneSettings",
    "ModulePair", "LeftOut", "Pairing", "pair_models", "FinetuneModule", "FinetuneReport",
    "audit_module", "audit_finetune", "finetune_report", "finetune_reading", "Stopped",
    "ExtractedModule", "Extraction", "extract_lora", "module_update", "Progress", "format_left",
    "check_others", "estimate", "demo_models",
]

#: Rank-map metrics of a fine-tune (a :meth:`FinetuneReport.table` column -> label).
FINETUNE_METRICS: dict[str, str] = {
    "energy_rank_0.5": "LoRA rank for 50 % of the energy",
    "energy_rank_0.9": "LoRA rank for 90 % of the energy",
    "energy_rank_0.99": "LoRA rank for 99 % of the energy",
    "lora_error_8": "error of the best rank 8",
    "lora_error_16": "error of the best rank 16",
    "lora_error_64": "error of the best rank 64",
    "relative_size": "||dW|| / ||W0||",
    "stable_rank": "stable rank",
}

#: Energy shares t of the ranks k(t) every module reports.
ENERGY_THRESHOLDS: tuple[float, ...] = (0.5, 0.9, 0.99)
#: Ranks k whose best-approximation error every module reports.
ERROR_RANKS: tuple[int, ...] = (8, 16, 64)
#: Singular values reported per module.
DEFAULT_TOP = 64
#: Singular values computed at most per module to find the energy ranks.
DEFAULT_MAX_RANK = 256
#: Stored bytes read per block of rows (each block is decoded and widened to float64 in flight).
READ_BYTES = 4 * 2**20
#: An update larger than this in float64 is held in float32 when both weights are 16-bit
#: floats (an 8B model's embeddings and lm_head: 4.2 GB in float64); smaller ones in float64.
FLOAT64_UPDATE_BYTES = 512 * 2**20

#: ``progress(done, total, seconds_left)``: modules finished, modules in all, an estimate of
#: the seconds left (None until one module has finished).
Progress = Callable[[int, int, "float | None"], None]

_EMBEDDING = re.compile(r"(?:^|[._])(?:embed\w*|wte|wpe|tok_embeddings|word_embeddings|"
                        r"position_embeddings|token_type_embeddings|shared)$")
_NORM = re.compile(r"(?i)(norm|ln_?\w*|layernorm)")
#: transformers models whose attention / MLP weights are ``Conv1D`` (stored (in, out)).
_CONV1D_MODELS = ("gpt2", "openai-gpt", "imagegpt", "decision_transformer")
_CONV1D_TYPES = ("c_attn", "c_proj", "c_fc", "q_attn")


class Stopped(LoraRankError):
    """Raised inside a computation when its stop flag is set (caught by the callers here)."""


# ------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class FinetuneSettings:
    """How the spectra are computed (hashable: a cache key for the page).

    Attributes
    ----------
    top : int
        Singular values reported per module (default 64).
    max_rank : int
        Singular values computed at most per module for the energy ranks (default 256; more
        only where the smaller side of the module is smaller). An energy rank above it is
        reported as unknown, "> max_rank".
    tol : float
        Each reported value's error bound is at most ``tol * sigma_1`` (default 1e-6).
    method : {"auto", "randomized", "dense"}
        As :func:`lorarank.randsvd.top_svd`.
    embeddings : bool
        Audit the embedding matrices too (default True); they are never extracted.
    seed : int
        Seed of the randomized start.
    intruders : bool
        Also count intruder dimensions (default False: it costs a dense SVD of every base
        weight, kept in the shared base-SVD cache of :mod:`lorarank.base_svd`).
    top_k, epsilon : int, float
        The intruder definition's knobs (:mod:`lorarank.intruders`; PEFT's 10 and 0.5).
    """

    top: int = DEFAULT_TOP
    max_rank: int = DEFAULT_MAX_RANK
    tol: float = DEFAULT_TOL
    method: str = "auto"
    embeddings: bool = True
    seed: int = 0
    intruders: bool = False
    top_k: int = 10
    epsilon: float = 0.5

    def __post_init__(self) -> None:
        check_int("top", self.top, minimum=1, maximum=4096)
        check_int("max_rank", self.max_rank, minimum=1, maximum=1_000_000)
        check_real("tol", self.tol, minimum=0.0, maximum=0.1, strict_minimum=True)
        check_choice("method", self.method, ("auto", "randomized", "dense"))
        check_int("seed", self.seed, minimum=0)
        check_int("top_k", self.top_k, minimum=1, maximum=4096)
        check_real("epsilon", self.epsilon, minimum=0.0, maximum=1.0)
        for name in ("embeddings", "intruders"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"`{name}` should be True or False, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        out = {"top": self.top, "max_rank": self.max_rank, "tol": self.tol, "method": self.method,
               "embeddings": self.embeddings, "seed": self.seed, "intruders": self.intruders}
        if self.intruders:
            out.update(top_k=self.top_k, epsilon=self.epsilon)
        return out


# -------------------------------------------------------------------------------- pairing
@dataclass(frozen=True)
class ModulePair:
    """One weight matrix the fine-tune and its base share.

    Attributes
    ----------
    name : str
        The fine-tune's key without ``.weight`` (``model.layers.0.self_attn.q_proj``).
    ft_key, base_key : str
        The tensors' keys in each model.
    kind : {"linear", "conv", "embedding"}
    shape : (int, int)
        ``(d_out, d_in)`` of the update (conv kernels flattened to in * kh * kw; GPT-2
        ``Conv1D`` weights, stored (in, out), transposed).
    stored_shape : tuple of int
        As stored.
    transposed : bool
        Stored as (in, out) (GPT-2 ``Conv1D``, PEFT's ``fan_in_fan_out``).
    dtypes : (str, str)
        Stored dtypes (fine-tune, base).
    """

    name: str
    ft_key: str
    base_key: str
    kind: str
    shape: tuple[int, int]
    stored_shape: tuple[int, ...]
    transposed: bool = False
    dtypes: tuple[str, str] = ("F32", "F32")

    @property
    def layer(self) -> int | None:
        return parse_module_name(self.name)[0]

    @property
    def module_type(self) -> str:
        return parse_module_name(self.name)[1]

    @property
    def kernel(self) -> tuple[int, ...] | None:
        """``(in, kh, kw)`` of a conv kernel, else None."""
        return tuple(self.stored_shape[1:]) if self.kind == "conv" else None

    @property
    def cost(self) -> float:
        """A relative cost (for the time left): entries times the basis width."""
        d_out, d_in = self.shape
        return float(d_out) * d_in * min(d_out, d_in, 2 * DEFAULT_TOP + 16)


@dataclass(frozen=True)
class LeftOut:
    """A tensor that is not audited or extracted, and why.

    Attributes
    ----------
    name : str
        The key (in the fine-tune, or in the base for ``only in the base``).
    kind : str
        ``embedding``, ``norm``, ``bias``, ``vector``, ``other``, ``only in the fine-tune``,
        ``only in the base``, ``shape changed``, ``not a float``.
    changed : bool or None
        Whether the fine-tune changed it (None: not compared).
    reason : str
        One sentence.
    """

    name: str
    kind: str
    changed: bool | None
    reason: str

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "changed": self.changed, "reason": self.reason}


@dataclass(frozen=True)
class Pairing:
    """What :func:`pair_models` found: the module pairs and everything else."""

    finetuned: str
    base: str
    pairs: tuple[ModulePair, ...]
    others: tuple[LeftOut, ...]

    def bytes_needed(self, ft: ModelWeights, base: ModelWeights) -> int:
        """Tensor bytes the pairs read from both models."""
        return sum(ft.info(p.ft_key).nbytes + base.info(p.base_key).nbytes for p in self.pairs)


def _is_conv1d(ft: ModelWeights, base: ModelWeights, keys: Sequence[str]) -> bool:
    types = {ft.model_type, base.model_type}
    return bool(types & set(_CONV1D_MODELS)) or any(".c_attn." in k for k in keys)


def _kind_of(key: str, shape: tuple[int, ...]) -> str:
    stem = key[:-len(".weight")] if key.endswith(".weight") else key
    if len(shape) == 2 and _EMBEDDING.search(stem):
        return "embedding"
    if len(shape) == 2:
        return "linear"
    if len(shape) in (3, 4, 5):
        return "conv"
    if key.endswith(".bias"):
        return "bias"
    if _NORM.search(stem.rsplit(".", 1)[-1]) or _NORM.search(stem):
        return "norm"
    return "vector"


def pair_models(finetuned: ModelWeights, base: ModelWeights, *,
                embeddings: bool = True) -> Pairing:
    """Pair every weight matrix of ``finetuned`` with the base's, by name, shapes checked.

    Names are matched as ``--base`` matches adapter modules (:meth:`lorarank.base.BaseWeights.key_for`:
    the same key, or the same canonical name, e.g. a checkpoint saved without ``model.``).
    Nothing is read here.

    Returns
    -------
    Pairing
        ``pairs`` in natural order; ``others`` lists every tensor that is not a pair and why
        (``changed`` is filled later by :func:`audit_finetune`, which compares the small ones).

    Raises
    ------
    AdapterError
        No weight matrix in common (the wrong base?), or a name matching two base keys.
    """
    lookup = base.base_weights()
    pairs: list[ModulePair] = []
    others: list[LeftOut] = []
    used: set[str] = set()
    conv1d = _is_conv1d(finetuned, base, finetuned.keys())
    for key in sorted(finetuned.keys(), key=natural_key):
        info = finetuned.info(key)
        kind = _kind_of(key, info.shape)
        if key in base.entries:
            base_key = key
        elif key.endswith(".weight"):
            try:
                base_key = lookup.key_for(key)
            except AdapterError as exc:
                if "ambiguous" in str(exc):
                    raise
                base_key = None
        else:
            base_key = None
        if base_key is None:
            others.append(LeftOut(key, "only in the fine-tune", None,
                                  "the base has no tensor of this name, so there is no update to measure"))
            continue
        used.add(base_key)
        binfo = base.info(base_key)
        if tuple(binfo.shape) != tuple(info.shape):
            others.append(LeftOut(key, "shape changed", True,
                                  f"{list(binfo.shape)} in the base, {list(info.shape)} in the fine-tune "
                                  "(e.g. a resized vocabulary), so W_ft - W0 is not defined"))
            continue
        if info.dtype not in ("F64", "F32", "F16", "BF16") or binfo.dtype not in ("F64", "F32", "F16", "BF16"):
            others.append(LeftOut(key, "not a float", None,
                                  f"stored as {info.dtype} / {binfo.dtype}, not a float dtype "
                                  "(quantised weights are not supported)"))
            continue
        if kind in ("linear", "conv", "embedding") and key.endswith(".weight") and min(info.shape) > 0:
            if kind == "embedding" and not embeddings:
                others.append(LeftOut(key, "embedding", None, "embeddings were not audited (as asked)"))
                continue
            stored = tuple(int(d) for d in info.shape)
            transposed = (conv1d and kind == "linear"
                          and parse_module_name(key[:-len(".weight")])[1] in _CONV1D_TYPES)
            shape = (stored[0], math.prod(stored[1:]))
            if transposed:
                shape = (stored[1], stored[0])
            pairs.append(ModulePair(key[:-len(".weight")], key, base_key, kind, shape, stored,
                                    transposed, (info.dtype, binfo.dtype)))
            continue
        others.append(LeftOut(key, kind if kind in ("bias", "norm", "vector") else "other", None,
                              _OTHER_REASONS.get(kind, "not a weight matrix, so it has no rank")))
    for key in sorted(set(base.keys()) - used, key=natural_key):
        others.append(LeftOut(key, "only in the base", None,
                              "the fine-tune has no tensor of this name (removed, renamed, or tied)"))
    if not pairs:
        raise AdapterError(f"{finetuned.source} and {base.source} share no weight matrix of the same "
                           f"name and shape: is {base.source} the base this model was fine-tuned from?")
    return Pairing(finetuned.source, base.source, tuple(pairs), tuple(others))


_OTHER_REASONS = {
    "bias": "a bias vector has no rank; a LoRA adapter does not change it",
    "norm": "a normalisation weight is a vector; a LoRA adapter does not change it",
    "vector": "a vector has no rank; a LoRA adapter does not change it",
}


def _compare(ft: ModelWeights, base: ModelWeights, key: str, base_key: str) -> bool:
    """Whether two tensors' stored values differ (read a block at a time)."""
    info = ft.info(key)
    step = max(1, READ_BYTES // max(1, info.nbytes // max(1, info.rows)))
    for start in range(0, info.rows, step):
        a = ft.read(key, start, start + step)
        b = base.read(base_key, start, start + step)
        if not np.array_equal(a, b):
            return True
    return False


#: Largest tensor compared when one of the models is on the Hub (bytes fetched per model).
_REMOTE_COMPARE_BYTES = 1 << 20


def check_others(pairing: Pairing, ft: ModelWeights, base: ModelWeights) -> tuple[LeftOut, ...]:
    """``pairing.others`` with ``changed`` filled in where it can be read cheaply.

    Local models: every float tensor of the same shape in both. A model on the Hub: tensors up
    to 1 MiB (norms, biases); larger ones stay "not compared" (None) rather than be downloaded.
    """
    lookup = base.base_weights()
    remote = getattr(ft, "remote", False) or getattr(base, "remote", False)
    out = []
    for item in pairing.others:
        if item.kind not in ("bias", "norm", "vector", "embedding", "other") or item.changed is not None:
            out.append(item)
            continue
        try:
            base_key = item.name if item.name in base.entries else lookup.key_for(item.name)
        except AdapterError:
            out.append(item)
            continue
        info, binfo = ft.info(item.name), base.info(base_key)
        if (info.shape != binfo.shape or info.dtype not in ("F64", "F32", "F16", "BF16")
                or binfo.dtype not in ("F64", "F32", "F16", "BF16")
                or (remote and max(info.nbytes, binfo.nbytes) > _REMOTE_COMPARE_BYTES)):
            out.append(item)
            continue
        out.append(replace(item, changed=_compare(ft, base, item.name, base_key)))
    return tuple(out)


# ---------------------------------------------------------------------------- the update
def module_update(pair: ModulePair, ft: ModelWeights, base: ModelWeights,
                  check: Callable[[], None] | None = None, *,
                  keep_base: bool = False) -> tuple[np.ndarray, float] | tuple[np.ndarray, float, np.ndarray]:
    """``(dW, ||W0||_F)`` of one pair, ``dW`` as stored (rows of the stored weight, conv
    kernels flattened), read a block of rows at a time; with ``keep_base`` also ``W0`` (same
    layout and dtype as ``dW``).

    ``dW`` is float64, or float32 when it would be over :data:`FLOAT64_UPDATE_BYTES` in float64
    and both weights are stored in 16 bits (the difference of two such numbers is exact in
    float32 unless they differ by more than 2^16 in magnitude).

    Raises
    ------
    AdapterError
        A weight holds NaN or infinite values.
    """
    rows = pair.stored_shape[0]
    cols = math.prod(pair.stored_shape[1:])
    # float64 (every product runs on it directly), unless it would be large and both weights
    # are 16-bit floats, whose difference float32 holds exactly: then float32, converted a block
    # at a time in each product (half the memory, a few times slower).
    sixteen = all(d in ("F16", "BF16") for d in pair.dtypes)
    narrow = sixteen and rows * cols * 8 > FLOAT64_UPDATE_BYTES
    dW = np.empty((rows, cols), dtype=np.float32 if narrow else np.float64)
    W0 = np.empty_like(dW) if keep_base else None
    w0_sq = 0.0
    row_bytes = max(ft.info(pair.ft_key).nbytes, base.info(pair.base_key).nbytes) // max(1, rows)
    # blocks of about READ_BYTES stored bytes: each becomes two float64 copies in flight
    step = max(1, READ_BYTES // max(1, row_bytes))
    for start in range(0, rows, step):
        if check is not None:
            check()
        a = ft.read(pair.ft_key, start, start + step).reshape(-1, cols)
        b = base.read(pair.base_key, start, start + step).reshape(-1, cols)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            where = ft.source if not np.isfinite(a).all() else base.source
            raise AdapterError(f"{pair.ft_key!r} in {where} holds NaN or infinite values")
        if narrow:
            np.subtract(a, b, out=dW[start:start + step])
        else:
            np.subtract(a.astype(np.float64, copy=False), b.astype(np.float64, copy=False),
                        out=dW[start:start + step])
        b64 = b.astype(np.float64, copy=False)
        w0_sq += float(np.einsum("ij,ij->", b64, b64))
        if W0 is not None:
            W0[start:start + step] = b
    if W0 is not None:
        return dW, math.sqrt(w0_sq), W0
    return dW, math.sqrt(w0_sq)


# --------------------------------------------------------------------------- per module
@dataclass(frozen=True)
class FinetuneModule:
    """The update of one module.

    Attributes
    ----------
    name, kind, shape : as in :class:`ModulePair`
    layer, module_type : for the rank map
    singular_values : ndarray
        The top ``settings.top`` singular values of dW (fewer for a smaller module), descending.
    bound : float
        The largest error bound of those values, relative to sigma_1 (each value is within
        ``bound * sigma_1`` of a singular value of dW and never above the one of its index).
    computed : int
        Singular values computed (the energy ranks are known up to this rank).
    energy : float
        ``||dW||_F^2`` (exact sum over the entries).
    base_norm : float
        ``||W0||_F``.
    energy_rank : dict of str to int or None
        k(t) for t in ENERGY_THRESHOLDS ("0.5", ...); None: more than ``computed``.
    lora_error : dict of str to float
        Relative Frobenius error of the best rank-k approximation, k in ERROR_RANKS.
    method : str
    iterations : int
    seconds : float
    flags : tuple of str
        ``unchanged`` (dW is exactly zero), ``not converged`` (the bound did not reach the
        tolerance in ``max_iter`` passes; ``bound`` says how far it got).
    """

    name: str
    kind: str
    shape: tuple[int, int]
    layer: int | None
    module_type: str
    singular_values: np.ndarray
    bound: float
    computed: int
    energy: float
    base_norm: float
    energy_rank: dict
    lora_error: dict
    method: str
    iterations: int
    seconds: float
    dtype: str = "F32"
    flags: tuple[str, ...] = ()
    intruders: dict | None = None

    @property
    def frobenius(self) -> float:
        return math.sqrt(self.energy)

    @property
    def relative_size(self) -> float | None:
        return self.frobenius / self.base_norm if self.base_norm > 0 else None

    @property
    def stable_rank(self) -> float:
        s1 = float(self.singular_values[0]) if self.singular_values.size else 0.0
        return self.energy / (s1 * s1) if s1 > 0 else 0.0

    def to_dict(self) -> dict:
        """The module's entry of ``audit --finetuned --json``."""
        return {
            "name": self.name, "layer": self.layer, "module_type": self.module_type,
            "kind": self.kind, "shape": list(self.shape), "dtype": self.dtype,
            "singular_values": [float(x) for x in self.singular_values],
            "sv_bound": self.bound, "computed": self.computed,
            "energy_rank": dict(self.energy_rank), "lora_error": dict(self.lora_error),
            "frobenius": self.frobenius, "relative_size": self.relative_size,
            "stable_rank": self.stable_rank, "method": self.method, "iterations": self.iterations,
            "seconds": self.seconds, "flags": list(self.flags),
            **({"intruders": self.intruders} if self.intruders is not None else {}),
        }

    def needs(self, threshold: float) -> str:
        """k(t) as text: ``"41"`` or ``"> 256"``."""
        k = self.energy_rank[f"{threshold:g}"]
        return str(k) if k is not None else f"> {self.computed}"


def _energy_ranks(S: np.ndarray, bounds: np.ndarray, energy: float,
                  complete: bool) -> tuple[dict, bool]:
    """``({t: k or None}, unambiguous)`` from computed values.

    ``sum_{i<=k} S_i^2`` is at most the true top-k energy (Ky Fan: it is the energy of dW's
    projection on k orthonormal vectors), so the k found is never above the true one. It is
    the true one unless ``sum_{i<k} (S_i + bound_i)^2`` reaches the share one rank earlier;
    then ``unambiguous`` is False and the caller computes tighter. ``complete``: every
    singular value was computed (dense), the ranks are exact to rounding.
    """
    if energy <= 0:
        return {f"{t:g}": 0 for t in ENERGY_THRESHOLDS}, True
    low = np.cumsum(S * S)
    high = np.cumsum((S + bounds) ** 2)
    out: dict = {}
    unambiguous = True
    for t in ENERGY_THRESHOLDS:
        want = t * energy
        # 1e-12: the exact sum of the entries and the sum of sigma^2 differ by rounding only
        hit = np.nonzero(low >= want * (1 - 1e-12))[0]
        if hit.size == 0:
            out[f"{t:g}"] = None
            continue
        k = int(hit[0]) + 1
        out[f"{t:g}"] = k
        if not complete and k >= 2 and high[k - 2] >= want:
            unambiguous = False
    return out, unambiguous


def _lora_errors(S: np.ndarray, energy: float, small: int) -> dict:
    out = {}
    kept = np.cumsum(S * S)
    for k in ERROR_RANKS:
        if energy <= 0 or k >= small:
            out[str(k)] = 0.0
        else:
            idx = min(k, S.size) - 1
            tail = max(0.0, energy - (float(kept[idx]) if idx >= 0 else 0.0))
            out[str(k)] = math.sqrt(tail / energy)
    return out


def _spectrum(dW: np.ndarray, settings: FinetuneSettings, *, want: int, vectors: bool,
              check: Callable[[], None] | None, energy: float,
              need_share: float | None = None) -> tuple[TopSVD, dict, bool]:
    """Top values of dW, extended (doubling, up to ``settings.max_rank``) until every energy
    rank is found, or, for an extraction by energy, until the projection keeps
    ``need_share`` of the energy; ``(svd, energy ranks, complete)``."""
    small = min(dW.shape)
    k = min(max(want, settings.top, max(ERROR_RANKS)), small)
    cap = max(k, min(settings.max_rank, small))
    tol = settings.tol
    while True:
        if uses_dense(dW.shape, k, method=settings.method):
            k = small  # LAPACK computes them all anyway
        svd = top_svd(dW, k, tol=tol, method=settings.method, vectors=vectors, seed=settings.seed,
                      check=check)
        complete = k >= small
        ranks, unambiguous = _energy_ranks(svd.S, svd.bounds, energy, complete)
        if not unambiguous and tol > 1e-12:
            tol *= 1e-3  # a share falls within the bounds: compute these values tighter
            continue
        if need_share is not None:
            kept = np.einsum("ij,ij->", svd.UtM, svd.UtM)
            missing = not kept >= need_share * energy * (1 - 1e-12)
        else:
            missing = any(v is None for v in ranks.values())
        if not missing or k >= cap:
            return svd, ranks, complete
        k = min(cap, 2 * k)


def audit_module(pair: ModulePair, ft: ModelWeights, base: ModelWeights, *,
                 settings: FinetuneSettings = FinetuneSettings(),
                 check: Callable[[], None] | None = None) -> FinetuneModule:
    """Read one module pair and measure its update (see the module docstring).

    ``check`` is called between row blocks and SVD passes; raising there (e.g.
    :class:`Stopped`) abandons the module.
    """
    started = time.perf_counter()
    W0 = None
    if settings.intruders:
        dW, w0, W0 = module_update(pair, ft, base, check, keep_base=True)
    else:
        dW, w0 = module_update(pair, ft, base, check)
    energy = frobenius_squared(dW)
    small = min(dW.shape)
    intruders = (_intruders(dW, W0, settings, check)
                 if W0 is not None and pair.kind != "embedding" else None)
    del W0
    if energy == 0.0:
        del dW
        zeros = np.zeros(min(settings.top, small))
        return FinetuneModule(pair.name, pair.kind, pair.shape, pair.layer, pair.module_type, zeros,
                              0.0, small, 0.0, w0, {f"{t:g}": 0 for t in ENERGY_THRESHOLDS},
                              {str(k): 0.0 for k in ERROR_RANKS}, "none", 0,
                              time.perf_counter() - started, pair.dtypes[0], ("unchanged",), intruders)
    svd, ranks, _ = _spectrum(dW, settings, want=settings.top, vectors=False, check=check,
                              energy=energy)
    del dW
    S = svd.S
    s1 = float(S[0]) if S.size else 0.0
    flags = () if svd.converged else ("not converged",)
    return FinetuneModule(
        name=pair.name, kind=pair.kind, shape=pair.shape, layer=pair.layer,
        module_type=pair.module_type, singular_values=S[:settings.top].copy(),
        bound=svd.max_bound / s1 if s1 > 0 else 0.0, computed=int(S.size), energy=energy,
        base_norm=w0, energy_rank=ranks, lora_error=_lora_errors(S, energy, small),
        method=svd.method, iterations=svd.iterations, seconds=time.perf_counter() - started,
        dtype=pair.dtypes[0], flags=flags, intruders=intruders)


def _intruders(dW: np.ndarray, W0: np.ndarray, settings: FinetuneSettings,
               check: Callable[[], None] | None) -> dict:
    """PEFT's intruder dimensions of ``W0 + dW`` against ``W0`` (:mod:`lorarank.intruders`),
    with ``W0``'s SVD from the shared base-SVD cache and the top left singular vectors of the
    fine-tuned weight from :func:`top_svd`."""
    from .base_svd import shared_cache
    from .intruders import intruders_dense

    base = shared_cache().get(W0)
    W = W0.astype(np.float64) + dW
    k = min(settings.top_k, min(W.shape))
    top = top_svd(W, k, tol=settings.tol, method=settings.method, vectors=True, seed=settings.seed,
                  check=check)
    total = frobenius_squared(W)
    # intruders_dense takes the SVD as (U, every singular value): the values beyond the top k
    # only enter through their sum of squares, ||W||_F^2, given here as one value.
    tail = math.sqrt(max(0.0, total - float(np.sum(top.S ** 2))))
    found = intruders_dense(base, svd=(top.U, np.r_[top.S, tail]), top_k=settings.top_k,
                            epsilon=settings.epsilon)
    out = found.to_dict()
    if found.indices:
        U_I = top.U[:, list(found.indices)]
        out["share_of_update"] = float(np.sum(blocked_rmatmul(dW, U_I) ** 2)
                                       / max(frobenius_squared(dW), 1e-300))
    else:
        out["share_of_update"] = 0.0
    return out


# ------------------------------------------------------------------------------ the report
@dataclass(frozen=True)
class FinetuneReport:
    """Every module's update (those finished, when stopped early) and what was left out."""

    finetuned: str
    base: str
    settings: FinetuneSettings
    modules: tuple[FinetuneModule, ...]
    others: tuple[LeftOut, ...]
    total: int
    stopped: bool = False
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The ``audit --finetuned --json`` document."""
        return {"finetuned": self.finetuned, "base": self.base, "settings": self.settings.to_dict(),
                "modules": [m.to_dict() for m in self.modules],
                "left_out": [o.to_dict() for o in self.others], "summary": self.summary}

    def table(self) -> list[dict]:
        """One flat row per module (CSV): no lists."""
        rows = []
        for m in self.modules:
            row = {"name": m.name, "layer": m.layer, "module_type": m.module_type, "kind": m.kind,
                   "d_out": m.shape[0], "d_in": m.shape[1]}
            for t in ENERGY_THRESHOLDS:
                row[f"energy_rank_{t:g}"] = m.energy_rank[f"{t:g}"]
            for k in ERROR_RANKS:
                row[f"lora_error_{k}"] = m.lora_error[str(k)]
            row.update({"sigma_1": float(m.singular_values[0]) if m.singular_values.size else 0.0,
                        "frobenius": m.frobenius, "relative_size": m.relative_size,
                        "stable_rank": m.stable_rank, "computed": m.computed, "sv_bound": m.bound,
                        "method": m.method, "flags": ",".join(m.flags)})
            rows.append(row)
        return rows

    def rank_map(self, metric: str = "energy_rank_0.9") -> list[dict]:
        """``{layer, module_type, name, value}`` per module for the rank map (None: unknown)."""
        out = []
        for m, row in zip(self.modules, self.table()):
            out.append({"layer": m.layer, "module_type": m.module_type, "name": m.name,
                        "value": row.get(metric)})
        return out


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else 0.0


def _summary(modules: Sequence[FinetuneModule], others: Sequence[LeftOut], total: int,
             stopped: bool, settings: FinetuneSettings) -> dict:
    by_type: dict[str, list[FinetuneModule]] = {}
    # layered module types first (in layer order), then the rest (embeddings, lm_head)
    ordered = sorted(modules, key=lambda m: (m.layer is None, m.layer or 0))
    for m in ordered:
        if "unchanged" not in m.flags:
            by_type.setdefault(m.module_type, []).append(m)
    needed = {}
    for kind, ms in by_type.items():
        entry = {}
        for t in ENERGY_THRESHOLDS:
            ks = [m.energy_rank[f"{t:g}"] for m in ms]
            known = [k for k in ks if k is not None]
            entry[f"{t:g}"] = {"min": min(known) if known else None,
                               "median": _median(known) if len(known) == len(ks) else None,
                               "max": max(known) if len(known) == len(ks) else None,
                               "unknown": len(ks) - len(known),
                               "computed": min(m.computed for m in ms)}
        needed[kind] = entry
    changed = [o.name for o in others if o.changed]
    intr = [m for m in modules if m.intruders is not None]
    extra = {}
    if intr:
        extra["intruders"] = {"modules_with": sum(1 for m in intr if m.intruders["count"]),
                              "total": sum(m.intruders["count"] for m in intr),
                              "checked": len(intr), "top_k": settings.top_k,
                              "epsilon": settings.epsilon}
    return {
        **extra,
        "modules": total, "done": len(modules), "stopped": stopped,
        "energy_thresholds": [float(t) for t in ENERGY_THRESHOLDS],
        "error_ranks": list(ERROR_RANKS),
        "rank_needed": needed,
        "unchanged": [m.name for m in modules if "unchanged" in m.flags],
        "not_converged": [m.name for m in modules if "not converged" in m.flags],
        "max_sv_bound": max((m.bound for m in modules), default=0.0),
        "left_out": len(others), "left_out_changed": changed,
        "seconds": sum(m.seconds for m in modules),
        "definitions": {
            "singular_values": "of dW = W_ft - W0, descending; each within sv_bound * sigma_1 of "
                               "a true singular value and never above the one of its index",
            "energy_rank": "smallest k with sum_{i<=k} sigma_i^2 >= t * ||dW||_F^2; null: more "
                           "than `computed` (the values computed)",
            "lora_error": "||dW - best rank-k||_F / ||dW||_F",
            "relative_size": "||dW||_F / ||W0||_F",
            "stable_rank": "||dW||_F^2 / sigma_1^2",
        },
    }


def finetune_report(pairing: Pairing, modules: Sequence[FinetuneModule], *,
                    settings: FinetuneSettings = FinetuneSettings(),
                    others: Sequence[LeftOut] | None = None, stopped: bool = False) -> FinetuneReport:
    """Assemble a report from module results (e.g. cached one by one on the page)."""
    others = tuple(pairing.others if others is None else others)
    modules = tuple(modules)
    return FinetuneReport(pairing.finetuned, pairing.base, settings, modules, others,
                          len(pairing.pairs), stopped,
                          _summary(modules, others, len(pairing.pairs), stopped, settings))


def format_left(seconds: float | None) -> str:
    """``", about 40 s left"`` (``""`` when unknown), for progress lines."""
    return "" if seconds is None else f", {format_seconds(seconds)} left"


def _stop_check(stop: Callable[[], bool] | None) -> Callable[[], None] | None:
    if stop is None:
        return None

    def check() -> None:
        if stop():
            raise Stopped("stopped")

    return check


def _eta(pairs: Sequence[ModulePair], done: int, elapsed: float) -> float | None:
    if done == 0:
        return None
    cost_done = sum(p.cost for p in pairs[:done])
    cost_left = sum(p.cost for p in pairs[done:])
    return elapsed * cost_left / cost_done if cost_done > 0 else None


def audit_finetune(finetuned: ModelWeights, base: ModelWeights, *,
                   settings: FinetuneSettings = FinetuneSettings(),
                   progress: Progress | None = None,
                   stop: Callable[[], bool] | None = None) -> FinetuneReport:
    """The update ``W_ft - W0`` of every weight matrix the two models share.

    Parameters
    ----------
    finetuned, base : ModelWeights
        From :func:`lorarank.weights.open_model` (files, folders of shards, ``hf://``).
    settings : FinetuneSettings
    progress : callable(done, total, seconds_left), optional
        Called at the start and after each module.
    stop : callable() -> bool, optional
        Polled between row blocks and SVD passes; once it returns True the module under way is
        abandoned and the report holds the modules finished (``stopped`` True).

    Returns
    -------
    FinetuneReport

    Raises
    ------
    AdapterError
        No shared weight matrix, an invalid file, a weight with NaN.
    HubError
        A model on the Hub that cannot be read, or that needs more bytes than the limit.
    """
    pairing = pair_models(finetuned, base, embeddings=settings.embeddings)
    _check_budget(pairing, finetuned, base)
    check = _stop_check(stop)
    others = check_others(pairing, finetuned, base)
    modules: list[FinetuneModule] = []
    started = time.perf_counter()
    total = len(pairing.pairs)
    if progress is not None:
        progress(0, total, None)
    stopped = False
    for i, pair in enumerate(pairing.pairs):
        try:
            if check is not None:
                check()
            modules.append(audit_module(pair, finetuned, base, settings=settings, check=check))
        except Stopped:
            stopped = True
            break
        if progress is not None:
            progress(i + 1, total, _eta(pairing.pairs, i + 1, time.perf_counter() - started))
    return finetune_report(pairing, modules, settings=settings, others=others, stopped=stopped)


def _check_budget(pairing: Pairing, ft: ModelWeights, base: ModelWeights) -> None:
    """Refuse before reading when a model on the Hub needs more bytes than its limit."""
    for model, keys in ((ft, [p.ft_key for p in pairing.pairs]), (base, [p.base_key for p in pairing.pairs])):
        plan = getattr(model, "check_plan", None)
        if plan is not None:
            plan(keys)


# ------------------------------------------------------------------------------- reading
def finetune_reading(report: FinetuneReport) -> list[str]:
    """Plain words read off the report (markdown with ``**`` emphasis; names are engine words).

    The first sentence answers "what LoRA rank would have captured it", per energy share; the
    next ones per module type, then what rank 8 / 16 / 64 would lose.
    """
    ms = [m for m in report.modules if "unchanged" not in m.flags]
    if not report.modules:
        return ["No module has been measured yet."]
    if not ms:
        return ["Every shared weight matrix is exactly the same in both models: the fine-tune "
                "changed none of them, so no LoRA is needed."]
    out = []
    parts = []
    for t in ENERGY_THRESHOLDS:
        ks = [m.energy_rank[f"{t:g}"] for m in ms]
        known = sorted(k for k in ks if k is not None)
        unknown = len(ks) - len(known)
        share = f"{100 * t:g} %"
        if not known:
            parts.append(f"{share}: more than {min(m.computed for m in ms)} in every module")
        elif unknown:
            parts.append(f"{share}: {known[0]} to {known[-1]} where known, more than "
                         f"{min(m.computed for m in ms if m.energy_rank[f'{t:g}'] is None)} in "
                         f"{unknown} of {len(ks)} modules")
        elif known[0] == known[-1]:
            parts.append(f"{share}: **{known[0]}** in every module")
        else:
            parts.append(f"{share}: **{known[0]} to {known[-1]}** (median {_median(known):g})")
    done = "" if not report.stopped else (f" (stopped after {len(report.modules)} of "
                                         f"{report.total} modules)")
    out.append("To hold a share of each module's update W_ft - W0, a LoRA would need rank "
               + "; ".join(parts) + f"{done}.")
    kinds = report.summary.get("rank_needed", {})
    lines = []
    for kind, entry in kinds.items():
        cells = []
        for t in ENERGY_THRESHOLDS:
            e = entry[f"{t:g}"]
            if e["unknown"] and e["min"] is None:
                cells.append(f"> {e['computed']}")
            elif e["unknown"]:
                cells.append(f"{e['min']} to > {e['computed']}")
            elif e["min"] == e["max"]:
                cells.append(f"{e['max']}")
            else:
                cells.append(f"{e['min']}-{e['max']}")
        lines.append(f"{kind} {' / '.join(cells)}")
    if lines:
        out.append("By module type (rank for " + " / ".join(f"{100 * t:g} %" for t in ENERGY_THRESHOLDS)
                   + " of the energy): " + "; ".join(lines) + ".")
    intr = report.summary.get("intruders")
    if intr:
        out.append(f"Intruder dimensions (PEFT's definition, top {intr['top_k']}, epsilon "
                   f"{intr['epsilon']:g}): {intr['total']} in {intr['modules_with']} of "
                   f"{intr['checked']} modules.")
    unchanged = report.summary.get("unchanged") or []
    if unchanged:
        out.append(f"Unchanged by the fine-tune (no LoRA needed): {', '.join(unchanged[:6])}"
                   + (f" and {len(unchanged) - 6} more" if len(unchanged) > 6 else "") + ".")
    errs = []
    for k in ERROR_RANKS:
        values = [m.lora_error[str(k)] for m in ms if k < min(m.shape)]
        if values:
            errs.append(f"rank {k} leaves {100 * min(values):.0f}-{100 * max(values):.0f} %")
    if errs:
        out.append("Of ||dW||_F, the best LoRA of " + ", ".join(errs) + ".")
    return out


# ---------------------------------------------------------------------------- extraction
@dataclass(frozen=True)
class ExtractedModule:
    """One module of an extraction: its rank, the energy it keeps and the error it leaves."""

    name: str
    rank: int
    shape: tuple[int, int]
    kept: float
    error: float
    bound: float
    energy: float

    def to_dict(self) -> dict:
        return {"name": self.name, "rank": self.rank, "shape": list(self.shape),
                "kept_energy": self.kept, "error": self.error, "sv_bound": self.bound,
                "frobenius": math.sqrt(self.energy)}


@dataclass(frozen=True)
class Extraction:
    """A LoRA adapter extracted from a full fine-tune, and what it keeps and leaves out.

    Attributes
    ----------
    adapter : lorarank.adapters.Adapter
        PEFT format; module names carry PEFT's ``base_model.model.`` prefix.
    modules : tuple of ExtractedModule
    unchanged : tuple of str
        Modules whose update is exactly zero (no LoRA needed there).
    others : tuple of LeftOut
        Everything a LoRA adapter cannot hold (embeddings, norms, biases), with ``changed``.
    target : dict
        ``{"rank": k}`` or ``{"energy": t}``.
    stopped : bool
    """

    adapter: object
    modules: tuple[ExtractedModule, ...]
    unchanged: tuple[str, ...]
    others: tuple[LeftOut, ...]
    target: dict
    total: int
    stopped: bool = False

    @property
    def kept_energy(self) -> float:
        """Share of ``sum ||dW||_F^2`` over the extracted modules that the adapter keeps."""
        total = sum(m.energy for m in self.modules)
        return sum(m.kept * m.energy for m in self.modules) / total if total > 0 else 1.0

    def summary(self) -> dict:
        """What the extraction keeps and leaves out (the CLI and the page print it)."""
        kept = [m.kept for m in self.modules]
        return {
            "target": dict(self.target), "modules": len(self.modules), "of": self.total,
            "stopped": self.stopped,
            "ranks": {"min": min((m.rank for m in self.modules), default=0),
                      "median": _median([m.rank for m in self.modules]),
                      "max": max((m.rank for m in self.modules), default=0)},
            "kept_energy": {"all": self.kept_energy, "min": min(kept, default=1.0),
                            "median": _median(kept)},
            "error": {"max": max((m.error for m in self.modules), default=0.0),
                      "median": _median([m.error for m in self.modules])},
            "params": sum(m.rank * sum(m.shape) for m in self.modules),
            "unchanged": list(self.unchanged),
            "left_out": [o.to_dict() for o in self.others],
            "left_out_changed": [o.name for o in self.others if o.changed],
        }

    def to_dict(self) -> dict:
        """The ``extract --json`` document."""
        return {"modules": [m.to_dict() for m in self.modules], "summary": self.summary()}

    def files(self, *, dtype: str | None = "float32") -> dict[str, bytes]:
        """``adapter_model.safetensors`` and ``adapter_config.json`` as bytes."""
        from .adapters import adapter_files

        return adapter_files(self.adapter, format="peft", dtype=dtype)


def extract_lora(finetuned: ModelWeights, base: ModelWeights, *, rank: int | None = None,
                 energy: float | None = None, settings: FinetuneSettings = FinetuneSettings(),
                 base_model: str | None = None, progress: Progress | None = None,
                 stop: Callable[[], bool] | None = None) -> Extraction:
    """A PEFT LoRA adapter holding the best rank-k approximation of every module's update.

    Parameters
    ----------
    finetuned, base : ModelWeights
    rank : int, optional
        The same rank k for every module (clipped to the module's smaller side).
    energy : float, optional
        Per module, the smallest k whose approximation keeps at least this share of
        ``||dW||_F^2`` (0 < t <= 1); PEFT's ``rank_pattern`` holds the per-module ranks. Give
        exactly one of ``rank`` and ``energy``.
    settings : FinetuneSettings
        ``tol``, ``method`` and ``seed`` apply; ``max_rank`` does not (an energy share is
        always reached, computing as many values as it takes).
    base_model : str, optional
        ``base_model_name_or_path`` written in ``adapter_config.json``.
    progress, stop
        As in :func:`audit_finetune`.

    Returns
    -------
    Extraction

    Notes
    -----
    Each module's factors are ``B = U_k`` and ``A = U_k^T dW`` (``lora_alpha = r``, scale 1):
    ``B @ A`` is the projection of dW on its top-k left singular vectors, the best rank-k
    approximation up to the reported bound, and the energy it keeps, ``||A||_F^2``, is exact
    for what is written (so a rank chosen by energy keeps at least that share). Embedding
    matrices are left out (listed), as are vectors: a LoRA adapter cannot hold them.
    """
    from .adapters import Adapter, LoraModule

    if (rank is None) == (energy is None):
        raise ConfigError("give exactly one of `rank` and `energy`")
    if rank is not None:
        rank = check_int("rank", rank, minimum=1)
    if energy is not None:
        energy = check_real("energy", energy, minimum=0.0, maximum=1.0, strict_minimum=True)
    pairing = pair_models(finetuned, base, embeddings=True)
    others = list(check_others(pairing, finetuned, base))
    pairs = []
    for p in pairing.pairs:
        if p.kind == "embedding":
            others.append(LeftOut(p.ft_key, "embedding", None,
                                  "an embedding is not extracted (a LoRA adapter here holds linear "
                                  "and conv layers only)"))
        else:
            pairs.append(p)
    others = sorted(others, key=lambda o: natural_key(o.name))
    for i, item in enumerate(others):
        if item.kind == "embedding" and item.changed is None:
            others[i] = replace(item, changed=_maybe_changed(item.name, finetuned, base))
    sub = Pairing(pairing.finetuned, pairing.base, tuple(pairs), tuple(others))
    _check_budget(sub, finetuned, base)
    check = _stop_check(stop)
    modules: list[LoraModule] = []
    done: list[ExtractedModule] = []
    unchanged: list[str] = []
    started = time.perf_counter()
    total = len(pairs)
    if progress is not None:
        progress(0, total, None)
    stopped = False
    wide = replace(settings, max_rank=10**6)
    for i, pair in enumerate(pairs):
        try:
            if check is not None:
                check()
            dW, _ = module_update(pair, finetuned, base, check)
            total_energy = frobenius_squared(dW)
            if total_energy == 0.0:
                unchanged.append(pair.name)
            else:
                small = min(dW.shape)
                want = min(rank, small) if rank is not None else min(settings.top, small)
                svd, _, _ = _spectrum(dW, wide if energy is not None else settings, want=want,
                                      vectors=True, check=check, energy=total_energy,
                                      need_share=energy)
                parts = np.einsum("ij,ij->i", svd.UtM, svd.UtM)
                if rank is not None:
                    k = min(rank, svd.S.size)
                else:
                    cum = np.cumsum(parts)
                    k = int(np.searchsorted(cum, energy * total_energy * (1 - 1e-12), side="left")) + 1
                    k = min(k, svd.S.size)
                kept = float(np.sum(parts[:k])) / total_energy
                U, UtM = svd.U[:, :k], svd.UtM[:k]
                if pair.transposed:  # stored (in, out): the layer adds (B @ A)^T
                    B, A = UtM.T, U.T
                else:
                    B, A = U, UtM
                s1 = float(svd.S[0]) if svd.S.size else 0.0
                with np.errstate(over="ignore"):
                    A32, B32 = np.ascontiguousarray(A, dtype=np.float32), np.ascontiguousarray(B, dtype=np.float32)
                if not (np.isfinite(A32).all() and np.isfinite(B32).all()):
                    raise AdapterError(f"{clip(pair.name, 200)}: the update W_ft - W0 is too large for float32 "
                                       f"LoRA factors (sigma_1 = {s1:.4g}); no LoRA of it can be written")
                modules.append(LoraModule(PEFT_PREFIX + pair.name, A32, B32, 1.0, alpha=float(k),
                                          transposed=pair.transposed, kernel=pair.kernel))
                done.append(ExtractedModule(pair.name, k, pair.shape, min(kept, 1.0),
                                            math.sqrt(max(0.0, 1.0 - kept)),
                                            svd.max_bound / s1 if s1 > 0 else 0.0, total_energy))
            del dW
        except Stopped:
            stopped = True
            break
        if progress is not None:
            progress(i + 1, total, _eta(pairs, i + 1, time.perf_counter() - started))
    config = {
        "peft_type": "LORA", "base_model_name_or_path": base_model or base.source,
        "target_modules": [m.name[len(PEFT_PREFIX):] for m in modules],
        "fan_in_fan_out": any(m.transposed for m in modules), "bias": "none", "task_type": None,
        "lora_dropout": 0.0, "init_lora_weights": True,
    }
    adapter = Adapter(format="peft", modules=modules, scaling="lora_alpha / r (= 1: the scale is "
                      "folded into the factors)", source=f"extracted from {finetuned.source}",
                      config=config)
    target = {"rank": rank} if rank is not None else {"energy": energy}
    return Extraction(adapter, tuple(done), tuple(unchanged), tuple(others), target, total, stopped)


def _maybe_changed(key: str, ft: ModelWeights, base: ModelWeights) -> bool | None:
    """Whether an embedding changed, when both are local (reading is free); else None."""
    if getattr(ft, "remote", False) or getattr(base, "remote", False):
        return None
    lookup = base.base_weights()
    try:
        base_key = key if key in base.entries else lookup.key_for(key)
    except AdapterError:
        return None
    if ft.info(key).shape != base.info(base_key).shape:
        return True
    return _compare(ft, base, key, base_key)


# --------------------------------------------------------------------------------- estimate
#: Passes of the subspace iteration assumed by :func:`estimate` (measured: 8 to 30).
_ESTIMATED_PASSES = 20


def estimate(pairs: Sequence[ModulePair], settings: FinetuneSettings = FinetuneSettings()):
    """The work of auditing ``pairs`` (a :class:`lorarank.cost.WorkEstimate`), before it runs.

    Dense SVDs cost about ``2 m n min(m, n)`` multiply-adds; the subspace iteration about
    ``4 m n l`` per pass (two products with an ``l = k + oversample`` wide block) over
    :data:`_ESTIMATED_PASSES` passes; reading and subtracting about ``m n``. With intruders,
    a dense SVD of each base weight on top.
    """
    from .cost import WorkEstimate

    total = WorkEstimate(0.0, 0.0, 0)
    for pair in pairs:
        m, n = pair.shape
        small = min(m, n)
        k = min(max(settings.top, max(ERROR_RANKS)), small)
        if uses_dense((m, n), k, method=settings.method):
            macs = 2.0 * m * n * small
        else:
            l = min(small, 2 * k + 16)
            macs = _ESTIMATED_PASSES * 4.0 * m * n * l
        macs += 4.0 * m * n
        if settings.intruders and pair.kind != "embedding":
            macs += 2.0 * m * n * small
        total = total + WorkEstimate(macs, 200.0, 8 * m * n)
    return total


# ------------------------------------------------------------------------------------- demo
#: The synthetic demo's module types, shapes (hidden 64, MLP 128) and spectral decay exponents.
_DEMO_TYPES = {"self_attn.q_proj": ((64, 64), 1.2), "self_attn.k_proj": ((32, 64), 1.4),
               "self_attn.v_proj": ((32, 64), 0.9), "self_attn.o_proj": ((64, 64), 0.8),
               "mlp.gate_proj": ((128, 64), 0.6), "mlp.up_proj": ((128, 64), 0.6),
               "mlp.down_proj": ((64, 128), 0.5)}


def demo_models(*, layers: int = 2, seed: int = 0) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """A small synthetic base model and a "full fine-tune" of it, as uploaded files.

    Llama-shaped (hidden 64, MLP 128, vocabulary 128, ``layers`` layers), float32. The base
    weights are Gaussian (std 0.05); every projection's update is full rank with singular
    values ``0.4 * i^-a`` (``a`` from 0.5 for down_proj to 1.4 for k_proj, so each module type
    needs its own LoRA rank), the embeddings and norms change a little. Synthetic: not a
    trained model.

    Returns
    -------
    (base files, fine-tuned files)
        ``{"model.safetensors": bytes, "config.json": bytes}`` each.
    """
    import json as _json

    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    base: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.normal(0, 0.05, (128, 64)),
                                   "model.norm.weight": np.ones(64), "lm_head.weight": rng.normal(0, 0.05, (128, 64))}
    ft: dict[str, np.ndarray] = {}
    for layer in range(layers):
        for kind, ((m, n), a) in _DEMO_TYPES.items():
            key = f"model.layers.{layer}.{kind}.weight"
            base[key] = rng.normal(0, 0.05, (m, n))
            q = min(m, n)
            U = np.linalg.qr(rng.standard_normal((m, q)))[0]
            V = np.linalg.qr(rng.standard_normal((n, q)))[0]
            ft[key] = base[key] + (U * (0.4 * np.arange(1, q + 1) ** -a)) @ V.T
        for norm in ("input_layernorm", "post_attention_layernorm"):
            base[f"model.layers.{layer}.{norm}.weight"] = np.ones(64)
    for key, value in base.items():
        if key not in ft:
            ft[key] = value + (rng.normal(0, 0.005, value.shape) if "embed" in key or "norm" in key
                               else 0.0)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": layers, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 128, "tie_word_embeddings": False,
              "lorarank_demo": "synthetic, not a trained model"}
    cfg = (_json.dumps(config, indent=2) + "\n").encode()

    def files(tensors: dict[str, np.ndarray]) -> dict[str, bytes]:
        return {"model.safetensors": save({k: np.ascontiguousarray(v, dtype=np.float32)
                                           for k, v in sorted(tensors.items())}, metadata={"format": "pt"}),
                "config.json": cfg}

    return files(base), files(ft)
