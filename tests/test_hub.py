"""lorarank.hub with the real huggingface_hub client against tests/hubserver.py (loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubfixtures import client, endpoint, hub  # noqa: E402,F401  (fixtures)
from hubserver import SAMPLES, FakeHub, HubRepo, point_client_at  # noqa: E402

from lorarank.adapters import load_adapter  # noqa: E402
from lorarank.audit import audit_adapter  # noqa: E402
from lorarank.errors import ConfigError, HubError  # noqa: E402
from lorarank.hub import (HubRef, HubSettings, fetch_adapter_files, load_hub_adapter,  # noqa: E402
                          parse_hub_uri, prune_cache)
from ui.common import md_plain  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LLAMA = SAMPLES / "peft_llama_r8"
needs_samples = pytest.mark.skipif(not LLAMA.is_dir(), reason="../shared/samples not present")
pytestmark = needs_samples


@pytest.fixture
def settings(tmp_path):
    return HubSettings(cache_dir=tmp_path / "cache", timeout=3.0)


# ----------------------------------------------------------------------------- references
@pytest.mark.parametrize("text, ref", [
    ("hf://owner/name", HubRef("owner/name")),
    ("owner/name", HubRef("owner/name")),
    ("hf://owner/name@v1.0", HubRef("owner/name", "v1.0")),
    ("hf://owner/name@main/sub/dir", HubRef("owner/name", "main", "sub/dir")),
    ("hf://owner/name/checkpoint-500", HubRef("owner/name", None, "checkpoint-500")),
])
def test_parse_hub_uri(text, ref):
    assert parse_hub_uri(text) == ref
    assert parse_hub_uri(ref.uri) == ref


@pytest.mark.parametrize("text", [
    "hf://name-only", "hf://user:hf_secret@owner/name", "hf://owner/name?token=x",
    "hf://owner/../name", "hf://owner/name/../../etc", "hf://owner/name/sub@main", "hf://-x/y",
    "hf://owner/na me",
])
def test_parse_hub_uri_refuses_bad_text(text):
    with pytest.raises(ConfigError) as info:
        parse_hub_uri(text)
    assert "\n" not in str(info.value)


def test_settings_from_env():
    s = HubSettings.from_env({"LORARANK_HF_MAX_BYTES": "1000", "LORARANK_HF_TIMEOUT": "2.5"})
    assert (s.max_bytes, s.timeout, s.cache_bytes) == (1000, 2.5, HubSettings().cache_bytes)
    with pytest.raises(ConfigError, match="LORARANK_HF_MAX_BYTES"):
        HubSettings.from_env({"LORARANK_HF_MAX_BYTES": "lots"})
    with pytest.raises(ConfigError, match="LORARANK_HF_TIMEOUT"):
        HubSettings.from_env({"LORARANK_HF_TIMEOUT": "-1"})


# ---------------------------------------------------------------------------------- fetch
def test_fetch_downloads_only_the_adapter_and_pins_the_commit(hub, settings):
    seen = []
    got = fetch_adapter_files("hf://lorarank-test/peft-llama-r8", settings=settings,
                              progress=lambda done, total: seen.append((done, total)))
    sha = hub.repos["lorarank-test/peft-llama-r8"].sha
    assert got.commit == sha and got.pinned.uri == f"hf://lorarank-test/peft-llama-r8@{sha}"
    assert [name for name, _ in got.files] == ["adapter_model.safetensors", "adapter_config.json"]
    for name, path in got.files:
        assert path.read_bytes() == (LLAMA / name).read_bytes()
        assert str(path).startswith(str(settings.cache_dir))
    assert seen[-1] == (got.total_bytes, got.total_bytes)
    # One listing, then the two files of the resolved commit, and nothing else.
    paths = [p for _, p in hub.requests if not p.startswith("/api/agent")]
    assert paths[0] == "/api/models/lorarank-test/peft-llama-r8"
    assert all(sha in p or p.startswith("/cdn/") for p in paths[1:])
    assert {p.rsplit("/", 1)[-1] for p in paths if "/resolve/" in p} == {
        "adapter_model.safetensors", "adapter_config.json"}

    # Pinned and cached: one listing, no file request.
    hub.requests.clear()
    again = fetch_adapter_files(got.pinned, settings=settings)
    assert again.files == got.files
    assert [p for _, p in hub.requests] == [f"/api/models/lorarank-test/peft-llama-r8/revision/{sha}"]


def test_hub_audit_equals_the_local_folder(settings):
    adapter, fetched = load_hub_adapter("hf://lorarank-test/peft-llama-r8", settings=settings)
    hub_doc = audit_adapter(adapter).to_dict()
    local_doc = audit_adapter(load_adapter(LLAMA)).to_dict()
    assert hub_doc["summary"].pop("source") == fetched.pinned.uri
    local_doc["summary"].pop("source")
    assert hub_doc == local_doc


def test_subfolder(settings):
    adapter, fetched = load_hub_adapter("hf://lorarank-test/adapters-in-folders/gpt2-r4",
                                        settings=settings)
    assert fetched.weights.parent.name == "gpt2-r4"
    local = audit_adapter(load_adapter(SAMPLES / "peft_gpt2_r4")).to_dict()
    assert audit_adapter(adapter).to_dict()["modules"] == local["modules"]


def _error(uri, settings, **kwargs) -> str:
    with pytest.raises(HubError) as info:
        fetch_adapter_files(uri, settings=settings, **kwargs)
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def _no_weights_fetched(hub) -> bool:
    return not any(p.startswith("/cdn/") for _, p in hub.requests)


def test_errors_are_one_sentence_naming_the_repo(hub, settings):
    text = _error("hf://lorarank-test/nope", settings)
    assert "hf://lorarank-test/nope" in text and "not found" in text and "HF_TOKEN" in text
    text = _error("hf://lorarank-test/peft-llama-r8@v9", settings)
    assert "no revision 'v9'" in text
    text = _error("hf://lorarank-test/adapters-in-folders/nope", settings)
    assert "no such folder" in text
    text = _error("hf://lorarank-test/config-only", settings)
    assert "no .safetensors weights" in text


def test_model_repo_is_refused_before_any_weights(hub, settings):
    text = _error("hf://lorarank-test/a-whole-model", settings)
    assert "holds no LoRA adapter" in text and "not a model repo" in text
    assert _no_weights_fetched(hub)
    text = _error("hf://lorarank-test/adapters-in-folders", settings)
    assert "gpt2-r4, llama-r8" in text  # points at the adapters it does hold


def test_declared_50_gb_file_is_refused_before_download(hub, settings):
    text = _error("hf://lorarank-test/huge-adapter", settings)
    assert "50 GB" in text and "2 GB" in text and "LORARANK_HF_MAX_BYTES" in text
    assert _no_weights_fetched(hub)
    small = HubSettings(cache_dir=settings.cache_dir, max_bytes=100_000, timeout=3.0)
    text = _error("hf://lorarank-test/peft-llama-r8", small)
    assert "153 kB" in text and "100 kB" in text
    assert _no_weights_fetched(hub)


def test_a_server_sending_more_than_it_announced_is_stopped(settings):
    text = _error("hf://lorarank-test/understated-adapter", settings)
    assert "grew past the announced" in text or "another size than the Hub announced" in text


def test_private_repo_needs_the_token(hub, settings, monkeypatch):
    text = _error("hf://lorarank-test/private-adapter", settings)
    assert "private" in text
    got = fetch_adapter_files("hf://lorarank-test/private-adapter", settings=settings,
                              token="hf_test_reader")
    assert got.weights.read_bytes() == (LLAMA / "adapter_model.safetensors").read_bytes()
    monkeypatch.setenv("HF_TOKEN", "hf_test_reader")
    fetch_adapter_files("hf://lorarank-test/private-adapter", settings=settings)


def test_gated_repo(settings):
    text = _error("hf://lorarank-test/gated-adapter", settings)
    assert "gated" in text and "accept its conditions" in text


def test_stalled_download_times_out(hub, settings):
    started = time.monotonic()
    text = _error("hf://lorarank-test/stalled-adapter", settings)
    elapsed = time.monotonic() - started
    assert "sent nothing for 3 s" in text
    assert elapsed < 15


def test_unreachable_hub(settings, monkeypatch):
    point_client_at("http://127.0.0.1:9", monkeypatch)  # discard port: refused
    text = _error("hf://lorarank-test/peft-llama-r8", settings)
    assert "cannot be reached" in text


def test_offline_mode(settings, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    text = _error("hf://lorarank-test/peft-llama-r8", settings)
    assert "offline" in text


def test_cache_stays_within_its_budget(hub, tmp_path, client):
    budget = 200_000  # room for one of the two ~150 kB adapters
    s = HubSettings(cache_dir=tmp_path / "cache", cache_bytes=budget, timeout=5.0)
    first = fetch_adapter_files("hf://lorarank-test/peft-llama-r8", settings=s)
    time.sleep(1.1)
    second = fetch_adapter_files("hf://lorarank-test/adapters-in-folders/llama-r8", settings=s)
    assert second.weights.is_file()
    assert not first.weights.exists()  # the older revision left the cache
    info = client.scan_cache_dir(s.cache_dir)
    assert info.size_on_disk <= budget
    assert prune_cache(s.cache_dir, max_bytes=0) > 0


# ------------------------------------------------------------------------------------ CLI
def _cli(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "lorarank", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_audit_hf_prints_the_local_folders_json(hub, tmp_path):
    env = {"HF_ENDPOINT": hub.url, "LORARANK_HF_CACHE": str(tmp_path / "cache")}
    remote = _cli("audit", "hf://lorarank-test/peft-llama-r8", "--json", env_extra=env)
    local = _cli("audit", str(LLAMA), "--json", env_extra=env)
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    a, b = json.loads(remote.stdout), json.loads(local.stdout)
    sha = hub.repos["lorarank-test/peft-llama-r8"].sha
    assert a["summary"].pop("source") == f"hf://lorarank-test/peft-llama-r8@{sha}"
    assert b["summary"].pop("source") == "peft_llama_r8"
    assert a == b
    # Every command that takes a PATH takes hf:// too.
    out = tmp_path / "small.safetensors"
    resized = _cli("resize", "hf://lorarank-test/peft-llama-r8", "--rank", "2", "-o", str(out),
                   env_extra=env)
    assert resized.returncode == 0, resized.stderr
    compared = _cli("compare", f"hf://lorarank-test/peft-llama-r8@{sha}",
                    "hf://lorarank-test/adapters-in-folders/llama-r8", "--json", env_extra=env)
    assert compared.returncode == 0, compared.stderr
    assert all(abs(m["top_overlap"] - 1) < 1e-9 for m in json.loads(compared.stdout)["modules"])


@pytest.mark.parametrize("uri, words", [
    ("hf://lorarank-test/nope", "not found"),
    ("hf://lorarank-test/a-whole-model", "holds no LoRA adapter"),
    ("hf://lorarank-test/huge-adapter", "over this server's limit"),
    ("hf://lorarank-test/stalled-adapter", "sent nothing for 2 s"),
    ("hf://x:hf_secret@owner/name", "a token never goes in the link"),
])
def test_cli_hub_errors_are_one_line(hub, tmp_path, uri, words):
    env = {"HF_ENDPOINT": hub.url, "LORARANK_HF_CACHE": str(tmp_path / "cache"),
           "LORARANK_HF_TIMEOUT": "2" if "stalled" in uri else "20"}
    result = _cli("audit", uri, env_extra=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorarank: error: ") and words in lines[0]


def test_page_cap_is_the_upload_limit(monkeypatch):
    """The page holds Hub files in memory like an upload: its byte cap is server.maxUploadSize
    unless LORARANK_HF_MAX_BYTES is set explicitly (then that, even above the upload limit)."""
    from streamlit import config

    from ui.hub import hub_settings

    monkeypatch.delenv("LORARANK_HF_MAX_BYTES", raising=False)
    before = config.get_option("server.maxUploadSize")
    try:
        config.set_option("server.maxUploadSize", 3)
        assert hub_settings().max_bytes == 3 * 2**20
        monkeypatch.setenv("LORARANK_HF_MAX_BYTES", "5000000000")
        assert hub_settings().max_bytes == 5_000_000_000
    finally:
        config.set_option("server.maxUploadSize", before)


def test_page_refuses_a_hub_adapter_over_the_upload_limit(hub, tmp_path, monkeypatch):
    """A link to an adapter larger than the upload limit is one sentence naming the limit."""
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("LORARANK_HF_MAX_BYTES", raising=False)
    monkeypatch.setenv("LORARANK_HF_CACHE", str(tmp_path / "cache"))
    before = config.get_option("server.maxUploadSize")
    try:
        hub.repos["lorarank-test/five-mb-adapter"] = HubRepo(
            files={"adapter_config.json": (LLAMA / "adapter_config.json").read_bytes()},
            declared={"adapter_model.safetensors": 5_000_000})  # under the CLI's 2 GB
        config.set_option("server.maxUploadSize", 1)  # MB
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
        at.switch_page("pages/3_Adapter_audit.py")
        at.query_params["hf"] = "lorarank-test/five-mb-adapter"
        at.run()
    finally:
        config.set_option("server.maxUploadSize", before)
    errors = " ".join(md_plain(e.value) for e in at.error)  # the page escapes the Hub's text
    assert "adapter_model.safetensors is 5 MB, over this server's limit of 1.05 MB per request" in errors, errors
    assert not at.exception
