"""The safetensors file format, read and written by hand so that bytes stream.

A safetensors file is: 8 bytes little-endian header length N, N bytes of JSON header
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`), then the
tensor bytes, offsets relative to the end of the header. Owning this (instead of calling
`safetensors.safe_open`, which memory-maps the file) lets the reader pread one tensor into a
fresh buffer and the writer put each tensor on disk as it arrives, so that peak memory is a
few tensors and never the model (mapped file pages count in RSS).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import torch

from safegene.errors import SafeGeneError
from safegene.io.untrusted import open_regular, parse_json

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, dtype, shape and absolute byte range."""

    name: str
    path: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


MAX_DIM = 2**31 - 1  # no real tensor dimension comes near; a hostile header's does


def _entry(name: str, info: Any, base: int, size: int, path: str) -> TensorEntry:
    """One header entry checked as the safetensors library checks it."""
    try:
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise TypeError
        dtype = DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
    except (KeyError, TypeError, ValueError):
        raise SafeGeneError(f"malformed safetensors header for {name!r} in {path}") from None
    ints = (b, e, *shape)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
        raise SafeGeneError(f"malformed safetensors header for {name!r} in {path}")
    if any(s > MAX_DIM for s in shape):
        raise SafeGeneError(
            f"tensor {name!r} in {path} declares the shape {list(shape)}: a dimension above "
            f"{MAX_DIM} is refused"
        )
    if base + e > size or b > e:
        raise SafeGeneError(f"tensor {name!r} lies outside the file {path} (truncated?)")
    if e - b != math.prod(shape) * torch.empty((), dtype=dtype).element_size():
        raise SafeGeneError(
            f"tensor {name!r} in {path}: its shape {list(shape)} does not match "
            f"its byte range ({e - b} bytes); the header lies"
        )
    return TensorEntry(name, path, dtype, shape, base + b, base + e)


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorEntry], dict]:
    """(entries by name, __metadata__) of one safetensors file, validated by the safetensors
    library's own rules (so that every reader of the file sees the same tensors): a header of at
    most 100 MB that is a JSON object without repeated keys, `__metadata__` a string-to-string
    map, every entry exactly dtype/shape/data_offsets, the byte ranges back to back from 0 with
    nothing after the last one. Anything else is a SafeGeneError naming the file."""
    path = os.fspath(path)
    bad = f"not a readable safetensors file: {path}"
    fd = open_regular(path)
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise SafeGeneError(f"{bad} (file shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            size = os.fstat(f.fileno()).st_size
            if n > _MAX_HEADER or 8 + n > size:
                raise SafeGeneError(f"{bad} (header length {n} is implausible)")
            header = parse_json(f.read(n), bad, unique_keys=True)
    except OSError as exc:
        raise SafeGeneError(f"{bad} ({exc})") from exc
    base = 8 + n
    if not isinstance(header, dict):
        raise SafeGeneError(f"{bad} (the header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise SafeGeneError(f"{bad} (__metadata__ must map strings to strings)")
    entries = {name: _entry(name, info, base, size, path) for name, info in header.items()}
    end = base
    for e in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if e.begin != end:
            what = "overlaps another" if e.begin < end else "leaves a gap before it"
            raise SafeGeneError(f"{bad} (the byte range of {e.name!r} {what})")
        end = e.end
    if end != size:
        where = "lie outside the file (truncated?)" if end > size else "are followed by stray bytes"
        raise SafeGeneError(f"{bad} (the tensors {where})")
    return entries, meta


def read_tensor(
    entry: TensorEntry, fd: int | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The tensor's bytes pread into a fresh CPU buffer (no mmap; freed when the tensor is), or
    into `out` (a uint8 tensor of exactly entry.nbytes) when given."""
    own = fd is None
    if own:
        fd = os.open(entry.path, os.O_RDONLY)
    try:
        buf = torch.empty(entry.nbytes, dtype=torch.uint8) if out is None else out
        view, done = buf.numpy(), 0
        while done < entry.nbytes:  # preadv may return short counts on large reads
            got = os.preadv(fd, [view[done:]], entry.begin + done)
            if got <= 0:
                raise SafeGeneError(
                    f"unexpected end of file reading {entry.name!r} from {entry.path}"
                )
            done += got
    finally:
        if own:
            os.close(fd)
    return buf.view(entry.dtype).reshape(entry.shape)


def all_finite(t: torch.Tensor) -> bool:
    """True when no element is NaN or ±Inf. A sum propagates NaN/Inf and is a fast
    vectorized reduction, so a finite sum proves the tensor finite; only when the sum is not
    finite (NaN/Inf inside, or finite values overflowing) is the exact element check run."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if t.element_size() == 1:  # float8: no reductions on CPU; exact in float16
        t = t.to(torch.float16)
    if bool(torch.isfinite(t.sum())):  # native-dtype sum: fast, accumulates in float32 inside
        return True
    return bool(torch.isfinite(t).all())


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, without a copy when it is contiguous."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def encode_header(
    items: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict | None = None
) -> tuple[bytes, list[int]]:
    """Header bytes (length prefix included, padded to 8) and each tensor's byte size, in order."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    sizes, offset = [], 0
    for name, dtype, shape in items:
        if dtype not in DTYPE_NAMES:
            raise SafeGeneError(f"cannot store dtype {dtype} in safetensors ({name})")
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {
            "dtype": DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        sizes.append(n)
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw, sizes
