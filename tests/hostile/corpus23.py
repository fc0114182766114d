"""The hostile corpus of issue 23: generated, deterministic files and links for the doors opened
after issue 12 (GGUF metadata and quantised tensors, zip and npz members, checkpoint zips and
``trainer_state.json``, config strings, base weights, odd paths and names, long output, links).

Every case is built here from scratch (with the real writers where the point is a real file:
``safetensors``, ``gguf.GGUFWriter``, ``zipfile``; byte by byte where the point is a lying
file) and says what must happen:

- ``said``: the one-line error (CLI: ``lorarank: error: ...``, exit 2; page: one error box),
  or
- ``check``: the exact answer of a case that must succeed (CLI: exit 0 and a check of stdout).

``cli`` builds the case's files in a folder and returns the ``lorarank`` arguments; ``page``
says how the Adapter audit page gets it (an upload to the audit or to the series section, or
query parameters), if it can. ``tests/hostile/test_corpus23.py`` runs every case with the
earlier corpus's bounds.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from safetensors.numpy import save

PEFT = "base_model.model."
#: A payload that renders a link, an image, a colour, maths and HTML if it reaches markdown raw.
PHISH = ("x`](https://evil.example/login)[Session expired - sign in again](https://evil.example/a)"
         "![i](https://evil.example/p.png) :red[RED] $x^2$ <img src=https://evil.example/i.png> www.evil.example")


# ------------------------------------------------------------------------------ the cases
@dataclass(frozen=True)
class Page:
    """How the page gets a case: ``kind`` "audit" or "series" (uploads to the Adapter audit page),
    "url" (a link to it), "fleet" (uploads to the Fleet page) or "fleet-url" (a link to it)."""

    kind: str
    files: Callable[[], dict[str, bytes]] | None = None
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # the class of the issue: gguf, zip, json, base, paths, output, steps, links, compute
    cli: Callable[[Path], list[str]] | None
    said: str | None = None
    check: Callable[[str], None] | None = None
    page: Page | None = None
    page_said: str | None = None  # the page's sentence when it differs from the CLI's
    after: Callable[[Path], None] | None = None  # checks the case's folder after the CLI ran
    status_lines: bool = False  # the command reports progress on stderr before its error line
    file_limit: int | None = None  # RLIMIT_FSIZE of the CLI run (a disk that fills up)
    exit_code: int = 0  # of a ``check`` case: 1 for a fleet with a failed row (the fleet goes on)


def _write(folder: Path, files: dict[str, bytes]) -> list[str]:
    """Write ``files`` into ``folder``; the CLI argument: the folder when it holds a config."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if "adapter_config.json" in files:
        return [str(folder)]
    return [str(folder / name) for name in files]


def audit(files: Callable[[], dict[str, bytes]], *extra: str) -> Callable[[Path], list[str]]:
    return lambda folder: ["audit", "--json", *_write(folder, files()), *extra]


def series(files: Callable[[], dict[str, bytes]]) -> Callable[[Path], list[str]]:
    """``audit --series`` on the zip's run folder, unpacked (the CLI reads folders)."""
    def build(folder: Path) -> list[str]:
        (name, data), = files().items()
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                target = folder / "run" / info.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                if not info.is_dir():
                    target.write_bytes(archive.read(info))
        return ["audit", "--series", str(folder / "run" / "out"), "--json"]
    return build


# -------------------------------------------------------------------------- small builders
def pair(name: str = "model.layers.0.self_attn.q_proj", r: int = 4, d_out: int = 6, d_in: int = 8,
         seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"{PEFT}{name}.lora_A.weight": rng.standard_normal((r, d_in)).astype(np.float32),
            f"{PEFT}{name}.lora_B.weight": rng.standard_normal((d_out, r)).astype(np.float32)}


def peft(tensors: dict[str, np.ndarray], config: dict | bytes | None = None) -> dict[str, bytes]:
    files = {"adapter_model.safetensors": save(tensors)}
    if config is not None:
        files["adapter_config.json"] = config if isinstance(config, bytes) else json.dumps(config).encode()
    return files


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def zeros_member(zf: zipfile.ZipFile, name: str, shape: tuple[int, int]) -> None:
    """Write member ``name`` of ``zf``: a .npy of float64 zeros of ``shape``, streamed in 16 MiB
    chunks (a bomb built without holding it; deflated it shrinks about 1000 times)."""
    head = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    head["shape"] = shape
    hbuf = io.BytesIO()
    np.lib.format.write_array_header_1_0(hbuf, head)
    with zf.open(name, "w", force_zip64=True) as member:
        member.write(hbuf.getvalue())
        chunk = b"\0" * (16 * 2**20)
        left = shape[0] * shape[1] * 8
        while left:
            member.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))


@dataclass(frozen=True)
class Packed:
    """A member's bytes already compressed with ``method`` (a bomb built without inflating it)."""

    data: bytes
    crc: int = 0


