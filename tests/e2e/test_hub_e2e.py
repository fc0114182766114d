"""Hub adapters on the Adapter audit page: a cold deep link ``?hf=...`` in headless Chromium,
against a real server whose HF_ENDPOINT is the local Hub stand-in (tests/hubserver.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from apphelpers import assert_no_exception, error_sentences, wait_for_any, wait_for_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hubserver import SAMPLES, FakeHub, point_server_at  # noqa: E402

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not (SAMPLES / "peft_llama_r8").is_dir(),
                                 reason="../shared/samples not present")]


@pytest.fixture
def hub_server(fresh_server, monkeypatch, tmp_path):
    """A fresh app server that talks to a fresh fake Hub (loopback only)."""
    with FakeHub() as hub:
        point_server_at(hub.url, monkeypatch, tmp_path / "hf-cache", LORARANK_HF_TIMEOUT="10")
        yield hub, fresh_server()


def wait_for_result(page) -> None:
    wait_for_any(page, "stDataFrame", "stAlertContentError")


def test_cold_deep_link_shows_the_audit_and_pins_the_commit(page, hub_server, shot):
    hub, url = hub_server
    sha = hub.repos["lorarank-test/peft-llama-r8"].sha
    page.goto(f"{url}/Adapter_audit?hf=lorarank-test/peft-llama-r8&rule=sv_ratio&sv_ratio=4")
    wait_for_result(page)
    shot(page, "hub_deep_link")
    assert_no_exception(page)
    assert error_sentences(page) == []
    query = parse_qs(urlsplit(page.url).query)
    assert query["hf"] == ["lorarank-test/peft-llama-r8"]
    assert query["revision"] == [sha]  # pinned to the resolved commit
    assert query["rule"] == ["sv_ratio"]
    text = page.get_by_test_id("stMain").inner_text()
    assert f"commit {sha[:12]}" in text.replace("`", "")
    assert "peft" in text and "14 (ranks 8)" in text
    assert page.get_by_test_id("stDataFrame").count() >= 1
    # Only the adapter's two files were fetched, from the resolved commit.
    resolved = {p.rsplit("/", 1)[-1] for _, p in hub.requests if "/resolve/" in p}
    assert resolved == {"adapter_model.safetensors", "adapter_config.json"}

    # The pinned link, opened again, shows the same audit without asking the Hub for files.
    hub.requests.clear()
    page.goto(page.url)
    wait_for_result(page)
    assert error_sentences(page) == [] and f"commit {sha[:12]}" in page.get_by_test_id("stMain").inner_text().replace("`", "")


BAD_LINKS = [
    ("hf=lorarank-test/nope", "hf://lorarank-test/nope was not found"),
    ("hf=lorarank-test/a-whole-model", "holds no LoRA adapter"),
    ("hf=lorarank-test/huge-adapter", "50 GB, over this server's limit of"),  # the page's cap: the upload limit
    ("hf=lorarank-test/peft-llama-r8&subfolder=missing", "has no such folder"),
    ("hf=lorarank-test/stalled-adapter", "sent nothing for 10 s"),
]


def test_bad_hub_links_give_one_sentence(page, hub_server):
    """Wrong repo, a model repo, a 50 GB weights file, a missing folder, a stalled server."""
    hub, url = hub_server
    for query, words in BAD_LINKS:
        page.goto(f"{url}/Adapter_audit?{query}")
        wait_for_result(page)
        assert_no_exception(page)
        errors = error_sentences(page)
        assert len(errors) == 1 and words in errors[0], (query, errors)
        assert "\n" not in errors[0]


def test_typed_repo_loads_and_updates_the_link(page, hub_server):
    hub, url = hub_server
    page.goto(f"{url}/Adapter_audit")
    wait_for_app(page)
    page.locator(".st-key-audit_hub_repo input").fill("lorarank-test/adapters-in-folders")
    page.locator(".st-key-audit_hub_subfolder input").fill("gpt2-r4")
    page.get_by_test_id("stBaseButton-secondaryFormSubmit").first.click()
    wait_for_result(page)
    query = parse_qs(urlsplit(page.url).query)
    assert query["hf"] == ["lorarank-test/adapters-in-folders"]
    assert query["subfolder"] == ["gpt2-r4"]
    assert query["revision"] == [hub.repos["lorarank-test/adapters-in-folders"].sha]
    assert error_sentences(page) == []


RUN = SAMPLES / "checkpoints" / "run"


@pytest.mark.skipif(not RUN.is_dir(), reason=f"checkpoint run not found at {RUN}")
def test_cold_deep_link_to_a_run_of_hub_revisions(page, hub_server, shot):
    """A cold link naming six revisions out of order: ordered by step, each revision pinned to
    its commit in the link, and the JSON download's sigmas equal dense float64 SVDs."""
    import json

    import numpy as np
    from safetensors.numpy import load_file

    hub, url = hub_server
    tags = ["step-45", "step-15", "step-90", "step-30", "step-60", "step-75"]
    page.goto(f"{url}/Adapter_audit?series_hf=lorarank-test/run-revisions"
              f"&series_revisions={','.join(tags)}&series_top=2")
    page.get_by_text("Over 6 checkpoints (steps 15 to 90)").wait_for(timeout=120_000)
    wait_for_app(page)
    shot(page, "hub_series")
    assert_no_exception(page)
    assert error_sentences(page) == []
    by_tag = {snap.refs[0]: snap.sha for snap in hub.repos["lorarank-test/run-revisions"]}
    query = parse_qs(urlsplit(page.url).query)
    assert query["series_commits"] == [",".join(by_tag[t] for t in tags)]
    assert query["series_revisions"] == [",".join(tags)] and query["series_top"] == ["2"]
    with page.expect_download() as info:
        page.locator(".st-key-audit_series_download_json").get_by_role("button").click()
    doc = json.loads(Path(info.value.path()).read_text())
    assert doc["series"]["labels"] == [f"step-{s}" for s in (15, 30, 45, 60, 75, 90)]
    for i, step in enumerate((15, 30, 45, 60, 75, 90)):
        folder = RUN / f"checkpoint-{step}"
        config = json.loads((folder / "adapter_config.json").read_text())
        tensors = load_file(folder / "adapter_model.safetensors")
        for m in doc["series"]["modules"]:
            a = tensors[m["name"] + ".lora_A.weight"].astype(np.float64)
            b = tensors[m["name"] + ".lora_B.weight"].astype(np.float64)
            dense = np.linalg.svd(config["lora_alpha"] / config["r"] * b @ a, compute_uv=False)
            np.testing.assert_allclose(m["singular_values"][i], dense[: len(m["singular_values"][i])],
                                       rtol=1e-9, atol=1e-12)
