"""Tests of `python -m lorarank audit | resize | compare` (PRODUCT.md CLI contract)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save, save_file

from lorarank.cli import main
import testkit

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = testkit.SAMPLES
needs_samples = testkit.needs(SAMPLES)
MODULE_KEYS = {"name", "shape", "rank", "alpha", "scale", "singular_values", "energy_rank", "stable_rank",
               "entropy_rank", "recommended_rank", "family", "spectrum_of", "stored_rank", "kept_rank", "magnitude", "norm",
               "relative_size", "flags", "update_rank"}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def dense_svals(path_weights, name, scale, r):
    from safetensors.numpy import load_file

    t = load_file(path_weights)
    dw = scale * (t[name + ".lora_B.weight"].astype(float) @ t[name + ".lora_A.weight"].astype(float))
    return np.linalg.svd(dw, compute_uv=False)[:r]


@needs_samples
class TestAudit:
    """audit PATH [PATH ...] [--json]."""

    def test_json_contract(self, capsys):
        """--json prints one document with exactly the contract's keys and dense-exact singular values."""
        code, out, err = run(capsys, "audit", str(SAMPLES / "peft_llama_r32_rslora"), "--json")
        assert code == 0 and err == ""
        doc = json.loads(out)
        assert set(doc) == {"format", "modules", "summary"} and doc["format"] == "peft"
        weights = SAMPLES / "peft_llama_r32_rslora" / "adapter_model.safetensors"
        for m in doc["modules"]:
            assert set(m) == MODULE_KEYS and set(m["energy_rank"]) == {"0.9", "0.95", "0.99"}
            assert m["name"].startswith("base_model.model.model.layers.") and not m["name"].endswith("weight")
            assert m["scale"] == pytest.approx(8 / 32**0.5)
            np.testing.assert_allclose(m["singular_values"], dense_svals(weights, m["name"], m["scale"], 32), rtol=1e-9)
            assert m["singular_values"] == sorted(m["singular_values"], reverse=True)

    def test_table(self, capsys):
        """The default output is a table with what was detected and the metric definitions."""
        code, out, _ = run(capsys, "audit", str(SAMPLES / "peft_gpt2_r4"))
        assert code == 0
        assert "peft_gpt2_r4: peft, 4 modules" in out
        assert "fan_in_fan_out transposes dW" in out
        assert "transformer.h.1.mlp.c_fc" in out and "| k(.99) |" in out
        assert "stable = sum sigma^2 / sigma_1^2" in out

    def test_weights_plus_config_paths(self, capsys, tmp_path):
        """`audit WEIGHTS CONFIG` reads the config given beside the weights."""
        src = SAMPLES / "peft_llama_rank_pattern"
        (tmp_path / "w.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
        (tmp_path / "cfg").mkdir()
        (tmp_path / "cfg" / "my_config.json").write_bytes((src / "adapter_config.json").read_bytes())
        code, out, _ = run(capsys, "audit", str(tmp_path / "w.safetensors"), str(tmp_path / "cfg" / "my_config.json"),
                           "--json")
        assert code == 0
        assert sorted({m["scale"] for m in json.loads(out)["modules"]}) == [1.0, 2.0, 4.0]

    def test_several_adapters(self, capsys):
        """Several adapters give {"adapters": [...]} with one contract document each."""
        code, out, _ = run(capsys, "audit", str(SAMPLES / "peft_llama_r8"), str(SAMPLES / "peft_gpt2_r4"), "--json")
        docs = json.loads(out)["adapters"]
        assert code == 0 and [len(d["modules"]) for d in docs] == [14, 4]

    def test_real_process(self):
        """The real `python -m lorarank audit DIR --json` process exits 0 with valid JSON."""
        proc = subprocess.run([sys.executable, "-m", "lorarank", "audit", str(SAMPLES / "peft_llama_r8"), "--json"],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert len(json.loads(proc.stdout)["modules"]) == 14


@pytest.fixture
def files(tmp_path):
    """Bad and good adapter files in a fresh folder."""
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "notes.npz").write_text("just text\n")
    save_file({"m.hada_w1_a": np.ones((2, 2), np.float32)}, tmp_path / "loha.safetensors")
    save_file({"m.lora_A.weight": np.ones((2, 3), np.float32), "m.lora_B.weight": np.ones((4, 2), np.float32)},
              tmp_path / "ok.safetensors")
    return tmp_path


class TestErrors:
    """Bad input: exit 2 and one line `lorarank: error: ...` on stderr."""

    @pytest.mark.parametrize("argv, message", [
        (["audit", "{d}/empty.safetensors"], "empty.safetensors is not a valid safetensors file (only 0 bytes)"),
        (["audit", "{d}/notes.npz"], "notes.npz is not an .npz archive (it does not start with a zip signature)"),
        (["audit", "{d}/loha.safetensors"], "loha.safetensors: tensor 'm.hada_w1_a' has no partner 'm.hada_w1_b' for module 'm'"),
        (["audit", "{d}/missing"], "no such file or folder: {d}/missing"),
        (["resize", "{d}/ok.safetensors", "--rank", "0", "-o", "{d}/out.npz"], "`rank` should be at least 1, got 0"),
        (["resize", "{d}/ok.safetensors", "--energy", "1.5", "-o", "{d}/out.npz"], "`value` should be at most 1, got 1.5"),
        (["compare", "{d}/ok.safetensors", "{d}/empty.safetensors"], "empty.safetensors is not a valid safetensors file"),
        (["audit", "{d}/ok.safetensors", "{d}/a.json", "{d}/b.json"], "give at most one adapter_config.json, got 2"),
    ])
    def test_one_line(self, capsys, files, argv, message):
        """Each bad input exits 2 with one error line naming the problem."""
        code, out, err = run(capsys, *[a.format(d=files) for a in argv])
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith("lorarank: error: ")
        assert message.format(d=files) in err

    def test_real_process_no_traceback(self, files):
        """The real process prints no traceback for a corrupt file."""
        proc = subprocess.run([sys.executable, "-m", "lorarank", "audit", str(files / "notes.npz")],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("lorarank: error: notes.npz is not an .npz archive")


@needs_samples
class TestResize:
    """resize PATH (--rank K | --energy t) -o OUT."""

    def test_rank_round_trip(self, capsys, tmp_path):
        """The written PEFT folder re-audits to the top-k of the original spectrum."""
        src = SAMPLES / "peft_llama_rank_pattern"
        code, out, _ = run(capsys, "resize", str(src), "--rank", "2", "-o", str(tmp_path / "small"))
        assert code == 0 and "resized 6 of 6 modules" in out
        assert sorted(p.name for p in (tmp_path / "small").iterdir()) == ["adapter_config.json",
                                                                         "adapter_model.safetensors"]
        code, out, _ = run(capsys, "audit", str(tmp_path / "small"), "--json")
        before = {m["name"]: m["singular_values"] for m in json.loads(run(capsys, "audit", str(src), "--json")[1])["modules"]}
        for m in json.loads(out)["modules"]:
            assert m["rank"] == 2
            np.testing.assert_allclose(m["singular_values"], before[m["name"]][:2], rtol=1e-5)

    def test_energy_to_npz(self, capsys, tmp_path):
        """--energy keeps each module's 0.9 energy rank; an .npz OUT writes the simple format."""
        src = SAMPLES / "peft_llama_r8"
        audit = json.loads(run(capsys, "audit", str(src), "--json")[1])
        code, out, _ = run(capsys, "resize", str(src), "--energy", "0.9", "-o", str(tmp_path / "small.npz"))
        assert code == 0 and (tmp_path / "small.npz").is_file()
        again = json.loads(run(capsys, "audit", str(tmp_path / "small.npz"), "--json")[1])
        assert again["format"] == "npz"
        assert [m["rank"] for m in again["modules"]] == [m["energy_rank"]["0.9"] for m in audit["modules"]]

    def test_rank_at_or_above_r_is_identity(self, capsys, tmp_path):
        """--rank >= r writes the same factors and scales."""
        src = SAMPLES / "peft_llama_r8"
        run(capsys, "resize", str(src), "--rank", "8", "-o", str(tmp_path / "same"))
        a = json.loads(run(capsys, "audit", str(src), "--json")[1])
        b = json.loads(run(capsys, "audit", str(tmp_path / "same"), "--json")[1])
        assert [(m["scale"], m["singular_values"]) for m in a["modules"]] == \
            [(m["scale"], m["singular_values"]) for m in b["modules"]]

    def test_never_overwrites_without_force(self, capsys, tmp_path):
        """Resizing onto an existing adapter (its own input, say) is refused and changes nothing."""
        import shutil

        src = tmp_path / "adapter"
        shutil.copytree(SAMPLES / "peft_llama_r8", src)
        before = {p.name: p.read_bytes() for p in src.iterdir()}
        code, out, err = run(capsys, "resize", str(src), "--rank", "2", "-o", str(src))
        assert code == 2 and out == ""
        assert err.strip() == (f"lorarank: error: {src / 'adapter_model.safetensors'} already exists; "
                               "choose another output (or overwrite it on purpose with --force)")
        assert {p.name: p.read_bytes() for p in src.iterdir()} == before
        code, _, _ = run(capsys, "resize", str(src), "--rank", "2", "-o", str(src), "--force")
        assert code == 0
        again = json.loads(run(capsys, "audit", str(src), "--json")[1])
        assert {m["rank"] for m in again["modules"]} == {2}


@needs_samples
class TestCompare:
    """compare PATH_A PATH_B [--json]."""

    def test_json(self, capsys):
        """--json has per-module phi matrices and the summary."""
        code, out, _ = run(capsys, "compare", str(SAMPLES / "peft_llama_r8"), str(SAMPLES / "peft_llama_r32_rslora"),
                           "--json")
        doc = json.loads(out)
        assert code == 0 and doc["summary"]["shared_modules"] == 4 and len(doc["only_a"]) == 10
        m = doc["modules"][0]
        assert len(m["phi"]) == 8 and len(m["phi"][0]) == 32 and 0.0 <= m["phi_1_1"] <= 1.0

    def test_self_table(self, capsys):
        """An adapter compared with itself overlaps fully, said in a readable table."""
        code, out, _ = run(capsys, "compare", str(SAMPLES / "peft_gpt2_r4"), str(SAMPLES / "peft_gpt2_r4"))
        assert code == 0 and "mean 1.0000" in out and "Hu et al. 2022" in out

    def test_kohya_file(self, capsys, tmp_path):
        """compare works on any readable format, here two kohya files."""
        rng = np.random.default_rng(0)
        a = rng.standard_normal((4, 10)).astype(np.float32)
        for name, b in (("x", rng.standard_normal((6, 4))), ("y", rng.standard_normal((6, 4)))):
            (tmp_path / f"{name}.safetensors").write_bytes(save({"m.lora_down.weight": a,
                                                                 "m.lora_up.weight": b.astype(np.float32)}))
        code, out, _ = run(capsys, "compare", str(tmp_path / "x.safetensors"), str(tmp_path / "y.safetensors"), "--json")
        assert code == 0 and json.loads(out)["modules"][0]["top_overlap"] == pytest.approx(1.0)