def deflate_zeros(gib: int = 2) -> Packed:
    """A raw deflate stream of ``gib`` GiB of zeros in ~2 MB, in a fraction of a second: one
    16 MiB segment compressed and fully flushed (byte-aligned, history reset) repeated, then an
    empty final block."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = packer.compress(b"\0" * 2**24) + packer.flush(zlib.Z_FULL_FLUSH)
    return Packed(segment * (gib * 64) + b"\x03\x00")


def bzip2_zeros(gib: int = 2, block_input: int = 4 * 2**20) -> Packed:
    """A bzip2 stream of ``gib`` GiB of zeros in ~17 kB: bit-level copies of one compressed
    block of 4 MiB of zeros, then the end-of-stream marker and the combined CRC (each block's
    CRC rotated in, as bzip2 computes it). Valid for bz2.decompress."""
    one = bz2.compress(b"\0" * block_input, 1)
    bits, nbits, eos = int.from_bytes(one, "big"), len(one) * 8, 0x177245385090

    def take(start: int, length: int) -> int:
        return (bits >> (nbits - start - length)) & ((1 << length) - 1)

    pos = next(p for p in range(nbits - 80, 31, -1) if take(p, 48) == eos)
    block_len, block, block_crc = pos - 32, take(32, pos - 32), take(80, 32)
    blocks = gib * 2**30 // block_input
    out, total, combined = take(0, 32), 32, 0
    for _ in range(blocks):
        combined = (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ block_crc
        out, total = (out << block_len) | block, total + block_len
    out, total = (((out << 48) | eos) << 32) | combined, total + 80
    out, total = out << ((-total) % 8), total + (-total) % 8
    return Packed(out.to_bytes(total // 8, "big"))


def hand_zip(members: list[tuple[str, bytes | Packed, int, int]], *, flags: int = 0) -> bytes:
    """A zip written byte by byte: (name, payload, declared size, method) per member."""
    out, directory = bytearray(), bytearray()
    for name, payload, said, method in members:
        raw = name.encode()
        if isinstance(payload, Packed):
            packed, crc = payload.data, payload.crc
        elif method == zipfile.ZIP_DEFLATED:
            crc = zlib.crc32(payload)
            packer = zlib.compressobj(9, zlib.DEFLATED, -15)
            packed = packer.compress(payload) + packer.flush()
        elif method == zipfile.ZIP_BZIP2:
            packed, crc = bz2.compress(payload, 9), zlib.crc32(payload)
        else:
            packed, crc = payload, zlib.crc32(payload)
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, method, 0, 0, crc, len(packed), said,
                           len(raw), 0) + raw + packed
        directory += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, flags, method, 0, 0, crc,
                                 len(packed), said, len(raw), 0, 0, 0, 0, 0, offset) + raw
    start = len(out)
    out += directory + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members),
                                   len(directory), start, 0)
    return bytes(out)


def run_zip(steps: dict[int, dict[str, bytes]], *, name: str = "run.zip") -> dict[str, bytes]:
    """A zipped training run: ``out/checkpoint-<step>/<file>`` for each step's files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for step, files in steps.items():
            for file, data in files.items():
                archive.writestr(f"out/checkpoint-{step}/{file}", data)
    return {name: buf.getvalue()}


def checkpoint(step_state: object | None = None, *, name: str = "model.layers.0.self_attn.q_proj",
               seed: int = 0) -> dict[str, bytes]:
    files = peft(pair(name, seed=seed), {"r": 4, "lora_alpha": 8})
    if step_state is not None:
        files["trainer_state.json"] = (step_state if isinstance(step_state, bytes)
                                       else json.dumps(step_state).encode())
    return files


# ------------------------------------------------------------------------------------ GGUF
def _s(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def _kv_str(key: str, value: str) -> bytes:
    return _s(key.encode()) + struct.pack("<I", 8) + _s(value.encode())


def _gguf_head(tensors: int, kvs: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, kvs)


def gguf_huge_array() -> dict[str, bytes]:
    """49 bytes declaring a metadata array of 2^40 uint8 (gguf's reader looped over it)."""
    return {"a.gguf": _gguf_head(0, 1) + _s(b"x") + struct.pack("<IIQ", 9, 0, 2**40)}


def gguf_huge_string() -> dict[str, bytes]:
    return {"a.gguf": _gguf_head(0, 1) + _s(b"x") + struct.pack("<IQ", 8, 2**62)}


def gguf_many_strings(n: int = 2_000_000) -> dict[str, bytes]:
    """16 MB: an adapter whose metadata holds two million empty strings (2.5 GB in gguf's reader)."""
    return {"a.gguf": _gguf_head(0, 2) + _kv_str("general.type", "adapter") + _s(b"tokens")
            + struct.pack("<IIQ", 9, 8, n) + struct.pack("<Q", 0) * n}


def gguf_many_numbers(n: int = 16_000_000) -> dict[str, bytes]:
    """16 MB of uint8 metadata items: one numpy view each in gguf's reader."""
    return {"a.gguf": _gguf_head(0, 2) + _kv_str("general.type", "adapter") + _s(b"bytes")
            + struct.pack("<IIQ", 9, 0, n) + b"\0" * n}


def gguf_nested() -> dict[str, bytes]:
    return {"a.gguf": _gguf_head(0, 1) + _s(b"x") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 9, 1)}


def gguf_long_name() -> dict[str, bytes]:
    return {"a.gguf": _gguf_head(1, 1) + _kv_str("general.type", "adapter") + _s(b"n" * 2**20)
            + struct.pack("<IQQIQ", 2, 4, 4, 0, 0)}


def gguf_dims() -> dict[str, bytes]:
    return {"a.gguf": _gguf_head(1, 1) + _kv_str("general.type", "adapter") + _s(b"blk.0.attn_q.weight.lora_a")
            + struct.pack("<I", 2**32 - 1)}


def gguf_tensor_past_end() -> dict[str, bytes]:
    return {"a.gguf": _gguf_head(1, 1) + _kv_str("general.type", "adapter") + _s(b"blk.0.attn_q.weight.lora_a")
            + struct.pack("<IQQIQ", 2, 2**31, 2**31, 0, 0)}


def gguf_model_vocab() -> dict[str, bytes]:
    """A model GGUF (general.type first) with a 300,000-token vocabulary: named at once."""
    n = 300_000
    return {"m.gguf": _gguf_head(0, 2) + _kv_str("general.type", "model") + _s(b"tokenizer.ggml.tokens")
            + struct.pack("<IIQ", 9, 8, n) + _s(b"tok") * n}


def _tq1(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Random TQ1_0 blocks (54 bytes per 256 values) with a finite scale, as gguf lays them out."""
    blocks = rng.integers(0, 256, (rows * cols // 256, 54), dtype=np.uint8)
    blocks[:, 52], blocks[:, 53] = 0x00, 0x2C  # float16 0.0625
    return blocks.reshape(rows, cols // 256 * 54)


def gguf_tq1(modules: int, r: int, d: int) -> bytes:
    """A TQ1_0 LoRA adapter written by gguf's own writer."""
    import gguf

    import tempfile

    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "a.gguf"
        writer = gguf.GGUFWriter(str(target), "llama")
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(r))
        for i in range(modules):
            writer.add_tensor(f"blk.{i}.attn_q.weight.lora_a", _tq1(rng, r, d),
                              raw_dtype=gguf.GGMLQuantizationType.TQ1_0)
            writer.add_tensor(f"blk.{i}.attn_q.weight.lora_b", _tq1(rng, d, r),
                              raw_dtype=gguf.GGMLQuantizationType.TQ1_0)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return target.read_bytes()


def gguf_tq1_expands() -> dict[str, bytes]:
    """33 MB of TQ1_0 factors that dequantise to 600 MiB of float32 (~19x)."""
    return {"tq.gguf": gguf_tq1(modules=75, r=256, d=4096)}


