"""The Adapter audit's "Against the base" view under AppTest, on the demo and on real PEFT files.

Expected numbers are the base_relative truth files (float64, PEFT's own reload) or dense SVDs
computed here, never the engine the page calls.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lorarank.adapters import load_adapter_bytes
from lorarank.base import open_base_bytes
from ui import audit, base_view
from ui.common import md_plain
from ui.layout import TAB_PARAM
import testkit

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "base_relative"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"base_relative samples not found at {SAMPLES}")
PAGE = "pages/3_Adapter_audit.py"
TAB = {TAB_PARAM: base_view.TAB}


def open_page(query: dict) -> AppTest:
    return testkit.open_page(PAGE, query)


def put(at: AppTest, key: str, files: dict[str, bytes]) -> AppTest:
    at.file_uploader(key=key).set_value([(n, d, "application/octet-stream") for n, d in files.items()])
    return at.run()


def folder(name: str) -> dict[str, bytes]:
    suffixes = (".safetensors",) if name == "base" else (".safetensors", ".json")
    return {p.name: p.read_bytes() for p in sorted((SAMPLES / name).iterdir()) if p.is_file()
            and p.suffix in suffixes}


def readings(at: AppTest) -> list[str]:
    return [md_plain(m.value) for m in at.markdown]


def table(at: AppTest, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


class TestDemo:
    def test_cold_deep_link(self):
        """?demo=true&tab=Against+the+base: reading, map, cosine picture and table on the first run;
        the counts are those of the dense definition on the demo's own files."""
        at = open_page({"demo": "true", **TAB})
        assert not at.exception and not at.error
        text = " ".join(readings(at))
        assert "intruder dimensions in" in text and "synthetic demo base" in " ".join(i.value for i in at.info)
        got = table(at, "intruders")
        # the oracle: PEFT's definition with dense numpy SVDs on the demo's files
        adapter = load_adapter_bytes(list(audit.demo_files("a").items()))
        base = open_base_bytes(list(base_view.demo_base_files().items()))
        want = {}
        for m in adapter.modules:
            W0 = base.weight(m.name, m.shape)
            W = W0 + m.scale * m.B.astype(float) @ m.A.astype(float)
            U0 = np.linalg.svd(W0, full_matrices=False)[0]
            U = np.linalg.svd(W, full_matrices=False)[0][:, :10]
            want[m.name[len("base_model.model."):]] = int(np.sum(np.abs(U.T @ U0).max(axis=1) < 0.5))
        assert dict(zip(got["module"], got["intruders"])) == want
        assert f"**{sum(want.values())} intruder dimensions" in " ".join(m.value for m in at.markdown)
        pick = at.selectbox(key=base_view.MODULE_KEY)
        assert pick.value == max(want, key=lambda k: (want[k], -list(want).index(k)))
        assert len(at.get("arrow_vega_lite_chart")) + len(at.get("vega_lite_chart")) >= 3
        # the caption reads the heatmap's colours as they are drawn (greys: |cos| 1 is black)
        caption = " ".join(c.value for c in at.caption if "Heatmap" in c.value)
        assert "dark cell" in caption and "bright" not in caption

    def test_settings_in_the_link(self):
        """top_k, epsilon and the module come from the link; a bad module is one sentence."""
        at = open_page({"demo": "true", "top_k": "3", "epsilon": "0.2", base_view.MODULE_KEY: "no.such", **TAB})
        assert not at.exception
        assert at.number_input(key="top_k").value == 3 and at.number_input(key="epsilon").value == 0.2
        errors = [md_plain(e.value) for e in at.error]
        assert len(errors) == 1 and "base_module=no.such" in errors[0] and "no such module" in errors[0]
        assert "top 3" in " ".join(readings(at))
        assert set(table(at, "intruders")["intruders"]) <= {0, 1, 2, 3}

    def test_closed_tab_computes_nothing(self):
        """On another tab the view computes nothing (no table of intruders)."""
        at = open_page({"demo": "true"})
        assert not at.exception
        assert not any("intruders" in d.value.columns for d in at.dataframe)


