"""The Adapter audit page's "Rank over training" section under AppTest, and its ui helpers.

Expected numbers come from dense float64 SVDs of each checkpoint's ``scale * B @ A`` computed
here (the slow exact oracle), never from the engine that the page calls.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from streamlit.testing.v1 import AppTest

from ui import series
from ui.common import md_plain
import testkit

RUN = testkit.RUN
needs_run = pytest.mark.skipif(not RUN.is_dir(), reason=f"checkpoint run not found at {RUN}")
PAGE = "pages/3_Adapter_audit.py"
STEPS = [15, 30, 45, 60, 75, 90]


def open_page(query: dict | None = None) -> AppTest:
    """Run the home script, switch to the audit page on its Rank over training tab (with
    ``query`` in the URL) and run it: the section's inputs are drawn once its tab is opened."""
    return testkit.open_page(PAGE, {"tab": series.TAB, **(query or {})}, timeout=90)


run_zip = testkit.zip_folder


def upload(at: AppTest, files: dict[str, bytes]) -> AppTest:
    at.file_uploader(key=series.UPLOAD_KEY).set_value(
        [(name, data, "application/octet-stream") for name, data in files.items()])
    return at.run()


def series_frame(at: AppTest):
    frames = [d.value for d in at.dataframe if "phi with last" in d.value.columns]
    assert len(frames) == 1, [list(d.value.columns) for d in at.dataframe]
    return frames[0]


def dense_directions(step: int) -> int:
    """Oracle: sum over modules of the smallest k keeping 0.99 of sum sigma^2 of dense scale*B@A."""
    folder = RUN / f"checkpoint-{step}"
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    tensors = load_file(folder / "adapter_model.safetensors")
    total = 0
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            b = tensors[key.replace("lora_A", "lora_B")]
            s = np.linalg.svd(scale * b.astype(np.float64) @ a.astype(np.float64), compute_uv=False)
            e = np.cumsum(s * s) / np.sum(s * s)
            total += int(np.argmax(e >= 0.99 - 1e-12) + 1)
    return total


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in [*at.get("arrow_vega_lite_chart"), *at.get("vega_lite_chart")]]


def titles(at: AppTest) -> list[str]:
    out = []
    for spec in charts(at):
        title = spec.get("title")
        out.append(title if isinstance(title, str) else (title or {}).get("text", ""))
    return out


class TestSeriesSection:
    """The section on the real page."""

    def test_empty_state(self):
        """Before an upload the section says what to upload and offers the demo; no error."""
        at = open_page()
        assert not at.exception and not at.error
        text = " ".join(md_plain(m.value) for m in at.markdown)
        assert "checkpoint-<step>" in text and ".zip" in text
        assert at.toggle(key=series.DEMO_KEY).value is False

    @needs_run
    def test_real_run_numbers_equal_dense_oracle(self):
        """The uploaded real run: one row per checkpoint whose directions equal dense SVDs."""
        at = upload(open_page(), {"run.zip": run_zip()})
        assert not at.exception and not at.error, [md_plain(e.value) for e in at.error]
        frame = series_frame(at)
        assert list(frame["step"]) == STEPS
        assert list(frame["directions"]) == [dense_directions(s) for s in STEPS]
        assert frame["phi with last"].iloc[-1] == pytest.approx(1.0)
        names = titles(at)
        assert "Recommended rank over training steps" in names
        assert "Subspace similarity of A over training" in names
        assert any("at step 90" in t for t in names)
        text = " ".join(md_plain(m.value) for m in at.markdown)
        assert "Over 6 checkpoints (steps 15 to 90)" in text

    @needs_run
    def test_settings_from_the_url(self):
        """Metric, step, module and top come from the link and change what is drawn."""
        at = open_page({"series_metric": "stable_rank", "series_step": "45", "series_top": "2",
                        "series_module": "model.layers.0.self_attn.q_proj"})
        at = upload(at, {"run.zip": run_zip()})
        assert not at.exception and not at.error, [md_plain(e.value) for e in at.error]
        assert at.select_slider(key=series.STEP_KEY).value == "45"
        assert at.selectbox(key=series.MODULE_KEY).value == "model.layers.0.self_attn.q_proj"
        names = titles(at)
        assert "Stable rank over training steps" in names
        assert any("at step 45" in t for t in names)
        phi = next(s for s in charts(at) if s.get("title") == "Subspace similarity of A over training")
        assert phi["layer"][0]["encoding"]["y"]["title"] == "phi(k, k), k = min(2, r)"

    @needs_run
    def test_bad_url_values_are_reported(self):
        """A step or module the run lacks is one sentence each, and the defaults are shown."""
        at = upload(open_page({"series_step": "7", "series_module": "nope"}), {"run.zip": run_zip()})
        assert not at.exception
        text = " ".join(md_plain(e.value) for e in at.error)
        assert "`series_step=7`, but this run has no such step" in text
        assert "`series_module=nope`, but this run has no such module" in text

    def test_bad_zip_is_one_sentence_and_page_goes_on(self):
        """A broken upload is one error line; the rest of the page still renders."""
        at = upload(open_page(), {"run.zip": b"PK\x03\x04 broken"})
        assert not at.exception
        assert [md_plain(e.value) for e in at.error] == ["run.zip is not a valid .zip archive (File is not a zip file)"]

    def test_demo_run(self):
        """The synthetic demo run settles at step 150 (down_proj's 6 directions are all in by then)."""
        at = open_page()
        at.toggle(key=series.DEMO_KEY).set_value(True).run()
        assert not at.exception and not at.error
        assert any("Synthetic demo run" in md_plain(c.value) for c in at.caption)
        frame = series_frame(at)
        assert list(frame["step"]) == [50, 100, 150, 200, 250, 300]
        assert list(frame["directions"])[-1] == 2 * (2 + 4 + 6)
        text = " ".join(md_plain(m.value) for m in at.markdown)
        assert "settled at step 150" in text
        # no literal "None": the last checkpoint has no next one, and its cell says "-"
        assert not frame.isna().any().any()
        assert frame["phi with next"].tolist()[-1] == "-"
        assert float(frame["phi with next"].tolist()[0]) > 0