def check_tq1_ok(stdout: str) -> None:
    """Oracle: the audit's singular values are those of gguf's own dequantisation, densely."""
    import gguf

    doc = json.loads(stdout)
    assert len(doc["modules"]) == 2, [m["name"] for m in doc["modules"]]
    from gguf import GGUFReader

    data = gguf_tq1(modules=2, r=256, d=512)
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf") as fh:
        fh.write(data)
        fh.flush()
        reader = GGUFReader(fh.name)
        t = {x.name: gguf.quants.dequantize(np.asarray(x.data), x.tensor_type) for x in reader.tensors}
    a = t["blk.0.attn_q.weight.lora_a"].astype(np.float64)
    b = t["blk.0.attn_q.weight.lora_b"].astype(np.float64)
    truth = np.linalg.svd(b @ a, compute_uv=False)  # alpha = r: scale 1
    got = np.array(doc["modules"][0]["singular_values"])
    np.testing.assert_allclose(got, truth[: got.size], rtol=1e-6)


# --------------------------------------------------------------------------------- zip, npz
def _bomb(method: int) -> Packed:
    return deflate_zeros() if method == zipfile.ZIP_DEFLATED else bzip2_zeros()


def npz_lie(method: int) -> Callable[[], dict[str, bytes]]:
    """An .npz (2 MB or 17 kB) whose B member declares 216 bytes and inflates to 2 GiB of zeros
    (zipfile inflated such a member whole before comparing it with its declared size)."""
    def build() -> dict[str, bytes]:
        a = npy(np.ones((4, 8)))
        return {"bomb.npz": hand_zip([("m.A.npy", a, len(a), zipfile.ZIP_STORED),
                                      ("m.B.npy", _bomb(method), len(npy(np.ones((6, 4)))), method)])}
    return build


def run_lie(method: int) -> dict[str, bytes]:
    """A run zip whose adapter_model.safetensors declares 1 kB and inflates to 2 GiB."""
    files = checkpoint({"global_step": 10})
    members = [(f"out/checkpoint-10/{n}", d, len(d), zipfile.ZIP_DEFLATED) for n, d in files.items()
               if n != "adapter_model.safetensors"]
    members.append(("out/checkpoint-10/adapter_model.safetensors", _bomb(method), 1000, method))
    return {"run.zip": hand_zip(members)}


def run_duplicate() -> dict[str, bytes]:
    files = checkpoint()
    members = [(f"out/checkpoint-10/{n}", d, len(d), zipfile.ZIP_STORED) for n, d in files.items()]
    other = checkpoint(seed=5)["adapter_model.safetensors"]
    members.append(("out/checkpoint-10/adapter_model.safetensors", other, len(other), zipfile.ZIP_STORED))
    return {"run.zip": hand_zip(members)}


def run_encrypted() -> dict[str, bytes]:
    data = checkpoint()["adapter_model.safetensors"]
    return {"run.zip": hand_zip([("out/checkpoint-10/adapter_model.safetensors", data, len(data),
                                  zipfile.ZIP_STORED)], flags=0x1)}


def run_many_checkpoints(n: int = 1001) -> dict[str, bytes]:
    """1,001 checkpoints in one zip: planned from one read of its directory (it was re-read for
    every member), then refused before any adapter is read (so their weights can be empty)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:  # stored: quick to build
        for step in range(1, n + 1):
            archive.writestr(f"out/checkpoint-{step}/adapter_model.safetensors", b"")
            archive.writestr(f"out/checkpoint-{step}/trainer_state.json", b'{"global_step": %d}' % step)
    return {"run.zip": buf.getvalue()}


def run_many_weights(n: int = 2000) -> dict[str, bytes]:
    """One checkpoint folder holding 2,000 weights files: the error line (it listed them all:
    150 kB) stays one short line."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for i in range(n):
            archive.writestr(f"out/checkpoint-10/w{i:05d}-{'x' * 60}.safetensors", b"")
    return {"run.zip": buf.getvalue()}


