"""The Adapter audit page in headless Chromium against a real server, with real adapter files."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from apphelpers import adapter_uploader, assert_no_exception, input_value, open_tab, visit, wait_for_app
from playwright.sync_api import expect
from safetensors.numpy import load as st_load

pytestmark = pytest.mark.e2e

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"




def table_rows(page, index: int = 0) -> list[list[str]]:
    """Cell texts of a data frame, row by row (the grid's accessible table)."""
    grid = page.get_by_test_id("stDataFrame").nth(index)
    return [row.locator("td").all_inner_texts() for row in grid.locator("table tbody tr").all()]


def select_text(page, key: str) -> str:
    """What the select box with widget key ``key`` shows (its text and its input's value)."""
    box = page.locator(f".st-key-{key}")
    inputs = box.locator("input")
    return (box.text_content() or "") + " ".join(inputs.nth(i).input_value() for i in range(inputs.count()))


def upload_sample(page, name: str) -> None:
    """Drop a sample's adapter_model.safetensors and adapter_config.json together."""
    folder = SAMPLES / name
    if not folder.is_dir():
        pytest.skip(f"sample adapters not found at {folder}")
    files = [{"name": p.name, "mimeType": "application/octet-stream", "buffer": p.read_bytes()}
             for p in sorted(folder.iterdir())]
    adapter_uploader(page).set_input_files(files=files)
    wait_for_result(page)


def first_screen_tops(page) -> dict:
    """Tops (px from the window's top, page scrolled to its start) of the first results (the
    reading, the summary table by module type, the per-module grid) and of the visible adapter
    inputs; None for what is not shown."""
    return page.evaluate("""() => {
      for (const el of document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppScrollToBottomContainer"]'))
        el.scrollTop = 0;
      const shown = (el) => el && el.checkVisibility({visibilityProperty: true}) &&
        el.getBoundingClientRect().height > 0;
      const top = (el) => shown(el) ? Math.round(el.getBoundingClientRect().top) : null;
      const reading = [...document.querySelectorAll('[data-testid="stMarkdownContainer"]')]
        .find(e => e.innerText.includes('the modules need rank'));
      const inputs = [...document.querySelectorAll('[data-testid="stFileUploaderDropzone"], [data-testid="stTextInput"]')]
        .filter(shown);
      return {reading: top(reading), table: top(document.querySelector('[data-testid="stDataFrame"]')),
              summary: top(document.querySelector('.st-key-audit_summary table')),
              inputs: inputs.length ? Math.min(...inputs.map(top)) : null};
    }""")


def wait_for_result(page) -> None:
    """After an upload: wait until the run it triggers shows a table or an error."""
    page.wait_for_selector('[data-testid="stDataFrame"], [data-testid="stAlertContentError"]',
                           timeout=60_000)
    wait_for_app(page)


class TestColdDeepLink:
    """A shared link opened on a server that has never served a page."""

    def test_settings_restored_on_a_cold_server(self, page, fresh_server, shot):
        """rule, value, map, budget, resize_by and compare come back from the URL, no error."""
        url = fresh_server()
        visit(page, f"{url}/Adapter_audit?rule=sv_ratio&sv_ratio=4&map=stable_rank&budget=3"
                    "&resize_by=budget&compare=true", shot, "cold_deep_link")
        assert page.get_by_role("heading", name="Adapter audit").count() == 1
        assert "sv_ratio" in select_text(page, "rule")
        assert input_value(page, "sv_ratio") == "4.000"
        assert "stable rank" in select_text(page, "map")  # its label, from the raw option
        assert input_value(page, "budget") == "3"
        assert page.locator(".st-key-resize_by input[type=radio]").nth(1).is_checked()
        assert page.locator(".st-key-compare input").is_checked()
        assert page.get_by_test_id("stAlertContentError").count() == 0
        assert page.get_by_text("What to upload").count() == 1

    def test_demo_link_shows_the_whole_page(self, page, fresh_server, shot):
        """A link with demo=true renders the synthetic demo with every section and compare."""
        url = fresh_server()
        visit(page, f"{url}/Adapter_audit?demo=true&compare=true&module=model.layers.1.self_attn.v_proj", shot, "demo")
        assert page.get_by_text("synthetic demo", exact=False).count() >= 1
        assert len(table_rows(page)) == 14
        tabs = page.get_by_role("tab").all_inner_texts()
        assert [t.strip() for t in tabs] == ["Per module", "Rank map", "Spectrum", "Budget",
                                             "Resize", "Compare", "Against the base", "Rank over training",
                                             "Full fine-tune"]
        assert "layers.1.self_attn.v_proj" in select_text(page, "module")
        # Each tab draws its charts when it is opened (and only then).
        assert page.get_by_test_id("stVegaLiteChart").count() == 0
        for name, count in (("Rank map", 1), ("Spectrum", 1), ("Budget", 1), ("Compare", 2)):
            open_tab(page, name)
            charts = page.get_by_test_id("stVegaLiteChart")
            assert charts.count() == count, name
            charts.last.locator("svg, canvas").first.wait_for(state="visible", timeout=10_000)
        assert "tab=Compare" in page.url


class TestUpload:
    """Uploading the real PEFT sample through the dropzone."""

    def test_upload_table_and_resize_download(self, page, app_url, tmp_path, shot):
        """The two files together give the table; the resized PEFT zip loads at the new ranks."""
        page.goto(f"{app_url}/Adapter_audit?rule=sv_ratio&sv_ratio=2")
        wait_for_app(page)
        upload_sample(page, "peft_llama_r8")
        shot(page, "uploaded")
        assert_no_exception(page)
        assert page.get_by_test_id("stAlertContentError").count() == 0
        rows = table_rows(page)
        assert len(rows) == 14
        assert all(row[2] == row[3] == "8" for row in rows)  # update rank, r
        recommended = {row[0]: int(row[1]) for row in rows}  # recommended rank: next to the module
        body = page.get_by_test_id("stMain").inner_text()
        assert "peft (adapter_model.safetensors + adapter_config.json)" in body
        assert "scale = lora_alpha / r; s = 2" in body  # 16 / 8
        # Results first: once loaded, the uploader, Hub field and base weights fold away, and the
        # reading and the table are on the first screen (they were ~850 px further down).
        tops = first_screen_tops(page)
        assert tops["inputs"] is None and tops["reading"] < tops["summary"] < tops["table"], tops
        assert tops["summary"] < 900, tops  # the first table: by module type, the full grid under it
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: no input stack first
        page.wait_for_timeout(300)
        tops = first_screen_tops(page)
        assert tops["inputs"] is None and tops["reading"] < 700, tops
        page.set_viewport_size({"width": 1400, "height": 1000})
        open_tab(page, "Resize")
        with page.expect_download() as info:
            page.get_by_role("button", name="Download resized adapter (.zip)").click()
        download = info.value
        assert download.suggested_filename == "lorarank-resized-adapter.zip"
        path = tmp_path / "resized.zip"
        download.save_as(path)
        with zipfile.ZipFile(path) as archive:
            assert sorted(archive.namelist()) == ["resized_adapter/adapter_config.json",
                                                  "resized_adapter/adapter_model.safetensors"]
            weights = st_load(archive.read("resized_adapter/adapter_model.safetensors"))
            config = json.loads(archive.read("resized_adapter/adapter_config.json"))
        ranks = {k[len("base_model.model."):-len(".lora_A.weight")]: v.shape[0]
                 for k, v in weights.items() if k.endswith(".lora_A.weight")}
        assert ranks == recommended
        # The oracle: sv_ratio 2 keeps sigma_i > sigma_1 / 2 of the dense 2 * B @ A.
        original = st_load((SAMPLES / "peft_llama_r8" / "adapter_model.safetensors").read_bytes())
        for module, k in ranks.items():
            key = f"base_model.model.{module}"
            s = np.linalg.svd(2.0 * original[key + ".lora_B.weight"].astype(np.float64)
                              @ original[key + ".lora_A.weight"], compute_uv=False)
            assert k == int(np.sum(s > s[0] / 2))
        assert config["peft_type"] == "LORA"
        assert_no_exception(page)

    def test_csv_download_and_bad_file(self, page, app_url, tmp_path):
        """The table's CSV has one row per module; a text file renamed .npz is one error."""
        page.goto(f"{app_url}/Adapter_audit")
        wait_for_app(page)
        upload_sample(page, "peft_llama_r32_rslora")
        with page.expect_download() as info:
            page.get_by_role("button", name="Download CSV").click()
        text = info.value.path().read_text()
        assert text.count("\n") == 1 + 4 and "singular_values" in text.splitlines()[0]
        assert re.search(r",1\.41421356\d*,", text)  # rsLoRA scale 8 / sqrt(32)
        page.goto(f"{app_url}/Adapter_audit")  # a new session: the uploader is empty
        wait_for_app(page)
        adapter_uploader(page).set_input_files(files=[
            {"name": "adapter.npz", "mimeType": "application/octet-stream",
             "buffer": b"this is not an archive\n"}])
        wait_for_result(page)
        assert_no_exception(page)
        # The alert's material icon adds its name ("error") as hidden text before the sentence.
        errors = [e.strip().splitlines()[-1]
                  for e in page.get_by_test_id("stAlertContentError").all_inner_texts()]
        assert errors == ["adapter.npz is not an .npz archive (it does not start with a zip "
                          "signature)"]
        assert "this is not an archive" not in page.url
        # the file is not kept as the adapter: no line names it, the uploader is open for others
        body = page.get_by_test_id("stMain").inner_text()
        assert "Adapter:" not in body and "Loaded:" not in body
        assert adapter_uploader(page).count() == 1 and page.get_by_text("Adapter files").is_visible()

    def test_next_adapter_replaces_and_clear_empties(self, page, app_url, shot):
        """After one adapter the uploader is empty again; dropping another replaces it (no
        "several weights files" error), the line under the title names it, Clear forgets it."""
        page.goto(f"{app_url}/Adapter_audit")
        wait_for_app(page)
        upload_sample(page, "peft_llama_r8")
        main = page.get_by_test_id("stMain")
        assert "Loaded: adapter_model.safetensors + adapter_config.json" in main.inner_text()
        assert page.get_by_test_id("stFileUploaderFile").count() == 0  # no cut chips left
        upload_sample(page, "peft_gpt2_r4")
        shot(page, "replaced")
        assert_no_exception(page)
        assert page.get_by_test_id("stAlertContentError").count() == 0
        rows = table_rows(page)
        assert rows and all(row[2] == "4" for row in rows)  # the GPT-2 adapter's r
        assert "peft lora, r = 4" in main.inner_text()
        page.get_by_role("button", name="Clear").click()
        # The rerun may start after wait_for_app's first look (a busy machine): wait for its result.
        expect(page.get_by_test_id("stDataFrame")).to_have_count(0, timeout=60_000)
        wait_for_app(page)
        assert page.get_by_text("What to upload").count() == 1
