"""Rank over training from the Hub: a series of revisions, or a repo's checkpoint-* folders.

The real huggingface_hub client against tests/hubserver.py (loopback), whose repos hold the six
real PEFT checkpoints of samples/checkpoints/run; every number is checked against the local
folder's series and dense float64 SVDs of each checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hubfixtures import client, endpoint, hub  # noqa: E402,F401  (fixtures)
from hubserver import SAMPLES, FakeHub, point_client_at  # noqa: E402

from lorarank.errors import ConfigError, HubError  # noqa: E402
from lorarank.checkpoints import (HubSeriesRef, find_checkpoints, parse_hub_series,  # noqa: E402
                                  plan_hub_series)
from lorarank.hub import HubSettings  # noqa: E402
from lorarank.series import audit_series  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUN = SAMPLES / "checkpoints" / "run"
STEPS = [15, 30, 45, 60, 75, 90]
pytestmark = pytest.mark.skipif(not RUN.is_dir(), reason=f"checkpoint run not found at {RUN}")
SHUFFLED = "step-45,step-15,step-90,step-30,step-60,step-75"


@pytest.fixture
def settings(tmp_path):
    return HubSettings(cache_dir=tmp_path / "cache", timeout=5.0)


@pytest.fixture(scope="module")
def local():
    return audit_series(find_checkpoints(RUN))


def dense(step: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Oracle: module -> (singular values of the dense float64 scale * B @ A, A)."""
    from safetensors.numpy import load_file

    folder = RUN / f"checkpoint-{step}"
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    tensors = load_file(folder / "adapter_model.safetensors")
    out = {}
    for key, A in tensors.items():
        if key.endswith(".lora_A.weight"):
            name = key[: -len(".lora_A.weight")]
            B = tensors[name + ".lora_B.weight"].astype(np.float64)
            out[name] = (np.linalg.svd(scale * B @ A.astype(np.float64), compute_uv=False),
                         A.astype(np.float64))
    return out


def assert_same_numbers(result, local) -> None:
    """Every sigma, rank metric and phi of ``result`` is the local folder's, bit for bit."""
    assert result.steps == local.steps
    assert [m.name for m in result.modules] == [m.name for m in local.modules]
    for a, b in zip(result.modules, local.modules):
        for x, y in zip(a.singular_values, b.singular_values):
            np.testing.assert_array_equal(x, y)
        assert a.energy_rank == b.energy_rank and a.stable_rank == b.stable_rank
        assert a.recommended_rank == b.recommended_rank
        assert a.phi_next == b.phi_next and a.phi_last == b.phi_last
    assert result.settled_step == local.settled_step


# ------------------------------------------------------------------------------- references
class TestParse:
    """hf://owner/name@rev1,rev2[/subfolder]: a revision cannot hold a comma."""

    @pytest.mark.parametrize("text, spec", [
        ("hf://o/n@a,b,c", HubSeriesRef("o/n", ("a", "b", "c"))),
        ("hf://o/n@a,b/sub/dir", HubSeriesRef("o/n", ("a", "b"), "sub/dir")),
        ("hf://o/n", HubSeriesRef("o/n")),
        ("hf://o/n@main/out", HubSeriesRef("o/n", ("main",), "out")),
        ("o/n/out", HubSeriesRef("o/n", (None,), "out")),
    ])
    def test_round_trip(self, text, spec):
        assert parse_hub_series(text) == spec
        assert parse_hub_series(spec.uri) == spec
        assert spec.by_revision == (len(spec.revisions) > 1)

    @pytest.mark.parametrize("text, words", [
        ("hf://o/n@a,,b", "an empty revision"),
        ("hf://o/n@a,", "an empty revision"),
        ("hf://o/n@a,a", "named twice"),
        ("hf://o/n@a,b c", "a Hub revision is a branch, tag or commit"),
        ("hf://x:tok@o/n@a,b", "a token never goes in the link"),
        ("hf://o/n@" + ",".join(f"r{i}" for i in range(101)), "at most 100 revisions"),
    ])
    def test_bad_text(self, text, words):
        with pytest.raises(ConfigError, match=words):
            parse_hub_series(text)


