"""`python -m lorarank sweep` as a user runs it: a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", "lorarank", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


class TestSweepCLI:
    def test_default_table_is_the_articles(self):
        """The default run prints r = 2, 4, 16 with errors, optima and the top singular values."""
        out = run("sweep")
        assert out.returncode == 0, out.stderr
        rows = {int(line.split("|")[0]): line for line in out.stdout.splitlines()
                if line.strip()[:1].isdigit() and "|" in line}
        assert sorted(rows) == [2, 4, 16]
        err2, opt2 = (float(x) for x in rows[2].split("|")[1:3])
        assert err2 == pytest.approx(0.59, abs=0.02) and err2 == pytest.approx(opt2, abs=1e-4)
        assert float(rows[4].split("|")[1]) < 0.012
        svs16 = [float(x) for x in rows[16].split("|")[4].split()]
        assert len(svs16) == 8 and svs16[3] > 20 and max(svs16[4:]) < svs16[3] / 100

    def test_json_document(self):
        """--json prints one document with PRODUCT.md's keys."""
        out = run("sweep", "--json", "--ranks", "1,3", "--steps", "50", "--d-out", "20", "--d-in", "30",
                  "--true-rank", "2", "--optimizer", "adam")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert set(doc) == {"config", "results", "seconds"}
        assert doc["config"]["d_out"] == 20 and doc["config"]["optimizer"] == "adam"
        assert [r["rank"] for r in doc["results"]] == [1, 3]
        for r in doc["results"]:
            assert {"rank", "rel_err", "optimal_rel_err", "singular_values", "effective_rank",
                    "diverged", "steps"} <= set(r)
            assert r["steps"] == 50 and len(r["singular_values"]) == r["rank"]

    def test_diverged_run_in_json_is_null(self):
        """A diverged rank has rel_err null and its step count, and the exit code is 0."""
        out = run("sweep", "--json", "--ranks", "4", "--lr", "1")
        doc = json.loads(out.stdout)
        res = doc["results"][0]
        assert res["diverged"] is True and res["rel_err"] is None and res["steps"] < 2000

    @pytest.mark.parametrize("args,message", [
        (["--ranks", "2,x"], "lorarank: error: sweep: argument --ranks: expected comma-separated whole numbers, got '2,x'"),
        (["--true-rank", "100"], "lorarank: error: `true_rank` = 100 is larger than the matrix allows: min(d_out, d_in) = 64"),
        (["--ranks", "128"], "lorarank: error: rank 128 is larger than min(d_out, d_in) = 64"),
        (["--lr", "-1"], "lorarank: error: `lr` should be greater than 0, got -1"),
        (["--noise", "-0.5"], "lorarank: error: `noise` should be at least 0, got -0.5"),
        (["--optimizer", "lion"], "lorarank: error: `optimizer` should be one of sgd, adam; got 'lion'"),
        (["--steps", "ten"], "lorarank: error: sweep: argument --steps: invalid int value: 'ten'"),
    ])
    def test_bad_arguments_one_line_exit_2(self, args, message):
        """Bad arguments exit 2 with one error line and no traceback."""
        out = run("sweep", *args)
        assert out.returncode == 2
        assert out.stderr.strip() == message
        assert out.stdout == ""


def test_sweep_prints_the_pages_reading(capsys):
    """The text output ends with the reading the Rank sweep page shows (lorarank.fit.sweep_findings)."""
    from lorarank.cli import main
    from lorarank.fit import fit_lora, sweep_findings
    from lorarank.synthetic import make_target

    assert main(["sweep", "--ranks", "2,4,16", "--steps", "300"]) == 0
    out = capsys.readouterr().out
    target = make_target(64, 64, true_rank=4, noise=0.01)
    results = fit_lora(target, [2, 4, 16], steps=300)
    sentences = sweep_findings(results, target_values=target.singular_values, shape=target.shape,
                               noise=target.noise, true_rank=4)
    assert len(sentences) == 5
    for sentence in sentences:
        assert sentence.replace("**", "") in out
