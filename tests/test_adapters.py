"""Tests of lorarank.adapters: every format, exact scales, orientation, bad files, writers."""

from __future__ import annotations

import io
import json
import math
import re
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy
from safetensors.numpy import load_file, save, save_file

from lorarank.adapters import (
    adapter_files,
    load_adapter,
    load_adapter_bytes,
    parse_module_name,
    peft_pattern_key,
    save_adapter,
)
from lorarank.errors import AdapterError, ConfigError, UnsupportedAdapterError
import testkit

SAMPLES = testkit.SAMPLES
needs_samples = testkit.needs(SAMPLES)
P = "base_model.model.model.layers.0.self_attn.q_proj"


def dense_svals(scale, B, A, transposed=False):
    """Oracle: singular values of the dense update, top r."""
    dw = scale * (np.asarray(B, np.float64) @ np.asarray(A, np.float64))
    if transposed:
        dw = dw.T
    return np.linalg.svd(dw, compute_uv=False)[: A.shape[0]]


def spectrum(module):
    B, A = module.factors()
    return dense_svals(module.scale, B, A)


def pair(rng, d_out=12, d_in=10, r=4, dtype=np.float32):
    return (rng.standard_normal((r, d_in)).astype(dtype), rng.standard_normal((d_out, r)).astype(dtype))


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def expected_peft_scale(config, module):
    """Independent PEFT rule: rank_pattern / alpha_pattern as dotted-suffix regexes, first match wins."""
    inner = module[len("base_model.model."):]
    r, alpha = config["r"], config["lora_alpha"]
    for key, value in config.get("rank_pattern", {}).items():
        if re.fullmatch(rf"(.*\.)?({key})", inner):
            r = value
            break
    for key, value in config.get("alpha_pattern", {}).items():
        if re.fullmatch(rf"(.*\.)?({key})", inner):
            alpha = value
            break
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


