"""The Fleet page under AppTest: uploads (a zip of adapter folders and loose files), Hub queries
through the local Hub stand-in, the cap in the link, the planner's sentence, downloads that are
the CLI's document, the shared-server limits."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from streamlit.testing.v1 import AppTest

from hubserver import SAMPLES, FakeHub, HubRepo, point_client_at, wide_adapter
from lorarank.fleet import FleetOptions, expand_sources, plan_caps, run_fleet
from ui import fleet as fl
from ui.common import md_plain
import testkit

PAGE = "pages/4_Fleet.py"
needs_samples = pytest.mark.skipif(not (SAMPLES / "peft_llama_r8").is_dir(), reason="../shared/samples not present")
CASES = ("peft_llama_r8", "peft_llama_r32_rslora", "peft_gpt2_r4")


def open_page(query: dict | None = None) -> AppTest:
    return testkit.open_page(PAGE, query)


def fleet_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for case in CASES:
            for f in sorted((SAMPLES / case).iterdir()):
                z.write(f, f"runs/{case}/{f.name}")
    return buf.getvalue()


def texts(at: AppTest) -> str:
    return " ".join(str(e.value) for kind in ("success", "info", "error", "caption", "markdown")
                    for e in at.get(kind))


def test_empty_page_says_what_to_do():
    at = open_page()
    assert not at.exception
    assert "Drop adapter files" in texts(at)


@needs_samples
def test_uploaded_zip_gives_the_cli_rows_and_plan():
    at = open_page({"cap": "16"})
    at.file_uploader(key=fl.UPLOAD_KEY).set_value([
        ("fleet.zip", fleet_zip(), "application/zip"),
        ("loha.safetensors", (SAMPLES / "families" / "lycoris_loha.safetensors").read_bytes(),
         "application/octet-stream"),
        ("broken.safetensors", b"not a file", "application/octet-stream")])
    at.run()
    assert not at.exception, at.exception
    # the CLI on the same adapters
    members = expand_sources([str(SAMPLES / c) for c in CASES]).members
    local = run_fleet(members, FleetOptions(), workers=1).rows
    plan = plan_caps(local, cap=16)
    assert plan.fit and plan.shrink
    sentence = md_plain(at.success[0].value)
    assert sentence.startswith("At cap 16, 3 of 4 adapters fit as they are and 1 must be shrunk")
    frame = at.dataframe[0].value
    assert list(frame["source"]) == ["loha.safetensors", "broken.safetensors", "runs/peft_gpt2_r4",
                                     "runs/peft_llama_r32_rslora", "runs/peft_llama_r8"]
    by = frame.set_index("source")
    assert by.loc["runs/peft_llama_r32_rslora", "energy at 16"] == pytest.approx(plan.shrink[0]["energy_kept"])
    assert not by.loc["broken.safetensors", "ok"] and "safetensors" in by.loc["broken.safetensors", "error"]
    assert bool(by.loc["runs/peft_llama_r8", "fits cap"]) is True


@needs_samples
def test_hub_query_in_the_link(monkeypatch, tmp_path):
    repos = {f"team/{c.replace('_', '-')}": HubRepo.from_folder(SAMPLES / c) for c in CASES}
    repos["team/model"] = HubRepo(files={"config.json": b"{}"}, tags=("transformers",))
    with FakeHub(repos) as hub:
        point_client_at(hub.url, monkeypatch)
        monkeypatch.setenv("LORARANK_HF_CACHE", str(tmp_path / "cache"))
        at = open_page({"q": "hf://team/*", "cap": "8", "tab": "Cap"})
        assert not at.exception, at.exception
        sentence = md_plain(at.success[0].value)
        assert sentence.startswith("At cap 8, 2 of 3 adapters fit as they are and 1 must be shrunk")
        assert "skipped" in texts(at)
        assert at.get("vega_lite_chart") or at.get("arrow_vega_lite_chart")
        at.query_params["screen"] = "headers"
        at.run()
        assert not at.exception
        assert "fit as they are" in at.success[0].value


def test_bad_hub_text_is_one_sentence():
    at = open_page({"q": "hf://?colour=red"})
    assert not at.exception
    assert any("unknown query key" in md_plain(e.value) for e in at.error)


def test_too_many_adapters_is_refused(monkeypatch):
    monkeypatch.setattr(fl, "MAX_ADAPTERS", 1)
    with pytest.raises(ValueError, match="at most 1 per run"):
        fl.members(None, "hf://a/b, hf://c/d")


def open_page_with_secrets(query: dict, secrets: dict) -> AppTest:
    return testkit.open_page(PAGE, query, secrets=secrets)


def rendered(at: AppTest) -> str:
    """Everything the page shows as text: messages, captions, tables, and the link."""
    shown = [texts(at), " ".join(str(e.value) for e in at.get("warning")),
             " ".join(f"{k}={v}" for k, v in at.query_params.items())]
    for frame in at.dataframe:
        shown.append(frame.value.to_csv())
    return " ".join(shown)


@needs_samples
@pytest.mark.parametrize("screen", ["audit", "headers"])
def test_hub_fleet_reads_private_repos_with_the_secrets_token_only(monkeypatch, tmp_path, screen):
    """The Hub listing and each member's download use the app's secrets token (as the Adapter
    audit page does); the token never reaches the link, the page or the rows."""
    token = "hf_fleet_secret_7c1d"
    repos = {"team/public-r8": HubRepo.from_folder(SAMPLES / "peft_llama_r8"),
             "team/secret-r32": HubRepo.from_folder(SAMPLES / "peft_llama_r32_rslora", private_token=token)}
    with FakeHub(repos) as hub:
        point_client_at(hub.url, monkeypatch)
        monkeypatch.setenv("LORARANK_HF_CACHE", str(tmp_path / f"cache-{screen}"))
        query = {"q": "hf://team/*, hf://team/secret-r32", "cap": "8", "screen": screen}
        # Without a token: the listing shows the public repo only; the private id is a failed row.
        at = open_page_with_secrets(query, {})
        assert not at.exception, at.exception
        by = at.dataframe[0].value.set_index("source")
        assert sorted(by.index) == ["hf://team/public-r8", "hf://team/secret-r32"]
        assert bool(by.loc["hf://team/public-r8", "ok"]) and not bool(by.loc["hf://team/secret-r32", "ok"])
        # With the secrets' token: the listing includes the private repo and it is read.
        at = open_page_with_secrets(query, {"HF_TOKEN": token})
        assert not at.exception, at.exception
        frame = at.dataframe[0].value
        by = frame.set_index("source")
        assert sorted(by.index) == ["hf://team/public-r8", "hf://team/secret-r32"]
        assert by["ok"].all(), by["error"].tolist()
        assert by.loc["hf://team/secret-r32", "max_rank"] == 32
        assert token not in rendered(at)


@needs_samples
def test_hub_fleet_downloads_keep_the_pages_byte_cap(monkeypatch, tmp_path):
    """The members' downloads follow ui.hub.hub_settings(): the per-request byte cap is at most
    the upload limit (a link cannot make the server hold more than an upload could)."""
    from streamlit import config

    repos = {"team/small": HubRepo.from_folder(SAMPLES / "peft_llama_r8"), "team/wide": HubRepo(files=wide_adapter(width=4096))}
    assert len(repos["team/wide"].files["adapter_model.safetensors"]) > 2 * 2**20
    with FakeHub(repos) as hub:
        point_client_at(hub.url, monkeypatch)
        monkeypatch.setenv("LORARANK_HF_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("LORARANK_HF_MAX_BYTES", raising=False)
        before = config.get_option("server.maxUploadSize")
        config.set_option("server.maxUploadSize", 1)
        try:
            at = open_page({"q": "hf://team/*", "cap": "8"})
        finally:
            config.set_option("server.maxUploadSize", before)
        assert not at.exception, at.exception
        by = at.dataframe[0].value.set_index("source")
        assert bool(by.loc["hf://team/small", "ok"])
        assert not bool(by.loc["hf://team/wide", "ok"])
        assert "LORARANK_HF_MAX_BYTES" in by.loc["hf://team/wide", "error"]


@needs_samples
def test_a_link_cannot_make_the_server_crawl_the_hub(monkeypatch, tmp_path):
    """A link's Hub queries are bounded before any listing call (at most MAX_HUB_QUERIES), and a
    listing stops one repo past what the page would audit, whatever the query's limit= says."""
    repos = {f"team/a{i}": HubRepo.from_folder(SAMPLES / "peft_gpt2_r4") for i in range(7)}
    with FakeHub(repos) as hub:
        point_client_at(hub.url, monkeypatch)
        monkeypatch.setenv("LORARANK_HF_CACHE", str(tmp_path / "cache"))
        many = ",".join(f"hf://?author=team{i}" for i in range(fl.MAX_HUB_QUERIES + 1))
        at = open_page({"q": many})
        assert not at.exception
        (shown,) = [md_plain(e.value) for e in at.error]
        assert f"names {fl.MAX_HUB_QUERIES + 1} Hub queries; this shared server lists at most" in shown
        assert not [p for _, p in hub.requests if p.startswith("/api/models")]
        monkeypatch.setattr(fl, "MAX_ADAPTERS", 2)
        at = open_page({"q": "hf://?author=team&limit=100000"})
        assert not at.exception
        (shown,) = [md_plain(e.value) for e in at.error]
        assert "more than 2 adapters" in shown
        listings = [p for _, p in hub.requests if p == "/api/models"]
        assert len(listings) == 1, listings  # 3 repos (one page of the fake Hub), not all 7


