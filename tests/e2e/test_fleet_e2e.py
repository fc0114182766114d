"""The Fleet page in headless Chromium against a real server: a cold deep link with a Hub query
and a cap (the local Hub stand-in, tests/hubserver.py), the slider moving the answer and the link,
a zip of adapter folders dropped in, and the CSV download being the CLI's table."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from apphelpers import assert_no_exception, error_sentences, open_tab, uploader, wait_for_any, wait_for_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hubserver import SAMPLES, FakeHub, HubRepo, point_server_at  # noqa: E402

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not (SAMPLES / "peft_llama_r8").is_dir(), reason="../shared/samples not present")]
CASES = ("peft_llama_r8", "peft_llama_r32_rslora", "peft_gpt2_r4")


@pytest.fixture
def hub_server(fresh_server, monkeypatch, tmp_path):
    repos = {f"team/{c.replace('_', '-')}": HubRepo.from_folder(SAMPLES / c) for c in CASES}
    repos["team/a-model"] = HubRepo(files={"config.json": b"{}"}, tags=("transformers",))
    with FakeHub(repos) as hub:
        point_server_at(hub.url, monkeypatch, tmp_path / "hf-cache")
        yield hub, fresh_server()


def answer(page) -> str:
    wait_for_any(page, "stAlertContentSuccess", "stAlertContentError")
    return page.get_by_test_id("stAlertContentSuccess").first.inner_text()


def test_cold_deep_link_with_a_query_and_a_cap(page, hub_server, shot):
    hub, url = hub_server
    page.goto(f"{url}/Fleet?q=hf%3A%2F%2Fteam%2F*&cap=8")
    text = answer(page)
    shot(page, "fleet_deep_link")
    assert_no_exception(page)
    assert error_sentences(page) == []
    assert "At cap 8, 2 of 3 adapters fit as they are and 1 must be shrunk" in text
    query = parse_qs(urlsplit(page.url).query)
    assert query["q"] == ["hf://team/*"] and query["cap"] == ["8"]
    assert page.get_by_test_id("stDataFrame").count() == 1
    # the slider moves the answer and the link
    slider = page.get_by_test_id("stSlider").get_by_role("slider")
    slider.focus()
    shown = page.get_by_test_id("stSliderThumbValue")
    for _ in range(80):                      # one step per key, read back each time
        value = int(shown.inner_text())
        if value == 32:
            break
        page.keyboard.press("ArrowRight" if value < 32 else "ArrowLeft")
    assert int(shown.inner_text()) == 32
    page.wait_for_function("() => new URLSearchParams(location.search).get('cap') === '32'", timeout=60_000)
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stAlertContentSuccess").first).to_contain_text(
        "At cap 32, 3 of 3 adapters fit as they are", timeout=60_000)   # the rerun's answer
    wait_for_app(page)
    open_tab(page, "Cap")
    assert page.locator('[data-testid="stVegaLiteChart"], .vega-embed').count() >= 1
    shot(page, "fleet_cap_tab")
    assert_no_exception(page)


def test_zip_upload_and_csv_download(page, app_url, shot):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for case in CASES:
            for f in sorted((SAMPLES / case).iterdir()):
                z.write(f, f"runs/{case}/{f.name}")
    page.goto(f"{app_url}/Fleet?cap=16")
    wait_for_app(page)
    uploader(page, "fleet_upload").set_input_files(files=[{"name": "runs.zip", "mimeType": "application/zip",
                                                           "buffer": buf.getvalue()}])
    text = answer(page)
    assert "At cap 16, 2 of 3 adapters fit as they are and 1 must be shrunk" in text
    open_tab(page, "Downloads")
    with page.expect_download() as got:
        page.get_by_role("button", name="Download CSV").click()
    csv = Path(got.value.path()).read_text()
    lines = csv.strip().splitlines()
    assert lines[0].startswith("source,revision,ok,error,format") and len(lines) == 4
    assert "runs/peft_llama_r32_rslora" in csv
    shot(page, "fleet_upload")
    assert_no_exception(page)