@needs_samples
class TestRealAdapters:
    def test_lora_r8_with_its_base(self):
        """lora_r8 + base: 59 intruders in 20 of 21 modules (the truth file), downloads present."""
        at = open_page(TAB)
        at = put(at, audit.UPLOAD_KEY, folder("lora_r8"))
        at = put(at, audit.BASE_UPLOAD_KEY, folder("base"))
        assert not at.exception and not at.error
        truth = json.loads((SAMPLES / "lora_r8.truth.json").read_text())["modules"]
        got = table(at, "intruders")
        want = {k[len("base_model.model."):]: v["intruders"]["count"] for k, v in truth.items()}
        assert dict(zip(got["module"], got["intruders"])) == want
        assert "59 intruder dimensions in 20 of 21 modules" in " ".join(readings(at))
        keys = {b.key for b in at.get("download_button")}
        assert {f"{base_view.DOWNLOAD_KEY}_csv", f"{base_view.DOWNLOAD_KEY}_json", f"{base_view.MITIGATE_KEY}_zip"} <= keys

    def test_pissa_raw_without_base(self):
        """A raw PiSSA folder alone: the headline says the file does not hold the update, the
        sentence says why, and no table of ranks is drawn."""
        at = open_page({})
        at = put(at, audit.UPLOAD_KEY, folder("pissa_raw"))
        assert not at.exception
        text = " ".join(readings(at))
        assert "This file alone does not hold the adapter's update" in text
        assert any("trained with PiSSA" in md_plain(w.value) for w in at.warning)
        assert not any("recommended rank" in d.value.columns for d in at.dataframe)
        assert any("Not shown: this file's B@A is not the adapter's update" in c.value for c in at.caption)

    def test_pissa_raw_with_base(self):
        """With the original base: the exact update (rank 2r spectra equal the truth), and the
        converted adapter for download equals PEFT's conversion."""
        at = open_page(TAB)
        at = put(at, audit.UPLOAD_KEY, folder("pissa_raw"))
        at = put(at, audit.BASE_UPLOAD_KEY, folder("base"))
        assert not at.exception and not at.error
        text = " ".join(readings(at))
        assert "(pissa init replayed from the base weights, float64: the exact update of the definition; " \
               "PEFT's own float32 init differs from it by rounding, about 1e-6 of σ₁)" in text
        assert "of the stored r = 8" in text and "No intruder dimensions** in 21 modules" in text
        assert f"{base_view.CONVERT_KEY}_zip" in {b.key for b in at.get("download_button")}
        files = base_view.converted_files(audit.Upload.from_files(folder("pissa_raw")),
                                          audit.Upload.from_files(folder("base")), alpha=None, scale=None)
        ours = load_adapter_bytes(list(files.items()))
        peft = load_adapter_bytes(list(folder("pissa_converted").items()))
        for m in ours.modules:
            p = peft.module(m.name)
            want = p.scale * p.B.astype(float) @ p.A.astype(float)
            assert np.linalg.norm(m.scale * m.B.astype(float) @ m.A.astype(float) - want) <= 2e-5 * np.linalg.norm(want)

    def test_mitigated_download_is_peft(self):
        """The mitigated zip holds PEFT's lora_r8_intruders_reduced to float32 tolerance."""
        files = base_view.mitigated_files(audit.Upload.from_files(folder("lora_r8")),
                                          audit.Upload.from_files(folder("base")), alpha=None, scale=None,
                                          top_k=10, epsilon=0.5, lam=0.75)
        assert set(files) == {"adapter_model.safetensors", "adapter_config.json"}
        ours = load_adapter_bytes(list(files.items()))
        peft = load_adapter_bytes(list(folder("lora_r8_intruders_reduced").items()))
        for m in ours.modules:
            p = peft.module(m.name)
            want = p.B.astype(float) @ p.A.astype(float)
            assert np.linalg.norm(m.B.astype(float) @ m.A.astype(float) - want) <= 2e-5 * np.linalg.norm(want)
        with zipfile.ZipFile(io.BytesIO(audit.zip_files(files, folder="x"))) as z:
            assert sorted(z.namelist()) == ["x/adapter_config.json", "x/adapter_model.safetensors"]


@needs_samples
def test_cold_link_with_adapter_and_base_on_the_hub(monkeypatch, tmp_path):
    """?hf=ADAPTER&base_hf=BASE&tab=Against+the+base: both read from the (fake) Hub, the base by
    byte ranges; PEFT's counts on the first run, with nothing uploaded."""
    from hubserver import FakeHub, HubRepo, point_client_at

    adapter = dict(HubRepo.from_folder(SAMPLES / "lora_r8").files)
    with FakeHub({"lorarank-test/lora-r8": HubRepo(files=adapter),
                  "lorarank-test/llama-base": HubRepo.from_folder(SAMPLES / "base")}) as hub:
        point_client_at(hub.url, monkeypatch)
        monkeypatch.setenv("LORARANK_HF_CACHE", str(tmp_path / "cache"))
        at = open_page({"hf": "lorarank-test/lora-r8", "base_hf": "lorarank-test/llama-base", **TAB})
    assert not at.exception and not at.error, [md_plain(e.value) for e in at.error]
    truth = json.loads((SAMPLES / "lora_r8.truth.json").read_text())["modules"]
    got = table(at, "intruders")
    assert dict(zip(got["module"], got["intruders"])) == {
        k[len("base_model.model."):]: v["intruders"]["count"] for k, v in truth.items()}


@needs_samples
def test_no_mitigation_button_for_a_copy_the_writer_refuses():
    """lora_r8 as a .npz with one other array, and its base: the intruder-reduced copy is written
    as .npz, which keeps LoRA factors only, so its button's click could only fail ('Failed to
    generate file for download'): no button, the writer's sentence instead."""
    import io

    adapter = load_adapter_bytes(list(folder("lora_r8").items()))
    arrays = {"extra_head": np.ones(8)}
    for m in adapter.modules:
        arrays.update({m.name + ".A": np.asarray(m.A), m.name + ".B": np.asarray(m.B),
                       m.name + ".alpha": np.array(m.scale * m.rank)})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    at = open_page(TAB)
    at = put(at, audit.UPLOAD_KEY, {"lora_r8.npz": buf.getvalue()})
    at = put(at, audit.BASE_UPLOAD_KEY, folder("base"))
    assert not at.exception and not at.error
    assert "59 intruder dimensions in 20 of 21 modules" in " ".join(readings(at))
    assert f"{base_view.MITIGATE_KEY}_zip" not in {b.key for b in at.get("download_button")}
    (why,) = [md_plain(w.value) for w in at.warning if "No download" in w.value]
    assert "'extra_head'" in why and "keeps LoRA factors only" in why
