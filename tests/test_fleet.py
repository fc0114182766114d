"""The fleet engine: every row equals the single-adapter audit, errors are rows, the cache,
screening, the planner, padding and shrinking, the executors and the CLI contract."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lorarank.cli import main
from lorarank.errors import AdapterError
from lorarank.fleet import (FleetOptions, ResultCache, audit_member, cap_files, energy_at, expand_sources,
                            fleet_csv, fleet_document, members_from_uploads, pad_adapter, plan_caps,
                            plan_tasks, run_fleet)
from lorarank.fleet.rows import energy_curve
import testkit

SAMPLES = testkit.SAMPLES
needs_samples = testkit.needs(SAMPLES)
FAMILIES = ["peft_dora", "peft_adalora", "peft_loha", "peft_lokr", "peft_modules_to_save",
            "peft_multi_adapter/summarize", "peft_multi_adapter/translate",
            "diffusers_unet_lora/pytorch_lora_weights.safetensors", "lycoris_loha.safetensors",
            "lycoris_lokr.safetensors", "lycoris_locon_tucker.safetensors", "mlx_dora", "gguf_lora.gguf"]
RANKS = ["peft_llama_r8", "peft_llama_r32_rslora", "peft_llama_rank_pattern", "peft_gpt2_r4"]


def write_peft(folder: Path, *, r: int, seed: int, alpha: float = 16.0, dtype=np.float32, rslora=False,
               layers: int = 2, d: int = 32) -> Path:
    """A small generated PEFT LoRA folder (real safetensors file, PEFT's config keys)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer in range(layers):
        for mod, (d_out, d_in) in {"q_proj": (d, d), "v_proj": (d // 2, d)}.items():
            name = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            decay = np.geomspace(1, 0.01, r)
            tensors[name + ".lora_A.weight"] = (rng.standard_normal((r, d_in)) * decay[:, None]).astype(dtype)
            tensors[name + ".lora_B.weight"] = rng.standard_normal((d_out, r)).astype(dtype)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora,
              "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "tiny/llama",
              "rank_pattern": {}, "alpha_pattern": {}, "fan_in_fan_out": False}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def audit_doc(path: Path, capsys) -> dict:
    assert main(["audit", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def expected_curve(doc: dict, length: int) -> list[float]:
    """Energy kept at caps 1..length straight from the audit document's singular values."""
    spectra = [np.array(m["singular_values"], dtype=np.float64) for m in doc["modules"]]
    total = sum(float(np.sum(s**2)) for s in spectra)
    return [sum(float(np.sum(s[:c] ** 2)) for s in spectra) / total for c in range(1, length + 1)]


# ------------------------------------------------------------------------------ equality
@needs_samples
class TestRowsEqualTheAudit:
    """A fleet row says what `lorarank audit --json` says of the same files."""

    @pytest.mark.parametrize("case", [f"families/{f}" for f in FAMILIES] + RANKS)
    def test_every_family_and_rank(self, case, capsys):
        path = SAMPLES / case
        doc = audit_doc(path, capsys)
        (member,) = expand_sources([str(path)]).members
        row = audit_member(member, FleetOptions())
        s = doc["summary"]
        assert row["ok"], row["error"]
        assert row["format"] == doc["format"]
        assert row["family"] == "+".join(s["families"])
        assert row["stored_ranks"] == s["ranks"]
        assert row["recommended_rank"] == s["recommended_rank"]
        assert row["params"] == s["params"] and row["modules"] == s["modules"]
        assert row["warnings"] == s["warnings"] and row["dtypes"] == s["dtypes"]
        sizes = [len(m["singular_values"]) for m in doc["modules"]]
        lora = [n if m["family"] == "lokr" else m["rank"] for m, n in zip(doc["modules"], sizes)]
        assert row["max_rank"] == max(lora)
        want = expected_curve(doc, row["max_rank"])
        assert row["energy_curve"] == pytest.approx(want, rel=1e-12, abs=1e-15)
        for cap, e in row["energy_at_cap"].items():
            assert e == pytest.approx(1.0 if int(cap) >= row["max_rank"] else want[int(cap) - 1], rel=1e-12)

    def test_generated_bfloat16_and_rslora(self, tmp_path, capsys):
        folder = write_peft(tmp_path / "bf16", r=12, seed=3, dtype=ml_dtypes.bfloat16, rslora=True)
        doc = audit_doc(folder, capsys)
        (member,) = expand_sources([str(folder)]).members
        row = audit_member(member, FleetOptions(rule="sv_ratio", value=10))
        ref = audit_doc(folder, capsys)
        assert row["dtypes"] == ["bfloat16"] and row["stored_ranks"] == [12]
        assert row["energy_curve"] == pytest.approx(expected_curve(ref, 12), rel=1e-12)
        assert row["base_model"] == "tiny/llama"
        assert row["bytes"] == sum(p.stat().st_size for p in folder.iterdir())
        assert doc["summary"]["ranks"] == [12]


def test_energy_curve_matches_dense_svd():
    """energy_curve of factored spectra equals the dense float64 SVD of each s*B@A."""
    rng = np.random.default_rng(0)
    spectra, dense = [], []
    for r in (3, 7, 5):
        b, a = rng.standard_normal((20, r)), rng.standard_normal((r, 15))
        s = np.linalg.svd(1.5 * b @ a, compute_uv=False)
        dense.append(s)
        spectra.append(s[:r])
    total = sum(float(np.sum(s**2)) for s in dense)
    want = [sum(float(np.sum(s[:c] ** 2)) for s in dense) / total for c in range(1, 8)]
    assert energy_curve(spectra) == pytest.approx(want, rel=1e-12)
    assert energy_curve([np.zeros(3)]) == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------ bad members, CLI
def bad_fleet(tmp_path: Path) -> Path:
    fleet = tmp_path / "fleet"
    write_peft(fleet / "good", r=4, seed=1)
    (fleet / "text.safetensors").write_text("not a safetensors file")
    bad = fleet / "unpaired"
    bad.mkdir()
    save_file({"x.lora_A.weight": np.ones((2, 4), np.float32)}, str(bad / "adapter_model.safetensors"))
    (bad / "adapter_config.json").write_text("{}")
    huge = fleet / "huge_header.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    lying = fleet / "lying.safetensors"
    header = json.dumps({"m.lora_A.weight": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 8]},
                         "m.lora_B.weight": {"dtype": "F32", "shape": [2, 1], "data_offsets": [8, 16]}}).encode()
    lying.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    deep = fleet / "deep.safetensors"
    header = b"[" * 10_000 + b"]" * 10_000
    deep.write_bytes(struct.pack("<Q", len(header)) + header)
    return fleet


class TestBadMembers:
    """A member that cannot be read is a row with its one-line error; the fleet goes on."""

    @pytest.mark.parametrize("screen", [False, True])
    def test_rows_with_errors(self, tmp_path, screen):
        fleet = bad_fleet(tmp_path)
        members = expand_sources([str(fleet)]).members
        result = run_fleet(members, FleetOptions(screen=screen), workers=1)
        by = {Path(r["source"]).name: r for r in result.rows}
        assert set(by) == {"good", "text.safetensors", "unpaired", "huge_header.safetensors",
                           "lying.safetensors", "deep.safetensors"}
        assert by["good"]["ok"] and by["good"]["stored_ranks"] == [4]
        for name, row in by.items():
            if name != "good":
                assert not row["ok"] and row["error"] and "\n" not in row["error"], name
                assert "Traceback" not in row["error"]
        assert "no partner" in by["unpaired"]["error"]
        assert "safetensors" in by["text.safetensors"]["error"]

    def test_cli_exit_codes(self, tmp_path, capsys):
        fleet = bad_fleet(tmp_path)
        assert main(["fleet", str(fleet / "good"), "--json", "--workers", "1"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert set(doc) == {"adapters", "plan", "summary"}
        row = doc["adapters"][0]
        for key in ("source", "revision", "ok", "error", "format", "family", "base_model", "stored_ranks",
                    "recommended_rank", "energy_at_cap", "params", "bytes", "warnings"):
            assert key in row
        assert set(doc["plan"]) >= {"cap", "fit", "shrink", "energy_kept_min", "smallest_cap"}
        assert main(["fleet", str(fleet), "--json", "--workers", "1"]) == 1
        doc = json.loads(capsys.readouterr().out)
        assert doc["summary"]["failed"] == 5
        for argv, words in [(["fleet", str(fleet), "--caps", "x"], "--caps"),
                            (["fleet", str(fleet), "--rule", "nope"], "rule"),
                            (["fleet", str(fleet), "--pad-to", "8"], "--apply"),
                            (["fleet", str(fleet), "--apply", str(tmp_path / "o")], "--cap"),
                            (["fleet", str(tmp_path / "missing")], "no such file"),
                            (["fleet", str(tmp_path / "*.nothing")], "matches no"),
                            (["fleet", "hf://?colour=red"], "unknown query key"),
                            (["fleet", str(fleet), "--cap", "16", "--pad-to", "8", "--apply", "o"], "above")]:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("lorarank: error:") and words in err and err.count("\n") == 1, (argv, err)

    def test_csv_and_text(self, tmp_path, capsys):
        fleet = bad_fleet(tmp_path)
        assert main(["fleet", str(fleet), "--csv", "--workers", "1"]) == 1
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[0].startswith("source,revision,ok,error,format") and len(lines) == 7
        assert main(["fleet", str(fleet / "good"), "--cap", "2", "--workers", "1"]) == 0
        out = capsys.readouterr().out
        assert "At cap 2, 0 of 1 adapters fit as they are and 1 must be shrunk" in out

    def test_csv_formula_cells(self):
        rows = [{"source": "=HYPERLINK(1)", "ok": False, "error": "@x", "stored_ranks": []}]
        text = fleet_csv(rows)
        assert "'=HYPERLINK(1)" in text and "'@x" in text


# ------------------------------------------------------------------------------- the cache
class TestCache:
    """Rows are kept by content: a rerun after adding one adapter audits one."""

    def test_rerun_audits_what_changed(self, tmp_path):
        fleet = tmp_path / "fleet"
        for i in range(3):
            write_peft(fleet / f"a{i}", r=4 + i, seed=i)
        cache = ResultCache(tmp_path / "cache")
        first = run_fleet(expand_sources([str(fleet)]).members, FleetOptions(), workers=1, cache=cache)
        assert (first.audited, first.cached) == (3, 0)
        write_peft(fleet / "a3", r=9, seed=9)
        again = run_fleet(expand_sources([str(fleet)]).members, FleetOptions(), workers=1,
                          cache=ResultCache(tmp_path / "cache"))
        assert (again.audited, again.cached) == (1, 3)
        assert again.rows[:3] == first.rows
        # new bytes at the same path are audited again; other options are other rows
        write_peft(fleet / "a0", r=6, seed=42)
        third = run_fleet(expand_sources([str(fleet)]).members, FleetOptions(), workers=1, cache=cache)
        assert (third.audited, third.cached) == (1, 3) and third.rows[0]["stored_ranks"] == [6]
        screened = run_fleet(expand_sources([str(fleet)]).members, FleetOptions(screen=True), workers=1,
                             cache=cache)
        assert screened.audited == 4

    def test_moved_files_hit_and_failures_are_retried(self, tmp_path):
        write_peft(tmp_path / "x" / "a", r=4, seed=1)
        (tmp_path / "x" / "bad.safetensors").write_text("nope")
        cache = ResultCache(tmp_path / "cache")
        run_fleet(expand_sources([str(tmp_path / "x")]).members, FleetOptions(), workers=1, cache=cache)
        shutil.move(str(tmp_path / "x"), str(tmp_path / "y"))
        again = run_fleet(expand_sources([str(tmp_path / "y")]).members, FleetOptions(), workers=1, cache=cache)
        assert (again.audited, again.cached) == (1, 1)
        assert again.rows[0]["source"].endswith("y/a") and again.rows[0]["ok"] and not again.rows[1]["ok"]


def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _sparse(path: Path, size: int = 64 * 2**20) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)


#: What a shared, hostile or corrupted cache folder can hold where a row or the hash index is.
HOSTILE_CACHE = {
    "deep JSON": lambda p: p.write_bytes(b"[" * 200_000),
    "a FIFO": _fifo,
    "64 MiB": _sparse,
    "a folder": lambda p: (p.unlink(missing_ok=True), p.mkdir()),
    "not UTF-8": lambda p: p.write_bytes(b'{"ok": true, "format": "' + bytes([0xff, 0xfe]) + b'"}'),
    "half a row": lambda p: p.write_text('{"ok": true, "stored_ranks": [4]}'),
    "wrong types": lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "modules": "many", "energy_curve": [[1]]}) if p.is_file() else "{}"),
    "a huge number": lambda p: p.write_text('{"ok": true, "max_rank": ' + "9" * 5000 + "}"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["row", "index"])
@pytest.mark.parametrize("damage", list(HOSTILE_CACHE))
def test_hostile_cache_files_are_misses(tmp_path, capsys, what, damage):
    """A cache file that is not a row the cache wrote (a FIFO, a deep or huge document, a row
    of the wrong shape) is a cache miss: the CLI audits the adapter again and gives the same
    row, without a traceback, a hang or reading more than the cache's byte caps."""
    import tracemalloc

    if damage == "a FIFO" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    write_peft(tmp_path / "fleet" / "a", r=4, seed=1)
    args = ["fleet", str(tmp_path / "fleet"), "--json", "--workers", "1", "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    (row_file,) = (tmp_path / "cache" / "rows").rglob("*.json")
    target = row_file if what == "row" else tmp_path / "cache" / "stat.json"
    assert target.is_file()
    HOSTILE_CACHE[damage](target)
    tracemalloc.start()
    try:
        code = main(args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    again = json.loads(captured.out)
    assert again["adapters"] == first["adapters"]
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MiB traced reading a {damage} cache file"
    if what == "row":  # audited again, not served from the damaged file
        assert "0 from the cache" in captured.err, captured.err
    if damage == "a folder":  # cannot be replaced: the run goes on, and says so in one line
        (note,) = [line for line in captured.err.splitlines() if "cache could not be written" in line]
        assert note.startswith("note: ") and "a rerun audits again" in note


# ------------------------------------------------------------------------------- screening
@needs_samples
@pytest.mark.parametrize("case", [f"families/{f}" for f in FAMILIES] + RANKS)
def test_screen_rows_agree_with_audit_rows(case):
    """Header screening gives the audit's ranks, module count, parameters and serving rank."""
    (member,) = expand_sources([str(SAMPLES / case)]).members
    full = audit_member(member, FleetOptions())
    screen = audit_member(member, FleetOptions(screen=True))
    assert screen["ok"] and screen["screened"], screen["error"]
    for key in ("format", "family", "stored_ranks", "max_rank", "modules", "params", "bytes", "base_model"):
        assert screen[key] == full[key], key
    assert screen["energy_at_cap"] == {} and screen["recommended_rank"] == {}


def test_screen_reads_headers_only(tmp_path, monkeypatch):
    """Screening a local file reads its header (in one read of at most 8 KiB with its first
    bytes) and never the tensors."""
    from lorarank.fleet import rows

    folder = write_peft(tmp_path / "a", r=64, seed=0, d=256)
    weights = folder / "adapter_model.safetensors"
    fds, reads = set(), []
    real_open, real_read = os.open, os.read

    def spy_open(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if os.fspath(path) == str(weights):
            fds.add(fd)
        return fd

    def spy_read(fd, n):
        data = real_read(fd, n)
        if fd in fds:
            reads.append(len(data))
        return data

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "read", spy_read)
    (member,) = expand_sources([str(folder)]).members
    row = audit_member(member, FleetOptions(screen=True))
    assert row["ok"] and row["stored_ranks"] == [64]
    header_len = struct.unpack("<Q", weights.read_bytes()[:8])[0]
    assert reads, "the weights were not read through os.read"
    assert sum(reads) <= max(8 + header_len, rows._FIRST_READ)
    assert weights.stat().st_size > 20 * max(8 + header_len, rows._FIRST_READ)


def test_screen_header_long_header_read_on(tmp_path):
    """A header longer than the first read is read on from the file, and screened as the
    audit reads it (many modules: a ~20 KiB header)."""
    folder = write_peft(tmp_path / "long", r=4, seed=1, layers=40, d=16)
    weights = folder / "adapter_model.safetensors"
    assert struct.unpack("<Q", weights.read_bytes()[:8])[0] > 16 * 2**10
    (member,) = expand_sources([str(folder)]).members
    full = audit_member(member, FleetOptions())
    screen = audit_member(member, FleetOptions(screen=True))
    assert screen["ok"], screen["error"]
    for key in ("stored_ranks", "max_rank", "modules", "params", "bytes"):
        assert screen[key] == full[key], key


@needs_samples
@pytest.mark.parametrize("case", ["families/peft_lokr", "families/lycoris_loha.safetensors",
                                  "families/diffusers_unet_lora/pytorch_lora_weights.safetensors", "peft_llama_r8"])
def test_screen_header_memo_equals_a_fresh_screen(case):
    """A header seen before is answered from the memo: the answer equals parsing and screening
    it afresh; the file's size, the config's presence and its peft_type are part of the key,
    and a registry change forgets every kept answer."""
    from lorarank.adapters import _registry
    from lorarank.adapters import headers as H
    from lorarank.fleet.rows import _local_names, _parse_config

    weights, cfg = _local_names(str(SAMPLES / case))
    data = Path(weights).read_bytes()
    config = _parse_config("adapter_config.json", Path(cfg).read_bytes()) if cfg else None

    def reader():
        pos = [8]

        def read(n):
            pos[0] += n
            return data[pos[0] - n:pos[0]]
        return read

    entries, meta = H.parse_header("w", data[:8], reader(), len(data))
    fresh = H.screen_entries(entries, config=config, source="w", metadata=meta)
    H._SEEN.clear()
    first = H.screen_header("w", data[:8], reader(), len(data), config=config)
    again = H.screen_header("w", data[:8], reader(), len(data), config=config)
    assert first == fresh and again is first
    with H.header_memo(enabled=False):   # every header parsed as new: equal, not the kept one
        anew = H.screen_header("w", data[:8], reader(), len(data), config=config)
        assert anew == first and anew is not first
    assert H.screen_header("w", data[:8], reader(), len(data), config=config) is first
    # another size: not the same file, the memo does not answer (and the layout check refuses it)
    with pytest.raises(AdapterError, match="does not describe its data exactly"):
        H.screen_header("w", data[:8], reader(), len(data) + 2, config=config)
    # another peft_type: its own answer (here the refusal of an unknown type, never kept)
    other = dict(config or {}, peft_type="IA3")
    for _ in range(2):
        with pytest.raises(AdapterError, match="IA3"):
            H.screen_header("w", data[:8], reader(), len(data), config=other)
    generation = _registry.generation()
    _registry.changed()
    assert _registry.generation() == generation + 1
    assert H.screen_header("w", data[:8], reader(), len(data), config=config) is not first


def test_screen_header_memo_is_bounded(tmp_path):
    """The memo keeps at most a few dozen headers of at most 64 KiB: a fleet of distinct
    headers (or a hostile one) cannot grow it."""
    from lorarank.adapters import headers as H

    H._SEEN.clear()
    for i in range(3 * H._SEEN_MAX):
        folder = write_peft(tmp_path / f"m{i}", r=2 + i % 7, seed=i, layers=1 + i // 7, d=8)
        (member,) = expand_sources([str(folder)]).members
        assert audit_member(member, FleetOptions(screen=True))["ok"]
        assert len(H._SEEN) <= H._SEEN_MAX
    assert all(len(key[0]) <= H._SEEN_BYTES for key in H._SEEN)


# ------------------------------------------------------------------------------- uploads
@needs_samples
def test_members_from_a_zip_and_loose_files(tmp_path):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for case in ("peft_llama_r8", "peft_gpt2_r4"):
            for f in (SAMPLES / case).iterdir():
                z.write(f, f"runs/{case}/{f.name}")
    kohya = (SAMPLES / "families" / "lycoris_loha.safetensors").read_bytes()
    exp = members_from_uploads([("fleet.zip", buf.getvalue()), ("loha.safetensors", kohya)])
    assert sorted(m.source for m in exp.members) == ["loha.safetensors", "runs/peft_gpt2_r4", "runs/peft_llama_r8"]
    rows = run_fleet(exp.members, FleetOptions(), workers=1).rows
    (local,) = expand_sources([str(SAMPLES / "peft_llama_r8")]).members
    ref = audit_member(local, FleetOptions())
    zipped = next(r for r in rows if r["source"] == "runs/peft_llama_r8")
    assert {k: v for k, v in zipped.items() if k != "source"} == {k: v for k, v in ref.items() if k != "source"}
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../etc/adapter.safetensors", b"x")
    with pytest.raises(ValueError, match="unsafe path"):
        members_from_uploads([("evil.zip", evil.getvalue())])


# ------------------------------------------------------------------------------- executors
def test_processes_give_the_serial_rows(tmp_path):
    fleet = bad_fleet(tmp_path)
    for i in range(4):
        write_peft(fleet / f"g{i}", r=3 + 2 * i, seed=10 + i)
    members = expand_sources([str(fleet)]).members
    serial = run_fleet(members, FleetOptions(), workers=1)
    seen = []
    pooled = run_fleet(members, FleetOptions(), workers=2, progress=seen.append)
    assert pooled.executor == "processes" and serial.executor == "serial"
    assert pooled.rows == serial.rows
    # Batches: the bad members share tasks with good ones and are still rows of their own.
    tasks = plan_tasks(members, range(len(members)), FleetOptions(), workers=2)
    assert pooled.tasks == len(tasks) == 2 and serial.tasks == len(members)
    assert all(any(serial.rows[i]["ok"] for i in t) and any(not serial.rows[i]["ok"] for i in t) for t in tasks)
    # Progress still counts adapters, one call per adapter, in steps of one.
    assert [p.done for p in seen] == list(range(len(members) + 1))
    assert seen[-1].failed == 5 and "adapters" in seen[-1].text()


def test_forked_workers_leave_the_collector_as_it_was(tmp_path):
    """The pool freezes the parent's objects out of the collector while forked workers run
    (no copy of every inherited page) and unfreezes them after, also when a run fails."""
    import gc
    import subprocess
    import sys
    import textwrap

    for i in range(3):
        write_peft(tmp_path / f"g{i}", r=2 + i, seed=i)
    code = textwrap.dedent(f"""
        import gc, threading
        from lorarank.fleet import FleetOptions, expand_sources, run_fleet
        assert threading.active_count() == 1   # a one-thread parent: the pool forks
        import lorarank.fleet.runner as runner
        members = expand_sources([{str(tmp_path / "g*")!r}]).members
        serial = run_fleet(members, FleetOptions(), workers=1).rows
        real = runner.audit_members

        def seen(batch, options, **kw):   # what a worker's collector sees of the parent
            with open({str(tmp_path / "frozen.txt")!r}, "a") as fh:
                fh.write(f"{{gc.get_freeze_count()}}\\n")
            return real(batch, options, **kw)

        runner.audit_members = seen
        before = gc.get_freeze_count()
        result = run_fleet(members, FleetOptions(), workers=2)
        assert result.executor == "processes" and result.rows == serial
        assert gc.get_freeze_count() == before == 0, gc.get_freeze_count()
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    counts = [int(n) for n in (tmp_path / "frozen.txt").read_text().split()]
    assert counts and all(n > 10_000 for n in counts), counts   # the parent's objects, frozen
    assert gc.get_freeze_count() == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_local_workers_keep_blas_to_one_thread(tmp_path):
    """Each local worker (forked from a one-thread parent, or through forkserver from a threaded
    one) runs BLAS on one thread, whatever the parent's BLAS uses, and has no thread but its own
    after an audit: a worker that set the count itself restarted OpenBLAS's thread pool, whose
    new thread spun ~0.1 s on a core the other worker needed. The parent's setting is left as
    it was."""
    import subprocess
    import sys
    import textwrap

    for i in range(3):
        write_peft(tmp_path / f"g{i}", r=2 + i, seed=i)
    (tmp_path / "spy").mkdir()
    (tmp_path / "spy" / "blas_spy.py").write_text(textwrap.dedent(f"""
        import os
        from threadpoolctl import threadpool_info
        from lorarank.fleet import rows

        def blas():
            return sorted({{lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}})

        def seen(batch, options, **kw):   # the real audit, then what the worker's BLAS uses
            out = rows.audit_members(batch, options, **kw)
            with open({str(tmp_path / "threads.txt")!r}, "a") as fh:
                fh.write(f"{{blas()}} {{len(os.listdir('/proc/self/task'))}}\\n")
            return out
    """))
    code = textwrap.dedent(f"""
        import threading
        from threadpoolctl import threadpool_limits
        from lorarank.fleet import FleetOptions, expand_sources, run_fleet
        import lorarank.fleet.runner as runner
        import blas_spy
        threadpool_limits(limits=2, user_api="blas")
        members = expand_sources([{str(tmp_path / "g*")!r}]).members
        serial = run_fleet(members, FleetOptions(), workers=1).rows
        runner.audit_members = blas_spy.seen
        assert threading.active_count() == 1   # forked workers
        assert run_fleet(members, FleetOptions(), workers=2).rows == serial
        stop = threading.Event()
        threading.Thread(target=stop.wait).start()   # a threaded parent: forkserver
        try:
            assert run_fleet(members, FleetOptions(), workers=2).rows == serial
        finally:
            stop.set()
        print(blas_spy.blas())
    """)
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, str(tmp_path / "spy")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0 and done.stdout.strip() == "[2]", done.stderr[-2000:]
    lines = (tmp_path / "threads.txt").read_text().splitlines()
    assert len(lines) >= 4 and set(lines) == {"[1] 1"}, lines


def test_batches_with_the_cache(tmp_path):
    """Only the cache's misses are planned into tasks: a rerun after adding one adapter runs one
    task of one adapter, and the rows are the serial ones, in member order."""
    fleet = tmp_path / "fleet"
    for i in range(6):
        write_peft(fleet / f"g{i}", r=2 + i, seed=40 + i)
    cache = ResultCache(tmp_path / "cache")
    first = run_fleet(expand_sources([str(fleet)]).members, FleetOptions(), workers=2, cache=cache)
    assert (first.audited, first.cached, first.tasks) == (6, 0, 2)
    write_peft(fleet / "g2b", r=5, seed=99)
    members = expand_sources([str(fleet)]).members
    again = run_fleet(members, FleetOptions(), workers=2, cache=cache)
    assert (again.audited, again.cached, again.tasks) == (1, 6, 1)
    assert again.rows == run_fleet(members, FleetOptions(), workers=1).rows


def test_a_stop_keeps_the_finished_rows(tmp_path):
    """Ctrl-C (here raised by the progress callback, as the CLI's handler sees it) in the middle
    of a batched run: the rows finished before it are in the cache, and the rerun reuses them."""
    fleet = tmp_path / "fleet"
    for i in range(8):
        write_peft(fleet / f"g{i}", r=2 + i, seed=60 + i)
    members = expand_sources([str(fleet)]).members
    cache = ResultCache(tmp_path / "cache")

    def stop(p) -> None:
        if p.done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_fleet(members, FleetOptions(), workers=2, cache=cache, progress=stop)
    again = run_fleet(members, FleetOptions(), workers=2, cache=ResultCache(tmp_path / "cache"))
    assert again.cached >= 3 and again.audited == len(members) - again.cached
    assert again.rows == run_fleet(members, FleetOptions(), workers=1).rows


def _sized(folder: Path, name: str, size: int) -> Path:
    """A file of ``size`` bytes that costs no disk (sparse): the planner only looks at sizes."""
    path = folder / name
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def test_plan_groups_small_adapters_and_leaves_large_ones_alone(tmp_path):
    """Every index once; small adapters grouped in member order; an adapter over LARGE_BYTES (or
    of unknown size: the Hub) alone; at least one task per worker; tasks largest first."""
    from lorarank.fleet import Member
    from lorarank.fleet.runner import LARGE_BYTES, TASK_SECONDS, estimated_seconds

    members = []
    for i in range(300):
        if i in (7, 150):
            members.append(Member(source=f"big{i}", path=str(_sized(tmp_path, f"big{i}.safetensors", LARGE_BYTES + 1))))
        elif i == 200:
            members.append(Member(source="hf://org/x", hub="hf://org/x"))
        elif i == 250:
            members.append(Member(source="up", files=(("up.safetensors", bytes(50_000)),)))
        else:
            members.append(Member(source=f"s{i}", path=str(_sized(tmp_path, f"s{i}.safetensors", 100_000 + 997 * i))))
    folder = write_peft(tmp_path / "folder", r=4, seed=0)
    members.append(Member(source="folder", path=str(folder)))
    todo = [i for i in range(len(members)) if i % 10 != 3]   # cache hits are not planned
    for screen in (False, True):
        for workers in (1, 2, 7):
            tasks = plan_tasks(members, todo, FleetOptions(screen=screen), workers=workers)
            assert sorted(i for t in tasks for i in t) == todo
            alone = {t[0] for t in tasks if len(t) == 1}
            assert {7, 150, 200} <= alone and all(len(t) == 1 for t in tasks if {7, 150, 200} & set(t))
            groups = [t for t in tasks if not {7, 150, 200} & set(t)]
            cost = [sum(estimated_seconds(members[i], FleetOptions(screen=screen)) for i in t) for t in tasks]
            assert cost == sorted(cost, reverse=True)   # largest first
            for t in groups:   # consecutive in member order, at most the largest task's estimate
                assert list(t) == [i for i in todo if t[0] <= i <= t[-1] and i not in (7, 150, 200)]
                assert len(t) == 1 or sum(estimated_seconds(members[i], FleetOptions(screen=screen))
                                          for i in t) <= 1.5 * TASK_SECONDS[1]
            assert len(tasks) >= min(workers, len(todo)) and len(groups) < len(todo) / 10
            assert tasks[0] == (200,)   # unknown size first (it may be the largest)
    # Guided: in member order, the groups' estimates shrink towards the end of the fleet.
    groups = sorted((t for t in plan_tasks(members, todo, FleetOptions(), workers=2) if len(t) > 1),
                    key=lambda t: t[0])
    cost = [sum(estimated_seconds(members[i], FleetOptions()) for i in t) for t in groups]
    assert len(groups) > 4 and cost[0] > 2 * cost[-2]
    assert plan_tasks(members, [], FleetOptions(), workers=2) == []
    assert plan_tasks(members, [5], FleetOptions(), workers=2) == [(5,)]


def test_a_dead_worker_costs_no_batch(tmp_path):
    """A worker killed mid-run (as the OOM killer does) breaks the pool; the batches in flight are
    split and each adapter audited again alone, so every row is still the serial one."""
    import multiprocessing
    import signal

    fleet = tmp_path / "fleet"
    for i in range(40):
        write_peft(fleet / f"g{i:02d}", r=4 + i % 5, seed=30 + i, d=64)
    (fleet / "text.safetensors").write_text("not a safetensors file")
    members = expand_sources([str(fleet)]).members
    serial = run_fleet(members, FleetOptions(), workers=1)
    killed, seen = [], []
    others = {c.pid for c in multiprocessing.active_children()}   # e.g. a Dask cluster's: not ours

    def progress(p) -> None:   # after the first adapter's row, one of the pool's workers is killed
        seen.append(p)
        if p.done and not killed:
            children = [c for c in multiprocessing.active_children() if c.pid not in others]
            if children:
                os.kill(children[0].pid, signal.SIGKILL)
                killed.append(children[0].pid)

    pooled = run_fleet(members, FleetOptions(), workers=2, progress=progress)
    assert killed
    assert pooled.rows == serial.rows
    assert seen[-1].done == len(members) and seen[-1].failed == 1


def test_a_pooled_run_leaves_no_thread_or_process_behind(tmp_path):
    """Every pooled run returns with its workers reaped and its pool's threads ended. The pool's
    own thread and a join from the caller's once raced to reap the same worker: the loser saw it
    alive, and in about one run in four the pool's thread outlived the run, so the next run in
    the process saw a threaded parent and started its workers through forkserver."""
    import multiprocessing
    import threading

    fleet = tmp_path / "fleet"
    for i in range(6):
        write_peft(fleet / f"g{i}", r=2 + i, seed=80 + i, d=32)
    members = expand_sources([str(fleet)]).members
    serial = run_fleet(members, FleetOptions(), workers=1).rows
    threads = set(threading.enumerate())
    children = {c.pid for c in multiprocessing.active_children()}
    for _ in range(20):
        assert run_fleet(members, FleetOptions(), workers=2).rows == serial
        assert set(threading.enumerate()) <= threads
        assert {c.pid for c in multiprocessing.active_children()} <= children


# ------------------------------------------------------------------------------- planner
def test_plan_against_brute_force():
    """fit / shrink / the smallest cap, checked by counting directly."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(20):
        r = int(rng.integers(2, 40))
        spectra = [np.sort(rng.random(r))[::-1] * rng.random() for _ in range(3)]
        curve = energy_curve(spectra)
        rows.append({"source": f"a{i}", "ok": True, "max_rank": r, "energy_curve": curve, "screened": False})
    rows.append({"source": "bad", "ok": False, "max_rank": None, "energy_curve": []})
    plan = plan_caps(rows, cap=16, keep=0.95, share=0.8)
    ok = rows[:-1]
    assert plan.fit == [r["source"] for r in ok if r["max_rank"] <= 16]
    assert [s["source"] for s in plan.shrink] == [r["source"] for r in ok if r["max_rank"] > 16]
    assert plan.energy_kept_min == min(r["energy_curve"][15] for r in ok if r["max_rank"] > 16)
    good = lambda c: sum((1.0 if c >= r["max_rank"] else r["energy_curve"][c - 1]) >= 0.95 for r in ok)  # noqa: E731
    want = next(c for c in range(1, 41) if good(c) >= 16)
    assert plan.smallest_cap == want and good(want - 1) < 16
    assert plan.smallest_listed_cap == next(c for c in (8, 16, 32, 64, 128) if good(c) >= 16)
    assert plan.counted == 20 and "At cap 16" in plan.sentence()
    assert energy_at(ok[0], 1000) == 1.0


# ------------------------------------------------------------------------- pad and shrink
def test_pad_keeps_the_update_bit_for_bit(tmp_path):
    """Padded factors: the original entries bit-identical, zeros after, the scale identical."""
    from lorarank.adapters import load_adapter, load_adapter_bytes

    folder = write_peft(tmp_path / "a", r=5, seed=2, alpha=7.0, rslora=True)
    adapter = load_adapter(folder)
    files, summary = cap_files(adapter, cap=None, pad_to=64)
    padded = load_adapter_bytes(files)
    assert padded.ranks == [64] and summary["changed"]
    config = json.loads(files["adapter_config.json"])
    assert config["r"] == 64 and config["use_rslora"] is True
    for m, p in zip(adapter.modules, padded.modules):
        assert p.scale == m.scale                       # the same float, bit for bit
        a, b = np.asarray(m.A), np.asarray(m.B)
        pa, pb = np.asarray(p.A), np.asarray(p.B)
        assert pa.dtype == a.dtype and np.array_equal(pa[:5], a) and not pa[5:].any()
        assert np.array_equal(pb[:, :5], b) and not pb[:, 5:].any()
        exact = m.scale * (b.astype(np.float64) @ a.astype(np.float64))
        assert np.array_equal(p.scale * (pb[:, :5].astype(np.float64) @ pa[:5].astype(np.float64)), exact)
    with pytest.raises(ValueError, match="above --pad-to"):
        pad_adapter(adapter, 4)


@needs_samples
def test_apply_writes_the_best_truncation(tmp_path, capsys):
    """--apply --cap: each copy is the best rank-cap approximation (Eckart-Young)."""
    from lorarank.adapters import load_adapter

    src = SAMPLES / "peft_llama_r32_rslora"
    out = tmp_path / "out"
    assert main(["fleet", str(src), str(SAMPLES / "peft_gpt2_r4"), "--cap", "8", "--apply", str(out),
                 "--workers", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["ok"] for r in doc["applied"]] == [True, True]
    original = load_adapter(src)
    folder = Path(doc["applied"][0]["folder"])
    resized = load_adapter(folder)
    assert resized.ranks == [8]
    for m, k in zip(original.modules, resized.modules):
        dense = m.scale * (np.asarray(m.B, np.float64) @ np.asarray(m.A, np.float64))
        u, s, vt = np.linalg.svd(dense)
        best = (u[:, :8] * s[:8]) @ vt[:8]
        got = k.scale * (np.asarray(k.B, np.float64) @ np.asarray(k.A, np.float64))
        assert np.allclose(got, best, atol=1e-5 * s[0])
    kept = doc["plan"]["shrink"][0]["energy_kept"]
    assert doc["applied"][0]["retained_energy"] == pytest.approx(kept, rel=1e-9)
    gpt2 = load_file(str(Path(doc["applied"][1]["folder"]) / "adapter_model.safetensors"))
    orig = load_file(str(SAMPLES / "peft_gpt2_r4" / "adapter_model.safetensors"))
    assert gpt2.keys() == orig.keys() and all(np.array_equal(gpt2[k], orig[k]) for k in orig)


def test_document_is_strict_json(tmp_path):
    write_peft(tmp_path / "a", r=4, seed=1)
    result = run_fleet(expand_sources([str(tmp_path)]).members, FleetOptions(), workers=1)
    doc = fleet_document(result, plan_caps(result.rows, cap=2), options=FleetOptions())
    text = json.dumps(doc, allow_nan=False)
    assert json.loads(text)["plan"]["cap"] == 2