# ------------------------------------------------------------------------------------ samples
@needs_samples
class TestSamples:
    """Real PEFT adapters from shared/samples, against their README and a dense oracle."""

    EXPECTED = {  # folder -> {module type: scale} from samples/README.md
        "peft_llama_r8": {t: 2.0 for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")},
        "peft_llama_r32_rslora": {"q_proj": 8 / math.sqrt(32), "v_proj": 8 / math.sqrt(32)},
        "peft_llama_rank_pattern": {"q_proj": 1.0, "v_proj": 4.0, "down_proj": 2.0},
        "peft_gpt2_r4": {"c_attn": 2.0, "c_fc": 2.0},
    }

    @pytest.mark.parametrize("folder", sorted(EXPECTED))
    def test_scales_match_readme(self, folder):
        """Each module's scale is the one PEFT applies, as the samples README lists."""
        adapter = load_adapter(SAMPLES / folder)
        assert adapter.format == "peft"
        assert {parse_module_name(m.name)[1] for m in adapter.modules} == set(self.EXPECTED[folder])
        for m in adapter.modules:
            assert m.scale == pytest.approx(self.EXPECTED[folder][parse_module_name(m.name)[1]], rel=1e-12)

    @pytest.mark.parametrize("folder", sorted(EXPECTED))
    def test_scales_match_independent_peft_rule(self, folder):
        """Scales agree with an independent implementation of PEFT's pattern rule on the config."""
        config = json.loads((SAMPLES / folder / "adapter_config.json").read_text())
        for m in load_adapter(SAMPLES / folder).modules:
            assert m.scale == pytest.approx(expected_peft_scale(config, m.name), rel=1e-12)

    @pytest.mark.parametrize("folder", sorted(EXPECTED))
    def test_factors_are_the_stored_tensors(self, folder):
        """A and B are the stored lora_A / lora_B tensors, read back exactly."""
        stored = load_file(SAMPLES / folder / "adapter_model.safetensors")
        adapter = load_adapter(SAMPLES / folder)
        assert len(adapter.modules) * 2 == len(stored)
        for m in adapter.modules:
            np.testing.assert_array_equal(m.A, stored[m.name + ".lora_A.weight"])
            np.testing.assert_array_equal(m.B, stored[m.name + ".lora_B.weight"])

    def test_fan_in_fan_out_marks_transposed(self):
        """GPT-2 Conv1D adapters add (B @ A)^T; A is still (r, in) and B (out, r)."""
        adapter = load_adapter(SAMPLES / "peft_gpt2_r4")
        assert all(m.transposed for m in adapter.modules)
        attn = [m for m in adapter.modules if m.name.endswith("c_attn")][0]
        assert attn.shape == (288, 96) and attn.rank == 4
        assert "fan_in_fan_out" in adapter.scaling

    def test_file_path_uses_config_beside_it(self):
        """Pointing at the .safetensors file picks up adapter_config.json next to it."""
        adapter = load_adapter(SAMPLES / "peft_llama_rank_pattern" / "adapter_model.safetensors")
        assert sorted({m.scale for m in adapter.modules}) == [1.0, 2.0, 4.0]

    @pytest.mark.parametrize("as_list", [False, True])
    def test_bytes_twin_equals_path(self, as_list):
        """Uploading weights + config as bytes gives the same modules and scales as the folder."""
        folder = SAMPLES / "peft_llama_r32_rslora"
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        adapter = load_adapter_bytes(list(files.items()) if as_list else files)
        reference = load_adapter(folder)
        assert [m.name for m in adapter.modules] == [m.name for m in reference.modules]
        for a, b in zip(adapter.modules, reference.modules):
            assert a.scale == b.scale
            np.testing.assert_array_equal(a.A, b.A)

    def test_without_config_scale_one_is_assumed_and_said(self):
        """Weights alone: scale 1 assumed, and the scaling note says so."""
        data = (SAMPLES / "peft_llama_r8" / "adapter_model.safetensors").read_bytes()
        adapter = load_adapter_bytes({"adapter_model.safetensors": data})
        assert {m.scale for m in adapter.modules} == {1.0}
        assert "assumed" in adapter.scaling

    def test_user_alpha_sets_scale(self):
        """A user-supplied alpha gives alpha / r for files without a config."""
        data = (SAMPLES / "peft_llama_r8" / "adapter_model.safetensors").read_bytes()
        adapter = load_adapter_bytes({"w.safetensors": data}, alpha=16)
        assert {m.scale for m in adapter.modules} == {2.0}
        assert "given by the user" in adapter.scaling

    def test_rank_pattern_mismatch_is_reported(self, tmp_path):
        """A config whose r disagrees with the stored rank is an error naming the module."""
        folder = SAMPLES / "peft_llama_rank_pattern"
        config = json.loads((folder / "adapter_config.json").read_text())
        config["rank_pattern"] = {}
        with pytest.raises(AdapterError, match=r"has rank 4 in the weights but adapter_config.json gives `r` = 8"):
            load_adapter_bytes({"a.safetensors": (folder / "adapter_model.safetensors").read_bytes(),
                                "adapter_config.json": json.dumps(config).encode()})


# ---------------------------------------------------------------------------- PEFT patterns
class TestPeftPatternKey:
    """PEFT's get_pattern_key: first key matching a dotted suffix of the module name."""

    @pytest.mark.parametrize("patterns, module, expected", [
        (["q_proj"], "model.layers.0.self_attn.q_proj", "q_proj"),
        (["proj"], "model.layers.0.self_attn.q_proj", None),  # not a whole dotted component
        (["self_attn.q_proj"], "model.layers.0.self_attn.q_proj", "self_attn.q_proj"),
        ([r"layers\.[01]\..*q_proj"], "model.layers.1.self_attn.q_proj", r"layers\.[01]\..*q_proj"),
        ([r"layers\.[01]\..*q_proj"], "model.layers.11.self_attn.q_proj", None),
        (["v_proj", "self_attn.v_proj"], "model.layers.0.self_attn.v_proj", "v_proj"),  # insertion order
        (["^model.layers.0.self_attn.q_proj"], "model.layers.0.self_attn.q_proj",
         "^model.layers.0.self_attn.q_proj"),
        ([], "model.layers.0.self_attn.q_proj", None),
    ])
    def test_matching(self, patterns, module, expected):
        """Keys are regexes matched against dotted suffixes, in insertion order."""
        assert peft_pattern_key(patterns, module) == expected

    def test_prefix_of_saved_keys_is_dropped(self):
        """Patterns anchored at the model root match because base_model.model. is stripped."""
        rng = np.random.default_rng(0)
        a, b = pair(rng, r=4)
        tensors = {P + ".lora_A.weight": a, P + ".lora_B.weight": b}
        config = {"r": 8, "lora_alpha": 8, "rank_pattern": {"^model.layers.0.self_attn.q_proj": 4},
                  "alpha_pattern": {"^model.layers.0.self_attn.q_proj": 12}}
        adapter = load_adapter_bytes({"w.safetensors": save(tensors), "c.json": json.dumps(config).encode()})
        assert adapter.modules[0].scale == 3.0

    def test_bad_regex_is_one_sentence(self):
        """An invalid pattern in the config is an AdapterError quoting it."""
        with pytest.raises(AdapterError, match=r"pattern '\(' is not a valid regular expression"):
            peft_pattern_key(["("], "model.q_proj")


# ---------------------------------------------------------------------------------- formats
class TestFormats:
    """Each format's keys, orientation and scale, on files written by the real libraries."""

    def test_kohya_alpha_over_r(self):
        """kohya: lora_down is A, lora_up is B, scale alpha / r."""
        rng = np.random.default_rng(1)
        a, b = pair(rng, r=4)
        name = "lora_unet_down_blocks_0_attentions_0_proj_in"
        data = save({f"{name}.lora_down.weight": a, f"{name}.lora_up.weight": b,
                     f"{name}.alpha": np.array(2.0, np.float32)})
        adapter = load_adapter_bytes({"k.safetensors": data})
        (m,) = adapter.modules
        assert adapter.format == "kohya" and m.name == name and m.scale == 0.5 and m.alpha == 2.0
        np.testing.assert_allclose(spectrum(m), dense_svals(0.5, b, a), rtol=1e-12)

    def test_kohya_without_alpha_is_scale_one(self):
        """kohya without an alpha key: scale 1, said in the note."""
        rng = np.random.default_rng(2)
        a, b = pair(rng)
        adapter = load_adapter_bytes({"k.safetensors": save({"m.lora_down.weight": a, "m.lora_up.weight": b})})
        assert adapter.modules[0].scale == 1.0
        assert "no alpha entries" in adapter.scaling

    def test_kohya_conv_is_flattened(self):
        """Conv LoRA (r, in, k, k) / (out, r, 1, 1) becomes (out, in*k*k) and keeps its kernel."""
        rng = np.random.default_rng(3)
        down = rng.standard_normal((4, 5, 3, 3)).astype(np.float32)
        up = rng.standard_normal((7, 4, 1, 1)).astype(np.float32)
        data = save({"c.lora_down.weight": down, "c.lora_up.weight": up, "c.alpha": np.array(8.0, np.float32)})
        (m,) = load_adapter_bytes({"k.safetensors": data}).modules
        assert m.shape == (7, 45) and m.kernel == (5, 3, 3)
        np.testing.assert_allclose(spectrum(m), dense_svals(2.0, up[:, :, 0, 0], down.reshape(4, 45)), rtol=1e-12)

    @pytest.mark.parametrize("down, up", [(".lora.down.weight", ".lora.up.weight"),
                                          (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight")])
    def test_diffusers(self, down, up):
        """diffusers keys: down is A, up is B, scale 1 without alpha."""
        rng = np.random.default_rng(4)
        a, b = pair(rng)
        name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
        adapter = load_adapter_bytes({"d.safetensors": save({name + down: a, name + up: b})})
        assert adapter.format == "diffusers" and adapter.modules[0].name == name
        assert adapter.modules[0].scale == 1.0

    def test_mlx_transposed_with_config_scale(self):
        """mlx-lm: lora_a (in, r), lora_b (r, out) are transposed; scale from lora_parameters."""
        rng = np.random.default_rng(5)
        a, b = pair(rng, d_out=9, d_in=6, r=3)
        tensors = {"model.layers.0.self_attn.q_proj.lora_a": np.ascontiguousarray(a.T),
                   "model.layers.0.self_attn.q_proj.lora_b": np.ascontiguousarray(b.T)}
        config = {"lora_parameters": {"rank": 3, "scale": 20.0, "dropout": 0.0}}
        adapter = load_adapter_bytes({"adapters.safetensors": save(tensors),
                                      "adapter_config.json": json.dumps(config).encode()})
        (m,) = adapter.modules
        assert adapter.format == "mlx" and m.shape == (9, 6) and m.scale == 20.0
        np.testing.assert_array_equal(m.A, a)
        np.testing.assert_allclose(spectrum(m), dense_svals(20.0, b, a), rtol=1e-12)

    def test_mlx_without_config(self):
        """mlx-lm without config: scale 1 assumed; a user scale overrides."""
        rng = np.random.default_rng(6)
        a, b = pair(rng)
        data = save({"m.lora_a": np.ascontiguousarray(a.T), "m.lora_b": np.ascontiguousarray(b.T)})
        assert "assumed" in load_adapter_bytes({"a.safetensors": data}).scaling
        assert load_adapter_bytes({"a.safetensors": data}, scale=20).modules[0].scale == 20.0

    def test_orientation_from_keys_not_shapes(self):
        """Square-ambiguous factors are oriented by their names: mlx and PEFT agree."""
        rng = np.random.default_rng(7)
        a = rng.standard_normal((4, 4)).astype(np.float32)
        b = rng.standard_normal((4, 4)).astype(np.float32)
        peft = load_adapter_bytes({"p.safetensors": save({"m.lora_A.weight": a, "m.lora_B.weight": b})})
        mlx = load_adapter_bytes({"m.safetensors": save({"m.lora_a": np.ascontiguousarray(a.T),
                                                         "m.lora_b": np.ascontiguousarray(b.T)})})
        np.testing.assert_array_equal(peft.modules[0].A, mlx.modules[0].A)
        np.testing.assert_array_equal(peft.modules[0].B, mlx.modules[0].B)

    def test_simple_npz_named_with_alpha(self):
        """Simple npz: X.A / X.B with a global alpha gives alpha / r."""
        rng = np.random.default_rng(8)
        a1, b1 = pair(rng, r=4)
        a2, b2 = pair(rng, r=2)
        data = npz_bytes(**{"l0.q.A": a1, "l0.q.B": b1, "l1.q.A": a2, "l1.q.B": b2, "alpha": np.array(8.0)})
        adapter = load_adapter_bytes({"s.npz": data})
        assert adapter.format == "npz"
        assert [(m.name, m.scale) for m in adapter.modules] == [("l0.q", 2.0), ("l1.q", 4.0)]

    def test_simple_npz_single_pair(self):
        """One pair A / B without alpha: one unnamed module at scale 1."""
        rng = np.random.default_rng(9)
        a, b = pair(rng)
        (m,) = load_adapter_bytes({"s.npz": npz_bytes(A=a, B=b)}).modules
        assert m.name == "" and m.scale == 1.0

    def test_peft_keys_in_npz(self, tmp_path):
        """PEFT keys in an .npz with the config beside it read like the safetensors file."""
        rng = np.random.default_rng(10)
        a, b = pair(rng, r=4)
        (tmp_path / "adapter.npz").write_bytes(npz_bytes(**{P + ".lora_A.weight": a, P + ".lora_B.weight": b}))
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 16}))
        adapter = load_adapter(tmp_path / "adapter.npz")
        assert adapter.format == "peft" and adapter.modules[0].scale == 4.0

    def test_peft_embedding_is_transposed(self):
        """PEFT lora_embedding_A (r, vocab) / _B (dim, r) add (B @ A)^T."""
        rng = np.random.default_rng(11)
        a, b = pair(rng, d_out=6, d_in=20, r=2)
        data = save({"base_model.model.embed_tokens.lora_embedding_A": a,
                     "base_model.model.embed_tokens.lora_embedding_B": b})
        assert load_adapter_bytes({"e.safetensors": data}).modules[0].transposed

    @pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, ml_dtypes.bfloat16])
    def test_dtypes(self, dtype):
        """float64/32/16 and bfloat16 read exactly, with the stored dtype kept."""
        rng = np.random.default_rng(12)
        a, b = (x.astype(dtype) for x in pair(rng, r=3, dtype=np.float64))
        data = save({"m.lora_A.weight": a, "m.lora_B.weight": b})
        (m,) = load_adapter_bytes({"w.safetensors": data}).modules
        assert m.dtype == np.dtype(dtype).name
        np.testing.assert_array_equal(m.A.astype(np.float64), a.astype(np.float64))
        np.testing.assert_allclose(spectrum(m), dense_svals(1.0, b.astype(np.float64), a.astype(np.float64)),
                                   rtol=1e-12)

    def test_bf16_path_and_bytes_agree(self, tmp_path):
        """A bfloat16 file reads the same through safe_open (path) and deserialize (bytes)."""
        rng = np.random.default_rng(13)
        a, b = (x.astype(ml_dtypes.bfloat16) for x in pair(rng))
        save_file({"m.lora_A.weight": a, "m.lora_B.weight": b}, tmp_path / "w.safetensors")
        with safetensors.safe_open(tmp_path / "w.safetensors", framework="numpy") as f:
            assert f.get_slice("m.lora_A.weight").get_dtype() == "BF16"
        by_path = load_adapter(tmp_path / "w.safetensors").modules[0]
        by_bytes = load_adapter_bytes({"w.safetensors": (tmp_path / "w.safetensors").read_bytes()}).modules[0]
        np.testing.assert_array_equal(by_path.A, a)
        np.testing.assert_array_equal(by_bytes.B, b)

    def test_folder_with_two_weights_files_is_ambiguous(self, tmp_path):
        """A folder with several unrelated weights files asks for one."""
        rng = np.random.default_rng(14)
        a, b = pair(rng)
        for name in ("one.safetensors", "two.safetensors"):
            save_file({"m.lora_A.weight": a, "m.lora_B.weight": b}, tmp_path / name)
        with pytest.raises(AdapterError, match="several weights files"):
            load_adapter(tmp_path)

    def test_non_lora_tensors_are_ignored_and_counted(self):
        """modules_to_save weights are listed as ignored, not read as factors."""
        rng = np.random.default_rng(15)
        a, b = pair(rng)
        data = save({"m.lora_A.weight": a, "m.lora_B.weight": b, "lm_head.weight": np.zeros((3, 3), np.int32)})
        adapter = load_adapter_bytes({"w.safetensors": data})
        assert adapter.ignored == ["lm_head.weight"] and adapter.describe()["ignored_tensors"] == 1

    @pytest.mark.parametrize("name, expected", [
        ("base_model.model.model.layers.7.mlp.up_proj", (7, "up_proj")),
        ("lora_te_text_model_encoder_layers_3_mlp_fc1", (3, "mlp_fc1")),
        ("transformer.h.11.attn.c_attn", (11, "c_attn")),
        ("lm_head", (None, "lm_head")),
        ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0", (1, "to_out.0")),
        ("unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2", (0, "net.2")),
        ("model.layers.0.experts.7", (0, "experts.7")),
    ])
    def test_parse_module_name(self, name, expected):
        """Layer and module type for the rank map."""
        assert parse_module_name(name) == expected


