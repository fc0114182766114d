"""Resize that tells the truth for every family (issue 22): DoRA written and loadable, one
parameter count, zero modules left out, kohya's rules and metadata, one BLAS thread.

Oracles: the dense float64 update of each module and its best rank-k truncation (built here),
DoRA's merged weight ``m / ||W0 + s B_k A_k||_row * (W0 + s B_k A_k)`` on the samples' real base
weights, and the real libraries when installed (peft 0.21, mlx-lm 0.32: the tests that need
them skip with the reason otherwise; ``/work/venv-oracles`` has them).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lorarank.adapters import (Adapter, LazyArray, LoraModule, adapter_files, load_adapter,
                               save_adapter)
from lorarank.audit import audit_adapter
from lorarank.cli import main
from lorarank.resize import resize_adapter
from lorarank.spectrum import kohya_rank, recommend_rank
import testkit

FAMILIES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "families"
needs_samples = pytest.mark.skipif(not FAMILIES.is_dir(), reason=f"family samples not found at {FAMILIES}")

ALL_CASES = ["peft_dora", "mlx_dora", "peft_adalora", "peft_loha", "peft_lokr", "lycoris_loha.safetensors",
             "lycoris_lokr.safetensors", "lycoris_locon_tucker.safetensors", "peft_modules_to_save",
             "diffusers_unet_lora"]


dense, best_rank_k = testkit.dense, testkit.best_rank_k


def dora_merged(W0: np.ndarray, direction: np.ndarray, m: np.ndarray) -> np.ndarray:
    V = W0 + direction
    return (m / np.linalg.norm(V, axis=1))[:, None] * V


# ------------------------------------------------------------------- one parameter count
@needs_samples
@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("rule,value", [("energy", 0.99), ("sv_ratio", 10.0)])
def test_reading_and_resize_count_the_same_parameters(case, rule, value):
    """The audit's reading (params_after, per module and in all) equals what the resize writes,
    and what the written modules hold (DoRA said 12,648 in the reading and 13,584 in the
    Resize tab: the magnitude vectors were counted in one and not the other)."""
    adapter = load_adapter(FAMILIES / case)
    report = audit_adapter(adapter, rule=rule, value=value)
    result = resize_adapter(adapter, rule=rule, value=value)
    assert report.summary["params"] == result.params_before == adapter.num_params
    assert report.summary["params_after"] == result.params_after
    assert {m.name: m.params_after for m in report.modules} == result.params
    assert result.params_after == sum(m.num_params for m in result.adapter.modules)
    assert report.summary["retained_energy"] == pytest.approx(result.retained_energy, rel=1e-12)


# --------------------------------------------------------------------------------- DoRA
@needs_samples
@pytest.mark.parametrize("case", ["peft_dora", "mlx_dora"])
def test_dora_resize_keeps_magnitudes_and_truncates_the_direction(case, tmp_path):
    adapter = load_adapter(FAMILIES / case)
    result = resize_adapter(adapter, rank=3)
    assert result.unwritable is None and result.write_format == adapter.format
    assert any("magnitude vector m is kept" in n and "directions change" in n for n in result.notes)
    out = tmp_path / "out"
    save_adapter(result.adapter, out)
    back = {m.name: m for m in load_adapter(out).modules}
    for m in adapter.modules:
        n = back[m.name]
        assert n.family == "dora" and n.rank == 3
        np.testing.assert_array_equal(np.asarray(n.magnitude), np.asarray(m.magnitude))
        want = best_rank_k(dense(m), 3)
        np.testing.assert_allclose(dense(n), want, atol=1e-5 * np.linalg.norm(dense(m), 2), err_msg=m.name)
    # every module holds k (d_out + d_in) + d_out numbers, as the Resize tab says
    assert result.params_after == sum(3 * sum(m.shape) + m.shape[0] for m in adapter.modules)


_peft = testkit.real_peft


def _llama(peft_ok=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).double()


@needs_samples
def test_resized_peft_dora_loads_in_peft_and_keeps_every_row_norm(tmp_path):
    """peft loads the resized DoRA adapter; its merged weight on the sample's real base weights is
    m / ||W0 + s B_k A_k||_row (W0 + s B_k A_k): the rows keep the norms m, the directions move."""
    peft = _peft()
    import torch

    src = FAMILIES / "peft_dora"
    adapter = load_adapter(src)
    out = tmp_path / "resized"
    save_adapter(resize_adapter(adapter, rank=2).adapter, out)
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    W = load_file(str(src / "base_weights.safetensors"))
    model = _llama()
    model.load_state_dict({k: torch.from_numpy(v).double() for k, v in W.items()}, strict=False)
    merged = peft.PeftModel.from_pretrained(model, str(out)).merge_and_unload()
    for m in adapter.modules:
        inner = m.name.removeprefix("base_model.model.")
        W0 = W[inner + ".weight"].astype(np.float64)
        mag = np.asarray(m.magnitude, dtype=np.float64)
        got = merged.get_submodule(inner).weight.detach().numpy()
        want = dora_merged(W0, best_rank_k(dense(m), 2), mag)
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(W0).max(), err_msg=m.name)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), mag, rtol=1e-5)


@needs_samples
def test_resized_mlx_dora_loads_in_mlx_lm(tmp_path):
    """mlx-lm's own loader takes the resized adapter (one rank for every module, as it checks
    the shapes) and each DoRALinear fuses to the truncated direction with m kept."""
    try:
        import mlx.core as mx
        from mlx_lm.models import llama as mllama
        from mlx_lm.tuner.dora import DoRALinear
        from mlx_lm.tuner.utils import load_adapters
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"the mlx-lm oracle needs mlx[cpu] and mlx-lm ({exc}); not in CI")
    src = FAMILIES / "mlx_dora"
    adapter = load_adapter(src)
    result = resize_adapter(adapter, rule="energy", value=0.9)
    out = tmp_path / "resized"
    save_adapter(result.adapter, out)
    args = mllama.ModelArgs(model_type="llama", hidden_size=48, num_hidden_layers=3, intermediate_size=80,
                            num_attention_heads=4, rms_norm_eps=1e-5, vocab_size=96, num_key_value_heads=2)
    model = mllama.Model(args)
    base = load_file(str(src / "base_weights.safetensors"))
    model.load_weights([(k, mx.array(v)) for k, v in base.items()], strict=False)
    model = load_adapters(model, str(out))
    by_name = {m.name: m for m in adapter.modules}
    seen = 0
    for name, layer in model.named_modules():
        if not isinstance(layer, DoRALinear):
            continue
        m = by_name[name]
        k = result.ranks[name]
        W0 = base[name + ".weight"].astype(np.float64)
        fused = np.array(layer.fuse().weight, dtype=np.float64)
        want = dora_merged(W0, best_rank_k(dense(m), k), np.asarray(m.magnitude, dtype=np.float64))
        np.testing.assert_allclose(fused, want, atol=2e-5 * np.abs(W0).max(), err_msg=name)
        seen += 1
    assert seen == len(adapter.modules)


@needs_samples
def test_dora_is_refused_by_name_where_it_cannot_be_written(tmp_path):
    result = resize_adapter(load_adapter(FAMILIES / "peft_dora"), rank=2)
    for fmt in ("kohya", "npz"):
        with pytest.raises(ValueError, match="DoRA, whose magnitude vector lorarank writes in PEFT and mlx-lm"):
            adapter_files(result.adapter, format=fmt)


# ---------------------------------------------------------------------- zero modules
def _two_module_adapter(fmt="peft", *, zero_second=True, dtype=np.float32):
    rng = np.random.default_rng(4)
    mods = []
    for i, kind in enumerate(("q_proj", "v_proj")):
        A = rng.standard_normal((4, 48)).astype(dtype)
        B = rng.standard_normal((48 if kind == "q_proj" else 24, 4)).astype(dtype) * 0.1
        if zero_second and i == 1:
            B = np.zeros_like(B)
        name = f"model.layers.0.self_attn.{kind}"
        mods.append(LoraModule(("base_model.model." + name) if fmt == "peft" else "lora_unet_" + kind, A, B,
                               2.0, alpha=8.0))
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
              "layers_to_transform": [0]}
    return Adapter(format=fmt, modules=mods, scaling="", config=config if fmt == "peft" else None)


@pytest.mark.parametrize("how", [dict(rank=2), dict(rule="energy", value=0.99), dict(rank_budget=1)])
def test_an_all_zero_module_is_left_out_not_written_with_zero_factors(how, tmp_path):
    """Its update has no direction: rank 0, no keys, PEFT's exclude_modules names it (it was
    written back at its stored rank with zero factors)."""
    adapter = _two_module_adapter()
    result = resize_adapter(adapter, **how)
    zero = adapter.modules[1].name
    assert result.ranks[zero] == 0 and result.params[zero] == 0 and zero in result.dropped
    assert [m.name for m in result.adapter.modules] == [adapter.modules[0].name]
    files = adapter_files(result.adapter)
    config = json.loads(files["adapter_config.json"])
    assert config["exclude_modules"] == ["model.layers.0.self_attn.v_proj"]
    (tmp_path / "w.safetensors").write_bytes(files["adapter_model.safetensors"])
    assert not any("v_proj" in k for k in load_file(str(tmp_path / "w.safetensors")))
    assert any("left out" in n for n in result.notes)


def test_a_zero_module_left_out_of_a_kohya_file_has_no_keys(tmp_path):
    result = resize_adapter(_two_module_adapter("kohya"), rank=2)
    (tmp_path / "k.safetensors").write_bytes(adapter_files(result.adapter)["adapter.safetensors"])
    keys = load_file(str(tmp_path / "k.safetensors"))
    assert keys and all(k.startswith("lora_unet_q_proj.") for k in keys)


def test_peft_loads_an_adapter_with_a_module_left_out(tmp_path):
    peft = _peft()
    adapter = _two_module_adapter(zero_second=True)
    out = tmp_path / "resized"
    save_adapter(resize_adapter(adapter, rank=2).adapter, out)
    model = peft.PeftModel.from_pretrained(_llama(), str(out))
    q = model.base_model.model.get_submodule("model.layers.0.self_attn.q_proj")
    np.testing.assert_allclose(q.get_delta_weight("default").detach().numpy(),
                               best_rank_k(dense(adapter.modules[0]), 2), atol=1e-5)
    v = model.base_model.model.get_submodule("model.layers.0.self_attn.v_proj")
    assert not hasattr(v, "lora_A")  # excluded: a plain Linear, no adapter layer


# ----------------------------------------------------------------- kohya rules and files
def _kohya_file(tmp_path, *, r=8, modules=4, metadata=None):
    rng = np.random.default_rng(11)
    tensors = {}
    for i in range(modules):
        s = np.geomspace(1.0, 10.0 ** -(1 + i), r)
        u = np.linalg.qr(rng.standard_normal((40, r)))[0]
        v = np.linalg.qr(rng.standard_normal((32, r)))[0]
        name = f"lora_unet_block_{i}_proj"
        tensors[name + ".lora_up.weight"] = (u * np.sqrt(s)).astype(np.float32)
        tensors[name + ".lora_down.weight"] = (np.sqrt(s)[:, None] * v.T).astype(np.float32)
        tensors[name + ".alpha"] = np.array(4.0, dtype=np.float32)
    path = tmp_path / "kohya.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


KOHYA_META = {"ss_network_module": "networks.lora", "ss_network_dim": "8", "ss_network_alpha": "4.0",
              "ss_base_model_version": "sdxl_base_v1-0", "ss_training_comment": "my style",
              "ss_network_args": '{"conv_dim": "4"}', "ss_tag_frequency": '{"a": {"cat": 3}}',
              "sshs_model_hash": "stale", "sshs_legacy_hash": "stale", "modelspec.title": "t"}


def _kohya_hashes(path: Path) -> tuple[str, str]:
    """kohya's train_util.precalculate_safetensors_hashes on the written tensors (its code: the
    sha256 of the data after the header, and of 64 KiB at offset 1 MiB, of the file saved with
    the ss_* keys only)."""
    from safetensors import safe_open
    from safetensors.numpy import save

    with safe_open(str(path), "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    blob = save(tensors, metadata={k: v for k, v in meta.items() if k.startswith("ss_")})
    n = struct.unpack("<Q", blob[:8])[0]
    return hashlib.sha256(blob[8 + n:]).hexdigest(), hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]


def test_kohya_writer_keeps_every_metadata_key_updated_as_kohya_does(tmp_path):
    path = _kohya_file(tmp_path, metadata=KOHYA_META)
    out = tmp_path / "out.safetensors"
    assert main(["resize", str(path), "--sv-fro", "0.9", "-o", str(out)]) == 0
    from safetensors import safe_open

    with safe_open(str(out), "np") as f:
        meta = f.metadata()
    assert set(meta) == set(KOHYA_META)
    for key in ("ss_network_module", "ss_base_model_version", "ss_network_args", "ss_tag_frequency",
                "modelspec.title"):
        assert meta[key] == KOHYA_META[key]
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "Dynamic"
    assert meta["ss_training_comment"] == "lorarank resize by sv_fro 0.9 from 8; my style"
    assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == _kohya_hashes(out)
    out2 = tmp_path / "out2.safetensors"
    assert main(["resize", str(path), "--rank", "3", "-o", str(out2)]) == 0
    with safe_open(str(out2), "np") as f:
        meta = f.metadata()
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("3", "3")


@pytest.mark.parametrize("flag,rule,value", [("--sv-ratio", "sv_ratio", 30.0), ("--sv-fro", "sv_fro", 0.95),
                                             ("--sv-cumulative", "sv_cumulative", 0.8)])
def test_cli_resizes_by_kohyas_rules(flag, rule, value, tmp_path, capsys):
    """Each module keeps exactly the rule's k (kohya main keeps k + 1), capped by --max-rank."""
    path = _kohya_file(tmp_path)
    adapter = load_adapter(path)
    out = tmp_path / "out.safetensors"
    assert main(["resize", str(path), flag, str(value), "-o", str(out)]) == 0
    back = {m.name: m for m in load_adapter(out).modules}
    for m in adapter.modules:
        s = np.linalg.svd(dense(m), compute_uv=False)[: m.rank]
        assert back[m.name].rank == kohya_rank(s, rule=rule, value=value) == recommend_rank(s, rule=rule, value=value)
    capped = tmp_path / "capped.safetensors"
    assert main(["resize", str(path), flag, str(value), "--max-rank", "2", "-o", str(capped)]) == 0
    assert max(m.rank for m in load_adapter(capped).modules) <= 2
    assert "kohya" in capsys.readouterr().out  # says how kohya's own resize would differ


