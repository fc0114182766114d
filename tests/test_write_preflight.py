"""The writers' dry run (``adapters.writable(..., values=True)``): a download is offered only when
its file can be written, and the page knows why not before anyone clicks.

Oracle: the real writer (``adapter_files``). On crafted float16 / bfloat16 adapters whose resized
factors overflow the stored dtype, and on ones just under the limit, the dry run and the writer
give the same verdict (the same sentence, or both None), through the bound sqrt(sigma_1) and
through the exact factors when the bound does not settle it.
"""

from __future__ import annotations


import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load, save

from lorarank.adapters import (Adapter, LazyArray, LoraModule, adapter_files, load_adapter_bytes,
                               writable)
from lorarank.cli import main
from lorarank.errors import ConfigError
from lorarank.resize import resize_adapter
import testkit

F16_MAX = 65504.0
F16_INF = 65520.0       # the smallest value float16 rounds to inf (round to nearest, ties to even)
NAME = testkit.F16_MODULE


def _writer_verdict(adapter: Adapter, **kw) -> str | None:
    try:
        adapter_files(adapter, **kw)
    except ConfigError as exc:
        return str(exc)
    return None


def _peft_bytes(x, y=None, *, spread=False, dtype=np.float16) -> list[tuple[str, bytes]]:
    return testkit.float16_peft(x, y, spread=spread, dtype=dtype)


def _kohya_bytes(x, y=None, *, spread=False) -> list[tuple[str, bytes]]:
    """The same factors as :func:`testkit.float16_peft`, in one kohya file."""
    peft = load(dict(testkit.float16_peft(x, y, spread=spread))["adapter_model.safetensors"])
    A, B = peft[NAME + ".lora_A.weight"], peft[NAME + ".lora_B.weight"]
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    return [("adapter.safetensors", save({key + ".lora_down.weight": A, key + ".lora_up.weight": B,
                                           key + ".alpha": np.array(2.0, dtype=np.float32)}))]


def _fp16_values(lo: float, hi: float) -> np.ndarray:
    every = np.arange(2**15, dtype=np.uint16).view(np.float16).astype(np.float64)
    return every[(every >= lo) & (every <= hi)]


# float16 x such that sqrt(2) x lands just under float16's largest value, and just past the
# edge where it rounds to inf; (x, y) with sqrt(2 x y) between the two (stored as 65504).
_X = _fp16_values(40000, 55000)
UNDER = float(_X[np.sqrt(2) * _X < F16_MAX].max())
OVER = float(_X[np.sqrt(2) * _X >= F16_INF].min())
_XY = np.sqrt(2 * _X[:, None] * _X[None, :])
ROUNDS_DOWN = tuple(float(_X[i[0]]) for i in np.nonzero((_XY > F16_MAX) & (_XY < F16_INF)))


@pytest.mark.parametrize("layout", [_peft_bytes, _kohya_bytes], ids=["peft", "kohya"])
@pytest.mark.parametrize("spread,x,fits", [
    (False, (UNDER,), True), (False, ROUNDS_DOWN, True), (False, (OVER,), False),
    (True, (UNDER,), True), (True, (OVER,), False), (True, (1.2 * OVER,), False),
], ids=["bound-under", "bound-rounds-down", "bound-over", "exact-under", "exact-over", "exact-far-over"])
def test_the_dry_run_and_the_writer_agree_on_float16_resizes(layout, spread, x, fits):
    """Same verdict on both sides, at float16's edge; a resize that fits is written and loads back
    as the best rank-1 approximation (values stored as float16 within its rounding)."""
    adapter = load_adapter_bytes(layout(*x, spread=spread))
    assert adapter.modules[0].dtype == "float16"
    result = resize_adapter(adapter, rank=1)
    assert result.changed == 1
    said = result.unwritable
    assert said == _writer_verdict(result.adapter)
    assert said == writable(result.adapter, values=True)
    if not fits:
        assert said is not None and "cannot be stored as float16" in said and "--dtype float32" in said
        return
    assert said is None
    files = adapter_files(result.adapter)
    back = load_adapter_bytes(list(files.items()))
    want = testkit.best_rank_k(testkit.dense(adapter.modules[0]), 1)
    got = testkit.dense(back.modules[0])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_spread_cases_use_the_exact_factors():
    """The `exact-*` cases above are the ones the bound does not settle (so the exact path is tested)."""
    bound = resize_adapter(load_adapter_bytes(_peft_bytes(UNDER, spread=True)), rank=1).adapter.modules[0].B.bound
    assert bound > F16_INF and np.sqrt(2) * UNDER < F16_MAX