class TestFamilies:
    """LoHa, LoKr and DoRA keys are read as their families; configs must agree with the tensors."""

    @pytest.mark.parametrize("keys, family", [
        (["m.hada_w1_a", "m.hada_w1_b", "m.hada_w2_a", "m.hada_w2_b"], "loha"),
        (["m.lokr_w1", "m.lokr_w2_a", "m.lokr_w2_b"], "lokr"),
        (["m.lora_A.weight", "m.lora_B.weight", "m.lora_magnitude_vector"], "dora"),
        (["m.lora_down.weight", "m.lora_up.weight", "m.dora_scale"], "dora"),
    ])
    def test_keys(self, keys, family):
        """Key names decide the family."""
        arrays = {k: np.ones((2, 2), np.float32) for k in keys}
        for k in keys:
            if k.endswith(("magnitude_vector", "dora_scale")):
                arrays[k] = np.ones((2, 1) if "dora_scale" in k else (2,), np.float32)
        adapter = load_adapter_bytes({"x.safetensors": save(arrays)})
        assert [m.family for m in adapter.modules] == [family]
        assert adapter.describe()["families"] == [family]

    @pytest.mark.parametrize("config, pattern", [
        ({"use_dora": True}, r"use_dora but module 'm' has no lora_magnitude_vector"),
        ({"peft_type": "LOHA"}, r"peft_type LOHA but the weights hold LoRA tensors"),
        ({"peft_type": "LOKR"}, r"peft_type LOKR but the weights hold LoRA tensors"),
    ])
    def test_config_disagrees(self, config, pattern):
        """A config declaring DoRA / LoHa / LoKr over plain LoRA tensors is named."""
        rng = np.random.default_rng(16)
        a, b = pair(rng)
        with pytest.raises(AdapterError, match=pattern):
            load_adapter_bytes({"w.safetensors": save({"m.lora_A.weight": a, "m.lora_B.weight": b}),
                                "adapter_config.json": json.dumps({"r": 4, **config}).encode()})

    def test_unsupported_peft_type(self):
        """A PEFT type lorarank does not read (IA3) is refused by name."""
        rng = np.random.default_rng(16)
        a, b = pair(rng)
        with pytest.raises(UnsupportedAdapterError, match=r"is a PEFT IA3 adapter"):
            load_adapter_bytes({"w.safetensors": save({"m.lora_A.weight": a, "m.lora_B.weight": b}),
                                "adapter_config.json": json.dumps({"r": 4, "peft_type": "IA3"}).encode()})


