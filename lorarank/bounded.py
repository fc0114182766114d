"""Reading untrusted input within documented bounds: JSON, zip archives, paths and text.

Everything lorarank reads from a file, an upload or a link is treated as hostile: a small file
must not make the process loop, allocate or wait without bound. The readers here check what a
file *declares* against the bytes actually present and against the limits below **before**
allocating or looping, and verify declared sizes while streaming instead of trusting them.

JSON (:func:`load_json`)
    The one function that parses JSON from a file (configs, safetensors headers and metadata,
    ``trainer_state.json``, shard indexes). A chunked scan (:func:`json_shape`, linear time,
    a fixed 256 KiB of working memory whatever the size) measures the nesting depth and the
    number of values first; a document over :data:`MAX_JSON_BYTES`, :data:`MAX_JSON_DEPTH` or
    :data:`MAX_JSON_VALUES` is refused in one sentence before ``json.loads`` builds anything
    (a deep document would raise RecursionError there; a few bytes per value become ~70 bytes
    of Python objects each).
Zip archives (:class:`ZipArchive`)
    One parse of the central directory per archive; duplicate member names, encrypted members,
    compression methods other than stored / deflate / bzip2, and declared sizes past the
    archive's bounds are refused up front. Members are inflated by streaming, at most 64 KiB
    of output per step: a member that inflates past its declared size is stopped at that
    size (``zipfile`` inflates a bzip2 member whole, and a deflate member up to 2 GiB per read,
    before comparing), and the CRC is checked.
Paths (:func:`regular_file`)
    A path read as a file must be a regular file: a FIFO would block ``open`` forever, a
    device would stream without end.
Text (:func:`clip`)
    One line of at most ``limit`` characters (control characters become spaces, the middle of
    a long text is cut): error messages and terminal output quote names from files and links.

Limits (constants, documented in ``docs/``):

=========================  ============  ==================================================
name                       value         what
=========================  ============  ==================================================
``MAX_JSON_BYTES``         16 MiB        one JSON document (configs, headers, metadata)
``MAX_JSON_DEPTH``         64            nesting of ``[`` / ``{``
``MAX_JSON_VALUES``        2,000,000     values and keys of one document
``MAX_ZIP_MEMBERS``        50,000        members of one archive
``MAX_ZIP_EXPANSION``      16            declared unpacked bytes per archive byte (+ 64 MiB)
=========================  ============  ==================================================
"""

from __future__ import annotations

import bz2
import io
import json
import os
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from .errors import MAX_MESSAGE_CHARS, AdapterError

__all__ = [
    "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_JSON_VALUES", "MAX_ZIP_MEMBERS", "MAX_ZIP_EXPANSION",
    "ZIP_SLACK", "MAX_MESSAGE_CHARS", "json_shape", "load_json", "ZipArchive", "ZipMember",
    "regular_file", "open_regular", "read_exact", "read_file", "write_atomic", "write_text", "clip",
]

#: Largest JSON document parsed (bytes).
MAX_JSON_BYTES = 16 * 2**20
#: Deepest nesting of ``[`` / ``{`` parsed.
MAX_JSON_DEPTH = 64
#: Most values (and keys) in one JSON document: about 150 MB of Python objects at worst.
MAX_JSON_VALUES = 2_000_000
#: Most members of one zip archive (an ``.npz`` or a zipped training run).
MAX_ZIP_MEMBERS = 50_000
#: A zip's declared unpacked sizes may total at most this many times its size, plus ZIP_SLACK.
MAX_ZIP_EXPANSION = 16
ZIP_SLACK = 64 * 2**20

_CHUNK = 256 * 2**10
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
#: The bytes that shape a JSON document: 1 opens a level, 2 closes one, 3 separates values.
_KIND = np.zeros(256, dtype=np.uint8)
_KIND[[ord("["), ord("{")]] = 1
_KIND[[ord("]"), ord("}")]] = 2
_KIND[[ord(","), ord(":")]] = 3


