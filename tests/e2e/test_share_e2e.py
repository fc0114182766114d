"""Sharing in headless Chromium: the audit page's JSON download is the CLI's --json bytes; the
"Download report" files of the audit, sweep and stability pages open offline with every chart;
with [auth] in the secrets, every page asks for sign-in first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from apphelpers import REPO, adapter_uploader, assert_no_exception, wait_for_app
from test_report_e2e import check_every_chart, hover_tooltip, open_offline

pytestmark = pytest.mark.e2e
SAMPLES = REPO.parent / "shared" / "samples"
if not SAMPLES.is_dir():
    SAMPLES = Path("/work/shared/samples")
needs_samples = pytest.mark.skipif(not (SAMPLES / "peft_llama_r8").is_dir(),
                                   reason="samples not present")


def download(page, key: str, tmp_path: Path) -> Path:
    """Click the download button with widget key ``key``; the saved file's path."""
    with page.expect_download(timeout=120_000) as info:
        page.locator(f".st-key-{key} button").first.click()
    out = tmp_path / info.value.suggested_filename
    info.value.save_as(out)
    return out


def wait_for_table(page) -> None:
    page.wait_for_selector('[data-testid="stDataFrame"], [data-testid="stAlertContentError"]',
                           timeout=90_000)
    wait_for_app(page)


@needs_samples
def test_audit_downloads(page, context, app_url, tmp_path, shot):
    folder = SAMPLES / "peft_llama_r8"
    page.goto(f"{app_url}/Adapter_audit")
    wait_for_app(page)
    files = [{"name": p.name, "mimeType": "application/octet-stream", "buffer": p.read_bytes()}
             for p in sorted(folder.iterdir())]
    adapter_uploader(page).set_input_files(files=files)
    wait_for_table(page)
    assert_no_exception(page)

    # The JSON download is what the CLI prints for the same two files, byte for byte.
    got = download(page, "audit_download_json", tmp_path).read_bytes()
    cli = subprocess.run([sys.executable, "-m", "lorarank", "audit",
                          str(folder / "adapter_model.safetensors"),
                          str(folder / "adapter_config.json"), "--json"],
                         cwd=REPO, capture_output=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert got == cli.stdout

    report = download(page, "audit_report_download", tmp_path)
    offline, refused = open_offline(context, report)
    check_every_chart(offline, 3)
    shot(offline, "audit_page_report")
    assert report.name == "lorarank-audit-adapter_model.html"
    assert "adapter_model.safetensors" in offline.locator("h1 + p").inner_text()
    assert "model.layers" in hover_tooltip(offline, "#chart-0 svg .mark-rect path")
    assert refused == []
    offline.close()


@pytest.mark.parametrize("path, key, charts", [
    ("Rank_sweep", "sweep_report_download", 2),
    ("Alpha_r_stability", "stability_report_download", 3),
])
def test_page_reports_open_offline(page, context, app_url, tmp_path, path, key, charts):
    page.goto(f"{app_url}/{path}?steps=50")
    wait_for_app(page)
    page.locator(f".st-key-{key} button").first.wait_for(timeout=90_000)
    assert_no_exception(page)
    report = download(page, key, tmp_path)
    offline, refused = open_offline(context, report)
    check_every_chart(offline, charts)
    assert offline.locator("table tbody tr").count() > 0
    assert refused == []
    offline.close()


def test_sign_in_gate_in_the_browser(page, fresh_server, monkeypatch, tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(
        '[auth]\nredirect_uri = "http://127.0.0.1:8501/oauth2callback"\n'
        'cookie_secret = "a-test-cookie-secret-of-some-length"\nclient_id = "lorarank-test"\n'
        'client_secret = "not-a-real-secret"\n'
        'server_metadata_url = "http://127.0.0.1:9/.well-known/openid-configuration"\n')
    monkeypatch.setenv("STREAMLIT_SECRETS_FILES", str(secrets))
    url = fresh_server()
    for path in ("", "/Rank_sweep?true_rank=8", "/Adapter_audit?demo=true"):
        page.goto(f"{url}{path}")
        wait_for_app(page)
        assert_no_exception(page)
        main = page.get_by_test_id("stMain")
        assert "Sign in to continue" in main.inner_text()
        assert page.get_by_role("button", name="Sign in").count() == 1
        assert main.get_by_test_id("stNumberInput").count() == 0
        assert main.get_by_test_id("stDataFrame").count() == 0
        assert main.get_by_test_id("stFileUploader").count() == 0


def _health_paths(page, url: str) -> list[str]:
    """Open ``url`` and wait for its run; the paths of the health probes the page made."""
    from urllib.parse import urlparse

    asked: list[str] = []
    page.on("request", lambda request: asked.append(urlparse(request.url).path))
    page.goto(url)
    wait_for_app(page)
    assert_no_exception(page)
    return [path for path in asked if path.endswith("/_stcore/health")]


def test_a_page_link_probes_the_app_address_first(page, app_url):
    """A link to a page (``/Adapter_audit``) asks the app's own address whether the server is
    up: Streamlit's front end alone asked ``/Adapter_audit/_stcore/health`` first, got a 404 and
    waited 100 ms before the right probe (ui.serving.DeepLinkBase names the base address)."""
    probes = _health_paths(page, f"{app_url}/Adapter_audit")
    assert probes == ["/_stcore/health"]
    page.get_by_test_id("stFileUploaderDropzone").wait_for()


def test_a_page_link_under_a_path_prefix(page, tmp_path):
    """Served under ``server.baseUrlPath``, a copied link (``/lr/Adapter_audit?example=...``)
    probes ``/lr/_stcore/health`` at once, opens the example it names and keeps its address."""
    from apphelpers import AppServer

    server = AppServer(tmp_path / "prefixed.log", base_url_path="lr")
    try:
        probes = _health_paths(page, f"{server.url}/lr/Adapter_audit?example=PEFT+DoRA")
        assert probes == ["/lr/_stcore/health"]
        page.get_by_text("Showing the real example").wait_for()
        assert page.evaluate("new URLSearchParams(location.search).get('example')") == "PEFT DoRA"
        assert page.evaluate("location.pathname") == "/lr/Adapter_audit"
    finally:
        server.stop()
