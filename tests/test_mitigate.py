"""Intruder mitigation (PEFT's reduce_intruder_dimension) without torch, and `lorarank mitigate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from lorarank.adapters import Adapter, LoraModule, load_adapter
from lorarank.base import open_base, open_base_bytes
from lorarank.base_svd import BaseSVDCache
from lorarank.cli import main
from lorarank.errors import ConfigError
from lorarank.mitigate import mitigate_adapter

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "base_relative"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"base_relative samples not found at {SAMPLES}")
NAME = "base_model.model.h.0.attn.c_attn"


def conv1d_case(seed: int = 0):
    """A GPT-2-like Conv1D layer: the base stores (d_in, d_out); the update is added transposed."""
    rng = np.random.default_rng(seed)
    d_out, d_in, r = 48, 32, 4
    U, _, Vt = np.linalg.svd(rng.standard_normal((d_in, d_out)), full_matrices=False)
    W0_stored = ((U * np.geomspace(3, 0.05, d_in)) @ Vt).astype(np.float32)
    module = LoraModule(NAME, (0.8 * rng.standard_normal((r, d_in))).astype(np.float32),
                        (0.8 * rng.standard_normal((d_out, r))).astype(np.float32), 2.0, alpha=8.0, transposed=True)
    adapter = Adapter(format="peft", modules=[module], scaling="test", source="test",
                      config={"peft_type": "LORA", "r": r, "lora_alpha": 8, "fan_in_fan_out": True})
    base = open_base_bytes({"model.safetensors": save({"h.0.attn.c_attn.weight": W0_stored})})
    return adapter, base, W0_stored.astype(np.float64)


class TestTransposedLayers:
    def test_peft_definition_in_stored_orientation(self):
        """A Conv1D layer: intruders of the stored (d_in, d_out) weight, PEFT's orientation; the
        mitigated factors keep the module's shapes (PEFT's own function mis-shapes them here)."""
        adapter, base, W0 = conv1d_case()
        m = adapter.modules[0]
        W = W0 + (m.scale * m.B.astype(float) @ m.A.astype(float)).T
        U, S, Vt = np.linalg.svd(W, full_matrices=False)
        cos = np.abs(U.T @ np.linalg.svd(W0, full_matrices=False)[0]).max(axis=1)[:10]
        idx = list(np.flatnonzero(cos < 0.5))
        assert idx, "the case should have intruders"
        result = mitigate_adapter(adapter, base, cache=BaseSVDCache(precision="float64"))
        assert result.intruders == {NAME: len(idx)}
        new = result.adapter.modules[0]
        assert new.A.shape == m.A.shape and new.B.shape == m.B.shape and new.A.dtype == np.float32
        mitigated = W + (0.75 - 1) * (U[:, idx] * S[idx]) @ Vt[idx]
        want = np.linalg.svd((mitigated - W0) / m.scale)
        got = (new.B.astype(float) @ new.A.astype(float)).T   # stored orientation
        best = (want[0][:, :4] * want[1][:4]) @ want[2][:4]
        np.testing.assert_allclose(got, best, atol=1e-5 * np.abs(best).max())

    def test_lambda_one_changes_nothing(self):
        """lambda = 1 keeps every intruder: the update is the same (factors re-balanced)."""
        adapter, base, _ = conv1d_case(1)
        m = adapter.modules[0]
        new = mitigate_adapter(adapter, base, mitigation_lambda=1.0).adapter.modules[0]
        np.testing.assert_allclose(new.B.astype(float) @ new.A.astype(float), m.B.astype(float) @ m.A.astype(float),
                                   atol=1e-5)


class TestRefusals:
    def test_moved_base_and_families(self):
        """A raw PiSSA adapter and non-LoRA families are refused in one sentence."""
        adapter, base, _ = conv1d_case()
        pissa = Adapter(format="peft", modules=adapter.modules, scaling="", config={**adapter.config,
                                                                                     "init_lora_weights": "pissa"})
        with pytest.raises(ConfigError, match="^not mitigated: this adapter's init .pissa."):
            mitigate_adapter(pissa, base)
        from dataclasses import replace

        loha = Adapter(format="peft", modules=[replace(adapter.modules[0], family="loha")], scaling="")
        with pytest.raises(ConfigError, match="defined for plain LoRA, and 1 modules are loha"):
            mitigate_adapter(loha, base)
        with pytest.raises(ConfigError, match="`mitigation_lambda` should be finite"):
            mitigate_adapter(adapter, base, mitigation_lambda=float("inf"))


@needs_samples
class TestRealAdapter:
    def test_equals_peft_sample(self, tmp_path, capsys):
        """`lorarank mitigate lora_r8` writes PEFT's lora_r8_intruders_reduced to float32 tolerance,
        with PEFT's per-module truncation losses."""
        out = tmp_path / "mitigated"
        assert main(["mitigate", str(SAMPLES / "lora_r8"), "--base", str(SAMPLES / "base"), "-o", str(out),
                     "--cache", str(tmp_path / "cache"), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["changed"] == 20 and doc["intruders_total"] == 59 and doc["mitigation_lambda"] == 0.75
        truth = json.loads((SAMPLES / "lora_r8_intruders_reduced.truth.json").read_text())["modules"]
        ours = load_adapter(out)
        peft = load_adapter(SAMPLES / "lora_r8_intruders_reduced")
        original = load_adapter(SAMPLES / "lora_r8")
        assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
        for m in ours.modules:
            p = peft.module(m.name)
            assert m.A.dtype == np.float32 and m.scale == p.scale
            B, A = m.factors()
            Bp, Ap = p.factors()
            want = Bp @ Ap
            assert np.linalg.norm(B @ A - want) <= 2e-5 * np.linalg.norm(want), m.name
            if doc["intruders"][m.name] == 0:
                np.testing.assert_array_equal(m.A, original.module(m.name).A)
            else:
                assert doc["truncation_error"][m.name] == pytest.approx(
                    truth[m.name]["rank_r_truncation_rel_frobenius_loss"], abs=1e-5)

    def test_cli_text_and_errors(self, tmp_path, capsys):
        """Text output says what changed; a bad lambda and an existing output are one line, exit 2."""
        out = tmp_path / "m"
        args = ["mitigate", str(SAMPLES / "lora_r8"), "--base", str(SAMPLES / "base"), "--no-cache", "-o", str(out)]
        assert main(args) == 0
        printed = capsys.readouterr().out
        assert printed.startswith("reduced 59 intruder dimensions in 20 of 21 modules (lambda 0.75")
        assert main(args) == 2
        assert "already exists" in capsys.readouterr().err
        assert main(args[:-2] + ["--lambda", "nan", "-o", str(tmp_path / "n")]) == 2
        assert capsys.readouterr().err == "lorarank: error: `mitigation_lambda` should be finite, got nan\n"

    def test_audit_intruders_json_and_html(self, tmp_path, capsys):
        """audit --base --intruders: the JSON's intruders objects (PRODUCT.md's keys) and the HTML
        report's section against the base."""
        out = tmp_path / "r.html"
        assert main(["audit", str(SAMPLES / "lora_r8"), "--base", str(SAMPLES / "base"), "--intruders",
                     "--cache", str(tmp_path / "c"), "--json", "--html", str(out)]) == 0
        doc = json.loads(capsys.readouterr().out)
        m = doc["modules"][0]
        assert {"top_k", "epsilon", "count", "indices", "max_cos", "share"} <= set(m["intruders"])
        assert len(m["intruders"]["max_cos"]) == 10 and m["amplification"] > 1
        assert doc["summary"]["intruders"]["total"] == 59
        html = out.read_text()
        assert "Intruders per module" in html and "59 intruder dimensions in 20 of 21 modules" in html
