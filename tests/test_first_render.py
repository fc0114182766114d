"""What a page imports before its first result (issue 22, first render).

On a cold server a page's first visit pays for every module its script imports before its first
element: pandas, pyarrow and Altair cost ~1-2 s here, numpy ~0.2 s (benchmarks/bench_app.py).
The pages that show no table or chart at their defaults (Home, Glossary; the Adapter audit and
the Fleet page before an upload) must not import them; the audit's first result on the demo
(a markdown table) comes before them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "pandas", "pyarrow", "altair")

#: Each page opened in a fresh process (AppTest, as a first visit), then the heavy modules loaded.
_SCRIPT = r"""
import json, sys
from streamlit.testing.v1 import AppTest

page, query = sys.argv[1], json.loads(sys.argv[2])
at = AppTest.from_file(sys.argv[3], default_timeout=120).run()
if page != "app.py":
    at.switch_page(page)
for key, value in query.items():
    at.query_params[key] = value
at.run()
print(json.dumps({"exception": [e.value for e in at.exception],
                  "loaded": [m for m in sys.argv[4].split(",") if m in sys.modules]}))
"""


def first_visit(page: str, query: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, page, json.dumps(query or {}),
                          str(ROOT / "app.py"), ",".join(HEAVY)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("page, query, absent", [
    ("app.py", None, HEAVY),
    ("pages/5_Glossary.py", None, HEAVY),
    ("pages/3_Adapter_audit.py", None, ("pandas", "pyarrow", "altair")),
    ("pages/4_Fleet.py", None, ("pandas", "pyarrow", "altair")),
])
def test_text_pages_import_no_table_or_chart_library(page, query, absent):
    """Home and the Glossary are text: no numpy, pandas, pyarrow or Altair. The audit and the
    Fleet page before an upload show an uploader: no pandas, pyarrow or Altair (they loaded
    with ui.audit, ui.series, ui.finetune_view and the charts imported at the top)."""
    seen = first_visit(page, query)
    assert seen["exception"] == []
    assert [m for m in seen["loaded"] if m in absent] == []


def test_audit_first_table_sums_up_the_grid_by_module_type():
    """The audit's first result (the demo) is a markdown table by module type: each row's
    counts and ranges are those of the per-module grid under it, grouped by the module's type."""
    sys.path.insert(0, str(ROOT / "tests"))
    from markdown_tables import tables
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/3_Adapter_audit.py")
    at.query_params["demo"] = "true"
    at.run()
    assert not at.exception
    summary = tables(at)[0]
    grid = next(d.value for d in at.dataframe if "recommended rank" in d.value.columns)
    kinds = grid["module"].str.rsplit(".", n=1).str[-1]
    assert [row["module type"] for row in summary] == list(dict.fromkeys(kinds))
    for row in summary:
        mine = grid[kinds == row["module type"]]
        lo, hi = mine["recommended rank"].min(), mine["recommended rank"].max()
        assert row["modules"] == str(len(mine))
        assert row["recommended rank"].split(" (")[0] == (f"{lo}" if lo == hi else f"{lo}..{hi}")
        assert row["r"] == "16"
        assert float(row["truncation error"]) == pytest.approx(mine["truncation error"].max(), rel=1e-2)
    # the planted ranks of the demo (its info line): q_proj and k_proj 2 ... down_proj 8
    planted = {"q_proj": "2", "k_proj": "2", "gate_proj": "3", "up_proj": "4", "o_proj": "5",
               "v_proj": "6", "down_proj": "8"}
    assert {row["module type"]: row["recommended rank"] for row in summary} == planted


