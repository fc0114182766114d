"""Tensor sources: uniform, lazy read access to the named tensors of a safetensors or npz file.

Why safetensors' own API, and bfloat16 without ml_dtypes
--------------------------------------------------------
Files are parsed by the ``safetensors`` library itself (the Rust reference implementation, the
one PEFT and diffusers use), so header checks (offsets inside the buffer, no overlap, no gap)
are exactly the library's: a path through ``safe_open(..., framework="numpy")`` (lazy: only the
LoRA tensors are read), bytes through ``safetensors.deserialize``. Before the library sees a
header, :func:`check_safetensors_header` reads the 8-byte length and the JSON itself with
bounds (size, nesting, tensor count), so hostile headers cost bounded time and memory.

numpy has no bfloat16. Instead of importing ``ml_dtypes`` (0.65 s, half the time of a whole
84 MB audit), BF16 tensors are read as their raw bytes and decoded exactly:
``(uint16 -> uint32) << 16`` viewed as float32 (a bfloat16 is the top half of a float32). The
module remembers the stored dtype (:attr:`LoraModule.stored_dtype`), and writers round back to
bfloat16 bits (round to nearest even), which is exact for factors that were read as bfloat16.

``.npz`` files are read with :class:`lorarank.bounded.ZipArchive` (never ``np.load``, whose
``zipfile`` inflates a member before comparing it with its declared size): members must be
``.npy`` arrays of a float dtype whose header size matches the member's declared size, the
declared sizes together may not exceed :data:`MAX_NPZ_EXPANSION` times the archive size (plus
64 MiB), which stops zip bombs before any byte is inflated, and each member is inflated by
streaming, never past its declared size. Pickles are never loaded.
"""

from __future__ import annotations

import io
import math
import operator
import struct
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import AdapterError

__all__ = ["MAX_NPZ_EXPANSION", "Tensors", "safetensors_from_path", "safetensors_from_bytes",
           "npz_tensors", "all_finite", "FLOAT_DTYPES", "INT_DTYPES", "DTYPE_NAMES", "decode_bf16",
           "encode_bf16", "Bf16Array", "LazyArray", "check_safetensors_header", "tensor_layout",
           "ITEMSIZE", "Buffers"]

#: Largest accepted ratio of the declared unpacked size of an ``.npz`` to its packed size.
MAX_NPZ_EXPANSION = 16
_NPZ_SLACK = 64 * 2**20
#: Bounds on a safetensors header (checked before the library parses it) and on npz members.
MAX_HEADER_BYTES = 16 * 2**20
MAX_TENSORS = 50_000
#: Largest declared unpacked size of an ``.npz`` (np.load inflates each member whole).
MAX_NPZ_BYTES = 512 * 2**20

# safetensors dtype name -> numpy dtype; ints are accepted only for alpha scalars.
FLOAT_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
}
INT_DTYPES = {
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "U16": np.dtype(np.uint16),
    "U32": np.dtype(np.uint32), "U64": np.dtype(np.uint64),
}
DTYPE_NAMES = {v: k for k, v in {**FLOAT_DTYPES, **INT_DTYPES}.items()}


class Tensors:
    """Uniform read access to the named tensors of one file (lazy where the format allows)."""

    def __init__(self, source: str, entries: dict[str, tuple[str, tuple[int, ...]]],
                 getter: Callable[[str], np.ndarray], metadata: dict[str, str] | None = None,
                 raw: Callable[[str], bytes] | None = None):
        self.source = source
        self.entries = entries  # name -> (safetensors dtype name, shape)
        self._get = getter
        self.metadata = dict(metadata or {})  # safetensors __metadata__ (str -> str)
        self._raw = raw

    def raw(self, key: str) -> bytes:
        """The stored bytes of ``key`` (any dtype), for keeping non-LoRA tensors byte-identical."""
        if self._raw is None:
            arr = self._get(key)
            return np.ascontiguousarray(arr).tobytes()
        return self._raw(key)

    def keys(self) -> list[str]:
        return list(self.entries)

    def get(self, key: str, *, scalar: bool = False) -> np.ndarray:
        dtype_name, shape = self.entries[key]
        if dtype_name not in FLOAT_DTYPES and dtype_name != "BF16" and not (scalar and dtype_name in INT_DTYPES):
            raise AdapterError(
                f"{self.source}: tensor {key!r} has dtype {_readable_dtype(dtype_name)}; LoRA "
                "factors must be float64, float32, float16 or bfloat16"
            )
        arr = self._get(key)
        if arr.shape != tuple(shape):  # pragma: no cover - guarded by the libraries
            raise AdapterError(f"{self.source}: tensor {key!r} has inconsistent shape {arr.shape}")
        return arr


