"""Full fine-tunes: the spectrum of W_ft - W0 per module against float64 truth, pairing, streaming, stop.

The real case is ``samples/base_relative``: a small Llama pretrained and then fully fine-tuned
with transformers (seeded), with float64 truth computed from its safetensors files.
"""

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from lorarank import AdapterError, ConfigError
from lorarank.finetune import (ENERGY_THRESHOLDS, FinetuneSettings, audit_finetune, audit_module,
                               finetune_reading, finetune_report, module_update, pair_models)
from lorarank.randsvd import top_svd
from lorarank.weights import open_model, open_model_bytes

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "base_relative"
needs_samples = pytest.mark.skipif(not (SAMPLES / "finetuned").is_dir(),
                                   reason=f"the fine-tuned sample model is not at {SAMPLES}")


def truth():
    return json.loads((SAMPLES / "finetuned.truth.json").read_text())["modules"]


def save(path, tensors, dtype=np.float32):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v.astype(dtype)) for k, v in tensors.items()}, str(path))
    return path


def toy_pair(tmp_path, *, dtype=np.float32, rank=3, seed=0, extra_ft=None, extra_base=None):
    """A two-layer toy model and a fine-tune whose q_proj updates have rank ``rank``."""
    rng = np.random.default_rng(seed)
    base = {"model.embed_tokens.weight": rng.standard_normal((40, 16)),
            "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((16, 16)),
            "model.layers.0.mlp.up_proj.weight": rng.standard_normal((32, 16)),
            "model.layers.0.input_layernorm.weight": np.ones(16),
            "model.layers.1.self_attn.q_proj.weight": rng.standard_normal((16, 16)),
            "model.layers.1.mlp.up_proj.weight": rng.standard_normal((32, 16)),
            "model.norm.weight": np.ones(16)}
    ft = {k: v.copy() for k, v in base.items()}
    for layer in range(2):
        key = f"model.layers.{layer}.self_attn.q_proj.weight"
        ft[key] = ft[key] + 0.1 * rng.standard_normal((16, rank)) @ rng.standard_normal((rank, 16))
        ft[f"model.layers.{layer}.mlp.up_proj.weight"] += 0.05 * rng.standard_normal((32, 16))
    ft["model.norm.weight"] = ft["model.norm.weight"] + 0.01
    ft.update(extra_ft or {})
    base.update(extra_base or {})
    return (save(tmp_path / "ft" / "model.safetensors", ft, dtype),
            save(tmp_path / "base" / "model.safetensors", base, dtype))