def test_cli_refuses_a_bad_rule_value_in_one_line(tmp_path, capsys):
    path = _kohya_file(tmp_path)
    assert main(["resize", str(path), "--sv-fro", "1.5", "-o", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lorarank: error:") and "1.5" in err[0]


# -------------------------------------------------------------------- one BLAS thread
def test_factors_are_formed_on_one_blas_thread():
    """The resized factors are formed when written, inside the single-BLAS-thread guard (a
    save took 60-73 s on a busy machine with threads spinning)."""
    from threadpoolctl import threadpool_info

    seen = []

    def make():
        seen.append(max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1))
        return np.ones((4, 48), dtype=np.float32)

    adapter = _two_module_adapter(zero_second=False)
    lazy = LoraModule(adapter.modules[0].name, LazyArray(make, (4, 48), np.float32), adapter.modules[0].B, 1.0)
    adapter_files(Adapter(format="peft", modules=[lazy], scaling="", config=adapter.config))
    assert seen == [1]
    result = resize_adapter(_two_module_adapter(zero_second=False), rank=2)
    assert adapter_files(result.adapter)  # the real path runs too


# ------------------------------------------------------------------ families that grow
@needs_samples
@pytest.mark.parametrize("case", ["peft_lokr", "lycoris_lokr.safetensors", "peft_loha"])
def test_a_family_whose_lora_form_is_larger_says_so(case):
    result = resize_adapter(load_adapter(FAMILIES / case), rule="energy", value=0.99)
    assert not result.shrinks and result.params_after > result.params_before
    assert any("does not shrink the file" in n for n in result.notes)


@needs_samples
def test_dora_merged_change_with_base_weights(tmp_path, capsys):
    """With the base weights each resized DoRA module says how far its merged weight moves,
    ||W'_k - W'|| / ||W' - W0||, against the dense float64 merged weights on the real base."""
    from lorarank.base import open_base

    src = FAMILIES / "peft_dora"
    adapter = load_adapter(src)
    result = resize_adapter(adapter, rank=2, base=open_base(src / "base_weights.safetensors"))
    W = load_file(str(src / "base_weights.safetensors"))
    assert set(result.merged_changes) == {m.name for m in adapter.modules}
    for m in adapter.modules:
        W0 = W[m.name.removeprefix("base_model.model.") + ".weight"].astype(np.float64)
        mag = np.asarray(m.magnitude, dtype=np.float64)
        old = dora_merged(W0, dense(m), mag)
        new = dora_merged(W0, best_rank_k(dense(m), 2), mag)
        want = np.linalg.norm(new - old) / np.linalg.norm(old - W0)
        assert result.merged_changes[m.name] == pytest.approx(want, rel=1e-3), m.name
    assert any("merged weights move by up to" in n for n in result.notes)
    assert main(["resize", str(src), "--rank", "2", "--base", str(src / "base_weights.safetensors"),
                 "-o", str(tmp_path / "out")]) == 0
    assert "merged weights move by up to" in capsys.readouterr().out