def _readable_dtype(name: str) -> str:
    if name == "BF16":
        return "bfloat16 (BF16)"
    for table in (FLOAT_DTYPES, INT_DTYPES):
        if name in table:
            return f"{table[name].name} ({name})"
    return name


#: What a user can do about the ``safetensors`` library's verdicts, by the words it uses.
_SAFETENSORS_HINTS = (
    (("header too large", "invalid header length"),
     "its header length points past the end of the file, so it was cut short (an interrupted "
     "download or copy?) or is another kind of file; download or save it again"),
    (("incomplete metadata", "not fully covered", "invalid offset", "invalid shape"),
     "its tensors do not fit the bytes the file holds, so it was cut short (an interrupted "
     "download or copy?) or written wrongly; download or save it again"),
)


def _safetensors_error(source: str, exc: Exception) -> AdapterError:
    """The library's verdict in one line, with what to do about it."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = detail.removeprefix("Error while deserializing header:").removeprefix(
        "Error while deserializing:").strip() or detail
    hint = next((text for words, text in _SAFETENSORS_HINTS if any(w in detail for w in words)),
                "download or save it again (safetensors' save_file or PEFT's save_pretrained)")
    return AdapterError(f"{source} is not a valid safetensors file ({detail}): {hint}")


def safetensors_from_path(path: Path) -> Tensors:
    import safetensors

    source = path.name
    if path.stat().st_size < 8:
        raise AdapterError(f"{source} is not a valid safetensors file (only {path.stat().st_size} bytes)")
    with open(path, "rb") as fh:
        metadata, header = check_safetensors_header(source, fh.read(8), fh.read, path.stat().st_size)
    try:
        handle = safetensors.safe_open(str(path), framework="numpy")
        entries = {}
        for key in handle.keys():
            sl = handle.get_slice(key)
            entries[key] = (sl.get_dtype(), tuple(int(d) for d in sl.get_shape()))
    except Exception as exc:  # SafetensorError and friends: the file is not valid
        raise _safetensors_error(source, exc) from exc

    def get(key: str) -> np.ndarray:
        try:
            dtype_name, shape = entries[key]
            if dtype_name == "BF16":
                return Bf16Array(raw(key), shape)
            if dtype_name not in FLOAT_DTYPES and dtype_name not in INT_DTYPES:
                return np.frombuffer(raw(key), dtype=np.uint8)
            return handle.get_tensor(key)
        except Exception as exc:
            raise _safetensors_error(source, exc) from exc

    def raw(key: str) -> bytes:
        start, end = offsets[key]
        with open(path, "rb") as fh:
            fh.seek(data_start + start)
            return fh.read(end - start)

    with open(path, "rb") as fh:
        data_start = 8 + struct.unpack("<Q", fh.read(8))[0]
    offsets = {k: (int(v["data_offsets"][0]), int(v["data_offsets"][1]))
               for k, v in header.items() if k != "__metadata__"}
    return Tensors(source, entries, get, metadata, raw)


#: Bytes per element of every safetensors dtype name (the format's own table).
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
             "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def tensor_layout(header: dict, data_len: int) -> dict[str, tuple[str, tuple[int, ...], int, int]] | None:
    """``{name: (dtype, shape, begin, end)}`` of a parsed safetensors header whose offsets cover
    ``data_len`` bytes of data exactly as the format requires, else None (see :func:`_layout`).

    The public seam for readers that fetch tensors by byte range (model weights on disk or on
    the Hub), so that they accept exactly the headers the upload reader accepts."""
    return _layout(header, data_len)


#: Bytes per element of every safetensors dtype name (public name of the format's table).
ITEMSIZE = _ITEMSIZE


_by_offsets = operator.itemgetter(2, 3)


def _layout(header: dict, data_len: int) -> dict[str, tuple[str, tuple[int, ...], int, int]] | None:
    """``{name: (dtype, shape, begin, end)}`` when the header describes the data exactly as the
    safetensors format requires (known dtypes, byte counts matching the shapes, offsets covering
    the data from 0 to its end with no gap and no overlap), else None."""
    out = {}
    for key, info in header.items():   # plain loops: a header of thousands of tensors
        if key == "__metadata__":
            continue
        if not isinstance(info, dict):
            return None
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if (type(dtype) is not str or dtype not in _ITEMSIZE or not isinstance(shape, list)
                or not isinstance(offsets, list) or len(offsets) != 2):
            return None
        begin, end = offsets
        if type(begin) is not int or type(end) is not int or begin < 0 or end < 0:
            return None
        count = _ITEMSIZE[dtype]
        for d in shape:
            if type(d) is not int or d < 0:
                return None
            count *= d
        if end - begin != count:
            return None
        out[key] = (dtype, tuple(shape), begin, end)
    position = 0
    for _, _, begin, end in sorted(out.values(), key=_by_offsets):
        if begin != position:
            return None
        position = end
    return out if position == data_len else None


def safetensors_from_bytes(source: str, data: bytes) -> Tensors:
    """Tensors of an in-memory safetensors file, as views of ``data`` (nothing is copied).

    The header (read with bounds by :func:`check_safetensors_header`) must describe the data
    exactly as the format requires: known dtypes, byte counts matching the shapes, offsets
    covering the data with no gap and no overlap. Then every tensor is a zero-copy view of
    ``data`` (bfloat16 decoded per use, :class:`Bf16Array`), so an upload costs its own bytes
    once. A file that fails the check is handed to the ``safetensors`` library, whose error
    names the problem.
    """
    if len(data) < 8:
        raise AdapterError(f"{source} is not a valid safetensors file (only {len(data)} bytes)")
    view = memoryview(data)
    pos = [8]

    def read(n: int) -> bytes:
        chunk = bytes(view[pos[0]:pos[0] + n])
        pos[0] += n
        return chunk

    metadata, header = check_safetensors_header(source, bytes(view[:8]), read, len(data))
    start = 8 + struct.unpack("<Q", view[:8])[0]
    layout = _layout(header, len(data) - start) if header else None
    if layout is None:
        _library_verdict(source, data)
    entries = {k: (dtype, shape) for k, (dtype, shape, _, _) in sorted(layout.items())}

    def raw_view(key: str) -> memoryview:
        _, _, begin, end = layout[key]
        return view[start + begin:start + end]

    def get(key: str) -> np.ndarray:
        dtype_name, shape = entries[key]
        if dtype_name == "BF16":
            return Bf16Array(raw_view(key), shape)
        dtype = (FLOAT_DTYPES.get(dtype_name) or INT_DTYPES[dtype_name]).newbyteorder("<")
        return np.frombuffer(raw_view(key), dtype=dtype).reshape(shape)

    return Tensors(source, entries, get, metadata, lambda key: bytes(raw_view(key)))


def _library_verdict(source: str, data: bytes) -> None:
    """Raise the ``safetensors`` library's own error for a file that failed the layout check."""
    import safetensors

    try:
        safetensors.deserialize(bytes(data) if not isinstance(data, bytes) else data)
    except Exception as exc:
        raise _safetensors_error(source, exc) from exc
    raise AdapterError(f"{source} is not a valid safetensors file (its header does not describe "
                       "its data exactly)")


