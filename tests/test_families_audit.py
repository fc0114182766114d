"""Every family sample audits to its truth through `lorarank audit --json` (the CLI's own code path).

The truth files in ../shared/samples/families hold the float64 spectra the writing library's own
code gives (peft get_delta_weight / merge, diffusers, LyCORIS forward, mlx-lm fuse, GGUF
read-back). The audit must match them to 1e-6 of sigma_1 with exact scales; DoRA twice: without
base weights the directional part s*B@A, with them the true merged - W0.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from lorarank.base import canonical_name
from lorarank.cli import main

FAMILIES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "families"
TRUTHS = sorted(FAMILIES.glob("*.truth.json")) if FAMILIES.is_dir() else []
pytestmark = pytest.mark.skipif(not FAMILIES.is_dir(), reason=f"family samples not found at {FAMILIES}")

FAMILY_OF = {"peft_dora": "dora", "mlx_dora": "dora", "peft_adalora": "adalora", "peft_loha": "loha",
             "lycoris_loha": "loha", "peft_lokr": "lokr", "lycoris_lokr": "lokr"}


def audit_json(capsys, *argv):
    code = main(["audit", *map(str, argv), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def by_name(doc, truth):
    """Report modules keyed by the truth's names (GGUF truths name blk.N... and the PEFT source)."""
    mods = {m["name"]: m for m in doc["modules"]}
    canon = {canonical_name(n): m for n, m in mods.items()}
    out = {}
    for name, rec in truth["modules"].items():
        for cand in (name, rec.get("source_module")):
            if cand in mods or (cand and canonical_name(cand) in canon):
                out[name] = mods.get(cand) or canon[canonical_name(cand)]
                break
        else:
            raise AssertionError(f"module {name!r} is missing from the audit (has {sorted(mods)[:3]} ...)")
    return out


def assert_spectrum(got, want, what):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    tol = 1e-6 * want[0]
    n = min(got.size, want.size)
    np.testing.assert_allclose(got[:n], want[:n], rtol=0, atol=tol, err_msg=what)
    # Whatever one side lists beyond the other is zero (the truth lists min(out, in) values).
    np.testing.assert_allclose(want[n:], 0.0, atol=tol, err_msg=what)
    np.testing.assert_allclose(got[n:], 0.0, atol=tol, err_msg=what)


CASES = [t for t in TRUTHS if json.loads(t.read_text()).get("modules")]


@pytest.mark.parametrize("truth_path", CASES, ids=lambda p: p.name.removesuffix(".truth.json"))
def test_audit_matches_truth(truth_path, capsys):
    truth = json.loads(truth_path.read_text())
    case = truth["case"]
    doc = audit_json(capsys, FAMILIES / truth["audit_path"])
    mods = by_name(doc, truth)
    assert len(doc["modules"]) == truth["n_modules"]
    dora = case in ("peft_dora", "mlx_dora")
    for name, rec in truth["modules"].items():
        m = mods[name]
        assert m["shape"] == rec["shape"], name
        assert m["scale"] == pytest.approx(rec["scale"], rel=1e-12), name
        assert m["family"] == FAMILY_OF.get(case, "locon-tucker" if rec.get("tucker") else "lora"), name
        if dora:
            assert m["spectrum_of"].startswith("directional part"), name
            assert m["magnitude"] is not None and m["relative_size"] is None
            assert_spectrum(m["singular_values"], rec["singular_values_scale_BA"], f"{case} {name} s*B@A")
        else:
            assert m["spectrum_of"].startswith("update"), name
            assert_spectrum(m["singular_values"], rec["singular_values"], f"{case} {name}")
        assert "zero" not in m["flags"], name
    if case == "peft_adalora":
        kept = {canonical_name(k.removesuffix(".lora_E")): v for k, v in truth["kept_ranks"].items()}
        assert {canonical_name(n): m["kept_rank"] for n, m in mods.items()} == kept
    if dora:
        assert any("directional part" in w for w in doc["summary"]["warnings"])


@pytest.mark.parametrize("case", ["peft_dora", "mlx_dora"])
def test_dora_with_base_matches_merged_minus_base(case, capsys):
    """With --base the spectrum is the true update merged - W0; the directional one is kept beside it."""
    truth = json.loads((FAMILIES / f"{case}.truth.json").read_text())
    doc = audit_json(capsys, FAMILIES / truth["audit_path"], "--base", FAMILIES / truth["base_weights_file"])
    mods = by_name(doc, truth)
    for name, rec in truth["modules"].items():
        m = mods[name]
        assert m["spectrum_of"].startswith("update merged - W0"), name
        assert_spectrum(m["singular_values"], rec["singular_values"], f"{case} {name} merged - W0")
        assert_spectrum(m["directional_singular_values"], rec["singular_values_scale_BA"], f"{case} {name}")
        want = np.asarray(rec["singular_values"])
        assert m["norm"] == pytest.approx(float(np.sqrt(np.sum(want**2))), rel=1e-9)
        assert 0 < m["relative_size"] < 10
    assert not any("directional part" in w for w in doc["summary"]["warnings"])


def test_multi_adapter_folder_lists_each_named_adapter(capsys):
    truth = json.loads((FAMILIES / "peft_multi_adapter.truth.json").read_text())
    doc = audit_json(capsys, FAMILIES / truth["audit_path"])
    assert sorted(a["summary"]["name"] for a in doc["adapters"]) == sorted(truth["subfolders"])
    for a in doc["adapters"]:
        sub = json.loads((FAMILIES / f"peft_multi_adapter_{a['summary']['name']}.truth.json").read_text())
        assert {m["name"] for m in a["modules"]} == set(sub["modules"])
