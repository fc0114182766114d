"""Base weights: lazy reading, name mapping adapter -> base key, shape checks, shards, bytes twin."""

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save, save_file

from lorarank import AdapterError
from lorarank.base import canonical_name, open_base, open_base_bytes

FAMILIES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "families"
needs_families = pytest.mark.skipif(not FAMILIES.is_dir(), reason=f"family samples not found at {FAMILIES}")


def weights(rng, keys_shapes):
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in keys_shapes.items()}


@pytest.fixture
def llama_base(tmp_path):
    rng = np.random.default_rng(0)
    t = weights(rng, {"model.layers.0.self_attn.q_proj.weight": (8, 6),
                      "model.layers.0.self_attn.v_proj.weight": (4, 6),
                      "model.layers.1.self_attn.q_proj.weight": (8, 6),
                      "model.embed_tokens.weight": (10, 6)})
    path = tmp_path / "model.safetensors"
    save_file(t, str(path))
    return path, t


class TestCanonicalName:
    @pytest.mark.parametrize("name,want", [
        ("base_model.model.model.layers.0.self_attn.q_proj", "model_layers_0_self_attn_q_proj"),
        ("model.layers.1.mlp.down_proj", "model_layers_1_mlp_down_proj"),
        ("unet.down_blocks.0.attentions.0.proj_in", "down_blocks_0_attentions_0_proj_in"),
        ("lora_unet_down_blocks_0_attentions_0_proj_in", "down_blocks_0_attentions_0_proj_in"),
        ("lora_te1_text_model_encoder_layers_0_mlp_fc1", "text_model_encoder_layers_0_mlp_fc1"),
    ])
    def test_adapter_names(self, name, want):
        assert canonical_name(name) == want

    def test_base_keys(self):
        assert canonical_name("model.layers.0.self_attn.q_proj.weight", base=True) == "model_layers_0_self_attn_q_proj"
        assert canonical_name("model.diffusion_model.input_blocks.1.proj_in.weight", base=True) == "input_blocks_1_proj_in"


