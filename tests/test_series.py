"""Tests of lorarank.series: checkpoints of one run audited over steps, against dense oracles."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save

from lorarank.adapters import Adapter, LoraModule, adapter_files
from lorarank.cli import main
from lorarank.documents import json_text
from lorarank.errors import AdapterError, ConfigError
from lorarank.checkpoints import (
    Checkpoint,
    Run,
    checkpoints_from_files,
    find_checkpoints,
    step_from_name,
    step_from_trainer_state,
)
from lorarank.series import audit_series, settled_index, top_right_vectors, write_series_json

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
RUN = SAMPLES / "checkpoints" / "run"
needs_run = pytest.mark.skipif(not RUN.is_dir(), reason=f"checkpoint run not found at {RUN}")
RUN_STEPS = [15, 30, 45, 60, 75, 90]


# ------------------------------------------------------------------------------------ oracles
def dense_checkpoint(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Oracle input: module -> (dense float64 scale * B @ A, A) read with safetensors + json only."""
    config = json.loads((folder / "adapter_config.json").read_text())
    assert not config["rank_pattern"] and not config["alpha_pattern"] and not config["use_rslora"]
    scale = config["lora_alpha"] / config["r"]
    tensors = load_file(folder / "adapter_model.safetensors")
    out = {}
    for key in tensors:
        if key.endswith(".lora_A.weight"):
            name = key[: -len(".lora_A.weight")]
            A = tensors[key].astype(np.float64)
            B = tensors[name + ".lora_B.weight"].astype(np.float64)
            out[name] = (scale * B @ A, A)
    return out


def dense_phi(A1: np.ndarray, A2: np.ndarray, top: int) -> float:
    """Oracle: phi(k, k) = ||V1_k^T V2_k||_F^2 / k from full dense SVDs of the two A factors."""
    v1 = np.linalg.svd(A1)[2].T
    v2 = np.linalg.svd(A2)[2].T
    k = min(top, min(A1.shape), min(A2.shape))
    return float(np.linalg.norm(v1[:, :k].T @ v2[:, :k], "fro") ** 2 / k)


def hand_energy_rank(s: np.ndarray, t: float) -> int:
    e = s**2
    for k in range(1, s.size + 1):
        if e[:k].sum() >= t * e.sum() * (1 - 1e-12):
            return k
    return s.size


def hand_settled(steps, values) -> int:
    """Oracle: the earliest step whose value, and every later one, equals the last value."""
    for i in range(len(values)):
        if all(v == values[-1] for v in values[i:]):
            return steps[i]
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------- helpers
def synthetic(specs, *, seed=0, fmt="peft") -> Adapter:
    """specs: [(name, d_out, d_in, r)] with random factors."""
    rng = np.random.default_rng(seed)
    modules = [LoraModule(name, rng.standard_normal((r, d_in)), rng.standard_normal((d_out, r)), 1.0,
                          alpha=float(r)) for name, d_out, d_in, r in specs]
    return Adapter(format=fmt, modules=modules, scaling="test", source="synthetic")


def in_memory(step: int, adapter: Adapter, calls: list | None = None) -> Checkpoint:
    def load():
        if calls is not None:
            calls.append(step)
        return adapter
    return Checkpoint(step, f"mem-{step}", load)


def zip_of(folder: Path, *, prefix: str = "run", extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, f"{prefix}/{path.relative_to(folder).as_posix()}")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return buf.getvalue()


