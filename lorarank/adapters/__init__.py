"""Reading and writing LoRA adapters: PEFT, kohya / sd-scripts, diffusers, mlx-lm, simple npz.

A package with one module per family and one registry (``_registry.py``): a family module
registers the key layouts it reads, so a new family is one new file imported below.

Every reader has a path twin and a bytes twin: :func:`load_adapter` takes a file or a PEFT
folder, :func:`load_adapter_bytes` takes the uploaded files themselves (name -> bytes), so an
upload needs no temporary file. Both return an :class:`Adapter`: a list of
:class:`LoraModule` (``A`` of shape (q, d_in), ``B`` of shape (d_out, q), in the stored dtype)
plus the scale of each module, computed exactly as the format defines it.

Modules::

    _model.py     LoraModule, Adapter, Extra, FAMILIES (the data model)
    _tensors.py   lazy tensor sources: safetensors (path / bytes), npz (zip-bomb checks)
    _config.py    adapter_config.json parsing, PEFT rank_pattern / alpha_pattern matching
    _registry.py  key layouts each family registers; refused kinds
    lora.py       plain LoRA in PEFT, kohya, diffusers, mlx-lm and npz naming, and its scales
    loha.py, lokr.py, dora.py   (recognised; refused with UnsupportedAdapterError for now)
    _load.py      load_adapter, load_adapter_bytes
    _write.py     adapter_files, save_adapter (peft, kohya, npz)
    names.py      parse_module_name
"""

from __future__ import annotations

# Family modules register their layouts on import: plain LoRA first (its suffixes win).
from . import lora as _lora  # noqa: F401  (registers)
from . import adalora as _adalora, dora as _dora, locon as _locon  # noqa: F401  (register)
from . import loha as _loha, lokr as _lokr  # noqa: F401  (register)
from ._config import check_override, parse_config, peft_pattern_key
from ._load import (PREFERRED_WEIGHTS, WEIGHT_SUFFIXES, choose_weights, load_adapter,
                    load_adapter_bytes, load_adapters, module_layouts, named_adapters)
from ._model import FAMILIES, Adapter, Extra, LoraModule
from ._tensors import (ITEMSIZE, MAX_NPZ_EXPANSION, Buffers, LazyArray, check_safetensors_header, decode_bf16,
                       safetensors_from_bytes, safetensors_from_path, tensor_layout)
from ._write import WRITE_FORMATS, adapter_files, save_adapter
from .lora import FORMATS
from .names import parse_module_name

__all__ = [
    "FORMATS", "FAMILIES", "WRITE_FORMATS", "LoraModule", "Adapter", "Extra", "Buffers", "load_adapter",
    "load_adapter_bytes", "load_adapters", "module_layouts", "named_adapters", "choose_weights",
    "WEIGHT_SUFFIXES", "PREFERRED_WEIGHTS", "adapter_files", "save_adapter", "parse_module_name",
    "peft_pattern_key", "check_override", "MAX_NPZ_EXPANSION", "parse_config", "ITEMSIZE",
    "LazyArray", "check_safetensors_header", "decode_bf16", "safetensors_from_bytes",
    "safetensors_from_path", "tensor_layout"
]
