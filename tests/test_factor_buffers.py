"""The audit's hot path (issue 22): each factor decoded once into reused buffers, R factors by
CholeskyQR(2) on the factor in place, 16-bit finiteness checked four values per word.

Oracles: the dense float64 SVD of ``scale * B @ A`` and Householder QR (``np.linalg.qr``) for
the spectra; ml_dtypes' own bfloat16 / numpy's float16 ``isfinite`` for the bit checks. The
page-fault test is what the issue measured (0.65 s of system time per 8B-shaped audit: a fresh
array of a factor's size per use, each one new pages for the kernel to map).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from lorarank.adapters import Adapter, Buffers, LoraModule, save_adapter
from lorarank.adapters._tensors import Bf16Array, LazyArray, all_finite
from lorarank.audit import module_spectrum
from lorarank.spectrum import _r_factor, svdvals_unchecked

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------- 16-bit finiteness
def _nonfinite_patterns(mask: int) -> np.ndarray:
    bits = np.arange(2**16, dtype=np.uint32)
    return bits[(bits & mask) == mask].astype("<u2")


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
def test_every_nonfinite_pattern_is_found_at_every_lane_and_in_the_tail(kind):
    """Each inf / NaN bit pattern, at every position of arrays of 1 to 11 values (whole 64-bit
    words and a tail of 1-3), is found; arrays of finite values only are finite."""
    mask = 0x7F80 if kind == "bfloat16" else 0x7C00
    bad = _nonfinite_patterns(mask)
    rng = np.random.default_rng(0)
    every = np.arange(2**16, dtype=np.uint32).astype("<u2")
    good = every[(every & mask) != mask]
    for n in range(1, 12):
        base = rng.choice(good, size=n)
        assert all_finite(_as(kind, base)), n
        for pos in range(n):
            arr = base.copy()
            arr[pos] = bad[(n * 7 + pos * 13) % bad.size]
            assert not all_finite(_as(kind, arr)), (n, pos)
    # every pattern once, against the libraries' own isfinite
    for pattern in bad:
        arr = np.full(9, good[0], dtype="<u2")
        arr[5] = pattern
        assert not all_finite(_as(kind, arr))
    big = _as(kind, good)
    ref = np.isfinite(good.view(ml_dtypes.bfloat16).astype(np.float32)) if kind == "bfloat16" \
        else np.isfinite(good.view(np.float16))
    assert ref.all() and all_finite(big)


def _as(kind: str, bits: np.ndarray):
    if kind == "bfloat16":
        return Bf16Array(bits.tobytes(), bits.shape)
    return bits.view(np.float16)


def test_finiteness_of_a_large_bf16_factor_across_chunks():
    """A NaN in the last chunk of a factor larger than the scratch chunk is found."""
    bits = np.full(8192 * 4 * 3 + 6, 0x3F80, dtype="<u2")  # 1.0, three chunks and a tail
    assert all_finite(Bf16Array(bits.tobytes(), bits.shape))
    for where in (0, 8192 * 4 - 1, 8192 * 4 * 2 + 17, bits.size - 1):
        bad = bits.copy()
        bad[where] = 0xFF80  # -inf
        assert not all_finite(Bf16Array(bad.tobytes(), bad.shape)), where


# ---------------------------------------------------------------------------------- buffers
def test_buffers_decode_exactly_and_reuse_their_memory():
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((16, 300)) * 0.1).astype(ml_dtypes.bfloat16)
    arr = Bf16Array(a.tobytes(), a.shape)
    buffers = Buffers()
    first = buffers.float64(arr, "A")
    np.testing.assert_array_equal(first, a.astype(np.float64))
    smaller = (rng.standard_normal((8, 100))).astype(ml_dtypes.bfloat16)
    second = buffers.float64(Bf16Array(smaller.tobytes(), smaller.shape), "A")
    np.testing.assert_array_equal(second, smaller.astype(np.float64))
    assert np.shares_memory(first, second)  # the slot's memory, not a new array
    f16 = rng.standard_normal((5, 7)).astype(np.float16)
    np.testing.assert_array_equal(buffers.float64(f16, "B"), f16.astype(np.float64))
    f64 = rng.standard_normal((5, 7))
    assert buffers.float64(f64, "B") is f64  # float64 is used as it is
    lazy = LazyArray(lambda: np.arange(6.0).reshape(2, 3), (2, 3), np.float64)
    np.testing.assert_array_equal(buffers.float64(lazy, "B"), np.arange(6.0).reshape(2, 3))


# ----------------------------------------------------------------------------- R factors
def _matrix(rng, m, n, cond, column_scales=None):
    u = np.linalg.qr(rng.standard_normal((m, n)))[0]
    v = np.linalg.qr(rng.standard_normal((n, n)))[0]
    x = (u * np.geomspace(1.0, 1.0 / cond, n)) @ v.T
    return x if column_scales is None else x * column_scales


@pytest.mark.parametrize("cond", [1.5, 20.0, 300.0, 1e5, 1e9])
@pytest.mark.parametrize("graded", [False, True])
def test_r_factor_is_a_qr_r_factor(cond, graded):
    """R^T R = X^T X to working precision relative to the columns, whatever the path (one
    Cholesky pass, two, or Householder), and R is upper triangular."""
    rng = np.random.default_rng(int(cond) % 97 + graded)
    scales = np.geomspace(1.0, 1e-6, 12) if graded else None
    X = _matrix(rng, 500, 12, cond, scales)
    R = _r_factor(X, Buffers())
    assert R.shape == (12, 12)
    np.testing.assert_array_equal(R, np.triu(R))
    G = X.T @ X
    d = np.sqrt(np.diag(G))
    assert np.max(np.abs(R.T @ R - G) / np.outer(d, d)) < 1e-13
    hh = np.linalg.qr(X, mode="r")
    np.testing.assert_allclose(np.abs(np.diag(R)), np.abs(np.diag(hh)), rtol=1e-9)


@pytest.mark.parametrize("case", ["well", "two-pass", "graded", "rank-deficient", "zero-column",
                                  "wide", "huge", "tiny"])
def test_spectrum_paths_match_the_dense_svd(case):
    """Every path of the spectrum from factors gives the dense float64 SVD of s * B @ A."""
    rng = np.random.default_rng(7)
    B = _matrix(rng, 200, 8, 2.0)
    A = _matrix(rng, 150, 8, 2.0).T
    if case == "two-pass":
        B = _matrix(rng, 200, 8, 500.0)
    elif case == "graded":
        A = (A.T * np.geomspace(1.0, 1e-9, 8)).T
    elif case == "rank-deficient":
        B[:, 3] = B[:, 2]
    elif case == "zero-column":
        B[:, 5] = 0.0
    elif case == "wide":
        B = B[:5]
    elif case == "huge":
        B, A = B * 1e150, A * 1e140
    elif case == "tiny":
        B, A = B * 1e-150, A * 1e-140
    scale = 0.75
    dense = np.linalg.svd(scale * (B @ A), compute_uv=False)[: min(B.shape[0], 8)]
    ours = svdvals_unchecked(B, A, scale, buffers=Buffers())
    assert ours.shape == dense.shape
    np.testing.assert_allclose(ours, dense, rtol=1e-9, atol=1e-12 * dense[0])


def test_bf16_module_spectrum_equals_the_dense_svd():
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((16, 640)) / 25 * np.geomspace(1, 0.02, 16)[:, None]).astype(ml_dtypes.bfloat16)
    b = (rng.standard_normal((900, 16)) * 0.01).astype(ml_dtypes.bfloat16)
    m = LoraModule("m", Bf16Array(a.tobytes(), a.shape), Bf16Array(b.tobytes(), b.shape), 2.0)
    dense = np.linalg.svd(2.0 * (b.astype(np.float64) @ a.astype(np.float64)), compute_uv=False)[:16]
    np.testing.assert_allclose(module_spectrum(m, buffers=Buffers()), dense, rtol=1e-10)
    np.testing.assert_allclose(module_spectrum(m), dense, rtol=1e-10)


# ------------------------------------------------------------------------------ page faults
def test_audit_maps_no_new_memory_per_module(tmp_path):
    """Auditing 60 bf16 modules costs a fixed number of new pages, not pages per module: the
    factors are decoded into buffers reused from module to module (was ~6,700 minor faults
    here and growing with the module count, now ~230), in a fresh process."""
    rng = np.random.default_rng(0)
    modules = []
    for i in range(60):
        d_out, d_in = (2048, 2048) if i % 2 else (4096, 1024)
        A = (rng.standard_normal((16, d_in)) / 40 * np.geomspace(1, 0.02, 16)[:, None]).astype(np.float32)
        B = (rng.standard_normal((d_out, 16)) * 0.01).astype(np.float32)
        modules.append(LoraModule(f"base_model.model.model.layers.{i}.self_attn.q_proj", A, B, 2.0,
                                  alpha=32.0))
    adapter = Adapter(format="peft", modules=modules, scaling="",
                      config={"r": 16, "lora_alpha": 32, "peft_type": "LORA"})
    save_adapter(adapter, tmp_path / "a", dtype="bfloat16")
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(ROOT)!r})
        from lorarank.adapters import Adapter, load_adapter
        from lorarank.audit import audit_adapter
        adapter = load_adapter({str(tmp_path / 'a')!r})
        audit_adapter(Adapter(format="peft", modules=adapter.modules[:1], scaling=""))  # imports
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        audit_adapter(adapter)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    faults = int(out.stdout.strip())
    assert faults < 1500, f"{faults} minor page faults while auditing 60 modules"
