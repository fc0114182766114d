"""Hostile adapter files and configs (issue 12): each is refused with one sentence, in bounded time
and memory, or gives the exact answer. Every case here failed (hang, traceback, huge memory or a
silent wrong answer) before the parsing bounds existed.

Cases that could hang the old code run in a subprocess with a timeout, so a regression fails
instead of freezing the suite.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from lorarank.adapters import load_adapter, load_adapter_bytes
from lorarank.errors import AdapterError
from corpus23 import npy, zeros_member

ROOT = Path(__file__).resolve().parents[2]
PEFT = "base_model.model."


def pair_file(name: str = "model.layers.0.self_attn.q_proj", r: int = 4) -> bytes:
    rng = np.random.default_rng(0)
    return save({f"{PEFT}{name}.lora_A.weight": rng.standard_normal((r, 8)).astype(np.float32),
                 f"{PEFT}{name}.lora_B.weight": rng.standard_normal((6, r)).astype(np.float32)})


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorarank", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


# ------------------------------------------------------------------------------ regex patterns
class TestPatterns:
    """rank_pattern / alpha_pattern keys are PEFT regexes: matched with PEFT's semantics, bounded."""

    def test_nested_quantifier_does_not_hang(self, tmp_path):
        """``(.+)+z`` made ``re`` backtrack exponentially; now it is matched at once (no match)."""
        (tmp_path / "adapter_model.safetensors").write_bytes(pair_file())
        (tmp_path / "adapter_config.json").write_text(json.dumps(
            {"r": 4, "lora_alpha": 8, "rank_pattern": {"(.+)+z": 2}}))
        # VmHWM: this process image's own peak (ru_maxrss would carry the pytest parent's).
        out = run_python(f"""
            from lorarank.adapters import load_adapter
            a = load_adapter({str(tmp_path)!r})
            print(a.modules[0].rank, a.modules[0].scale)
        """, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["4", "2.0"]

    def test_exponential_pattern_refused(self, tmp_path):
        """A key that backtracks exponentially on a (hostile) module name is refused in one sentence."""
        name = "model." + "a" * 40
        (tmp_path / "adapter_model.safetensors").write_bytes(pair_file(name))
        (tmp_path / "adapter_config.json").write_text(json.dumps(
            {"r": 4, "lora_alpha": 8, "rank_pattern": {"(a|aa)+b": 2}}))
        out = run_cli("audit", str(tmp_path), timeout=60)
        assert out.returncode == 2
        assert out.stderr.count("\n") == 1
        assert "`rank_pattern` key '(a|aa)+b' takes over 50 ms to match one module name" in out.stderr

    def test_semantics_kept(self):
        """The first key matching a dotted suffix wins, as in PEFT's get_pattern_key."""
        from lorarank.adapters import peft_pattern_key

        keys = ["v_proj", r"layers\.0\.self_attn\.q_proj", "q_proj"]
        assert peft_pattern_key(keys, "model.layers.0.self_attn.q_proj") == keys[1]
        assert peft_pattern_key(keys, "model.layers.1.self_attn.q_proj") == "q_proj"
        assert peft_pattern_key(["proj"], "model.layers.1.self_attn.q_proj") is None   # not a whole suffix

    def test_too_many_keys(self):
        """More than 10,000 pattern keys are refused."""
        config = {"r": 4, "lora_alpha": 8, "rank_pattern": {f"m{i}": 2 for i in range(10_001)}}
        with pytest.raises(AdapterError, match=r"`rank_pattern` has 10,001 keys; lorarank reads at most 10,000"):
            load_adapter_bytes({"w.safetensors": pair_file(), "adapter_config.json": json.dumps(config).encode()})


# ------------------------------------------------------------------------------ JSON bounds
class TestJson:
    def test_deep_config(self, tmp_path):
        """A 100k-deep adapter_config.json: one sentence, no RecursionError (library and CLI)."""
        deep = b'{"r": 4, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        with pytest.raises(AdapterError, match=r"adapter_config.json: the config nests 100,001 levels deep; "
                                               r"lorarank reads at most 64"):
            load_adapter_bytes({"w.safetensors": pair_file(), "adapter_config.json": deep})
        (tmp_path / "adapter_model.safetensors").write_bytes(pair_file())
        (tmp_path / "adapter_config.json").write_bytes(deep)
        out = run_cli("audit", "--json", str(tmp_path))
        assert out.returncode == 2 and out.stderr.count("\n") == 1
        assert "nests 100,001 levels deep" in out.stderr and "Traceback" not in out.stderr

    def test_deep_diffusers_metadata(self):
        """A deeply nested lora_adapter_metadata string is refused the same way."""
        data = pair_file()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        header["__metadata__"] = {"lora_adapter_metadata": "[" * 5000 + "]" * 5000}
        raw = json.dumps(header).encode()
        hostile = struct.pack("<Q", len(raw)) + raw + data[8 + n:]
        with pytest.raises(AdapterError, match=r"lora_adapter_metadata nests 5,000 levels deep"):
            load_adapter_bytes({"w.safetensors": hostile})


