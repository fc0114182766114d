"""The audit page's Resize tab for every family (AppTest, issue 22): one parameter count with the
reading, a download only of what loads and shrinks, one sentence when there is none, and the
reading's words for families whose update rank is not the file's r."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lorarank.adapters import load_adapter_bytes
from ui import audit, resize_view
from ui.common import md_plain
import testkit

FAMILIES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "families"
pytestmark = pytest.mark.skipif(not FAMILIES.is_dir(), reason=f"family samples not found at {FAMILIES}")


def case_files(case: str) -> dict[str, bytes]:
    path = FAMILIES / case
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())
            if p.suffix in (".json", ".safetensors") and p.name != "base_weights.safetensors"}


def resize_tab(case: str, query: dict | None = None) -> AppTest:
    at = testkit.open_page("pages/3_Adapter_audit.py", {"tab": "Resize", **(query or {})})
    at.file_uploader(key=audit.UPLOAD_KEY).set_value(
        [(n, d, "application/octet-stream") for n, d in case_files(case).items()])
    at = at.run()
    assert not at.exception, at.exception
    return at


def metric(at: AppTest, label: str) -> str:
    (value,) = [m.value for m in at.metric if m.label == label]
    return value


def reading_after(at: AppTest) -> int:
    """The parameter count after the resize that the reading above the tabs states."""
    text = next(md_plain(m.value) for m in at.markdown if "of the parameters" in m.value or "would take" in m.value)
    found = re.search(r"-> ([\d,]+)\)", text) or re.search(r"would take ([\d,]+) parameters", text)
    return int(found.group(1).replace(",", ""))


def downloads(at: AppTest) -> list[str]:
    return [b.label for b in at.get("download_button") if "resized" in b.label.lower()
            or b.label.endswith((".safetensors", ".json"))]


@pytest.mark.parametrize("case,query,files", [
    ("peft_dora", {}, "zip"),
    ("mlx_dora", {"energy": "0.9"}, "zip"),
    ("peft_adalora", {}, "zip"),
    ("lycoris_locon_tucker.safetensors", {"rule": "sv_ratio", "sv_ratio": "3"}, None),
])
def test_the_resize_tab_counts_what_the_reading_counts(case, query, files):
    """One number for one resize: the Resize tab's 'parameters after' is the reading's (DoRA:
    14,016 -> 12,648 in the reading against 13,584 in the tab)."""
    at = resize_tab(case, query)
    after = int(metric(at, "parameters after").replace(",", ""))
    assert after == reading_after(at)
    if files == "zip":
        assert "Download resized adapter (.zip)" in downloads(at)
        assert not [w for w in at.warning if "No download" in w.value]


@pytest.mark.parametrize("case", ["peft_lokr", "lycoris_lokr.safetensors", "peft_loha"])
def test_no_larger_lora_form_is_offered_as_a_resize(case):
    """A LoKr / LoHa whose LoRA form is larger gets no 'resized' download, and one sentence why
    (the tab offered files up to 14x the input, '+1334.9 %')."""
    at = resize_tab(case)
    assert downloads(at) == []
    (why,) = [md_plain(w.value) for w in at.warning if "No download" in w.value]
    assert "the LoRA form is larger" in why and "more compactly" in why


def test_dora_downloads_are_a_dora_adapter():
    """The files behind the DoRA buttons exist and read back as DoRA with its magnitudes
    (the buttons produced nothing: 'lorarank does not write DoRA adapters')."""
    up = audit.Upload.from_files(case_files("peft_dora"))
    target = resize_view.ResizeTarget(by="rule", rule="energy", value=0.9)
    files = resize_view.resized_files(up, alpha=None, scale=None, target=target)
    back = load_adapter_bytes(files)
    source = load_adapter_bytes(case_files("peft_dora"))
    assert back.families == ["dora"] and len(back.modules) == len(source.modules)
    preview = resize_view.run_resize(up, alpha=None, scale=None, target=target)
    assert preview.summary["params_after"] == back.num_params


def test_kohya_dora_is_refused_in_one_sentence_without_a_button(tmp_path):
    """A LyCORIS DoRA file (dora_scale) is audited, but its resize is not written: no button,
    the reason."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    tensors = {}
    for name in ("lora_unet_a_proj", "lora_unet_b_proj"):
        tensors[name + ".lora_down.weight"] = rng.standard_normal((4, 32)).astype(np.float32)
        tensors[name + ".lora_up.weight"] = rng.standard_normal((24, 4)).astype(np.float32) * 0.1
        tensors[name + ".dora_scale"] = rng.uniform(0.5, 1.5, (24, 1)).astype(np.float32)
        tensors[name + ".alpha"] = np.array(4.0, dtype=np.float32)
    at = testkit.open_page("pages/3_Adapter_audit.py", {"tab": "Resize", "energy": "0.5"})
    at.file_uploader(key=audit.UPLOAD_KEY).set_value([("dora.safetensors", save(tensors), "application/octet-stream")])
    at = at.run()
    assert not at.exception, at.exception
    assert downloads(at) == []
    (why,) = [md_plain(w.value) for w in at.warning if "No download" in w.value]
    assert "DoRA" in why and "PEFT and mlx-lm files only" in why


