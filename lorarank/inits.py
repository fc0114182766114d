"""Adapters whose initialisation moved the base: read them right, or say why not.

PEFT's ``init_lora_weights`` decides where training starts. With the default (``True``:
Kaiming A, zero B) and ``"gaussian"``, ``"eva"``, ``"orthogonal"`` and ``"mica"`` the product
``B @ A`` is zero at step 0 and the base layer is untouched, so ``scale * B @ A`` is the update
(with ``False`` both are random: the adapter's contribution is still ``scale * B @ A``). The
others start ``B`` away from zero *and subtract the start from the base layer*:

=================  =========================================  ===============================
value              what PEFT does at init                      replayable from the base?
=================  =========================================  ===============================
``pissa``          ``B0 A0`` = the top-r SVD part of ``W0``     yes (SVD of ``W0``)
``olora``          ``B0 A0`` = ``Q_r R_r`` from the QR of ``W0``  yes (QR, PEFT's orientation)
``pissa_niter_K``  a randomised top-r SVD (``svd_lowrank``)    no: random, not stored
``corda``          from the data's covariance                  no: needs the training data
``loftq``          quantises ``W0``, fits ``B0 A0`` to the      no: quantisation not in the
                   error                                       files
``lora_ga``        from the data's gradients                   no; PEFT's documented reload
                                                               does not even subtract it
=================  =========================================  ===============================

For those, saved without PEFT's conversion (``save_pretrained(...,
path_initial_model_for_weight_conversion=...)``), the update is
``dW = scale * (B @ A - B0 @ A0)``, not ``scale * B @ A``. :func:`init_of` says which case a file
is; :func:`convert_adapter` replays a deterministic init from the original base weights and
writes what PEFT's conversion writes: a plain LoRA of rank ``2r``, ``A' = [A; A0]``,
``B' = [B, -B0]``, same scale (``r`` and ``lora_alpha`` doubled; ``lora_alpha * sqrt(2)`` with
rsLoRA), ``init_lora_weights: true``, which loads on the original base.

The replay is computed in float64 from the stored base values (``replay="float64"``): the
exact update of the definition. PEFT itself computes the init in float32 with torch, so its
own reload differs from the exact update by float32 rounding of that SVD / QR (up to about
1.3e-6 sigma_1 on the samples); ``replay="torch"`` runs PEFT's float32 arithmetic with torch
(imported only then) and reproduces PEFT's reload to rounding.

LyCORIS and kohya have no initialisation that moves the base (LyCORIS's ``use_scalar`` starts
``lora_up`` non-zero with a zero scalar and saves the scalar folded into ``lora_up``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ._validate import check_choice
from .adapters import Adapter, LoraModule, held_as
from .errors import ConfigError

__all__ = ["InitInfo", "init_of", "moved_modules", "replay_init", "convert_adapter", "REPLAYS",
           "ZERO_START_INITS"]

#: ``init_lora_weights`` values whose ``B @ A`` is the adapter's whole contribution.
ZERO_START_INITS = ("true", "false", "gaussian", "eva", "orthogonal", "mica")
#: How a replay is computed: exactly in float64 (numpy), or as PEFT does it (torch, float32).
REPLAYS = ("float64", "torch")

_CONVERT = ("save it with PEFT's path_initial_model_for_weight_conversion (a plain LoRA of rank 2r), "
            "or run `lorarank convert PATH --base BASE -o OUT`")


@dataclass(frozen=True)
class InitInfo:
    """What an adapter's initialisation means for reading it.

    Attributes
    ----------
    value : object
        ``init_lora_weights`` as the config states it (None when absent).
    name : str
        Normalised: ``"true"``, ``"pissa"``, ``"pissa_niter_16"``, ``"olora"``, ...
    moves_base : bool
        ``scale * B @ A`` (as saved) is not the update: the init was subtracted from the base.
    replay : str or None
        ``"pissa"`` or ``"olora"`` when the init can be recomputed from the original base.
    label : str
        What the file's ``B @ A`` is, as a ``spectrum_of`` phrase (when ``moves_base``).
    sentence : str
        One sentence: what the file is and what would make it auditable ("" when nothing to say).
    """

    value: object
    name: str
    moves_base: bool
    replay: str | None
    label: str
    sentence: str

    def refusal(self, action: str = "resize") -> str:
        """Why ``action`` ("resize", "mitigate") of the file as saved is refused, one sentence."""
        done = {"resize": "resized", "mitigate": "mitigated"}.get(action, action + "d")
        how = (f"convert it first (`lorarank convert PATH --base BASE -o OUT`, with the original base "
               f"weights) and {action} the converted adapter" if self.replay else
               f"only a save converted at training time can be {done}")
        return (f"not {done}: this adapter's init ({self.name}) was subtracted from the base, so s*B@A is not "
                f"its update and would be the wrong matrix to {action}; {how}")

    def to_dict(self) -> dict:
        """JSON-friendly."""
        return {"init_lora_weights": self.value if isinstance(self.value, (bool, str)) or self.value is None
                else str(self.value), "moves_base": self.moves_base, "replayable": self.replay is not None}


#: Known inits that move the base: ``name -> (replay, label, why)``; ``replay`` names the init
#: :func:`replay_init` can redo from the base (None: it cannot), ``why`` is the note, with
#: ``{shown}`` the config's value and ``{convert}`` how to convert.
_MOVED_INITS: dict[str, tuple[str | None, str, str]] = {
    "pissa": ("pissa", "PiSSA", (
        "This adapter was trained with PiSSA ({shown}) and saved without conversion: its B@A still holds "
        "the top-r singular part of the base weight it was cut from, so the update is s*(B@A - B0@A0), not "
        "s*B@A; give the original base weights to replay the init and audit the exact update, or {convert}.")),
    "olora": ("olora", "OLoRA", (
        "This adapter was trained with OLoRA ({shown}) and saved without conversion: its B@A still holds "
        "Q_r R_r from the QR of the base weight, so the update is s*(B@A - B0@A0), not s*B@A; give the "
        "original base weights to replay the init and audit the exact update, or {convert}.")),
    "pissa_niter": (None, "PiSSA (randomised SVD)", (
        "This adapter was trained with PiSSA's randomised SVD ({shown}) and saved without conversion: "
        "B0@A0 came from a random SVD that cannot be replayed, and reloading it the documented way redoes "
        "another random SVD, which does not give back the trained model; only a save converted at training "
        "time (PEFT's path_initial_model_for_weight_conversion) can be audited.")),
    "corda": (None, "CorDA", (
        "This adapter was trained with CorDA ({shown}) and saved without conversion: B0@A0 came from the "
        "training data's covariance, which the files do not hold, so the update s*(B@A - B0@A0) cannot be "
        "recovered; only a save converted at training time (PEFT's path_initial_model_for_weight_conversion) "
        "can be audited.")),
    "loftq": (None, "LoftQ", (
        "This adapter was trained with LoftQ ({shown}): the base was quantised and B0@A0 fitted to the "
        "quantisation error, and neither the quantised base nor B0, A0 are in the files, so the update "
        "cannot be recovered here; audit a save converted at training time instead.")),
    "lora_ga": (None, "LoRA-GA", (
        "This adapter was trained with LoRA-GA ({shown}) and saved without conversion: B0@A0 came from the "
        "training data's gradients and was subtracted from the base; the files do not hold it, and PEFT's "
        "documented reload (PeftModel.from_pretrained on the original base) does not subtract it, so it gives "
        "W0 + s*B@A, not the trained model; only a save converted at training time (PEFT's "
        "path_initial_model_for_weight_conversion) can be audited.")),
}


def init_of(adapter: Adapter) -> InitInfo:
    """Classify the adapter's ``init_lora_weights`` (PEFT LoRA configs; others start at zero).

    Returns
    -------
    InitInfo
    """
    config = adapter.config if adapter.format == "peft" and isinstance(adapter.config, dict) else None
    if config is None or str(config.get("peft_type") or "LORA").upper() != "LORA":
        return InitInfo(None, "true", False, None, "", "")
    value = config.get("init_lora_weights", True)
    name = (("true" if value else "false") if isinstance(value, bool) else str(value).strip().lower())
    if name in ZERO_START_INITS or value is None:
        return InitInfo(value, name if value is not None else "true", False, None, "", "")
    shown = f"init_lora_weights = {value!r}"
    known = _MOVED_INITS.get("pissa_niter" if re.fullmatch(r"pissa_niter_\d+", name) else name)
    if known is not None:
        replay, label, why = known
        return InitInfo(value, name, True, replay, _label(label), why.format(shown=shown, convert=_CONVERT))
    return InitInfo(value, name, True, None, _label(f"init {value!r}"), (
        f"The config names an initialisation lorarank does not know ({shown}): if it starts B away from zero "
        "and subtracts that from the base, s*B@A is not the update, so the spectra are of B@A as stored; "
        "audit a save converted to plain LoRA to be sure."))


def _label(init: str) -> str:
    return (f"B@A as stored, NOT the update: {init} init subtracted from the base and not from these "
            "factors (s*(B@A - B0@A0) is the update)")


def moved_modules(adapter: Adapter) -> list[str]:
    """Names of the modules whose base layer the init moved: PEFT LoRA Linear / Conv1D layers
    (embeddings start at zero whatever the value; conv layers refuse these inits)."""
    if not init_of(adapter).moves_base:
        return []
    fan = bool((adapter.config or {}).get("fan_in_fan_out", False))
    return [m.name for m in adapter.modules
            if getattr(m, "family", "lora") == "lora" and m.kernel is None and (fan or not m.transposed)]


# ------------------------------------------------------------------------------------ replay
def replay_init(kind: str, W0: np.ndarray, *, r: int, scale: float, replay: str = "float64",
                stored_transposed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(B0, A0)``, the factors PEFT's init put in the adapter, recomputed from ``W0``.

    Parameters
    ----------
    kind : {"pissa", "olora"}
    W0 : ndarray of shape (d_out, d_in)
        The original base weight in the update's orientation, float64.
    r : int
    scale : float
        The module's scale (PiSSA divides the singular values by it).
    replay : {"float64", "torch"}, default="float64"
        float64: the exact factors (numpy); torch: PEFT's float32 arithmetic, rounding and all.
    stored_transposed : bool, default=False
        The layer stores its weight transposed (``fan_in_fan_out``): OLoRA's QR runs on the
        stored weight and PEFT then assigns factors of the wrong shape, so it is refused.

    Returns
    -------
    B0 : ndarray of shape (d_out, r)
    A0 : ndarray of shape (r, d_in)
        float64, with ``scale * B0 @ A0`` what PEFT subtracted from the base layer.

    Notes
    -----
    PiSSA: ``W0 = U S V^T``, ``A0 = sqrt(S_r / scale) V_r^T``, ``B0 = U_r sqrt(S_r / scale)``
    (``scale * B0 @ A0 = U_r S_r V_r^T``; the signs of singular vector pairs do not matter).
    OLoRA: ``Q, R = qr(W0)`` (Householder, LAPACK's signs), ``B0 = Q[:, :r]``, ``A0 = R[:r]``;
    the first r columns of Householder QR depend only on ``W0[:, :r]``, so
    ``B0, _ = qr(W0[:, :r])`` and ``A0 = B0^T W0`` are the same numbers at O(m n r).
    """
    kind = check_choice("kind", kind, ("pissa", "olora"))
    replay = check_choice("replay", replay, REPLAYS)
    d_out, d_in = W0.shape
    if not 1 <= r <= min(d_out, d_in):
        raise ConfigError(f"rank {r} does not fit a {d_out} x {d_in} base weight")
    if kind == "olora" and stored_transposed:
        raise ConfigError("PEFT's OLoRA init runs its QR on the weight as stored, which for a fan_in_fan_out "
                          "(Conv1D) layer is transposed, and assigns mis-shaped factors: it cannot be replayed")
    if kind == "pissa" and not scale > 0:
        raise ConfigError(f"PiSSA divides the singular values by the scale, which is {scale:g}: not replayable")
    if replay == "torch":
        return _replay_torch(kind, W0, r, scale)
    if kind == "pissa":
        from .spectrum import operator_svd

        W = np.asarray(W0, dtype=np.float64)
        u, s, vt = operator_svd(lambda X: W @ X, lambda Y: W.T @ Y, W.shape, k=r, vectors=True)
        root = np.sqrt(s[:r] / scale)
        return u[:, :r] * root, root[:, None] * vt[:r]
    W = np.asarray(W0, dtype=np.float64)
    q, _ = np.linalg.qr(W[:, :r])
    return q, q.T @ W