# ------------------------------------------------------------------------------ safetensors header
def header_file(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw)) + raw + data


class TestSafetensorsHeader:
    def test_many_tiny_tensors(self):
        """200,000 tensors are refused from the header count, before the library builds them."""
        n = 200_000
        header = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(n)}
        data = header_file(header, b"\0" * (4 * n))
        with pytest.raises(AdapterError, match=r"declares 200,000 tensors; lorarank reads at most 50,000"):
            load_adapter_bytes({"w.safetensors": data})

    def test_many_tiny_tensors_memory(self, tmp_path):
        """Refusing it from disk stays far below the 2 GB the library needed to parse it."""
        n = 1_000_000
        path = tmp_path / "w.safetensors"
        with open(path, "wb") as fh:
            raw = ("{" + ",".join(f'"t{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}'
                                  for i in range(n)) + "}").encode()
            fh.write(struct.pack("<Q", len(raw)) + raw)
            fh.write(b"\0" * (4 * n))
        out = run_python(f"""
            from lorarank.adapters import load_adapter
            from lorarank.errors import AdapterError
            try:
                load_adapter({str(path)!r})
            except AdapterError as exc:
                print(exc)
            print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))
        """)
        lines = out.stdout.strip().splitlines()
        assert "lorarank reads headers up to 16 MiB" in lines[0], out.stderr
        assert int(lines[-1]) < 400 * 1024  # KiB

    def test_huge_header(self):
        """A header over 16 MiB (within the file) is refused by size."""
        pad = " " * (17 * 2**20)
        raw = ('{"__metadata__":{"x":"y"}' + pad + "}").encode()
        data = struct.pack("<Q", len(raw)) + raw
        with pytest.raises(AdapterError, match=r"has a 17.0 MiB safetensors header; lorarank reads headers up to 16 MiB"):
            load_adapter_bytes({"w.safetensors": data})