# ------------------------------------------------------------------------------ real model
@needs_samples
class TestRealFinetune:
    def test_every_module_matches_float64_truth(self):
        """Top 64 values to 1e-6 of sigma_1, energy ranks, rank-k errors and relative sizes exact."""
        report = audit_finetune(open_model(SAMPLES / "finetuned"), open_model(SAMPLES / "base"))
        t = truth()
        assert {m.name for m in report.modules} == set(t) and len(report.modules) == 23
        for m in report.modules:
            want = t[m.name]
            s = np.array(want["singular_values"])
            assert m.shape == tuple(want["shape"])
            assert np.max(np.abs(m.singular_values[:s.size] - s)) <= 1e-6 * s[0], m.name
            assert m.bound <= 1e-6
            assert m.energy_rank == {"0.5": want["energy_rank_50"], "0.9": want["energy_rank_90"],
                                     "0.99": want["energy_rank_99"]}, m.name
            for k, e in want["rank_k_rel_frobenius_error"].items():
                assert m.lora_error[k] == pytest.approx(e, abs=1e-9), (m.name, k)
            assert m.relative_size == pytest.approx(want["relative_size"], rel=1e-12)
            assert m.frobenius == pytest.approx(want["frobenius"], rel=1e-12)
            assert m.stable_rank == pytest.approx(want["stable_rank"], rel=1e-9)
        kinds = {m.name: m.kind for m in report.modules}
        assert kinds["model.embed_tokens"] == "embedding" and kinds["lm_head"] == "linear"

    def test_randomized_method_on_the_real_updates(self):
        """The subspace iteration on each real dW: the top 16 within 1e-6 of sigma_1 and within its bounds."""
        ft, base = open_model(SAMPLES / "finetuned"), open_model(SAMPLES / "base")
        t = truth()
        for pair in pair_models(ft, base).pairs:
            dW, _ = module_update(pair, ft, base)
            got = top_svd(dW, 12, method="randomized", oversample=12)
            s = np.array(t[pair.name]["singular_values"][:12])
            assert got.method == "randomized"
            assert np.all(np.abs(got.S - s) <= got.bounds + 1e-12 * s[0]), pair.name
            assert np.max(np.abs(got.S - s)) <= 1e-6 * s[0], pair.name

    def test_norms_that_changed_are_listed(self):
        report = audit_finetune(open_model(SAMPLES / "finetuned"), open_model(SAMPLES / "base"))
        norms = [o for o in report.others if o.kind == "norm"]
        assert len(norms) == 7 and all(o.changed for o in norms)
        assert report.summary["left_out_changed"] == [o.name for o in norms]

    def test_reading_says_the_rank_per_share(self):
        report = audit_finetune(open_model(SAMPLES / "finetuned"), open_model(SAMPLES / "base"))
        text = " ".join(finetune_reading(report))
        assert "50 %: **1 to 5** (median 3)" in text and "99 %: **11 to 53**" in text
        assert "q_proj 2-4 / 6-13 / 18-34" in text
        assert "rank 8 leaves 12-56 %" in text


# ------------------------------------------------------------------------------ pairing
class TestPairing:
    def test_pairs_and_left_out(self, tmp_path):
        ft, base = toy_pair(tmp_path, extra_ft={"model.layers.0.mlp.up_proj.bias": np.zeros(32),
                                                "model.new_head.weight": np.ones((4, 16))},
                            extra_base={"model.layers.0.mlp.up_proj.bias": np.zeros(32),
                                        "model.old_head.weight": np.ones((4, 16))})
        pairing = pair_models(open_model(ft), open_model(base))
        assert [p.name for p in pairing.pairs] == [
            "model.embed_tokens", "model.layers.0.mlp.up_proj", "model.layers.0.self_attn.q_proj",
            "model.layers.1.mlp.up_proj", "model.layers.1.self_attn.q_proj"]
        kinds = {o.name: o.kind for o in pairing.others}
        assert kinds == {"model.layers.0.input_layernorm.weight": "norm", "model.norm.weight": "norm",
                         "model.layers.0.mlp.up_proj.bias": "bias",
                         "model.new_head.weight": "only in the fine-tune",
                         "model.old_head.weight": "only in the base"}

    def test_base_saved_without_the_model_prefix(self, tmp_path):
        """Names match as --base matches them: a base without ``model.`` pairs by suffix."""
        ft, _ = toy_pair(tmp_path)
        rng = np.random.default_rng(1)
        stripped = save(tmp_path / "stripped.safetensors",
                        {"layers.0.self_attn.q_proj.weight": rng.standard_normal((16, 16))})
        pairing = pair_models(open_model(ft), open_model(stripped))
        assert [(p.ft_key, p.base_key) for p in pairing.pairs] == [
            ("model.layers.0.self_attn.q_proj.weight", "layers.0.self_attn.q_proj.weight")]

    def test_resized_vocabulary_is_listed_not_audited(self, tmp_path):
        ft, base = toy_pair(tmp_path, extra_ft={"model.embed_tokens.weight": np.ones((42, 16))})
        report = audit_finetune(open_model(ft), open_model(base))
        emb = [o for o in report.others if o.name == "model.embed_tokens.weight"][0]
        assert emb.kind == "shape changed" and emb.changed and "[40, 16] in the base" in emb.reason
        assert "model.embed_tokens" not in {m.name for m in report.modules}

    def test_unrelated_models_are_refused(self, tmp_path):
        ft, _ = toy_pair(tmp_path)
        other = save(tmp_path / "other.safetensors", {"encoder.block.0.weight": np.ones((3, 3))})
        with pytest.raises(AdapterError, match="share no weight matrix .* is other.safetensors the base"):
            pair_models(open_model(ft), open_model(other))

    def test_embeddings_can_be_skipped(self, tmp_path):
        ft, base = toy_pair(tmp_path)
        report = audit_finetune(open_model(ft), open_model(base),
                                settings=FinetuneSettings(embeddings=False))
        assert "model.embed_tokens" not in {m.name for m in report.modules}
        assert any(o.kind == "embedding" and "as asked" in o.reason for o in report.others)


