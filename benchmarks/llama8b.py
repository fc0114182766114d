"""The Llama-3-8B-shaped PEFT LoRA adapter the benchmarks audit (one definition for all of them).

32 layers x q, k, v, o, gate, up, down with Llama-3-8B shapes (hidden 4096, kv 1024,
intermediate 14336), r = 16, lora_alpha = 32, bfloat16: 83.9 MB of safetensors. The factors have
a trained-looking decaying spectrum.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors.numpy

HIDDEN, KV, INTER, LAYERS, RANK, ALPHA = 4096, 1024, 14336, 32, 16, 32
SHAPES = {  # module -> (d_out, d_in)
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV, HIDDEN),
    "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTER, HIDDEN),
    "mlp.up_proj": (INTER, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTER),
}
CONFIG = {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "use_rslora": False,
          "rank_pattern": {}, "alpha_pattern": {}, "fan_in_fan_out": False,
          "target_modules": sorted({m.split(".")[-1] for m in SHAPES}), "task_type": "CAUSAL_LM",
          "base_model_name_or_path": "meta-llama/Meta-Llama-3-8B"}


def module_name(layer: int, module: str) -> str:
    """PEFT's module path, e.g. ``base_model.model.model.layers.0.self_attn.q_proj``."""
    return f"base_model.model.model.layers.{layer}.{module}"


def lora_tensors(*, layers: int = LAYERS, seed: int = 0) -> dict[str, np.ndarray]:
    """``{name.lora_A.weight: (r, d_in), name.lora_B.weight: (d_out, r)}`` in bfloat16."""
    rng = np.random.default_rng(seed)
    decay = np.geomspace(1.0, 0.02, RANK).astype(np.float32)  # a trained-looking spectrum
    tensors = {}
    for layer in range(layers):
        for module, (d_out, d_in) in SHAPES.items():
            name = module_name(layer, module)
            a = (rng.standard_normal((RANK, d_in), dtype=np.float32) / np.sqrt(d_in)) * decay[:, None]
            b = rng.standard_normal((d_out, RANK), dtype=np.float32) * 0.01
            tensors[name + ".lora_A.weight"] = a.astype(ml_dtypes.bfloat16)
            tensors[name + ".lora_B.weight"] = b.astype(ml_dtypes.bfloat16)
    return tensors


def adapter_bytes(*, layers: int = LAYERS, seed: int = 0) -> tuple[bytes, bytes]:
    """``(adapter_model.safetensors, adapter_config.json)`` as bytes, written by safetensors."""
    weights = safetensors.numpy.save(lora_tensors(layers=layers, seed=seed), metadata={"format": "pt"})
    return weights, json.dumps(CONFIG, indent=2).encode()


def write_adapter(folder: Path, *, layers: int = LAYERS, seed: int = 0) -> int:
    """Write the PEFT folder (weights + config) into ``folder``; returns the weights' size in bytes."""
    weights, config = adapter_bytes(layers=layers, seed=seed)
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "adapter_config.json").write_bytes(config)
    return len(weights)
