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

    _registry.register_family(_registry.Family(
        "toy", "Toy", "dW = scale * up @ down", "update s*up@down (Toy)", resize="lora"))
    _registry.register(_registry.Layout(format="kohya", family="toy",
                                        roles=(("down", ".toy_down.weight"), ("up", ".toy_up.weight")),
                                        required=("down", "up"), read=read))
    try:
        yield
    finally:
        _registry._FAMILIES.clear()
        _registry._FAMILIES.update(saved[0])
        _registry._LAYOUTS[:] = saved[1]


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
