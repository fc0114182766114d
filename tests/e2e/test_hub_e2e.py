"""Hub adapters on the Adapter audit page: a cold deep link ``?hf=...`` in headless Chromium,
against a real server whose HF_ENDPOINT is the local Hub stand-in (tests/hubserver.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from apphelpers import assert_no_exception, error_sentences, wait_for_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hubserver import SAMPLES, FakeHub  # noqa: E402

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not (SAMPLES / "peft_llama_r8").is_dir(),
                                 reason="../shared/samples not present")]


@pytest.fixture
def hub_server(fresh_server, monkeypatch, tmp_path):
    """A fresh app server that talks to a fresh fake Hub (loopback only)."""
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("LORARANK_HF_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("LORARANK_HF_TIMEOUT", "10")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield hub, fresh_server()


def wait_for_result(page) -> None:
    page.wait_for_selector('[data-testid="stDataFrame"], [data-testid="stAlertContentError"]',
                           timeout=90_000)
    wait_for_app(page)


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
    ("hf=lorarank-test/huge-adapter", "50 GB, over this server's limit of 2 GB"),
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
