"""Corrupted adapter files: whatever the damage, the reader answers with one AdapterError."""

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorarank import AdapterError, load_adapter_bytes
from lorarank.audit import audit_adapter
import testkit

SAMPLES = testkit.SAMPLES
needs_samples = testkit.needs(SAMPLES)


def _npz() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{"m.A": rng.standard_normal((4, 32)), "m.B": rng.standard_normal((16, 4))})
    return buf.getvalue()


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out[:cut]) if cut is not None else bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=8)


class TestCorruption:
    @needs_samples
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(edits=EDITS, cut=st.one_of(st.none(), st.integers(0, 20000)))
    def test_damaged_safetensors(self, edits, cut):
        """Flipped bytes or a cut anywhere in a PEFT file load cleanly or raise AdapterError."""
        folder = SAMPLES / "peft_llama_r8"
        weights = (folder / "adapter_model.safetensors").read_bytes()
        config = (folder / "adapter_config.json").read_bytes()
        data = _mutate(weights, edits, cut)
        try:
            adapter = load_adapter_bytes({"adapter_model.safetensors": data, "adapter_config.json": config})
        except AdapterError as exc:
            assert "\n" not in str(exc)
            return
        audit_adapter(adapter)  # what loaded must be auditable

    @settings(max_examples=60, deadline=None)
    @given(edits=EDITS, cut=st.one_of(st.none(), st.integers(0, 3000)))
    def test_damaged_npz(self, edits, cut):
        """Flipped bytes or a cut anywhere in an .npz load cleanly or raise AdapterError."""
        data = _mutate(_npz(), edits, cut)
        try:
            adapter = load_adapter_bytes({"w.npz": data})
        except AdapterError as exc:
            assert "\n" not in str(exc)
            return
        audit_adapter(adapter)

    @needs_samples
    @settings(max_examples=30, deadline=None)
    @given(edits=EDITS)
    def test_damaged_config(self, edits):
        """A damaged adapter_config.json is a clear error or a readable config, never a crash."""
        folder = SAMPLES / "peft_llama_rank_pattern"
        config = _mutate((folder / "adapter_config.json").read_bytes(), edits, None)
        try:
            load_adapter_bytes({"adapter_model.safetensors": (folder / "adapter_model.safetensors").read_bytes(),
                                "adapter_config.json": config})
        except AdapterError as exc:
            assert "\n" not in str(exc)
