"""LoRA extraction from a full fine-tune: the written adapter's update is the float64 rank-k truncation.

Two oracles: numpy (always: the written factors, read back, against the dense float64 SVD of
``W_ft - W0``) and the real PEFT (``PeftModel.from_pretrained`` on the base, merged, minus the
base). PEFT needs torch, which CI does not install: that test runs torch in a subprocess, with
this interpreter when it has torch, else with ``$LORARANK_ORACLE_PYTHON``, and skips with the
reason otherwise.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from lorarank import ConfigError
from lorarank.adapters import load_adapter, save_adapter
from lorarank.finetune import extract_lora
from lorarank.weights import open_model

from test_finetune import SAMPLES, needs_samples, toy_pair


def exact_updates(ft_path, base_path):
    """``{module: float64 W_ft - W0}`` straight from the safetensors files."""
    ft, base = load_file(str(ft_path)), load_file(str(base_path))
    return {k[:-len(".weight")]: ft[k].astype(np.float64) - base[k].astype(np.float64)
            for k in ft if k.endswith(".weight") and ft[k].ndim == 2 and k in base
            and "embed" not in k}


def truncation(dW, k):
    u, s, vt = np.linalg.svd(dW, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k], s


def written_updates(folder):
    """``{module: float64 scale * B @ A}`` of an adapter folder, read back by lorarank."""
    adapter = load_adapter(folder)
    return {m.name.removeprefix("base_model.model."): m.scale * (m.B.astype(np.float64) @ m.A.astype(np.float64))
            for m in adapter.modules}, adapter


@needs_samples
class TestExtractSamples:
    def test_rank_8_equals_the_truncation(self, tmp_path):
        """Every module's B @ A equals the float64 best rank-8 approximation of its dW."""
        ex = extract_lora(open_model(SAMPLES / "finetuned"), open_model(SAMPLES / "base"), rank=8)
        save_adapter(ex.adapter, tmp_path / "out", dtype="float32")
        got, adapter = written_updates(tmp_path / "out")
        exact = exact_updates(SAMPLES / "finetuned" / "model.safetensors", SAMPLES / "base" / "model.safetensors")
        assert set(got) == set(exact) and len(got) == 22  # 21 projections + lm_head
        for name, dW in exact.items():
            want, s = truncation(dW, 8)
            assert np.max(np.abs(got[name] - want)) <= 1e-6 * s[0], name
            m = next(x for x in ex.modules if x.name == name)
            assert m.rank == 8
            assert m.error == pytest.approx(np.sqrt(np.sum(s[8:] ** 2) / np.sum(s ** 2)), abs=1e-9)
        config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
        assert config["r"] == 8 and config["lora_alpha"] == 8 and config["rank_pattern"] == {}
        assert config["base_model_name_or_path"] == "base"
        assert "lm_head" in config["target_modules"]
        assert {m.scale for m in adapter.modules} == {1.0}

    def test_rank_by_energy_keeps_at_least_that_energy(self, tmp_path):
        ex = extract_lora(open_model(SAMPLES / "finetuned"), open_model(SAMPLES / "base"), energy=0.9)
        save_adapter(ex.adapter, tmp_path / "out", dtype="float32")
        got, _ = written_updates(tmp_path / "out")
        exact = exact_updates(SAMPLES / "finetuned" / "model.safetensors", SAMPLES / "base" / "model.safetensors")
        truth = json.loads((SAMPLES / "finetuned.truth.json").read_text())["modules"]
        config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
        ranks = {m.name: m.rank for m in ex.modules}
        for name, dW in exact.items():
            k = ranks[name]
            assert k == truth[name]["energy_rank_90"], name   # the smallest rank that keeps 90 %
            want, s = truncation(dW, k)
            assert np.max(np.abs(got[name] - want)) <= 1e-6 * s[0], name
            kept = np.sum(got[name] * dW) / np.sum(dW * dW)  # <P dW, dW> = ||P dW||^2 for a projection
            assert kept >= 0.9 - 1e-6, name
        assert len(set(ranks.values())) > 1 and config["rank_pattern"]
        assert all(config["rank_pattern"].get(n.replace(".", "\\."), config["r"]) == k for n, k in ranks.items())
        assert ex.kept_energy >= 0.9

    def test_what_is_left_out_is_listed(self):
        ex = extract_lora(open_model(SAMPLES / "finetuned"), open_model(SAMPLES / "base"), rank=4)
        out = {o.name: (o.kind, o.changed) for o in ex.others}
        assert out["model.embed_tokens.weight"] == ("embedding", True)
        assert sum(kind == "norm" and changed for kind, changed in out.values()) == 7
        s = ex.summary()
        assert s["left_out_changed"][0] == "model.embed_tokens.weight" and len(s["left_out_changed"]) == 8