# ---------------------------------------------------------------------------- the numbers
class TestToyUpdates:
    def test_planted_rank_and_unchanged_modules(self, tmp_path):
        ft, base = toy_pair(tmp_path, rank=3)
        report = audit_finetune(open_model(ft), open_model(base))
        by = {m.name: m for m in report.modules}
        q = by["model.layers.0.self_attn.q_proj"]
        assert q.energy_rank["0.99"] <= 3 and q.singular_values[3] <= 1e-6 * q.singular_values[0]
        assert q.lora_error["8"] == pytest.approx(0.0, abs=1e-6)
        emb = by["model.embed_tokens"]
        assert emb.flags == ("unchanged",) and emb.energy == 0.0 and emb.energy_rank["0.9"] == 0
        assert report.summary["unchanged"] == ["model.embed_tokens"]

    def test_bfloat16_models_are_decoded_exactly(self, tmp_path, monkeypatch):
        """bf16 weights: dW (float64, or float32 when large) equals the float64 difference of
        the decoded values."""
        import lorarank.finetune as finetune

        ft, base = toy_pair(tmp_path, dtype=ml_dtypes.bfloat16)
        fm, bm = open_model(ft), open_model(base)
        pair = [p for p in pair_models(fm, bm).pairs if p.name.endswith("0.mlp.up_proj")][0]
        from safetensors.numpy import load_file

        a = load_file(str(ft))[pair.ft_key].astype(np.float64)
        b = load_file(str(base))[pair.base_key].astype(np.float64)
        dW, w0 = module_update(pair, fm, bm)
        assert dW.dtype == np.float64 and np.array_equal(dW, a - b)
        monkeypatch.setattr(finetune, "FLOAT64_UPDATE_BYTES", 0)  # as if it were an 8B embedding
        dW, w0 = module_update(pair, fm, bm)
        assert dW.dtype == np.float32 and np.array_equal(dW.astype(np.float64), a - b)
        assert w0 == pytest.approx(np.linalg.norm(b), rel=1e-12)
        m = audit_module(pair, fm, bm)
        assert np.allclose(m.singular_values, np.linalg.svd(a - b, compute_uv=False), rtol=0, atol=1e-12)

    def test_energy_rank_above_what_was_computed_is_unknown(self, tmp_path):
        """A flat spectrum needs more than max_rank values: "> k", never a wrong number."""
        rng = np.random.default_rng(3)
        base = {"model.layers.0.mlp.down_proj.weight": rng.standard_normal((600, 700))}
        ft = {k: v + rng.standard_normal(v.shape) for k, v in base.items()}
        f, b = save(tmp_path / "ft.safetensors", ft), save(tmp_path / "base.safetensors", base)
        settings = FinetuneSettings(top=16, max_rank=64, method="randomized")
        report = audit_finetune(open_model(f), open_model(b), settings=settings)
        (m,) = report.modules
        s = np.linalg.svd(ft["model.layers.0.mlp.down_proj.weight"].astype(np.float32).astype(np.float64)
                          - base["model.layers.0.mlp.down_proj.weight"].astype(np.float32), compute_uv=False)
        k50 = int(np.searchsorted(np.cumsum(s ** 2), 0.5 * np.sum(s ** 2))) + 1
        assert k50 > 64
        assert m.computed == 64 and m.energy_rank == {"0.5": None, "0.9": None, "0.99": None}
        assert m.needs(0.5) == "> 64" and m.singular_values.size == 16
        assert np.max(np.abs(m.singular_values - s[:16])) <= 1e-6 * s[0]
        assert report.to_dict()["modules"][0]["energy_rank"] == {"0.5": None, "0.9": None, "0.99": None}
        assert "more than 64 in every module" in finetune_reading(report)[0]

    def test_nan_weights_are_refused(self, tmp_path):
        bad = np.ones((16, 16))
        bad[2, 3] = np.nan
        ft, base = toy_pair(tmp_path, extra_ft={"model.layers.0.self_attn.q_proj.weight": bad})
        with pytest.raises(AdapterError, match="q_proj.weight' in ft holds NaN or infinite values"):
            audit_finetune(open_model(ft.parent), open_model(base))


