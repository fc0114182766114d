"""Helpers shared by test modules of every folder (``tests/``, ``tests/e2e/``, ``tests/hostile/``).

Import them as ``from testkit import open_page``: ``tests/`` is on ``sys.path`` while pytest runs
(pytest puts the folder of ``tests/conftest.py`` there). Browser-only helpers live in
``e2e/apphelpers.py``, the hostile corpus's builders in ``hostile/corpus23.py``, the readers of
markdown tables in ``markdown_tables.py``. Nothing here imports Streamlit until it is called, so
engine-only tests stay free of it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import numpy as np
import pytest

#: The repository (this checkout).
REPO = Path(__file__).resolve().parents[1]
#: The team's sample adapters and models (``../shared/samples``; tests needing them skip without).
SAMPLES = REPO.parent / "shared" / "samples"
#: A real checkpoint run folder (PEFT saves at several steps).
RUN = SAMPLES / "checkpoints" / "run"

__all__ = ["REPO", "SAMPLES", "RUN", "needs", "open_page", "page_text", "zip_folder", "real_peft", "dense", "best_rank_k",
           "F16_MODULE", "float16_peft"]


def needs(path: Path):
    """Mark a test (or ``pytestmark``) to skip, naming ``path``, where that sample is absent."""
    return pytest.mark.skipif(not path.exists(), reason=f"samples not found at {path}")


def open_page(page: str, query: Mapping[str, Any] | None = None, *, timeout: float = 120,
              home_first: bool = True, secrets: Mapping[str, Any] | None = None):
    """An ``AppTest`` of ``page`` (``"pages/3_Adapter_audit.py"``) with ``query`` in its URL, run.

    ``home_first``: the home script runs first, then the page (a visitor who came from home);
    otherwise the page's run is the first (a link opened on a new session). ``secrets``: the
    app's ``st.secrets`` (``{"HF_TOKEN": ...}``).
    """
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=timeout)
    for key, value in (secrets or {}).items():
        at.secrets[key] = value
    if home_first:
        at.run()
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.switch_page(page).run()


def page_text(at) -> str:
    """Every markdown element of an ``AppTest`` run, as the reader sees it (``md_plain``), joined."""
    from ui.common import md_plain

    return " ".join(md_plain(m.value) for m in at.markdown)


def zip_folder(folder: Path = RUN, prefix: str = "run") -> bytes:
    """``folder`` zipped (deflated, files in name order under ``prefix/``), as a user would
    before uploading it; by default the real checkpoint run."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return buf.getvalue()


def real_peft() -> ModuleType:
    """The real ``peft`` package for oracle tests; the test skips, saying why, without peft, torch
    and transformers (``requirements-oracles.txt``; ``/work/venv-oracles`` has them)."""
    try:
        import peft
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"the real-peft oracle needs peft, torch and transformers ({exc}); "
                    "see requirements-oracles.txt")
    return peft


def dense(m) -> np.ndarray:
    """Oracle: a module's ``scale * B @ A`` (``kron(kron_left, ...)`` for LoKr; the directional
    part for DoRA), formed densely in float64, in the orientation of ``B @ A`` (test only)."""
    ba = m.scale * (np.asarray(m.B, dtype=np.float64) @ np.asarray(m.A, dtype=np.float64))
    if m.kron_left is not None:
        ba = np.kron(np.asarray(m.kron_left, dtype=np.float64), ba)
    return ba


def best_rank_k(M: np.ndarray, k: int) -> np.ndarray:
    """Oracle: the best rank-``k`` approximation of ``M`` (Eckart-Young, dense SVD)."""
    u, s, vt = np.linalg.svd(M, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


#: The module of :func:`float16_peft` (a PEFT q_proj).
F16_MODULE = "base_model.model.model.layers.0.self_attn.q_proj"


def float16_peft(x: float, y: float | None = None, *, spread: bool = False, d: int = 16,
                 dtype: Any = np.float16) -> list[tuple[str, bytes]]:
    """A float16 PEFT adapter (r = 2, alpha = 2) whose rank-1 resize has factors of a known size:
    its files as ``(name, bytes)``.

    Two equal directions make an update of rank 1, so ``--rank 1`` (or any rule) resizes it.
    Default: ``B[0, :] = x``, ``A[:, 0] = y`` (``y = x`` unless given): the resized factors hold
    ``sqrt(2 x y)`` at [0, 0], and nothing larger (their bound ``sqrt(sigma_1)`` is that entry).
    ``spread=True``: every entry ``x``, so the resized factors' entries are all ``x sqrt(2)``,
    a ``sqrt(d)``-th of the bound. Past 65504 the resized factors do not fit float16.
    """
    import json

    from safetensors.numpy import save

    if spread:
        A, B = np.full((2, d), x), np.full((d, 2), x)
    else:
        A, B = np.zeros((2, d)), np.zeros((d, 2))
        B[0, :] = x
        A[:, 0] = x if y is None else y
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]}
    weights = save({F16_MODULE + ".lora_A.weight": A.astype(dtype), F16_MODULE + ".lora_B.weight": B.astype(dtype)})
    return [("adapter_model.safetensors", weights), ("adapter_config.json", json.dumps(config).encode())]
