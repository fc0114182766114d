"""lorarank.checkpoints and the one weights-file chooser every reader uses."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lorarank.adapters import choose_weights, load_adapter
from lorarank.checkpoints import checkpoints_from_files, find_checkpoints
from lorarank.hub import HubRef, choose_adapter_files

FAMILIES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "families"


def _npz(seed: int, r: int = 2) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez(buf, **{"q.A": rng.normal(size=(r, 8)), "q.B": rng.normal(size=(6, r))})
    return buf.getvalue()


class TestChooseWeights:
    @pytest.mark.parametrize("names, chosen", [
        (["adapter_model.safetensors", "other.safetensors"], "adapter_model.safetensors"),
        (["adapters.safetensors", "adapter_model.safetensors"], "adapter_model.safetensors"),
        (["adapters.safetensors", "x.npz"], "adapters.safetensors"),
        (["lora.gguf", "README.md", "adapter_config.json"], "lora.gguf"),
        (["w.npz", "base_weights.safetensors"], "w.npz"),
        (["a.safetensors", "b.npz"], None),
        (["README.md"], None),
        (["sub/adapter_model.safetensors"], "sub/adapter_model.safetensors"),
    ])
    def test_rule(self, names, chosen):
        """PEFT's then mlx-lm's file wins; else the only candidate; never a DoRA base file."""
        assert choose_weights(names)[0] == chosen

    def test_adapter_names_only(self):
        """A Hub folder without a config: only files named like an adapter are candidates."""
        assert choose_weights(["model.safetensors", "my_lora.safetensors"],
                              adapter_names_only=True) == ("my_lora.safetensors", ["my_lora.safetensors"])


def _names_and_ranks(adapter) -> list[tuple[str, int]]:
    return [(m.name, m.rank) for m in adapter.modules]


class TestOneChooser:
    def test_folder_zip_and_hub_agree(self, tmp_path):
        """A PEFT folder with another weights file beside it is read from adapter_model.safetensors
        locally, as a checkpoint of a zipped run, and on the Hub (from its file list)."""
        from lorarank.adapters import adapter_files, load_adapter_bytes

        peft = adapter_files(load_adapter_bytes({"a.npz": _npz(0, r=3)}), format="peft")
        files = {**peft, "other.npz": _npz(1, r=2)}
        folder = tmp_path / "adapter"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        local = load_adapter(folder)
        assert [m.rank for m in local.modules] == [3]
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            for name, data in files.items():
                z.writestr(f"run/checkpoint-1/{name}", data)
        (checkpoint,) = checkpoints_from_files([("run.zip", archive.getvalue())]).checkpoints
        assert _names_and_ranks(checkpoint.load()) == _names_and_ranks(local)
        listing = {f"checkpoint-1/{n}": len(d) for n, d in files.items()}
        assert choose_adapter_files(HubRef("o/n", None, "checkpoint-1"), listing) == [
            "checkpoint-1/adapter_model.safetensors", "checkpoint-1/adapter_config.json"]

    def test_series_reads_a_gguf_checkpoint(self, tmp_path):
        """A checkpoint holding a llama.cpp .gguf is read, as a single adapter folder is (the
        series used to look for .safetensors and .npz only)."""
        gguf = FAMILIES / "gguf_lora.gguf"
        if not gguf.is_file():
            pytest.skip(f"family samples not found at {FAMILIES}")
        for step in (1, 2):
            (tmp_path / f"checkpoint-{step}").mkdir()
            (tmp_path / f"checkpoint-{step}" / "lora.gguf").write_bytes(gguf.read_bytes())
        run = find_checkpoints(tmp_path)
        assert [c.step for c in run.checkpoints] == [1, 2]
        expected = _names_and_ranks(load_adapter(gguf))
        assert expected and _names_and_ranks(run.checkpoints[0].load()) == expected
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("run/checkpoint-3/lora.gguf", gguf.read_bytes())
        (checkpoint,) = checkpoints_from_files([("run.zip", archive.getvalue())]).checkpoints
        assert checkpoint.step == 3 and _names_and_ranks(checkpoint.load()) == expected
