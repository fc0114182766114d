"""Models on the Hub read by the bytes they need (real huggingface_hub against tests/hubserver.py).

The fake Hub serves the real base and fine-tune of ``samples/base_relative``, answers byte
ranges as the Hub's CDN does and counts every byte it sends, so these tests can say exactly
what was fetched.
"""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest

from hubserver import SAMPLES, FakeHub, HubRepo, point_client_at

from lorarank.cli import main
from lorarank.errors import AdapterError, ConfigError, HubError
from lorarank.hub import HubSettings

BASE_RELATIVE = SAMPLES / "base_relative"
pytestmark = pytest.mark.skipif(not (BASE_RELATIVE / "base").is_dir(),
                                reason=f"the base_relative samples are not at {BASE_RELATIVE}")


def _header(tensors: dict) -> bytes:
    text = json.dumps(tensors).encode()
    return struct.pack("<Q", len(text)) + text


def _sharded(folder) -> dict[str, bytes]:
    """The model of ``folder`` split into two shards with an index, as transformers saves big models."""
    from safetensors.numpy import load_file, save

    tensors = load_file(str(folder / "model.safetensors"))
    keys = sorted(tensors)
    half = len(keys) // 2
    files = {"model-00001-of-00002.safetensors": save({k: tensors[k] for k in keys[:half]}),
             "model-00002-of-00002.safetensors": save({k: tensors[k] for k in keys[half:]})}
    index = {"metadata": {}, "weight_map": {k: ("model-00001-of-00002.safetensors" if i < half else
                                                "model-00002-of-00002.safetensors")
                                            for i, k in enumerate(keys)}}
    return {**files, "model.safetensors.index.json": json.dumps(index).encode(),
            "config.json": (folder / "config.json").read_bytes()}


