"""Reading and writing LoRA adapters: PEFT, kohya, LyCORIS, diffusers, mlx-lm, GGUF, npz.

A package with one module per family and one registry (``_registry.py``): a family module
registers what the family is (:class:`~lorarank.adapters._registry.Family`: description,
spectrum phrase, resize behaviour) and the key layouts it reads. Every public module of this
package is imported below, so a new family is one new file (and its tests).

Every reader has a path twin and a bytes twin: :func:`load_adapter` takes a file or a PEFT
folder, :func:`load_adapter_bytes` takes the uploaded files themselves (name -> bytes), so an
upload needs no temporary file. Both return an :class:`Adapter`: a list of
:class:`LoraModule` (``A`` of shape (q, d_in), ``B`` of shape (d_out, q), in the stored dtype)
plus the scale of each module, computed exactly as the format defines it.

Modules::

    _model.py     LoraModule, Adapter, Extra (the data model)
    _tensors.py   lazy tensor sources: safetensors (path / bytes), npz (zip-bomb checks)
    _config.py    adapter_config.json parsing, PEFT rank_pattern / alpha_pattern matching
    _registry.py  the families and the key layouts they register; refused kinds
    lora.py       plain LoRA in PEFT, kohya, diffusers, mlx-lm and npz naming, and its scales
    dora.py, adalora.py, loha.py, lokr.py, locon.py   the other families, each read exactly
    gguf_lora.py  llama.cpp's GGUF LoRA adapters
    _load.py      load_adapter, load_adapter_bytes, choose_weights
    _write.py     adapter_files, save_adapter (peft, kohya, npz)
    names.py      parse_module_name
"""

from __future__ import annotations

import importlib as _importlib
import os as _os
import pkgutil as _pkgutil

# Family modules register on import: plain LoRA first (its key suffixes win ties), then every
# other public module of the package in name order (a new family is picked up by its file).
from . import lora as _lora  # noqa: F401  (registers)

for _info in _pkgutil.iter_modules([_os.path.dirname(__file__)]):
    if not _info.name.startswith("_"):
        _importlib.import_module(f".{_info.name}", __package__)

from ._config import check_override, parse_config, peft_pattern_key
from ._load import (PREFERRED_WEIGHTS, WEIGHT_SUFFIXES, choose_weights, load_adapter,
                    load_adapter_bytes, load_adapters, module_layouts, named_adapters)
from ._model import Adapter, Extra, LoraModule
from ._registry import Family, families, family
from ._tensors import (ITEMSIZE, MAX_NPZ_EXPANSION, Buffers, LazyArray, check_safetensors_header, decode_bf16,
                       safetensors_from_bytes, safetensors_from_path, tensor_layout)
from ._write import WRITE_FORMATS, adapter_files, default_write_format, held_as, save_adapter, writable
from .lora import FORMATS
from .names import parse_module_name

#: Module families, with what ``(B, A, scale)`` hold for each (as each family registered it).
FAMILIES: dict[str, str] = {name: f.description for name, f in families().items()}

__all__ = [
    "FORMATS", "FAMILIES", "Family", "families", "family", "WRITE_FORMATS", "LoraModule", "Adapter",
    "Extra", "Buffers", "load_adapter",
    "load_adapter_bytes", "load_adapters", "module_layouts", "named_adapters", "choose_weights",
    "WEIGHT_SUFFIXES", "PREFERRED_WEIGHTS", "adapter_files", "save_adapter", "default_write_format", "writable", "held_as", "parse_module_name",
    "peft_pattern_key", "check_override", "MAX_NPZ_EXPANSION", "parse_config", "ITEMSIZE",
    "LazyArray", "check_safetensors_header", "decode_bf16", "safetensors_from_bytes",
    "safetensors_from_path", "tensor_layout"
]
