"""``lorarank.bounded``: the shared JSON parser, the bounded zip reader, paths and text (issue 23).

Oracles: Python's own walk of the parsed document for the depth, ``zipfile`` for honest archives
(every member read back byte for byte), hand-built archives whose directory lies about sizes.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import random
import struct
import zipfile
import zlib

import pytest

import lorarank.bounded as bounded
from lorarank.bounded import ZipArchive, clip, json_shape, load_json, read_file, regular_file
from lorarank.errors import AdapterError


def depth_of(obj: object) -> int:
    """Nesting of lists and dicts, by walking the parsed document (iteratively)."""
    best, stack = 0, [(obj, int(isinstance(obj, (list, dict))))]
    while stack:
        o, d = stack.pop()
        best = max(best, d)
        children = o.values() if isinstance(o, dict) else o if isinstance(o, list) else ()
        stack.extend((c, d + isinstance(c, (list, dict))) for c in children)
    return best


def random_document(rng: random.Random, level: int = 0) -> object:
    r = rng.random()
    if level > 6 or r < 0.3:
        # strings full of what a naive scan would miscount: quotes, backslashes, brackets
        return rng.choice([1, 2.5, None, True, 'a"b\\c[{', "x\\", '\\"]]', "]}" * 3, "", "\\\\\\"])
    if r < 0.65:
        return [random_document(rng, level + 1) for _ in range(rng.randint(0, 4))]
    return {f'k{rng.random()}\\"[': random_document(rng, level + 1) for _ in range(rng.randint(0, 4))}


class TestJson:
    @pytest.mark.parametrize("chunk", [1, 2, 3, 7, 256 * 2**10])
    def test_depth_matches_the_parsed_document(self, monkeypatch, chunk):
        """Oracle: the scan's depth equals a walk of json.loads' result, whatever the chunking
        (escapes and quotes that straddle chunk borders included)."""
        monkeypatch.setattr(bounded, "_CHUNK", chunk)
        rng = random.Random(chunk)
        for _ in range(150):
            doc = random_document(rng)
            text = json.dumps(doc).encode()
            depth, values = json_shape(text)
            assert depth == depth_of(doc), text
            assert values >= 1

    @pytest.mark.parametrize("chunk", [1, 3, 64, 256 * 2**10])
    def test_equals_a_plain_scan(self, monkeypatch, chunk):
        """Oracle for the vectorised scan (fast path without backslashes, structural characters
        only): a byte-by-byte scan gives the same (depth, values), on JSON and on any bytes."""
        def plain(text: bytes) -> tuple[int, int]:
            depth = peak = run = 0   # run: backslashes just before (an odd run escapes a quote)
            values, inside = 1, False
            for c in text:
                if c == 0x5C:
                    run += 1
                    continue
                escaped, run = run % 2 == 1, 0
                if c == 0x22:
                    inside = inside if escaped else not inside
                elif not inside:
                    if c in b"[{":
                        depth += 1
                        peak = max(peak, depth)
                        values += 1
                    elif c in b"]}":
                        depth -= 1
                    elif c in b",:":
                        values += 1
            return peak, values

        monkeypatch.setattr(bounded, "_CHUNK", chunk)
        rng = random.Random(7 + chunk)
        texts = [json.dumps(random_document(rng)).encode() for _ in range(60)]
        texts += [bytes(rng.choice(b'[]{},:"\\ab') for _ in range(rng.randint(0, 300))) for _ in range(60)]
        for text in texts:
            assert json_shape(text) == plain(text), text

    def test_values_bound_separators(self):
        """The value count bounds what json.loads creates: here exactly its 8 values and keys."""
        assert json_shape(b'{"a": [1, 2, {"b": "x,y:z"}]}') == (3, 8)

    @pytest.mark.parametrize("text, said", [
        (b"[" * 100_000 + b"]" * 100_000, "nests 100,000 levels deep; lorarank reads at most 64"),
        (b"[" + b"[]," * 1_000_000 + b"[]]", "holds about 2,000,003 values; lorarank reads at most 2,000,000"),
        (b'"' + b"x" * (16 * 2**20) + b'"', "is 16.0 MiB; lorarank reads at most 16 MiB"),
        (b"\xff\xfe{}", "is not valid JSON"),
        (b'{"a": 1', "is not valid JSON"),
    ], ids=["deep", "many-values", "large", "not-utf8", "cut"])
    def test_refusals(self, text, said):
        """One sentence each, naming the file and the bound."""
        with pytest.raises(AdapterError) as info:
            load_json("state.json", text)
        assert said in str(info.value) and str(info.value).startswith("state.json")

    def test_long_string_costs_its_bytes(self):
        """A 15 MiB string value parses (about its size in memory, not 120x as the regex scan cost)."""
        doc = load_json("c.json", b'{"a": "' + b"x" * (15 * 2**20) + b'"}')
        assert len(doc["a"]) == 15 * 2**20


def hand_zip(members: list[tuple[str, bytes, int, int]]) -> bytes:
    """A zip built byte by byte: (name, payload, declared size, method) per member."""
    out, directory = bytearray(), bytearray()
    for name, payload, said, method in members:
        raw = name.encode()
        crc = zlib.crc32(payload)
        if method == zipfile.ZIP_DEFLATED:
            packer = zlib.compressobj(9, zlib.DEFLATED, -15)
            packed = packer.compress(payload) + packer.flush()
        elif method == zipfile.ZIP_BZIP2:
            packed = bz2.compress(payload)
        else:
            packed = payload
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(packed), said,
                           len(raw), 0) + raw + packed
        directory += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc,
                                 len(packed), said, len(raw), 0, 0, 0, 0, 0, offset) + raw
    start = len(out)
    out += directory + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members),
                                   len(directory), start, 0)
    return bytes(out)


class TestZip:
    @pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
    def test_honest_archives_read_as_zipfile_reads_them(self, method):
        """Oracle: every member equals what zipfile reads, whole and as a prefix."""
        rng = random.Random(method)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=method) as z:
            for i in range(5):
                z.writestr(f"d/m{i}.bin", bytes(rng.randrange(256) for _ in range(rng.randint(0, 300_000))))
            z.writestr("d/", b"")
        data = buf.getvalue()
        archive = ZipArchive("a.zip", data)
        reference = zipfile.ZipFile(io.BytesIO(data))
        assert [m.name for m in archive.files()] == [n for n in reference.namelist() if not n.endswith("/")]
        for member in archive.files():
            assert bytes(archive.read(member)) == reference.read(member.name)
            assert bytes(archive.read(member, limit=1000)) == reference.read(member.name)[:1000]

    @pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
    def test_member_inflating_past_its_size_stops_there(self, method):
        """A member declaring 1,000 bytes that inflates to 64 MiB is refused at byte 1,001: it
        never costs more than a step of output (zipfile inflated it whole first)."""
        bomb = hand_zip([("q.npy", b"\0" * (64 * 2**20), 1000, method)])
        with pytest.raises(AdapterError, match=r"member 'q.npy' inflates past its declared size of 1,000 "
                                               r"bytes; refusing a possible zip bomb"):
            ZipArchive("b.zip", bomb).read("q.npy")

    @pytest.mark.parametrize("members, said", [
        ([("x", b"hello" * 100, 600, zipfile.ZIP_DEFLATED)], "inflates to 500 bytes, not the declared 600"),
        ([("x", b"a", 1, 99)], "uses zip compression method 99"),
        ([("x", b"a", 1, 0), ("x", b"b", 1, 0)], "member 'x' appears twice in the archive"),
    ], ids=["short", "method", "duplicate"])
    def test_lying_or_odd_archives(self, members, said):
        with pytest.raises(AdapterError, match=said):
            archive = ZipArchive("a.zip", hand_zip(members))
            for m in archive.files():
                archive.read(m)

    def test_crc_checked(self):
        data = bytearray(hand_zip([("z", b"stored", 6, zipfile.ZIP_STORED)]))
        data[31] ^= 0xFF  # a payload byte
        with pytest.raises(AdapterError, match=r"member 'z' is damaged \(CRC mismatch\)"):
            ZipArchive("c.zip", bytes(data)).read("z")

    def test_stored_members_are_views(self):
        """A stored member of an archive in memory comes back without a copy."""
        data = hand_zip([("z", b"x" * 1000, 1000, zipfile.ZIP_STORED)])
        assert isinstance(ZipArchive("c.zip", data).read("z"), memoryview)

    def test_declared_sizes_bounded_up_front(self):
        with pytest.raises(AdapterError, match="refusing a possible zip bomb"):
            ZipArchive("c.zip", hand_zip([("z", b"", 2**32 - 1, zipfile.ZIP_STORED)]))


class TestPaths:
    def test_fifo_refused_without_opening(self, tmp_path):
        """Opening a FIFO to read waits for a writer forever; it is named instead."""
        fifo = tmp_path / "adapter.safetensors"
        os.mkfifo(fifo)
        with pytest.raises(AdapterError, match=r"adapter.safetensors is a FIFO \(named pipe\)"):
            regular_file(fifo)

    @pytest.mark.parametrize("make", ["fifo", "socket", "folder", "missing"])
    def test_read_file_names_what_is_not_a_file(self, tmp_path, make):
        """read_file opens without blocking and checks the open descriptor: a FIFO, a socket or
        a folder is one sentence at once (never a wait for a writer), a missing file an OSError."""
        import socket
        import time

        path = tmp_path / "adapter_config.json"
        if make == "fifo":
            os.mkfifo(path)
        elif make == "socket":
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path))
        elif make == "folder":
            path.mkdir()
        start = time.perf_counter()
        if make == "missing":
            with pytest.raises(FileNotFoundError):
                read_file(path, max_bytes=100)
        else:
            kind = {"fifo": r"a FIFO \(named pipe\)", "socket": "a socket", "folder": "a folder"}[make]
            with pytest.raises(AdapterError, match=rf"adapter_config.json is {kind}; lorarank reads regular files"):
                read_file(path, max_bytes=100)
        assert time.perf_counter() - start < 5

    @pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 70_000])
    def test_read_file_reads_exactly_the_file(self, tmp_path, size):
        """The whole file, in one read when it is what its size said, refused past the bound."""
        path = tmp_path / "c.json"
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        path.write_bytes(data)
        if size > 100 and size != 70_000:
            with pytest.raises(AdapterError, match="lorarank reads input up to"):
                read_file(path, max_bytes=100)
        else:
            assert read_file(path, max_bytes=max(size, 100)) == data

    def test_size_checked_before_reading(self, tmp_path):
        big = tmp_path / "config.json"
        with open(big, "wb") as fh:
            fh.truncate(2**40)  # sparse: 1 TiB declared, nothing on disk
        with pytest.raises(AdapterError, match=r"config.json is 1,048,576.0 MiB; lorarank reads configs up to 16 MiB"):
            read_file(big, max_bytes=16 * 2**20, what="configs")


class TestClip:
    def test_one_line_start_and_end_kept(self):
        out = clip("start " + "x" * 10_000 + " end\nof it", 100)
        assert len(out) == 100 and out.startswith("start ") and out.endswith("end of it") and "\n" not in out

    def test_undecodable_names_print(self):
        """A file name read with surrogateescape encodes as UTF-8 once clipped."""
        name = os.fsdecode(b"caf\xe9.safetensors")
        assert clip(name).encode("utf-8") == b"caf\\udce9.safetensors"
