"""The example adapters shipped in ``examples/``: real files of every family, within budget,
the same bytes as the team's samples, and every one opens on the Adapter audit page."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lorarank.adapters import load_adapter_bytes
from ui import examples
from ui.common import md_plain

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "examples"
SAMPLES = REPO.parent / "shared" / "samples"
#: The folder's size budget (its README states it).
BUDGET = 1_100_000
#: Where each example file came from in the shared samples.
SOURCES = {
    "peft_llama_r8/": "peft_llama_r8/", "peft_gpt2_r4/": "peft_gpt2_r4/",
    "peft_dora/": "families/peft_dora/", "peft_adalora/": "families/peft_adalora/",
    "peft_loha/": "families/peft_loha/", "peft_lokr/": "families/peft_lokr/",
    "diffusers_unet_lora/": "families/diffusers_unet_lora/", "mlx_dora/": "families/mlx_dora/",
    "lycoris_lokr.safetensors": "families/lycoris_lokr.safetensors",
    "lycoris_locon_tucker.safetensors": "families/lycoris_locon_tucker.safetensors",
    "gguf_lora.gguf": "families/gguf_lora.gguf", "checkpoints_run/": "checkpoints/run/",
}


def files() -> list[Path]:
    return sorted(p for p in FOLDER.rglob("*") if p.is_file())


def test_within_budget_and_listed():
    """At most 1.1 MB in all; every file is in the README's table with its sha256."""
    assert sum(p.stat().st_size for p in files()) <= BUDGET
    readme = (FOLDER / "README.md").read_text()
    for path in files():
        if path.name != "README.md":
            rel = path.relative_to(FOLDER).as_posix()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert re.search(rf"`{re.escape(rel)}` \| {path.stat().st_size:,} \| `{digest}`", readme), rel


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"shared samples not found at {SAMPLES}")
def test_same_bytes_as_the_samples():
    """Every example is a byte-for-byte copy of the shared sample it names (its provenance)."""
    for path in files():
        rel = path.relative_to(FOLDER).as_posix()
        if path.name == "README.md":
            continue
        prefix = next(k for k in SOURCES if rel == k or rel.startswith(k))
        source = SAMPLES / (SOURCES[prefix] + rel[len(prefix):] if prefix.endswith("/") else SOURCES[prefix])
        assert path.read_bytes() == source.read_bytes(), rel


def test_every_family_is_there():
    """The examples read as every family and format the audit knows."""
    seen = set()
    for example in examples.EXAMPLES:
        adapter = load_adapter_bytes({name: (FOLDER / p).read_bytes() for p, name in
                                      ((p, p.rsplit("/", 1)[-1]) for p in example.files)})
        seen.add(adapter.format)
        seen.update(m.family for m in adapter.modules)
    assert {"lora", "dora", "adalora", "loha", "lokr", "locon-tucker"} <= seen
    assert {"peft", "kohya", "diffusers", "mlx", "gguf"} <= seen


@pytest.mark.parametrize("key", [e.key for e in examples.EXAMPLES])
def test_opens_in_one_click(key):
    """?example=<key>: the page audits the example, names it, and shows its table; no error."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("pages/3_Adapter_audit.py")
    at.query_params["example"] = key
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(f"real example **{examples.by_key(key).label}**" in md_plain(c.value) for c in at.caption)
    assert any("recommended rank" in df.value.columns for df in at.dataframe)


def test_real_run_for_rank_over_training():
    """?series_example=true: Rank over training follows the real six-checkpoint run."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("pages/3_Adapter_audit.py")
    at.query_params["series_example"] = "true"
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Real example run" in md_plain(c.value) for c in at.caption)
    text = " ".join(md_plain(m.value) for m in at.markdown)
    assert "Over 6 checkpoints (steps 15 to 90)" in text