# -------------------------------------------------------------------------- stop, progress
class TestProgressAndStop:
    def test_progress_counts_modules_and_time_left(self, tmp_path):
        ft, base = toy_pair(tmp_path)
        seen = []
        audit_finetune(open_model(ft), open_model(base),
                       progress=lambda done, total, left: seen.append((done, total, left)))
        assert [s[:2] for s in seen] == [(i, 5) for i in range(6)]
        assert seen[0][2] is None and all(s[2] is not None and s[2] >= 0 for s in seen[1:])
        assert seen[-1][2] == 0

    def test_stop_keeps_what_is_done(self, tmp_path):
        ft, base = toy_pair(tmp_path)
        done = []
        report = audit_finetune(open_model(ft), open_model(base),
                                progress=lambda d, t, left: done.append(d), stop=lambda: len(done) > 2)
        assert report.stopped and len(report.modules) == 2 and report.total == 5
        assert report.summary["done"] == 2 and report.summary["stopped"] is True
        assert "(stopped after 2 of 5 modules)" in finetune_reading(report)[0]

    def test_report_from_cached_modules(self, tmp_path):
        """The page caches modules one by one and assembles the same report."""
        ft, base = toy_pair(tmp_path)
        fm, bm = open_model(ft), open_model(base)
        pairing = pair_models(fm, bm)
        whole = audit_finetune(fm, bm)
        parts = finetune_report(pairing, [audit_module(p, fm, bm) for p in pairing.pairs])
        a, b = whole.to_dict(), parts.to_dict()
        for doc in (a, b):
            for m in doc["modules"]:
                m.pop("seconds")
            doc["summary"].pop("seconds")
            doc.pop("left_out")
            doc["summary"].pop("left_out_changed")
        assert a == b