# ------------------------------------------------------------------------------- the engine
class TestSeriesFromTheHub:
    def test_revisions_ordered_by_trainer_state(self, hub, settings, local):
        """Revisions given out of order are ordered by global_step, labelled by revision, pinned."""
        plan = plan_hub_series(f"hf://lorarank-test/run-revisions@{SHUFFLED}", settings=settings)
        snaps = hub.repos["lorarank-test/run-revisions"]
        by_tag = {s.refs[0]: s.sha for s in snaps}
        assert plan.commits == tuple(by_tag[t] for t in SHUFFLED.split(","))
        assert plan.pinned.uri == "hf://lorarank-test/run-revisions@" + ",".join(plan.commits)
        assert [c.step for c in plan.checkpoints] == STEPS
        assert [c.label for c in plan.checkpoints] == [f"step-{s}" for s in STEPS]
        assert plan.notes == ()
        # Only trainer_state.json files were downloaded while planning; no weights.
        resolved = [p for _, p in hub.requests if "/resolve/" in p]
        assert resolved and all(p.endswith("/trainer_state.json") for p in resolved)
        result = audit_series(plan.run(settings=settings))
        assert_same_numbers(result, local)
        assert result.labels == [f"step-{s}" for s in STEPS]
        assert all(p.startswith("hf://lorarank-test/run-revisions@") for p in result.paths)
        # The pinned series reads the same commits again: same numbers.
        again = audit_series(plan_hub_series(plan.pinned, settings=settings).run(settings=settings))
        assert_same_numbers(again, local)

    def test_numbers_equal_dense_svds(self, settings):
        """Against the oracle itself: dense float64 SVDs of every checkpoint, phi from dense SVDs of A."""
        result = audit_series(plan_hub_series("hf://lorarank-test/run-checkpoints",
                                              settings=settings).run(settings=settings))
        oracle = {s: dense(s) for s in STEPS}
        for m in result.modules:
            for i, step in enumerate(STEPS):
                np.testing.assert_allclose(m.singular_values[i], oracle[step][m.name][0][: m.rank[i]],
                                           rtol=1e-10, atol=1e-12)
                v1 = np.linalg.svd(oracle[step][m.name][1])[2][:4].T
                v2 = np.linalg.svd(oracle[90][m.name][1])[2][:4].T
                assert m.phi_last[i] == pytest.approx(np.linalg.norm(v1.T @ v2) ** 2 / 4, abs=1e-10)

    @pytest.mark.parametrize("uri", ["hf://lorarank-test/run-checkpoints",
                                     "hf://lorarank-test/run-checkpoints@main/outputs"])
    def test_checkpoint_folders_of_one_repo(self, hub, settings, local, uri):
        """checkpoint-<step> folders as Trainer pushes them: one commit, steps from trainer_state."""
        plan = plan_hub_series(uri, settings=settings)
        assert plan.commits == (hub.repos["lorarank-test/run-checkpoints"].sha,)
        assert [c.label for c in plan.checkpoints] == [f"checkpoint-{s}" for s in STEPS]
        result = audit_series(plan.run(settings=settings))
        assert_same_numbers(result, local)
        # Per checkpoint only its adapter's two files (and trainer_state.json) were fetched.
        names = {p.rsplit("/", 1)[-1] for _, p in hub.requests if "/resolve/" in p}
        assert names == {"adapter_model.safetensors", "adapter_config.json", "trainer_state.json"}

    def test_without_trainer_state_the_order_given(self, settings):
        """No trainer_state.json: steps 1..n in the order given, said in a note."""
        plan = plan_hub_series("hf://lorarank-test/run-revisions-no-state@v2,v1,v3", settings=settings)
        assert [(c.step, c.label) for c in plan.checkpoints] == [(1, "v2"), (2, "v1"), (3, "v3")]
        assert "order given" in plan.notes[0]
        result = audit_series(plan.run(settings=settings))
        assert result.to_dict()["series"]["labels"] == ["v2", "v1", "v3"]
        # v2 holds checkpoint 15, v3 checkpoint 45 (the last: phi_last = 1).
        oracle = dense(15)
        for m in result.modules:
            np.testing.assert_allclose(m.singular_values[0], oracle[m.name][0][: m.rank[0]], rtol=1e-10)
            assert m.phi_last[2] == pytest.approx(1.0)

    @pytest.mark.parametrize("uri, words", [
        ("hf://lorarank-test/run-revisions@step-15", "holds no checkpoint-<step> folders"),
        ("hf://lorarank-test/run-revisions@step-15,nope", "has no revision 'nope'"),
        ("hf://lorarank-test/nope@a,b", "was not found"),
        ("hf://lorarank-test/a-whole-model", "holds no checkpoint-<step> folders"),
        ("hf://lorarank-test/run-checkpoints@main/missing", "holds no checkpoint-<step> folders"),
    ])
    def test_errors_are_one_sentence(self, settings, uri, words):
        with pytest.raises(HubError) as info:
            plan_hub_series(uri, settings=settings)
        assert words in str(info.value) and "\n" not in str(info.value)

    def test_the_byte_cap_holds_for_the_whole_series(self, hub, tmp_path):
        """Six checkpoints of 27 kB each are over a 100 kB cap together: refused before any weights."""
        small = HubSettings(cache_dir=tmp_path / "c", timeout=5.0, max_bytes=100_000)
        with pytest.raises(HubError, match=r"its 6 checkpoints are 16\d kB in all, over this "
                                           r"server's limit of 100 kB"):
            plan_hub_series("hf://lorarank-test/run-checkpoints", settings=small)
        assert not [p for _, p in hub.requests if "/resolve/" in p]

    def test_same_step_twice(self, settings):
        with pytest.raises(ConfigError, match="both have step 90"):
            plan_hub_series("hf://lorarank-test/run-revisions@step-90,main", settings=settings)


