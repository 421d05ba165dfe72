"""Streaming reader over a Hugging Face model directory: one tensor at a time, no mmap.

Handles a single `model.safetensors`, a sharded checkpoint through `model.safetensors.index.json`,
and any other `<prefix>.safetensors[.index.json]` (adapters, dense genes). Only headers are
read up front; `get(name)` preads one tensor into a fresh buffer that is freed with the tensor,
so holding a reader costs nothing and reading a whole model costs one tensor of memory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from safegene.errors import SafeGeneError
from safegene.io.safetensors_format import TensorEntry, read_header, read_tensor
from safegene.io.untrusted import check_regular_files, read_json
from safegene.io.workspace import Workspace

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def find_weight_files(path: Path, prefix: str = "model") -> list[Path]:
    """The safetensors files of a checkpoint: from `<prefix>.safetensors.index.json` if present,
    else `<prefix>.safetensors`, else the directory's only `*.safetensors` files. Both a single
    file and an index is ambiguous (transformers loads the one, this reader would read the
    other), so it is refused."""
    index = path / f"{prefix}.safetensors.index.json"
    single = path / f"{prefix}.safetensors"
    if os.path.lexists(index) and os.path.lexists(single):
        raise SafeGeneError(
            f"{path} holds both {single.name} and {index.name}: which weights are meant is "
            "ambiguous (loaders disagree); remove one"
        )
    if os.path.lexists(index):
        raw = read_json(index)
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict):
            raise SafeGeneError(f"malformed shard index {index}: weight_map is not an object")
        bad = [
            f
            for f in weight_map.values()
            if not isinstance(f, str) or Path(f).name != f or f in ("", ".", "..")
        ]
        if bad:
            raise SafeGeneError(f"{index} names a shard outside its directory: {bad[0]!r}")
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise SafeGeneError(f"{index} names a missing shard: {missing[0]}")
        return files
    if os.path.lexists(single):
        return [single]
    return sorted(path.glob("*.safetensors"))


def find_pickle_files(path: Path) -> list[Path]:
    """Pickle weight files (only read with allow_pickle): from `pytorch_model.bin.index.json`,
    else `pytorch_model.bin`, else every *.bin/*.pt/*.pth/*.ckpt in the directory."""
    index = path / "pytorch_model.bin.index.json"
    if index.is_file():
        raw = read_json(index)
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict):
            raise SafeGeneError(f"malformed shard index {index}: weight_map is not an object")
        names = set(weight_map.values())
        if any(not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..") for n in names):
            raise SafeGeneError(f"{index} names a shard outside its directory")
        return sorted(path / n for n in names)
    if (path / "pytorch_model.bin").is_file():
        return [path / "pytorch_model.bin"]
    return sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())


def _load_pickle(path: Path) -> dict:
    """torch.load with weights_only=True (no code runs), memory-mapped where the format allows."""
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format: cannot be mapped
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise SafeGeneError(
            f"refused to unpickle {path} as plain tensors (weights_only=True): {exc}"
        ) from None
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise SafeGeneError(f"{path} does not hold a flat state dict of tensors")
    return sd


class ModelReader:
    """Lazy, mmap-free access to the tensors of a safetensors checkpoint directory.

    `names()` (in file order), `entry(name)` (dtype, shape, bytes), `get(name, dtype=None)`
    (a fresh tensor, safe to keep), `get_temp(name, dtype, slot)` (a view into a reusable
    scratch slot of `workspace`, valid until that slot is used again: for the hot loops) and
    `iter_tensors()`. Raises SafeGeneError for a missing or non-model directory and, unless
    `allow_pickle`, for pickle-only checkpoints. With `allow_pickle` those are read through
    `torch.load(weights_only=True, mmap=True)`, one file at a time (mapped pages count in RSS,
    so memory is bounded by one pickle shard there, not by one tensor).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        prefix: str = "model",
        *,
        need_config: bool = True,
        workspace: Workspace | None = None,
        allow_pickle: bool = False,
    ):
        self.path = Path(path)
        self._pickle: tuple[str, dict] | None = None  # (file, state dict) of the open pickle
        self.workspace = workspace if workspace is not None else Workspace()
        if not self.path.is_dir():
            raise SafeGeneError(f"directory not found: {self.path}")
        check_regular_files(self.path)
        if need_config and not (self.path / "config.json").is_file():
            raise SafeGeneError(f"not a Hugging Face model directory (no config.json): {self.path}")
        files = find_weight_files(self.path, prefix)
        self._entries: dict[str, TensorEntry] = {}
        self._fds: dict[str, int] = {}
        if not files:
            pickles = find_pickle_files(self.path) if prefix == "model" else []
            if pickles and allow_pickle:
                self.files = pickles
                self._index_pickles(pickles)
                return
            hint = (
                f"; it holds only pickle weights ({pickles[0].name}): convert them to "
                "safetensors or pass --allow-pickle"
                if pickles
                else ""
            )
            raise SafeGeneError(f"no safetensors weights in {self.path}{hint}")
        self.files = files
        for f in files:
            entries, _ = read_header(f)
            for name, e in entries.items():
                if name in self._entries:
                    raise SafeGeneError(f"tensor {name!r} appears twice in {self.path}")
                self._entries[name] = e

    def _index_pickles(self, files: list[Path]) -> None:
        """Entries for pickle files (begin=0, end=nbytes: they are read through torch.load)."""
        for f in files:
            for name, t in _load_pickle(f).items():
                if name in self._entries:
                    raise SafeGeneError(f"tensor {name!r} appears twice in {self.path}")
                n = t.numel() * t.element_size()
                self._entries[name] = TensorEntry(name, str(f), t.dtype, tuple(t.shape), 0, n)
        self.is_pickle = True

    is_pickle = False

    def _from_pickle(self, e: TensorEntry) -> torch.Tensor:
        """The (mapped) tensor from its pickle file; one file is kept open at a time."""
        if self._pickle is None or self._pickle[0] != e.path:
            self._pickle = None
            self._pickle = (e.path, _load_pickle(Path(e.path)))
        return self._pickle[1][e.name]

    # --- metadata -------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str) -> TensorEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise SafeGeneError(f"tensor {name!r} not found in {self.path}") from None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: e.shape for n, e in self._entries.items()}

    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def config(self) -> dict:
        config = read_json(self.path / "config.json")
        if not isinstance(config, dict):
            raise SafeGeneError(f"{self.path / 'config.json'} is not a JSON object")
        return config

    # --- data -----------------------------------------------------------------------------
    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, freshly read (optionally cast: `dtype=torch.float32` for arithmetic)."""
        e = self.entry(name)
        if self.is_pickle:
            t = self._from_pickle(e)
            return t.clone() if dtype is None or t.dtype == dtype else t.to(dtype)
        fd = self._fds.get(e.path)
        if fd is None:
            fd = self._fds[e.path] = os.open(e.path, os.O_RDONLY)
        t = read_tensor(e, fd)
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    def get_temp(
        self, name: str, dtype: torch.dtype | None = None, slot: str = "tmp"
    ) -> torch.Tensor:
        """One tensor read into scratch slot `slot` (cast into slot `slot + ".cast"` when `dtype`
        differs). Valid until the slot's next use; no allocation once the slots have grown."""
        e = self.entry(name)
        if self.is_pickle:
            return self.workspace.tensor(slot, e.shape, dtype or e.dtype).copy_(
                self._from_pickle(e)
            )
        fd = self._fds.get(e.path)
        if fd is None:
            fd = self._fds[e.path] = os.open(e.path, os.O_RDONLY)
        raw = read_tensor(e, fd, out=self.workspace.tensor(slot, (e.nbytes,), torch.uint8))
        if dtype is None or dtype == e.dtype:
            return raw
        return self.workspace.tensor(slot + ".cast", e.shape, dtype).copy_(raw)

    def iter_tensors(self, names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in names if names is not None else self.names():
            yield name, self.get(name)

    def close(self) -> None:
        self._pickle = None
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> ModelReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; explicit close() or `with` is preferred
        with contextlib.suppress(Exception):
            self.close()