def test_a_bound_that_fits_forms_nothing_and_one_that_does_not_forms_the_tensor():
    """The dry run of a resize that fits costs a comparison per tensor: a lazy factor whose bound
    fits is never formed; one whose bound does not is formed once and checked as the writer does."""
    formed = []

    def never():
        raise AssertionError("formed")

    def once(arr):
        def make():
            formed.append(1)
            return arr
        return make

    ok = LoraModule(NAME, LazyArray(never, (2, 8), np.float16, bound=100.0),
                    LazyArray(never, (8, 2), np.float16, bound=100.0), 1.0)
    assert writable(Adapter(format="peft", modules=[ok], scaling=""), values=True) is None
    big = np.full((8, 2), 7e4)
    loose = LoraModule(NAME, LazyArray(once(np.ones((2, 8), np.float16)), (2, 8), np.float16, bound=1e6),
                       LazyArray(once(big.astype(np.float32)), (8, 2), np.float32, bound=1e6), 1.0,
                       stored_dtype="float16")
    said = writable(Adapter(format="peft", modules=[loose], scaling=""), values=True)
    assert said is not None and "does not fit in float16" in said and len(formed) == 2


def test_bfloat16_resize_past_float32_range_is_said_before_the_download():
    """bfloat16 factors are held as float32: a resize past float32's range is said by the resize."""
    x = float(ml_dtypes.bfloat16(3.0e38))
    adapter = load_adapter_bytes(_peft_bytes(x, dtype=ml_dtypes.bfloat16))
    result = resize_adapter(adapter, rank=1)
    assert result.unwritable is not None and "bfloat16" in result.unwritable
    assert result.unwritable == _writer_verdict(result.adapter)


def test_mlx_scale_folded_into_b_is_checked_like_the_writer():
    """mlx-lm holds one scale: a module with another has it folded into lora_b, which can overflow."""
    rng = np.random.default_rng(0)
    mods = [LoraModule(f"model.layers.{i}.self_attn.q_proj", rng.standard_normal((4, 8)).astype(np.float16),
                       np.full((8, 4), 3e4, dtype=np.float16), s) for i, s in enumerate((1.0, 3.0))]
    adapter = Adapter(format="mlx", modules=mods, scaling="", config={"lora_parameters": {"rank": 4}})
    said = writable(adapter, values=True)
    assert said is not None and "lora_b" in said and said == _writer_verdict(adapter)
    assert writable(adapter, values=True, dtype="float32") is None is _writer_verdict(adapter, dtype="float32")


def test_npz_refuses_a_dtype_its_values_overflow():
    """The npz writer wrote inf where a value did not fit the asked dtype; it now refuses as the others."""
    m = LoraModule("model.layers.0.q", np.full((2, 8), 1e5), np.ones((8, 2)), 1.0)
    adapter = Adapter(format="npz", modules=[m], scaling="")
    said = writable(adapter, values=True, dtype="float16")
    assert said is not None and "does not fit in float16" in said
    assert said == _writer_verdict(adapter, dtype="float16")
    assert _writer_verdict(adapter, dtype="float32") is None