def repos() -> dict:
    base, ft = BASE_RELATIVE / "base", BASE_RELATIVE / "finetuned"
    adapter = dict(HubRepo.from_folder(BASE_RELATIVE / "lora_r8").files)
    config = json.loads(adapter["adapter_config.json"])
    config["base_model_name_or_path"] = "lorarank-test/llama-base"
    named = {**adapter, "adapter_config.json": json.dumps(config).encode()}
    good = (base / "model.safetensors").read_bytes()
    return {
        "lorarank-test/llama-base": HubRepo.from_folder(base),
        "lorarank-test/llama-finetuned": HubRepo.from_folder(ft),
        "lorarank-test/llama-base-sharded": HubRepo(files=_sharded(base)),
        "lorarank-test/lora-naming-its-base": HubRepo(files=named),
        "lorarank-test/no-ranges": HubRepo.from_folder(base, ranges=False),
        "lorarank-test/pickles-only": HubRepo(files={"config.json": b"{}", "pytorch_model.bin": b"x" * 10}),
        "lorarank-test/an-adapter": HubRepo(files=adapter),
        # a header that declares 2^40 bytes of JSON: refused before anything is read
        "lorarank-test/huge-header": HubRepo(files={"model.safetensors": struct.pack("<Q", 2**40) + b"{}" * 50}),
        # a header whose tensors do not cover the file it sits in
        "lorarank-test/lying-header": HubRepo(files={"model.safetensors": _header(
            {"w.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}) + b"\0" * 80}),
        # the Hub announces fewer bytes than the file holds
        "lorarank-test/understated-model": HubRepo(files={"model.safetensors": good},
                                                   understated={"model.safetensors": len(good) - 16}),
        # answers every range with its headers, then nothing
        "lorarank-test/stalled-model": HubRepo(files={"model.safetensors": good + b""}, stall=True),
    }


@pytest.fixture(scope="module", autouse=True)
def client():
    return pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def hub():
    with FakeHub(repos()) as server:
        yield server


@pytest.fixture(autouse=True)
def endpoint(hub, monkeypatch, tmp_path):
    point_client_at(hub.url, monkeypatch)
    monkeypatch.setenv("LORARANK_HF_CACHE", str(tmp_path / "cache"))
    with hub._served_lock:
        hub.served.clear()
    hub.requests.clear()
    yield


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def adapted_base_bytes() -> int:
    """Bytes of the base tensors the r=8 adapter's 21 modules sit on."""
    from safetensors import safe_open

    with open(BASE_RELATIVE / "base" / "model.safetensors", "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
    with safe_open(str(BASE_RELATIVE / "lora_r8" / "adapter_model.safetensors"), "numpy") as f:
        modules = {k.split(".lora_")[0].removeprefix("base_model.model.") for k in f.keys()}
    return sum(header[m + ".weight"]["data_offsets"][1] - header[m + ".weight"]["data_offsets"][0]
               for m in modules)


# ------------------------------------------------------------------------- the adapter audit
class TestHubBaseOfAnAdapter:
    def test_read_by_ranges_only(self, hub, capsys):
        """--base hf://...: headers, then the 21 adapted weights' ranges; <= 1.1x their bytes."""
        code, out, err = run(["audit", BASE_RELATIVE / "lora_r8", "--base", "hf://lorarank-test/llama-base",
                              "--json"], capsys)
        assert code == 0, err
        doc = json.loads(out)
        truth = json.loads((BASE_RELATIVE / "lora_r8.truth.json").read_text())["modules"]
        for m in doc["modules"]:
            assert m["relative_size"] == pytest.approx(truth[m["name"]]["relative_size"], rel=1e-9)
        need = adapted_base_bytes()
        sent = hub.bytes_served
        assert need <= sent <= 1.1 * need, (sent, need)
        size = (BASE_RELATIVE / "base" / "model.safetensors").stat().st_size
        assert all(n < size for _, _, n in hub.served)  # never the whole file in one response

    def test_same_numbers_as_the_local_base(self, capsys):
        code, hub_out, _ = run(["audit", BASE_RELATIVE / "lora_r8", "--base", "hf://lorarank-test/llama-base-sharded",
                                "--json"], capsys)
        code2, local_out, _ = run(["audit", BASE_RELATIVE / "lora_r8", "--base", BASE_RELATIVE / "base", "--json"],
                                  capsys)
        a, b = json.loads(hub_out), json.loads(local_out)
        assert code == code2 == 0
        assert [m["relative_size"] for m in a["modules"]] == [m["relative_size"] for m in b["modules"]]
        assert a["summary"]["base"].startswith("hf://lorarank-test/llama-base-sharded@")

    def test_the_base_the_adapter_names(self, hub, capsys):
        """--base hf:// alone: the repo in the adapter's base_model_name_or_path."""
        from lorarank.hub import fetch_adapter_files

        files = fetch_adapter_files("hf://lorarank-test/lora-naming-its-base")
        folder = files.weights.parent
        code, out, err = run(["audit", folder, "--base", "hf://", "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["summary"]["base"].startswith("hf://lorarank-test/llama-base@")

    def test_a_local_base_name_is_not_guessed(self, capsys):
        code, _, err = run(["audit", BASE_RELATIVE / "lora_r8", "--base", "hf://"], capsys)
        assert code == 2 and "names its base as 'base', a local path rather than a Hub repo" in err

    def test_over_the_limit_refused_before_reading(self, hub, capsys, monkeypatch):
        monkeypatch.setenv("LORARANK_HF_MAX_BYTES", "200000")
        code, _, err = run(["audit", BASE_RELATIVE / "lora_r8", "--base", "hf://lorarank-test/llama-base"], capsys)
        assert code == 2 and "over this request's limit of 200 kB (LORARANK_HF_MAX_BYTES)" in err
        assert hub.bytes_served <= 40_000  # the header only


# ----------------------------------------------------------------------------- fine-tunes
class TestHubFinetune:
    def test_audit_both_models_from_the_hub(self, hub, capsys):
        code, out, err = run(["audit", "--finetuned", "hf://lorarank-test/llama-finetuned", "--base",
                              "hf://lorarank-test/llama-base-sharded", "--json"], capsys)
        assert code == 0, err
        doc = json.loads(out)
        truth = json.loads((BASE_RELATIVE / "finetuned.truth.json").read_text())["modules"]
        assert len(doc["modules"]) == 23
        for m in doc["modules"]:
            s = np.array(truth[m["name"]]["singular_values"])
            assert np.max(np.abs(np.array(m["singular_values"])[:s.size] - s)) <= 1e-6 * s[0]
        # Norms are small: compared (and changed); every byte counted is a tensor or a header.
        assert all(o["changed"] for o in doc["left_out"])
        files = sum(p.stat().st_size for p in ((BASE_RELATIVE / "base" / "model.safetensors"),
                                               (BASE_RELATIVE / "finetuned" / "model.safetensors")))
        assert hub.bytes_served <= files + 100_000

    def test_extract_from_the_hub(self, tmp_path, capsys):
        code, out, err = run(["extract", "hf://lorarank-test/llama-finetuned", "--base",
                              "hf://lorarank-test/llama-base", "--rank", "4", "-o", tmp_path / "x"], capsys)
        assert code == 0, err
        config = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "lorarank-test/llama-base" and config["r"] == 4


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("repo, error, message", [
    ("lorarank-test/no-ranges", HubError, "answered a byte-range request for model.safetensors with HTTP 200"),
    ("lorarank-test/pickles-only", HubError, "holds its weights only as pickles"),
    ("lorarank-test/an-adapter", HubError, "is a LoRA adapter (it has adapter_config.json), not a model"),
    ("lorarank-test/huge-header", AdapterError, "MiB safetensors header|not a valid safetensors file"),
    ("lorarank-test/lying-header", AdapterError, "its header does not describe its data exactly"),
    ("lorarank-test/understated-model", AdapterError, "not a valid safetensors file"),
    ("lorarank-test/does-not-exist", HubError, "was not found"),
    ("lorarank-test/stalled-model", HubError, "the Hub sent nothing for 2 s while model.safetensors was read"),
])
def test_one_sentence_errors(hub, repo, error, message):
    from lorarank.hub_ranges import open_hub_model

    with pytest.raises(error, match=message if "|" in message else re.escape(message)) as info:
        open_hub_model(f"hf://{repo}", settings=HubSettings(timeout=2.0))
    assert "\n" not in str(info.value)
    if repo != "lorarank-test/no-ranges":  # that server pushes the whole file; the client reads none of it
        assert hub.bytes_served <= 64 * 1024  # never more than a header's prefetch


def test_base_from_config():
    from lorarank.hub_ranges import base_from_config

    assert base_from_config({"base_model_name_or_path": "meta-llama/Llama-3.1-8B"}) == "hf://meta-llama/Llama-3.1-8B"
    assert base_from_config({"base_model_name_or_path": "a/b", "revision": "v2"}) == "hf://a/b@v2"
    for bad in ({}, {"base_model_name_or_path": "/home/me/llama"}, {"base_model_name_or_path": "../x/y"}):
        with pytest.raises(ConfigError):
            base_from_config(bad)


# ------------------------------------------------------------------------------- the page
def _audit_page(query: dict):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120).run()
    at.switch_page("pages/3_Adapter_audit.py")
    for key, value in query.items():
        at.query_params[key] = value
    return at


def test_page_base_on_the_hub_named_by_the_adapter(hub):
    """The audit page: the adapter names its base on the Hub; one click reads only its adapted
    weights, and every module gets the truth's ||dW|| / ||W0||."""
    from ui.audit import BASE_HF_KEY
    from ui.common import md_plain

    at = _audit_page({"hf": "lorarank-test/lora-naming-its-base"}).run()
    assert not at.exception
    at.button(key="audit_base_hf_named").click().run()
    assert not at.exception and not at.error, [md_plain(e.value) for e in at.error]
    assert at.text_input(key=BASE_HF_KEY).value == "lorarank-test/llama-base"
    frame = next(d.value for d in at.dataframe if "|dW|/|W0|" in d.value.columns)
    truth = json.loads((BASE_RELATIVE / "lora_r8.truth.json").read_text())["modules"]
    for _, row in frame.iterrows():
        assert row["|dW|/|W0|"] == pytest.approx(truth["base_model.model." + row["module"]]["relative_size"],
                                                 rel=1e-9)
    assert hub.bytes_served <= 1.1 * adapted_base_bytes() + 200_000  # + the adapter's own files


def test_page_base_over_the_limit_is_one_sentence(monkeypatch):
    from ui.common import md_plain

    monkeypatch.setenv("LORARANK_HF_MAX_BYTES", "400000")  # the 171 kB adapter fits, its base's weights do not
    at = _audit_page({"hf": "lorarank-test/lora-naming-its-base", "base_hf": "lorarank-test/llama-base-sharded"}).run()
    assert not at.exception
    shown = [md_plain(e.value) for e in at.error]
    assert shown and "over this request's limit" in " ".join(shown)
