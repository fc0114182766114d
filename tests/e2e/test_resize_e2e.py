"""The Resize tab in headless Chromium with the real family samples (issue 22): a DoRA download
gives a DoRA adapter; a LoKr gets no 'resized' file, and one sentence why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from apphelpers import adapter_uploader, assert_no_exception, download, open_tab, wait_for_app, zipped_adapter
from safetensors.numpy import load as st_load

pytestmark = pytest.mark.e2e

FAMILIES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "families"


def upload_case(page, case: str) -> None:
    folder = FAMILIES / case
    if not folder.is_dir():
        pytest.skip(f"family samples not found at {folder}")
    files = [{"name": p.name, "mimeType": "application/octet-stream", "buffer": p.read_bytes()}
             for p in sorted(folder.iterdir())
             if p.suffix in (".json", ".safetensors") and p.name != "base_weights.safetensors"]
    adapter_uploader(page).set_input_files(files=files)
    page.wait_for_selector('[data-testid="stDataFrame"], [data-testid="stAlertContentError"]', timeout=60_000)
    wait_for_app(page)


def test_dora_download_is_a_dora_adapter(page, app_url, tmp_path, shot):
    """The zip holds PEFT DoRA files: lora_magnitude_vector kept bit for bit, use_dora, the new
    ranks (the buttons produced no file: 'lorarank does not write DoRA adapters')."""
    page.goto(f"{app_url}/Adapter_audit?energy=0.9")
    wait_for_app(page)
    upload_case(page, "peft_dora")
    open_tab(page, "Resize")
    shot(page, "dora-resize")
    assert_no_exception(page)
    body = page.get_by_test_id("stMain").inner_text()
    assert "magnitude vector m is kept" in body and "No download" not in body
    path = download(page, "Download resized adapter (.zip)", tmp_path / "resized.zip")
    weights, config = zipped_adapter(path, "resized_adapter")
    original = st_load((FAMILIES / "peft_dora" / "adapter_model.safetensors").read_bytes())
    assert config["use_dora"] is True
    mags = [k for k in original if k.endswith("lora_magnitude_vector")]
    assert mags and all(np.array_equal(weights[k], original[k]) for k in mags)
    ranks = {weights[k].shape[0] for k in weights if k.endswith(".lora_A.weight")}
    assert max(ranks) <= 6 and min(ranks) < 6


def test_lokr_offers_no_larger_file(page, app_url, shot):
    page.goto(f"{app_url}/Adapter_audit")
    wait_for_app(page)
    upload_case(page, "peft_lokr")
    open_tab(page, "Resize")
    shot(page, "lokr-resize")
    assert_no_exception(page)
    assert page.get_by_role("button", name="Download resized adapter (.zip)").count() == 0
    warning = page.get_by_test_id("stAlertContentWarning").filter(has_text="No download").inner_text()
    assert "the LoRA form is larger" in warning and "756" in warning
