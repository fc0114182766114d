"""LoHa (PEFT ``LoHaConfig`` and LyCORIS / kohya ``hada_*``), with the optional Tucker cores.

The update is a Hadamard product of two rank-r products,
``dW = scale * (W1a W1b) * (W2a W2b)``. Its exact small factorisation is the row-wise
Khatri-Rao product of the factors:

    (B1 A1) * (B2 A2) = B A,   B[o, (i, j)] = B1[o, i] B2[o, j],   A[(i, j), c] = A1[i, c] A2[j, c]

so ``B`` is (d_out, r1 * r2), ``A`` is (r1 * r2, d_in) and q = r1 * r2 (``stored_rank`` = r,
the dim the scale divides by). The products are formed in float64 (exact to one rounding) on
each use (:class:`LazyArray`): the module holds only the four small factors.
With Tucker cores (``hada_t1`` (r, r, kh, kw), ``hada_w1_a`` (r, out), ``hada_w1_b`` (r, in)),
each half is ``einsum("ijk,ip,jr->prk", t, wa, wb)`` flattened to (out, in * kh * kw), whose
exact rank-r factorisation is ``B = wa.T`` and ``A[i, (r, k)] = sum_j t[i, j, k] wb[j, r]``.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import AdapterError
from ..spectrum import khatri_rao_rows
from ._model import LoraModule
from ._registry import Family, Layout, register, register_family
from ._tensors import LazyArray, Tensors
from .lora import read_factor, stored_size

__all__ = ["tucker_half"]


def tucker_half(t: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Rank-r factors of LyCORIS' ``rebuild_tucker(t, wa, wb)`` flattened to (out, in * prod(k)).

    Returns ``(B, A, kernel)`` with B (out, r), A (r, in * prod(k)) in float64 and
    ``kernel = (in, *k)``.
    """
    t64 = np.asarray(t, dtype=np.float64)
    r = t64.shape[0]
    k = tuple(int(d) for d in t64.shape[2:])
    wb64 = np.asarray(wb, dtype=np.float64)
    n_in = wb64.shape[1]
    core = t64.reshape(r, t64.shape[1], -1)                 # (r, r, K)
    a = np.einsum("ijk,jc->ick", core, wb64).reshape(r, n_in * core.shape[2])
    return np.asarray(wa, dtype=np.float64).T, a, (n_in, *k)


def _half(tensors: Tensors, keys: dict[str, str], n: int, name: str, source: str):
    wa = read_factor(tensors, keys[f"w{n}a"], source)
    wb = read_factor(tensors, keys[f"w{n}b"], source)
    t_key = keys.get(f"t{n}")
    if t_key is not None:
        t = read_factor(tensors, t_key, source, min_ndim=3)
        if wa.ndim != 2 or wb.ndim != 2 or t.shape[0] != wa.shape[0] or t.shape[1] != wb.shape[0]:
            raise AdapterError(f"{source}: LoHa Tucker factors of {name!r} do not chain: {t_key} {t.shape}, "
                               f"{keys[f'w{n}a']} {wa.shape}, {keys[f'w{n}b']} {wb.shape}")
        b, a, kernel = tucker_half(t, wa, wb)
        return b, a, kernel, int(t.shape[0])
    if wa.ndim != 2:
        raise AdapterError(f"{source}: tensor {keys[f'w{n}a']!r} should be 2-D, got shape {wa.shape}")
    kernel = tuple(int(d) for d in wb.shape[1:]) if wb.ndim > 2 else None
    wb2 = wb.reshape(wb.shape[0], -1)
    if wa.shape[1] != wb2.shape[0]:
        raise AdapterError(f"{source}: LoHa factors of {name!r} do not chain: {keys[f'w{n}a']} has shape "
                           f"{wa.shape} but {keys[f'w{n}b']} has shape {wb.shape}")
    return wa, wb2, kernel, int(wa.shape[1])


def _read_loha(tensors: Tensors, name: str, keys: dict[str, str], source: str) -> LoraModule:
    if ("t1" in keys) != ("t2" in keys):
        raise AdapterError(f"{source}: LoHa module {name!r} has only one of hada_t1 / hada_t2")
    b1, a1, k1, r1 = _half(tensors, keys, 1, name, source)
    b2, a2, k2, r2 = _half(tensors, keys, 2, name, source)
    if b1.shape[0] != b2.shape[0] or a1.shape[1] != a2.shape[1]:
        raise AdapterError(f"{source}: the two LoHa halves of {name!r} have different shapes "
                           f"({b1.shape[0]} x {a1.shape[1]} and {b2.shape[0]} x {a2.shape[1]})")
    # Held as the four small factors: the r1*r2-wide float64 products are formed on each use
    # (an 8B-shaped r = 16 LoHa would otherwise hold about 5 GB).
    d_out, d_in, q = b1.shape[0], a1.shape[1], b1.shape[1] * b2.shape[1]
    big_b = LazyArray(lambda: khatri_rao_rows(b1, b2), (d_out, q), np.float64)
    big_a = LazyArray(lambda: khatri_rao_rows(a1.T, a2.T).T, (q, d_in), np.float64)
    return LoraModule(name, big_a, big_b, 1.0, kernel=k1 or k2, family="loha", stored_rank=r1,
                      stored_params=stored_size(tensors, keys))


def _dims(fmt: str, s) -> tuple[int, int, int, int] | None:
    ranks, outs, ins = [], [], []
    for n in (1, 2):
        wa, wb, t = s[f"w{n}a"], s[f"w{n}b"], s.get(f"t{n}")
        if len(wa) != 2 or len(wb) < 2:
            return None
        if t is not None:                  # wa (r, out), wb (r, in), t (r, r, k, k)
            ranks.append(t[0]); outs.append(wa[1]); ins.append(wb[1] * math.prod(t[2:]))
        else:                              # wa (out, r), wb (r, in[, k, k])
            ranks.append(wa[1]); outs.append(wa[0]); ins.append(math.prod(wb[1:]))
    if outs[0] != outs[1] or ins[0] != ins[1]:
        return None
    return ranks[0] * ranks[1], outs[0], ins[0], ranks[0] * ranks[1]


# LyCORIS / kohya and PEFT use the same suffixes; the loader tells them apart (config, prefix).
register_family(Family(
    "loha", "LoHa",
    "dW = scale * (B1 A1) * (B2 A2), as the exact rank-r1*r2 row-wise Khatri-Rao product",
    "update s*(W1a@W1b)*(W2a@W2b) (LoHa, exact rank-r1*r2 Khatri-Rao factors)",
    resize="lora",
    peft_type="LOHA",
    lycoris=True,
    dims=_dims,
    file_rank="stored",
    rank_note="a LoHa module stores two Hadamard halves of rank r each, and their elementwise product, "
              "the update, has rank up to r²"))

register(Layout(format="kohya", family="loha",
                roles=(("w1a", ".hada_w1_a"), ("w1b", ".hada_w1_b"), ("w2a", ".hada_w2_a"),
                       ("w2b", ".hada_w2_b"), ("t1", ".hada_t1"), ("t2", ".hada_t2")),
                required=("w1a", "w1b", "w2a", "w2b"), read=_read_loha))
