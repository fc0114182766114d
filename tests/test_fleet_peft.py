"""Oracle: the copies ``lorarank fleet --apply`` writes load in PEFT itself, padded ones give the
very same update (``get_delta_weight`` bit for bit), shrunk ones the best rank-cap truncation.

Needs torch, transformers and peft (``/work/venv-oracles``: ``/work/venv-oracles/bin/python -m
pytest -p no:xdist tests/test_fleet_peft.py``); skipped with the reason where they are absent
(CI). The numpy checks of the same properties run everywhere (tests/test_fleet.py).
"""

from __future__ import annotations

import json

import pytest

from lorarank.cli import main

torch = pytest.importorskip("torch", reason="torch is not installed here (see the module docstring)")
peft = pytest.importorskip("peft", reason="peft is not installed here (see the module docstring)")
transformers = pytest.importorskip("transformers", reason="transformers is not installed here")


def base_model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=50)
    return transformers.LlamaForCausalLM(config).eval()


def trained_adapter(folder, *, r: int, alpha: float, rslora: bool, seed: int) -> None:
    """A PEFT adapter whose B factors are random (as after training), saved by PEFT."""
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=["q_proj", "v_proj", "down_proj"])
    model = peft.get_peft_model(base_model(), cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(str(folder))


def deltas(folder) -> dict[str, "torch.Tensor"]:
    model = peft.PeftModel.from_pretrained(base_model(), str(folder))
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer) and "default" in module.lora_A:
            out[name] = module.get_delta_weight("default").detach().clone()
    assert out
    return out


@pytest.mark.parametrize("rslora", [False, True])
def test_padded_copies_load_in_peft_with_the_same_update(tmp_path, rslora, capsys):
    for i, r in enumerate((3, 5, 8)):
        trained_adapter(tmp_path / "fleet" / f"a{i}", r=r, alpha=7.0, rslora=rslora, seed=i)
    out = tmp_path / "out"
    assert main(["fleet", str(tmp_path / "fleet"), "--pad-to", "16", "--apply", str(out), "--workers", "1",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for record in doc["applied"]:
        assert record["ok"], record
        src = tmp_path / "fleet" / record["source"].rsplit("/", 1)[-1]
        config = json.loads((tmp_path / "out" / record["folder"].rsplit("/", 1)[-1] / "adapter_config.json").read_text())
        assert config["r"] == 16 and not config["rank_pattern"]
        before, after = deltas(src), deltas(record["folder"])
        assert before.keys() == after.keys()
        for name in before:
            assert torch.equal(before[name], after[name]), name      # bit for bit


def test_shrunk_copies_are_the_best_truncation_in_peft(tmp_path, capsys):
    trained_adapter(tmp_path / "fleet" / "wide", r=12, alpha=24.0, rslora=False, seed=7)
    trained_adapter(tmp_path / "fleet" / "narrow", r=4, alpha=8.0, rslora=False, seed=8)
    out = tmp_path / "out"
    assert main(["fleet", str(tmp_path / "fleet"), "--cap", "6", "--pad-to", "8", "--apply", str(out),
                 "--workers", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by = {r["source"].rsplit("/", 1)[-1]: r for r in doc["applied"]}
    for name, record in by.items():
        before, after = deltas(tmp_path / "fleet" / name), deltas(record["folder"])
        for module in before:
            dense = before[module].double()
            u, s, vh = torch.linalg.svd(dense)
            k = 6 if name == "wide" else 4
            best = (u[:, :k] * s[:k]) @ vh[:k]
            assert torch.allclose(after[module].double(), best, atol=1e-5 * float(s[0])), (name, module)
            if name == "narrow":
                assert torch.equal(before[module], after[module])      # padded only: unchanged