def _replay_torch(kind: str, W0: np.ndarray, r: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """PEFT's own lines (``LoraLayer.pissa_init`` / ``olora_init``) in torch float32."""
    try:
        import torch
    except ImportError:
        raise ConfigError("replay 'torch' needs torch installed (pip install torch); the default float64 "
                          "replay does not") from None
    w = torch.from_numpy(np.ascontiguousarray(W0, dtype=np.float32))
    if kind == "pissa":
        V, S, Uh = torch.linalg.svd(w, full_matrices=False)
        Sr = S[:r] / scale
        A0 = torch.diag(torch.sqrt(Sr)) @ Uh[:r]
        B0 = V[:, :r] @ torch.diag(torch.sqrt(Sr))
    else:
        Q, R = torch.linalg.qr(w)
        B0, A0 = Q[:, :r].contiguous(), R[:r].contiguous()
    return B0.double().numpy(), A0.double().numpy()


# ---------------------------------------------------------------------------------- convert
def convert_adapter(adapter: Adapter, base, *, replay: str = "float64", keep_float64: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> Adapter:
    """PEFT's conversion of a PiSSA / OLoRA adapter to a plain LoRA of rank 2r, from the base.

    Parameters
    ----------
    adapter : Adapter
        A PEFT LoRA adapter whose ``init_lora_weights`` is ``"pissa"`` or ``"olora"``.
    base : lorarank.base.BaseWeights
        The **original** base weights (the model the init was cut from).
    replay : {"float64", "torch"}, default="float64"
        See :func:`replay_init`.
    keep_float64 : bool, default=False
        Keep the new factors in float64 (for auditing); by default they are stored in each
        module's own dtype, as PEFT's conversion stores them.
    progress : callable(done, total), optional

    Returns
    -------
    Adapter
        Same format, modules and extras; every moved module has ``A' = [A; A0]`` (2r x d_in),
        ``B' = [B, -B0]`` (d_out x 2r) and its scale; the config says ``init_lora_weights:
        true`` (the writer derives ``r``, ``lora_alpha`` and the patterns from the modules).

    Raises
    ------
    ConfigError
        The init is not one that can be replayed (the sentence of :func:`init_of`), DoRA.
    AdapterError
        A base weight is missing or does not fit.
    """
    info = init_of(adapter)
    if not info.moves_base:
        raise ConfigError(f"{adapter.source or 'the adapter'} does not need converting: its "
                          f"init_lora_weights ({info.value!r}) leaves the base untouched, so s*B@A is already the update")
    if info.replay is None:
        raise ConfigError(info.sentence)
    config = dict(adapter.config or {})
    if config.get("use_dora"):
        raise ConfigError(f"{info.name} combined with DoRA (use_dora) is not replayed: the magnitude vector was "
                          "initialised on the modified base")
    moved = set(moved_modules(adapter))
    fan = bool(config.get("fan_in_fan_out", False))
    total = len(adapter.modules)
    modules: list[LoraModule] = []
    for i, m in enumerate(adapter.modules):
        if m.name in moved:
            W0 = base.weight(m.name, m.shape, transposed=bool(m.transposed))
            B0, A0 = replay_init(info.replay, W0, r=m.rank, scale=float(m.scale), replay=replay,
                                 stored_transposed=fan)
            B, A = m.factors(np.float64)
            new_a, new_b = np.vstack([A, A0]), np.hstack([B, -B0])
            if not keep_float64:
                dtype = m.A.dtype if m.A.dtype.kind == "f" else np.dtype(np.float32)
                what = f"module {m.name!r}: the converted factors [A; A0], [B, -B0]"
                new_a, new_b = held_as(new_a, dtype, what=what), held_as(new_b, dtype, what=what)
            alpha = None if m.alpha is None else float(m.alpha) * (
                np.sqrt(2.0) if config.get("use_rslora") is True else 2.0)
            m = replace(m, A=new_a, B=new_b, alpha=alpha, stored_dtype=m.dtype)
        modules.append(m)
        if progress is not None:
            progress(i + 1, total)
    config["init_lora_weights"] = True
    note = (f"; {info.name} init replayed from the base ({replay}) and converted as PEFT's "
            "path_initial_model_for_weight_conversion does: A' = [A; A0], B' = [B, -B0], rank 2r")
    return replace(adapter, modules=modules, config=config, scaling=adapter.scaling + note)
