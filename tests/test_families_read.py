"""Every LoRA family read exactly: module names, shapes, scales and spectra against the truth files.

The truth files in ``../shared/samples/families`` hold, per module, the float64 singular values of
the update the writing library itself applies (peft, diffusers, LyCORIS, mlx-lm, gguf). The
oracle here rebuilds the dense float64 update from the module lorarank read (``scale * B @ A``,
``kron(kron_left, B @ A)``, DoRA with the base weights from ``base_weights.safetensors``) and
takes a dense SVD; it must equal the truth to 1e-6 * sigma_1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from lorarank.adapters import load_adapter, load_adapter_bytes, load_adapters
from lorarank.errors import AdapterError

FAMILIES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "families"
needs_families = pytest.mark.skipif(not FAMILIES.is_dir(), reason=f"family samples not found at {FAMILIES}")
PEFT = "base_model.model."

CASES = ["peft_dora", "peft_adalora", "peft_loha", "peft_lokr", "peft_modules_to_save",
         "peft_multi_adapter_summarize", "peft_multi_adapter_translate", "diffusers_unet_lora",
         "lycoris_loha", "lycoris_lokr", "lycoris_locon_tucker", "mlx_dora", "gguf_lora"]


def truth(case: str) -> dict:
    return json.loads((FAMILIES / f"{case}.truth.json").read_text())


def dense_update(m, base: dict | None = None) -> np.ndarray:
    """Oracle: the dense float64 update the module stands for (DoRA needs ``base``)."""
    b, a = (np.asarray(x, np.float64) for x in (m.B, m.A))
    dw = m.scale * (b @ a)
    if m.kron_left is not None:
        dw = np.kron(np.asarray(m.kron_left, np.float64), dw)
    if m.transposed:
        dw = dw.T
    if m.magnitude is not None and base is not None:
        w0 = base
        merged = w0 + dw
        norm = np.linalg.norm(merged, axis=1)
        dw = (np.asarray(m.magnitude, np.float64) / norm)[:, None] * merged - w0
    return dw


def truth_name(case: str, name: str, record: dict) -> str:
    """The name lorarank gives a truth module (GGUF names map back to the model's modules)."""
    if case == "gguf_lora":
        return record["source_module"][len(PEFT):]
    return name


def load_case(case: str):
    doc = truth(case)
    return load_adapter(FAMILIES / doc["audit_path"]), doc


@needs_families
@pytest.mark.parametrize("case", CASES)
def test_truth(case):
    """Names, shapes, exact scales and every singular value of every module match the library."""
    adapter, doc = load_case(case)
    records = doc["modules"]
    got = {m.name: m for m in adapter.modules}
    expected = {truth_name(case, n, r): r for n, r in records.items()}
    assert sorted(got) == sorted(expected)
    base = None
    if doc.get("base_weights_file"):
        base = load_file(FAMILIES / doc["base_weights_file"])
    for name, rec in expected.items():
        m = got[name]
        assert list(m.shape) == rec["shape"], name
        assert m.scale == rec["scale"], (name, m.scale, rec["scale"])
        w0 = np.asarray(base[rec["base_weight_key"]], np.float64) if base is not None else None
        if w0 is not None:
            w0 = w0.reshape(w0.shape[0], -1)
        want = np.asarray(rec["singular_values"])
        s = np.linalg.svd(dense_update(m, w0), compute_uv=False)[: want.size]
        np.testing.assert_allclose(s, want, rtol=0, atol=1e-6 * want[0], err_msg=name)
        if "singular_values_scale_BA" in rec:   # DoRA: the directional part alone
            want_ba = np.asarray(rec["singular_values_scale_BA"])
            s_ba = np.linalg.svd(dense_update(m), compute_uv=False)[: want_ba.size]
            np.testing.assert_allclose(s_ba, want_ba, rtol=0, atol=1e-6 * want_ba[0], err_msg=name)


@needs_families
@pytest.mark.parametrize("case, family", [
    ("peft_dora", "dora"), ("mlx_dora", "dora"), ("peft_adalora", "adalora"), ("peft_loha", "loha"),
    ("lycoris_loha", "loha"), ("peft_lokr", "lokr"), ("lycoris_lokr", "lokr"),
    ("peft_modules_to_save", "lora"), ("diffusers_unet_lora", "lora"), ("gguf_lora", "lora"),
])
def test_family_named(case, family):
    """The family is named in what was detected."""
    adapter, _ = load_case(case)
    assert family in adapter.describe()["families"]


@needs_families
def test_locon_tucker_family():
    """Tucker LoCon modules are named as such; its plain modules stay LoRA."""
    adapter, doc = load_case("lycoris_locon_tucker")
    tucker = {n for n, r in doc["modules"].items() if r.get("tucker")}
    assert tucker and {m.name for m in adapter.modules if m.family == "locon-tucker"} == tucker


@needs_families
def test_adalora_kept_ranks():
    """AdaLoRA: the rank its budget left each module is the count of nonzero lora_E entries."""
    adapter, doc = load_case("peft_adalora")
    kept = {PEFT + k[: -len(".lora_E")]: v for k, v in doc["kept_ranks"].items()}
    assert {m.name: m.kept_rank for m in adapter.modules} == kept
    assert all(m.stored_rank == 10 for m in adapter.modules)


@needs_families
def test_loha_stored_rank():
    """LoHa: q = r^2 in the Khatri-Rao factorisation, the declared r kept as stored_rank."""
    adapter, doc = load_case("peft_loha")
    for m in adapter.modules:
        assert m.stored_rank == 3 and m.rank == 9
        assert m.num_params == 2 * 3 * sum(m.shape)


@needs_families
def test_dora_magnitude_shape():
    """DoRA keeps m of shape (d_out,) and says the spectrum of (B, A) is the directional part."""
    for case in ("peft_dora", "mlx_dora"):
        adapter, _ = load_case(case)
        for m in adapter.modules:
            assert m.family == "dora" and m.magnitude.shape == (m.shape[0],)


@needs_families
def test_diffusers_alpha_from_metadata():
    """diffusers keeps alpha only in __metadata__: it is read from there and said so."""
    adapter, doc = load_case("diffusers_unet_lora")
    assert adapter.format == "diffusers"
    assert {m.scale for m in adapter.modules} == {1.5}
    assert "lora_adapter_metadata" in adapter.scaling


@needs_families
@pytest.mark.parametrize("case", ["peft_loha", "lycoris_lokr", "gguf_lora", "mlx_dora", "diffusers_unet_lora"])
def test_bytes_twin(case):
    """The bytes twin reads the same modules and scales as the path twin."""
    adapter, doc = load_case(case)
    root = FAMILIES / doc["audit_path"]
    files = [root] if root.is_file() else [p for p in sorted(root.iterdir())
                                            if p.name != "base_weights.safetensors" and p.suffix != ".md"]
    twin = load_adapter_bytes({p.name: p.read_bytes() for p in files})
    assert [(m.name, m.scale, m.family, m.shape) for m in twin.modules] == \
        [(m.name, m.scale, m.family, m.shape) for m in adapter.modules]
    for a, b in zip(adapter.modules, twin.modules):
        np.testing.assert_array_equal(np.asarray(a.A), np.asarray(b.A))


@needs_families
def test_multi_adapter_folder():
    """A folder of named adapters: load_adapter names the subfolders, load_adapters reads each."""
    doc = truth("peft_multi_adapter")
    root = FAMILIES / doc["audit_path"]
    with pytest.raises(AdapterError, match=r"holds several named adapters \(summarize, translate\); "
                                           r"pass one of .*summarize"):
        load_adapter(root)
    adapters = load_adapters(root)
    assert [a.name for a in adapters] == doc["subfolders"]
    for a in adapters:
        sub = truth(f"peft_multi_adapter_{a.name}")
        assert sorted(m.name for m in a.modules) == sorted(sub["modules"])


@needs_families
def test_modules_to_save_kept_as_extras():
    """modules_to_save tensors are kept byte-identical in extras."""
    adapter, doc = load_case("peft_modules_to_save")
    raw = load_file(FAMILIES / doc["audit_path"] / "adapter_model.safetensors")
    assert set(adapter.extras) == set(doc["non_lora_tensors"])
    for key, extra in adapter.extras.items():
        assert list(extra.shape) == doc["non_lora_tensors"][key]
        assert extra.data == raw[key].tobytes()


@needs_families
def test_metadata():
    """What the files say about training is kept."""
    lyco, _ = load_case("lycoris_loha")
    assert lyco.metadata["ss_network_dim"] == "3" and lyco.metadata["ss_network_module"] == "lycoris.kohya"
    peft, _ = load_case("peft_lokr")
    assert peft.metadata["peft_type"] == "LOKR"
    mlx, _ = load_case("mlx_dora")
    assert mlx.metadata["fine_tune_type"] == "dora"
    gguf, _ = load_case("gguf_lora")
    assert gguf.metadata["general.type"] == "adapter" and gguf.metadata["adapter.lora.alpha"] == 8.0
