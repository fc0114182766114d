"""Full fine-tune (Adapter audit) in headless Chromium: cold deep link, real uploads, downloads, Stop."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from apphelpers import AppServer, assert_no_exception, error_sentences, uploader, wait_for_app
from safetensors.numpy import load_file, save

pytestmark = pytest.mark.e2e

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "base_relative"
TAB = "Full fine-tune"


def files_of(folder: Path) -> list[dict]:
    return [{"name": p.name, "mimeType": "application/octet-stream", "buffer": p.read_bytes()}
            for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".json")]


def download(page, key: str) -> Path:
    with page.expect_download() as info:
        page.locator(f".st-key-{key}").get_by_role("button").click()
    return Path(info.value.path())


def test_cold_deep_link_keeps_its_settings(page, fresh_server, shot):
    """The first request to a new server: the demo pair, the map metric and the module from the link."""
    url = fresh_server()
    page.goto(f"{url}/Adapter_audit?tab=Full+fine-tune&ft_demo=true&ft_map=energy_rank_0.99"
              "&ft_module=model.layers.1.mlp.down_proj&ft_extract_by=rank&ft_rank=8")
    wait_for_app(page)
    page.get_by_text("a LoRA would need rank").wait_for(timeout=60_000)
    assert_no_exception(page)
    assert page.get_by_role("tab", name=TAB, exact=True).get_attribute("aria-selected") == "true"
    body = page.get_by_test_id("stMain").inner_text()
    assert "Rank map: LoRA rank for 99 % of the energy" in body
    assert "Spectrum of model.layers.1.mlp.down_proj" in body
    assert "every module at rank 8" in body
    assert page.get_by_test_id("stVegaLiteChart").count() >= 3
    shot(page, "finetune-demo")


@pytest.mark.skipif(not (SAMPLES / "finetuned").is_dir(), reason=f"samples not at {SAMPLES}")
def test_real_pair_uploads_and_downloads(page, app_url, shot):
    """Uploaded fine-tune and base: the table's ranks, the JSON (the CLI's modules) and the
    extracted LoRA (PEFT files whose update is the float64 truncation) from the browser."""
    page.goto(f"{app_url}/Adapter_audit?tab=Full+fine-tune")
    wait_for_app(page)
    uploader(page, "audit_ft_upload").set_input_files(files=files_of(SAMPLES / "finetuned"))
    wait_for_app(page)
    uploader(page, "audit_ft_upload_base").set_input_files(files=files_of(SAMPLES / "base"))
    page.get_by_text("23 weight matrices in common").wait_for(timeout=90_000)
    wait_for_app(page)
    assert_no_exception(page)
    assert error_sentences(page) == []
    shot(page, "finetune-real")
    truth = json.loads((SAMPLES / "finetuned.truth.json").read_text())["modules"]
    doc = json.loads(download(page, "audit_ft_download_json").read_text())
    assert len(doc["modules"]) == 23
    for m in doc["modules"]:
        s = np.array(truth[m["name"]]["singular_values"])
        assert np.max(np.abs(np.array(m["singular_values"])[:s.size] - s)) <= 1e-6 * s[0]
        assert m["energy_rank"]["0.9"] == truth[m["name"]]["energy_rank_90"]
    csv_lines = download(page, "audit_ft_download_csv").read_text().strip().splitlines()
    assert len(csv_lines) == 24 and csv_lines[0].startswith("name,layer,module_type,kind")
    # The extraction at the default (90 % of each module's energy), built on click.
    with zipfile.ZipFile(download(page, "audit_ft_download_lora")) as z:
        config = json.loads(z.read("extracted_lora/adapter_config.json"))
        tensors = load_file_bytes(z.read("extracted_lora/adapter_model.safetensors"))
    ft = load_file(str(SAMPLES / "finetuned" / "model.safetensors"))
    base = load_file(str(SAMPLES / "base" / "model.safetensors"))
    for name in ("model.layers.1.mlp.up_proj", "lm_head"):
        k = truth[name]["energy_rank_90"]
        assert config["rank_pattern"].get(name.replace(".", "\\."), config["r"]) == k
        B = tensors[f"base_model.model.{name}.lora_B.weight"].astype(np.float64)
        A = tensors[f"base_model.model.{name}.lora_A.weight"].astype(np.float64)
        dW = ft[name + ".weight"].astype(np.float64) - base[name + ".weight"].astype(np.float64)
        u, s, vt = np.linalg.svd(dW, full_matrices=False)
        assert np.max(np.abs(B @ A - (u[:, :k] * s[:k]) @ vt[:k])) <= 1e-6 * s[0]


def load_file_bytes(data: bytes) -> dict:
    from safetensors.numpy import load

    return load(data)


def slow_pair(modules: int = 6, d: int = 1024) -> tuple[bytes, bytes]:
    """A base and a fine-tune whose updates are Gaussian (full rank, flat spectrum): each module
    needs a dense SVD to find its energy ranks, about a second or two."""
    rng = np.random.default_rng(0)
    base = {f"model.layers.{i}.mlp.down_proj.weight": rng.standard_normal((d, d)).astype(np.float32)
            for i in range(modules)}
    ft = {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in base.items()}
    return save(ft), save(base)


def test_stop_keeps_the_modules_finished(page, tmp_path, shot):
    """Above the ask threshold: Run, Stop after two modules, the finished ones stay; Run resumes."""
    server = AppServer(tmp_path / "streamlit.log", env={"LORARANK_ASK_SECONDS": "0"})
    try:
        ft, base = slow_pair()
        page.goto(f"{server.url}/Adapter_audit?tab=Full+fine-tune")
        wait_for_app(page)
        uploader(page, "audit_ft_upload").set_input_files(files=[
            {"name": "model.safetensors", "mimeType": "application/octet-stream", "buffer": ft}])
        wait_for_app(page)
        uploader(page, "audit_ft_upload_base").set_input_files(files=[
            {"name": "model.safetensors", "mimeType": "application/octet-stream", "buffer": base}])
        page.get_by_text("press Run to start it").wait_for(timeout=60_000)
        page.locator(".st-key-audit_ft_gate_run").get_by_role("button").click()
        page.get_by_text("Measured 2 of 6 weight matrices").wait_for(timeout=120_000)
        page.locator(".st-key-audit_ft_gate_stop").get_by_role("button").click()
        page.get_by_text("measured before the stop").wait_for(timeout=120_000)
        wait_for_app(page)
        assert_no_exception(page)
        body = page.get_by_test_id("stMain").inner_text()
        shot(page, "finetune-stopped")
        assert "Stopped." in body and "press Run to start it" in body
        done = int(body.split("Showing the ")[1].split(" of 6 modules")[0])
        assert 2 <= done < 6
        assert f"(stopped after {done} of 6 modules)" in body
        page.locator(".st-key-audit_ft_gate_run").get_by_role("button").click()
        page.get_by_text("6 weight matrices in common").wait_for(timeout=120_000)
        wait_for_app(page)
        body = page.get_by_test_id("stMain").inner_text()
        assert "stopped after" not in body and "6 of 6" not in body
    finally:
        server.stop()