def test_reading_says_what_the_lokr_rank_means():
    """'need rank 9 to 15' beside 'r = 3' is explained: the file's r is the factorised half's,
    and the updates' own rank is stated (up to 18)."""
    at = resize_tab("peft_lokr")
    text = next(md_plain(m.value) for m in at.markdown if "Under" in m.value).replace("**", "")
    assert "updates need rank 9 to 15" in text and "their updates have rank 12 to 18" in text
    assert "the file's r = 3" in text and "factorised half" in text
    assert "of the stored r = 3" not in text
    table = next(d.value for d in at.dataframe if "update rank" in d.value.columns)
    assert (table["recommended rank"] <= table["update rank"]).all()
    assert set(table["r"]) == {3}


def test_dora_with_base_weights_shows_how_far_the_merged_weights_move():
    at = resize_tab("peft_dora", {"energy": "0.9"})
    at.file_uploader(key=audit.BASE_UPLOAD_KEY).set_value(
        [("base_weights.safetensors", (FAMILIES / "peft_dora" / "base_weights.safetensors").read_bytes(),
          "application/octet-stream")])
    at = at.run()
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "new r" in d.value.columns)
    changed = table[table["new r"] < table["r"]]
    assert len(changed) and changed["merged-weight change"].notna().all()
    assert (changed["merged-weight change"] > 0).all()
    assert any("merged weights move by up to" in i.value for i in at.info)


def _upload_files(files: list[tuple[str, bytes]], query: dict | None = None) -> AppTest:
    at = testkit.open_page("pages/3_Adapter_audit.py", {"tab": "Resize", **(query or {})})
    at.file_uploader(key=audit.UPLOAD_KEY).set_value([(n, d, "application/octet-stream") for n, d in files])
    at = at.run()
    assert not at.exception, at.exception
    return at


def test_a_resize_past_float16_says_so_without_a_button():
    """Resized factors of 65,529 do not fit the float16 input (the click failed with Streamlit's
    'Failed to generate file for download', or the preview was one error): the preview stays, no
    button, one sentence with the way out; just under the limit the download is offered and its
    file is the writer's."""
    at = _upload_files(testkit.float16_peft(46336.0))
    assert downloads(at) == [] and metric(at, "parameters after") == "32"
    (why,) = [md_plain(w.value) for w in at.warning if "No download" in w.value]
    assert "cannot be stored as float16" in why and "--dtype float32" in why and "65,529" in why
    assert not at.error
    at = _upload_files(testkit.float16_peft(46304.0, spread=True))
    assert downloads(at) == ["Download resized adapter (.zip)", "adapter_model.safetensors", "adapter_config.json"]
    up = audit.Upload.from_files(dict(testkit.float16_peft(46304.0, spread=True)))
    files = resize_view.resized_files(up, alpha=None, scale=None, target=resize_view.ResizeTarget())
    assert load_adapter_bytes(files).modules[0].rank == 1


def test_an_npz_with_other_arrays_says_so_without_a_button():
    """The writer refuses arrays lorarank's .npz cannot keep; the tab offered the download anyway."""
    import io

    import numpy as np

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, **{"layer0.A": rng.standard_normal((4, 32)), "layer0.B": rng.standard_normal((32, 4)),
                     "layer0.alpha": np.array(4.0), "extra_head": rng.standard_normal(8)})
    at = _upload_files([("a.npz", buf.getvalue())], {"energy": "0.5"})
    assert downloads(at) == []
    (why,) = [md_plain(w.value) for w in at.warning if "No download" in w.value]
    assert "extra_head" in why and "remove it from the file" in why
