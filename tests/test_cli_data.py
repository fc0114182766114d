"""The CLI's data mode (`sweep` / `stability` with --samples): options, JSON fields, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorarank.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--d-out", "24", "--d-in", "20", "--true-rank", "2", "--steps", "60"]


def run_json(capsys, *args):
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


class TestSweepDataMode:
    def test_json_fields(self, capsys):
        """--samples gives train_loss, heldout_loss and the reduced-rank bound per result, the
        data settings in the config, and rel_err still against T."""
        doc = run_json(capsys, "sweep", *SMALL, "--ranks", "1,4", "--samples", "80", "--label-noise", "0.5",
                       "--batch-size", "16", "--heldout", "300")
        cfg = doc["config"]
        assert (cfg["samples"], cfg["label_noise"], cfg["batch_size"], cfg["heldout"]) == (80, 0.5, 16, 300)
        assert cfg["lr"] == 0.005 and cfg["epochs"] == 60 * 16 / 80
        assert cfg["noise_floor"] > 0
        for r in doc["results"]:
            assert r["train_loss"] >= r["optimal_train_loss"] > 0
            assert r["heldout_loss"] > 0 and 0 < r["rel_err"] < 1.5

    def test_exact_mode_has_null_losses(self, capsys):
        """Without --samples the fields are there and null (PRODUCT.md's contract)."""
        doc = run_json(capsys, "sweep", *SMALL, "--ranks", "2")
        r = doc["results"][0]
        assert r["train_loss"] is None and r["heldout_loss"] is None
        assert doc["config"]["samples"] is None

    def test_table(self, capsys):
        """The table shows training loss beside its bound, held-out loss and the definitions."""
        assert main(["sweep", *SMALL, "--ranks", "1,4", "--samples", "100"]) == 0
        out = capsys.readouterr().out
        assert "data mode: 100 training pairs y = T x + 1 e, full batch (60 epochs of 1 step = 60 steps), 1000 held-out pairs" in out
        assert "train loss |  RRR bound |   held-out" in out
        assert "reduced-rank regression" in out and "noise floor for this n" in out

    def test_epochs(self, capsys):
        """--epochs E trains ceil(n / batch) * E steps (100 pairs in batches of 16: 7 a pass),
        said in the table's header and the JSON, and equal to asking for those steps."""
        base = ["sweep", "--d-out", "24", "--d-in", "20", "--true-rank", "2", "--ranks", "1,4",
                "--samples", "100", "--batch-size", "16"]
        by_epochs = run_json(capsys, *base, "--epochs", "3")
        by_steps = run_json(capsys, *base, "--steps", "21")
        cfg = by_epochs["config"]
        assert (cfg["steps"], cfg["epochs"], cfg["steps_per_epoch"]) == (21, 3.0, 7)
        assert [r["steps"] for r in by_epochs["results"]] == [21, 21]
        assert by_epochs["results"] == by_steps["results"]
        assert main([*base, "--epochs", "3"]) == 0
        assert "batches of 16 (3 epochs of 7 steps = 21 steps)" in capsys.readouterr().out
        # Full batch: one step per epoch.
        assert run_json(capsys, *base[:-2], "--epochs", "5")["config"]["steps"] == 5

    @pytest.mark.parametrize("extra, message", [
        (["--samples", "10", "--epochs", "3"], "lorarank: error: sweep: give --steps or --epochs, not both"),
        (["--epochs", "3"], "lorarank: error: sweep: --epochs needs --samples N (the data mode)"),
        (["--samples", "10", "--epochs", "0"], "lorarank: error: `epochs` should be at least 1, got 0"),
        (["--heldout", "5"], "lorarank: error: sweep: --heldout needs --samples N (the data mode)"),
        (["--label-noise", "1", "--batch-size", "4"],
         "lorarank: error: sweep: --label-noise and --batch-size need --samples N (the data mode)"),
        (["--samples", "0"], "lorarank: error: `samples` should be at least 1, got 0"),
        (["--samples", "10", "--label-noise", "-2"], "lorarank: error: `label_noise` should be at least 0, got -2"),
        (["--samples", "ten"], "lorarank: error: sweep: argument --samples: invalid int value: 'ten'"),
    ])
    def test_error_line(self, capsys, extra, message):
        """Bad data options: exit 2 and one line naming the value."""
        assert main(["sweep", *SMALL, *extra]) == 2
        err = capsys.readouterr().err
        assert err.strip() == message

    def test_real_process_memory_bound(self):
        """Too many pairs: one error line from a real process, no traceback."""
        out = subprocess.run([sys.executable, "-m", "lorarank", "sweep", "--samples", "100000", "--d-in", "1024",
                              "--d-out", "8", "--true-rank", "2", "--ranks", "2"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert out.stderr.startswith("lorarank: error: 100000 training + 1000 held-out pairs")


class TestStabilityDataMode:
    def test_json_records(self, capsys):
        """Each record gains train_loss / heldout_loss; the config names the data settings."""
        doc = run_json(capsys, "stability", *SMALL, "--ranks", "2,8", "--lrs", "0.001,0.01",
                       "--rules", "alpha-eq-r", "--samples", "64", "--batch-size", "8")
        assert doc["config"]["samples"] == 64 and doc["config"]["batch_size"] == 8
        assert len(doc["records"]) == 4
        for rec in doc["records"]:
            assert rec["train_loss"] > 0 and rec["heldout_loss"] > 0

    def test_epochs(self, capsys):
        """--epochs E: every cell trains ceil(n / batch) * E steps (64 pairs, batches of 10: 7 a pass)."""
        small = [a for a in SMALL if a not in ("--steps", "60")]
        doc = run_json(capsys, "stability", *small, "--ranks", "2", "--lrs", "0.01", "--rules",
                       "alpha-eq-r", "--samples", "64", "--batch-size", "10", "--epochs", "2")
        assert (doc["config"]["steps"], doc["config"]["epochs"], doc["config"]["steps_per_epoch"]) == (14, 2.0, 7)
        assert len(doc["records"][0]["loss_curve"]) in (14, 15)

    def test_exact_records_null(self, capsys):
        """Without --samples every record's losses are null."""
        doc = run_json(capsys, "stability", *SMALL, "--ranks", "2", "--lrs", "0.01", "--rules", "alpha-eq-r")
        assert doc["records"][0]["train_loss"] is None and doc["config"]["samples"] is None

    def test_table_header(self, capsys):
        """The text output says the data mode is on."""
        assert main(["stability", *SMALL, "--ranks", "2", "--lrs", "0.01", "--rules", "alpha-eq-r",
                     "--samples", "50", "--batch-size", "10"]) == 0
        out = capsys.readouterr().out
        assert "data mode: 50 training pairs y = T x + 1 e, batches of 10 (12 epochs of 5 steps = 60 steps), 1000 held-out pairs" in out
