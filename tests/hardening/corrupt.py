"""Ways to break a checkpoint, a gene or a data file, for the hardening tests."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import torch


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def header(path: Path) -> tuple[dict, bytes]:
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_with_header(path: Path, hdr: dict, data: bytes) -> None:
    text = json.dumps(hdr).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + data)


def first_tensor(hdr: dict, contains: str = "layers.0.self_attn.q_proj") -> str:
    return next(k for k in hdr if k != "__metadata__" and contains in k)


def poison(path: Path, value: float = float("nan"), contains: str = "layers.1.mlp.up_proj") -> None:
    """Put `value` into one element of one float tensor of a safetensors file, in place."""
    from safegene.io.safetensors_format import DTYPES

    hdr, data = header(path)
    name = first_tensor(hdr, contains)
    info = hdr[name]
    b, e = info["data_offsets"]
    t = torch.frombuffer(bytearray(data[b:e]), dtype=DTYPES[info["dtype"]]).clone()
    t[len(t) // 2] = value
    data = data[:b] + t.numpy().tobytes() + data[e:]
    write_with_header(path, hdr, data)


def truncate(path: Path, keep_fraction: float = 0.6) -> None:
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[: int(len(raw) * keep_fraction)])


def lie_offsets(path: Path) -> None:
    """A tensor whose data_offsets run past the end of the file."""
    hdr, data = header(path)
    name = first_tensor(hdr)
    b, e = hdr[name]["data_offsets"]
    hdr[name]["data_offsets"] = [b, len(data) + 4096]
    write_with_header(path, hdr, data)


def lie_shape(path: Path) -> None:
    """A tensor whose shape claims more elements than its byte range holds."""
    hdr, data = header(path)
    name = first_tensor(hdr)
    hdr[name]["shape"] = [s * 2 for s in hdr[name]["shape"]]
    write_with_header(path, hdr, data)


def huge_header_length(path: Path) -> None:
    raw = Path(path).read_bytes()
    Path(path).write_bytes(struct.pack("<Q", 2**40) + raw[8:])


def header_not_object(path: Path) -> None:
    _, data = header(path)
    text = b"[1, 2, 3]"
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + data)
