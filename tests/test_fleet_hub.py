"""The fleet on the Hub (the local stand-in, tests/hubserver.py, through the real
huggingface_hub client): ids pinned to their commit, queries by author and by base model,
screening by header byte ranges only, and the cache answered from listings alone."""

from __future__ import annotations

import pytest

from hubserver import SAMPLES, FakeHub, HubRepo, point_client_at, wide_adapter
from lorarank.fleet import FleetOptions, ResultCache, expand_sources, run_fleet

pytestmark = pytest.mark.skipif(not (SAMPLES / "peft_llama_r8").is_dir(), reason="../shared/samples not present")

LOCAL = {
    "fleet-org/llama-r8": "peft_llama_r8",
    "fleet-org/llama-r32": "peft_llama_r32_rslora",
    "fleet-org/gpt2-r4": "peft_gpt2_r4",
    "fleet-org/loha": "families/peft_loha",
}


def repos() -> dict:
    out = {name: HubRepo.from_folder(SAMPLES / case) for name, case in LOCAL.items()}
    out["fleet-org/gpt2-r4"].tags = ("peft", "safetensors", "base_model:adapter:openai/gpt2")
    out["fleet-org/lokr-kohya"] = HubRepo(files={"lokr_lora.safetensors": (SAMPLES / "families" /
                                                                       "lycoris_lokr.safetensors").read_bytes()},
                                          tags=("lora", "safetensors"))
    out["fleet-org/full-model"] = HubRepo(files={"config.json": b"{}"}, tags=("transformers",))
    out["fleet-org/broken"] = HubRepo(files={"adapter_config.json": b"{}", "adapter_model.safetensors": b"nope"})
    out["other-org/llama-r8"] = HubRepo.from_folder(SAMPLES / "peft_llama_r8")
    out["big-org/wide"] = HubRepo(files=wide_adapter())
    return out


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub(repos()) as server:
        point_client_at(server.url, monkeypatch)
        monkeypatch.setenv("LORARANK_HF_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("LORARANK_HF_TIMEOUT", "20")
        yield server


def local_row(case: str, options: FleetOptions) -> dict:
    (member,) = expand_sources([str(SAMPLES / case)]).members
    return run_fleet([member], options, workers=1).rows[0]


def same(a: dict, b: dict) -> bool:
    skip = {"source", "revision"}
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def test_an_organisation_is_a_fleet(hub):
    expansion = expand_sources(["hf://fleet-org/*"])
    sources = [m.source for m in expansion.members]
    assert sources == ["hf://fleet-org/broken", "hf://fleet-org/gpt2-r4", "hf://fleet-org/llama-r32",
                       "hf://fleet-org/llama-r8", "hf://fleet-org/loha", "hf://fleet-org/lokr-kohya"]
    assert any("1 repo(s)" in n for n in expansion.notes)      # the full model, by its tags
    result = run_fleet(expansion.members, FleetOptions(), workers=1)
    rows = {r["source"]: r for r in result.rows}
    assert not rows["hf://fleet-org/broken"]["ok"] and "safetensors" in rows["hf://fleet-org/broken"]["error"]
    for repo, case in LOCAL.items():
        row = rows[f"hf://{repo}"]
        assert row["revision"] == hub.repos[repo].sha
        assert same(row, local_row(case, FleetOptions())), repo
    kohya = rows["hf://fleet-org/lokr-kohya"]
    assert kohya["ok"] and kohya["family"] == "lokr" and kohya["format"] == "kohya"


def test_queries_by_base_model_and_search(hub):
    assert [m.source for m in expand_sources(["hf://?base_model=openai/gpt2"]).members] == ["hf://fleet-org/gpt2-r4"]
    found = [m.source for m in expand_sources(["hf://?search=llama-r8"]).members]
    assert found == ["hf://fleet-org/llama-r8", "hf://other-org/llama-r8"]
    assert [m.source for m in expand_sources(["hf://fleet-org/llama*"]).members] == \
        ["hf://fleet-org/llama-r32", "hf://fleet-org/llama-r8"]
    with pytest.raises(OSError, match="lists no adapter"):
        expand_sources(["hf://nobody/*"])
    with pytest.raises(ValueError, match="not the whole Hub"):
        expand_sources(["hf://?limit=5"])


def test_screening_reads_header_ranges_only(hub):
    members = expand_sources(["hf://fleet-org/llama-r8", "hf://fleet-org/loha", "hf://fleet-org/lokr-kohya",
                              "hf://big-org/wide"]).members
    hub.ranges.clear()
    rows = run_fleet(members, FleetOptions(screen=True), workers=1).rows
    assert all(r["ok"] and r["screened"] for r in rows)
    for row, case in zip(rows, ["peft_llama_r8", "families/peft_loha"]):
        full = local_row(case, FleetOptions())
        for key in ("stored_ranks", "max_rank", "modules", "params", "family", "format", "bytes"):
            assert row[key] == full[key], key
    weights = [(p, r) for p, r in hub.ranges if p.startswith("/cdn/")]
    assert weights and all(r is not None and r.startswith("bytes=") for _, r in weights)
    for _, r in weights:                                  # one 64 KiB range per file at most
        first, last = (int(x) for x in r[6:].split("-"))
        assert first == 0 and last <= 65_535
    assert rows[3]["bytes"] > 500_000 and rows[3]["stored_ranks"] == [16]
    assert not any(p.endswith(".safetensors") and r is None for p, r in hub.ranges if "/resolve/" in p)


def test_cached_hub_rows_cost_a_listing(hub, tmp_path):
    members = expand_sources(["hf://fleet-org/llama-r8", "hf://fleet-org/gpt2-r4"]).members
    first = run_fleet(members, FleetOptions(), workers=1, cache=ResultCache(tmp_path / "c"))
    hub.requests.clear()
    again = run_fleet(members, FleetOptions(), workers=1, cache=ResultCache(tmp_path / "c"))
    assert (again.audited, again.cached) == (0, 2) and again.rows == first.rows
    assert all(p.startswith("/api/models/") for _, p in hub.requests)