def check_safetensors_header(source: str, head: bytes, read: Callable[[int], bytes],
                             size: int) -> tuple[dict[str, str], dict]:
    """Check a safetensors header's size, nesting and tensor count.

    Returns ``(__metadata__, header)``; both empty when the header is left for the library to
    reject.

    The 8-byte length and the JSON header are read here with caps (:data:`MAX_HEADER_BYTES`,
    :data:`MAX_TENSORS`) so that a file of a million tiny tensors or a deeply nested header is
    refused in bounded time and memory before the library builds anything from it. Everything
    else (offsets, dtypes, no overlap, no gap) is left to the ``safetensors`` library.
    """
    from ..bounded import load_json

    (length,) = struct.unpack("<Q", head[:8])
    if length > MAX_HEADER_BYTES and length <= size - 8:
        raise AdapterError(f"{source} has a {length / 2**20:,.1f} MiB safetensors header; lorarank "
                           f"reads headers up to {MAX_HEADER_BYTES // 2**20} MiB")
    if length > size - 8 or length > MAX_HEADER_BYTES:
        return {}, {}  # the library names these (header too large / invalid header length)
    text = read(length)
    count = text.count(b'"data_offsets"')
    if count > MAX_TENSORS:
        raise AdapterError(f"{source} declares {count:,} tensors; lorarank reads at most "
                           f"{MAX_TENSORS:,} (a LoRA adapter has a few thousand at most)")
    try:
        header = load_json(source, text, what="safetensors header")
    except AdapterError as exc:
        if "levels deep" in str(exc) or "MiB" in str(exc) or "values;" in str(exc):
            raise
        return {}, {}  # not JSON: the library names it
    if not isinstance(header, dict):
        return {}, {}  # the library names it
    meta = header.get("__metadata__")
    meta = {str(k): v for k, v in meta.items() if isinstance(v, str)} if isinstance(meta, dict) else {}
    return meta, header


