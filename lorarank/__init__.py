"""lorarank: what rank does a LoRA adapter need, and what did it actually learn?

The engine is pure numpy (no streamlit): synthetic low-rank targets, LoRA fitted by gradient
descent as training does it, singular values of ``scale * B @ A`` from the factors, rank
metrics, and reading, auditing, resizing and comparing real adapters.
"""

from .errors import AdapterError, ConfigError, HubError, LoraRankError, UnsupportedAdapterError


__version__ = "0.1.0"

# Adapter reading pulls in safetensors (and gguf, regex when needed): load it on first use (PEP 562)
# so that `python -m lorarank sweep` and the Rank sweep page do not pay for them; importing the
# package itself (``lorarank.errors``, ``lorarank.documents``) imports no numpy.
_LAZY = {
    # The spectrum's metrics need numpy, which the app's text-only pages (Home, Glossary) never
    # import: loaded with the first of these names too.
    "spectrum": ("RANK_RULES", "FactoredSVD", "eckart_young_errors", "energy_rank", "entropy_rank",
                 "factored_svd", "factored_svdvals", "gavish_donoho_rank", "gavish_donoho_threshold",
                 "noise_threshold", "kohya_rank", "numerical_rank", "recommend_rank", "stable_rank",
                 "truncation_error"),
    # The fitting and synthetic-target modules are not needed to read or audit an adapter.
    "fit": ("DEFAULT_LR", "DEFAULT_STEPS", "OPTIMIZERS", "SCALING_RULES", "FitResult", "fit_lora",
            "fit_lora_reference", "init_lora", "lora_scale"),
    "synthetic": ("SPECTRA", "Target", "make_target", "planted_spectrum"),
    "adapters": ("FORMATS", "Adapter", "LoraModule", "load_adapter", "load_adapter_bytes",
                 "adapter_files", "save_adapter"),
    "audit": ("audit_adapter", "AuditReport", "ModuleReport", "resize_adapter", "ResizeResult",
              "allocate_budget", "Allocation", "budget_curve"),
    "compare": ("compare_adapters", "Comparison", "subspace_similarity", "principal_angles"),
    "checkpoints": ("find_checkpoints", "checkpoints_from_files", "Checkpoint", "Run"),
    "series": ("audit_series", "SeriesReport"),
    "data": ("DataConfig", "Dataset", "make_dataset", "fit_data", "fit_data_runs", "fit_data_reference",
             "reduced_rank_losses", "data_noise_floor", "data_macs"),
    "stability": ("run_stability", "StabilityGrid", "stability_findings", "scale_for", "alpha_to_keep"),
    "intruders": ("Intruders", "intruders_dense", "intruders_lowrank"),
    "base_svd": ("BaseSVD", "BaseSVDCache"),
    "inits": ("init_of", "convert_adapter"),
    "mitigate": ("mitigate_adapter", "MitigationResult"),
}
_LAZY_NAMES = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lorarank' has no attribute {name!r}")


__all__ = [
    "LoraRankError", "ConfigError", "AdapterError", "UnsupportedAdapterError", "HubError",
    "RANK_RULES", "FactoredSVD", "factored_svd", "factored_svdvals", "energy_rank",
    "stable_rank", "entropy_rank", "kohya_rank", "truncation_error", "eckart_young_errors",
    "gavish_donoho_threshold", "gavish_donoho_rank", "noise_threshold", "numerical_rank", "recommend_rank",
    *_LAZY_NAMES,
]
