"""Adapters whose init moved the base (PiSSA, OLoRA, ...): labelled without the base, exact with it.

Oracles: the float64 truth of the real PEFT adapters in ``../shared/samples/base_relative``
(``merge_and_unload()`` of PEFT's own documented reload, minus the original base) and PEFT's
own converted saves (``path_initial_model_for_weight_conversion``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lorarank.adapters import Adapter, LoraModule, load_adapter
from lorarank.audit import audit_adapter, resize_adapter
from lorarank.cli import main
from lorarank.errors import ConfigError
from lorarank.inits import convert_adapter, init_of, moved_modules, replay_init
from lorarank.spectrum import factored_svdvals

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "base_relative"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"base_relative samples not found at {SAMPLES}")


def peft_adapter(init, *, modules=None, **config) -> Adapter:
    rng = np.random.default_rng(0)
    mods = modules or [LoraModule("base_model.model.model.layers.0.self_attn.q_proj",
                                  rng.standard_normal((4, 12)), rng.standard_normal((10, 4)), 2.0, alpha=8.0)]
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, **config}
    if init is not ...:
        cfg["init_lora_weights"] = init
    return Adapter(format="peft", modules=mods, scaling="test", source="test", config=cfg)


class TestInitOf:
    @pytest.mark.parametrize("init", [..., True, False, "gaussian", "eva", "orthogonal", "mica", "Gaussian", None])
    def test_zero_start(self, init):
        """Inits that leave the base untouched: B@A is the update, nothing to say."""
        info = init_of(peft_adapter(init))
        assert not info.moves_base and info.sentence == "" and moved_modules(peft_adapter(init)) == []

    @pytest.mark.parametrize("init, replay, words", [
        ("pissa", "pissa", "top-r singular part"),
        ("olora", "olora", "Q_r R_r"),
        ("pissa_niter_16", None, "does not give back the trained model"),
        ("corda", None, "covariance"),
        ("loftq", None, "quantised"),
        ("lora_ga", None, "does not subtract it"),
        ("something_new", None, "does not know"),
    ])
    def test_moves_base(self, init, replay, words):
        """Every init that moves the base is named, with one sentence saying what would make it auditable."""
        info = init_of(peft_adapter(init))
        assert info.moves_base and info.replay == replay
        assert words in info.sentence and info.sentence.count(". ") == 0 and info.sentence.endswith(".")
        assert "NOT the update" in info.label

    def test_other_formats_and_families(self):
        """kohya, npz and LoHa configs have no init that moves the base."""
        a = peft_adapter("pissa")
        assert not init_of(replace(a, format="kohya")).moves_base
        assert not init_of(replace(a, config={**a.config, "peft_type": "LOHA"})).moves_base

    def test_embeddings_not_moved(self):
        """PEFT starts embedding LoRA at zero whatever the init; conv layers refuse these inits."""
        rng = np.random.default_rng(1)
        emb = LoraModule("base_model.model.embed_tokens", rng.standard_normal((4, 30)),
                         rng.standard_normal((8, 4)), 2.0, transposed=True)
        lin = peft_adapter("pissa").modules[0]
        assert moved_modules(peft_adapter("pissa", modules=[lin, emb])) == [lin.name]
        assert moved_modules(peft_adapter("pissa", modules=[lin, emb], fan_in_fan_out=True)) == [lin.name, emb.name]


class TestReplay:
    def test_pissa_is_top_r_svd(self):
        """scale * B0 @ A0 = U_r S_r V_r^T, A0 and B0 balanced as PEFT builds them."""
        W0 = np.random.default_rng(2).standard_normal((30, 20))
        B0, A0 = replay_init("pissa", W0, r=4, scale=2.0)
        U, S, Vt = np.linalg.svd(W0)
        np.testing.assert_allclose(2.0 * B0 @ A0, (U[:, :4] * S[:4]) @ Vt[:4], atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(B0, axis=0), np.sqrt(S[:4] / 2.0), rtol=1e-12)

    @pytest.mark.parametrize("shape", [(30, 20), (20, 30)])
    def test_olora_is_householder_qr(self, shape):
        """B0, A0 = Q[:, :r], R[:r] of the full QR, LAPACK's signs and all."""
        W0 = np.random.default_rng(3).standard_normal(shape)
        B0, A0 = replay_init("olora", W0, r=5, scale=1.0)
        Q, R = np.linalg.qr(W0)
        np.testing.assert_allclose(B0, Q[:, :5], atol=1e-12)
        np.testing.assert_allclose(A0, R[:5], atol=1e-12)

    def test_refusals(self):
        """Replays that PEFT itself does not define are one sentence."""
        W0 = np.ones((6, 4))
        with pytest.raises(ConfigError, match="fan_in_fan_out"):
            replay_init("olora", W0, r=2, scale=1.0, stored_transposed=True)
        with pytest.raises(ConfigError, match="rank 9 does not fit a 6 x 4 base weight"):
            replay_init("pissa", W0, r=9, scale=1.0)
        with pytest.raises(ConfigError, match="not replayable"):
            replay_init("pissa", W0, r=2, scale=-1.0)


