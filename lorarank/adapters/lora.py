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
from functools import partial

import numpy as np

from ..errors import AdapterError
from ._model import LoraModule
from ._registry import Family, Layout, register, register_family
from ._tensors import Tensors, all_finite

__all__ = ["FORMATS", "read_pair", "read_factor", "stored_size", "lora_dims"]

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


def read_factor(tensors: Tensors, key: str, source: str, *, min_ndim: int = 2,
                allow_empty: bool = False) -> np.ndarray:
    """One factor tensor, checked: at least ``min_ndim``-D, not empty, finite."""
    arr = tensors.get(key)
    if arr.ndim < min_ndim:
        raise AdapterError(f"{source}: tensor {key!r} is {arr.ndim}-D with shape {arr.shape}; "
                           + ("LoRA factors are matrices" if min_ndim == 2 else f"expected {min_ndim}-D"))
    if arr.size == 0 and not allow_empty:
        raise AdapterError(f"{source}: tensor {key!r} is empty (shape {arr.shape})")
    if not all_finite(arr):
        raise AdapterError(f"{source}: tensor {key!r} contains NaN or infinite values")
    return arr


def stored_size(tensors: Tensors, keys: dict[str, str]) -> int:
    """Number of stored parameters in ``keys`` (from the header, nothing read)."""
    total = 0
    for key in keys.values():
        n = 1
        for d in tensors.entries[key][1]:
            n *= int(d)
        total += n
    return total


def read_pair(layout: str, tensors: Tensors, name: str, keys: dict[str, str], source: str) -> LoraModule:
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


def lora_dims(fmt: str, s) -> tuple[int, int, int, int] | None:
    """``(q, d_out, d_in, lora rank)`` of a LoRA (or DoRA) module from its factors' shapes alone,
    None when they do not chain (screening a header: :class:`~lorarank.adapters._registry.Family`)."""
    a, b = s["A"], s["B"]
    if len(a) < 2 or len(b) < 2:
        return None
    if fmt == "mlx":                       # lora_a (in, r), lora_b (r, out)
        if len(a) != 2 or len(b) != 2 or a[1] != b[0]:
            return None
        return a[1], b[1], a[0], a[1]
    if a[0] != b[1]:
        return None
    return a[0], b[0], math.prod(a[1:]), a[0]


register_family(Family(
    "lora", "LoRA", "dW = scale * B @ A", "update s*B@A",
    resize="own",
    peft_type="LORA",
    dims=lora_dims,
    file_rank="stored"))

for _fmt, _a, _b, _layout in _PAIRS:
    register(Layout(format=_fmt, family="lora", roles=(("A", _a), ("B", _b)), required=("A", "B"),
                    read=partial(read_pair, _layout)))
