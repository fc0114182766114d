"""Plain LoRA in every key convention: PEFT, kohya / sd-scripts, diffusers, mlx-lm, simple npz.

Formats (PRODUCT.md "Formats")::

               (out, r); <mod>.lora_embedding_A / _B              with use_rslora; rank_pattern and
                                                                  alpha_pattern per module
    kohya      <mod>.lora_down.weight (r, in[, k, k]),            alpha / r; no alpha key: 1
               <mod>.lora_up.weight (out, r[, 1, 1]), <mod>.alpha
    diffusers  <mod>.lora.down.weight / lora.up.weight,           alpha / r with an alpha key, else 1
               <mod>.lora_linear_layer.down.weight / up.weight
    mlx        <mod>.lora_a (in, r), <mod>.lora_b (r, out)        lora_parameters.scale of the config
    npz        <mod>.A (r, in), <mod>.B (out, r), or one pair A/B  alpha / r with an alpha entry, else 1

Orientation comes from the key names only, never from shapes.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import numpy as np

from ..errors import AdapterError
from ._config import number, peft_pattern_key
from ._model import LoraModule
from ._registry import Layout, register
from ._tensors import Tensors, all_finite
from .names import PEFT_PREFIX

__all__ = ["FORMATS", "apply_scales"]

#: Formats lorarank reads, with where their scale comes from.
FORMATS: dict[str, str] = {
    "peft": "lora_alpha / r from adapter_config.json (lora_alpha / sqrt(r) with use_rslora; "
            "rank_pattern / alpha_pattern per module)",
    "kohya": "alpha / r from each module's alpha key; 1 without it",
    "diffusers": "alpha / r with an alpha key, else 1",
    "mlx": "lora_parameters.scale from adapter_config.json",
    "npz": "alpha / r with an alpha entry, else 1",
}

# (format, A-suffix, B-suffix, layout). Layout "ab": A (r, in), B (out, r); "ab_t": the same
# with dW = (B @ A)^T (PEFT embeddings); "mlx": a (in, r), b (r, out).
_PAIRS: tuple[tuple[str, str, str, str], ...] = (
    ("peft", ".lora_A.weight", ".lora_B.weight", "ab"),
    ("peft", ".lora_embedding_A", ".lora_embedding_B", "ab_t"),
    ("kohya", ".lora_down.weight", ".lora_up.weight", "ab"),
    ("diffusers", ".lora.down.weight", ".lora.up.weight", "ab"),
    ("diffusers", ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight", "ab"),
    ("mlx", ".lora_a", ".lora_b", "mlx"),
    ("npz", ".A", ".B", "ab"),
)


def _read_pair(layout: str, tensors: Tensors, name: str, keys: dict[str, str], source: str) -> LoraModule:
    key_a, key_b = keys["A"], keys["B"]
    a = tensors.get(key_a)
    b = tensors.get(key_b)
    label = name or "(unnamed)"
    for key, arr in ((key_a, a), (key_b, b)):
        if arr.ndim < 2:
            raise AdapterError(f"{source}: tensor {key!r} is {arr.ndim}-D with shape {arr.shape}; "
                               "LoRA factors are matrices")
        if arr.size == 0:
            raise AdapterError(f"{source}: tensor {key!r} is empty (shape {arr.shape})")
        if not all_finite(arr):
            raise AdapterError(f"{source}: tensor {key!r} contains NaN or infinite values")
    kernel = None
    transposed = layout == "ab_t"
    if layout == "mlx":
        if a.ndim != 2 or b.ndim != 2:
            raise AdapterError(f"{source}: mlx factors of {label!r} should be 2-D, got {a.shape} and {b.shape}")
        if a.shape[1] != b.shape[0]:
            raise AdapterError(f"{source}: factors of {label!r} do not chain: {key_a} has shape "
                               f"{a.shape} (r = {a.shape[1]}) but {key_b} has shape {b.shape} (r = {b.shape[0]})")
        return LoraModule(name, a.T, b.T, 1.0)
    if a.ndim > 2:
        kernel = tuple(int(d) for d in a.shape[1:])
        a = a.reshape(a.shape[0], -1)
    if b.ndim > 2:
        if any(d != 1 for d in b.shape[2:]):
            raise AdapterError(f"{source}: tensor {key_b!r} has shape {b.shape}; an up factor's kernel "
                               "must be 1 x 1")
        b = b.reshape(b.shape[0], b.shape[1])
    if a.shape[0] != b.shape[1]:
        raise AdapterError(f"{source}: factors of {label!r} do not chain: {key_a} has shape "
                           f"{a.shape} (r = {a.shape[0]}) but {key_b} has shape {b.shape} (r = {b.shape[1]})")
    return LoraModule(name, a, b, 1.0, transposed=transposed, kernel=kernel)


def _scalar(tensors: Tensors, key: str, source: str) -> float:
    arr = tensors.get(key, scalar=True)
    if arr.size != 1:
        raise AdapterError(f"{source}: {key!r} should be a single number, got shape {arr.shape}")
    value = float(np.asarray(arr, dtype=np.float64).reshape(()))
    if not math.isfinite(value) or value <= 0:
        raise AdapterError(f"{source}: {key!r} should be a positive number, got {value}")
    return value


def apply_scales(fmt, modules, tensors, alpha_keys, config, source, *, alpha, scale, rslora):
    def rule(a: float, r: int) -> float:
        return a / math.sqrt(r) if rslora else a / r

    if scale is not None:
        return [replace(m, scale=scale, alpha=None) for m in modules], \
            f"scale {scale:g} for every module, as given by the user"
    if alpha is not None:
        formula = "alpha / sqrt(r)" if rslora else "alpha / r"
        return [replace(m, scale=rule(alpha, m.rank), alpha=alpha) for m in modules], \
            f"alpha {alpha:g} given by the user, scale = {formula} per module"
    if fmt == "peft":
        if config is None:
            return [replace(m, scale=1.0) for m in modules], \
                "no adapter_config.json: scale 1 assumed for every module (give alpha to set it)"
        return _peft_scales(modules, config, source, rslora)
    if fmt == "mlx":
        params = (config or {}).get("lora_parameters")
        if isinstance(params, dict) and "scale" in params:
            s = number("adapter_config.json", "lora_parameters.scale", params["scale"], positive=False)
            return [replace(m, scale=s) for m in modules], \
                f"mlx-lm lora_parameters.scale = {s:g} from adapter_config.json"
        return [replace(m, scale=1.0) for m in modules], \
            "no adapter_config.json with lora_parameters.scale: scale 1 assumed (give scale to set it)"
    # kohya, diffusers, npz: alpha keys (npz also a global `alpha`).
    out, with_alpha = [], 0
    for m in modules:
        key = alpha_keys.get(m.name) or (alpha_keys.get("") if fmt == "npz" else None)
        if key is not None:
            a = _scalar(tensors, key, source)
            out.append(replace(m, scale=a / m.rank, alpha=a))
            with_alpha += 1
        else:
            out.append(replace(m, scale=1.0))
    if with_alpha == len(out):
        note = "alpha / r from the file's alpha entries"
    elif with_alpha == 0:
        note = "no alpha entries in the file: scale 1 for every module (give alpha to set it)"
    else:
        note = (f"alpha / r for the {with_alpha} modules with an alpha entry, scale 1 for the "
                f"{len(out) - with_alpha} without")
    return out, note


def _peft_scales(modules, config, source, rslora):
    name = "adapter_config.json"
    r_default = config.get("r", 8)
    if isinstance(r_default, bool) or not isinstance(r_default, int) or r_default < 1:
        raise AdapterError(f"{name}: `r` should be a positive integer, got {r_default!r}")
    alpha_default = number(name, "lora_alpha", config.get("lora_alpha", 8))
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    for field_name, pattern in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        if not isinstance(pattern, dict):
            raise AdapterError(f"{name}: `{field_name}` should be an object, got {pattern!r}")
    fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
    out = []
    for m in modules:
        inner = m.name[len(PEFT_PREFIX):] if m.name.startswith(PEFT_PREFIX) else m.name
        r_key = peft_pattern_key(rank_pattern, inner)
        a_key = peft_pattern_key(alpha_pattern, inner)
        r = rank_pattern[r_key] if r_key is not None else r_default
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise AdapterError(f"{name}: rank_pattern[{r_key!r}] should be a positive integer, got {r!r}")
        a = number(name, f"alpha_pattern[{a_key!r}]", alpha_pattern[a_key]) if a_key is not None else alpha_default
        if r != m.rank:
            where = f"rank_pattern[{r_key!r}]" if r_key is not None else "`r`"
            raise AdapterError(f"{source}: module {m.name!r} has rank {m.rank} in the weights but "
                               f"{name} gives {where} = {r}")
        s = a / math.sqrt(r) if rslora else a / r
        out.append(replace(m, scale=s, alpha=a, transposed=m.transposed or fan_in_fan_out))
    formula = "lora_alpha / sqrt(r) (use_rslora)" if rslora else "lora_alpha / r"
    extra = []
    if rank_pattern:
        extra.append("rank_pattern")
    if alpha_pattern:
        extra.append("alpha_pattern")
    note = f"PEFT adapter_config.json: scale = {formula}"
    if extra:
        note += " with per-module " + " and ".join(extra)
    if fan_in_fan_out:
        note += "; fan_in_fan_out transposes dW"
    return out, note



for _fmt, _a, _b, _layout in _PAIRS:
    register(Layout(format=_fmt, family="lora", roles=(("A", _a), ("B", _b)), required=("A", "B"),
                    read=partial(_read_pair, _layout)))