def test_audit_first_visit_draws_only_what_it_shows():
    """Before an adapter is loaded the audit page draws its uploader and Hub field, not the
    tabs' settings nor the Rank over training / Full fine-tune inputs (each widget kind loads its
    own scripts in the browser before the uploader shows). A link that sets a tab's settings
    shows them; a link naming a section, or opening its tab, draws that section's inputs; an
    adapter brings every setting back."""
    sys.path.insert(0, str(ROOT / "tests"))
    import testkit

    from ui import audit, finetune_view, series

    page = "pages/3_Adapter_audit.py"
    at = testkit.open_page(page)
    assert not at.exception
    assert len(at.file_uploader) == 1 and at.file_uploader[0].key == audit.UPLOAD_KEY
    keys = {w.key for kind in (at.radio, at.number_input, at.selectbox, at.toggle) for w in kind}
    assert keys == {audit.DEMO_KEY}, keys
    # a copied link with settings shows them (a cold deep link restores them)
    at = testkit.open_page(page, {"rule": "sv_ratio", "sv_ratio": "4", "budget": "3", "compare": "true"})
    assert not at.exception
    shown = {w.key: w.value for kind in (at.radio, at.number_input, at.selectbox, at.toggle) for w in kind}
    assert shown["rule"] == "sv_ratio" and shown["sv_ratio"] == 4 and shown["budget"] == 3, shown
    assert shown[audit.COMPARE_KEY] is True
    # the sections' own inputs, once their tab is opened (or the link names them)
    at = testkit.open_page(page, {"tab": series.TAB})
    assert series.UPLOAD_KEY in {u.key for u in at.file_uploader}
    at = testkit.open_page(page, {"tab": finetune_view.TAB})
    assert finetune_view.FT_UPLOAD_KEY in {u.key for u in at.file_uploader}
    # the demo adapter: every tab's settings
    at = testkit.open_page(page, {"demo": "true"})
    assert not at.exception
    assert {"rule", "energy", "map", "budget", "resize_by", audit.COMPARE_KEY} <= {
        w.key for kind in (at.radio, at.number_input, at.selectbox, at.toggle) for w in kind}


def test_fleet_first_visit_draws_the_planner_once_there_is_a_fleet():
    """The Fleet page's planner settings (energy to keep, share of the fleet) appear once there
    are adapters to plan, or when the link sets them; its sources (Hub query, read mode, the
    uploader) always."""
    sys.path.insert(0, str(ROOT / "tests"))
    import testkit

    from ui import fleet as fl

    def numbers(at) -> dict:
        return {w.key: w.value for w in at.number_input}

    at = testkit.open_page("pages/4_Fleet.py")
    assert not at.exception and numbers(at) == {}
    assert at.text_input(key=fl.Q.key) is not None and len(at.file_uploader) == 1
    at = testkit.open_page("pages/4_Fleet.py", {fl.KEEP.key: "0.95"})
    assert not at.exception and numbers(at) == {fl.KEEP.key: 0.95, fl.SHARE.key: fl.SHARE.default}
    at = testkit.open_page("pages/4_Fleet.py", {fl.EXAMPLES_KEY: "true"}, timeout=300)
    assert not at.exception and set(numbers(at)) == {fl.KEEP.key, fl.SHARE.key}


_WITHOUT = r"""
import importlib.abc, json, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pandas", "pyarrow", "altair"):
            raise ImportError(f"{name} blocked")
        return None

sys.meta_path.insert(0, Blocked())
sys.path.insert(0, sys.argv[2])
from markdown_tables import tables
from streamlit.testing.v1 import AppTest

at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
at.switch_page("pages/3_Adapter_audit.py")
at.query_params["demo"] = "true"
at.run()
print(json.dumps({"tables": tables(at), "exception": len(at.exception)}))
"""


def test_audit_demo_first_table_needs_no_table_or_chart_library():
    """The audit's first result (the demo's table by module type) is drawn before pandas,
    pyarrow or Altair is imported: with them unavailable the page still draws it (and fails only
    after it, at the full grid). The file's metadata expander built a data frame before it."""
    out = subprocess.run([sys.executable, "-c", _WITHOUT, str(ROOT / "app.py"), str(ROOT / "tests")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["tables"] and seen["tables"][0][0]["module type"] == "down_proj", seen
    assert seen["exception"] == 1  # the grid after it: this test blocks its library
