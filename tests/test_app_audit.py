"""The Adapter audit page under AppTest, with real adapter files, and its ui helpers.

Expected numbers come from the dense ``scale * B @ A`` computed here with numpy (the slow
exact oracle), never from the engine that the page calls.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from streamlit.testing.v1 import AppTest

from lorarank.adapters import load_adapter_bytes
from ui import audit, resize_view
from ui.common import md_plain
from ui.layout import TAB_PARAM
import testkit

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
PAGE = "pages/3_Adapter_audit.py"
SAMPLE_NAMES = ("peft_llama_r8", "peft_llama_r32_rslora", "peft_llama_rank_pattern", "peft_gpt2_r4")


# ----------------------------------------------------------------------------- helpers
def open_page(query: dict | None = None) -> AppTest:
    """Run the home script, switch to the audit page (with ``query`` in the URL) and run it."""
    return testkit.open_page(PAGE, query, timeout=60)


def upload(at: AppTest, files: dict[str, bytes], key: str = audit.UPLOAD_KEY) -> AppTest:
    """Put ``files`` into the page's uploader and rerun."""
    at.file_uploader(key=key).set_value(
        [(name, data, "application/octet-stream") for name, data in files.items()])
    return at.run()


def sample_files(name: str) -> dict[str, bytes]:
    """The files of a PEFT sample folder, name -> bytes (the test skips when it is absent)."""
    folder = SAMPLES / name
    if not folder.is_dir():
        pytest.skip(f"sample adapters not found at {folder}")
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def frame_with(at: AppTest, column: str):
    """The one data frame on the page that has ``column``."""
    frames = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(frames) == 1, [list(d.value.columns) for d in at.dataframe]
    return frames[0]


def errors(at: AppTest) -> list[str]:
    return [md_plain(e.value) for e in at.error]  # engine messages are escaped


def loaded_line(at: AppTest) -> str:
    """The header line naming the loaded adapter, as a reader sees it."""
    text = " ".join(md_plain(m.value) for m in at.markdown if "Loaded:" in md_plain(m.value))
    return text.replace("`", "").replace("**", "")


