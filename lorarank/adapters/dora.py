"""DoRA: PEFT ``lora_magnitude_vector``, mlx-lm ``.m`` (``fine_tune_type: dora``), LyCORIS ``dora_scale``.

DoRA stores a LoRA pair plus a magnitude vector m of shape (d_out,). The library applies

    dW = diag(m / ||W0 + s B A||_row) (W0 + s B A) - W0      (row norms over the input dimension)

so the module keeps ``(B, A, scale)`` as the directional part ``s * B @ A`` (exact, read as plain
LoRA in that key convention) and ``magnitude = m``; the true dW needs the base weight W0.
LyCORIS stores ``dora_scale`` either per output row (``wd_on_out``; shape (out, 1, ...)), which is
this model, or per input column (shape (1, in, ...)), which is refused by name.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import AdapterError, UnsupportedAdapterError
from ._model import LoraModule
from ._registry import Family, Layout, register, register_family
from ._tensors import Tensors
from .lora import lora_dims, read_factor, read_pair

__all__: list[str] = []


def _read_dora(layout: str, tensors: Tensors, name: str, keys: dict[str, str], source: str) -> LoraModule:
    base = read_pair(layout, tensors, name, {"A": keys["A"], "B": keys["B"]}, source)
    key = keys["magnitude"]
    m = read_factor(tensors, key, source, min_ndim=1)
    d_out, d_in = base.shape
    if m.size == d_out and all(d == 1 for i, d in enumerate(m.shape) if i != 0):
        magnitude = m.reshape(d_out)
    elif m.ndim >= 2 and m.shape[0] == 1 and m.shape[1] * int(np.prod(m.shape[2:], dtype=np.int64)) in (d_in, m.shape[1]):
        raise UnsupportedAdapterError(
            f"{source}: {key!r} has shape {tuple(m.shape)}, a LyCORIS DoRA magnitude per input column "
            "(wd_on_out off), which lorarank does not audit yet")
    else:
        raise AdapterError(f"{source}: magnitude {key!r} has shape {tuple(m.shape)}; module {name!r} "
                           f"has {d_out} output rows")
    return replace(base, family="dora", magnitude=magnitude, stored_params=base.num_params + int(m.size))


register_family(Family(
    "dora", "DoRA",
    "directional part scale * B @ A; magnitude m rescales the rows of W0 + scale * B @ A",
    "directional part s*B@A (DoRA, no base weights): not the update, which rescales the rows "
    "of W0 + s*B@A by the magnitude vector",
    resize="own",
    spectrum_with_base="update merged - W0 (DoRA, exact with the base weights)",
    peft_type="LORA",
    dims=lora_dims))

for _fmt, _a, _b, _m, _layout in (
    ("peft", ".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector", "ab"),
    ("peft", ".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector.weight", "ab"),
    ("kohya", ".lora_down.weight", ".lora_up.weight", ".dora_scale", "ab"),
    ("mlx", ".lora_a", ".lora_b", ".m", "mlx"),
):
    register(Layout(format=_fmt, family="dora", roles=(("A", _a), ("B", _b), ("magnitude", _m)),
                    required=("A", "B", "magnitude"),
                    read=lambda t, n, k, s, _layout=_layout: _read_dora(_layout, t, n, k, s)))
