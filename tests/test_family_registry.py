"""A family is one file: what it registers (lorarank.adapters._registry) is all the rest reads."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save

from lorarank.adapters import FAMILIES, _registry, families, load_adapter_bytes
from lorarank.audit import audit_adapter, converted_families, spectrum_of


class TestRegistered:
    def test_every_family_is_registered_by_its_file(self):
        """The six families each register a label, a description, a spectrum phrase and what a
        resize writes; FAMILIES is read from them."""
        assert list(families()) == ["lora", "adalora", "dora", "locon-tucker", "loha", "lokr"]
        assert FAMILIES == {name: f.description for name, f in families().items()}
        assert converted_families() == ("adalora", "locon-tucker", "loha", "lokr")
        assert all(f.label and f.spectrum for f in families().values())

    def test_registering_twice_is_refused(self):
        """A family name is registered once."""
        with pytest.raises(ValueError, match="registered twice"):
            _registry.register_family(families()["lora"])


@pytest.fixture
def toy_family():
    """Register a family the way a new file under lorarank/adapters/ would, then take it back."""
    from lorarank.adapters._model import LoraModule
    from lorarank.adapters.lora import read_factor

    saved = dict(_registry._FAMILIES), list(_registry._LAYOUTS)

    def read(tensors, name, keys, source):
        down = read_factor(tensors, keys["down"], source)
        up = read_factor(tensors, keys["up"], source)
        return LoraModule(name, down, up, 1.0, family="toy")

    def dims(fmt, shapes):   # down (r, in), up (out, r)
        down, up = shapes["down"], shapes["up"]
        return None if down[0] != up[1] else (down[0], up[0], down[1], 2 * down[0])

    _registry.register_family(_registry.Family(
        "toy", "Toy", "dW = scale * up @ down", "update s*up@down (Toy)", resize="lora",
        dims=dims, lora_rank="spectrum", file_rank="stored", rank_note="a Toy's r is its own",
        scale_rule=lambda alpha, r, rslora: alpha / (2 * r)))
    _registry.register(_registry.Layout(format="kohya", family="toy",
                                        roles=(("down", ".toy_down.weight"), ("up", ".toy_up.weight")),
                                        required=("down", "up"), read=read))
    try:
        yield
    finally:
        _registry._FAMILIES.clear()
        _registry._FAMILIES.update(saved[0])
        _registry._LAYOUTS[:] = saved[1]
        _registry.changed()


def test_a_new_family_needs_nothing_else(toy_family):
    """A family registered by its own file is read, audited with its own spectrum phrase (values
    equal to a dense SVD) and converted by a resize, with no other file naming it."""
    rng = np.random.default_rng(0)
    down, up = rng.normal(size=(3, 10)), rng.normal(size=(7, 3))
    data = save({"m.toy_down.weight": down, "m.toy_up.weight": up})
    adapter = load_adapter_bytes({"toy.safetensors": data})
    (module,) = adapter.modules
    assert module.family == "toy"
    assert spectrum_of(module) == "update s*up@down (Toy)"
    assert "toy" in converted_families()
    (report,) = audit_adapter(adapter).modules
    dense = np.linalg.svd(up @ down, compute_uv=False)
    np.testing.assert_allclose(report.singular_values, dense[:3], rtol=1e-10)


def test_its_own_rules_reach_screening_scales_and_the_fleet(toy_family):
    """What the family's file registers besides its reader is what the rest reads: header
    screening its sizes (and its one error when the shapes do not chain), a user's alpha its
    scale rule, the fleet its LoRA rank, tables the r its files state."""
    import io

    from lorarank.adapters.headers import parse_header, screen_entries
    from lorarank.documents import file_rank
    from lorarank.errors import AdapterError
    from lorarank.fleet.rows import lora_rank

    def screen(down_shape, up_shape):
        data = save({"m.toy_down.weight": np.ones(down_shape), "m.toy_up.weight": np.ones(up_shape)})
        entries, meta = parse_header("toy.safetensors", data[:8], io.BytesIO(data[8:]).read, len(data))
        return screen_entries(entries, config=None, source="toy.safetensors", metadata=meta)

    (module,) = screen((3, 10), (7, 3)).modules
    assert (module.family, module.rank, module.shape, module.lora_rank) == ("toy", 3, (7, 10), 6)
    with pytest.raises(AdapterError, match=r"the factors of module 'm' do not chain \(down \(3, 10\), up \(7, 4\)\)"):
        screen((3, 10), (7, 4))
    data = save({"m.toy_down.weight": np.ones((3, 10)), "m.toy_up.weight": np.ones((7, 3))})
    (read,) = load_adapter_bytes({"toy.safetensors": data}, alpha=12.0).modules
    assert read.scale == 12.0 / 6
    assert lora_rank("toy", 3, 9) == 9 and lora_rank("lora", 3, 9) == 3
    assert file_rank("toy", 3, 5) == 5 and file_rank("adalora", 3, 5) == 3


def test_family_rules_as_registered():
    """The real families' own rules, as their files register them (what moved out of the
    scale, screening, fleet and table code)."""
    f = families()
    assert [n for n in f if f[n].lycoris] == ["loha", "lokr"]
    assert [n for n in f if f[n].half_rank] == ["lokr"]
    assert [n for n in f if f[n].lora_rank == "spectrum"] == ["lokr"]
    assert [n for n in f if f[n].file_rank == "stored"] == ["lora", "loha"]
    assert all(fam.dims is not None for fam in f.values())
    assert sorted(n for n in f if f[n].rank_note) == ["adalora", "locon-tucker", "loha", "lokr"]
    assert f["adalora"].scale(8.0, 4) == 8.0 / (4 + 1e-5) and f["lora"].scale(8.0, 4, True) == 4.0
    assert f["lora"].scale(8.0, 0) == 0.0 and _registry.peft_family("lokr") is f["lokr"]