def assert_clean(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert errors(at) == []


def dense_spectra(weights: bytes, scales: dict[str, float]) -> dict[str, np.ndarray]:
    """Oracle: singular values of the dense scale * B @ A of every PEFT module."""
    tensors = st_load(weights)
    out = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            mod = key[: -len(".lora_A.weight")]
            b = tensors[mod + ".lora_B.weight"]
            short = mod[len("base_model.model."):]
            out[short] = np.linalg.svd(scales[short] * (b.astype(np.float64) @ a.astype(np.float64)),
                                       compute_uv=False)
    return out


def peft_scale(config: dict, short: str, r: int) -> float:
    """The scale PEFT applies, by hand from the formats table, docs/formats.md (patterns are simple suffixes)."""
    alpha = config["lora_alpha"]
    for key, val in (config.get("alpha_pattern") or {}).items():
        if short.endswith(key):
            alpha = val
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def oracle_energy_rank(s: np.ndarray, t: float) -> int:
    e = np.cumsum(s * s) / np.sum(s * s)
    return int(np.argmax(e >= t - 1e-12) + 1)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def factors(seed: int, d_out: int, d_in: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((r, d_in)).astype(np.float32),
            rng.standard_normal((d_out, r)).astype(np.float32))


# ------------------------------------------------------------------------------- tests
class TestEmptyState:
    """The page before anything is uploaded."""

    def test_explains_what_to_upload(self):
        """Without an upload the page says what to upload and offers the synthetic demo."""
        at = open_page()
        assert_clean(at)
        text = " ".join(md_plain(m.value) for m in at.markdown)
        assert "What to upload" in text and "adapter_config.json" in text
        assert at.toggle(key=audit.DEMO_KEY).value is False
        assert len(at.dataframe) == 0

    def test_demo_is_labelled_and_recovers_planted_ranks(self):
        """The demo is labelled synthetic and its k(0.99) column equals the planted ranks."""
        at = open_page()
        at.toggle(key=audit.DEMO_KEY).set_value(True).run()
        assert_clean(at)
        assert any("synthetic demo" in md_plain(i.value) for i in at.info)
        table = at.dataframe[0].value
        assert len(table) == 14
        planted = {"q_proj": 2, "k_proj": 2, "v_proj": 6, "o_proj": 5, "gate_proj": 3,
                   "up_proj": 4, "down_proj": 8}
        for _, row in table.iterrows():
            assert row["k(0.99)"] == planted[row["module"].rsplit(".", 1)[1]]


class TestPeftSamples:
    """The real PEFT adapters of /work/shared/samples uploaded as the two files together."""

    @pytest.mark.parametrize("name", SAMPLE_NAMES)
    def test_table_matches_dense_oracle(self, name):
        """Scale, sigma_1 and k(0.99) of every module agree with the dense s*B@A."""
        files = sample_files(name)
        config = json.loads(files["adapter_config.json"])
        at = upload(open_page(), files)
        assert_clean(at)
        table = at.dataframe[0].value
        weights = st_load(files["adapter_model.safetensors"])
        ranks = {k[len("base_model.model."):-len(".lora_A.weight")]: v.shape[0]
                 for k, v in weights.items() if k.endswith(".lora_A.weight")}
        scales = {short: peft_scale(config, short, r) for short, r in ranks.items()}
        spectra = dense_spectra(files["adapter_model.safetensors"], scales)
        assert sorted(table["module"]) == sorted(spectra)
        for _, row in table.iterrows():
            s = spectra[row["module"]]
            assert row["scale s"] == pytest.approx(scales[row["module"]], rel=1e-12)
            assert row["top singular values"].split(",")[0] == f"{s[0]:.3g}"
            assert row["k(0.99)"] == oracle_energy_rank(s, 0.99)
            assert row["r"] == ranks[row["module"]]

    def test_detected_box(self):
        """The detection names format, scaling formula, dtype, module count and parameters."""
        at = upload(open_page(), sample_files("peft_llama_r32_rslora"))
        text = " ".join(md_plain(m.value) for m in at.markdown)
        assert "**format:** peft" in text
        assert "lora_alpha / sqrt(r) (use_rslora)" in text
        assert "**dtype:** float32" in text
        assert "**modules:** 4 (ranks 32)" in text
        assert not at.warning  # a config with alpha: nothing assumed

    def test_rule_change_updates_recommended_rank(self):
        """kohya sv_ratio R keeps sigma_i > sigma_1 / R, checked on the dense spectrum."""
        files = sample_files("peft_llama_r8")
        at = upload(open_page(), files)
        at.selectbox(key="rule").set_value("sv_ratio").run()
        at.number_input(key="sv_ratio").set_value(3.0).run()
        assert_clean(at)
        spectra = dense_spectra(files["adapter_model.safetensors"],
                                {m: 2.0 for m in at.dataframe[0].value["module"]})
        for _, row in at.dataframe[0].value.iterrows():
            s = spectra[row["module"]]
            assert row["recommended rank"] == int(np.sum(s > s[0] / 3.0))
        assert "kohya sv_ratio 3" in " ".join(md_plain(m.value) for m in at.markdown)

    def test_module_selector_draws_that_spectrum(self):
        """Choosing a module redraws the spectrum chart with its values."""
        files = sample_files("peft_llama_rank_pattern")
        at = upload(open_page({"tab": "Spectrum"}), files)  # only the open tab draws charts
        name = "model.layers.1.mlp.down_proj"
        at.selectbox(key=audit.MODULE_KEY).set_value(name).run()
        assert_clean(at)
        specs = [json.loads(c.proto.spec) for c in at.get("arrow_vega_lite_chart")] or \
                [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
        titles = [str(s.get("title")) for s in specs]
        assert any(name in t for t in titles)

    def test_entropy_rule_hides_the_value(self):
        """The entropy rule has no value widget and still gives a table."""
        at = upload(open_page(), sample_files("peft_llama_r8"))
        at.selectbox(key="rule").set_value("entropy").run()
        assert_clean(at)
        assert not any(n.key in audit.RULE_VALUES for n in at.number_input)
        assert len(at.dataframe[0].value) == 14


class TestBuiltFiles:
    """npz and kohya files written in the test by numpy and safetensors."""

    def test_npz_without_alpha_offers_alpha(self):
        """An npz without alpha assumes s = 1, says so, and an alpha input rescales it."""
        a, b = factors(0, 24, 16, 4)
        at = upload(open_page(), {"delta.npz": npz_bytes({"layers.0.q.A": a, "layers.0.q.B": b})})
        assert_clean(at)
        # the file has one module and it has no alpha: not "some modules"
        assert [md_plain(w.value) for w in at.warning] == [
            "No module of the file has an alpha: **scale s = 1 assumed** for every module. Set "
            "the alpha you trained with to get the real update s·B·A."]
        assert at.dataframe[0].value["scale s"].tolist() == [1.0]
        assert at.dataframe[0].value["alpha"].tolist() == ["-"]  # no alpha: "-", not "None"
        assert not at.dataframe[0].value.isna().any().any()
        at.number_input(key="alpha").set_value(8.0).run()
        assert_clean(at)
        assert at.dataframe[0].value["scale s"].tolist() == [pytest.approx(2.0)]
        # the page no longer says s = 1 once alpha is set: it names the alpha in use
        assert not any("assumed" in md_plain(w.value) for w in at.warning)
        assert any("alpha = 8" in md_plain(i.value) for i in at.info)
        assert any("s = 2" in md_plain(m.value) for m in at.markdown)  # the detected scaling
        s = np.linalg.svd(2.0 * (b.astype(np.float64) @ a), compute_uv=False)
        assert at.dataframe[0].value["top singular values"][0].split(",")[0] == f"{s[0]:.3g}"

    def test_kohya_some_without_alpha(self):
        """A kohya file where one of two modules has no .alpha: the warning counts them."""
        rng = np.random.default_rng(4)
        tensors = {
            "lora_te_a.lora_down.weight": rng.standard_normal((4, 32)).astype(np.float32),
            "lora_te_a.lora_up.weight": rng.standard_normal((64, 4)).astype(np.float32),
            "lora_te_a.alpha": np.array(8.0, dtype=np.float32),
            "lora_te_b.lora_down.weight": rng.standard_normal((4, 32)).astype(np.float32),
            "lora_te_b.lora_up.weight": rng.standard_normal((64, 4)).astype(np.float32),
        }
        at = upload(open_page(), {"k.safetensors": st_save(tensors)})
        assert_clean(at)
        assert [md_plain(w.value) for w in at.warning] == [
            "No alpha for 1 of the 2 modules: **scale s = 1 assumed** for that one. Set the alpha "
            "you trained with to get the real update s·B·A."]

    def test_kohya_with_conv_and_alpha(self):
        """kohya alpha/r per module, a conv module flattened to (out, in*k*k)."""
        rng = np.random.default_rng(3)
        tensors = {
            "lora_unet_down_0_conv.lora_down.weight": rng.standard_normal((4, 8, 3, 3)).astype(np.float16),
            "lora_unet_down_0_conv.lora_up.weight": rng.standard_normal((16, 4, 1, 1)).astype(np.float16),
            "lora_unet_down_0_conv.alpha": np.array(2.0, dtype=np.float16),
            "lora_te_layers_1_mlp_fc1.lora_down.weight": rng.standard_normal((4, 32)).astype(np.float16),
            "lora_te_layers_1_mlp_fc1.lora_up.weight": rng.standard_normal((64, 4)).astype(np.float16),
            "lora_te_layers_1_mlp_fc1.alpha": np.array(8.0, dtype=np.float16),
        }
        # energy 0.5: a resize that drops directions, so its download is offered
        at = upload(open_page({"energy": "0.5", "tab": "Resize"}), {"my_lora.safetensors": st_save(tensors)})
        assert_clean(at)
        table = at.dataframe[0].value.set_index("module")
        assert table.loc["lora_unet_down_0_conv", "shape"] == "16 x 72"
        assert table.loc["lora_unet_down_0_conv", "scale s"] == pytest.approx(0.5)
        assert table.loc["lora_te_layers_1_mlp_fc1", "scale s"] == pytest.approx(2.0)
        assert "**format:** kohya" in " ".join(md_plain(m.value) for m in at.markdown)
        labels = [b.label for b in at.get("download_button")]
        assert "Download resized adapter (.safetensors)" in labels

    def test_bfloat16_peft_without_config(self):
        """A bfloat16 PEFT file without config: dtype bfloat16, scale 1 assumed."""
        a, b = factors(1, 32, 32, 8)
        tensors = {"base_model.model.layers.0.q_proj.lora_A.weight": a.astype(ml_dtypes.bfloat16),
                   "base_model.model.layers.0.q_proj.lora_B.weight": b.astype(ml_dtypes.bfloat16)}
        at = upload(open_page(), {"adapter_model.safetensors": st_save(tensors)})
        assert_clean(at)
        text = " ".join(md_plain(m.value) for m in at.markdown)
        assert "**dtype:** bfloat16" in text
        assert any("scale s = 1 assumed" in md_plain(w.value) for w in at.warning)


    @pytest.mark.skipif(not (SAMPLES / "families" / "gguf_lora.gguf").is_file(), reason="family samples not found")
    def test_gguf_upload(self):
        """A llama.cpp LoRA .gguf upload is audited: format gguf, module names mapped, scale alpha / r."""
        data = (SAMPLES / "families" / "gguf_lora.gguf").read_bytes()
        at = upload(open_page(), {"gguf_lora.gguf": data})
        assert_clean(at)
        assert "**format:** gguf" in " ".join(md_plain(m.value) for m in at.markdown)
        table = at.dataframe[0].value.set_index("module")
        assert table["scale s"].tolist() == pytest.approx([1.6] * 21)


def _truncated_safetensors() -> bytes:
    data = st_save({"x.lora_A.weight": np.ones((2, 4), np.float32),
                    "x.lora_B.weight": np.ones((4, 2), np.float32)})
    return data[: len(data) - 7]


def _pickled_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, A=np.array([{"evil": 1}], dtype=object), B=np.ones((3, 2)))
    return buf.getvalue()


BAD_FILES = [
    ("empty", {"adapter.safetensors": b""},
     "adapter.safetensors is not a valid safetensors file (only 0 bytes)"),
    ("text renamed npz", {"adapter.npz": b"hello, I am text\n" * 4},
     "adapter.npz is not an .npz archive (it does not start with a zip signature)"),
    ("truncated", {"adapter.safetensors": _truncated_safetensors()},
     "adapter.safetensors is not a valid safetensors file"),
    ("random bytes", {"adapter.safetensors": bytes(range(256)) * 8},  # not "header too large" bare
     "adapter.safetensors is not a valid safetensors file (header too large): its header length "
     "points past the end of the file, so it was cut short (an interrupted download or copy?) or "
     "is another kind of file; download or save it again"),
    ("pickled npz", {"adapter.npz": _pickled_npz()},
     "adapter.npz: array 'A' holds pickled Python objects, which lorarank does not load"),
    ("nan", {"a.npz": npz_bytes({"A": np.full((2, 3), np.nan), "B": np.ones((3, 2))})},
     "a.npz: tensor 'A' contains NaN or infinite values"),
    ("no partner", {"a.npz": npz_bytes({"m.A": np.ones((2, 3))})},
     "a.npz: tensor 'm.A' has no partner B factor for module 'm'"),
    ("two weights", {"a.npz": npz_bytes({"A": np.ones((2, 3)), "B": np.ones((3, 2))}),
                     "b.npz": npz_bytes({"A": np.ones((2, 3)), "B": np.ones((3, 2))})},
     "several weights files given (a.npz, b.npz); give one"),
    ("config only", {"adapter_config.json": b"{}"},
     "no weights file given (expected a .safetensors or .npz file)"),
    ("bad json", {"adapter_model.safetensors": st_save({"x.lora_A.weight": np.ones((2, 4), np.float32),
                                                        "x.lora_B.weight": np.ones((4, 2), np.float32)}),
                  "adapter_config.json": b"{not json"},
     "adapter_config.json is not valid JSON"),
    ("loha", {"a.safetensors": st_save({"m.hada_w1_a": np.ones((2, 2), np.float32)})},
     "a.safetensors: tensor 'm.hada_w1_a' has no partner 'm.hada_w1_b' for module 'm'"),
]


class TestBadFiles:
    """Bad uploads give one error sentence and no exception."""

    @pytest.mark.parametrize("files, message", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
    def test_one_sentence(self, files, message):
        """The engine's one-line message is shown as the page's only error; nothing else renders."""
        at = upload(open_page(), files)
        assert not at.exception
        shown = errors(at)
        assert len(shown) == 1 and shown[0].startswith(message), shown
        assert "\n" not in shown[0]
        assert len(at.dataframe) == 0
        # files that could not be read are not kept as the adapter: no line names them as
        # loaded (the error does), the uploader is open again for other files
        from ui import loaded

        assert not [md_plain(m.value) for m in at.markdown if "Loaded:" in md_plain(m.value) or "Adapter:" in md_plain(m.value)]
        assert loaded.LOADED_KEY not in at.session_state
        assert at.get("file_uploader")[0].label == "Adapter files"
        at.run()  # the next rerun (any click) no longer shows it
        assert errors(at) == [] and not at.exception

    @pytest.mark.skipif(not (SAMPLES / "peft_llama_r8").is_dir(), reason="samples not present")
    def test_bad_file_keeps_the_adapter_loaded_before(self):
        """A bad file dropped onto a loaded adapter: one error line, and the adapter loaded
        before it is still the one named and shown (not the bad file)."""
        from ui import loaded

        at = upload(open_page(), sample_files("peft_llama_r8"))
        at = upload(at, {"adapter.safetensors": bytes(range(256)) * 8}, key=f"{audit.UPLOAD_KEY}_1")
        assert not at.exception
        assert len(errors(at)) == 1 and "header too large" in errors(at)[0]
        assert "adapter_model.safetensors" in loaded_line(at) and "Loaded:" in loaded_line(at)
        assert len(frame_with(at, "recommended rank")) == 14


class TestUrlSettings:
    """Settings come from the URL; bad values are one sentence each."""

    def test_settings_restored(self):
        """rule, its value, map metric, budget, resize_by and compare are read from the URL."""
        at = open_page({"rule": "sv_fro", "sv_fro": "0.8", "map": "stable_rank", "budget": "3",
                        "resize_by": "budget", "compare": "true", "demo": "true"})
        assert_clean(at)
        assert at.selectbox(key="rule").value == "sv_fro"
        assert at.number_input(key="sv_fro").value == pytest.approx(0.8)
        assert at.selectbox(key="map").value == "stable_rank"
        assert at.number_input(key="budget").value == 3
        assert at.radio(key="resize_by").value == "budget"
        assert at.toggle(key=audit.COMPARE_KEY).value is True
        at.session_state[TAB_PARAM] = "Resize"  # as a click on the tab: a rerun that draws it
        assert any("global budget of 42 directions" in md_plain(c.value) for c in at.run().caption)
        at.session_state[TAB_PARAM] = "Compare"  # as a click on the tab: a rerun that draws it
        assert len(frame_with(at.run(), "phi(k, k)")) == 14

    @pytest.mark.parametrize("raw", ["stable_rank", "stable rank"])
    def test_map_metric_shows_labels(self, raw):
        """The rank-map select box shows human labels, not column names; a link may carry the
        option (``stable_rank``, as older links do) or the label the widget writes."""
        at = open_page({"map": raw, "demo": "true"})
        assert_clean(at)
        box = at.selectbox(key="map")
        assert box.value == "stable_rank"
        assert "recommended rank" in box.options and "energy rank k(0.99)" in box.options
        assert not [o for o in box.options if "_" in o]

    @pytest.mark.parametrize("query, sentence", [
        ({"energy": "2"}, "The link sets `energy=2`, but energy share t should be at most 1; the "
                          "default 0.99 is used instead."),
        ({"rule": "magic"}, "The link sets `rule=magic`, but rank rule should be one of energy, "
                            "sv_ratio, sv_fro, sv_cumulative, entropy; the default energy is used "
                            "instead."),
        ({"budget": "-1"}, "The link sets `budget=-1`, but global budget: mean rank per module "
                           "should be at least 0; the default 4 is used instead."),
    ])
    def test_bad_value_is_one_sentence(self, query, sentence):
        """A hand-edited bad value shows exactly one error sentence."""
        at = open_page(query)
        assert not at.exception
        assert errors(at) == [sentence]

    def test_unknown_module_in_link(self):
        """A module the upload does not have is named in one sentence; the first is shown."""
        at = open_page({"module": "model.layers.9.nope", "demo": "true"})
        assert not at.exception
        assert errors(at) == ["The link sets `module=model.layers.9.nope`, but this adapter has "
                              "no such module; the first module, `model.layers.0.mlp.down_proj`, "
                              "is shown instead."]


class TestCompare:
    """Compare mode with a second upload."""

    def test_same_adapter_overlaps_fully(self):
        """An adapter compared with itself has phi(k, k) = 1 on every module."""
        files = sample_files("peft_llama_r8")
        at = upload(open_page({"compare": "true", "tab": "Compare"}), files)
        at = upload(at, files, key=audit.UPLOAD_B_KEY)
        assert_clean(at)
        table = frame_with(at, "phi(k, k)")
        assert len(table) == 14
        assert np.allclose(table["phi(k, k)"], 1.0) and np.allclose(table["phi(1, 1)"], 1.0)

    def test_phi_against_oracle(self):
        """phi(k, k) between two samples equals ||V1_k^T V2_k||^2 / k from numpy SVDs of A."""
        fa, fb = sample_files("peft_llama_r8"), sample_files("peft_llama_rank_pattern")
        at = upload(open_page({"compare": "true", "top": "3", "tab": "Compare"}), fa)
        at = upload(at, fb, key=audit.UPLOAD_B_KEY)
        assert_clean(at)
        # B is named by what was read (the uploader's chips cut file names short)
        assert ("**Adapter B:** `adapter_model.safetensors` + `adapter_config.json` · peft lora, "
                "r = 4..8, 6 modules") in [md_plain(m.value) for m in at.markdown]
        table = frame_with(at, "phi(k, k)").set_index("module")
        wa, wb = st_load(fa["adapter_model.safetensors"]), st_load(fb["adapter_model.safetensors"])
        assert len(table) == 6  # q, v, down of 2 layers are shared
        for module, row in table.iterrows():
            key = f"base_model.model.{module}.lora_A.weight"
            v1 = np.linalg.svd(wa[key].astype(np.float64), full_matrices=False)[2][:3].T
            v2 = np.linalg.svd(wb[key].astype(np.float64), full_matrices=False)[2][:3].T
            assert row["phi(k, k)"] == pytest.approx(np.sum((v1.T @ v2) ** 2) / 3, abs=1e-9)

    def test_demo_compares_with_demo_b(self):
        """With the demo and no second upload, demo B is compared and labelled synthetic."""
        at = open_page({"compare": "true", "demo": "true", "tab": "Compare"})
        assert_clean(at)
        assert any("synthetic demo B" in md_plain(i.value) for i in at.info)
        assert len(frame_with(at, "phi(k, k)")) == 14

    def test_heatmap_module_chosen_on_the_compare_tab(self):
        """The phi(i, j) heatmap's module is chosen right above it on the Compare tab (the
        caption said "the module chosen above" while the chooser was on the Spectrum tab),
        from the link too; a module the comparison lacks is one sentence."""
        at = open_page({"compare": "true", "demo": "true", "tab": "Compare",
                        "compare_module": "model.layers.1.mlp.up_proj"})
        assert_clean(at)
        box = at.selectbox(key=audit.COMPARE_MODULE_KEY)
        assert box.value == "model.layers.1.mlp.up_proj" and len(box.options) == 14
        titles = [json.loads(c.proto.spec).get("title") for c in at.get("vega_lite_chart")]
        assert any("model.layers.1.mlp.up_proj" in json.dumps(t) for t in titles)
        box.set_value("model.layers.0.self_attn.k_proj").run()
        titles = [json.dumps(json.loads(c.proto.spec).get("title")) for c in at.get("vega_lite_chart")]
        assert any("model.layers.0.self_attn.k_proj" in t for t in titles)
        assert any("chosen above the chart" in md_plain(c.value) for c in at.caption)
        at = open_page({"compare": "true", "demo": "true", "tab": "Compare", "compare_module": "nope"})
        assert not at.exception
        assert [md_plain(e.value) for e in at.error] == [
            "The link sets `compare_module=nope`, but the comparison has no such shared module; the first one is shown instead."]


@pytest.mark.skipif(not (SAMPLES / "peft_llama_r8").is_dir(), reason="samples not present")
class TestSwitchingAdapters:
    """Dropped files become the loaded adapter; the uploader empties for the next drop."""

    def test_new_file_replaces_and_clear_forgets(self):
        """PEFT pair loaded and named; a single npz dropped next replaces it (no "several
        weights files" error); Clear goes back to the empty page."""
        from ui import loaded

        at = upload(open_page(), sample_files("peft_llama_r8"))
        assert_clean(at)
        header = loaded_line(at)
        assert "adapter_model.safetensors + adapter_config.json" in header
        assert "peft lora, r = 8, 14 modules" in header
        assert at.session_state[loaded.GENERATION_KEY] == 1
        assert at.file_uploader(key=f"{audit.UPLOAD_KEY}_1").value in (None, [])
        assert len(at.dataframe[0].value) == 14

        a, b = factors(0, 24, 16, 4)
        at = upload(at, {"other.npz": npz_bytes({"layers.0.q.A": a, "layers.0.q.B": b})},
                    key=f"{audit.UPLOAD_KEY}_1")
        assert_clean(at)
        assert at.dataframe[0].value["module"].tolist() == ["layers.0.q"]
        header = loaded_line(at)
        assert "other.npz" in header and "adapter_model" not in header

        at.button(key=loaded.CLEAR_KEY).click().run()
        assert_clean(at)
        assert at.get("dataframe") == [] or len(at.dataframe) == 0
        assert any("What to upload" in md_plain(m.value) for m in at.markdown)

    def test_markdown_in_file_and_model_names_is_text(self):
        """A file name and a config's base model written as markdown (a link, an image, HTML)
        show in the "Loaded:" line as the literal text, inside code spans that they cannot
        close: no link, image or tag is left once the code spans are taken out."""
        files = sample_files("peft_llama_r8")
        name = "x`[a](http://e)`![i](http://e/i.png)<b>.safetensors"
        model = "m``[Session expired - sign in](http://e)``"
        config = json.loads(files["adapter_config.json"])
        config["base_model_name_or_path"] = model
        at = upload(open_page(), {name: files["adapter_model.safetensors"],
                                  "adapter_config.json": json.dumps(config).encode()})
        assert_clean(at)
        (line,) = [md_plain(m.value) for m in at.markdown if "Loaded:" in md_plain(m.value)]
        spans = [m.group(2) for m in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", line)]
        assert name in [s.strip() for s in spans] and model in [s.strip() for s in spans]
        outside = re.sub(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", " ", line)
        for markup in ("](", "![", "<", "http", "`"):
            assert markup not in outside, (markup, outside)
        header = loaded_line(at)
        assert name.replace("`", "") in header and model.replace("`", "") in header

    def test_config_dropped_after_weights_joins_them(self):
        """Weights first (s = 1 assumed), then adapter_config.json alone: both are read
        together and the scale is the config's alpha / r = 2."""
        files = sample_files("peft_llama_r8")
        at = upload(open_page(), {"adapter_model.safetensors": files["adapter_model.safetensors"]})
        assert any("scale s = 1 assumed" in md_plain(w.value) for w in at.warning)
        at = upload(at, {"adapter_config.json": files["adapter_config.json"]},
                    key=f"{audit.UPLOAD_KEY}_1")
        assert_clean(at)
        assert not any("assumed" in md_plain(w.value) for w in at.warning)
        assert at.dataframe[0].value["scale s"].tolist() == [pytest.approx(2.0)] * 14


@pytest.mark.skipif(not (SAMPLES / "peft_llama_r8").is_dir(), reason="samples not present")
class TestResizeThatChangesNothing:
    """At energy 0.99 every module of the r = 8 sample keeps its rank."""

    def test_says_so_and_offers_no_download(self):
        """No "0.0 %" metric and no download of the same adapter; the sentence names what
        would shrink it (a lower energy share with what it keeps, a global budget)."""
        at = upload(open_page({"tab": "Resize"}), sample_files("peft_llama_r8"))
        assert_clean(at)
        (note,) = [md_plain(i.value) for i in at.info if "Nothing to resize" in md_plain(i.value)]
        assert "energy share 0.9 keeps" in note and "global budget" in note
        assert "energy share 0.95 keeps" in note
        assert not [b for b in at.get("download_button") if "resized" in b.label.lower()
                    or b.label in ("adapter_model.safetensors", "adapter_config.json")]
        assert not [m for m in at.metric if m.label == "parameters after"]

    def test_closed_tab_resizes_nothing(self):
        """The preview resizes every module: with the Resize tab closed it is not computed (no
        metrics, no note, no download), and opening the tab shows it."""
        at = upload(open_page({"energy": "0.9"}), sample_files("peft_llama_r8"))
        assert_clean(at)
        assert not [m for m in at.metric if m.label == "parameters after"]
        assert not [b for b in at.get("download_button") if "resized" in b.label.lower()]
        at.session_state[TAB_PARAM] = "Resize"
        at.run()
        assert [m for m in at.metric if m.label == "parameters after"]

    def test_a_resize_that_shrinks_is_offered(self):
        """At energy 0.9 ranks drop: metrics and the download are back, no 'nothing' note."""
        at = upload(open_page({"energy": "0.9", "tab": "Resize"}), sample_files("peft_llama_r8"))
        assert_clean(at)
        assert not [i for i in at.info if "Nothing to resize" in md_plain(i.value)]
        assert "Download resized adapter (.zip)" in [b.label for b in at.get("download_button")]
        assert [m for m in at.metric if m.label == "parameters after"]


class TestUiHelpers:
    """The ui module's pure pieces, called directly."""

    def test_resized_files_round_trip(self):
        """The resized PEFT files re-read to the truncated spectrum of every module."""
        files = sample_files("peft_llama_r8")
        up = audit.Upload.from_files(files)
        target = resize_view.ResizeTarget(by="rule", rule="sv_ratio", value=4.0)
        out = resize_view.resized_files(up, alpha=None, scale=None, target=target)
        assert sorted(out) == ["adapter_config.json", "adapter_model.safetensors"]
        config = json.loads(out["adapter_config.json"])
        resized = load_adapter_bytes(out)
        spectra = dense_spectra(files["adapter_model.safetensors"],
                                {m.name[len("base_model.model."):]: 2.0 for m in resized.modules})
        for m in resized.modules:
            s = spectra[m.name[len("base_model.model."):]]
            k = int(np.sum(s > s[0] / 4.0))
            assert m.rank == k
            got = np.linalg.svd(m.scale * (m.B.astype(np.float64) @ m.A.astype(np.float64)),
                                compute_uv=False)[:k]
            assert np.allclose(got, s[:k], rtol=1e-4)
        assert "rank_pattern" in config

    def test_zip_holds_both_files(self):
        """The PEFT zip download holds the two files in one folder."""
        data = audit.zip_files({"a.json": b"{}", "w.safetensors": b"xy"}, folder="resized_adapter")
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.namelist() == ["resized_adapter/a.json", "resized_adapter/w.safetensors"]
            assert archive.read("resized_adapter/w.safetensors") == b"xy"

    @pytest.mark.parametrize("a, b, same", [
        ({"x.npz": b"abc"}, {"x.npz": b"abc"}, True),
        ({"x.npz": b"abc"}, {"x.npz": b"abd"}, False),
        ({"x.npz": b"abc"}, {"y.npz": b"abc"}, False),
    ])
    def test_upload_identity_follows_content(self, a, b, same):
        """Two uploads share a cache identity exactly when names and bytes agree."""
        assert (audit.Upload.from_files(a).ident == audit.Upload.from_files(b).ident) is same

    def test_identity_never_holds_the_bytes(self):
        """The cache identity is a digest: the uploaded bytes do not appear in it."""
        secret = b"SECRET-WEIGHTS-0123456789"
        up = audit.Upload.from_files({"w.npz": secret})
        assert "SECRET" not in up.ident and len(up.ident) < 64


@pytest.mark.skipif(not (SAMPLES / "families" / "lycoris_lokr.safetensors").is_file(),
                    reason="samples not present")
class TestReadingWords:
    """The headline sentence says what the numbers mean, without contradicting itself."""

    @staticmethod
    def _reading(paths: list[Path]) -> str:
        upload = audit.Upload.from_files([(p.name, p.read_bytes()) for p in paths])
        return audit.reading(audit.run_audit(upload, alpha=None, scale=None, rule="energy",
                                             value=0.99))

    def test_one_shared_rank(self):
        """Every module of peft_llama_r8 keeps its 8 directions at 0.99: "8 each", not "8 to 8"."""
        folder = SAMPLES / "peft_llama_r8"
        text = self._reading(sorted(folder.iterdir()))
        assert "the modules need rank **8** each, against the stored r = 8:" in text
        assert " to **8**" not in text and "larger" not in text

    def test_dora_without_base_names_the_directional_part(self):
        """A DoRA file read without its base: the energy a resize keeps is the directional
        part's (what the spectra are of), never called the update's."""
        folder = SAMPLES / "families" / "peft_dora"
        text = self._reading(sorted(p for p in folder.iterdir() if p.name.startswith("adapter_")))
        assert "of the directional part's energy (Σσ²)" in text and "the update's energy" not in text
        plain = self._reading(sorted((SAMPLES / "peft_llama_r8").iterdir()))
        assert "of the update's energy (Σσ²)" in plain

    def test_resize_that_would_grow(self):
        """A LoKr's recommended LoRA ranks cost more numbers than its own factors: said so."""
        text = self._reading([SAMPLES / "families" / "lycoris_lokr.safetensors"])
        ratio = float(re.search(r"\*\*([\d.]+)x\*\* the file's", text).group(1))
        assert ratio > 1
        assert text.endswith("the file's own factors are the more compact form, so a resize to these "
                             "ranks would not shrink it.")

    def test_lokr_full_halves_assume_nothing(self):
        """Every module of the LyCORIS LoKr sample has an alpha entry; its both-full modules
        use scale 1 by LyCORIS's rule: no "No alpha found ... scale 1 assumed" warning."""
        from safetensors.numpy import load_file
        path = SAMPLES / "families" / "lycoris_lokr.safetensors"
        tensors = load_file(path)
        modules = {k.split(".")[0] for k in tensors}
        assert all(f"{m}.alpha" in tensors for m in modules)  # the file states every alpha
        detected = audit.detect(audit.Upload.from_files([(path.name, path.read_bytes())]))
        assert detected.assumed is None
        at = upload(open_page(), {path.name: path.read_bytes()})
        assert_clean(at)
        assert not [md_plain(w.value) for w in at.warning if "assumed" in md_plain(w.value)]


@pytest.mark.parametrize("example", ["peft_dora", "peft_lokr", "peft_adalora"])
def test_engine_phrases_in_the_pages_notation(example):
    """Phrases the engine writes in ASCII (spectrum_of: 's*B@A', 'sum sigma^2') reach the page
    in its notation (s·B·A, Σσ²) on every tab that shows them."""
    import re

    bad = re.compile(r"s\*B@|s\*kron|\bsum sigma|\bsigma_i\b|\bsigma\^2|^[a-z]+ modules are written")
    for tab in ("Per module", "Spectrum", "Resize"):
        at = open_page({"example": example, "tab": tab})
        assert_clean(at)
        texts = [md_plain(e.value) for kind in ("markdown", "caption", "warning", "info")
                 for e in getattr(at, kind)]
        assert texts and not [t for t in texts if bad.search(t)], (tab, [t for t in texts if bad.search(t)])