# ------------------------------------------------------------------------- phi's subspaces
class TestTopRightVectors:
    """The series' fast top-k right singular vectors of A against full dense SVDs."""

    @staticmethod
    def projector_gap(got: np.ndarray, A: np.ndarray, j: int) -> float:
        """||P_got - P_svd||_2 on the first j columns, the sine of the largest principal angle:
        0 when the two spans are the same."""
        v = np.linalg.svd(A.astype(np.float64), full_matrices=False)[2][:j].T
        g = got[:, :j]
        return float(np.linalg.norm(g - v @ (v.T @ g), 2))  # accurate for small angles

    @pytest.mark.parametrize("r, d_in, decay", [
        (16, 4096, 1.3), (12, 40, 10.0), (8, 128, 90.0), (4, 300, 1.5), (20, 12, 5.0), (1, 64, 1.0),
    ])
    def test_spans_equal_the_svds(self, r, d_in, decay):
        """For every j <= k the first j columns span what the dense SVD's do, orthonormally
        (distinct singular values: with equal ones the span is not determined by A)."""
        rng = np.random.default_rng(r * d_in)
        q = min(r, d_in)
        u = np.linalg.qr(rng.standard_normal((r, q)))[0]
        v = np.linalg.qr(rng.standard_normal((d_in, q)))[0]
        A = ((u * np.geomspace(1.0, 1.0 / decay, q)) @ v.T).astype(np.float32)
        got = top_right_vectors(A, 4)
        k = min(4, q)
        assert got.shape == (d_in, k)
        np.testing.assert_allclose(got.T @ got, np.eye(k), atol=1e-12)
        for j in range(1, k + 1):
            assert self.projector_gap(got, A, j) < 1e-10

    @pytest.mark.parametrize("values", [[1.0, 1e-3, 1e-5, 1e-7], [1.0, 1.0, 0.0, 0.0], [1e-160, 5e-161, 1e-161, 1e-162]])
    def test_ill_conditioned_or_rank_deficient_take_the_svd_route(self, values):
        """Below sigma_k / sigma_1 = 1e-2 the exact QR + SVD route is used: same columns."""
        rng = np.random.default_rng(1)
        u = np.linalg.qr(rng.standard_normal((4, 4)))[0]
        v = np.linalg.qr(rng.standard_normal((50, 4)))[0]
        A = (u * np.array(values)) @ v.T
        got = top_right_vectors(A, 4)
        from lorarank.compare import right_singular_vectors

        if values[3] >= values[0] * 1e-2:
            assert self.projector_gap(got, A, 4) < 1e-10
        else:
            np.testing.assert_array_equal(got, right_singular_vectors(A)[:, :4])

    def test_zero_factor(self):
        assert top_right_vectors(np.zeros((4, 10)), 4).shape == (10, 4)


# ------------------------------------------------------------------------------------- steps
class TestSteps:
    """Steps come from folder / file names and trainer_state.json."""

    @pytest.mark.parametrize("name, step", [
        ("checkpoint-500", 500), ("out/run/checkpoint-15", 15), ("mylora-000005.safetensors", 5),
        ("mylora-step00001000.safetensors", 1000), ("adapter_model.safetensors", None),
        ("lora_r16.safetensors", None), ("checkpoint-final", None), ("checkpoint-12a", None)])
    def test_step_from_name(self, name, step):
        """Transformers' checkpoint-<step> and kohya's numbered saves; nothing else guesses a step."""
        assert step_from_name(name) == step

    def test_trainer_state(self):
        """global_step is read; a bad file is one AdapterError sentence naming it."""
        assert step_from_trainer_state(b'{"global_step": 45, "log_history": []}') == 45
        with pytest.raises(AdapterError, match="x/trainer_state.json has no whole-number global_step"):
            step_from_trainer_state(b'{"global_step": "45"}', source="x/trainer_state.json")
        with pytest.raises(AdapterError, match="is not valid JSON"):
            step_from_trainer_state(b"{", source="t")

    @pytest.mark.parametrize("values, index", [([], 0), ([3], 0), ([3, 3, 3], 0), ([1, 2, 2], 1),
                                               ([2, 1, 2], 2), ([5, 4, 3], 2)])
    def test_settled_index(self, values, index):
        """The first index from which the values equal the last one."""
        assert settled_index(values) == index


# --------------------------------------------------------------------------- the real run
@pytest.fixture(scope="module")
def result():
    """The series audit of the real run (shared by TestRealRun)."""
    return audit_series(find_checkpoints(RUN))


@pytest.fixture(scope="module")
def oracle():
    """Dense float64 factors of every checkpoint of the real run."""
    return {step: dense_checkpoint(RUN / f"checkpoint-{step}") for step in RUN_STEPS}


