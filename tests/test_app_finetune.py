"""The Adapter audit page's "Full fine-tune" section under AppTest: demo, real uploads, errors, budget.

Expected numbers come from the float64 truth of the real fine-tuned Llama sample (computed
from its safetensors files with numpy), never from the engine the page calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lorarank.adapters import load_adapter_bytes
from lorarank.finetune import FinetuneSettings
from ui import finetune_view as fv
from ui import guard
from ui.common import md_plain
import testkit

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "base_relative"
PAGE = "pages/3_Adapter_audit.py"


def open_page(query: dict | None = None) -> AppTest:
    return testkit.open_page(PAGE, {"tab": fv.TAB, **(query or {})})


def table(at: AppTest):
    frames = [d.value for d in at.dataframe if "k(0.9)" in d.value.columns]
    assert len(frames) == 1
    return frames[0]


text = testkit.page_text


def model_files(folder: Path) -> list[tuple[str, bytes, str]]:
    if not folder.is_dir():
        pytest.skip(f"the fine-tuned sample model is not at {folder}")
    return [(p.name, p.read_bytes(), "application/octet-stream") for p in sorted(folder.iterdir())
            if p.suffix in (".safetensors", ".json")]


class TestDemo:
    def test_cold_link_shows_the_reading_and_table(self):
        at = open_page({fv.DEMO_KEY: "true", fv.MAP.key: "energy_rank_0.99"})
        assert not at.exception and not at.error
        assert "a LoRA would need rank 50 %: **1 to 16** (median 2)" in text(at)
        frame = table(at)
        assert len(frame) == 16 and frame.iloc[0]["module"] == "lm_head" and frame.iloc[0]["flags"] == "unchanged"
        # the spectrum shows the first changed module, not the unchanged lm_head
        assert at.selectbox(key=fv.MODULE_KEY).value == "model.embed_tokens"
        assert at.selectbox(key=fv.MAP.key).value == "energy_rank_0.99"

    def test_downloads_are_offered(self):
        at = open_page({fv.DEMO_KEY: "true"})
        labels = [b.label for b in at.get("download_button")]
        assert labels == ["Download CSV", "Download JSON", "Download the extracted LoRA (.zip)",
                          "Download the report (HTML)"]

    def test_module_in_the_link_that_does_not_exist(self):
        at = open_page({fv.DEMO_KEY: "true", fv.MODULE_KEY: "model.layers.9.nope"})
        assert any("has no such module" in md_plain(e.value) for e in at.error)
        assert at.selectbox(key=fv.MODULE_KEY).value == "model.embed_tokens"

    def test_bad_setting_in_the_link_is_one_sentence(self):
        at = open_page({fv.DEMO_KEY: "true", fv.MAX_RANK.key: "lots"})
        assert not at.exception
        assert any("ft_max_rank=lots" in md_plain(e.value) and "whole number" in md_plain(e.value) for e in at.error)
        assert len(table(at)) == 16

    def test_closed_tab_computes_nothing(self):
        at = open_page({fv.DEMO_KEY: "true", "tab": "Per module"})
        assert not at.exception
        assert not [d for d in at.dataframe if "k(0.9)" in d.value.columns]


@pytest.mark.skipif(not (SAMPLES / "finetuned").is_dir(), reason=f"samples not at {SAMPLES}")
class TestRealUploads:
    def test_uploaded_pair_matches_the_truth(self):
        at = open_page()
        at.file_uploader(key=fv.FT_UPLOAD_KEY).set_value(model_files(SAMPLES / "finetuned"))
        at.file_uploader(key=fv.BASE_UPLOAD_KEY).set_value(model_files(SAMPLES / "base")).run()
        assert not at.exception and not at.error
        truth = json.loads((SAMPLES / "finetuned.truth.json").read_text())["modules"]
        frame = table(at)
        assert len(frame) == 23
        for _, row in frame.iterrows():
            t = truth[row["module"]]
            assert row["k(0.9)"] == str(t["energy_rank_90"]) and row["k(0.99)"] == str(t["energy_rank_99"])
            assert row["error @ 8"] == pytest.approx(t["rank_k_rel_frobenius_error"]["8"], abs=1e-9)
            assert row["sigma_1"] == pytest.approx(t["singular_values"][0], rel=1e-9)

    def test_one_model_only_says_what_is_missing(self):
        at = open_page()
        at.file_uploader(key=fv.FT_UPLOAD_KEY).set_value(model_files(SAMPLES / "finetuned")).run()
        assert not at.exception
        assert any("Give the base model too" in i.value for i in at.info)

    def test_an_adapter_as_the_base_is_one_sentence(self):
        at = open_page()
        adapter = [(p.name, p.read_bytes(), "application/octet-stream")
                   for p in sorted((SAMPLES / "lora_r8").iterdir()) if p.suffix == ".safetensors"]
        at.file_uploader(key=fv.FT_UPLOAD_KEY).set_value(model_files(SAMPLES / "finetuned"))
        at.file_uploader(key=fv.BASE_UPLOAD_KEY).set_value(adapter).run()
        assert not at.exception
        shown = [md_plain(e.value) for e in at.error]
        assert len(shown) == 1 and "is a LoRA adapter, not a model" in shown[0]

    def test_extracted_lora_download(self):
        """The extraction the download builds: rank 8 everywhere, loadable, the truncation's error."""
        ft = fv.ModelSource("upload", "t:ft", "finetuned", tuple((n, d) for n, d, _ in model_files(SAMPLES / "finetuned")))
        base = fv.ModelSource("upload", "t:base", "base", tuple((n, d) for n, d, _ in model_files(SAMPLES / "base")))
        files = fv.extracted_files(ft, base, by="rank", value=8, settings=FinetuneSettings(), base_name="base")
        adapter = load_adapter_bytes(list(files.items()))
        assert len(adapter.modules) == 22 and {m.rank for m in adapter.modules} == {8}
        assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "base"