class TestSources:
    def test_uploaded_bytes_and_shards(self, tmp_path):
        """Bytes (the page's uploads) and a folder of shards give the same report as one file."""
        ft, base = toy_pair(tmp_path)
        from safetensors.numpy import load_file

        tensors = load_file(str(ft))
        keys = sorted(tensors)
        save(tmp_path / "shards" / "model-00001-of-00002.safetensors", {k: tensors[k] for k in keys[:3]})
        save(tmp_path / "shards" / "model-00002-of-00002.safetensors", {k: tensors[k] for k in keys[3:]})
        index = {"metadata": {}, "weight_map": {k: f"model-0000{1 + (i >= 3)}-of-00002.safetensors"
                                                for i, k in enumerate(keys)}}
        (tmp_path / "shards" / "model.safetensors.index.json").write_text(json.dumps(index))
        one = audit_finetune(open_model(ft), open_model(base))
        shards = audit_finetune(open_model(tmp_path / "shards"), open_model(base))
        upload = audit_finetune(open_model_bytes([("model.safetensors", ft.read_bytes())]),
                                open_model_bytes({"model.safetensors": base.read_bytes()}))
        for other in (shards, upload):
            assert [m.name for m in other.modules] == [m.name for m in one.modules]
            for a, b in zip(one.modules, other.modules):
                assert np.array_equal(a.singular_values, b.singular_values)

    def test_shard_index_naming_a_path_outside_is_refused(self, tmp_path):
        ft, _ = toy_pair(tmp_path)
        (ft.parent / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"a": "../base/model.safetensors"}}))
        with pytest.raises(AdapterError, match="names shard '../base/model.safetensors'"):
            open_model(ft.parent)

    def test_a_tensor_in_two_shards_is_refused(self, tmp_path):
        """Two shards naming the same tensor: one sentence naming both files (weights.merge_entries,
        the rule the Hub's byte-range reader shares)."""
        ft, _ = toy_pair(tmp_path)
        from safetensors.numpy import load_file

        tensors = load_file(str(ft))
        first = sorted(tensors)[0]
        save(tmp_path / "twice" / "model-00001-of-00002.safetensors", tensors)
        save(tmp_path / "twice" / "model-00002-of-00002.safetensors", {first: tensors[first]})
        index = {"weight_map": {k: "model-00001-of-00002.safetensors" for k in tensors}}
        index["weight_map"][first + ".copy"] = "model-00002-of-00002.safetensors"
        (tmp_path / "twice" / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(AdapterError, match=rf"tensor '{first}' appears in two files of .* "
                                               r"\(model-00001-of-00002.safetensors and model-00002-of-00002.safetensors\)"):
            open_model(tmp_path / "twice")

    def test_an_adapter_folder_is_not_a_model(self, tmp_path):
        (tmp_path / "adapter_config.json").write_text("{}")
        save(tmp_path / "adapter_model.safetensors", {"x.lora_A.weight": np.ones((2, 3))})
        with pytest.raises(AdapterError, match="is a LoRA adapter .* not a model"):
            open_model(tmp_path)

    def test_uploaded_adapter_is_not_a_model(self):
        from safetensors.numpy import save

        data = save({"base_model.model.x.lora_A.weight": np.ones((2, 3), dtype=np.float32)})
        with pytest.raises(AdapterError, match="is a LoRA adapter, not a model"):
            open_model_bytes([("adapter_model.safetensors", data)])

    def test_settings_are_checked(self):
        with pytest.raises(ConfigError, match="`max_rank` should be at least 1"):
            FinetuneSettings(max_rank=0)
        with pytest.raises(ConfigError, match="`method` should be one of"):
            FinetuneSettings(method="svds")


def test_energy_thresholds_are_the_products():
    assert ENERGY_THRESHOLDS == (0.5, 0.9, 0.99)


@needs_samples
def test_intruder_counts_equal_the_float64_definition():
    """With intruders on: the count and indices of every projection equal the truth (PEFT's definition)."""
    report = audit_finetune(open_model(SAMPLES / "finetuned"), open_model(SAMPLES / "base"),
                            settings=FinetuneSettings(intruders=True))
    t = truth()
    checked = 0
    for m in report.modules:
        want = t[m.name].get("intruders")
        if want is None:
            continue
        checked += 1
        assert (m.intruders["count"], m.intruders["indices"]) == (want["count"], want["indices"]), m.name
        assert np.allclose(m.intruders["max_cos"], want["top10_max_abs_cos"], atol=1e-4)
    assert checked == 21
    assert report.summary["intruders"] == {"modules_with": 6, "total": 10, "checked": 22, "top_k": 10,
                                           "epsilon": 0.5}
    assert "10 in 6 of 22 modules" in " ".join(finetune_reading(report))
    assert report.modules[1].intruders is None  # the embedding: not a layer PEFT's definition covers
