"""``audit --finetuned MODEL --base BASE`` and ``extract``: documents, text, CSV, errors, Ctrl-C."""

import csv
import io
import json
import os
import signal

import pytest

from lorarank.cli import main
from lorarank.finetune_cli import _interruptible

from test_finetune import SAMPLES, needs_samples, toy_pair


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_samples
class TestAuditFinetuned:
    def test_json_document(self, capsys):
        """PRODUCT.md's fields: modules with name, shape, top-64 values, energy ranks, lora errors."""
        code, out, err = run(["audit", "--finetuned", SAMPLES / "finetuned", "--base", SAMPLES / "base",
                              "--json"], capsys)
        assert code == 0 and err == "" and out.count("\n") == 1
        doc = json.loads(out)
        truth = json.loads((SAMPLES / "finetuned.truth.json").read_text())["modules"]
        assert len(doc["modules"]) == 23
        for m in doc["modules"]:
            assert {"name", "shape", "singular_values", "energy_rank", "lora_error"} <= set(m)
            assert set(m["energy_rank"]) == {"0.5", "0.9", "0.99"} and set(m["lora_error"]) == {"8", "16", "64"}
            t = truth[m["name"]]
            assert m["shape"] == t["shape"] and len(m["singular_values"]) == min(64, min(t["shape"]))
            assert m["energy_rank"]["0.99"] == t["energy_rank_99"]
        assert doc["summary"]["modules"] == 23 and doc["summary"]["stopped"] is False
        assert doc["base"] == "base" and doc["finetuned"] == "finetuned"
        assert [o["kind"] for o in doc["left_out"]] == ["norm"] * 7

    def test_text_reading_and_definitions(self, capsys):
        code, out, _ = run(["audit", "--finetuned", SAMPLES / "finetuned", "--base", SAMPLES / "base"], capsys)
        assert code == 0
        assert "23 weight matrices in common" in out
        assert "a LoRA would need rank 50 %: 1 to 5 (median 3)" in out
        assert "k(t) = smallest k with" in out and "not audited: 7 tensors (7 changed" in out

    def test_csv_has_one_row_per_module(self, capsys):
        code, out, _ = run(["audit", "--finetuned", SAMPLES / "finetuned", "--base", SAMPLES / "base",
                            "--csv"], capsys)
        rows = list(csv.DictReader(io.StringIO(out)))
        assert code == 0 and len(rows) == 23
        assert {"name", "energy_rank_0.9", "lora_error_8", "relative_size", "sv_bound"} <= set(rows[0])


class TestAuditFinetunedErrors:
    @pytest.mark.parametrize("extra, message", [
        ([], "audit: --finetuned MODEL needs --base BASE"),
        (["--base", "B", "adapter"], "give either PATH ... (adapters) or --finetuned MODEL, not both"),
        (["--base", "B", "--alpha", "8"], "--alpha applies to adapters, not to --finetuned"),
        (["--base", "B", "--json", "--csv"], "give --json or --csv, not both"),
        (["--base", "B", "--max-rank", "0"], "`max_rank` should be at least 1, got 0"),
    ])
    def test_one_line_errors(self, extra, message, capsys):
        code, out, err = run(["audit", "--finetuned", "M", *extra], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1
        assert err.startswith("lorarank: error: ") and message in err

    def test_options_of_fine_tunes_are_refused_for_adapters(self, capsys):
        code, _, err = run(["audit", "some-adapter", "--max-rank", "8"], capsys)
        assert code == 2 and err.strip() == "lorarank: error: audit: --max-rank applies to --finetuned MODEL"

    def test_missing_model_is_one_line(self, tmp_path, capsys):
        code, _, err = run(["audit", "--finetuned", tmp_path / "nope", "--base", tmp_path], capsys)
        assert code == 2 and "do not exist" in err and err.count("\n") == 1


class TestExtract:
    def test_writes_a_peft_adapter(self, tmp_path, capsys):
        ft, base = toy_pair(tmp_path, rank=3)
        code, out, err = run(["extract", ft, "--base", base, "--rank", "3", "-o", tmp_path / "lora"], capsys)
        assert code == 0, err
        assert "extracted 4 of 4 modules at rank 3" in out
        assert "left out, changed by the fine-tune (1): model.norm.weight (norm)" in out
        config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
        assert config["r"] == 3 and config["peft_type"] == "LORA"
        assert config["base_model_name_or_path"] == str(base)
        # again without --force: refused, nothing replaced
        code, _, err = run(["extract", ft, "--base", base, "--rank", "3", "-o", tmp_path / "lora"], capsys)
        assert code == 2 and "exists; pass --force" in err

    def test_json_and_energy(self, tmp_path, capsys):
        ft, base = toy_pair(tmp_path, rank=3)
        code, out, _ = run(["extract", ft, "--base", base, "--energy", "0.99", "-o", tmp_path / "e",
                            "--json", "--dtype", "bfloat16"], capsys)
        doc = json.loads(out)
        assert code == 0 and doc["summary"]["target"] == {"energy": 0.99}
        assert all(m["kept_energy"] >= 0.99 for m in doc["modules"])
        assert len(doc["written"]) == 2

    @pytest.mark.parametrize("argv, message", [
        (["--rank", "2", "--energy", "0.9"], "argument --energy: not allowed with argument --rank"),
        (["--rank", "2", "--dtype", "int8"], "--dtype should be float32, bfloat16 or float16"),
        (["--energy", "0"], "`energy` should be greater than 0"),
    ])
    def test_errors(self, tmp_path, capsys, argv, message):
        ft, base = toy_pair(tmp_path)
        code, _, err = run(["extract", ft, "--base", base, "-o", tmp_path / "x", *argv], capsys)
        assert code == 2 and message in err and err.startswith("lorarank: error:")


def test_ctrl_c_sets_the_stop_flag():
    """SIGINT during the work sets the flag the engine polls (the work stops, what is done is kept)."""
    before = signal.getsignal(signal.SIGINT)
    with _interruptible() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.is_set()
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


@needs_samples
def test_intruders_in_the_document(capsys):
    code, out, _ = run(["audit", "--finetuned", SAMPLES / "finetuned", "--base", SAMPLES / "base",
                        "--intruders", "--top-k", "10", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["summary"]["intruders"]["total"] == 10
    down = next(m for m in doc["modules"] if m["name"] == "model.layers.2.mlp.down_proj")
    assert down["intruders"]["indices"] == [4, 6, 7] and len(down["intruders"]["max_cos"]) == 10


def test_intruders_for_adapters_need_a_base(capsys):
    """--intruders also works for adapters (issue 18); without --base it is one line, exit 2."""
    code, _, err = run(["audit", "adapter", "--intruders"], capsys)
    assert code == 2 and "--intruders compares the update with the base weights: give --base BASE" in err


def test_html_report(tmp_path, capsys):
    ft, base = toy_pair(tmp_path, rank=3)
    out = tmp_path / "report.html"
    code, _, err = run(["audit", "--finetuned", ft, "--base", base, "--html", out], capsys)
    assert code == 0 and f"wrote {out}" in err
    html = out.read_text()
    assert "lorarank: full fine-tune" in html and 'id="lorarank-document"' in html
    code, _, err = run(["audit", "--finetuned", ft, "--base", base, "--html", out], capsys)
    assert code == 2 and "exists; pass --force" in err
