"""Rank over training (Adapter audit) in headless Chromium: a cold deep link, then the real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from apphelpers import assert_no_exception, open_tab, uploader, visit, wait_for_app
from safetensors.numpy import load_file
import testkit

pytestmark = pytest.mark.e2e

RUN = testkit.RUN
STEPS = [15, 30, 45, 60, 75, 90]
TAB = "Rank over training"


run_zip = testkit.zip_folder


def dense_spectra(step: int) -> dict[str, np.ndarray]:
    """Oracle: per module, the singular values of the dense float64 scale * B @ A."""
    folder = RUN / f"checkpoint-{step}"
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(folder / "adapter_model.safetensors")
    out = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            b = tensors[key.replace("lora_A", "lora_B")]
            out[key[: -len(".lora_A.weight")]] = np.linalg.svd(
                config["lora_alpha"] / config["r"] * b.astype(np.float64) @ a.astype(np.float64), compute_uv=False)
    return out


def energy_rank(s: np.ndarray, t: float = 0.99) -> int:
    """The smallest k keeping share t of sum sigma^2."""
    e = np.cumsum(s * s) / np.sum(s * s)
    return int(np.argmax(e >= t - 1e-12) + 1)


def widget_text(page, key: str) -> str:
    """What the widget with key ``key`` shows: its text plus its inputs' values."""
    box = page.locator(f".st-key-{key}")
    inputs = box.locator("input")
    return (box.text_content() or "") + " ".join(inputs.nth(i).input_value() for i in range(inputs.count()))


def open_series_tab(page) -> None:
    """Open the "Rank over training" tab (already open when the link carries its settings)."""
    open_tab(page, TAB)


@pytest.mark.skipif(not RUN.is_dir(), reason=f"checkpoint run not found at {RUN}")
def test_cold_link_then_real_run(page, fresh_server, tmp_path, shot):
    """A cold deep link keeps its series settings; the uploaded real run shows oracle numbers."""
    url = fresh_server()
    visit(page, f"{url}/Adapter_audit?series_metric=stable_rank&series_top=2&series_step=45"
                "&series_module=model.layers.0.self_attn.q_proj")
    open_series_tab(page)
    uploader(page, "audit_series_upload").set_input_files(files=[
        {"name": "run.zip", "mimeType": "application/zip", "buffer": run_zip()}])
    page.get_by_text("Over 6 checkpoints (steps 15 to 90)").wait_for(timeout=90_000)
    wait_for_app(page)
    shot(page, "series")
    assert_no_exception(page)
    assert page.get_by_test_id("stAlertContentError").count() == 0
    body = page.get_by_test_id("stMain").inner_text()
    # Settings from the link survived the cold start and the upload.
    assert page.locator(".st-key-series_top input").input_value() == "2"
    assert "stable rank" in widget_text(page, "series_metric")  # the option's label
    assert "45" in widget_text(page, "series_step")
    assert "model.layers.0.self_attn.q_proj" in widget_text(page, "series_module")
    assert page.get_by_test_id("stVegaLiteChart").count() >= 3
    # The JSON download is the CLI's document; its numbers equal the dense oracle.
    with page.expect_download() as info:
        page.locator(".st-key-audit_series_download_json").get_by_role("button").click()
    doc = json.loads(Path(info.value.path()).read_text())
    assert [c["step"] for c in doc["checkpoints"]] == STEPS
    series = doc["series"]
    assert series["top"] == 2
    for step_index, step in enumerate(STEPS):
        dense = dense_spectra(step)
        assert {m["name"] for m in series["modules"]} == set(dense)
        for m in series["modules"]:  # the numbers shown equal dense float64 SVDs of each checkpoint
            s = dense[m["name"]][: m["rank"][step_index]]
            np.testing.assert_allclose(m["singular_values"][step_index], s, rtol=1e-10, atol=1e-12)
            assert m["recommended_rank"][step_index] == energy_rank(s)
    settled = max(
        next(s for i, s in enumerate(STEPS) if all(m["recommended_rank"][j] == m["recommended_rank"][-1]
                                                  for j in range(i, len(STEPS))))
        for m in series["modules"])
    assert series["settled_step"] == settled
    assert f"settled at step {settled}" in body
    with page.expect_download() as info:
        page.locator(".st-key-audit_series_download_csv").get_by_role("button").click()
    lines = Path(info.value.path()).read_text().strip().splitlines()
    assert len(lines) == 1 + 6 * 6 and lines[0].startswith("step,module,")