class TestHelpers:
    """The section's pure helpers."""

    def test_reading_single_checkpoint(self):
        """One checkpoint is said to be one, with a hint to add more."""
        from lorarank.checkpoints import checkpoints_from_files
        from lorarank.series import audit_series

        data = series.demo_files()
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = [n for n in z.namelist() if n.startswith("demo-run/checkpoint-50/")]
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as out:
                for n in names:
                    out.writestr(n, z.read(n))
        report = audit_series(checkpoints_from_files([("one.zip", buf.getvalue())]))
        assert series.reading(report).startswith("One checkpoint (step 50)")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """tests/hubserver.py on loopback, the real huggingface_hub client pointed at it."""
    pytest.importorskip("huggingface_hub")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hubserver import FakeHub, point_client_at

    with FakeHub() as server:
        point_client_at(server.url, monkeypatch)
        monkeypatch.setenv("LORARANK_HF_CACHE", str(tmp_path / "cache"))
        yield server


@needs_run
class TestHubRun:
    """A run on the Hub (tests/hubserver.py through the real huggingface_hub client)."""

    def test_revisions_from_the_link_are_pinned_and_equal_dense_svds(self, hub):
        """Revisions given out of order: ordered by step, labelled, pinned; numbers = dense SVDs."""
        tags = "step-45,step-15,step-90,step-30,step-60,step-75"
        at = open_page({series.HUB_REPO_KEY: "lorarank-test/run-revisions",
                        series.HUB_REVISIONS_KEY: tags})
        assert not at.exception and not at.error, [md_plain(e.value) for e in at.error]
        frame = series_frame(at)
        assert list(frame["step"]) == STEPS
        assert list(frame["checkpoint"]) == [f"step-{s}" for s in STEPS]
        assert list(frame["directions"]) == [dense_directions(s) for s in STEPS]
        by_tag = {snap.refs[0]: snap.sha for snap in hub.repos["lorarank-test/run-revisions"]}
        assert at.query_params[series.HUB_COMMITS_KEY] == ",".join(by_tag[t] for t in tags.split(","))
        # The pinned link, opened again, shows the same numbers.
        again = open_page({key: at.query_params[key] for key in series.HUB_KEYS if key in at.query_params})
        assert not again.exception and not again.error
        assert series_frame(again).equals(frame)

    def test_checkpoint_folders_of_one_repo(self, hub):
        at = open_page({series.HUB_REPO_KEY: "lorarank-test/run-checkpoints",
                        series.HUB_SUBFOLDER_KEY: "outputs"})
        assert not at.exception and not at.error, [md_plain(e.value) for e in at.error]
        frame = series_frame(at)
        assert list(frame["checkpoint"]) == [f"checkpoint-{s}" for s in STEPS]
        assert list(frame["directions"]) == [dense_directions(s) for s in STEPS]
        assert at.query_params[series.HUB_COMMITS_KEY] == hub.repos["lorarank-test/run-checkpoints"].sha

    def test_typed_run_updates_the_link_and_errors_are_one_sentence(self, hub):
        at = open_page()
        at.text_input(key="audit_series_hub_repo").set_value("lorarank-test/run-revisions")
        at.text_input(key="audit_series_hub_revisions").set_value("step-15, nope")
        at.button(key="FormSubmitter:audit_series_hub_form-Load").click()
        at = at.run()
        assert not at.exception
        errors = [md_plain(e.value) for e in at.error]
        assert len(errors) == 1 and "has no revision 'nope'" in errors[0], errors
        assert at.query_params[series.HUB_REVISIONS_KEY] == "step-15,nope"
