"""The Resize tab in headless Chromium with the real family samples (issue 22): a DoRA download
gives a DoRA adapter; a LoKr gets no 'resized' file, and one sentence why; a float16 adapter
whose resized factors do not fit float16 gets no button but the sentence, and one just under
the limit gets a button whose click gives the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import testkit
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


def upload_files(page, files: list[tuple[str, bytes]]) -> None:
    adapter_uploader(page).set_input_files(files=[{"name": n, "mimeType": "application/octet-stream", "buffer": d}
                                                  for n, d in files])
    page.wait_for_selector('[data-testid="stDataFrame"], [data-testid="stAlertContentError"]', timeout=60_000)
    wait_for_app(page)


def test_float16_overflow_says_why_and_draws_no_button(page, app_url, tmp_path, shot):
    """Resized factors reaching 65,529 cannot be stored as float16: the preview is shown, one
    sentence says why and what to do, no download button (whose click could only fail with
    Streamlit's "Failed to generate file for download"). Just under the limit (65,484, formed
    exactly: the bound sqrt(sigma_1) is 4x that) the button is there and its click gives the file."""
    page.goto(f"{app_url}/Adapter_audit")
    wait_for_app(page)
    upload_files(page, testkit.float16_peft(46336.0))
    open_tab(page, "Resize")
    shot(page, "float16-overflow-resize")
    assert_no_exception(page)
    assert page.get_by_test_id("stAlertContentError").count() == 0
    main = page.get_by_test_id("stMain")
    assert main.get_by_test_id("stMetric").filter(has_text="parameters after").count() == 1
    assert main.get_by_test_id("stDownloadButton").filter(has_text="resized").count() == 0
    assert main.get_by_role("button", name="adapter_model.safetensors").count() == 0
    warning = main.get_by_test_id("stAlertContentWarning").filter(has_text="No download").inner_text()
    assert "its resized factors reach 65,529, past the largest float16 value (65,504)" in warning
    assert "--dtype float32" in warning

    page.goto(f"{app_url}/Adapter_audit")
    wait_for_app(page)
    upload_files(page, testkit.float16_peft(46304.0, spread=True))
    open_tab(page, "Resize")
    assert_no_exception(page)
    assert page.get_by_test_id("stAlertContentWarning").filter(has_text="No download").count() == 0
    path = download(page, "Download resized adapter (.zip)", tmp_path / "resized.zip")
    weights, config = zipped_adapter(path, "resized_adapter")
    b = weights[testkit.F16_MODULE + ".lora_B.weight"]
    assert b.dtype == np.float16 and b.shape == (16, 1) and np.isfinite(b).all()
    assert float(np.abs(b).max()) == pytest.approx(46304.0 * np.sqrt(2), rel=1e-3)
