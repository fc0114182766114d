"""The audit page (AppTest) says which family it read and what its spectrum is of, and uses base weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from ui import audit
import testkit

FAMILIES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "families"
pytestmark = pytest.mark.skipif(not FAMILIES.is_dir(), reason=f"family samples not found at {FAMILIES}")


def open_page() -> AppTest:
    return testkit.open_page("pages/3_Adapter_audit.py")


def put(at: AppTest, key: str, files: dict[str, bytes]) -> AppTest:
    at.file_uploader(key=key).set_value([(n, d, "application/octet-stream") for n, d in files.items()])
    return at.run()


def folder_files(case: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((FAMILIES / case).iterdir())
            if p.suffix in (".json", ".safetensors") and p.name != "base_weights.safetensors"}


def detected(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown if "**format:**" in m.value)


def test_dora_without_then_with_base_weights():
    at = put(open_page(), audit.UPLOAD_KEY, folder_files("peft_dora"))
    assert not at.exception, at.exception
    text = detected(at)
    assert "**family:** dora" in text and "directional part" in text
    assert any("DoRA without base weights" in w.value for w in at.warning)
    at = put(at, audit.BASE_UPLOAD_KEY,
             {"base_weights.safetensors": (FAMILIES / "peft_dora" / "base_weights.safetensors").read_bytes()})
    assert not at.exception, at.exception
    assert not [e.value for e in at.error]
    assert "update merged \\- W0" in detected(at)
    assert not any("DoRA without base weights" in w.value for w in at.warning)
    table = next(d.value for d in at.dataframe if "|dW|/|W0|" in d.value.columns)
    truth = json.loads((FAMILIES / "peft_dora.truth.json").read_text())
    rec = truth["modules"]["base_model.model.model.layers.0.self_attn.q_proj"]
    row = table[table["module"] == "model.layers.0.self_attn.q_proj"].iloc[0]
    assert row["family"] == "dora" and row["|dW|/|W0|"] > 0
    assert row["top singular values"].startswith(f"{rec['singular_values'][0]:.3g}")


@pytest.mark.parametrize("case,family", [("peft_loha", "loha"), ("peft_adalora", "adalora"), ("peft_lokr", "lokr")])
def test_family_is_shown(case, family):
    at = put(open_page(), audit.UPLOAD_KEY, folder_files(case))
    assert not at.exception, at.exception
    assert f"**family:** {family}" in detected(at)
    table = next(d.value for d in at.dataframe if "family" in d.value.columns)
    assert set(table["family"]) == {family}
    if family == "adalora":
        assert "AdaLoRA kept rank" in detected(at)


def test_zero_adapter_is_named_on_the_page(tmp_path):
    from safetensors.numpy import save

    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.ones((4, 16), np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((8, 4), np.float32)}
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    at = put(open_page(), audit.UPLOAD_KEY, {"adapter_model.safetensors": save(tensors),
                                             "adapter_config.json": json.dumps(cfg).encode()})
    assert not at.exception, at.exception
    assert any("never trained" in w.value for w in at.warning)