# ---------------------------------------------------------------------------------- the CLI
def _cli(*args: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    env.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "lorarank", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


def test_cli_series_from_the_hub_equals_the_folder(hub, tmp_path):
    """`audit --series hf://...@rev1,...` prints the folder's numbers, with labels and Hub paths."""
    env = {"HF_ENDPOINT": hub.url, "LORARANK_HF_CACHE": str(tmp_path / "cache")}
    remote = _cli("audit", "--series", f"hf://lorarank-test/run-revisions@{SHUFFLED}", "--json",
                  env_extra=env)
    local = _cli("audit", "--series", str(RUN), "--json", env_extra=env)
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    a, b = json.loads(remote.stdout), json.loads(local.stdout)
    assert a["series"].pop("labels") == [f"step-{s}" for s in STEPS]
    assert a["series"] == b["series"]
    for ca, cb in zip(a["checkpoints"], b["checkpoints"]):
        assert ca.pop("label") == f"step-{ca['step']}"
        assert ca.pop("path").startswith("hf://lorarank-test/run-revisions@")
        cb.pop("path")
        assert ca["summary"].pop("source").startswith("hf://lorarank-test/run-revisions@")
        cb["summary"].pop("source")
        assert ca == cb
    text = _cli("audit", "--series", "hf://lorarank-test/run-checkpoints", env_extra=env)
    assert text.returncode == 0, text.stderr
    sha = hub.repos["lorarank-test/run-checkpoints"].sha
    assert text.stdout.startswith(f"from hf://lorarank-test/run-checkpoints@{sha}\n")
    assert "6 checkpoints (steps 15, 30, 45, 60, 75, 90)" in text.stdout
    assert "step 15 = checkpoint-15" in text.stdout
    bad = _cli("audit", "--series", "hf://lorarank-test/run-revisions@a,,b", env_extra=env)
    assert bad.returncode == 2
    assert bad.stderr.startswith("lorarank: error: ") and len(bad.stderr.strip().splitlines()) == 1
