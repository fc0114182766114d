"""What a file says about its training: kohya ``ss_*``, PEFT config, mlx-lm config, GGUF keys.

Only a fixed list of fields is kept, each as a short JSON-friendly value (strings capped at
200 characters, dataset tags summarised to the ten most frequent), so a hostile file cannot
make the summary large.
"""

from __future__ import annotations

import json
import math

__all__ = ["training_metadata", "KOHYA_KEYS", "PEFT_KEYS"]

KOHYA_KEYS = ("ss_base_model_version", "ss_sd_model_name", "ss_network_module", "ss_network_dim",
              "ss_network_alpha", "ss_network_args", "ss_optimizer", "ss_learning_rate", "ss_unet_lr",
              "ss_text_encoder_lr", "ss_num_epochs", "ss_max_train_steps", "ss_num_train_images",
              "ss_resolution", "ss_training_started_at", "modelspec.architecture", "modelspec.title")
PEFT_KEYS = ("peft_type", "base_model_name_or_path", "task_type", "target_modules", "modules_to_save",
             "r", "lora_alpha", "alpha", "init_r", "target_r", "use_rslora", "use_dora", "peft_version")
MLX_KEYS = ("fine_tune_type", "num_layers", "lora_parameters", "model", "iters", "learning_rate")
_MAX_TEXT = 200


def _short(value: object) -> object:
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT] + "..."
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_short(v) for v in list(value)[:20]]
    if isinstance(value, dict):
        return {str(k)[:_MAX_TEXT]: _short(v) for k, v in list(value.items())[:20]}
    return str(value)[:_MAX_TEXT]


def _tags(text: str) -> dict[str, int] | str:
    """The ten most frequent dataset tags of kohya's ``ss_tag_frequency`` ({dir: {tag: n}})."""
    from ..bounded import load_json
    from ..errors import AdapterError

    try:
        data = load_json("ss_tag_frequency", text, what="tag list", max_bytes=4 * 2**20)
    except AdapterError as exc:
        return f"(unreadable: {exc})"
    counts: dict[str, int] = {}
    if isinstance(data, dict):
        for tags in data.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    # JSON's Infinity / NaN and negative counts are not counts (int(inf) raises)
                    if isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n) and n >= 0:
                        counts[str(tag)[:80]] = counts.get(str(tag)[:80], 0) + int(n)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return dict(top)


def training_metadata(config: dict | None, st_metadata: dict[str, str], fmt: str) -> dict:
    """The training facts a file states, JSON-friendly (empty when it states none)."""
    out: dict[str, object] = {}
    for key in KOHYA_KEYS:
        if key in st_metadata:
            out[key] = _short(st_metadata[key])
    if "ss_tag_frequency" in st_metadata:
        out["ss_tag_frequency (top 10)"] = _tags(st_metadata["ss_tag_frequency"])
    if "lora_adapter_metadata" in st_metadata:
        out["lora_adapter_metadata"] = "present (diffusers: alpha and r per component)"
    for key, value in st_metadata.items():
        if key.startswith(("general.", "adapter.")):
            out[key] = _short(value)
    if config:
        keys = MLX_KEYS if fmt == "mlx" else PEFT_KEYS
        for key in keys:
            if key in config and config[key] is not None:
                out[key] = _short(config[key])
    json.dumps(out)  # always serialisable
    return out