# ------------------------------------------------------------------------------ npz
class TestNpz:
    def test_duplicated_member(self):
        """Two members called A.npy: numpy silently used the last; now it is named."""
        buf = io.BytesIO()
        with pytest.warns(UserWarning, match="Duplicate name"):
            with zipfile.ZipFile(buf, "w") as zf:
                zf.writestr("A.npy", npy(np.ones((2, 3))))
                zf.writestr("B.npy", npy(np.ones((4, 2))))
                zf.writestr("A.npy", npy(np.zeros((2, 3))))
        with pytest.raises(AdapterError, match=r"member 'A.npy' appears twice in the archive"):
            load_adapter_bytes({"a.npz": buf.getvalue()})

    def test_too_many_members(self):
        """60,000 members are refused before any .npy header is read."""
        buf = io.BytesIO()
        tiny = npy(np.ones(1))
        with zipfile.ZipFile(buf, "w") as zf:
            for i in range(60_000):
                zf.writestr(f"m{i}.A.npy", tiny)
        with pytest.raises(AdapterError, match=r"has 60,000 members; lorarank reads at most 50,000"):
            load_adapter_bytes({"a.npz": buf.getvalue()})

    def test_memory_budget(self, tmp_path):
        """Declared 520 MiB from a 30 MiB file passes the zip-bomb ratio but not the memory budget."""
        path = tmp_path / "big.npz"
        rng = np.random.default_rng(1)
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("A.npy", npy(rng.standard_normal((30 * 2**20 // 8 // 64, 64))),
                        compress_type=zipfile.ZIP_STORED)
        with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            # float64 zeros: 490 MiB declared, deflated to about 0.5 MiB
            zeros_member(zf, "B.npy", (490 * 2**20 // 8 // 64, 64))
        with pytest.raises(AdapterError, match=r"would unpack to 5\d\d MiB; lorarank unpacks .npz files up to 512 MiB"):
            load_adapter(path)


# ------------------------------------------------------------------------------ config values
class TestConfigValues:
    @pytest.mark.parametrize("field, value, said", [
        ("use_rslora", "false", "PEFT would treat 'false' as true"),
        ("fan_in_fan_out", "no", "PEFT would treat 'no' as true"),
        ("use_dora", "", "PEFT would treat '' as false"),
    ])
    def test_string_bools(self, field, value, said):
        """A string where PEFT expects a bool is an error that says what PEFT would do."""
        config = {"r": 4, "lora_alpha": 8, field: value}
        with pytest.raises(AdapterError, match=rf"`{field}` should be true or false, got '{value}' \({said}\)"):
            load_adapter_bytes({"w.safetensors": pair_file(), "adapter_config.json": json.dumps(config).encode()})

    def test_overflowing_alpha(self, tmp_path):
        """lora_alpha = 1e300 gave 'nan %' with exit 0; now it is an error naming the scale."""
        config = {"r": 4, "lora_alpha": 1e300}
        with pytest.raises(AdapterError, match=r"lora_alpha = 1e\+300 gives scale 2.5e\+299, beyond lorarank's bound"):
            load_adapter_bytes({"w.safetensors": pair_file(), "adapter_config.json": json.dumps(config).encode()})
        (tmp_path / "adapter_model.safetensors").write_bytes(pair_file())
        (tmp_path / "adapter_config.json").write_text(json.dumps(config))
        out = run_cli("audit", "--json", str(tmp_path))
        assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1

    def test_overflowing_alpha_key(self):
        """A kohya alpha key of 1e30 on r = 4 is refused the same way."""
        rng = np.random.default_rng(2)
        data = save({"m.lora_down.weight": rng.standard_normal((4, 8)).astype(np.float32),
                     "m.lora_up.weight": rng.standard_normal((6, 4)).astype(np.float32),
                     "m.alpha": np.array(1e30, np.float32)})
        with pytest.raises(AdapterError, match=r"'m.alpha' = 1e\+30 gives scale 2.5e\+29"):
            load_adapter_bytes({"k.safetensors": data})

    def test_mlx_scale_zero(self):
        """mlx-lm scale 0 audited as 'all zero'; now it is named."""
        rng = np.random.default_rng(3)
        data = save({"model.layers.0.self_attn.q_proj.lora_a": rng.standard_normal((8, 4)).astype(np.float32),
                     "model.layers.0.self_attn.q_proj.lora_b": rng.standard_normal((4, 6)).astype(np.float32)})
        config = {"fine_tune_type": "lora", "lora_parameters": {"rank": 4, "scale": 0}}
        with pytest.raises(AdapterError, match=r"lora_parameters.scale is 0, so mlx-lm adds nothing"):
            load_adapter_bytes({"adapters.safetensors": data, "adapter_config.json": json.dumps(config).encode()})
