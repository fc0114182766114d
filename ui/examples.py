"""Real example adapters, opened in one click: the files in ``examples/`` (see its README).

The Adapter audit page offers :data:`EXAMPLES` as pills (``?example=peft_dora`` in the link,
so a link opens the same example); Rank over training offers the real checkpoint run
(:func:`run_upload`). Each example is read from the repository like an upload: the same
:class:`ui.audit.Upload`, the same engine, no special path. The folder ships with the app (a
host has no ``../shared``), within the size budget its README states.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import streamlit as st

from .audit import Upload
from .navigation import ROOT

__all__ = ["FOLDER", "Example", "EXAMPLES", "EXAMPLE_KEY", "by_key", "from_link",
           "example_upload", "run_upload", "chosen"]

#: The examples' folder in the repository.
FOLDER = ROOT / "examples"
#: URL-bound key of the audit page's example (the series section's real-run switch is
#: ``ui.series.EXAMPLE_KEY``).
EXAMPLE_KEY = "example"


@dataclass(frozen=True)
class Example:
    """One example adapter: its key (the URL value), the pill's label, its files (paths in
    :data:`FOLDER`) and one sentence on what it is."""

    key: str
    label: str
    files: tuple[str, ...]
    about: str


def _peft(key: str, label: str, about: str) -> Example:
    """An example saved by PEFT: the folder ``key`` with its weights and its config."""
    return Example(key, label, (f"{key}/adapter_model.safetensors", f"{key}/adapter_config.json"), about)


EXAMPLES: tuple[Example, ...] = (
    _peft("peft_llama_r8", "PEFT LoRA",
          "PEFT LoRA r = 8 on the 7 linear layers of a small Llama, written by peft 0.21.2"),
    _peft("peft_gpt2_r4", "GPT-2 Conv1D",
          "PEFT LoRA r = 4 on GPT-2's Conv1D layers (fan_in_fan_out), written by peft 0.21.2"),
    _peft("peft_dora", "PEFT DoRA",
          "PEFT DoRA r = 6 (no base weights: its directional part is audited), written by peft 0.21.2"),
    _peft("peft_adalora", "PEFT AdaLoRA",
          "PEFT AdaLoRA with ranks cut to 1..6 by its budget, written by peft 0.21.2"),
    _peft("peft_loha", "PEFT LoHa",
          "PEFT LoHa r = 3 (Hadamard product), written by peft 0.21.2"),
    _peft("peft_lokr", "PEFT LoKr",
          "PEFT LoKr r = 3 (Kronecker product), written by peft 0.21.2"),
    Example("lycoris_lokr", "LyCORIS LoKr", ("lycoris_lokr.safetensors",),
            "LyCORIS LoKr on a small diffusers UNet, kohya names, written by lycoris-lora 4.1.3"),
    Example("lycoris_locon_tucker", "LyCORIS LoCon", ("lycoris_locon_tucker.safetensors",),
            "LyCORIS LoCon with a Tucker core on the 3x3 convs, kohya names, written by "
            "lycoris-lora 4.1.3"),
    Example("diffusers_unet_lora", "diffusers UNet", ("diffusers_unet_lora/pytorch_lora_weights.safetensors",),
            "diffusers UNet LoRA r = 6 (alpha in the file's metadata), written by diffusers 0.42.1"),
    Example("mlx_dora", "mlx-lm DoRA", ("mlx_dora/adapters.safetensors", "mlx_dora/adapter_config.json"),
            "mlx-lm DoRA rank 5, scale 6, written by mlx-lm 0.32.2"),
    Example("gguf_lora", "llama.cpp GGUF", ("gguf_lora.gguf",),
            "a llama.cpp LoRA adapter (.gguf, r = 5), written with gguf 0.19.0 as llama.cpp's "
            "converter does"),
)


def by_key(key: str | None) -> Example | None:
    """The example named ``key`` (or labelled so: the pill writes its label to the URL,
    ``?example=PEFT+DoRA``), or None."""
    return next((e for e in EXAMPLES if key in (e.key, e.label)), None)


def from_link() -> None:
    """Call before the pills: a link naming an example by key (``?example=peft_dora``) selects
    it (the bound pill looks for its label in the URL)."""
    raw = st.query_params.get(EXAMPLE_KEY)
    example = by_key(raw)
    if example is not None and raw == example.key and EXAMPLE_KEY not in st.session_state:
        st.session_state[EXAMPLE_KEY] = example.key


def _read(paths: tuple[str, ...]) -> list[tuple[str, bytes]]:
    return [(path.rsplit("/", 1)[-1], (FOLDER / path).read_bytes()) for path in paths]


@st.cache_resource(show_spinner=False, max_entries=len(EXAMPLES))
def example_upload(key: str) -> Upload:
    """The example's files as an :class:`Upload` (as if they were dropped on the page)."""
    example = by_key(key)
    if example is None:
        raise KeyError(key)
    return Upload.from_files(_read(example.files), label=f"example: {example.label}")


@st.cache_resource(show_spinner=False, max_entries=1)
def run_upload() -> Upload:
    """The real checkpoint run (``examples/checkpoints_run``) as a zipped run folder."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted((FOLDER / "checkpoints_run").rglob("*")):
            if path.is_file():
                archive.writestr(f"run/{path.relative_to(FOLDER / 'checkpoints_run').as_posix()}",
                                 path.read_bytes())
    return Upload.from_files([("example-run.zip", buf.getvalue())], label="example run")


def chosen() -> str | None:
    """The example the page will open before it draws anything (its pill's state or the
    link), or None."""
    value = st.session_state.get(EXAMPLE_KEY)
    if value is None:
        value = st.query_params.get(EXAMPLE_KEY)
    example = by_key(value)
    return None if example is None else example.key