@needs_run
class TestRealRun:
    """The six real PEFT checkpoints of samples/checkpoints/run against dense float64 oracles."""

    def test_steps_and_paths(self, result):
        """Six checkpoints in step order, each with its folder."""
        assert result.steps == RUN_STEPS
        assert [Path(p).name for p in result.paths] == [f"checkpoint-{s}" for s in RUN_STEPS]
        assert result.notes == []

    def test_singular_values_and_metrics(self, result, oracle):
        """Every sigma, energy rank, stable rank and recommended rank equals the dense SVD's."""
        names = set(oracle[90])
        assert {m.name for m in result.modules} == names
        for m in result.modules:
            for i, step in enumerate(RUN_STEPS):
                dense = np.linalg.svd(oracle[step][m.name][0], compute_uv=False)[: m.rank[i]]
                np.testing.assert_allclose(m.singular_values[i], dense, rtol=1e-10, atol=1e-12)
                for t in ("0.9", "0.95", "0.99"):
                    assert m.energy_rank[i][t] == hand_energy_rank(dense, float(t))
                assert m.stable_rank[i] == pytest.approx((dense**2).sum() / dense[0] ** 2, rel=1e-10)
                assert m.recommended_rank[i] == hand_energy_rank(dense, 0.99)

    def test_phi(self, result, oracle):
        """phi_next and phi_last equal ||V1_k^T V2_k||^2 / k from dense SVDs of the A factors."""
        for m in result.modules:
            for i, step in enumerate(RUN_STEPS):
                a = oracle[step][m.name][1]
                assert m.phi_last[i] == pytest.approx(dense_phi(a, oracle[90][m.name][1], 4), abs=1e-10)
                if i + 1 < len(RUN_STEPS):
                    nxt = oracle[RUN_STEPS[i + 1]][m.name][1]
                    assert m.phi_next[i] == pytest.approx(dense_phi(a, nxt, 4), abs=1e-10)
            assert m.phi_next[-1] is None
            assert m.phi_last[-1] == pytest.approx(1.0, abs=1e-12)
            assert 0.0 < m.chance < 1.0

    def test_phi_top_knob(self, oracle):
        """top=1 gives phi(1, 1); top above r gives phi(r, r)."""
        for top in (1, 12, 50):
            result = audit_series(find_checkpoints(RUN), top=top)
            m = result.modules[0]
            assert m.phi_last[0] == pytest.approx(
                dense_phi(oracle[15][m.name][1], oracle[90][m.name][1], top), abs=1e-10)

    def test_settled_step(self, result):
        """Per module and overall: the step after which the recommended rank stopped changing."""
        for m in result.modules:
            assert m.settled_step == hand_settled(RUN_STEPS, m.recommended_rank)
        assert result.settled_step == max(m.settled_step for m in result.modules)

    def test_whole_adapter_rows(self, result):
        """The per-step adapter row is the sum / mean of its modules' numbers."""
        for i, row in enumerate(result.adapter):
            assert row["step"] == RUN_STEPS[i]
            assert row["directions"] == sum(m.recommended_rank[i] for m in result.modules)
            assert row["stable_rank_mean"] == pytest.approx(np.mean([m.stable_rank[i] for m in result.modules]))
            assert row["energy"] == pytest.approx(sum((m.singular_values[i] ** 2).sum() for m in result.modules))
        assert result.adapter[-1]["phi_next_mean"] is None

    def test_json_contract(self, result):
        """PRODUCT.md: checkpoints with step, path, modules as in audit; series modules and settled_step."""
        doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
        assert [c["step"] for c in doc["checkpoints"]] == RUN_STEPS
        first = doc["checkpoints"][0]
        assert {"step", "path", "modules"} <= set(first)
        assert set(first["modules"][0]) >= {"name", "shape", "rank", "alpha", "scale", "singular_values",
                                            "energy_rank", "stable_rank", "entropy_rank", "recommended_rank"}
        series = doc["series"]
        assert series["settled_step"] == result.settled_step
        for m in series["modules"]:
            assert set(m) >= {"name", "steps", "energy_rank", "stable_rank", "phi_next", "phi_last"}
            assert m["steps"] == RUN_STEPS and len(m["phi_next"]) == 6 and m["phi_next"][-1] is None

    def test_table(self, result):
        """One row per (step, module), with the numbers of the series."""
        rows = result.table()
        assert len(rows) == 6 * len(result.modules)
        row = next(r for r in rows if r["step"] == 45 and r["module"] == result.modules[2].name)
        m = result.modules[2]
        assert row["recommended_rank"] == m.recommended_rank[2] and row["phi_last"] == m.phi_last[2]
        assert row["sigma_1"] == m.singular_values[2][0] and row["sigma_12"] == m.singular_values[2][11]

    def test_cli_json(self, result, capsys):
        """`audit --series DIR --json` prints the engine's document, byte for byte as one
        `json.dumps` of it (though it is written checkpoint by checkpoint)."""
        assert main(["audit", "--series", str(RUN), "--json"]) == 0
        assert capsys.readouterr().out == json_text(result.to_dict())

    def test_cli_text(self, capsys):
        """The text report names every step, every module and the settled step."""
        assert main(["audit", "--series", str(RUN)]) == 0
        out = capsys.readouterr().out
        assert "6 checkpoints (steps 15, 30, 45, 60, 75, 90)" in out
        assert "model.layers.1.self_attn.v_proj" in out and "settled at step" in out

    @pytest.mark.parametrize("flag, value, scale", [("--alpha", 8.0, 8.0 / 12), ("--scale", 0.5, 0.5)])
    def test_cli_alpha_and_scale(self, oracle, capsys, flag, value, scale):
        """`--alpha` / `--scale` reach every local checkpoint: sigma of the dense (new s) * B @ A."""
        assert main(["audit", "--series", str(RUN), flag, str(value), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        for step, checkpoint in zip(RUN_STEPS, doc["checkpoints"], strict=True):
            for m in checkpoint["modules"]:
                assert m["scale"] == pytest.approx(scale, rel=1e-12)
                dense = oracle[step][m["name"]][0] * (scale / 2.0)  # the config's s = 24 / 12
                np.testing.assert_allclose(m["singular_values"], np.linalg.svd(dense, compute_uv=False)[:12],
                                           rtol=1e-10, atol=1e-12)

    def test_cli_alpha_and_scale_together(self, capsys):
        """Both overrides at once are one error line, exit 2, before anything is read."""
        assert main(["audit", "--series", str(RUN), "--alpha", "8", "--scale", "0.5"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["lorarank: error: give `alpha` or `scale`, not both"]

    def test_zip_upload_equals_folder(self, result):
        """A .zip of the run folder (as a browser uploads it) gives the same numbers as the folder."""
        data = zip_of(RUN, extra={"__MACOSX/run/checkpoint-15/._adapter_model.safetensors": b"junk"})
        run = checkpoints_from_files([("run.zip", data)])
        assert [c.step for c in run.checkpoints] == RUN_STEPS
        assert [c.path for c in run.checkpoints] == [f"run/checkpoint-{s}" for s in RUN_STEPS]
        zipped = audit_series(run)
        a, b = zipped.to_dict(), result.to_dict()
        for c in (*a["checkpoints"], *b["checkpoints"]):
            c.pop("path")
            c["summary"].pop("source")
        assert a == b

    def test_folder_extras(self, tmp_path):
        """The trainer's final save at the top is left out with a note; a step from trainer_state wins."""
        run = tmp_path / "run"
        shutil.copytree(RUN, run)
        shutil.copy(RUN / "checkpoint-90" / "adapter_model.safetensors", run / "adapter_model.safetensors")
        (run / "checkpoint-30" / "trainer_state.json").write_text('{"global_step": 31}')
        found = find_checkpoints(run)
        assert [c.step for c in found.checkpoints] == [15, 31, 45, 60, 75, 90]
        assert any("adapter_model.safetensors at the top of run left out" in n for n in found.notes)
        assert any("checkpoint-30: trainer_state.json says global_step 31" in n for n in found.notes)

    def test_damaged_checkpoint_names_it(self, tmp_path):
        """A checkpoint that cannot be read is one AdapterError naming that checkpoint."""
        run = tmp_path / "run"
        shutil.copytree(RUN, run)
        weights = run / "checkpoint-45" / "adapter_model.safetensors"
        weights.chmod(0o644)
        weights.write_bytes(weights.read_bytes()[:1000])
        with pytest.raises(AdapterError, match=r"checkpoint-45: "):
            audit_series(find_checkpoints(run))
        assert main(["audit", "--series", str(run)]) == 2


# -------------------------------------------------------------------------- streaming, mixed
class TestStreaming:
    """Each checkpoint is read once, the last one first; mixed checkpoints compare what they share."""

    def test_each_read_once_last_first(self):
        """Reads: the last step, then the others in order; the last is not read again."""
        calls = []
        adapters = [synthetic([("m.0.q", 12, 10, 4)], seed=s) for s in range(5)]
        checkpoints = [in_memory(step, a, calls) for step, a in zip([40, 10, 30, 20, 50], adapters)]
        audit_series(checkpoints)
        assert calls == [50, 10, 20, 30, 40]

    def test_single_checkpoint(self):
        """One checkpoint: phi_next None, phi_last 1, settled at its step."""
        result = audit_series([in_memory(7, synthetic([("m.0.q", 12, 10, 4)]))])
        m = result.modules[0]
        assert m.phi_next == [None] and m.phi_last == [pytest.approx(1.0)] and result.settled_step == 7

    def test_mixed_ranks_and_modules(self):
        """Shared modules are compared (ranks may differ); the rest are named in notes."""
        a = synthetic([("m.0.q", 12, 10, 4), ("m.0.v", 8, 10, 4), ("m.0.k", 8, 10, 2)], seed=1)
        b = synthetic([("m.0.q", 12, 10, 6), ("m.0.v", 8, 10, 4), ("m.0.k", 9, 10, 2)], seed=2)
        c = synthetic([("m.0.q", 12, 10, 6), ("m.0.v", 8, 10, 4), ("m.0.k", 8, 10, 2), ("m.1.o", 5, 5, 2)],
                      seed=3)
        result = audit_series([in_memory(1, a), in_memory(2, b), in_memory(3, c)])
        assert [m.name for m in result.modules] == ["m.0.q", "m.0.v"]
        q = result.modules[0]
        assert q.rank == [4, 6, 6]
        assert q.phi_next[0] == pytest.approx(dense_phi(a.modules[0].A, b.modules[0].A, 4), abs=1e-10)
        assert q.phi_last[0] == pytest.approx(dense_phi(a.modules[0].A, c.modules[0].A, 4), abs=1e-10)
        text = " ".join(result.notes)
        assert "not in every checkpoint and are left out of the series (each checkpoint's own audit " \
               "still lists them): m.1.o" in text
        assert "change shape between checkpoints and are left out of the series: m.0.k" in text
        assert "change their stored rank r between checkpoints" in text and "m.0.q" in text
        assert len(result.reports[2].modules) == 4

    def test_streamed_json_is_the_document(self):
        """write_series_json writes, checkpoint by checkpoint, the bytes of one json.dumps of
        to_dict(): labels (some checkpoints unlabelled), mixed modules, None phi included;
        each audit reaches on_checkpoint in step order and none is kept."""
        a = synthetic([("m.0.q", 12, 10, 4), ("m.0.v", 8, 10, 4)], seed=1)
        b = synthetic([("m.0.q", 12, 10, 6), ("m.0.v", 8, 10, 4), ("m.1.o", 5, 5, 2)], seed=2)
        run = [Checkpoint(20, "mem-20", lambda: b), Checkpoint(10, "mem-10", lambda: a, label="main~1")]
        whole = audit_series(run)
        out = io.StringIO()
        streamed = write_series_json(run, out)
        assert out.getvalue() == json_text(whole.to_dict())
        assert json.loads(out.getvalue())["series"]["labels"] == ["main~1", "20"]
        assert streamed.packed == () and [m.to_dict() for m in streamed.modules] == [m.to_dict() for m in whole.modules]
        with pytest.raises(ConfigError, match="kept no per-checkpoint audits"):
            streamed.report_at(10)
        seen = []
        audit_series(run, keep_reports=False, on_checkpoint=lambda i, c, r: seen.append((i, c.step, len(r.modules))))
        assert seen == [(0, 10, 2), (1, 20, 3)]

    def test_progress(self):
        """progress(done, n) after every checkpoint."""
        seen = []
        audit_series([in_memory(s, synthetic([("m.0.q", 6, 6, 2)], seed=s)) for s in (1, 2, 3)],
                     progress=lambda d, n: seen.append((d, n)))
        assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]

    @pytest.mark.parametrize("kwargs, message", [
        ({"top": 0}, "`top` should be at least 1, got 0"),
        ({"rule": "best"}, "`rule` should be one of"),
        ({"value": 2.0}, "`value` should be at most 1, got 2"),
    ])
    def test_bad_knobs(self, kwargs, message):
        """Knobs are checked at the boundary, naming the bad value."""
        with pytest.raises(ConfigError, match=message):
            audit_series([in_memory(1, synthetic([("m.0.q", 6, 6, 2)]))], **kwargs)

    def test_duplicate_and_empty(self):
        """Two checkpoints at one step, or none at all, are ConfigErrors."""
        ad = synthetic([("m.0.q", 6, 6, 2)])
        with pytest.raises(ConfigError, match="two checkpoints have step 5: mem-5 and mem-5"):
            audit_series([in_memory(5, ad), in_memory(5, ad)])
        with pytest.raises(ConfigError, match="at least one checkpoint"):
            audit_series(Run([]))


# ---------------------------------------------------------------------------------- uploads
def kohya_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return save({"lora_unet_down_0_proj.lora_down.weight": rng.standard_normal((4, 16)).astype(np.float32),
                 "lora_unet_down_0_proj.lora_up.weight": rng.standard_normal((8, 4)).astype(np.float32),
                 "lora_unet_down_0_proj.alpha": np.array(2.0, dtype=np.float32)})


class TestUploads:
    """Uploaded files: a zip of the run folder, or numbered weights files; bounded and read lazily."""

    def test_kohya_numbered_files(self):
        """kohya per-epoch saves are checkpoints ordered by their number; the unnumbered one is noted."""
        files = [("lora-000002.safetensors", kohya_bytes(2)), ("lora-000001.safetensors", kohya_bytes(1)),
                 ("lora.safetensors", kohya_bytes(3))]
        run = checkpoints_from_files(files)
        assert [c.step for c in run.checkpoints] == [1, 2]
        assert "lora.safetensors left out" in run.notes[0]
        result = audit_series(run)
        assert result.reports[0].modules[0].scale == pytest.approx(0.5)  # alpha 2 / r 4

    def test_overrides_reach_uploads(self):
        """alpha / scale given with uploaded files apply to every checkpoint (zip or numbered files)."""
        files = [("lora-000002.safetensors", kohya_bytes(2)), ("lora-000001.safetensors", kohya_bytes(1))]
        plain = audit_series(checkpoints_from_files(files))
        scaled = audit_series(checkpoints_from_files(files, scale=3.0))
        by_alpha = audit_series(checkpoints_from_files(files, alpha=8.0))
        for a, b, c in zip(plain.reports, scaled.reports, by_alpha.reports, strict=True):
            assert b.modules[0].scale == 3.0 and c.modules[0].scale == pytest.approx(2.0)  # 8 / r 4
            np.testing.assert_allclose(b.modules[0].singular_values, 6 * a.modules[0].singular_values, rtol=1e-12)
        zipped = checkpoints_from_files([("run.zip", zip_of(RUN))], alpha=6.0) if RUN.is_dir() else None
        if zipped is not None:
            assert audit_series(zipped).reports[0].modules[0].scale == pytest.approx(0.5)  # 6 / r 12
        with pytest.raises(ConfigError, match="not both"):
            checkpoints_from_files(files, alpha=1.0, scale=1.0)
        with pytest.raises(ConfigError, match="alpha"):
            find_checkpoints(RUN, alpha=-1.0)

    def test_zip_of_peft_checkpoints(self):
        """PEFT checkpoints written by the engine, zipped: steps from trainer_state.json."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for step in (100, 200):
                for name, data in adapter_files(synthetic([("base_model.model.layers.0.q_proj", 8, 6, 2)],
                                                          seed=step)).items():
                    z.writestr(f"out/checkpoint-{step}/{name}", data)
                z.writestr(f"out/checkpoint-{step}/trainer_state.json", json.dumps({"global_step": step}))
                z.writestr(f"out/checkpoint-{step}/optimizer.pt", b"not read")
        run = checkpoints_from_files({"out.zip": buf.getvalue()})
        assert [(c.step, c.path) for c in run.checkpoints] == [(100, "out/checkpoint-100"),
                                                               (200, "out/checkpoint-200")]
        assert audit_series(run).modules[0].name == "base_model.model.layers.0.q_proj"

    def test_zip_bomb_refused(self):
        """A zip declaring far more than 16x its size (plus 64 MiB) is refused before inflating."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("run/checkpoint-1/adapter_model.safetensors", b"\0" * (80 * 2**20))
        with pytest.raises(AdapterError, match=r"would unpack to 80 MiB from 0.1 MiB \(more than 16x its size plus 64 MiB\)"):
            checkpoints_from_files([("bomb.zip", buf.getvalue())])

    @pytest.mark.parametrize("files, message", [
        ([], "no files given"),
        ([("run.zip", b"PK\x03\x04 not really")], "run.zip is not a valid .zip archive"),
        ([("run.zip", b""), ("x-000001.safetensors", b"")], "give one .zip of the run folder"),
        ([("adapter_model.safetensors", b"x")], "holds no checkpoint"),
    ])
    def test_bad_uploads(self, files, message):
        """Bad uploads are one AdapterError sentence."""
        with pytest.raises(AdapterError, match=message):
            checkpoints_from_files(files)

    def test_bad_member_is_named_when_read(self):
        """A corrupt checkpoint inside the zip fails when read, naming the checkpoint."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("r/checkpoint-1/adapter_model.safetensors", b"garbage")
        run = checkpoints_from_files([("r.zip", buf.getvalue())])
        with pytest.raises(AdapterError, match="^r/checkpoint-1: "):
            audit_series(run)

    def test_folder_errors(self, tmp_path):
        """--series on a file or a folder without checkpoints is one error line, exit 2."""
        (tmp_path / "a.txt").write_text("x")
        assert main(["audit", "--series", str(tmp_path / "a.txt")]) == 2
        assert main(["audit", "--series", str(tmp_path)]) == 2
        assert main(["audit", str(tmp_path), "--series", str(tmp_path)]) == 2


class TestNothingShared:
    """Checkpoints that share no module still give a report, JSON and a text table."""

    def test_no_shared_module(self, tmp_path, capsys):
        """The series is empty with a note; the CLI prints dashes, not a traceback."""
        run = tmp_path / "run"
        for step, name in ((10, "base_model.model.layers.0.q_proj"), (20, "base_model.model.layers.0.v_proj")):
            folder = run / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            for file, data in adapter_files(synthetic([(name, 8, 6, 2)], seed=step)).items():
                (folder / file).write_bytes(data)
        result = audit_series(find_checkpoints(run))
        assert result.modules == [] and result.settled_step == 20
        assert "2 module(s) are not in every checkpoint" in result.notes[0]
        json.dumps(result.to_dict(), allow_nan=False)
        assert main(["audit", "--series", str(run)]) == 0
        out = capsys.readouterr().out
        assert "0 modules in every checkpoint" in out and "note: 2 module(s)" in out


class TestSeriesOptions:
    """`audit --series` checks its options before reading anything or calling the Hub."""

    def test_alpha_and_scale_on_the_hub(self, monkeypatch, capsys):
        """Both overrides with an hf:// series: the one error line, with no Hub request (the
        endpoint is a closed port: a request would have failed with a connection error)."""
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        assert main(["audit", "--series", "hf://owner/run@a,b", "--alpha", "8", "--scale", "0.5"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == ["lorarank: error: give `alpha` or `scale`, not both"]

    @pytest.mark.parametrize("flag, value", [("--base", "base.safetensors"), ("--html", "out.html")])
    def test_single_adapter_options_refused(self, tmp_path, capsys, flag, value):
        """--base and --html apply to one adapter; with --series they are refused, not ignored."""
        for series in (str(tmp_path / "missing"), "hf://owner/run"):
            assert main(["audit", "--series", series, flag, str(tmp_path / value)]) == 2
            assert capsys.readouterr().err.strip().splitlines() == [
                f"lorarank: error: audit: {flag} applies to one adapter, not to --series"]
        assert not (tmp_path / value).exists()

    def test_bad_alpha_before_reading(self, tmp_path, capsys):
        """A bad --alpha is named before the folder is looked at."""
        assert main(["audit", "--series", str(tmp_path / "missing"), "--alpha", "-1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "alpha" in err[0] and "missing" not in err[0]