class TestExtractToy:
    def test_unchanged_modules_get_no_lora(self, tmp_path):
        ft, base = toy_pair(tmp_path)
        ex = extract_lora(open_model(ft), open_model(base), rank=2)
        assert [m.name for m in ex.modules] == ["model.layers.0.mlp.up_proj", "model.layers.0.self_attn.q_proj",
                                                "model.layers.1.mlp.up_proj", "model.layers.1.self_attn.q_proj"]
        assert ex.unchanged == ()
        emb = [o for o in ex.others if o.kind == "embedding"][0]
        assert emb.changed is False  # listed, and said to be unchanged

    def test_exactly_one_of_rank_and_energy(self, tmp_path):
        ft, base = toy_pair(tmp_path)
        with pytest.raises(ConfigError, match="exactly one of `rank` and `energy`"):
            extract_lora(open_model(ft), open_model(base))
        with pytest.raises(ConfigError, match="`energy` should be at most 1"):
            extract_lora(open_model(ft), open_model(base), energy=1.5)

    def test_stop_keeps_the_modules_done(self, tmp_path):
        ft, base = toy_pair(tmp_path)
        seen = []
        ex = extract_lora(open_model(ft), open_model(base), rank=2,
                          progress=lambda d, t, left: seen.append(d), stop=lambda: len(seen) > 2)
        assert ex.stopped and len(ex.modules) == 2 and ex.summary()["of"] == 4


# -------------------------------------------------------------------------- the real PEFT
def oracle_python() -> str:
    """A Python with torch, peft and transformers, or skip with the reason."""
    if all(importlib.util.find_spec(m) for m in ("torch", "peft", "transformers")):
        return sys.executable
    other = os.environ.get("LORARANK_ORACLE_PYTHON", "")
    if other and Path(other).is_file():
        return other
    pytest.skip("the PEFT oracle needs torch, peft and transformers (not installed here; set "
                "LORARANK_ORACLE_PYTHON to a Python that has them, see requirements-oracles.txt)")


PEFT_MERGE = textwrap.dedent("""
    import sys, json, numpy as np, torch
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
    base_dir, adapter_dir, out = sys.argv[1:4]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float64)
    w0 = {k: v.detach().clone().numpy() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    np.savez(out, **{k: merged[k] - w0[k] for k in merged if k.endswith(".weight") and merged[k].ndim == 2})
    print("ok")
""")


@needs_samples
@pytest.mark.parametrize("target", [{"rank": 8}, {"energy": 0.9}])
def test_peft_loads_the_extraction_onto_the_base(tmp_path, target):
    """PEFT's own load + merge on the base gives the float64 rank-k truncation of W_ft - W0."""
    python = oracle_python()
    ex = extract_lora(open_model(SAMPLES / "finetuned"), open_model(SAMPLES / "base"), **target)
    save_adapter(ex.adapter, tmp_path / "adapter", dtype="float32")
    out = tmp_path / "merged.npz"
    run = subprocess.run([python, "-c", PEFT_MERGE, str(SAMPLES / "base"), str(tmp_path / "adapter"), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
    merged = dict(np.load(out))
    exact = exact_updates(SAMPLES / "finetuned" / "model.safetensors", SAMPLES / "base" / "model.safetensors")
    ranks = {m.name: m.rank for m in ex.modules}
    for name, dW in exact.items():
        want, s = truncation(dW, ranks[name])
        assert np.max(np.abs(merged[name + ".weight"] - want)) <= 1e-6 * s[0], name
    # Nothing else moved: the embeddings and the norms are the base's.
    assert np.all(merged["model.embed_tokens.weight"] == 0)