def test_cli_resize_says_the_sentence_and_dtype_float32_writes_it(tmp_path, capsys):
    """The sentence's remedy works: --dtype float32 writes the factors that float16 cannot hold."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in _peft_bytes(OVER):
        (folder / name).write_bytes(data)
    assert main(["resize", str(folder), "--rank", "1", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dtype float32" in err and not (tmp_path / "out").exists()
    assert main(["resize", str(folder), "--rank", "1", "--dtype", "float32", "-o", str(tmp_path / "out")]) == 0
    stored = load((tmp_path / "out" / "adapter_model.safetensors").read_bytes())
    assert {a.dtype for a in stored.values()} == {np.dtype(np.float32)}
    assert float(np.abs(stored[NAME + ".lora_B.weight"]).max()) == pytest.approx(np.sqrt(2) * OVER, rel=1e-6)


def test_an_npz_with_other_arrays_is_said_before_the_download():
    """The page offered a download of this resize, and the click failed ('Failed to generate file'):
    the writer's refusal of arrays it cannot keep is now the resize's own sentence."""
    import io

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, **{"layer0.A": rng.standard_normal((4, 32)), "layer0.B": rng.standard_normal((32, 4)),
                     "layer0.alpha": np.array(4.0), "extra_head": rng.standard_normal(8)})
    result = resize_adapter(load_adapter_bytes([("a.npz", buf.getvalue())]), rank=2)
    assert result.unwritable == _writer_verdict(result.adapter)
    assert "'extra_head'" in result.unwritable and "remove it from the file" in result.unwritable


def test_mitigation_past_float16_is_refused_not_written_as_inf():
    """The intruder-reduced factors were cast to the module's dtype unchecked: past float16 they
    became inf, and the writer wrote the inf (it refuses only finite values that overflow)."""
    from lorarank.base_svd import BaseSVDCache
    from lorarank.mitigate import mitigate_adapter
    from test_mitigate import conv1d_case

    adapter, base, _ = conv1d_case()
    m = adapter.modules[0]
    f16 = Adapter(format="peft", modules=[LoraModule(m.name, m.A.astype(np.float16), m.B.astype(np.float16),
                                                     m.scale, alpha=m.alpha, transposed=True)],
                  scaling="test", source="test", config=adapter.config)
    with pytest.raises(ConfigError, match="intruder-reduced factors reach .* cannot be stored as float16"):
        mitigate_adapter(f16, base, mitigation_lambda=1e12, cache=BaseSVDCache(precision="float64"))
    kept = mitigate_adapter(f16, base, mitigation_lambda=0.5, cache=BaseSVDCache(precision="float64"))
    assert np.isfinite(np.asarray(kept.adapter.modules[0].B)).all()


def test_conversion_past_float16_is_refused_not_written_as_inf():
    """PiSSA's B0 = U_r sqrt(S_r / scale) of a base weight near 1e12: no float16 holds it."""
    from safetensors.numpy import save as st_save

    from lorarank.base import open_base_bytes
    from lorarank.inits import convert_adapter

    rng = np.random.default_rng(0)
    name = "base_model.model.model.layers.0.self_attn.q_proj"
    mod = LoraModule(name, rng.standard_normal((4, 12)).astype(np.float16),
                     rng.standard_normal((10, 4)).astype(np.float16), 2.0, alpha=8.0)
    adapter = Adapter(format="peft", modules=[mod], scaling="test", source="test",
                      config={"peft_type": "LORA", "r": 4, "lora_alpha": 8, "init_lora_weights": "pissa"})

    def base_of(size: float):
        weight = (rng.standard_normal((10, 12)) * size).astype(np.float32)
        return open_base_bytes({"model.safetensors": st_save({"model.layers.0.self_attn.q_proj.weight": weight})})

    with pytest.raises(ConfigError, match="converted factors .* cannot be stored as float16"):
        convert_adapter(adapter, base_of(1e12))
    assert np.isfinite(np.asarray(convert_adapter(adapter, base_of(1.0)).modules[0].B)).all()
