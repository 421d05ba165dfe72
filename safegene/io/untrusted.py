"""Reading files that may be hostile: every input (models, adapters, genes, data, recipes) is
untrusted data. The one set of readers that bounds what a file can make the tool do:

- `open_regular(path)`: only a regular file is opened (a FIFO, device or socket named like a
  weight or data file would block or never end), without blocking on the open itself;
- `read_bytes(path, limit)` / `read_text(path, limit)`: the whole file, refused above `limit`;
- `parse_json(raw, where)`: JSON whose nesting is too deep for the parser (RecursionError) or that
  repeats a key (`unique_keys`: the safetensors rule) is a SafeGeneError naming `where`;
- `read_json(path)`: the two together (configs, indexes, adapter configs, safegene.json);
- `check_regular_files(directory)`: every file a loader may open in a model or adapter directory
  (transformers and PEFT read them too) is a regular file.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from safegene.errors import SafeGeneError

MAX_JSON_BYTES = 256 * 1024 * 1024  # a config, an index, a tokenizer.json (tens of MB at most)
MAX_DATA_BYTES = 1024 * 1024 * 1024  # a data file
_NOT_REGULAR = "is not a regular file (FIFOs, devices and sockets are refused)"


def open_regular(path: str | os.PathLike) -> int:
    """A read-only descriptor on `path`, which must be a regular file (after symlinks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SafeGeneError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SafeGeneError(f"{path} {_NOT_REGULAR}")
    os.set_blocking(fd, True)
    return fd


def read_bytes(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of the regular file `path`; a SafeGeneError when it holds more than `limit`."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise SafeGeneError(f"{path} is too large ({size} bytes; at most {limit} are read)")
        with os.fdopen(os.dup(fd), "rb") as fh:
            raw = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise SafeGeneError(f"{path} is too large (more than {limit} bytes)")
    return raw


def read_text(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> str:
    """`read_bytes` decoded as UTF-8 (a BOM is dropped)."""
    raw = read_bytes(path, limit)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SafeGeneError(
            f"{path} is not UTF-8 text (undecodable byte at offset {exc.start})"
        ) from None


def _unique(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_json(raw: str | bytes, where: str, *, unique_keys: bool = False) -> Any:
    """`json.loads(raw)`; malformed, too deeply nested, or (with `unique_keys`) repeating a key
    is a SafeGeneError naming `where`."""
    try:
        return json.loads(raw, object_pairs_hook=_unique if unique_keys else None)
    except RecursionError:
        raise SafeGeneError(f"{where}: JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise SafeGeneError(f"{where}: malformed JSON ({exc.msg}, line {exc.lineno})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SafeGeneError(f"{where}: malformed JSON ({exc})") from None


def read_json(path: str | os.PathLike, what: str = "", limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in the regular file `path` (bounded: see `read_bytes`, `parse_json`);
    errors name it as `what PATH` ("coefficients file /x/c.json")."""
    return parse_json(read_bytes(path, limit), f"{what} {path}".strip())


def check_regular_files(directory: str | os.PathLike) -> None:
    """Every entry of `directory` is a directory or (through symlinks) a regular file; a FIFO,
    device, socket or dangling link is refused before any loader can block on it."""
    for p in Path(directory).iterdir():
        try:
            mode = p.stat().st_mode
        except OSError:
            raise SafeGeneError(f"{p} cannot be read (a dangling link?)") from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise SafeGeneError(f"{p} {_NOT_REGULAR}")