def npz_tensors(source: str, data: bytes | memoryview) -> Tensors:
    """The arrays of an ``.npz`` held in memory, read within bounds (:class:`~lorarank.bounded.ZipArchive`).

    1. The zip directory: member count, unique names, declared unpacked sizes (at most
       :data:`MAX_NPZ_EXPANSION` times the archive plus 64 MiB, and :data:`MAX_NPZ_BYTES`).
    2. Each member's ``.npy`` header (its first bytes only): a float or integer dtype, never
       pickled objects, and a data size matching the member's declared size.
    3. An array is inflated when asked, and never past its declared size: a stored member (what
       ``np.savez`` writes) is a view of ``data``, no copy.
    """
    from ..bounded import ZipArchive, clip

    archive = ZipArchive(source, data, kind=".npz archive", max_ratio=MAX_NPZ_EXPANSION,
                         slack=_NPZ_SLACK, max_bytes=MAX_NPZ_BYTES)
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    layouts: dict[str, tuple[object, np.dtype, tuple[int, ...], bool, int]] = {}
    for member in archive.files():
        if not member.name.endswith(".npy"):
            raise AdapterError(f"{source}: member {member.name!r} is not a .npy array")
        key = member.name[:-4]
        head = io.BytesIO(archive.read(member, limit=_NPY_HEADER_BYTES))
        try:
            version = np.lib.format.read_magic(head)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
        except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, TokenError, ...
            raise AdapterError(f"{source}: member {member.name!r} is not a valid .npy array "
                               f"({clip(exc, 200)})") from exc
        header_len = head.tell()
        if dtype.hasobject:
            raise AdapterError(
                f"{source}: array {key!r} holds pickled Python objects, which lorarank does not load"
            )
        name = DTYPE_NAMES.get(dtype.newbyteorder("=")) if dtype.kind in "fiu" else None
        if name is None:
            raise AdapterError(f"{source}: array {key!r} has dtype {dtype}; LoRA factors must be "
                               "float64, float32, float16 or bfloat16")
        nbytes = math.prod(shape) * dtype.itemsize
        if member.size != header_len + nbytes:
            raise AdapterError(
                f"{source}: array {key!r} declares shape {tuple(shape)} ({nbytes} bytes) but its "
                f"member holds {member.size - header_len} bytes of data"
            )
        entries[key] = (name, tuple(int(d) for d in shape))
        layouts[key] = (member, dtype, tuple(int(d) for d in shape), bool(fortran), header_len)

    def get(key: str) -> np.ndarray:
        member, dtype, shape, fortran, header_len = layouts[key]
        payload = archive.read(member)  # type: ignore[arg-type]
        arr = np.frombuffer(payload, dtype=dtype, count=math.prod(shape), offset=header_len)
        arr = arr.reshape(shape, order="F" if fortran else "C")
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)

    return Tensors(source, entries, get)


