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


# ------------------------------------------------------------------------------ own edge cases
def dense_svals(dw: np.ndarray) -> np.ndarray:
    return np.linalg.svd(dw.reshape(dw.shape[0], -1), compute_uv=False)


def module_svals(m) -> np.ndarray:
    return np.linalg.svd(dense_update(m), compute_uv=False)


def rebuild_tucker(t, wa, wb):
    """LyCORIS / PEFT make_weight_cp: einsum('i j k l, i p, j r -> p r k l')."""
    return np.einsum("ijkl,ip,jr->prkl", t, wa, wb)


class TestOwnFiles:
    """Files written here with safetensors / gguf for the cases the samples do not cover."""

    def test_tucker_loha(self):
        """LyCORIS LoHa with hada_t1 / hada_t2 on a 3x3 conv: exact Khatri-Rao of the Tucker folds."""
        from safetensors.numpy import save

        rng = np.random.default_rng(40)
        r, out, n_in = 3, 10, 6
        t = {k: rng.standard_normal((r, r, 3, 3)) for k in ("t1", "t2")}
        w = {k: rng.standard_normal(s) for k, s in (("1a", (r, out)), ("1b", (r, n_in)), ("2a", (r, out)), ("2b", (r, n_in)))}
        arrays = {"lora_unet_c.hada_t1": t["t1"], "lora_unet_c.hada_t2": t["t2"], "lora_unet_c.alpha": np.array(1.5)}
        arrays.update({f"lora_unet_c.hada_w{k[0]}_{k[1]}": v for k, v in w.items()})
        adapter = load_adapter_bytes({"l.safetensors": save(arrays)})
        (m,) = adapter.modules
        assert (m.family, m.stored_rank, m.rank, m.scale, m.shape, m.kernel) == ("loha", 3, 9, 0.5, (10, 54), (6, 3, 3))
        dw = rebuild_tucker(t["t1"], w["1a"], w["1b"]) * rebuild_tucker(t["t2"], w["2a"], w["2b"]) * 0.5
        np.testing.assert_allclose(module_svals(m)[:9], dense_svals(dw)[:9], atol=1e-10 * dense_svals(dw)[0])

    def test_lokr_factorised_w1_full_w2(self):
        """LyCORIS LoKr with lokr_w1_a / lokr_w1_b and a full lokr_w2: scale alpha / dim of w1."""
        from safetensors.numpy import save

        rng = np.random.default_rng(41)
        w1a, w1b, w2 = rng.standard_normal((4, 2)), rng.standard_normal((2, 3)), rng.standard_normal((5, 7))
        data = save({"lora_te_m.lokr_w1_a": w1a, "lora_te_m.lokr_w1_b": w1b, "lora_te_m.lokr_w2": w2,
                     "lora_te_m.alpha": np.array(1.0)})
        (m,) = load_adapter_bytes({"k.safetensors": data}).modules
        assert (m.family, m.stored_rank, m.scale, m.shape) == ("lokr", 2, 0.5, (20, 21))
        dw = 0.5 * np.kron(w1a @ w1b, w2)
        np.testing.assert_allclose(module_svals(m)[:10], dense_svals(dw)[:10], atol=1e-12 * dense_svals(dw)[0])

    def test_lokr_tucker_conv(self):
        """LoKr with lokr_t2 on a 3x3 conv: kron of w1 with the Tucker fold, flattened (out, in*9)."""
        from safetensors.numpy import save

        rng = np.random.default_rng(42)
        w1 = rng.standard_normal((2, 3))
        t2, w2a, w2b = rng.standard_normal((2, 2, 3, 3)), rng.standard_normal((2, 4)), rng.standard_normal((2, 5))
        data = save({"lora_unet_c.lokr_w1": w1, "lora_unet_c.lokr_t2": t2, "lora_unet_c.lokr_w2_a": w2a,
                     "lora_unet_c.lokr_w2_b": w2b, "lora_unet_c.alpha": np.array(4.0)})
        (m,) = load_adapter_bytes({"k.safetensors": data}).modules
        assert (m.family, m.stored_rank, m.scale, m.shape, m.kernel) == ("lokr", 2, 2.0, (8, 135), (15, 3, 3))
        full = np.kron(w1[:, :, None, None], rebuild_tucker(t2, w2a, w2b)) * 2.0    # torch.kron semantics
        np.testing.assert_allclose(module_svals(m)[:12], dense_svals(full)[:12], atol=1e-12 * dense_svals(full)[0])

    def test_lokr_both_full_peft_vs_lycoris(self):
        """Both halves full: LyCORIS applies scale 1, PEFT keeps alpha / r (families README)."""
        from safetensors.numpy import save

        rng = np.random.default_rng(43)
        w1, w2 = rng.standard_normal((2, 2)), rng.standard_normal((3, 3))
        (ly,) = load_adapter_bytes({"k.safetensors": save({"lora_unet_m.lokr_w1": w1, "lora_unet_m.lokr_w2": w2,
                                                             "lora_unet_m.alpha": np.array(3.0)})}).modules
        assert ly.scale == 1.0 and ly.stored_rank is None
        config = {"peft_type": "LOKR", "r": 6, "alpha": 3.0}
        (pf,) = load_adapter_bytes({"w.safetensors": save({PEFT + "m.lokr_w1": w1, PEFT + "m.lokr_w2": w2}),
                                    "adapter_config.json": json.dumps(config).encode()}).modules
        assert pf.scale == 0.5 and pf.family == "lokr"

    def test_adalora_rank_zero(self):
        """An AdaLoRA module pruned to rank 0 (tensors (0, in)) reads as an exactly-zero update."""
        from safetensors.numpy import save

        rng = np.random.default_rng(44)
        p = PEFT + "model.layers.0.self_attn."
        data = save({p + "v_proj.lora_A": np.zeros((0, 8), np.float32), p + "v_proj.lora_B": np.zeros((6, 0), np.float32),
                     p + "v_proj.lora_E": np.zeros((0, 1), np.float32),
                     p + "o_proj.lora_A": rng.standard_normal((2, 8)).astype(np.float32),
                     p + "o_proj.lora_B": rng.standard_normal((8, 2)).astype(np.float32),
                     p + "o_proj.lora_E": np.array([[0.5], [0.0]], np.float32)})
        config = {"peft_type": "ADALORA", "init_r": 4, "r": 2, "lora_alpha": 8, "target_modules": ["v_proj", "o_proj"]}
        adapter = load_adapter_bytes({"w.safetensors": data, "adapter_config.json": json.dumps(config).encode()})
        zero, live = adapter.module(p + "v_proj"), adapter.module(p + "o_proj")
        assert (zero.rank, zero.kept_rank, zero.shape) == (0, 0, (6, 8))
        assert zero.scale == 8 / 1e-5 and not np.any(dense_update(zero))
        assert live.kept_rank == 1 and live.scale == 8 / (4 + 1e-5)

    def test_quantised_gguf(self, tmp_path):
        """A Q8_0 GGUF LoRA written with gguf.GGUFWriter: dequantised exactly as gguf does, names mapped."""
        import gguf

        rng = np.random.default_rng(45)
        a = rng.standard_normal((4, 64)).astype(np.float32)
        q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
        b = rng.standard_normal((32, 4)).astype(np.float32)
        path = tmp_path / "q.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_string("general.type", "adapter")
        w.add_string("adapter.type", "lora")
        w.add_float32("adapter.lora.alpha", 8.0)
        w.add_tensor("blk.3.ffn_down.weight.lora_a", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor("blk.3.ffn_down.weight.lora_b", b)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        for adapter in (load_adapter(path), load_adapter_bytes({"q.gguf": path.read_bytes()})):
            (m,) = adapter.modules
            assert (m.name, m.scale, adapter.format) == ("model.layers.3.mlp.down_proj", 2.0, "gguf")
            np.testing.assert_array_equal(m.A, gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0))
            assert "Q8_0 tensors dequantised" in adapter.scaling

    def test_gguf_model_refused(self, tmp_path):
        """A GGUF model (not an adapter) is named as such."""
        import gguf

        path = tmp_path / "m.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_string("general.type", "model")
        w.add_tensor("blk.0.attn_q.weight", np.ones((4, 4), np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with pytest.raises(AdapterError, match=r"m.gguf is a GGUF model, not a LoRA adapter"):
            load_adapter(path)

    def test_lycoris_dora_columnwise_refused(self):
        """LyCORIS dora_scale per input column (shape (1, in)) is refused by name, not misread."""
        from safetensors.numpy import save

        from lorarank.errors import UnsupportedAdapterError

        rng = np.random.default_rng(46)
        data = save({"m.lora_down.weight": rng.standard_normal((2, 8)), "m.lora_up.weight": rng.standard_normal((6, 2)),
                     "m.dora_scale": np.ones((1, 8))})
        with pytest.raises(UnsupportedAdapterError, match=r"a LyCORIS DoRA magnitude per input column"):
            load_adapter_bytes({"d.safetensors": data})


# ------------------------------------------------------------------------------ writers
@needs_families
def test_modules_to_save_round_trip(tmp_path):
    """Written back as PEFT, the classifier head is byte-identical and the config still names it."""
    from lorarank.adapters import adapter_files

    adapter, doc = load_case("peft_modules_to_save")
    files = adapter_files(adapter, format="peft")
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    config = json.loads(files["adapter_config.json"])
    assert config["modules_to_save"] == doc["adapter_config"]["modules_to_save"]
    back = load_adapter(tmp_path)
    src = load_file(FAMILIES / doc["audit_path"] / "adapter_model.safetensors")
    out = load_file(tmp_path / "adapter_model.safetensors")
    assert set(out) == set(src)
    for key in src:
        assert out[key].tobytes() == src[key].tobytes() and out[key].dtype == src[key].dtype
    assert [(m.name, m.scale) for m in back.modules] == [(m.name, m.scale) for m in adapter.modules]


@needs_families
def test_loha_written_as_lora(tmp_path):
    """A LoHa written as PEFT is plain LoRA of the same update, with a LORA config."""
    from lorarank.adapters import adapter_files

    adapter, _ = load_case("peft_loha")
    files = adapter_files(adapter, format="peft")
    config = json.loads(files["adapter_config.json"])
    assert config["peft_type"] == "LORA" and "alpha" not in config
    back = load_adapter_bytes(files)
    for a, b in zip(adapter.modules, back.modules):
        assert b.family == "lora" and b.rank == a.rank
        np.testing.assert_allclose(module_svals(b), module_svals(a), atol=1e-12 * module_svals(a)[0])


@needs_families
def test_peft_loads_written_modules_to_save(tmp_path):
    """peft itself loads the written adapter (skips when peft / torch are not installed).

    Runs in a subprocess so that torch is never imported into the test process (its memory
    would be inherited by the memory-measuring subprocesses of other tests).
    """
    import importlib.util
    import subprocess
    import sys
    import textwrap

    for mod in ("peft", "transformers", "torch"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed here; install peft + transformers + torch to check loading")
    from lorarank.adapters import adapter_files

    adapter, doc = load_case("peft_modules_to_save")
    for name, data in adapter_files(adapter, format="peft").items():
        (tmp_path / name).write_bytes(data)
    src_path = FAMILIES / doc["audit_path"] / "adapter_model.safetensors"
    code = textwrap.dedent(f"""
        import numpy as np, peft, transformers
        from safetensors.numpy import load_file
        cfg = transformers.LlamaConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=96,
                                       num_labels=4, pad_token_id=95)
        model = peft.PeftModel.from_pretrained(transformers.LlamaForSequenceClassification(cfg), {str(tmp_path)!r})
        state = {{k: v.detach().numpy() for k, v in model.state_dict().items()}}
        src = load_file({str(src_path)!r})
        head = [k for k in state if "score" in k and "modules_to_save" in k and k.endswith("weight")]
        assert head and state[head[0]].tobytes() == src["base_model.model.score.weight"].tobytes()
        q = "base_model.model.model.layers.0.self_attn.q_proj"
        assert np.array_equal(state[q + ".lora_A.default.weight"], src[q + ".lora_A.weight"])
        c = model.peft_config["default"]
        assert c.lora_alpha / c.r == 1.4
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
