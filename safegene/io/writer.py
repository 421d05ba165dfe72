"""Sharded safetensors writer with a byte budget, streaming each tensor to disk as it arrives.

The output plan (names, dtypes, shapes, in order) is known before the first byte is written —
for a merged model it is the target's own tensor list — so every shard's header is written up
front and each tensor goes straight to its place on disk. Peak memory is the tensor in hand,
not a shard. Output names follow Hugging Face: `model.safetensors` when one shard suffices,
else `model-00001-of-0000N.safetensors` plus `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from safegene.errors import SafeGeneError
from safegene.io.safetensors_format import all_finite, encode_header, tensor_bytes

DEFAULT_SHARD_BYTES = 5 * 1024**3  # transformers' own default max_shard_size is 5GB-ish


def parse_size(text: str | int) -> int:
    """'2GB', '500MB', '1.5GiB', 123 → bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace("IB", "B")
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "B": 1}
    bad = SafeGeneError(f"cannot read size {text!r}; write e.g. 2GB or 500MB")
    for unit, mult in units.items():
        if s.endswith(unit):
            try:
                value = float(s[: -len(unit)]) * mult
            except ValueError:
                raise bad from None
            if not math.isfinite(value) or value < 1 or value > 2**62:
                raise SafeGeneError(f"size {text!r} is out of range (1 byte to 4 EB)")
            return int(value)
    try:
        value = int(s)
    except ValueError:
        raise bad from None
    if value < 1:
        raise SafeGeneError(f"size {text!r} is out of range (1 byte to 4 EB)")
    return value


def plan_shards(
    items: list[tuple[str, torch.dtype, tuple[int, ...]]], max_bytes: int
) -> list[list[tuple[str, torch.dtype, tuple[int, ...]]]]:
    """Split items, in order, into shards of at most max_bytes (a bigger tensor gets its own)."""
    shards: list[list] = [[]]
    used = 0
    for item in items:
        n = torch.empty((), dtype=item[1]).element_size() * _numel(item[2])
        if shards[-1] and used + n > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(item)
        used += n
    return shards


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def shard_file_names(prefix: str, count: int) -> list[str]:
    if count == 1:
        return [f"{prefix}.safetensors"]
    return [f"{prefix}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class ShardWriter:
    """Write the planned tensors, in plan order, into `out_dir` as (sharded) safetensors.

    `write(name, tensor)` must follow the plan's order, dtype and shape (a mismatch is a bug and
    raises). Non-finite floating values raise SafeGeneError (NaN/Inf is never written silently).
    `close()` fsyncs every shard and writes the index when there is more than one shard.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        items: list[tuple[str, torch.dtype, tuple]],
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        prefix: str = "model",
        metadata: dict | None = None,
        check_finite: bool = True,
    ):
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.metadata = metadata
        self.check_finite = check_finite
        self.shards = plan_shards(list(items), max_shard_bytes)
        self.file_names = shard_file_names(prefix, len(self.shards))
        self._queue = [(i, it) for i, shard in enumerate(self.shards) for it in shard]
        self._pos = 0
        self._file = None
        self._shard = -1
        self._total = 0

    def _open_shard(self, index: int) -> None:
        self._close_file()
        header, _ = encode_header(self.shards[index], self.metadata)
        self._file = open(self.out_dir / self.file_names[index], "wb")  # noqa: SIM115 - closed by _close_file
        self._file.write(header)
        self._shard = index

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._pos >= len(self._queue):
            raise RuntimeError(f"write of {name!r} beyond the plan")
        index, (pname, dtype, shape) = self._queue[self._pos]
        if name != pname or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise RuntimeError(
                f"write of {name!r} {tensor.dtype} {tuple(tensor.shape)} does not "
                f"match the plan's {pname!r} {dtype} {tuple(shape)}"
            )
        if self.check_finite and not all_finite(tensor):
            raise SafeGeneError(f"NaN or Inf in output tensor {name!r}; nothing was written")
        if index != self._shard:
            self._open_shard(index)
        self._file.write(tensor_bytes(tensor))
        self._total += tensor.numel() * tensor.element_size()
        self._pos += 1

    def close(self) -> None:
        if self._pos != len(self._queue):
            missing = self._queue[self._pos][1][0]
            raise RuntimeError(f"writer closed before {missing!r} was written")
        if not self._queue:  # an empty plan still yields a valid (empty) file
            self._open_shard(0)
        self._close_file()
        if len(self.shards) > 1:
            weight_map = {name: self.file_names[i] for i, (name, _, _) in self._queue}
            index = {"metadata": {"total_size": self._total}, "weight_map": weight_map}
            path = self.out_dir / f"{self.prefix}.safetensors.index.json"
            path.write_text(json.dumps(index, indent=2) + "\n")


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> None:
    """A small single-file safetensors write (adapters): same checks, no sharding."""
    path = Path(path)
    items = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    w = ShardWriter(
        path.parent,
        items,
        max_shard_bytes=2**62,
        prefix=path.name.removesuffix(".safetensors"),
        metadata=metadata,
    )
    for n, t in tensors.items():
        w.write(n, t)
    w.close()


class SpooledWriter:
    """One safetensors file whose tensor list is not known in advance (e.g. LoRA factors whose
    ranks come out of the SVD): tensor bytes are appended to a spool file beside the output as
    they arrive, then `close()` writes the header and copies the spool behind it in chunks.
    Memory stays at one tensor; the extra I/O is the size of the factors, not of the model."""

    def __init__(
        self, path: str | os.PathLike, metadata: dict | None = None, check_finite: bool = True
    ):
        self.path = Path(path)
        self.metadata = metadata
        self.check_finite = check_finite
        self._spool_path = self.path.with_name(self.path.name + ".spool")
        self._spool = open(self._spool_path, "wb")  # noqa: SIM115 - closed by close/abort
        self._items: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
        self._names: set[str] = set()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._names:
            raise RuntimeError(f"tensor {name!r} written twice")
        if self.check_finite and not all_finite(tensor):
            raise SafeGeneError(f"NaN or Inf in output tensor {name!r}; nothing was written")
        self._spool.write(tensor_bytes(tensor))
        self._items.append((name, tensor.dtype, tuple(tensor.shape)))
        self._names.add(name)

    def close(self) -> None:
        self._spool.close()
        header, _ = encode_header(self._items, self.metadata)
        with open(self.path, "wb") as out, open(self._spool_path, "rb") as spool:
            out.write(header)
            for chunk in iter(lambda: spool.read(1 << 24), b""):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.remove(self._spool_path)

    def abort(self) -> None:
        self._spool.close()
        if self._spool_path.exists():
            os.remove(self._spool_path)