# -------------------------------------------------------------------------------- bad input
def _header_file(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _good_safetensors() -> bytes:
    return save({"m.lora_A.weight": np.ones((2, 3), np.float32), "m.lora_B.weight": np.ones((4, 2), np.float32)})


SAFETENSORS_CASES = {
    "empty": (b"", r"w.safetensors is not a valid safetensors file \(only 0 bytes\)"),
    "truncated": (_good_safetensors()[:60], r"not a valid safetensors file \(.*\): .*so it was cut "
                                            r"short \(an interrupted download or copy\?\)"),
    "cut in its data": (_good_safetensors()[:-10], r"not a valid safetensors file \(.*\): its tensors do "
                                                   r"not fit the bytes the file holds, so it was cut short"),
    "random bytes": (bytes(range(256)) * 4, r"not a valid safetensors file \(header too large\): its "
                                            r"header length points past the end of the file"),
    "header length lies": (struct.pack("<Q", 10**6) + _good_safetensors()[8:], r"invalid header length"),
    "huge header length": (struct.pack("<Q", 2**63) + _good_safetensors()[8:], r"header too large"),
    "offset beyond data": (_header_file({"m.lora_A.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}},
                                        b"\0" * 8), r"invalid shape, data type, or offset"),
    "overlapping offsets": (_header_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                          "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
                            r"invalid offset for tensor"),
    "header not JSON": (struct.pack("<Q", 5) + b"hello", r"invalid JSON in header"),
}


class TestBadSafetensors:
    """Corrupt safetensors files: one sentence each, and the real library rejects them too."""

    @pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
    def test_bytes(self, case):
        """The bytes twin raises AdapterError with a one-line message."""
        data, pattern = SAFETENSORS_CASES[case]
        with pytest.raises(AdapterError, match=pattern) as info:
            load_adapter_bytes({"w.safetensors": data})
        assert "\n" not in str(info.value)

    @pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
    def test_path(self, case, tmp_path):
        """The path twin raises AdapterError too (safe_open validates the header)."""
        data, _ = SAFETENSORS_CASES[case]
        (tmp_path / "w.safetensors").write_bytes(data)
        with pytest.raises(AdapterError, match="w.safetensors is not a valid safetensors file") as info:
            load_adapter(tmp_path / "w.safetensors")
        assert "\n" not in str(info.value)

    @pytest.mark.parametrize("case", sorted(set(SAFETENSORS_CASES) - {"empty"}))
    def test_reference_library_agrees(self, case):
        """safetensors.deserialize itself refuses every case (we judge as the library does)."""
        with pytest.raises(Exception):
            safetensors.deserialize(SAFETENSORS_CASES[case][0])


def _bad_tensors(case):
    rng = np.random.default_rng(20)
    a, b = pair(rng)
    nan_a = a.copy()
    nan_a[0, 0] = np.nan
    inf_b = b.astype(ml_dtypes.bfloat16)
    inf_b[1, 1] = np.inf
    return {
        "nan": ({"m.lora_A.weight": nan_a, "m.lora_B.weight": b}, r"tensor 'm.lora_A.weight' contains NaN or infinite values"),
        "inf bf16": ({"m.lora_A.weight": a.astype(ml_dtypes.bfloat16), "m.lora_B.weight": inf_b},
                     r"tensor 'm.lora_B.weight' contains NaN or infinite values"),
        "integer": ({"m.lora_A.weight": a.astype(np.int32), "m.lora_B.weight": b},
                    r"tensor 'm.lora_A.weight' has dtype int32 \(I32\); LoRA factors must be float64"),
        "1-d": ({"m.lora_A.weight": a[0], "m.lora_B.weight": b}, r"tensor 'm.lora_A.weight' is 1-D with shape \(10,\)"),
        "0-d": ({"m.lora_A.weight": np.array(1.0, np.float32), "m.lora_B.weight": b}, r"is 0-D"),
        "no partner": ({"m.lora_A.weight": a}, r"tensor 'm.lora_A.weight' has no partner B factor for module 'm'"),
        "not chaining": ({"m.lora_A.weight": a, "m.lora_B.weight": b[:, :3]},
                         r"factors of 'm' do not chain: m.lora_A.weight has shape \(4, 10\) \(r = 4\) but "
                         r"m.lora_B.weight has shape \(12, 3\) \(r = 3\)"),
        "no lora keys": ({"encoder.weight": a}, r"holds no LoRA factors \(tensors: 'encoder.weight'\)"),
        "mixed conventions": ({"m.lora_A.weight": a, "m.lora_B.weight": b, "n.lora_down.weight": a,
                               "n.lora_up.weight": b}, r"mixes the key conventions of kohya and peft"),
        "bad up kernel": ({"c.lora_down.weight": np.ones((2, 3, 3, 3), np.float32),
                           "c.lora_up.weight": np.ones((4, 2, 3, 3), np.float32)}, r"kernel must be 1 x 1"),
        "bad alpha": ({"m.lora_down.weight": a, "m.lora_up.weight": b, "m.alpha": np.array([1.0, 2.0], np.float32)},
                      r"'m.alpha' should be a single number"),
    }[case]


BAD_TENSOR_CASES = ["nan", "inf bf16", "integer", "1-d", "0-d", "no partner", "not chaining", "no lora keys",
                    "mixed conventions", "bad up kernel", "bad alpha"]


class TestBadTensors:
    """Valid files with invalid LoRA content: one sentence naming the tensor."""

    @pytest.mark.parametrize("case", BAD_TENSOR_CASES)
    def test_safetensors(self, case):
        """Each case raises AdapterError with the expected sentence."""
        tensors, pattern = _bad_tensors(case)
        with pytest.raises(AdapterError, match=pattern) as info:
            load_adapter_bytes({"w.safetensors": save(tensors)})
        assert "\n" not in str(info.value)

    @pytest.mark.parametrize("case", ["nan", "integer", "1-d", "no partner", "not chaining"])
    def test_npz(self, case):
        """The same content in an .npz gives the same kind of sentence."""
        tensors, _ = _bad_tensors(case)
        with pytest.raises(AdapterError):
            load_adapter_bytes({"w.npz": npz_bytes(**tensors)})


def _npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> Path:
    """An .npz of about 2 MB whose member inflates to 2 GiB of zeros (a valid float32 .npy)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    n = 2**29  # float32 -> 2 GiB
    chunk = b"\0" * (16 * 2**20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("A.npy", "w", force_zip64=True) as member:
            member.write(_npy_header((n // 4, 4)))
            for _ in range(n * 4 // len(chunk)):
                member.write(chunk)
        zf.writestr("B.npy", _npy_header((4, 4)) + b"\0" * 64)
    return path


class TestBadNpz:
    """Unsafe or corrupt .npz archives."""

    def test_text_renamed_npz(self):
        """A text file named .npz is not a zip archive."""
        with pytest.raises(AdapterError, match=r"notes.npz is not an .npz archive \(it does not start with a zip"):
            load_adapter_bytes({"notes.npz": b"hello, this is not an archive\n"})

    def test_truncated_zip(self):
        """A cut archive is reported as not a valid .npz."""
        rng = np.random.default_rng(21)
        a, b = pair(rng)
        data = npz_bytes(A=a, B=b)
        with pytest.raises(AdapterError, match=r"w.npz is not a valid .npz archive"):
            load_adapter_bytes({"w.npz": data[: len(data) // 2]})

    def test_pickled_object(self):
        """An object array (pickle) is refused before np.load would run it."""
        buf = io.BytesIO()
        np.savez(buf, A=np.array([{"x": 1}], dtype=object), B=np.ones((2, 2)))
        with pytest.raises(AdapterError, match=r"array 'A' holds pickled Python objects"):
            load_adapter_bytes({"w.npz": buf.getvalue()})

    def test_header_lies_about_shape(self):
        """A .npy header claiming more data than its member holds is refused."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("A.npy", _npy_header((1000, 1000)) + b"\0" * 64)
            zf.writestr("B.npy", _npy_header((4, 4)) + b"\0" * 64)
        with pytest.raises(AdapterError, match=r"array 'A' declares shape \(1000, 1000\) \(4000000 bytes\) but its "
                                               r"member holds 64 bytes"):
            load_adapter_bytes({"w.npz": buf.getvalue()})

    def test_non_npy_member(self):
        """A member that is not .npy is named."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("readme.txt", "hi")
        with pytest.raises(AdapterError, match=r"member 'readme.txt' is not a .npy array"):
            load_adapter_bytes({"w.npz": buf.getvalue()})

    def test_zip_bomb_refused(self, zip_bomb):
        """Declared sizes far beyond the archive size stop the read before inflating."""
        assert zip_bomb.stat().st_size < 16 * 2**20
        with pytest.raises(AdapterError, match=r"would unpack to 2,048 MiB from .* refusing a possible zip bomb"):
            load_adapter(zip_bomb)

    def test_zip_bomb_memory_is_bounded(self, zip_bomb):
        """Refusing the bomb in a fresh process keeps its peak memory far below the 2 GiB it hides."""
        code = textwrap.dedent(f"""
            import sys
            from lorarank.adapters import load_adapter
            from lorarank.errors import AdapterError
            try:
                load_adapter({str(zip_bomb)!r})
            except AdapterError:
                pass
            print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))
        """)
        # VmHWM is this process image's own peak; ru_maxrss would carry the pytest parent's
        # peak over fork + exec and fail whenever the suite itself is large.
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
        assert int(out.stdout.strip()) < 300 * 1024  # KiB


class TestBadConfig:
    """Broken adapter_config.json files and upload sets."""

    def test_config_not_json(self):
        """A config that is not JSON is named."""
        with pytest.raises(AdapterError, match=r"adapter_config.json is not valid JSON"):
            load_adapter_bytes({"w.safetensors": _good_safetensors(), "adapter_config.json": b"{r: 8"})

    @pytest.mark.parametrize("config, pattern", [
        ({"r": 0}, r"`r` should be a positive integer, got 0"),
        ({"r": 2, "lora_alpha": "big"}, r"`lora_alpha` should be a number, got 'big'"),
        ({"r": 2, "rank_pattern": ["q"]}, r"`rank_pattern` should be an object"),
    ])
    def test_bad_fields(self, config, pattern):
        """Bad r / lora_alpha / rank_pattern values are quoted."""
        with pytest.raises(AdapterError, match=pattern):
            load_adapter_bytes({"w.safetensors": _good_safetensors(), "adapter_config.json": json.dumps(config).encode()})

    def test_two_weights_files(self):
        """Two weights files in one upload ask for one."""
        with pytest.raises(AdapterError, match=r"several weights files given \(a.safetensors, b.safetensors\)"):
            load_adapter_bytes({"a.safetensors": _good_safetensors(), "b.safetensors": _good_safetensors()})

    def test_only_config(self):
        """A config without weights says what is missing."""
        with pytest.raises(AdapterError, match=r"no weights file given"):
            load_adapter_bytes({"adapter_config.json": b"{}"})

    def test_alpha_and_scale_together(self):
        """alpha and scale overrides exclude each other."""
        with pytest.raises(ConfigError, match=r"give `alpha` or `scale`, not both"):
            load_adapter_bytes({"w.safetensors": _good_safetensors()}, alpha=8, scale=2)


# ---------------------------------------------------------------------------------- writers
class TestWriters:
    """Written files are read back by the real safetensors / numpy and by lorarank."""

    @needs_samples
    @pytest.mark.parametrize("folder", ["peft_llama_rank_pattern", "peft_llama_r32_rslora", "peft_gpt2_r4"])
    def test_peft_round_trip(self, folder, tmp_path):
        """PEFT output: same tensors (real safetensors reader) and same scales (independent PEFT rule)."""
        adapter = load_adapter(SAMPLES / folder)
        written = save_adapter(adapter, tmp_path / "out", format="peft")
        assert sorted(p.name for p in written) == ["adapter_config.json", "adapter_model.safetensors"]
        stored = load_file(tmp_path / "out" / "adapter_model.safetensors")
        config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
        for m in adapter.modules:
            np.testing.assert_array_equal(stored[m.name + ".lora_A.weight"], m.A)
            assert expected_peft_scale(config, m.name) == pytest.approx(m.scale, rel=1e-12)
        assert config["fan_in_fan_out"] == (folder == "peft_gpt2_r4")
        again = load_adapter(tmp_path / "out")
        assert [(m.name, m.scale, m.transposed) for m in again.modules] == \
            [(m.name, pytest.approx(m.scale), m.transposed) for m in adapter.modules]

    @pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
    def test_kohya_round_trip_with_alpha(self, dtype, tmp_path):
        """kohya output: lora_down / lora_up / alpha read back with the real library, conv kernels restored."""
        rng = np.random.default_rng(30)
        down = rng.standard_normal((4, 5, 3, 3)).astype(np.float32)
        up = rng.standard_normal((7, 4, 1, 1)).astype(np.float32)
        a, b = pair(rng)
        src = save({"c.lora_down.weight": down, "c.lora_up.weight": up, "c.alpha": np.array(8.0, np.float32),
                    "l.lora_down.weight": a, "l.lora_up.weight": b})
        adapter = load_adapter_bytes({"k.safetensors": src})
        (name, data), = adapter_files(adapter, format="kohya", dtype=dtype).items()
        stored = safetensors.numpy.load(data) if dtype != "bfloat16" else None
        (tmp_path / name).write_bytes(data)
        with safetensors.safe_open(tmp_path / name, framework="numpy") as f:
            assert f.get_slice("c.lora_down.weight").get_shape() == [4, 5, 3, 3]
            assert f.get_slice("c.lora_up.weight").get_shape() == [7, 4, 1, 1]
            assert float(f.get_tensor("c.alpha")) == 8.0 and float(f.get_tensor("l.alpha")) == 4.0
        if stored is not None:
            np.testing.assert_allclose(stored["c.lora_down.weight"], down.astype(dtype))
        back = load_adapter_bytes({name: data})
        assert [(m.name, m.scale) for m in back.modules] == [("c", 2.0), ("l", 1.0)]

    def test_npz_round_trip(self):
        """npz output: X.A / X.B / X.alpha, loaded with np.load(allow_pickle=False); bf16 kept exact as float32."""
        rng = np.random.default_rng(31)
        a, b = (x.astype(ml_dtypes.bfloat16) for x in pair(rng))
        adapter = load_adapter_bytes({"w.safetensors": save({"m.lora_down.weight": a, "m.lora_up.weight": b,
                                                             "m.alpha": np.array(2.0, np.float32)})})
        data = adapter_files(adapter, format="npz")["adapter.npz"]
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            assert sorted(npz.files) == ["m.A", "m.B", "m.alpha"]
            np.testing.assert_array_equal(npz["m.A"], a.astype(np.float32))
            assert float(npz["m.alpha"]) == 2.0
        assert load_adapter_bytes({"x.npz": data}).modules[0].scale == 0.5

    def test_bf16_peft_written_as_bf16(self, tmp_path):
        """bfloat16 factors are written as BF16 by safetensors.numpy.save (with ml_dtypes arrays)."""
        rng = np.random.default_rng(32)
        a, b = (x.astype(ml_dtypes.bfloat16) for x in pair(rng))
        adapter = load_adapter_bytes({"w.safetensors": save({P + ".lora_A.weight": a, P + ".lora_B.weight": b})})
        save_adapter(adapter, tmp_path / "out")
        with safetensors.safe_open(tmp_path / "out" / "adapter_model.safetensors", framework="numpy") as f:
            assert f.get_slice(P + ".lora_A.weight").get_dtype() == "BF16"
            np.testing.assert_array_equal(f.get_tensor(P + ".lora_B.weight"), b)

    def test_bad_write_format(self):
        """An unknown output format lists the choices."""
        rng = np.random.default_rng(33)
        a, b = pair(rng)
        adapter = load_adapter_bytes({"w.safetensors": save({"m.lora_A.weight": a, "m.lora_B.weight": b})})
        with pytest.raises(ConfigError, match=r"`format` should be one of peft, kohya, mlx, npz; got 'onnx'"):
            adapter_files(adapter, format="onnx")

    def test_transposed_cannot_be_kohya(self):
        """fan_in_fan_out modules cannot be written in kohya's convention."""
        rng = np.random.default_rng(34)
        a, b = pair(rng)
        adapter = load_adapter_bytes({"w.safetensors": save({"m.lora_A.weight": a, "m.lora_B.weight": b}),
                                      "c.json": json.dumps({"r": 4, "lora_alpha": 4, "fan_in_fan_out": True}).encode()})
        with pytest.raises(ConfigError, match=r"adds \(B @ A\)\^T, which the kohya format cannot express"):
            adapter_files(adapter, format="kohya")

