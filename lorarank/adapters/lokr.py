"""LoKr (PEFT ``LoKrConfig`` and LyCORIS / kohya ``lokr_*``): a Kronecker product.

``dW = scale * kron(W1, W2)`` with ``W1 = lokr_w1`` or ``lokr_w1_a @ lokr_w1_b`` (small, dense:
``kron_left``) and ``W2 = lokr_w2`` (full), ``lokr_w2_a @ lokr_w2_b`` or the Tucker fold of
``lokr_t2`` (``einsum("ijk,ip,jr->prk", t2, w2_a, w2_b)``), flattened to (o2, i2 * kh * kw).
The module keeps ``kron_left = W1`` and ``(B, A)`` an exact factorisation of W2 (a full W2 as
itself times an identity, on its smaller side). The singular values are all products
sigma(W1)_i * sigma(W2)_j. ``stored_rank`` is the dim of the factorised half, or None when
both halves are full (LyCORIS then applies scale 1; PEFT still applies alpha / r).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import AdapterError
from ._model import LoraModule
from ._registry import Family, Layout, register, register_family
from ._tensors import Tensors
from .loha import tucker_half
from .lora import read_factor, stored_size

__all__: list[str] = []


def _read_lokr(tensors: Tensors, name: str, keys: dict[str, str], source: str) -> LoraModule:
    # Left half W1.
    r: int | None = None
    if "w1" in keys:
        if "w1a" in keys or "w1b" in keys:
            raise AdapterError(f"{source}: LoKr module {name!r} has both lokr_w1 and lokr_w1_a / lokr_w1_b")
        w1 = read_factor(tensors, keys["w1"], source)
        if w1.ndim != 2:
            raise AdapterError(f"{source}: tensor {keys['w1']!r} should be 2-D, got shape {w1.shape}")
    elif "w1a" in keys and "w1b" in keys:
        w1a = read_factor(tensors, keys["w1a"], source)
        w1b = read_factor(tensors, keys["w1b"], source)
        if w1a.ndim != 2 or w1b.ndim != 2 or w1a.shape[1] != w1b.shape[0]:
            raise AdapterError(f"{source}: LoKr factors of {name!r} do not chain: lokr_w1_a {w1a.shape}, "
                               f"lokr_w1_b {w1b.shape}")
        w1 = np.asarray(w1a, dtype=np.float64) @ np.asarray(w1b, dtype=np.float64)
        r = int(w1a.shape[1])
    else:
        raise AdapterError(f"{source}: LoKr module {name!r} has no lokr_w1 (nor lokr_w1_a and lokr_w1_b)")
    # Right half W2 as (B, A).
    kernel = None
    if "w2" in keys:
        if "w2a" in keys or "w2b" in keys or "t2" in keys:
            raise AdapterError(f"{source}: LoKr module {name!r} has both lokr_w2 and its factors")
        w2 = read_factor(tensors, keys["w2"], source)
        if w2.ndim > 2:
            kernel = tuple(int(d) for d in w2.shape[1:])
        w2 = w2.reshape(w2.shape[0], -1)
        o2, i2 = w2.shape
        if o2 <= i2:
            b, a = np.eye(o2, dtype=w2.dtype), w2
        else:
            b, a = w2, np.eye(i2, dtype=w2.dtype)
    elif "w2a" in keys and "w2b" in keys:
        w2a = read_factor(tensors, keys["w2a"], source)
        w2b = read_factor(tensors, keys["w2b"], source)
        if "t2" in keys:
            t2 = read_factor(tensors, keys["t2"], source, min_ndim=3)
            if w2a.ndim != 2 or w2b.ndim != 2 or t2.shape[0] != w2a.shape[0] or t2.shape[1] != w2b.shape[0]:
                raise AdapterError(f"{source}: LoKr Tucker factors of {name!r} do not chain: lokr_t2 {t2.shape}, "
                                   f"lokr_w2_a {w2a.shape}, lokr_w2_b {w2b.shape}")
            b, a, kernel = tucker_half(t2, w2a, w2b)
        else:
            if w2a.ndim != 2:
                raise AdapterError(f"{source}: tensor {keys['w2a']!r} should be 2-D, got shape {w2a.shape}")
            if w2b.ndim > 2:
                kernel = tuple(int(d) for d in w2b.shape[1:])
            w2b = w2b.reshape(w2b.shape[0], -1)
            if w2a.shape[1] != w2b.shape[0]:
                raise AdapterError(f"{source}: LoKr factors of {name!r} do not chain: lokr_w2_a {w2a.shape}, "
                                   f"lokr_w2_b {w2b.shape}")
            b, a = w2a, w2b
        r = int(b.shape[1])
    else:
        raise AdapterError(f"{source}: LoKr module {name!r} has no lokr_w2 (nor lokr_w2_a and lokr_w2_b)")
    if kernel is not None:
        kernel = (int(w1.shape[1]) * kernel[0], *kernel[1:])
    return LoraModule(name, a, b, 1.0, kernel=kernel, family="lokr", stored_rank=r, kron_left=w1,
                      stored_params=stored_size(tensors, keys))


def _dims(fmt: str, s) -> tuple[int, int, int, int] | None:
    if "w1" in s:
        o1, i1 = s["w1"][0], math.prod(s["w1"][1:])
    elif "w1a" in s and "w1b" in s:
        o1, i1 = s["w1a"][0], math.prod(s["w1b"][1:])
    else:
        return None
    if "w2" in s:
        o2, i2 = s["w2"][0], math.prod(s["w2"][1:])
        q = min(o2, i2)
    elif "w2a" in s and "w2b" in s:
        if "t2" in s:                      # w2a (r, out), w2b (r, in), t2 (r, r, k, k)
            q, o2, i2 = s["t2"][0], s["w2a"][1], s["w2b"][1] * math.prod(s["t2"][2:])
        else:
            q, o2, i2 = s["w2a"][1], s["w2a"][0], math.prod(s["w2b"][1:])
    else:
        return None
    return q, o1 * o2, i1 * i2, min(o1, i1) * min(q, o2, i2)


register_family(Family(
    "lokr", "LoKr", "dW = scale * kron(kron_left, B @ A)",
    "update s*kron(W1, W2) (LoKr, products of the halves' singular values)",
    resize="lora",
    peft_type="LOKR",
    lycoris=True,
    half_rank=True,
    dims=_dims,
    lora_rank="spectrum",
    rank_note="a LoKr module's r is the rank of its factorised half W2, and the update kron(W1, W2) has "
              "rank rank(W1)·rank(W2)"))

register(Layout(format="kohya", family="lokr",
                roles=(("w1", ".lokr_w1"), ("w1a", ".lokr_w1_a"), ("w1b", ".lokr_w1_b"),
                       ("w2", ".lokr_w2"), ("w2a", ".lokr_w2_a"), ("w2b", ".lokr_w2_b"), ("t2", ".lokr_t2")),
                required=(), read=_read_lokr))
