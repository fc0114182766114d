"""Tests of ``python -m lorarank stability``: the table, the --json document and the error lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorarank.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["stability", "--d-out", "32", "--d-in", "48", "--ranks", "2,16", "--lrs", "0.001,0.1",
         "--steps", "60"]


class TestStabilityTable:
    """The default (table) output."""

    def test_table_per_rule(self, capsys):
        """One block per rule with a row per rank, a column per lr, and the grid's reading."""
        assert main(SMALL + ["--rules", "fixed-alpha,alpha-eq-r"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("target 32 x 48, intrinsic rank 4, sigma_max 38, noise 0.01; sgd, 60 steps, alpha 16\n")
        assert "\nfixed-alpha\n" in out and "\nalpha-eq-r\n" in out and "rslora" not in out
        assert "lr 0.001" in out and "lr 0.1" in out
        # lr 0.1 with s = 8 (fixed alpha 16 at r = 2) is far above 1 / (s * 38): it diverges
        row = next(line for line in out.splitlines() if line.strip().startswith("2 |"))
        assert "div@" in row
        assert "the largest stable learning rate is" in out
        assert "'div@t' = diverged at step t" in out

    def test_default_grid_runs(self):
        """With no options the documented default grid runs in a real process and exits 0."""
        proc = subprocess.run([sys.executable, "-m", "lorarank", "stability", "--json"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        cfg = doc["config"]
        assert len(doc["records"]) == len(cfg["rules"]) * len(cfg["ranks"]) * len(cfg["lrs"])
        assert proc.stderr == ""


class TestStabilityJson:
    """The --json document of PRODUCT.md."""

    def test_shape(self, capsys):
        """{"config", "records"}, one record per (rule, rank, lr) with the contract's keys, no NaN."""
        assert main(SMALL + ["--json"]) == 0
        text = capsys.readouterr().out
        doc = json.loads(text)
        assert set(doc) == {"config", "records"}
        assert doc["config"]["ranks"] == [2, 16] and doc["config"]["lrs"] == [0.001, 0.1]
        assert doc["config"]["rules"] == ["fixed-alpha", "alpha-eq-r", "alpha-eq-2r", "rslora"]
        assert len(doc["records"]) == 4 * 2 * 2
        keys = {"rule", "rank", "lr", "scale", "rel_err", "diverged", "diverged_at",
                "max_update_norm", "loss_curve", "train_loss", "heldout_loss"}
        assert all(set(r) == keys for r in doc["records"])
        assert "NaN" not in text and "Infinity" not in text
        diverged = [r for r in doc["records"] if r["diverged"]]
        assert diverged and all(r["rel_err"] is None and r["diverged_at"] >= 1 for r in diverged)
        stable = [r for r in doc["records"] if not r["diverged"]]
        assert stable and all(len(r["loss_curve"]) == 61 for r in stable)

    def test_rules_and_adam(self, capsys):
        """--rules picks rules in the order given; --optimizer adam is recorded."""
        assert main(SMALL + ["--rules", "rslora,alpha-eq-2r", "--optimizer", "adam", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["config"]["optimizer"] == "adam"
        assert [r["rule"] for r in doc["records"]][::4] == ["rslora", "alpha-eq-2r"]
        assert {r["scale"] for r in doc["records"] if r["rule"] == "alpha-eq-2r"} == {2.0}


class TestStabilityErrors:
    """Bad input: exit 2 and one line on stderr."""

    @pytest.mark.parametrize("extra, message", [
        (["--ranks", "4,300"], "rank 300 is larger than min(d_out, d_in) = 32"),
        (["--ranks", "0"], "`ranks[0]` should be at least 1, got 0"),
        (["--rules", "alpha=r"], "`rules[0]` should be one of fixed-alpha, alpha-eq-r, alpha-eq-2r, "
                                 "rslora; got 'alpha=r'"),
        (["--lrs", "0.01,-1"], "`lrs[1]` should be greater than 0, got -1"),
        (["--lrs", "abc"], "stability: argument --lrs: expected comma-separated numbers, got 'abc'"),
        (["--lrs", "nan"], "`lrs[0]` should be finite, got nan"),
        (["--optimizer", "lion"], "`optimizer` should be one of sgd, adam; got 'lion'"),
        (["--steps", "0"], "`steps` should be at least 1, got 0"),
        (["--alpha", "0"], "`alpha` should be greater than 0, got 0"),
        (["--spectrum", "cubic"], "`spectrum` should be one of flat, linear, geometric; got 'cubic'"),
    ])
    def test_error_line(self, capsys, extra, message):
        """Each bad option gives exit 2 and exactly `lorarank: error: <message>`."""
        assert main(SMALL + extra) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == f"lorarank: error: {message}\n"

    def test_real_process_has_no_traceback(self):
        """In a real process a bad value exits 2 with one stderr line."""
        proc = subprocess.run([sys.executable, "-m", "lorarank", *SMALL, "--rules", "bogus"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("lorarank: error: ")
        assert "Traceback" not in proc.stderr and proc.stdout == ""
