"""Resize and compare for every LoRA family, against dense oracles built in the test.

LoHa, LoKr, AdaLoRA and LoCon-Tucker resize to plain LoRA factors of the best rank-k
approximation of the same update; the written file reads back as exactly that. Resized PEFT
adapters with modules_to_save load in the real peft (skipped with the reason when peft / torch
are not installed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lorarank.adapters import load_adapter, save_adapter
from lorarank.audit import audit_adapter, module_spectrum, resize_adapter
from lorarank.compare import compare_adapters
import testkit

FAMILIES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "families"
pytestmark = pytest.mark.skipif(not FAMILIES.is_dir(), reason=f"family samples not found at {FAMILIES}")

RESIZABLE = ["peft_loha", "peft_lokr", "peft_adalora", "lycoris_loha.safetensors", "lycoris_lokr.safetensors",
             "lycoris_locon_tucker.safetensors", "peft_modules_to_save", "diffusers_unet_lora"]


dense, best_rank_k = testkit.dense, testkit.best_rank_k


@pytest.mark.parametrize("case", RESIZABLE)
def test_resize_is_the_best_rank_k_of_the_same_update(case, tmp_path):
    adapter = load_adapter(FAMILIES / case)
    k = 2
    result = resize_adapter(adapter, rank=k)
    converted = {m.family for m in adapter.modules} - {"lora"}
    if converted:
        assert any("plain LoRA" in n for n in result.notes)
        assert {m.family for m in result.adapter.modules} == {"lora"}
    out = tmp_path / ("out.safetensors" if case.endswith(".safetensors") else "out")
    save_adapter(result.adapter, out)
    back = {m.name: m for m in load_adapter(out).modules}
    for m in adapter.modules:
        want = best_rank_k(dense(m), k)
        got = dense(back[m.name])
        tol = 1e-2 * max(np.linalg.norm(dense(m), 2), 1e-30)  # float32 factors on disk
        np.testing.assert_allclose(got, want, atol=tol, err_msg=m.name)
        s = np.linalg.svd(dense(m), compute_uv=False)
        assert result.errors[m.name] == pytest.approx(np.sqrt(np.sum(s[k:] ** 2) / np.sum(s**2)), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("case", ["peft_loha", "peft_lokr", "lycoris_lokr.safetensors"])
def test_family_spectra_match_dense(case):
    """module_spectrum (Khatri-Rao / Kronecker) against the dense SVD of the same module."""
    for m in load_adapter(FAMILIES / case).modules[:12]:
        s = module_spectrum(m)
        want = np.linalg.svd(dense(m), compute_uv=False)
        n = min(s.size, want.size)
        np.testing.assert_allclose(s[:n], want[:n], atol=1e-10 * want[0])
        np.testing.assert_allclose(want[n:], 0.0, atol=1e-10 * want[0])


def test_compare_lokr_with_itself_and_with_its_resize():
    """LoKr compares on the update's input directions (its A is only half the Kronecker product)."""
    a = load_adapter(FAMILIES / "peft_lokr")
    same = compare_adapters(a, a)
    assert same.undefined == []
    assert all(m.top_overlap == pytest.approx(1.0) for m in same.modules)
    assert all(m.d_in == a.module(m.name).shape[1] for m in same.modules)
    resized = resize_adapter(a, rank=2).adapter
    cross = compare_adapters(a, resized, top=2)
    # The resize keeps the top-2 right singular vectors of each update: phi(2, 2) = 1 within rounding.
    assert all(m.top_overlap == pytest.approx(1.0, abs=1e-6) for m in cross.modules)


def test_dora_audit_says_what_its_spectrum_is_of():
    report = audit_adapter(load_adapter(FAMILIES / "peft_dora"))
    assert all(m.family == "dora" and m.spectrum_of.startswith("directional part") for m in report.modules)
    assert all(m.magnitude is not None and m.magnitude["min"] <= m.magnitude["max"] for m in report.modules)


# ------------------------------------------------------------------------------- real peft
_peft = testkit.real_peft


def test_resized_modules_to_save_loads_in_peft(tmp_path):
    """The resized PEFT adapter (classifier head kept byte-identical) loads in peft and equals the truncation."""
    peft = _peft()
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    src = FAMILIES / "peft_modules_to_save"
    adapter = load_adapter(src)
    result = resize_adapter(adapter, rank=2)
    out = tmp_path / "resized"
    save_adapter(result.adapter, out)
    cfg = json.loads((src / "adapter_config.json").read_text())
    config = LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=4, pad_token_id=95)
    torch.manual_seed(0)
    base = LlamaForSequenceClassification(config).double()
    model = peft.PeftModel.from_pretrained(base, str(out))
    # The classifier head came back byte-identical: peft's modules_to_save copy holds the file's tensor.
    from safetensors.numpy import load_file

    head_in = load_file(str(src / "adapter_model.safetensors"))["base_model.model.score.weight"]
    head_out = load_file(str(out / "adapter_model.safetensors"))["base_model.model.score.weight"]
    assert head_in.tobytes() == head_out.tobytes()
    saved = model.base_model.model.score.modules_to_save["default"].weight.detach().numpy()
    np.testing.assert_array_equal(saved, head_in.astype(np.float64))
    # Each LoRA layer's delta, as peft computes it, is the best rank-2 truncation of the input's update.
    for m in adapter.modules:
        path = m.name.removeprefix("base_model.model.")
        layer = model.base_model.model.get_submodule(path)
        delta = layer.get_delta_weight("default").detach().numpy()
        want = best_rank_k(dense(m), 2)
        np.testing.assert_allclose(delta, want, atol=1e-5 * np.linalg.norm(dense(m), 2), err_msg=m.name)
    assert cfg["modules_to_save"]


@pytest.mark.parametrize("case", ["peft_loha", "peft_lokr", "peft_adalora"])
def test_resized_family_loads_in_peft_as_lora(case, tmp_path):
    """LoHa / LoKr / AdaLoRA resized: peft loads the LoraConfig and its delta is the best rank-2 truncation."""
    peft = _peft()
    from transformers import LlamaConfig, LlamaForCausalLM

    adapter = load_adapter(FAMILIES / case)
    out = tmp_path / "resized"
    save_adapter(resize_adapter(adapter, rank=2).adapter, out)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    config = LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    model = peft.PeftModel.from_pretrained(LlamaForCausalLM(config).double(), str(out))
    for m in adapter.modules:
        layer = model.base_model.model.get_submodule(m.name.removeprefix("base_model.model."))
        delta = layer.get_delta_weight("default").detach().numpy()
        np.testing.assert_allclose(delta, best_rank_k(dense(m), 2), atol=1e-6 * np.linalg.norm(dense(m), 2),
                                   err_msg=m.name)


@pytest.mark.skipif(not FAMILIES.is_dir(), reason="samples not present")
@pytest.mark.parametrize("name, own", [("peft_lokr", True), ("lycoris_loha.safetensors", True),
                                       ("peft_dora", False), ("diffusers_unet_lora", False)])
def test_orientation_names_the_factors_the_file_has(name, own):
    """LoKr and LoHa files hold no A and B: their orientation line says so instead of
    describing A (r, in), B (out, r)."""
    note = load_adapter(FAMILIES / name).describe()["orientation"]
    assert ("no A, B" in note) == own and ("A (r, in)" in note) != own, note
