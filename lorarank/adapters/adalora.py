"""PEFT AdaLoRA: ``lora_A`` (r, in), ``lora_E`` (r, 1), ``lora_B`` (out, r), no ``.weight`` suffix.

PEFT's ``get_delta_weight`` is ``B @ (A * E) * lora_alpha / (ranknum + 1e-5)`` with ranknum =
init_r (not stored). ``E`` is folded into A in float64 (exact: one product per entry), the
number of nonzero E entries is ``kept_rank`` (the rank AdaLoRA's budget left), and a module
pruned to rank 0 (tensors of shape (0, in)) is read with an empty factorisation: its update is
exactly zero.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import AdapterError
from ._model import LoraModule
from ._registry import Family, Layout, register, register_family
from ._scales import check_scale, int_field
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


#: PEFT's AdaLoRA divides by ``ranknum + 1e-5``.
_EPS = 1e-5


def _scale(alpha: float, r: int, rslora: bool) -> float:
    return alpha / (r + _EPS)


def _peft_scales(modules: list[LoraModule], config: dict, name: str, *, alpha: float,
                 fan_in_fan_out: bool) -> tuple[list[LoraModule], str]:
    # rank_pattern holds AdaLoRA's boolean masks, not ranks; ranknum stays at init_r.
    init_r = int_field(name, "init_r", config.get("init_r", 12))
    out = []
    for m in modules:
        ranknum = init_r if m.rank else 0   # a module pruned to rank 0 reloads with ranknum 0
        s = check_scale(_scale(alpha, ranknum, False), f"{name} lora_alpha = {alpha:g}")
        out.append(replace(m, scale=s, alpha=alpha, stored_rank=init_r, transposed=m.transposed or fan_in_fan_out))
    return out, (f"PEFT AdaLoRA adapter_config.json: scale = lora_alpha / (ranknum + 1e-5) with "
                 f"ranknum = init_r = {init_r}; lora_E folded into A")


def _dims(fmt: str, s) -> tuple[int, int, int, int] | None:
    a, b = s["A"], s["B"]
    if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
        return None
    return a[0], b[0], a[1], a[0]


register_family(Family(
    "adalora", "AdaLoRA",
    "dW = scale * B @ (E * A), E folded into A; scale = lora_alpha / (ranknum + 1e-5)",
    "update s*B@(A*E) (AdaLoRA, as PEFT's get_delta_weight)",
    resize="lora",
    peft_type="ADALORA",
    dims=_dims,
    rank_note="an AdaLoRA module's r is the number of directions its budget kept (nonzero E entries) of the "
              "init_r it started from",
    scale_rule=_scale,
    peft_scales=_peft_scales))

register(Layout(format="peft", family="adalora",
                roles=(("A", ".lora_A"), ("B", ".lora_B"), ("E", ".lora_E")),
                required=("A", "B", "E"), read=_read_adalora))