class TestBudget:
    # each test its own max_rank: work done once on this server does not ask again
    def test_long_work_waits_for_run(self, monkeypatch):
        monkeypatch.setattr(guard, "ASK_SECONDS", 1e-9)
        at = open_page({fv.DEMO_KEY: "true", fv.MAX_RANK.key: "201"})
        assert not at.exception
        assert any("press Run to start it" in m.value and "weight matrices" in m.value for m in at.markdown)
        assert not [d for d in at.dataframe if "k(0.9)" in d.value.columns]
        at.button(key=f"{fv.GATE_KEY}_run").click().run()
        assert not at.exception and len(table(at)) == 16

    def test_a_stopped_run_shows_the_modules_finished(self, monkeypatch):
        monkeypatch.setattr(guard, "ASK_SECONDS", 1e-9)
        at = open_page({fv.DEMO_KEY: "true", fv.MAX_RANK.key: "202"})
        at.button(key=f"{fv.GATE_KEY}_run").click().run()
        ident = ("finetune", "demo:finetuned", "demo:base", FinetuneSettings(max_rank=202))
        at.session_state[f"{fv.GATE_KEY}_stopped"] = ident  # what the Stop button's callback leaves
        at.session_state[f"{fv.GATE_KEY}_approved"] = None
        at.run()
        assert not at.exception
        assert any("**Stopped.**" in m.value for m in at.markdown)
        assert any("Showing the 16 of 16 modules measured before the stop" in c.value for c in at.caption)
        assert "(stopped after 16 of 16 modules)" in text(at)


def test_an_update_past_float32_has_no_extraction_download():
    """An update whose sigma_1 is past float32's range: the extraction says so in one sentence
    instead of a download that fails with a generic message (or writes inf factors)."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    w0 = (rng.uniform(0.5, 1.0, (6, 8)) * 3e38).astype(np.float32)
    at = open_page()
    at.file_uploader(key=fv.FT_UPLOAD_KEY).set_value([("ft.safetensors", save({"m.weight": w0}), "application/octet-stream")])
    at.file_uploader(key=fv.BASE_UPLOAD_KEY).set_value([("base.safetensors", save({"m.weight": -w0}),
                                                         "application/octet-stream")]).run()
    assert not at.exception
    shown = [md_plain(e.value) for e in at.error]
    assert len(shown) == 1 and "too large for float32 LoRA factors" in shown[0], shown
    assert not [b for b in at.get("download_button") if "extracted" in str(b.proto.label)]
