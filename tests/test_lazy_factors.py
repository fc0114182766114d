"""Factors held as their recipe: bfloat16 bits viewed in the upload, LoHa's small factors.

An upload must cost the server its own bytes once (issue 9): bfloat16 factors are held as a
view of the uploaded bytes and decoded per use, LoHa's r1*r2-wide Khatri-Rao factors are formed
per use. The oracle for the decoding is ml_dtypes' own bfloat16 -> float32 cast.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save

from lorarank.adapters import load_adapter, load_adapter_bytes
from lorarank.adapters._tensors import Bf16Array, LazyArray, all_finite, decode_bf16
from lorarank.audit import audit_adapter

ROOT = Path(__file__).resolve().parents[1]


def _bf16_file(rng, *, d_out=48, d_in=40, r=4):
    a = (rng.standard_normal((r, d_in)) * 0.1).astype(ml_dtypes.bfloat16)
    b = (rng.standard_normal((d_out, r)) * 0.1).astype(ml_dtypes.bfloat16)
    return a, b, save({"m.lora_A.weight": a, "m.lora_B.weight": b})


def test_decode_matches_ml_dtypes_on_every_bit_pattern():
    """All 65536 bfloat16 bit patterns decode to ml_dtypes' float32 value (NaNs as NaNs)."""
    bits = np.arange(2**16, dtype="<u2")
    ours = decode_bf16(bits.tobytes(), (2**16,))
    theirs = bits.view(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_bf16_factors_are_views_of_the_upload():
    """No decoded copy is held: A and B are bit views of the uploaded bytes."""
    a, b, data = _bf16_file(np.random.default_rng(0))
    (m,) = load_adapter_bytes({"w.safetensors": data}).modules
    assert isinstance(m.A, Bf16Array) and isinstance(m.B, Bf16Array)
    upload = np.frombuffer(data, dtype=np.uint8)
    assert np.shares_memory(m.A.bits, upload) and np.shares_memory(m.B.bits, upload)
    assert m.dtype == "bfloat16" and m.A.dtype == np.float32


def test_bf16_array_behaves_as_its_float32_array():
    """Operators, numpy functions, attributes, indexing and pickling see the exact values."""
    a, b, data = _bf16_file(np.random.default_rng(1))
    (m,) = load_adapter_bytes({"w.safetensors": data}).modules
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    np.testing.assert_array_equal(np.asarray(m.A), a32)
    np.testing.assert_array_equal(m.B @ m.A, b32 @ a32)
    np.testing.assert_array_equal(2.0 * m.B, 2.0 * b32)
    np.testing.assert_array_equal(m.A.T, a32.T)
    np.testing.assert_array_equal(m.A[1:3, ::2], a32[1:3, ::2])
    np.testing.assert_array_equal(m.A.astype(np.float64), a.astype(np.float64))
    assert m.A.shape == a.shape and m.A.size == a.size and m.A.ndim == 2 and len(m.A) == a.shape[0]
    again = pickle.loads(pickle.dumps(m.A))
    np.testing.assert_array_equal(np.asarray(again), a32)


def test_bf16_nan_is_found_on_the_bits():
    """all_finite reads the exponent bits without decoding; a NaN factor is refused."""
    a, b, _ = _bf16_file(np.random.default_rng(2))
    a[0, 0] = np.nan
    assert not all_finite(Bf16Array(a.tobytes(), a.shape))
    bad = save({"m.lora_A.weight": a, "m.lora_B.weight": b})
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_adapter_bytes({"w.safetensors": bad})


def test_bf16_audit_equals_float64_oracle():
    """The audit of a bf16 upload equals the dense float64 SVD of the decoded factors."""
    a, b, data = _bf16_file(np.random.default_rng(3))
    report = audit_adapter(load_adapter_bytes({"w.safetensors": data}))
    dense = np.linalg.svd(b.astype(np.float64) @ a.astype(np.float64), compute_uv=False)[:4]
    np.testing.assert_allclose(report.modules[0].singular_values, dense, rtol=1e-12, atol=1e-15 * dense[0])


def test_loha_holds_only_its_small_factors():
    """LoHa's q = r1*r2 wide factors are formed per use and equal the Khatri-Rao products."""
    folder = ROOT.parent / "shared" / "samples" / "families"
    path = folder / "lycoris_loha.safetensors"
    if not path.is_file():
        pytest.skip(f"family samples not found at {folder}")
    from safetensors.numpy import load_file

    raw = {k: v.astype(np.float64) for k, v in load_file(path).items()}
    loha = [m for m in load_adapter(path).modules if m.family == "loha"]
    assert loha
    for m in loha:
        assert isinstance(m.A, LazyArray) and isinstance(m.B, LazyArray)
        assert m.A.dtype == np.float64 and m.A.shape[0] == m.B.shape[1] == m.rank
        w = [raw[f"{m.name}.hada_w{i}_{ab}"].reshape(raw[f"{m.name}.hada_w{i}_{ab}"].shape[0], -1)
             for i in (1, 2) for ab in "ab"]
        dense = (w[0] @ w[1]) * (w[2] @ w[3])
        np.testing.assert_allclose(m.B @ m.A, dense, rtol=0, atol=1e-13 * np.abs(dense).max())


def test_loading_a_bf16_upload_costs_about_its_size_once():
    """In a fresh process: reading a 48 MB bf16 upload peaks at < 1.5x its size above the bytes
    themselves (the library's validation copy, freed at once) and holds < 0.25x after."""
    code = textwrap.dedent("""
        import ctypes, gc
        import ml_dtypes, numpy as np
        from safetensors.numpy import save
        from lorarank.adapters import load_adapter_bytes
        def status(field):
            return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(field + ':'))
        rng = np.random.default_rng(0)
        tensors = {}
        for i in range(24):
            tensors[f'layers.{i}.q.lora_A.weight'] = (rng.standard_normal((16, 32768), np.float32)).astype(ml_dtypes.bfloat16)
            tensors[f'layers.{i}.q.lora_B.weight'] = (rng.standard_normal((32768, 16), np.float32)).astype(ml_dtypes.bfloat16)
        data = save(tensors)
        del tensors
        gc.collect(); ctypes.CDLL('libc.so.6').malloc_trim(0)
        held = status('VmRSS')
        open('/proc/self/clear_refs', 'w').write('5')
        adapter = load_adapter_bytes({'w.safetensors': data})
        gc.collect(); ctypes.CDLL('libc.so.6').malloc_trim(0)
        print(len(data), status('VmHWM') - held, status('VmRSS') - held)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    size, peak, after = (int(x) for x in out.stdout.split())
    assert size > 45 * 2**20
    assert peak < 1.5 * size, f"peak {peak / size:.2f}x the upload"
    assert after < 0.25 * size, f"holds {after / size:.2f}x the upload after reading"


def test_resize_forms_its_factors_when_written():
    """A resize holds its new factors as recipes (a preview costs the spectra only); written
    out they are the best rank-k approximation of the dense update (Eckart-Young)."""
    a, b, data = _bf16_file(np.random.default_rng(5), r=6)
    adapter = load_adapter_bytes({"w.safetensors": data})
    from lorarank.audit import resize_adapter

    (m,) = resize_adapter(adapter, rank=3).adapter.modules
    assert isinstance(m.A, LazyArray) and isinstance(m.B, LazyArray) and m.rank == 3
    dense = b.astype(np.float64) @ a.astype(np.float64)
    u, s, vt = np.linalg.svd(dense)
    best = (u[:, :3] * s[:3]) @ vt[:3]
    np.testing.assert_allclose(np.asarray(m.B, np.float64) @ np.asarray(m.A, np.float64), best,
                               atol=1e-6 * s[0])  # the factors are stored in float32