# --------------------------------------------------------------------------------------- JSON
def json_shape(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(depth, values)`` of JSON text, in linear time and a fixed working memory.

    ``depth`` is the deepest nesting of ``[`` / ``{`` outside strings; ``values`` an upper
    bound on the values and keys ``json.loads`` would create (separators ``,`` and ``:`` and
    openings outside strings, plus one). The text is scanned in 256 KiB chunks with numpy,
    carrying three numbers across chunks (inside a string or not, the length of a trailing
    run of backslashes, the depth), so a 16 MiB document costs about 16 MiB of reads and a few
    MiB of scratch, however it is built. For text that is not JSON the numbers are
    meaningless but still bounded; ``json.loads`` then says what is wrong.
    """
    view = memoryview(data).cast("B")
    depth, peak, values = 0, 0, 1
    inside = 0  # 1 when the previous chunk ended inside a string
    run = 0  # backslashes ending the previous chunk
    for start in range(0, len(view), _CHUNK):
        b = np.frombuffer(view[start:start + _CHUNK], dtype=np.uint8)
        n = b.size
        # 1. Escaped characters: preceded by an odd run of backslashes.
        bs = b == _BACKSLASH
        if run == 0 and not bs.any():   # no backslash at all (a safetensors header): none escaped
            quotes = b == _QUOTE
            last_other = None
        else:
            idx = np.arange(n, dtype=np.int64)
            last_other = np.maximum.accumulate(np.where(bs, -1, idx))  # last non-backslash <= i
            # backslashes right before i: i - 1 - last_other[i - 1], or from the chunk start
            before = np.empty(n, dtype=np.int64)
            before[0] = run
            if n > 1:
                prev = last_other[:-1]
                before[1:] = np.where(prev >= 0, idx[1:] - 1 - prev, idx[1:] + run)
            escaped = (before & 1).astype(bool)
            # 2. Inside or outside strings: unescaped quotes toggle.
            quotes = (b == _QUOTE) & ~escaped
        # Only the structural characters matter: each is outside a string when an even number
        # of unescaped quotes (plus the carried state) stands before it in the chunk.
        qpos = np.flatnonzero(quotes)
        kind = _KIND[b]
        spos = np.flatnonzero(kind)
        out = ((np.searchsorted(qpos, spos) + inside) & 1) == 0
        k = kind[spos[out]]
        # 3. Depth and separators outside strings.
        if k.size:
            levels = np.cumsum((k == 1).astype(np.int64) - (k == 2), dtype=np.int64) + depth
            peak = max(peak, depth, int(levels.max()))
            depth = int(levels[-1])
        values += int(np.count_nonzero(k != 2))   # openings and separators
        inside = (inside + qpos.size) & 1
        if last_other is None:
            run = 0
        else:
            tail = n - 1 - int(last_other[-1]) if n else 0
            run = tail + run if n and last_other[-1] < 0 else tail
    return peak, values


#: Below this size :func:`_json_bounds` first tries byte counts (a config, a small header).
_COUNT_BYTES = 1 * 2**20


def _json_bounds(raw, *, max_depth: int, max_values: int) -> tuple[int, int]:
    """:func:`json_shape` of ``raw``, or upper bounds of it when those are within the limits.

    Openings ``[`` / ``{`` anywhere (inside strings too) bound the depth, and openings plus
    separators plus one bound the values, so when these counts are within ``max_depth`` and
    ``max_values`` the scan could only find less: the verdict is the same, from four
    ``bytes.count`` calls (a few microseconds for a config, against ~15 us of numpy set-up).
    """
    if isinstance(raw, (bytes, bytearray)) and len(raw) <= _COUNT_BYTES:
        opens = raw.count(b"[") + raw.count(b"{")
        values = opens + raw.count(b",") + raw.count(b":") + 1
        if opens <= max_depth and values <= max_values:
            return opens, values
    return json_shape(raw)


def load_json(name: str, data: bytes | bytearray | memoryview | str, *, what: str = "JSON",
              max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH,
              max_values: int = MAX_JSON_VALUES) -> object:
    """Parse JSON from a file or a link within bounds; one sentence naming ``name`` otherwise.

    Parameters
    ----------
    name : str
        The file (or field) the text came from, for the message.
    data : bytes-like or str
        UTF-8 JSON text.
    what : str
        What the text is (``"config"``, ``"safetensors header"``), for the message.
    max_bytes, max_depth, max_values : int
        Refused above these (:data:`MAX_JSON_BYTES`, :data:`MAX_JSON_DEPTH`,
        :data:`MAX_JSON_VALUES` by default), before ``json.loads`` runs.

    Returns
    -------
    object
        What ``json.loads`` returns.

    Raises
    ------
    AdapterError
        Too large, too deep, too many values, not UTF-8 or not JSON.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    size = memoryview(raw).nbytes
    if size > max_bytes:
        raise AdapterError(f"{name}: the {what} is {size / 2**20:,.1f} MiB; lorarank reads at most "
                           f"{max_bytes / 2**20:g} MiB")
    depth, values = _json_bounds(raw, max_depth=max_depth, max_values=max_values)
    if depth > max_depth:
        raise AdapterError(f"{name}: the {what} nests {depth:,} levels deep; lorarank reads at most "
                           f"{max_depth}")
    if values > max_values:
        raise AdapterError(f"{name}: the {what} holds about {values:,} values; lorarank reads at most "
                           f"{max_values:,}")
    try:
        text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, a 5,000-digit integer
        raise AdapterError(f"{name} is not valid JSON ({clip(exc, 200)})") from exc
    if _SURROGATE_ESCAPE.search(text):
        # "\ud800" alone is no character: Python keeps it, but nothing can encode it (Arrow
        # tables, UTF-8 output); safetensors' own parser refuses it. Pairs (emoji) are fine.
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise AdapterError(f"{name} is not valid JSON (a lone UTF-16 surrogate escape, "
                               f"{clip(repr(exc.object[exc.start:exc.end]), 20)}, is not text)") from exc
    return doc


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


# ---------------------------------------------------------------------------------------- zip
#: Compression methods read: stored, deflate, bzip2 (what zip tools and numpy write).
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2"}
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_OUT_STEP = 64 * 2**10
_IN_STEP = 64 * 2**10
# What a damaged archive can raise while its directory is parsed.
_ZIP_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, zlib.error,
               NotImplementedError, KeyError, struct.error, OverflowError)


@dataclass(frozen=True)
class ZipMember:
    """One member of a :class:`ZipArchive` as its central directory declares it."""

    name: str
    size: int  # declared unpacked bytes
    compressed: int  # declared packed bytes
    method: int
    crc: int
    offset: int  # of its local header
    is_dir: bool


class ZipArchive:
    """A zip archive read within bounds: one directory parse, members streamed and verified.

    Parameters
    ----------
    name : str
        The archive's name, for messages.
    source : bytes-like or binary file
        The archive in memory (members that are stored come back as views of it, no copy), or
        an open seekable file.
    max_members : int
        Refused above this many members (:data:`MAX_ZIP_MEMBERS`).
    max_ratio, slack : int
        The declared unpacked sizes may total at most ``max_ratio * archive size + slack``.
    max_bytes : int, optional
        And at most this many bytes in all (e.g. what one ``.npz`` may unpack to).
    kind : str
        ``".zip archive"``, ``".npz archive"``: what the archive is, for messages.

    Raises
    ------
    AdapterError
        Not a zip archive, a damaged directory, too many members, a name twice, an encrypted
        member, an unsupported compression method, or declared sizes past the bounds.
    """

    def __init__(self, name: str, source: bytes | bytearray | memoryview | BinaryIO, *,
                 max_members: int = MAX_ZIP_MEMBERS, max_ratio: int = MAX_ZIP_EXPANSION,
                 slack: int = ZIP_SLACK, max_bytes: int | None = None, kind: str = ".zip archive") -> None:
        self.name = name
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = source if isinstance(source, bytes) else bytes(source)
            self._view: memoryview | None = memoryview(data)
            self._file: BinaryIO = io.BytesIO(data)  # shares a bytes object until written: no copy
            self.archive_size = len(data)
        else:
            self._view = None
            self._file = source
            self._file.seek(0, io.SEEK_END)
            self.archive_size = self._file.tell()
        self._file.seek(0)
        if self._file.read(2) != b"PK":
            article = "an" if kind[:1] in ".aeiou" else "a"
            raise AdapterError(f"{name} is not {article} {kind} (it does not start with a zip signature)")
        self._file.seek(0)
        try:
            infos = zipfile.ZipFile(self._file).infolist()
        except _ZIP_ERRORS as exc:
            raise AdapterError(f"{name} is not a valid {kind} ({clip(exc, 200)})") from exc
        if len(infos) > max_members:
            raise AdapterError(f"{name} has {len(infos):,} members; lorarank reads at most {max_members:,}")
        members: dict[str, ZipMember] = {}
        for info in infos:
            if info.filename in members:
                raise AdapterError(f"{name}: member {clip(info.filename, 200)!r} appears twice in the "
                                   "archive; readers would silently use one of the copies, so lorarank "
                                   "refuses it")
            if info.flag_bits & 0x1:
                raise AdapterError(f"{name}: member {clip(info.filename, 200)!r} is encrypted; lorarank "
                                   "reads unencrypted archives only")
            if info.compress_type not in _METHODS and not info.is_dir():
                raise AdapterError(f"{name}: member {clip(info.filename, 200)!r} uses zip compression "
                                   f"method {info.compress_type}; lorarank reads stored, deflate and "
                                   "bzip2 members")
            members[info.filename] = ZipMember(info.filename, int(info.file_size), int(info.compress_size),
                                               int(info.compress_type), int(info.CRC),
                                               int(info.header_offset), info.is_dir())
        self.members = members
        declared = sum(m.size for m in members.values())
        limit = max_ratio * self.archive_size + slack
        if declared > limit:
            raise AdapterError(
                f"{name} would unpack to {declared / 2**20:,.0f} MiB from {self.archive_size / 2**20:,.1f} MiB "
                f"(more than {max_ratio}x its size plus {slack // 2**20} MiB); refusing a possible zip bomb")
        if max_bytes is not None and declared > max_bytes:
            raise AdapterError(f"{name} would unpack to {declared / 2**20:,.0f} MiB; lorarank unpacks "
                               f"{kind.split()[0]} files up to {max_bytes // 2**20} MiB")
        self.declared_bytes = declared

    def files(self) -> list[ZipMember]:
        """The members that are not folders, in archive order."""
        return [m for m in self.members.values() if not m.is_dir]

    # -------------------------------------------------------------------------------- reading
    def _data_start(self, member: ZipMember) -> int:
        if not 0 <= member.offset <= self.archive_size - _LOCAL_HEADER.size or member.compressed < 0:
            raise self._damaged(member, "its directory entry points outside the archive")
        self._file.seek(member.offset)
        head = self._file.read(_LOCAL_HEADER.size)
        if len(head) != _LOCAL_HEADER.size:
            raise self._damaged(member, "its local header is cut off")
        sig, *_, name_len, extra_len = _LOCAL_HEADER.unpack(head)
        if sig != b"PK\x03\x04":
            raise self._damaged(member, "its local header is missing")
        start = member.offset + _LOCAL_HEADER.size + name_len + extra_len
        if start + member.compressed > self.archive_size:
            raise self._damaged(member, "its data runs past the end of the archive")
        return start

    def _damaged(self, member: ZipMember, why: str) -> AdapterError:
        return AdapterError(f"{self.name}: member {clip(member.name, 200)!r} is damaged ({why})")

    def chunks(self, member: ZipMember, *, limit: int | None = None) -> Iterator[bytes | memoryview]:
        """The member's bytes, inflated 64 KiB at a time; at most ``limit`` bytes (default all).

        Reading all of it checks that it inflates to exactly its declared size (stopping at
        that size, never past it) and that its CRC matches.

        Raises
        ------
        AdapterError
            Inflates past or short of its declared size, a damaged stream, a CRC mismatch.
        """
        want = member.size if limit is None else min(limit, member.size)
        start = self._data_start(member)
        if member.method == zipfile.ZIP_STORED:
            if member.compressed != member.size:
                raise self._damaged(member, "a stored member whose packed and unpacked sizes differ")
            crc = 0
            for at in range(0, want, _IN_STEP):
                n = min(_IN_STEP, want - at)
                if self._view is not None:
                    piece: bytes | memoryview = self._view[start + at:start + at + n]
                else:
                    self._file.seek(start + at)
                    piece = self._file.read(n)
                crc = zlib.crc32(piece, crc)
                yield piece
            if limit is None and crc != member.crc:
                raise self._damaged(member, "CRC mismatch")
            return
        produced, crc = 0, 0
        for out in self._inflate(member, start):
            produced += len(out)
            if produced > member.size:
                raise AdapterError(
                    f"{self.name}: member {clip(member.name, 200)!r} inflates past its declared size of "
                    f"{member.size:,} bytes; refusing a possible zip bomb")
            crc = zlib.crc32(out, crc)
            given = produced - len(out)
            if given < want:
                yield out[: want - given]
            if limit is not None and produced >= want:
                return
        if produced != member.size:
            raise self._damaged(member, f"it inflates to {produced:,} bytes, not the declared {member.size:,}")
        if crc != member.crc:
            raise self._damaged(member, "CRC mismatch")

    def _inflate(self, member: ZipMember, start: int) -> Iterator[bytes]:
        """The member's output in pieces of at most 64 KiB (one byte past its declared size at
        most, which the caller refuses); stops at the end of its compressed stream."""
        read_in = 0

        def more() -> bytes:
            nonlocal read_in
            if read_in >= member.compressed:
                return b""
            self._file.seek(start + read_in)
            data = self._file.read(min(_IN_STEP, member.compressed - read_in))
            read_in += len(data)
            return data

        def room(done: list[int]) -> int:
            return min(_OUT_STEP, member.size - done[0] + 1)

        done = [0]
        try:
            if member.method == zipfile.ZIP_DEFLATED:
                inflater = zlib.decompressobj(-15)
                tail = b""
                while not inflater.eof:
                    if not tail:
                        tail = more()
                        if not tail:
                            raise self._damaged(member, "its deflate stream is cut off")
                    out = inflater.decompress(tail, room(done))
                    tail = inflater.unconsumed_tail
                    done[0] += len(out)
                    yield out
            else:
                unpacker = bz2.BZ2Decompressor()
                idle = 0
                while not unpacker.eof:
                    data = more() if unpacker.needs_input else b""
                    if unpacker.needs_input and not data:
                        raise self._damaged(member, "its bzip2 stream is cut off")
                    out = unpacker.decompress(data, room(done))
                    idle = 0 if out or data else idle + 1
                    if idle > 2:
                        raise self._damaged(member, "its bzip2 stream makes no progress")
                    done[0] += len(out)
                    yield out
        except (zlib.error, OSError, EOFError, ValueError) as exc:
            raise self._damaged(member, clip(exc, 120)) from exc

    def read(self, member: ZipMember | str, *, limit: int | None = None) -> bytes | memoryview:
        """The member's bytes (all of them, or the first ``limit``), verified as :meth:`chunks`.

        A stored member of an archive held in memory is returned as a view of it (no copy).
        """
        if isinstance(member, str):
            member = self.members[member]
        if (self._view is not None and member.method == zipfile.ZIP_STORED
                and member.compressed == member.size):
            start = self._data_start(member)
            want = member.size if limit is None else min(limit, member.size)
            view = self._view[start:start + want]
            if limit is None and zlib.crc32(view) != member.crc:
                raise self._damaged(member, "CRC mismatch")
            return view
        buffer = bytearray()
        for piece in self.chunks(member, limit=limit):
            buffer += piece
        return bytes(buffer)


# -------------------------------------------------------------------------------------- paths
def regular_file(path: str | os.PathLike, *, what: str = "input") -> Path:
    """``path`` as a :class:`~pathlib.Path` when it is a regular file (symlinks followed).

    Raises
    ------
    FileNotFoundError
        If nothing is there.
    AdapterError
        A folder, FIFO, socket or device: one sentence saying what it is (opening a FIFO to
        read it would wait for a writer forever).
    """
    p = Path(path)
    mode = os.stat(p).st_mode  # FileNotFoundError when absent
    if stat.S_ISREG(mode):
        return p
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    raise AdapterError(f"{clip(str(p), 300)} is {kind}; lorarank reads regular files as {what}")


def open_regular(path: str | os.PathLike, *, what: str = "input") -> tuple[int, int]:
    """``(descriptor, size)`` of a regular file opened for reading; the caller closes it.

    Opened without blocking (``O_NONBLOCK``: opening a FIFO would otherwise wait for a writer)
    and checked on the open descriptor, so what is read is what was checked.

    Raises
    ------
    FileNotFoundError
        If nothing is there.
    AdapterError
        A folder, FIFO, socket or device (:func:`regular_file`'s sentence).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:   # a folder or a socket cannot be opened: say what it is (or re-raise what happened)
        regular_file(path, what=what)
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            regular_file(path, what=what)
            raise AdapterError(f"{clip(os.fspath(path), 300)} is not a regular file; lorarank reads regular "
                               f"files as {what}")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def read_exact(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes from ``fd`` (fewer only at the end of the file)."""
    data = os.read(fd, n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        part = os.read(fd, n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read_file(path: str | os.PathLike, *, max_bytes: int, what: str = "input") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before reading).

    Raises
    ------
    FileNotFoundError
        If nothing is there.
    AdapterError
        Not a regular file (:func:`regular_file`), or larger than ``max_bytes``.
    """
    fd, size = open_regular(path, what=what)
    try:
        if size > max_bytes:
            raise AdapterError(f"{clip(Path(path).name, 300)} is {size / 2**20:,.1f} MiB; lorarank reads "
                               f"{what} up to {max_bytes / 2**20:g} MiB")
        # the size just seen plus one byte (a read of max_bytes + 1 would allocate that much for
        # a 200-byte config); a file that grew since is read on, up to the bound
        data = os.read(fd, size + 1)   # one call: a regular file reads short only at its end
        if len(data) != size:   # it grew, or a file system read short: read on, up to the bound
            data += read_exact(fd, max_bytes + 1 - len(data))
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew while read
        raise AdapterError(f"{clip(Path(path).name, 300)} is over {max_bytes / 2**20:g} MiB; lorarank reads "
                           f"{what} up to {max_bytes / 2**20:g} MiB")
    return data


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object], *,
                 overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` whole or not at all: a temporary file beside it, renamed.

    ``data`` is the bytes, or a function writing them to the open binary file (``np.save``
    of a large array, without a copy in memory).

    A failure half way (a full disk, an encoding error, an interrupt) leaves no partial or
    empty file behind, and a FIFO at ``path`` is replaced, never opened (opening it would wait
    for a reader). Without ``overwrite`` an existing name (a dangling symlink included) is an
    error, checked atomically; with it, a symlink is written through, as ``open`` would.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    target = Path(path)
    if overwrite and target.is_symlink():
        target = Path(os.path.realpath(target))
    temp = target.parent / f".{target.name[:60]}.{os.urandom(6).hex()}.part"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
        if overwrite:
            os.replace(temp, target)
        else:
            try:
                os.link(temp, target)  # fails if the name exists, atomically
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links
                if os.path.lexists(target):
                    raise FileExistsError(17, "File exists", str(target)) from None
                os.rename(temp, target)
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)
    return target


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> int:
    """:func:`write_atomic` of ``text`` as UTF-8 (an HTML report); returns the bytes written.

    Undecodable file names quoted in it (surrogates) are written as ``\\udcXX``, so encoding
    never fails half way; the file appears whole or not at all.
    """
    data = text.encode("utf-8", "backslashreplace")
    write_atomic(path, data, overwrite=overwrite)
    return len(data)


# --------------------------------------------------------------------------------------- text
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clip(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` as one printable line of at most ``limit`` characters.

    Control characters and line breaks become spaces; surrogates left by undecodable file
    names (``os.fsdecode``) become ``\\udcXX`` escapes, so the line can be encoded as UTF-8;
    a longer text keeps its start and its end around an ellipsis (the end of an error
    sentence says what to do).
    """
    out = _CONTROL.sub(" ", str(text))
    if _SURROGATE.search(out):
        out = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)
    if len(out) <= limit:
        return out
    if limit < 8:
        return out[:max(limit - 1, 0)] + "\u2026"
    tail = limit // 3
    return out[: limit - tail - 1] + "\u2026" + out[-tail:]
