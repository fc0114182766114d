"""The Adapter audit's "Against the base" tab in headless Chromium against a real server."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from apphelpers import (adapter_uploader, assert_no_exception, download, input_value, set_number, uploader,
                        wait_for_app, zipped_adapter)

pytestmark = pytest.mark.e2e

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "base_relative"
LINK = ("/Adapter_audit?demo=true&tab=Against+the+base&top_k=8&epsilon=0.4"
        "&base_module=model.layers.0.mlp.up_proj")


def charts_drawn(page, count: int) -> None:
    charts = page.get_by_test_id("stVegaLiteChart")
    assert charts.count() == count
    for i in range(count):
        charts.nth(i).locator("svg, canvas").first.wait_for(state="visible", timeout=20_000)


def test_cold_deep_link(page, fresh_server, shot):
    """The link's settings come back on a server that never served a page: the reading, the map
    and the cosine picture of the linked module, no error."""
    url = fresh_server()
    page.goto(url + LINK)
    wait_for_app(page, timeout=120_000)
    shot(page, "against-base-cold")
    assert_no_exception(page)
    errors = page.get_by_test_id("stAlertContentError")
    assert errors.count() == 0, errors.all_inner_texts()
    assert input_value(page, "top_k") == "8" and input_value(page, "epsilon") == "0.400"
    body = page.get_by_test_id("stMain").inner_text()
    assert "intruder dimensions in" in body and "top 8" in body and "synthetic demo base" in body
    box = page.locator(".st-key-base_module")
    shown = (box.text_content() or "") + " ".join(box.locator("input").nth(i).input_value()
                                                 for i in range(box.locator("input").count()))
    assert "model.layers.0.mlp.up_proj" in shown
    charts_drawn(page, 3)  # the map; the cosine heatmap and its best-match bars
    assert "tab=Against+the+base" in page.url or "tab=Against%20the%20base" in page.url


def test_settings_move_the_link_and_downloads(page, app_url, tmp_path):
    """epsilon typed in goes into the link; the CSV has one row per module, the mitigated zip
    holds a PEFT adapter of the same ranks."""
    page.goto(app_url + "/Adapter_audit?demo=true&tab=Against+the+base")
    wait_for_app(page, timeout=120_000)
    set_number(page, "epsilon", 0.3)
    assert "epsilon=0.3" in page.url
    assert_no_exception(page)
    with page.expect_download() as info:
        page.locator(".st-key-audit_base_download_csv").get_by_role("button").click()
    rows = list(csv.DictReader(io.StringIO(info.value.path().read_text())))
    assert len(rows) == 14 and {r["epsilon"] for r in rows} == {"0.3"}
    path = download(page, "Download the intruder-reduced adapter (lambda 0.75) (.zip)", tmp_path / "m.zip")
    weights, config = zipped_adapter(path, "intruder_reduced")
    assert config["r"] == 16 and len([k for k in weights if k.endswith("lora_A.weight")]) == 14


def test_real_adapter_with_its_base(page, app_url, shot):
    """lora_r8 and its base dropped in: PEFT's counts (59 intruders in 20 of 21 modules)."""
    if not SAMPLES.is_dir():
        pytest.skip(f"base_relative samples not found at {SAMPLES}")
    page.goto(app_url + "/Adapter_audit?tab=Against+the+base")
    wait_for_app(page)
    adapter_uploader(page).set_input_files(files=[
        {"name": p.name, "mimeType": "application/octet-stream", "buffer": p.read_bytes()}
        for p in sorted((SAMPLES / "lora_r8").iterdir()) if p.suffix in (".safetensors", ".json")])
    wait_for_app(page, timeout=120_000)
    uploader(page, "audit_upload_base").set_input_files(files=[
        {"name": "model.safetensors", "mimeType": "application/octet-stream",
         "buffer": (SAMPLES / "base" / "model.safetensors").read_bytes()}])
    wait_for_app(page, timeout=120_000)
    page.get_by_text("59 intruder dimensions in 20 of 21 modules").first.wait_for(timeout=60_000)
    shot(page, "against-base-lora_r8")
    assert_no_exception(page)