def test_a_zip_unpacks_to_at_most_an_upload(monkeypatch):
    """A zip's members are held in memory: its declared unpacked size is bounded by the upload
    limit (a 256 MB zip at the 16x ratio the zip reader allows would otherwise hold 4 GB)."""
    import numpy as np
    from safetensors.numpy import save
    from streamlit import config

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):   # 3 x 0.6 MB of zeros: a few kB zipped, honest sizes
            tensors = {"base_model.model.m.lora_A.weight": np.zeros((16, 4096), np.float32),
                       "base_model.model.m.lora_B.weight": np.zeros((4096, 16), np.float32)}
            z.writestr(f"runs/a{i}/adapter_model.safetensors", save(tensors))
            z.writestr(f"runs/a{i}/adapter_config.json", json.dumps({"r": 16, "lora_alpha": 16}))
    data = buf.getvalue()
    assert len(data) < 100_000
    before = config.get_option("server.maxUploadSize")
    config.set_option("server.maxUploadSize", 1)
    try:
        at = open_page()
        at.file_uploader(key=fl.UPLOAD_KEY).set_value([("runs.zip", data, "application/zip")])
        at.run()
    finally:
        config.set_option("server.maxUploadSize", before)
    assert not at.exception
    (shown,) = [md_plain(e.value) for e in at.error]
    assert "runs.zip would unpack to" in shown and "up to 1 MiB" in shown


