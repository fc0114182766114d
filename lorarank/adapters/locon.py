"""LyCORIS LoCon with a Tucker core (``use_tucker``): ``lora_down``, ``lora_mid``, ``lora_up``.

On a k x k conv, ``lora_down`` is (r, in, 1, 1), ``lora_mid`` is (r, r, kh, kw) and ``lora_up``
is (out, r, 1, 1); the update is ``dW[o, i, :, :] = scale * sum_ab up[o, a] mid[a, b] down[b, i]``,
of shape (out, in * kh * kw) flattened. The core folds into the down factor exactly:
``A[a, (i, k)] = sum_b mid[a, b, k] down[b, i]`` (float64), so ``dW = scale * up @ A``: a plain
conv LoRA of rank r (written back as one, with ``lora_down`` of shape (r, in, kh, kw)).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import AdapterError
from ._model import LoraModule
from ._registry import Family, Layout, register, register_family
from ._tensors import Tensors
from .lora import read_factor, stored_size

__all__: list[str] = []


def _read_locon_tucker(tensors: Tensors, name: str, keys: dict[str, str], source: str) -> LoraModule:
    down = read_factor(tensors, keys["A"], source)
    up = read_factor(tensors, keys["B"], source)
    mid = read_factor(tensors, keys["mid"], source, min_ndim=3)
    down2 = down.reshape(down.shape[0], down.shape[1], -1)
    up2 = up.reshape(up.shape[0], up.shape[1], -1)
    if down2.shape[2] != 1 or up2.shape[2] != 1:
        raise AdapterError(f"{source}: with a lora_mid core, {keys['A']!r} and {keys['B']!r} should be 1 x 1 "
                           f"convs, got {down.shape} and {up.shape}")
    r_up, r_down = up2.shape[1], down2.shape[0]
    if mid.shape[0] != r_up or mid.shape[1] != r_down:
        raise AdapterError(f"{source}: Tucker factors of {name!r} do not chain: lora_up {up.shape}, "
                           f"lora_mid {mid.shape}, lora_down {down.shape}")
    k = tuple(int(d) for d in mid.shape[2:])
    n_in = int(down2.shape[1])
    core = np.asarray(mid, dtype=np.float64).reshape(r_up, r_down, -1)
    a = np.einsum("abk,bi->aik", core, np.asarray(down2[:, :, 0], dtype=np.float64)).reshape(r_up, -1)
    b = np.asarray(up2[:, :, 0], dtype=np.float64)
    return LoraModule(name, a, b, 1.0, kernel=(n_in, *k), family="locon-tucker", stored_rank=int(r_down),
                      stored_params=stored_size(tensors, keys))


def _dims(fmt: str, s) -> tuple[int, int, int, int] | None:
    down, mid, up = s["A"], s["mid"], s["B"]   # down (r, in, 1, 1), mid (r, r, k, k), up (out, r, 1, 1)
    if len(down) < 2 or len(up) < 2 or len(mid) < 3:
        return None
    return up[1], up[0], down[1] * math.prod(mid[2:]), up[1]


register_family(Family(
    "locon-tucker", "LyCORIS LoCon (Tucker)",
    "dW = scale * up @ (mid x down), the Tucker core folded into A",
    "update s*up@(mid x down) (LoCon, Tucker core folded into the factors)", resize="lora",
    dims=_dims,
    rank_note="a LoCon Tucker module's update up·(mid × down) has rank at most its r"))

register(Layout(format="kohya", family="locon-tucker",
                roles=(("A", ".lora_down.weight"), ("B", ".lora_up.weight"), ("mid", ".lora_mid.weight")),
                required=("A", "B", "mid"), read=_read_locon_tucker))