def run_deep_state() -> dict[str, bytes]:
    return run_zip({10: checkpoint(b'{"global_step": 10, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                    20: checkpoint({"global_step": 20}, seed=1)})


def run_step(step: int) -> dict[str, bytes]:
    return run_zip({10: checkpoint({"global_step": step}), 20: checkpoint({"global_step": 20}, seed=1)})


def run_long_step_name(digits: int = 5000) -> dict[str, bytes]:
    """A checkpoint folder named with a 5,000-digit step (int() refuses over 4,300 digits); on
    disk, where names stop at 255 bytes, 240 digits."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for file, data in checkpoint().items():
            archive.writestr(f"out/checkpoint-{'9' * digits}/{file}", data)
    return {"run.zip": buf.getvalue()}


def run_state_values() -> dict[str, bytes]:
    """A trainer_state.json of 5 million empty log entries: 15 MB, ~70 kB zipped (1.7 GB parsed)."""
    state = b'{"global_step": 10, "log_history": [' + b"{}," * 5_000_000 + b"{}]}"
    return run_zip({10: checkpoint(state), 20: checkpoint({"global_step": 20}, seed=1)})


def run_no_shared_module() -> dict[str, bytes]:
    return run_zip({10: checkpoint({"global_step": 10}, name="model.layers.0.self_attn.q_proj"),
                    20: checkpoint({"global_step": 20}, name="model.layers.0.self_attn.k_proj", seed=1)})


def check_no_shared(stdout: str) -> None:
    doc = json.loads(stdout)
    assert [c["step"] for c in doc["checkpoints"]] == [10, 20]
    assert doc["series"]["modules"] == []
    assert any("not in every checkpoint" in n for n in doc["series"]["notes"])


def run_phishing_names() -> dict[str, bytes]:
    """Folder and file names carrying link markup: a note quotes them (left out, no step)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for step in (10, 20):
            for file, data in checkpoint({"global_step": step}, seed=step).items():
                archive.writestr(f"out/checkpoint-{step}/{file}", data)
        archive.writestr(f"out/{PHISH}.safetensors", checkpoint()["adapter_model.safetensors"])
    return {"run.zip": buf.getvalue()}


# ---------------------------------------------------------------------------- JSON, configs
def config_long_string() -> dict[str, bytes]:
    """An adapter_config.json with a 15 MiB string value: parsed at about its size."""
    return peft(pair(), b'{"r": 4, "lora_alpha": 8, "notes": "' + b"x" * (15 * 2**20) + b'"}')


def check_config_long(stdout: str) -> None:
    (module,) = json.loads(stdout)["modules"]
    assert (module["rank"], module["scale"]) == (4, 2.0)


def config_many_values() -> dict[str, bytes]:
    return peft(pair(), b'{"r": 4, "lora_alpha": 8, "x": [' + b"0," * 2_100_000 + b"0]}")


def metadata_long_string() -> dict[str, bytes]:
    """A diffusers lora_adapter_metadata of 15 MiB (a JSON string inside the safetensors header)."""
    meta = json.dumps({"unet.r": 4, "unet.lora_alpha": 8, "unet.notes": "y" * (15 * 2**20)})
    data = save(pair("unet.down.0.to_q"), metadata={"lora_adapter_metadata": meta})
    return {"w.safetensors": data}


# ------------------------------------------------------------------------------------ base
def base_many_shards(folder: Path, shards: int = 320, per: int = 1000) -> None:
    base = folder / "base"
    base.mkdir(parents=True)
    for i in range(shards):
        header = {f"model.layers.{i}.m{j}.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4 * j, 4 * j + 4]}
                  for j in range(per)}
        raw = json.dumps(header, separators=(",", ":")).encode()
        (base / f"model-{i:05d}.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * (4 * per))


def cli_base_many_shards(folder: Path) -> list[str]:
    base_many_shards(folder)
    return ["audit", "--json", *_write(folder / "in", peft(pair(), {"r": 4, "lora_alpha": 8})), "--base",
            str(folder / "base")]


def cli_finetuned_many_shards(folder: Path) -> list[str]:
    """``audit --finetuned`` of a folder of 320 shards (the model side of the same bound)."""
    base_many_shards(folder)
    return ["audit", "--finetuned", str(folder / "base"), "--base", str(folder / "base"), "--json"]


def cli_base_overflow(folder: Path) -> list[str]:
    (folder / "base.safetensors").parent.mkdir(parents=True, exist_ok=True)
    (folder / "base.safetensors").write_bytes(save({"model.layers.0.self_attn.q_proj.weight": np.full((6, 8), 1e200)}))
    return ["audit", "--json", *_write(folder / "in", peft(pair(), {"r": 4, "lora_alpha": 8})), "--base",
            str(folder / "base.safetensors")]


def cli_base_fifo(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "base.safetensors")
    return ["audit", "--json", *_write(folder / "in", peft(pair(), {"r": 4, "lora_alpha": 8})), "--base",
            str(folder / "base.safetensors")]


# ------------------------------------------------------------------------- paths and output
def cli_fifo(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "adapter.safetensors")
    return ["audit", str(folder / "adapter.safetensors")]


def cli_fifo_compare(folder: Path) -> list[str]:
    (a,) = _write(folder / "a", {"x.safetensors": save(pair())})
    os.mkfifo(folder / "b.safetensors")
    return ["compare", a, str(folder / "b.safetensors")]


def long_name_adapter() -> dict[str, bytes]:
    tensors = {}
    for i in range(3):
        tensors.update(pair(f"m{i}" + "x" * 2**20, seed=i))
    return {"long.safetensors": save(tensors)}


def check_text_bounded(stdout: str) -> None:
    """Three 1 MiB names: a table of a few kB (it padded every row to the longest name)."""
    assert len(stdout) < 20_000, len(stdout)
    assert max(len(line) for line in stdout.splitlines()) <= 1000  # a clipped sentence at most


def cli_text(files: Callable[[], dict[str, bytes]]) -> Callable[[Path], list[str]]:
    return lambda folder: ["audit", *_write(folder, files())]


def cli_hub_long(folder: Path) -> list[str]:
    return ["audit", "hf://" + "a" * 100_000 + "/b"]


def check_one_short_line(stderr: str) -> None:
    assert len(stderr) <= 1100, len(stderr)


def cli_nonutf8(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    name = os.fsdecode(b"caf\xe9-\xff.safetensors")
    (folder / name).write_bytes(save(pair()))
    return ["audit", str(folder / name), "--html", str(folder / os.fsdecode(b"r\xe9port.html"))]


def check_nonutf8(stdout: str) -> None:
    assert "caf\\udce9-\\udcff.safetensors" in stdout, stdout[:300]


def report_written(folder: Path) -> None:
    """The report exists whole (it stopped at UnicodeEncodeError, leaving 0 bytes) and is UTF-8."""
    (report,) = [p for p in folder.iterdir() if p.suffix == ".html"]
    assert report.stat().st_size > 10_000
    assert "caf\\udce9" in report.read_bytes().decode("utf-8")


def nothing_half_written(folder: Path) -> None:
    """The disk filled up while the report was written: no report and no temporary file left."""
    assert not [p.name for p in folder.iterdir() if p.suffix in (".html", ".part")], list(folder.iterdir())


def cli_html_cut(folder: Path) -> list[str]:
    """--html where the disk fills half way (RLIMIT_FSIZE, set by the runner for this case)."""
    return ["audit", *_write(folder / "in", {"a.safetensors": save(pair())}), "--html", str(folder / "report.html")]


def cli_fleet_html_cut(folder: Path) -> list[str]:
    """fleet --html where the disk fills half way: nothing half written (RLIMIT_FSIZE)."""
    return ["fleet", *_write(folder / "in", {"a.safetensors": save(pair())}), "--html", str(folder / "fleet.html")]


def cli_finetuned_long_names(folder: Path) -> list[str]:
    """A fine-tune and its base whose one weight has a 1 MiB name: the text table stays small."""
    name = "model." + "w" * 2**20 + ".weight"
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((16, 12)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.safetensors").write_bytes(save({name: w0}))
    (folder / "ft.safetensors").write_bytes(save({name: w0 + 0.1 * rng.standard_normal((16, 12)).astype(np.float32)}))
    return ["audit", "--finetuned", str(folder / "ft.safetensors"), "--base", str(folder / "base.safetensors")]


def full_rank(n: int = 4096) -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    return {"full.safetensors": save({f"{PEFT}m.lora_A.weight": rng.standard_normal((n, n)).astype(np.float32),
                                      f"{PEFT}m.lora_B.weight": rng.standard_normal((n, n)).astype(np.float32)})}


def check_full_rank(stdout: str) -> None:
    (module,) = json.loads(stdout)["modules"]
    assert module["rank"] == 4096 and len(module["singular_values"]) == 4096
    s = np.array(module["singular_values"])
    assert np.all(np.diff(s) <= 0) and s[-1] > 0


#: Module names a spreadsheet would run as formulas (OWASP's examples).
FORMULAS = ["=HYPERLINK(\"https://evil.example\",\"x\")", "+cmd|'/C calc'!A0", "-2+3", "@SUM(A1)"]


def formula_names() -> dict[str, bytes]:
    """A kohya-style adapter (module names are the keys' prefixes, no PEFT wrapper)."""
    rng = np.random.default_rng(9)
    tensors = {}
    for name in FORMULAS:
        tensors[f"{name}.lora_down.weight"] = rng.standard_normal((2, 8)).astype(np.float32)
        tensors[f"{name}.lora_up.weight"] = rng.standard_normal((6, 2)).astype(np.float32)
    return {"formulas.safetensors": save(tensors)}


# ------------------------------------------------------- variants of the same classes (verify)
# The issue's classes again, as another corpus author would write them: the same bounds through
# other doors (the fleet's own readers, a FIFO or a sparse file where a config or shard index
# is expected, GGUF counts and lengths at 2^62-2^63, .npy headers inside an .npz, trainer
# states just over the depth bound, the Fleet page's zip and link).
def sparse(path: Path, size: int = 3 * 2**30) -> None:
    """A file of ``size`` bytes that takes no disk (a reader that trusts it allocates them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)


def _fleet_folder(folder: Path) -> Path:
    _write(folder / "fleet" / "a", peft(pair(), {"r": 4, "lora_alpha": 8}))
    return folder / "fleet" / "a"


def cli_fleet_sparse_config(*extra: str) -> Callable[[Path], list[str]]:
    """A fleet member whose adapter_config.json is 3 GiB (sparse): read whole before the
    config bound (screening, and the cache's content key) it took 3.1 GB."""
    def build(folder: Path) -> list[str]:
        sparse(_fleet_folder(folder) / "adapter_config.json")
        return ["fleet", str(folder / "fleet"), "--json", "--workers", "1", *extra]
    return build


def cli_fleet_fifo(file: str, *extra: str) -> Callable[[Path], list[str]]:
    """A fleet member with a FIFO where its config or weights are (the weights one was skipped
    without a word: a fleet of 0 adapters, exit 0)."""
    def build(folder: Path) -> list[str]:
        target = _fleet_folder(folder) / file
        target.unlink()
        os.mkfifo(target)
        return ["fleet", str(folder / "fleet"), "--json", "--workers", "1", *extra]
    return build


def fleet_row_error(said: str) -> Callable[[str], None]:
    """The fleet went on: one row, failed, with ``said`` in its one-line error."""
    def check(stdout: str) -> None:
        (row,) = json.loads(stdout)["adapters"]
        assert row["ok"] is False and said in row["error"] and "\n" not in row["error"], row
    return check


def cli_fleet_empty(folder: Path) -> list[str]:
    (folder / "fleet" / "notes").mkdir(parents=True)
    (folder / "fleet" / "notes" / "README.md").write_text("no adapter here")
    return ["fleet", str(folder / "fleet"), "--json"]


def cli_config_fifo(folder: Path) -> list[str]:
    """A PEFT folder whose adapter_config.json is a FIFO: it was read as "no config: scale 1"."""
    _write(folder, peft(pair()))
    os.mkfifo(folder / "adapter_config.json")
    return ["audit", "--json", str(folder)]


def cli_series_fifo_weights(folder: Path) -> list[str]:
    for step in (10, 20):
        _write(folder / "run" / f"checkpoint-{step}", checkpoint({"global_step": step}, seed=step))
    weights = folder / "run" / "checkpoint-10" / "adapter_model.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    return ["audit", "--series", str(folder / "run"), "--json"]


def keys_without_suffix() -> dict[str, bytes]:
    """PEFT keys without ``.weight`` (an .npz of ``m0.lora_A``): the sentence ended in "with"."""
    return {"few.npz": hand_zip([(f"m0.lora_{r}.npy", npy(np.ones(s, np.float32)), len(npy(np.ones(s, np.float32))),
                                  zipfile.ZIP_STORED) for r, s in (("A", (4, 8)), ("B", (6, 4)))])}


def gguf_kv_count() -> dict[str, bytes]:
    return {"a.gguf": _gguf_head(0, 2**63)}


def gguf_key_length() -> dict[str, bytes]:
    return {"a.gguf": _gguf_head(0, 1) + struct.pack("<Q", 2**62) + b"abc"}


def gguf_alignment_zero() -> dict[str, bytes]:
    return {"a.gguf": _gguf_head(0, 2) + _kv_str("general.type", "adapter") + _s(b"general.alignment")
            + struct.pack("<II", 4, 0)}


def gguf_dims_overflow() -> dict[str, bytes]:
    """Four dimensions of 2^32: 2^128 elements, past int64."""
    return {"a.gguf": _gguf_head(1, 1) + _kv_str("general.type", "adapter") + _s(b"blk.0.attn_q.weight.lora_a")
            + struct.pack("<IQQQQIQ", 4, 2**32, 2**32, 2**32, 2**32, 0, 0)}


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    text += " " * (63 - (10 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def npz_member(raw: bytes) -> Callable[[], dict[str, bytes]]:
    """An .npz whose B member is ``raw`` (a .npy that lies or pickles)."""
    def build() -> dict[str, bytes]:
        a = npy(np.ones((4, 8), np.float32))
        return {"a.npz": hand_zip([("m.lora_A.npy", a, len(a), zipfile.ZIP_STORED),
                                   ("m.lora_B.npy", raw, len(raw), zipfile.ZIP_STORED)])}
    return build


def _base_folder(folder: Path, index: bytes | None = None) -> Path:
    base = folder / "base"
    base.mkdir(parents=True)
    if index is not None:
        (base / "model.safetensors.index.json").write_bytes(index)
    return base


def cli_index(make: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """``audit --base FOLDER`` whose shard index is what ``make`` puts there."""
    def build(folder: Path) -> list[str]:
        base = _base_folder(folder)
        (folder / "outside.safetensors").write_bytes(
            save({"model.layers.0.self_attn.q_proj.weight": np.ones((6, 8), np.float32)}))
        make(base / "model.safetensors.index.json")
        return ["audit", "--json", *_write(folder / "in", peft(pair(), {"r": 4, "lora_alpha": 8})), "--base",
                str(base)]
    return build


def fleet_zip(members: list[tuple[str, bytes | Packed, int, int]]) -> Callable[[], dict[str, bytes]]:
    return lambda: {"fleet.zip": hand_zip(members)}


def _fleet_adapter_members(folder: str, weights: bytes | Packed, said: int | None = None,
                           method: int = zipfile.ZIP_STORED) -> list[tuple[str, bytes | Packed, int, int]]:
    files = peft(pair(), {"r": 4, "lora_alpha": 8})
    w = files["adapter_model.safetensors"]
    return [(f"{folder}/adapter_config.json", files["adapter_config.json"], len(files["adapter_config.json"]),
             zipfile.ZIP_STORED),
            (f"{folder}/adapter_model.safetensors", weights, said if said is not None else len(w), method)]


def fleet_phishing_names() -> dict[str, bytes]:
    """Adapter folders named with link markup in a zip dropped on the Fleet page: shown as text."""
    w = peft(pair())["adapter_model.safetensors"]
    return {f"{PHISH}.zip": hand_zip(_fleet_adapter_members(f"runs/{PHISH}", w) + _fleet_adapter_members("runs/ok", w))}


def kohya_tags(tags: str) -> Callable[[], dict[str, bytes]]:
    """A kohya LoRA whose ``ss_tag_frequency`` (JSON inside the safetensors metadata) is ``tags``."""
    def build() -> dict[str, bytes]:
        rng = np.random.default_rng(2)
        name = "lora_unet_down_blocks_0_attentions_0_proj_in"
        return {"k.safetensors": save({f"{name}.lora_down.weight": rng.standard_normal((4, 8)).astype(np.float32),
                                       f"{name}.lora_up.weight": rng.standard_normal((6, 4)).astype(np.float32),
                                       f"{name}.alpha": np.array(4.0, np.float32)},
                                      metadata={"ss_tag_frequency": tags, "ss_network_dim": "4"})}
    return build


#: Counts JSON allows and no count is (int(Infinity) raised OverflowError: a traceback, CLI and page).
TAGS_NOT_COUNTS = '{"d": {"inf": Infinity, "nan": NaN, "neg": -5, "big": 1e308, "ok": 3}}'


def check_tags(stdout: str) -> None:
    tags = json.loads(stdout)["summary"]["metadata"]["ss_tag_frequency (top 10)"]
    assert tags == {"big": int(1e308), "ok": 3}, tags


def cli_extract_overflow(delta: float, *extra: str) -> Callable[[Path], list[str]]:
    """``extract`` of a fine-tune whose update (or its factors in ``--dtype``) is past the
    float range: the factors were written as inf, with "keeps 100.00 %" and a numpy warning."""
    def build(folder: Path) -> list[str]:
        rng = np.random.default_rng(0)
        w0 = rng.standard_normal((6, 8)).astype(np.float32)
        ft = (w0 + delta * np.sign(rng.standard_normal((6, 8)))).astype(np.float32) if delta > 1e30 else \
            (w0 + delta * rng.standard_normal((6, 8))).astype(np.float32)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "base.safetensors").write_bytes(save({"m.weight": -np.abs(ft) if delta > 1e30 else w0}))
        (folder / "ft.safetensors").write_bytes(save({"m.weight": np.abs(ft) if delta > 1e30 else ft}))
        return ["extract", str(folder / "ft.safetensors"), "--base", str(folder / "base.safetensors"), "--rank", "2",
                "-o", str(folder / "out"), *extra]
    return build


def nothing_extracted(folder: Path) -> None:
    assert not (folder / "out").exists() or not list((folder / "out").iterdir()), list((folder / "out").iterdir())


#: A terminal's own phishing: an OSC 8 hyperlink, a screen clear, a colour, a carriage return.
TERMINAL = "\x1b]8;;https://evil.example/login\x07Session expired\x1b]8;;\x07\x1b[2J\x1b[31mRED\r\x08"


def check_no_control(stdout: str) -> None:
    """Text output quotes names from files without their control characters."""
    bad = sorted({hex(ord(ch)) for ch in stdout if ord(ch) < 32 and ch != "\n"})
    assert not bad, bad


def cli_fleet_terminal(folder: Path) -> list[str]:
    """An adapter folder whose name carries terminal escapes: the fleet's text table printed it."""
    _write(folder / "fleet" / f"run{TERMINAL.replace('/', '_')}", peft(pair(), {"r": 4, "lora_alpha": 8}))
    return ["fleet", str(folder / "fleet"), "--workers", "1"]


def terminal_names() -> dict[str, bytes]:
    return {"a.safetensors": save(pair(f"model.layers.0.{TERMINAL}.q_proj"))}


def cli_compare_terminal(folder: Path) -> list[str]:
    return ["compare", *_write(folder / "a", terminal_names()), *_write(folder / "b", terminal_names())]


_W = peft(pair())["adapter_model.safetensors"]
VARIANTS: list[Case] = [
    Case("fleet-terminal-escapes", "links", cli_fleet_terminal, check=check_no_control),
    Case("audit-terminal-escapes", "links", cli_text(terminal_names), check=check_no_control),
    Case("compare-terminal-escapes", "links", cli_compare_terminal, check=check_no_control),
    Case("extract-float32-overflow", "base", cli_extract_overflow(3e38), "too large for float32 LoRA factors",
         after=nothing_extracted),
    Case("extract-float16-overflow", "base", cli_extract_overflow(1e5, "--dtype", "float16"),
         "does not fit in float16", after=nothing_extracted),
    Case("kohya-tags-infinity", "crash", audit(kohya_tags(TAGS_NOT_COUNTS)), check=check_tags,
         page=Page("audit", kohya_tags(TAGS_NOT_COUNTS))),
    Case("fleet-screen-3gib-config", "json", cli_fleet_sparse_config("--screen"),
         check=fleet_row_error("adapter configs up to 16 MiB"), exit_code=1),
    Case("fleet-cache-3gib-config", "json", cli_fleet_sparse_config("--cache", "cache"),
         check=fleet_row_error("adapter configs up to 16 MiB"), exit_code=1),
    Case("fleet-fifo-config", "paths", cli_fleet_fifo("adapter_config.json", "--cache", "cache"),
         check=fleet_row_error("is a FIFO (named pipe)"), exit_code=1),
    Case("fleet-fifo-weights", "paths", cli_fleet_fifo("adapter_model.safetensors", "--screen"),
         check=fleet_row_error("is a FIFO (named pipe)"), exit_code=1),
    Case("fleet-no-adapter", "paths", cli_fleet_empty, "no adapter weights (.safetensors, .npz or .gguf) found"),
    Case("fifo-config", "paths", cli_config_fifo, "adapter_config.json is a FIFO (named pipe)"),
    Case("series-fifo-weights", "paths", cli_series_fifo_weights, "adapter_model.safetensors is a FIFO"),
    Case("keys-without-weight-suffix", "crash", audit(keys_without_suffix),
         "LoRA adapters in this format name them 'm0.lora_A.weight', 'm0.lora_B.weight'",
         page=Page("audit", keys_without_suffix)),
    Case("gguf-2^63-keys", "gguf", audit(gguf_kv_count), "metadata keys; lorarank reads at most 10,000",
         page=Page("audit", gguf_kv_count)),
    Case("gguf-2^62-byte-key", "gguf", audit(gguf_key_length), "a GGUF metadata key is 4,611,686,018,427,387,904 bytes"),
    Case("gguf-alignment-0", "gguf", audit(gguf_alignment_zero), "general.alignment 0 is not a power of two"),
    Case("gguf-2^128-elements", "gguf", audit(gguf_dims_overflow), "the file has"),
    Case("npy-shape-lie", "zip", audit(npz_member(_npy_header("<f4", (2**40,)) + b"\0" * 16)),
         "declares shape (1099511627776,) (4398046511104 bytes) but its member holds 16 bytes",
         page=Page("audit", npz_member(_npy_header("<f4", (2**40,)) + b"\0" * 16))),
    Case("npy-pickle", "zip", audit(npz_member(_npy_header("|O", (2,)) + b"\x80\x04N." * 4)),
         "holds pickled Python objects"),
    Case("npy-2gib-header", "zip", audit(npz_member(b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{" * 1000)),
         "is not a valid .npy array"),
    Case("state-65-deep", "json", series(lambda: run_zip({10: checkpoint(b'{"global_step": 10, "x": ' + b"[" * 65
                                                                        + b"]" * 65 + b"}"),
                                                          20: checkpoint({"global_step": 20}, seed=1)})),
         "the trainer state nests 66 levels deep; lorarank reads at most 64",
         page=Page("series", lambda: run_zip({10: checkpoint(b'{"global_step": 10, "x": ' + b"[" * 65 + b"]" * 65 + b"}"),
                                              20: checkpoint({"global_step": 20}, seed=1)}))),
    Case("state-step-nan", "steps", series(lambda: run_zip({10: checkpoint(b'{"global_step": NaN}'),
                                                            20: checkpoint({"global_step": 20}, seed=1)})),
         "has no whole-number global_step >= 0 (got nan)",
         page=Page("series", lambda: run_zip({10: checkpoint(b'{"global_step": NaN}'),
                                              20: checkpoint({"global_step": 20}, seed=1)}))),
    Case("index-100k-deep", "json", cli_index(lambda p: p.write_bytes(b'{"weight_map": ' + b"[" * 100_000
                                                                      + b"]" * 100_000 + b"}")),
         "the shard index nests 100,001 levels deep"),
    Case("index-3gib", "json", cli_index(sparse), "reads shard indexes up to 16 MiB"),
    Case("index-outside-folder", "paths", cli_index(lambda p: p.write_text(json.dumps(
        {"weight_map": {"model.layers.0.self_attn.q_proj.weight": "../outside.safetensors"}}))),
         "names shard '../outside.safetensors', which is not a file in base"),
    Case("index-fifo", "paths", cli_index(os.mkfifo), "model.safetensors.index.json is a FIFO (named pipe)"),
    # the Fleet page's own doors
    Case("fleet-zip-bzip2-lie", "zip", None,
         page=Page("fleet", fleet_zip(_fleet_adapter_members("a", bzip2_zeros(), 1000, zipfile.ZIP_BZIP2))),
         page_said="inflates past its declared size of 1,000 bytes"),
    Case("fleet-zip-duplicate", "zip", None,
         page=Page("fleet", fleet_zip([("a/adapter_model.safetensors", _W, len(_W), zipfile.ZIP_STORED)] * 2)),
         page_said="appears twice in the archive"),
    Case("fleet-zip-traversal", "paths", None,
         page=Page("fleet", fleet_zip([("../../a/adapter_model.safetensors", _W, len(_W), zipfile.ZIP_STORED)])),
         page_said="has an unsafe path"),
    Case("fleet-zip-phishing-names", "links", None, page=Page("fleet", fleet_phishing_names)),
    Case("link-fleet-q-phish", "links", None, page=Page("fleet-url", params={"q": "hf://" + PHISH}),
         page_said="is not hf://owner/pattern"),
    Case("link-fleet-author-phish", "links", None, page=Page("fleet-url", params={"q": "hf://?author=" + PHISH}),
         page_said="author should be a user or organisation name"),
    Case("link-fleet-settings-phish", "links", None,
         page=Page("fleet-url", params={"keep": PHISH, "cap": PHISH}), page_said="The link sets"),
]


# ------------------------------------------------------------------------------------ cases
CASES: list[Case] = [
    # GGUF metadata and tensors
    Case("gguf-49-bytes-huge-array", "gguf", audit(gguf_huge_array), "GGUF metadata arrays declare 1,099,511,627,776 items",
         page=Page("audit", gguf_huge_array)),
    Case("gguf-huge-string", "gguf", audit(gguf_huge_string), "declares 4,611,686,018,427,387,904 bytes",
         page=Page("audit", gguf_huge_string)),
    Case("gguf-2m-strings", "gguf", audit(gguf_many_strings), "GGUF metadata arrays declare 2,000,000 items",
         page=Page("audit", gguf_many_strings)),
    Case("gguf-16m-numbers", "gguf", audit(gguf_many_numbers), "GGUF metadata arrays declare 16,000,000 items"),
    Case("gguf-nested-array", "gguf", audit(gguf_nested), "is an array of arrays"),
    Case("gguf-1mib-tensor-name", "gguf", audit(gguf_long_name), "a tensor name is 1,048,576 bytes long",
         page=Page("audit", gguf_long_name)),
    Case("gguf-2^32-dims", "gguf", audit(gguf_dims), "has 4,294,967,295 dimensions"),
    Case("gguf-tensor-past-end", "gguf", audit(gguf_tensor_past_end), "is not a valid GGUF file"),
    Case("gguf-model-300k-vocab", "gguf", audit(gguf_model_vocab), "is a GGUF model, not a LoRA adapter"),
    Case("gguf-tq1-600mib", "gguf", audit(gguf_tq1_expands), "would dequantise to 600 MiB of float32",
         page=Page("audit", gguf_tq1_expands)),
    Case("gguf-tq1-audited", "gguf", audit(lambda: {"tq.gguf": gguf_tq1(modules=2, r=256, d=512)}),
         check=check_tq1_ok, page=Page("audit", lambda: {"tq.gguf": gguf_tq1(modules=2, r=256, d=512)})),
    # zip and npz members that lie
    Case("npz-bzip2-lie", "zip", audit(npz_lie(zipfile.ZIP_BZIP2)), "inflates past its declared size",
         page=Page("audit", npz_lie(zipfile.ZIP_BZIP2))),
    Case("npz-deflate-lie", "zip", audit(npz_lie(zipfile.ZIP_DEFLATED)), "inflates past its declared size",
         page=Page("audit", npz_lie(zipfile.ZIP_DEFLATED))),
    Case("run-bzip2-lie", "zip", None, page=Page("series", lambda: run_lie(zipfile.ZIP_BZIP2)),
         page_said="inflates past its declared size"),
    Case("run-deflate-lie", "zip", None, page=Page("series", lambda: run_lie(zipfile.ZIP_DEFLATED)),
         page_said="inflates past its declared size"),
    Case("run-duplicate-member", "zip", None, page=Page("series", run_duplicate),
         page_said="appears twice in the archive"),
    Case("run-encrypted-member", "zip", None, page=Page("series", run_encrypted), page_said="is encrypted"),
    Case("run-1001-checkpoints", "zip", series(run_many_checkpoints), "a series holds at most 1000 checkpoints",
         page=Page("series", run_many_checkpoints)),
    Case("run-2000-weights", "output", series(run_many_weights), "holds several weights files",
         page=Page("series", run_many_weights)),
    Case("run-no-shared-module", "crash", series(run_no_shared_module), check=check_no_shared,
         page=Page("series", run_no_shared_module)),
    Case("run-phishing-names", "links", series(run_phishing_names), check=lambda out: None,
         page=Page("series", run_phishing_names)),
    # trainer_state.json and config strings
    Case("state-100k-deep", "json", series(run_deep_state), "nests 100,001 levels deep",
         page=Page("series", run_deep_state)),
    Case("state-step-2^70", "steps", series(lambda: run_step(2**70)), "step 1180591620717411303424 is larger",
         page=Page("series", lambda: run_step(2**70))),
    Case("state-5m-entries", "json", series(run_state_values), "values; lorarank reads at most 4,000,000",
         page=Page("series", run_state_values)),
    Case("checkpoint-5000-digit-step", "steps", series(lambda: run_long_step_name(240)),
         "is larger than lorarank reads", page=Page("series", run_long_step_name)),
    Case("config-15mib-string", "json", audit(config_long_string), check=check_config_long,
         page=Page("audit", config_long_string)),
    Case("config-2.1m-values", "json", audit(config_many_values), "values; lorarank reads at most 2,000,000",
         page=Page("audit", config_many_values)),
    Case("metadata-15mib-string", "json", audit(metadata_long_string), check=lambda out: None,
         page=Page("audit", metadata_long_string)),
    # base weights
    Case("base-320-shards-320k-keys", "base", cli_base_many_shards, "hold over 300,000 tensors"),
    Case("finetuned-320-shards", "base", cli_finetuned_many_shards, "holds over 300,000 tensors"),
    Case("base-norm-overflows", "base", cli_base_overflow, "squared Frobenius norm overflows float64"),
    Case("base-fifo", "paths", cli_base_fifo, "is a FIFO (named pipe)"),
    # paths, names, output
    Case("fifo-adapter", "paths", cli_fifo, "is a FIFO (named pipe)"),
    Case("fifo-compare", "paths", cli_fifo_compare, "is a FIFO (named pipe)"),
    Case("three-1mib-module-names", "output", cli_text(long_name_adapter), check=check_text_bounded),
    Case("hub-id-100kb", "output", cli_hub_long, "a Hub repo is `owner/name`"),
    Case("non-utf8-file-names", "paths", cli_nonutf8, check=check_nonutf8, after=report_written),
    Case("html-disk-full", "paths", cli_html_cut, "File too large", after=nothing_half_written,
         file_limit=64 * 2**10),
    Case("fleet-html-disk-full", "paths", cli_fleet_html_cut, "File too large", after=nothing_half_written,
         file_limit=64 * 2**10, status_lines=True),
    Case("finetuned-1mib-name", "output", cli_finetuned_long_names, check=check_text_bounded),
    Case("full-rank-4096", "compute", audit(full_rank), check=check_full_rank),
    # links (no upload needed)
    Case("link-hf-phish", "links", None, page=Page("url", params={"hf": PHISH}), page_said="a Hub repo is"),
    Case("link-hf-100kb", "links", None, page=Page("url", params={"hf": "a" * 100_000}), page_said="a Hub repo is"),
    Case("link-revision-phish", "links", None, page=Page("url", params={"hf": "owner/name", "revision": PHISH}),
         page_said="a Hub revision is"),
    Case("link-series-hf-phish", "links", None, page=Page("url", params={"series_hf": PHISH}),
         page_said="a Hub repo is"),
    Case("link-series-revisions-phish", "links", None,
         page=Page("url", params={"series_hf": "owner/name", "series_revisions": f"main,{PHISH}"}),
         page_said="a Hub revision is"),
    Case("link-series-subfolder-phish", "links", None,
         page=Page("url", params={"series_hf": "owner/name", "series_subfolder": PHISH}),
         page_said="a Hub subfolder is"),
    Case("link-series-commits-phish", "links", None,
         page=Page("url", params={"series_hf": "owner/name", "series_revisions": "main",
                                  "series_commits": PHISH}),
         page_said="a Hub revision is"),
] + VARIANTS