#: How much of a member is read to parse its .npy header (numpy's own header cap is 10,000).
_NPY_HEADER_BYTES = 16 * 2**10


_EXPONENT_MASKS = {np.dtype(np.float16): 0x7C00}


class LazyArray(np.lib.mixins.NDArrayOperatorsMixin):
    """An array computed on each use from what it is made of, held as that recipe only.

    Used where holding the array would cost a multiple of the file (bfloat16 factors decoded to
    float32, LoHa's r1*r2-wide Khatri-Rao factors in float64). ``np.asarray``, ufuncs and
    operators (``@``, ``*``), indexing and every ndarray attribute (``.T``, ``.astype``,
    ``.reshape``) see the computed array, so readers and computations use it as that array;
    each use computes it anew (a transient of one module's size). Pickled as the plain array.

    Parameters
    ----------
    make : callable
        Returns the ndarray of ``shape`` and ``dtype``.
    shape : tuple of int
    dtype : numpy dtype
    bound : float, optional
        An upper bound on every ``|entry|`` known without computing the array (a resized
        factor's ``sqrt(sigma_1)``): the writer's dry run (:func:`lorarank.adapters.writable`
        with ``values=True``) settles with it whether the array fits its stored dtype.
    """

    __slots__ = ("_make", "shape", "dtype", "bound")

    def __init__(self, make: Callable[[], np.ndarray], shape: tuple[int, ...], dtype: object,
                 *, bound: float | None = None):
        self._make = make
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.bound = None if bound is None else float(bound)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def materialize(self) -> np.ndarray:
        """The array (a new one on each call)."""
        return self._make()

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        out = self.materialize()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):  # noqa: ANN001 - numpy protocol
        inputs = tuple(x.materialize() if isinstance(x, LazyArray) else x for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getitem__(self, index: object) -> np.ndarray:
        return self.materialize()[index]

    def __len__(self) -> int:
        return self.shape[0]

    def __getattr__(self, name: str) -> object:  # .T, .astype, .reshape, .copy, .sum, ...
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)

    def __reduce__(self) -> tuple:
        return np.array, (self.materialize(),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class Bf16Array(LazyArray):
    """A bfloat16 tensor held as its stored bits (a view of the file, no copy), used as float32.

    numpy has no bfloat16, and decoding a whole adapter at once would hold it twice over
    (float32 is twice the size of the stored bits). ``dtype`` is float32, the exact dtype of
    the values as computed with; :attr:`LoraModule.stored_dtype` says bfloat16.

    Parameters
    ----------
    data : bytes-like
        Little-endian bfloat16 bits, ``2 * prod(shape)`` bytes.
    shape : tuple of int
    """

    __slots__ = ("bits",)

    def __init__(self, data: object, shape: tuple[int, ...]):
        self.bits = np.frombuffer(data, dtype="<u2")
        super().__init__(None, shape, np.float32)  # type: ignore[arg-type]

    def materialize(self) -> np.ndarray:
        """The exact float32 array (a new one on each call). No closure over ``self``, so no
        reference cycle keeps an upload's bytes alive until the cycle collector runs."""
        return decode_bf16(self.bits, self.shape)

    def __reduce__(self) -> tuple:
        return Bf16Array, (self.bits.tobytes(), self.shape)


def decode_bf16(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """bfloat16 bytes (little-endian) as an exact float32 array of ``shape``."""
    bits = np.frombuffer(data, dtype="<u2")
    out = bits.astype(np.uint32)
    out <<= 16
    return out.view(np.float32).reshape(shape)


def encode_bf16(arr: np.ndarray) -> np.ndarray:
    """Round ``arr`` to bfloat16 (nearest, ties to even), returned as little-endian uint16 bits.

    Exact (no change of value) for values that are bfloat16 already, e.g. factors read as BF16.
    """
    u = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u += 0x7FFF + ((u >> 16) & 1)
    return (u >> 16).astype("<u2")


# 16-bit floats are non-finite when every exponent bit is set. Four values are tested at once in
# a uint64 word: (bits & exponent) + lowest exponent bit carries into bit 15 of a lane exactly
# when that lane's exponent is all ones (no carry crosses lanes: a masked lane is < 0x8000).
_LANE_TESTS = {0x7F80: (0x7F807F807F807F80, 0x0080008000800080),   # bfloat16
               0x7C00: (0x7C007C007C007C00, 0x0400040004000400)}   # float16
_LANE_SIGNS = 0x8000800080008000
_CHUNK_WORDS = 8192  # 64 KiB of scratch: below malloc's mmap threshold, so no page faults


def _bits_finite(bits: np.ndarray, mask: int) -> bool:
    """No 16-bit value in ``bits`` (flat uint16) has an all-ones exponent ``mask``."""
    lanes, low = _LANE_TESTS[mask]
    n4 = bits.size - bits.size % 4
    words = bits[:n4].view(np.uint64)
    buf = np.empty(min(_CHUNK_WORDS, words.size), np.uint64)
    seen = 0
    for start in range(0, words.size, _CHUNK_WORDS):
        chunk = words[start:start + _CHUNK_WORDS]
        out = buf[:chunk.size]
        np.bitwise_and(chunk, lanes, out=out)
        np.add(out, low, out=out)
        seen |= int(np.bitwise_or.reduce(out))
    tail = bits[n4:]
    return not (seen & _LANE_SIGNS) and not bool(np.any((tail & mask) == mask))


def all_finite(arr: np.ndarray) -> bool:
    """``np.isfinite(arr).all()``; for 16-bit floats on the bits (exponent all ones = inf/NaN),
    four values per 64-bit word in small chunks (no array of the factor's size is made)."""
    if isinstance(arr, Bf16Array):
        return _bits_finite(np.ascontiguousarray(arr.bits).reshape(-1), 0x7F80)
    mask = _EXPONENT_MASKS.get(arr.dtype)
    if mask is None:
        return bool(np.isfinite(arr).all())
    return _bits_finite(np.ascontiguousarray(arr).reshape(-1).view(np.uint16), mask)


class Buffers:
    """Scratch float64 arrays reused from one module to the next (one set per computation).

    Decoding a factor to float64 for the linear algebra into a buffer that is already large
    enough costs no new memory: a fresh array of a factor's size per use is a fresh ``mmap``
    for the allocator, and its page faults were most of an audit's system time (219k minor
    faults for the 8B-shaped adapter, against 30k with the buffers). Not thread-safe: one
    ``Buffers`` per audit (or resize) call. Arrays returned by :meth:`float64` and
    :meth:`take` stay valid until the same slot is used again.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def take(self, slot: str, shape: tuple[int, ...], dtype: object = np.float64) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` in the buffer named ``slot``."""
        dtype = np.dtype(dtype)
        n = math.prod(shape)
        buf = self._arrays.get(slot)
        if buf is None or buf.dtype != dtype or buf.size < n:
            buf = self._arrays[slot] = np.empty(n, dtype)
        return buf[:n].reshape(shape)

    def float64(self, arr: np.ndarray, slot: str) -> np.ndarray:
        """``arr`` as float64: itself when it is float64 already, else decoded into ``slot``.

        A :class:`Bf16Array` is decoded straight from its bits (one pass into a uint32 buffer,
        one into the float64 one); other lazy arrays are computed as usual.
        """
        if isinstance(arr, Bf16Array):
            wide = self.take(slot + ":u32", arr.shape, np.uint32)
            np.left_shift(arr.bits.reshape(arr.shape), 16, out=wide, dtype=np.uint32)
            out = self.take(slot, arr.shape)
            np.copyto(out, wide.view(np.float32))
            return out
        if isinstance(arr, LazyArray):
            return np.asarray(arr, dtype=np.float64)
        if arr.dtype == np.float64:
            return arr
        out = self.take(slot, arr.shape)
        np.copyto(out, arr, casting="unsafe")
        return out