class TestOpenBase:
    def test_peft_mlx_and_kohya_names_find_the_same_weight(self, llama_base):
        path, t = llama_base
        base = open_base(path)
        for name in ("base_model.model.model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj"):
            np.testing.assert_array_equal(base.weight(name, (8, 6)), t["model.layers.0.self_attn.q_proj.weight"])
        assert base.key_for("base_model.model.model.layers.1.self_attn.q_proj") == "model.layers.1.self_attn.q_proj.weight"

    def test_suffix_match_when_the_base_has_no_model_prefix(self, tmp_path):
        rng = np.random.default_rng(1)
        t = weights(rng, {"layers.0.attn.q.weight": (3, 5), "layers.1.attn.q.weight": (3, 5)})
        save_file(t, str(tmp_path / "m.safetensors"))
        base = open_base(tmp_path / "m.safetensors")
        assert base.key_for("base_model.model.model.layers.1.attn.q") == "layers.1.attn.q.weight"

    def test_ambiguous_suffix_is_an_error_not_a_guess(self, tmp_path):
        rng = np.random.default_rng(2)
        t = weights(rng, {"a.layers.0.q.weight": (3, 5), "b.layers.0.q.weight": (3, 5)})
        save_file(t, str(tmp_path / "m.safetensors"))
        with pytest.raises(AdapterError, match="ambiguous"):
            open_base(tmp_path / "m.safetensors").key_for("layers.0.q")

    def test_missing_module_is_named(self, llama_base):
        with pytest.raises(AdapterError, match="no weight for module 'base_model.model.model.layers.5.mlp.up_proj'"):
            open_base(llama_base[0]).weight("base_model.model.model.layers.5.mlp.up_proj", (8, 6))

    def test_shape_mismatch_is_named(self, llama_base):
        with pytest.raises(AdapterError, match=r"has shape \[4, 6\], but module .* updates a 8 x 6 matrix"):
            open_base(llama_base[0]).weight("model.layers.0.self_attn.v_proj", (8, 6))

    def test_transposed_layer(self, tmp_path):
        """GPT-2 Conv1D stores (in, out); the weight comes back in the update's (out, in)."""
        w = np.arange(12, dtype=np.float32).reshape(3, 4)
        save_file({"transformer.h.0.attn.c_attn.weight": w}, str(tmp_path / "m.safetensors"))
        got = open_base(tmp_path / "m.safetensors").weight("base_model.model.transformer.h.0.attn.c_attn", (4, 3),
                                                             transposed=True)
        np.testing.assert_array_equal(got, w.T)

    def test_conv_kernel_is_flattened(self, tmp_path):
        w = np.random.default_rng(3).standard_normal((5, 2, 3, 3)).astype(np.float32)
        save_file({"down_blocks.0.resnets.0.conv1.weight": w}, str(tmp_path / "u.safetensors"))
        got = open_base(tmp_path / "u.safetensors").weight("lora_unet_down_blocks_0_resnets_0_conv1", (5, 18))
        np.testing.assert_array_equal(got, w.reshape(5, 18))

    def test_bfloat16_base(self, tmp_path):
        w = np.random.default_rng(4).standard_normal((4, 4)).astype(ml_dtypes.bfloat16)
        save_file({"model.layers.0.q.weight": w}, str(tmp_path / "m.safetensors"))
        got = open_base(tmp_path / "m.safetensors").weight("model.layers.0.q", (4, 4))
        np.testing.assert_array_equal(got, w.astype(np.float64))

    def test_sharded_folder_with_index(self, tmp_path):
        rng = np.random.default_rng(5)
        one = weights(rng, {"model.layers.0.q.weight": (3, 4)})
        two = weights(rng, {"model.layers.1.q.weight": (3, 4)})
        save_file(one, str(tmp_path / "model-00001-of-00002.safetensors"))
        save_file(two, str(tmp_path / "model-00002-of-00002.safetensors"))
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "model.layers.0.q.weight": "model-00001-of-00002.safetensors",
            "model.layers.1.q.weight": "model-00002-of-00002.safetensors"}}))
        base = open_base(tmp_path)
        np.testing.assert_array_equal(base.weight("model.layers.1.q", (3, 4)), two["model.layers.1.q.weight"])

    def test_index_naming_a_file_outside_the_folder_is_refused(self, tmp_path):
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../x.safetensors"}}))
        with pytest.raises(AdapterError, match="not a file in"):
            open_base(tmp_path)

    @pytest.mark.parametrize("content,match", [("", "holds no .safetensors"), (None, "do not exist")])
    def test_bad_paths(self, tmp_path, content, match):
        path = tmp_path if content == "" else tmp_path / "nope.safetensors"
        with pytest.raises(AdapterError, match=match):
            open_base(path)

    def test_not_safetensors(self, tmp_path):
        (tmp_path / "m.safetensors").write_bytes(b"\x00" * 64)
        with pytest.raises(AdapterError, match="not a valid safetensors file"):
            open_base(tmp_path / "m.safetensors")

    def test_non_finite_weight(self, tmp_path):
        save_file({"model.q.weight": np.full((2, 2), np.nan, np.float32)}, str(tmp_path / "m.safetensors"))
        with pytest.raises(AdapterError, match="NaN or infinite"):
            open_base(tmp_path / "m.safetensors").weight("model.q", (2, 2))

    def test_bytes_twin_equals_path(self, llama_base):
        path, t = llama_base
        base = open_base_bytes({"model.safetensors": save(t)})
        np.testing.assert_array_equal(base.weight("base_model.model.model.layers.0.self_attn.v_proj", (4, 6)),
                                      t["model.layers.0.self_attn.v_proj.weight"])


@needs_families
@pytest.mark.parametrize("case", ["peft_dora", "mlx_dora"])
def test_sample_base_weights_map_every_module(case):
    """Every module of the DoRA samples finds the key the truth file names, with its shape."""
    truth = json.loads((FAMILIES / f"{case}.truth.json").read_text())
    base = open_base(FAMILIES / case / "base_weights.safetensors")
    for name, rec in truth["modules"].items():
        assert base.key_for(name) == rec.get("base_weight_key", name + ".weight")
        assert base.weight(name, tuple(rec["shape"])).shape == tuple(rec["shape"])
