"""Extraction from fine-tunes whose weights are not stored (out, in): GPT-2 ``Conv1D`` (stored
(in, out), PEFT's ``fan_in_fan_out``) and ``Conv2d`` kernels (flattened to out x in*kh*kw).

Oracle: the real PEFT loads each extracted adapter onto the base and merges it; the merged
weight minus the base must equal the float64 best rank-k approximation of ``W_ft - W0`` in the
layer's own layout. The models are written in a subprocess with torch and transformers (seeded:
a randomly initialised GPT-2 and a small conv net, then every weight moved by a low-rank plus
full-rank perturbation); the test skips with the reason where torch is absent (CI).
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file

from lorarank.adapters import save_adapter
from lorarank.finetune import extract_lora, pair_models
from lorarank.weights import open_model

from test_extract import oracle_python

WRITE = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import save_file
    out = sys.argv[1]
    torch.manual_seed(0)
    def perturb(model):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim >= 2:
                    flat = p.view(p.shape[0], -1)
                    low = torch.randn(flat.shape[0], 3) @ torch.randn(3, flat.shape[1])
                    flat += 0.05 * low + 0.002 * torch.randn_like(flat)
                else:
                    p += 0.01 * torch.randn_like(p)
    # 1. GPT-2 (Conv1D weights stored (in, out))
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(out + "/gpt2-base")
    perturb(model)
    model.save_pretrained(out + "/gpt2-ft")
    # 2. a conv net (Conv2d kernels 3x3)
    net = torch.nn.Sequential()
    net.add_module("conv1", torch.nn.Conv2d(3, 8, 3, padding=1))
    net.add_module("conv2", torch.nn.Conv2d(8, 12, 3, padding=1))
    net.add_module("head", torch.nn.Linear(12, 5))
    save_file(net.state_dict(), out + "/conv-base.safetensors")
    perturb(net)
    save_file(net.state_dict(), out + "/conv-ft.safetensors")
    print("ok")
""")

MERGE = textwrap.dedent("""
    import sys, json, numpy as np, torch
    from peft import PeftModel
    from safetensors.torch import load_file
    kind, base_path, adapter, out = sys.argv[1:5]
    if kind == "gpt2":
        from transformers import GPT2LMHeadModel
        model = GPT2LMHeadModel.from_pretrained(base_path, dtype=torch.float64)
    else:
        model = torch.nn.Sequential()
        model.add_module("conv1", torch.nn.Conv2d(3, 8, 3, padding=1))
        model.add_module("conv2", torch.nn.Conv2d(8, 12, 3, padding=1))
        model.add_module("head", torch.nn.Linear(12, 5))
        model.load_state_dict(load_file(base_path))
        model = model.double()
    w0 = {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    state = {k: v.detach().numpy() for k, v in merged.state_dict().items()}
    np.savez(out, **{k: state[k] - w0[k] for k in state if k in w0 and state[k].ndim >= 2})
    print("ok")
""")


def truncation(M: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    u, s, vt = np.linalg.svd(M, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k], float(s[0])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    python = oracle_python()
    folder = tmp_path_factory.mktemp("layouts")
    run = subprocess.run([python, "-c", WRITE, str(folder)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
    return python, folder


def _merged(python, kind, base, adapter, out) -> dict:
    run = subprocess.run([python, "-c", MERGE, kind, str(base), str(adapter), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
    return dict(np.load(out))


def test_gpt2_conv1d_extraction_loads_in_peft(models, tmp_path):
    python, folder = models
    ft, base = open_model(folder / "gpt2-ft"), open_model(folder / "gpt2-base")
    pairs = {p.name: p for p in pair_models(ft, base).pairs}
    assert pairs["transformer.h.0.attn.c_attn"].transposed and pairs["transformer.h.0.attn.c_attn"].shape == (96, 32)
    ex = extract_lora(ft, base, rank=4)
    save_adapter(ex.adapter, tmp_path / "adapter", dtype="float32")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True
    merged = _merged(python, "gpt2", folder / "gpt2-base", tmp_path / "adapter", tmp_path / "m.npz")
    a = load_file(str(folder / "gpt2-ft" / "model.safetensors"))
    b = load_file(str(folder / "gpt2-base" / "model.safetensors"))
    checked = 0
    for m in ex.modules:
        key = m.name + ".weight"
        dW = a[key].astype(np.float64) - b[key].astype(np.float64)   # stored (in, out) for Conv1D
        want, s1 = truncation(dW, m.rank)
        assert np.max(np.abs(merged[key] - want)) <= 1e-6 * s1, key
        checked += 1
    assert checked == len(ex.modules) >= 8  # c_attn, c_proj, c_fc, mlp c_proj per layer (+ lm_head if untied)


def test_conv2d_extraction_loads_in_peft(models, tmp_path):
    python, folder = models
    ft, base = open_model(folder / "conv-ft.safetensors"), open_model(folder / "conv-base.safetensors")
    pairs = {p.name: p for p in pair_models(ft, base).pairs}
    assert pairs["conv2"].kind == "conv" and pairs["conv2"].shape == (12, 72)
    ex = extract_lora(ft, base, energy=0.95)
    save_adapter(ex.adapter, tmp_path / "adapter", dtype="float32")
    merged = _merged(python, "conv", folder / "conv-base.safetensors", tmp_path / "adapter", tmp_path / "m.npz")
    a, b = load_file(str(folder / "conv-ft.safetensors")), load_file(str(folder / "conv-base.safetensors"))
    for m in ex.modules:
        key = m.name + ".weight"
        dW = (a[key].astype(np.float64) - b[key].astype(np.float64)).reshape(a[key].shape[0], -1)
        want, s1 = truncation(dW, m.rank)
        got = merged[key].reshape(dW.shape)
        assert np.max(np.abs(got - want)) <= 1e-6 * s1, key
        assert m.kept >= 0.95
    assert {m.name for m in ex.modules} == {"conv1", "conv2", "head"}