class TestWithoutBase:
    def test_resize_refused(self):
        """A resize of B@A as stored would approximate the wrong matrix: refused, saying what to do."""
        with pytest.raises(ConfigError) as err:
            resize_adapter(peft_adapter("pissa"), rank=2)
        assert str(err.value).startswith("not resized: this adapter's init (pissa) was subtracted from the base")
        assert "lorarank convert" in str(err.value)
        with pytest.raises(ConfigError, match="only a save converted at training time can be resized"):
            resize_adapter(peft_adapter("corda"), rank=2)

    def test_audit_labels(self):
        """Without the base: every moved module says B@A is not the update; the summary says why."""
        report = audit_adapter(peft_adapter("olora"))
        assert all(m.spectrum_of.startswith("B@A as stored, NOT the update") for m in report.modules)
        assert report.summary["spectrum_is_update"] is False
        assert report.summary["warnings"][0] == init_of(peft_adapter("olora")).sentence
        assert report.summary["init"] == {"init_lora_weights": "olora", "moves_base": True, "replayable": True,
                                          "replayed": False}

    def test_convert_needs_a_replayable_init(self):
        """convert refuses plain LoRA and inits it cannot replay."""
        with pytest.raises(ConfigError, match="does not need converting"):
            convert_adapter(peft_adapter(True), None)
        with pytest.raises(ConfigError, match="randomised SVD"):
            convert_adapter(peft_adapter("pissa_niter_4"), None)


def _truth(case: str) -> dict:
    return json.loads((SAMPLES / f"{case}.truth.json").read_text())


@pytest.fixture(scope="module")
def base():
    from lorarank.base import open_base

    return open_base(SAMPLES / "base")


@needs_samples
class TestRealAdapters:
    @pytest.mark.parametrize("case, tol", [("pissa_raw", 2e-6), ("olora_raw", 5e-7)])
    def test_audit_with_base_is_exact_update(self, base, case, tol):
        """With the base: each spectrum equals PEFT's reload (float64 merge - W0) to tol * sigma_1.

        tol is PEFT's own float32 rounding of the SVD / QR it redoes on load (the README's
        float64_reconstruction_from_base numbers); with replay='torch' it is 1e-7 (below).
        """
        truth = _truth(case)["modules"]
        report = audit_adapter(load_adapter(SAMPLES / case), base=base)
        assert report.summary["spectrum_is_update"] is True and report.summary["init"]["replayed"]
        for m in report.modules:
            t = np.array(truth[m.name]["singular_values"])
            got = m.singular_values[: t.size]
            assert np.max(np.abs(got - t)) <= tol * t[0], m.name
            assert m.rank == 16 and m.stored_rank == 8 and m.params == 8 * sum(m.shape)
            assert m.spectrum_of.startswith("update s*(B@A - B0@A0)")
            assert m.relative_size == pytest.approx(truth[m.name]["relative_size"], rel=1e-5)

    @pytest.mark.parametrize("case", ["pissa_raw", "olora_raw"])
    def test_without_base_nothing_wrong(self, case):
        """Without the base: the naive numbers are there only under their label."""
        report = audit_adapter(load_adapter(SAMPLES / case))
        truth = _truth(case)["modules"]
        for m in report.modules:
            np.testing.assert_allclose(m.singular_values[:8], truth[m.name]["singular_values_scale_BA"][:8], rtol=1e-9)
            assert "NOT the update" in m.spectrum_of

    @pytest.mark.parametrize("case", ["pissa", "olora"])
    def test_convert_equals_peft_conversion(self, base, case):
        """convert gives PEFT's converted adapter: same rank 2r, scale, and update to float32 rounding."""
        ours = convert_adapter(load_adapter(SAMPLES / f"{case}_raw"), base)
        peft = load_adapter(SAMPLES / f"{case}_converted")
        assert ours.config["init_lora_weights"] is True
        for m in ours.modules:
            p = peft.module(m.name)
            assert m.rank == p.rank == 16 and m.scale == p.scale and m.A.dtype == np.float32
            B, A = m.factors()
            Bp, Ap = p.factors()
            np.testing.assert_array_equal(A[:8], Ap[:8])  # the trained A is copied, not recomputed
            want = p.scale * Bp @ Ap
            assert np.linalg.norm(m.scale * B @ A - want) <= 2e-5 * np.linalg.norm(want)
            if case == "olora":  # QR has no sign freedom: the factors themselves agree
                np.testing.assert_allclose(A[8:], Ap[8:], atol=1e-5 * np.abs(Ap[8:]).max())

    def test_cli_convert_then_audit(self, tmp_path, capsys):
        """`lorarank convert` writes a PEFT folder whose audit (no base) is the exact update."""
        out = tmp_path / "conv"
        assert main(["convert", str(SAMPLES / "pissa_raw"), "--base", str(SAMPLES / "base"), "-o", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "rank 16" in printed and "adapter_config.json" in printed
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["r"] == 16 and config["lora_alpha"] == 16 and config["init_lora_weights"] is True
        assert main(["audit", str(out), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        truth = _truth("pissa_raw")["modules"]
        for m in doc["modules"]:
            t = truth[m["name"]]["singular_values"]
            assert abs(m["singular_values"][0] - t[0]) <= 3e-6 * t[0]
            assert m["spectrum_of"] == "update s*B@A"

    def test_cli_raw_without_base(self, capsys):
        """`audit` of a raw PiSSA folder: exit 0, labelled, the sentence in warnings; resize exit 2."""
        assert main(["audit", str(SAMPLES / "pissa_raw"), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert all("NOT the update" in m["spectrum_of"] for m in doc["modules"])
        assert doc["summary"]["warnings"][0].startswith("This adapter was trained with PiSSA")
        assert main(["resize", str(SAMPLES / "pissa_raw"), "--rank", "4", "-o", "/nonexistent/x"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lorarank: error: not resized:") and err.count("\n") == 1
