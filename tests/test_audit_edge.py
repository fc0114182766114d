"""Numbers with meaning: zero and collapsed modules named, overflow never printed as nan, base-relative sizes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from safetensors.numpy import save_file

from lorarank.adapters import Adapter, LoraModule, adapter_files, load_adapter, save_adapter
from lorarank.audit import audit_adapter, module_spectrum, resize_adapter
from lorarank.base import open_base
from lorarank.cli import main
from lorarank.compare import compare_adapters
from lorarank.errors import AdapterError, ConfigError


def adapter(modules, fmt="npz"):
    return Adapter(format=fmt, modules=modules, scaling="test", source="test.npz")


def module(name, d_out, d_in, r, *, scale=1.0, seed=0, mult=1.0):
    rng = np.random.default_rng(seed)
    return LoraModule(name, rng.standard_normal((r, d_in)) * mult, rng.standard_normal((d_out, r)) * mult, scale,
                      alpha=scale * r)


class TestFlags:
    def test_all_zero_adapter_is_named(self):
        m = LoraModule("model.layers.0.q", np.ones((4, 16)), np.zeros((8, 4)), 2.0, alpha=8.0)
        report = audit_adapter(adapter([m, m.__class__("model.layers.1.q", m.A, m.B, 2.0, alpha=8.0)]))
        assert all(r.flags == ("zero",) for r in report.modules)
        assert report.summary["zero_modules"] == ["model.layers.0.q", "model.layers.1.q"]
        assert any("never trained" in w for w in report.summary["warnings"])
        json.dumps(report.to_dict(), allow_nan=False)

    def test_zero_scale_is_named(self):
        m = module("model.layers.0.q", 8, 16, 4, scale=0.0)
        report = audit_adapter(adapter([m]))
        assert report.modules[0].flags == ("zero",)
        assert any("scale 0" in w for w in report.summary["warnings"])

    def test_some_zero_modules(self):
        z = LoraModule("model.layers.1.q", np.zeros((4, 16)), np.ones((8, 4)), 1.0)
        report = audit_adapter(adapter([module("model.layers.0.q", 8, 16, 4), z]))
        assert report.summary["zero_modules"] == ["model.layers.1.q"]
        assert any("1 of 2 modules are exactly zero" in w for w in report.summary["warnings"])

    def test_collapsed_module(self):
        """Columns of B all parallel: rank 1 whatever r says."""
        rng = np.random.default_rng(1)
        b = rng.standard_normal((8, 1)) @ rng.standard_normal((1, 4))
        m = LoraModule("model.layers.0.q", rng.standard_normal((4, 16)), b, 1.0)
        report = audit_adapter(adapter([m, module("model.layers.1.q", 8, 16, 4)]))
        assert report.modules[0].flags == ("collapsed",) and report.modules[1].flags == ()
        assert report.summary["collapsed_modules"] == ["model.layers.0.q"]


class TestOverflow:
    def test_alpha_1e300_is_one_line_never_nan(self, tmp_path, capsys):
        """lora_alpha = 1e300 in a config: the CLI refuses with one line (exit 2), never prints nan."""
        rng = np.random.default_rng(0)
        m = LoraModule("base_model.model.model.layers.0.self_attn.q_proj", rng.standard_normal((4, 16)).astype(np.float32),
                       rng.standard_normal((8, 4)).astype(np.float32), 1.0, alpha=4.0)
        out = tmp_path / "a"
        save_adapter(adapter([m], fmt="peft"), out)
        cfg = json.loads((out / "adapter_config.json").read_text())
        cfg["lora_alpha"] = 1e300
        (out / "adapter_config.json").write_text(json.dumps(cfg))
        code = main(["audit", str(out), "--json"])
        captured = capsys.readouterr()
        assert "nan" not in captured.out.lower()
        assert code == 2 and captured.err.count("\n") == 1 and "lora_alpha" in captured.err

    def test_scale_1e300_module_audits_to_finite_numbers(self):
        """The engine itself, given a module with scale 1e300 / 4: finite spectrum and shares, never nan."""
        m = module("model.layers.0.q", 8, 16, 4, scale=1e300 / 4)
        ref = module("model.layers.0.q", 8, 16, 4, scale=1.0)
        report = audit_adapter(adapter([m]))
        json.dumps(report.to_dict(), allow_nan=False)
        np.testing.assert_allclose(report.modules[0].singular_values / (1e300 / 4), module_spectrum(ref), rtol=1e-12)
        assert report.summary["retained_energy"] == pytest.approx(1.0)
        assert math.isfinite(report.modules[0].norm)

    def test_infinite_update_is_an_error(self):
        m = module("model.layers.0.q", 8, 16, 4, scale=1e300, mult=1e10)
        with pytest.raises(ConfigError, match="overflows float64"):
            audit_adapter(adapter([m]))

    def test_resize_near_1e160_keeps_the_best_truncation(self):
        """No LinAlgError: factors near 1e160 (products near 1e300) are normalised, the truncation stays exact."""
        rng = np.random.default_rng(0)
        A, B = rng.standard_normal((6, 20)), rng.standard_normal((30, 6))
        big = LoraModule("model.layers.0.q", A * 1e160, B * 1e140, 1.0)
        small = LoraModule("model.layers.0.q", A, B, 1.0)
        result = resize_adapter(adapter([big]), rank=3)
        ref = resize_adapter(adapter([small]), rank=3)
        assert result.retained_energy == pytest.approx(ref.retained_energy, rel=1e-12)
        np.testing.assert_allclose(module_spectrum(result.adapter.modules[0]) / 1e300,
                                   module_spectrum(ref.adapter.modules[0]), rtol=1e-10)

    def test_resize_past_float64_is_one_line(self, tmp_path, capsys):
        """Both factors near 1e160: the update itself (1e320) does not exist in float64; one line, exit 2."""
        save_adapter(adapter([module("model.layers.0.q", 30, 20, 6, mult=1e160)]), tmp_path / "a.npz")
        assert main(["resize", str(tmp_path / "a.npz"), "--rank", "2", "-o", str(tmp_path / "o.npz")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "overflows float64" in err
        assert not (tmp_path / "o.npz").exists()

    def test_resize_that_does_not_fit_float32_is_an_error(self):
        """Said by the resize (its preview: no file offered) and refused by the writer, in the same words."""
        m = module("model.layers.0.q", 30, 20, 6, scale=1e300)
        f32 = LoraModule(m.name, m.A.astype(np.float32), m.B.astype(np.float32), 1e300)
        result = resize_adapter(adapter([f32]), rank=3)
        assert "cannot be stored as float32" in result.unwritable and "--dtype float64" in result.unwritable
        with pytest.raises(ConfigError) as refused:
            adapter_files(result.adapter)
        assert str(refused.value) == result.unwritable


class TestResizeNotes:
    def test_nothing_to_cut_says_so(self):
        a = adapter([module("model.layers.0.q", 30, 20, 4)])
        result = resize_adapter(a, rank=8)
        assert result.changed == 0 and result.adapter.modules[0] is a.modules[0]
        assert any("nothing to cut" in n for n in result.notes)

    def test_cli_says_nothing_changed(self, tmp_path, capsys):
        src = tmp_path / "in.npz"
        save_adapter(adapter([module("model.layers.0.q", 30, 20, 4)]), src)
        assert main(["resize", str(src), "--rank", "8", "-o", str(tmp_path / "out.npz")]) == 0
        assert "nothing to cut" in capsys.readouterr().out


class TestCompareZero:
    def test_two_zero_adapters_are_undefined_not_phi_1(self, capsys, tmp_path):
        z = adapter([LoraModule("model.layers.0.q", np.ones((4, 16)), np.zeros((8, 4)), 1.0)])
        with pytest.raises(AdapterError, match="similarity is undefined"):
            compare_adapters(z, z)
        save_adapter(z, tmp_path / "z.npz")
        assert main(["compare", str(tmp_path / "z.npz"), str(tmp_path / "z.npz")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "undefined" in err

    def test_zero_module_is_left_out_and_listed(self):
        good = module("model.layers.0.q", 8, 16, 4)
        zero = LoraModule("model.layers.1.q", np.zeros((4, 16)), np.ones((8, 4)), 1.0)
        result = compare_adapters(adapter([good, zero]), adapter([good, zero]))
        assert [m.name for m in result.modules] == ["model.layers.0.q"]
        assert result.undefined == ["model.layers.1.q"] and result.summary["undefined"] == 1
        assert result.modules[0].top_overlap == pytest.approx(1.0)


class TestRelativeSize:
    def test_relative_size_against_dense_oracle(self, tmp_path):
        """||dW||_F / ||W0||_F from the factored spectrum equals the dense ratio."""
        mods = [module("base_model.model.model.layers.0.self_attn.q_proj", 24, 16, 4, scale=2.0, seed=1),
                module("base_model.model.model.layers.0.mlp.up_proj", 40, 16, 3, scale=0.5, seed=2)]
        rng = np.random.default_rng(3)
        w = {"model.layers.0.self_attn.q_proj.weight": rng.standard_normal((24, 16)).astype(np.float32),
             "model.layers.0.mlp.up_proj.weight": rng.standard_normal((40, 16)).astype(np.float32)}
        save_file(w, str(tmp_path / "base.safetensors"))
        report = audit_adapter(adapter(mods), base=open_base(tmp_path / "base.safetensors"))
        for m, r, key in zip(mods, report.modules, w):
            dense = m.scale * m.B @ m.A
            assert r.relative_size == pytest.approx(np.linalg.norm(dense) / np.linalg.norm(w[key].astype(np.float64)),
                                                    rel=1e-12)
            assert r.spectrum_of == "update s*B@A"
        assert report.summary["base"] == "base.safetensors"

    def test_cli_base_mismatch_is_one_line(self, tmp_path, capsys):
        save_adapter(adapter([module("model.layers.0.q", 8, 16, 4)]), tmp_path / "a.npz")
        save_file({"model.layers.0.q.weight": np.zeros((9, 16), np.float32)}, str(tmp_path / "b.safetensors"))
        assert main(["audit", str(tmp_path / "a.npz"), "--base", str(tmp_path / "b.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "has shape [9, 16]" in err


def test_plain_audit_does_not_import_scipy():
    """scipy is imported only for DoRA with base weights: the 8B audit's start-up stays small."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys, io, contextlib; from lorarank.cli import main\n"
            "import numpy as np; from lorarank.adapters import Adapter, LoraModule, save_adapter\n"
            "import tempfile, os; d = tempfile.mkdtemp(); p = os.path.join(d, 'a.npz')\n"
            "save_adapter(Adapter('npz', [LoraModule('m.q', np.ones((2, 4)), np.eye(3, 2), 1.0)], 't'), p)\n"
            "with contextlib.redirect_stdout(io.StringIO()): main(['audit', p, '--json'])\n"
            "print('scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
