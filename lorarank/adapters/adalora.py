"""PEFT AdaLoRA: ``lora_A`` (r, in), ``lora_E`` (r, 1), ``lora_B`` (out, r), no ``.weight`` suffix.

PEFT's ``get_delta_weight`` is ``B @ (A * E) * lora_alpha / (ranknum + 1e-5)`` with ranknum =
init_r (not stored). ``E`` is folded into A in float64 (exact: one product per entry), the
number of nonzero E entries is ``kept_rank`` (the rank AdaLoRA's budget left), and a module
pruned to rank 0 (tensors of shape (0, in)) is read with an empty factorisation: its update is
exactly zero.
"""

from __future__ import annotations

import numpy as np

from ..errors import AdapterError
from ._model import LoraModule
from ._registry import Family, Layout, register, register_family
from ._tensors import Tensors
from .lora import read_factor, stored_size

__all__: list[str] = []


def _read_adalora(tensors: Tensors, name: str, keys: dict[str, str], source: str) -> LoraModule:
    a = read_factor(tensors, keys["A"], source, allow_empty=True)
    b = read_factor(tensors, keys["B"], source, allow_empty=True)
    e = read_factor(tensors, keys["E"], source, min_ndim=1, allow_empty=True)
    if a.ndim != 2 or b.ndim != 2:
        raise AdapterError(f"{source}: AdaLoRA factors of {name!r} should be 2-D, got {a.shape} and {b.shape}")
    r = a.shape[0]
    if b.shape[1] != r or e.size != r:
        raise AdapterError(f"{source}: AdaLoRA factors of {name!r} do not chain: lora_A {a.shape}, "
                           f"lora_E {e.shape}, lora_B {b.shape}")
    e64 = np.asarray(e, dtype=np.float64).reshape(r)
    a_folded = np.asarray(a, dtype=np.float64) * e64[:, None]
    return LoraModule(name, a_folded, np.asarray(b, dtype=np.float64), 1.0, family="adalora",
                      kept_rank=int(np.count_nonzero(e64)), stored_params=stored_size(tensors, keys))


register_family(Family(
    "adalora", "AdaLoRA",
    "dW = scale * B @ (E * A), E folded into A; scale = lora_alpha / (ranknum + 1e-5)",
    "update s*B@(A*E) (AdaLoRA, as PEFT's get_delta_weight)",
    resize="lora",
    peft_type="ADALORA"))

register(Layout(format="peft", family="adalora",
                roles=(("A", ".lora_A"), ("B", ".lora_B"), ("E", ".lora_E")),
                required=("A", "B", "E"), read=_read_adalora))
