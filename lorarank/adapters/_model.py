"""The data model every reader builds and every computation uses.

:class:`LoraModule` is one adapted layer as an exact small factorisation ``dW = scale * B @ A``
of the update its library applies (with the DoRA magnitude and the LoKr Kronecker factor as the
two documented extensions); :class:`Adapter` is a whole file or folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ._tensors import Buffers

__all__ = ["LoraModule", "Adapter", "Extra"]

@dataclass(frozen=True)
class Extra:
    """A tensor that is not a LoRA factor, kept byte-identical for writing back.

    Attributes
    ----------
    dtype : str
        safetensors dtype name (``"F32"``, ``"BF16"``, ...).
    shape : tuple of int
    loader : callable
        Returns the raw little-endian buffer as stored; read on demand (:attr:`data`), so an
        adapter with a large ``lm_head`` costs no memory until it is written back.
    """

    dtype: str
    shape: tuple[int, ...]
    loader: Callable[[], bytes] = field(repr=False, compare=False)

    @property
    def data(self) -> bytes:
        """The stored bytes."""
        return self.loader()


# ---------------------------------------------------------------------------------- data model
@dataclass(frozen=True)
class LoraModule:
    """One adapted layer: ``dW = scale * B @ A`` (transposed when ``transposed``).

    Attributes
    ----------
    name : str
        Module path without the factor suffix, e.g.
        ``base_model.model.model.layers.0.self_attn.q_proj``.
    A : ndarray of shape (r, d_in)
        Down-projection in the stored dtype (conv kernels flattened to ``in * k * k``).
    B : ndarray of shape (d_out, r)
        Up-projection in the stored dtype.
    scale : float
        The multiplier the format applies.
    alpha : float or None
        The stored or configured alpha, when the format has one.
    transposed : bool
        The layer adds ``(scale * B @ A).T`` (PEFT ``fan_in_fan_out``, embeddings); singular
        values are unaffected.
    kernel : tuple of int or None
        Trailing shape of a conv ``A`` before flattening, e.g. ``(in, 3, 3)``, for writing back.
    family : str
        One of :data:`lorarank.adapters.FAMILIES`: ``"lora"``, ``"dora"``, ``"adalora"``, ``"loha"``, ``"lokr"``,
        ``"locon-tucker"``. ``(B, A, scale)`` is always an exact factorisation of what the
        library applies (see ``magnitude`` and ``kron_left`` for the two exceptions).
    stored_rank : int or None
        The r the file or config declares when it differs from the inner dimension q
        (LoHa: r while q = r1 * r2; AdaLoRA: the stored r). None means q.
    kept_rank : int or None
        AdaLoRA only: the number of nonzero ``lora_E`` entries (the rank its budget left).
    magnitude : ndarray of shape (d_out,) or None
        DoRA only: the magnitude vector m. ``(B, A, scale)`` is then the directional part
        ``s * B @ A``; the true update needs the base weight W0:
        ``dW = diag(m / ||W0 + s B A||_row) (W0 + s B A) - W0`` (row norms over d_in).
    kron_left : ndarray of shape (o1, i1) or None
        LoKr only: ``dW = scale * kron(kron_left, B @ A)``; ``shape`` is then
        ``(o1 * d_out2, i1 * d_in2)``.
    stored_params : int or None
        Parameters the file stores for this module, when not ``q * (d_out + d_in)``.
    stored_dtype : str or None
        The file's dtype when the arrays hold it in another one (``"bfloat16"`` factors are
        held as exact float32, since numpy has no bfloat16). None: the arrays' own dtype.
    """

    name: str
    A: np.ndarray
    B: np.ndarray
    scale: float
    alpha: float | None = None
    transposed: bool = False
    kernel: tuple[int, ...] | None = None
    family: str = "lora"
    stored_rank: int | None = None
    kept_rank: int | None = None
    magnitude: np.ndarray | None = None
    kron_left: np.ndarray | None = None
    stored_params: int | None = None
    stored_dtype: str | None = None

    @property
    def rank(self) -> int:
        """The inner dimension q of ``B @ A`` (the stored rank r for plain LoRA)."""
        return int(self.A.shape[0])

    @property
    def unit_scale_by_design(self) -> bool:
        """True for a LyCORIS LoKr whose two halves are both full matrices (a family whose r is
        a half's dim, :attr:`Family.half_rank`, with no dim stored): LyCORIS trains it with
        alpha forced to dim, so its scale is 1 by the library's rule, not an assumption (the
        file has no alpha to read and none is asked for)."""
        from ._registry import family

        return self.stored_rank is None and family(self.family).half_rank

    @property
    def shape(self) -> tuple[int, int]:
        """``(d_out, d_in)`` of the update (of ``kron(kron_left, B @ A)`` for LoKr)."""
        d_out, d_in = int(self.B.shape[0]), int(self.A.shape[1])
        if self.kron_left is not None:
            o1, i1 = self.kron_left.shape
            return int(o1) * d_out, int(i1) * d_in
        return d_out, d_in

    @property
    def num_params(self) -> int:
        """Parameters the file stores: ``stored_params`` when set, else ``q * (d_out + d_in)``
        (plus ``d_out`` for a DoRA magnitude vector)."""
        if self.stored_params is not None:
            return int(self.stored_params)
        return int(self.A.size + self.B.size + (0 if self.magnitude is None else self.magnitude.size))

    @property
    def dtype(self) -> str:
        """numpy name of the stored dtype (``"bfloat16"``, ``"float32"``, ...)."""
        return self.stored_dtype or str(self.A.dtype.name)

    def factors(self, dtype: object = np.float64, *, buffers: Buffers | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(B, A)`` converted to ``dtype`` (float64 by default) for the linear algebra.

        With ``buffers`` (float64 only) each factor is decoded once into a reused scratch
        array instead of a new one (valid until the next module's factors are taken).
        """
        if buffers is not None and np.dtype(dtype) == np.float64:
            return buffers.float64(self.B, "B"), buffers.float64(self.A, "A")
        return self.B.astype(dtype, copy=False), self.A.astype(dtype, copy=False)


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter as read from disk or an upload.

    Attributes
    ----------
    format : str
        One of :data:`FORMATS`.
    modules : list of LoraModule
        In key order of the file.
    scaling : str
        One sentence saying where the scales came from (or which scale was assumed).
    source : str
        File or folder name(s) it was read from.
    config : dict or None
        ``adapter_config.json`` as read (PEFT, mlx-lm), else None.
    ignored : list of str
        Tensor names that are not LoRA factors (biases, ``modules_to_save``, metadata).
    metadata : dict
        What the file says about its training (kohya ``ss_*`` keys, PEFT
        ``base_model_name_or_path`` / ``target_modules`` / ``peft_type``, mlx
        ``fine_tune_type``, GGUF ``general.*`` / ``adapter.*``), JSON-friendly.
    extras : dict of str to Extra
        The tensors that are not LoRA factors (``modules_to_save`` heads, ``lm_head``,
        trainable-token deltas, ``embed_tokens.base_layer``, ...), kept as raw bytes so that
        writers put them back byte-identical.
    name : str
        The adapter's name inside a multi-adapter folder ("" for a single adapter).
    file_metadata : dict of str to str
        The safetensors ``__metadata__`` verbatim (kohya's ``ss_*`` keys, ``sshs_*`` hashes,
        ``modelspec.*``), for writers that keep it.
    dropped : tuple of str
        Modules a resize left out (their update is exactly zero, or a budget gave them no
        direction): writers write no keys for them, PEFT lists them in ``exclude_modules``.
    """

    format: str
    modules: list[LoraModule]
    scaling: str
    source: str = ""
    config: dict | None = None
    ignored: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    extras: dict[str, Extra] = field(default_factory=dict)
    name: str = ""
    file_metadata: dict[str, str] = field(default_factory=dict, repr=False)
    dropped: tuple[str, ...] = ()

    @property
    def families(self) -> list[str]:
        """Module families, in order of first appearance."""
        return list(dict.fromkeys(m.family for m in self.modules))

    @property
    def num_params(self) -> int:
        """Parameters in all factors."""
        return sum(m.num_params for m in self.modules)

    @property
    def dtypes(self) -> list[str]:
        """Stored dtypes, in order of first appearance."""
        return list(dict.fromkeys(m.dtype for m in self.modules))

    @property
    def ranks(self) -> list[int]:
        """Distinct ranks, ascending."""
        return sorted({m.rank for m in self.modules})

    def module(self, name: str) -> LoraModule:
        """The module called ``name``; raises ConfigError listing a few names otherwise."""
        for m in self.modules:
            if m.name == name:
                return m
        few = ", ".join(m.name for m in self.modules[:3])
        raise ConfigError(f"no module named {name!r} in {self.source or 'the adapter'} (e.g. {few})")

    def describe(self) -> dict:
        """What was detected, JSON-friendly: format, source, scaling, dtypes, ranks, counts."""
        scales = sorted({round(m.scale, 12) for m in self.modules})
        return {
            "format": self.format,
            "families": self.families,
            "name": self.name,
            "source": self.source,
            "scaling": self.scaling,
            "orientation": _orientation_note(self),
            "dtypes": self.dtypes,
            "ranks": self.ranks,
            "scales": scales,
            "modules": len(self.modules),
            "params": self.num_params,
            "ignored_tensors": len(self.ignored),
            "extras": len(self.extras),
            "metadata": dict(self.metadata),
        }


def _orientation_note(adapter: Adapter) -> str:
    notes = {
        "mlx": "lora_a (in, r) and lora_b (r, out) transposed to A (r, in), B (out, r)",
        "kohya": "lora_down is A (r, in), lora_up is B (out, r); conv kernels flattened",
        "diffusers": "down is A (r, in), up is B (out, r)",
    }
    from ._registry import family

    if adapter.modules and all(family(m.family).lycoris for m in adapter.modules):  # LoKr, LoHa
        return "the family's own factors as stored (Kronecker halves or Hadamard pairs; no A, B)"
    note = notes.get(adapter.format, "A (r, in), B (out, r) as stored")
    if any(m.transposed for m in adapter.modules):
        note += "; dW = (scale * B @ A)^T for fan_in_fan_out / embedding modules"
    return note