def test_real_examples_in_one_click():
    """?examples=true: the 11 real example adapters (one of every family) are the fleet, each row
    the CLI's row of the same files, named as in the repository (never a server path)."""
    at = open_page({"examples": "true", "cap": "8"})
    assert not at.exception, at.exception
    frame = at.dataframe[0].value
    assert len(frame) == len(fl.example_sources()) == 11
    assert all(s.startswith("examples/") and "/work" not in s for s in frame["source"]), list(frame["source"])
    assert frame["ok"].all(), frame[["source", "error"]]
    local = run_fleet(expand_sources(fl.example_sources()).members, FleetOptions(), workers=1).rows
    by = frame.set_index("source")
    assert "examples/diffusers_unet_lora/pytorch_lora_weights.safetensors" in by.index
    for row in local:
        name = "examples/" + row["source"].split("/examples/", 1)[1]
        assert by.loc[name, "max_rank"] == row["max_rank"], name
        assert by.loc[name, "rec_max"] == row["recommended_rank"]["max"], name
    assert md_plain(at.success[0].value).startswith("At cap 8, ")


def test_done_records_depend_on_how_the_hub_was_read():
    """What the server remembers as done (the fleet for the work budget, each row) includes how
    the Hub was read, as the rows' cache does: a fleet audited with one token is not taken as done
    for another (its rows would be computed past the budget, outside the work slot)."""
    from lorarank.fleet import Member
    from ui.hub import hub_settings

    settings = hub_settings()
    hub = (Member(source="hf://team/x", hub="hf://team/x"),)
    upload = (Member(source="a.safetensors", files=(("a.safetensors", b"x"),)),)
    opts = FleetOptions()

    def fleet(members, idents, token):
        return fl.Fleet(members, idents, (), fl.HubAccess(token, settings))

    a, b = fleet(hub, ("hub:hf://team/x",), None), fleet(hub, ("hub:hf://team/x",), "hf_other_token")
    assert a.ident != b.ident and a.ident == fleet(hub, ("hub:hf://team/x",), None).ident
    assert fl._row_ident(a, "hub:hf://team/x", opts) != fl._row_ident(b, "hub:hf://team/x", opts)
    # An upload's row is the same whatever token the server holds.
    u1, u2 = fleet(upload, ("upload:1:a",), None), fleet(upload, ("upload:1:a",), "hf_other_token")
    assert fl._row_ident(u1, "upload:1:a", opts) == fl._row_ident(u2, "upload:1:a", opts)
