"""The one streaming loop every full-checkpoint baseline goes through.

A task model is a full checkpoint, or the aligned model plus a task LoRA merged on the fly
(`TaskModel.get` adds s·B·A to the weights the LoRA targets). A baseline is a function
`transform(name, w_task) -> new tensor | None` (float32 in, None keeps the task tensor); the loop
reads one tensor at a time, writes sharded output atomically, copies config and tokenizer files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from safegene.card import method_card, write_card
from safegene.errors import SafeGeneError
from safegene.family import DEFAULT_KINDS, check_compatible, fingerprint, parse_name
from safegene.io import (
    DEFAULT_SHARD_BYTES,
    ModelReader,
    ShardWriter,
    atomic_output_dir,
    check_output_path,
    copy_side_files,
)
from safegene.io.hub import model_name
from safegene.io.lora import LoraAdapter, read_adapter

Transform = Callable[[str, torch.Tensor], "torch.Tensor | None"]


@dataclass
class TaskModel:
    """θ_task tensor by tensor: a checkpoint, plus an optional task LoRA merged on read."""

    reader: ModelReader
    lora: LoraAdapter | None = None

    def get(self, name: str) -> torch.Tensor:
        """The task weight in float32."""
        w = self.reader.get(name, torch.float32)
        module = name.removesuffix(".weight")
        if self.lora is not None and name.endswith(".weight") and module in self.lora.modules:
            w += self.lora.delta(module)
        return w

    def update(self, name: str, aligned: ModelReader) -> torch.Tensor:
        """The task update ΔW: the LoRA's s·B·A for a LoRA target, else W_task − W_aligned."""
        if self.lora is not None:
            module = name.removesuffix(".weight")
            if module in self.lora.modules:
                return self.lora.delta(module)
            return torch.zeros(self.reader.entry(name).shape)
        return self.get(name) - aligned.get(name, torch.float32)


def open_task_model(
    stack: ExitStack, model: str | os.PathLike, adapter: str | os.PathLike | None
) -> TaskModel:
    reader = stack.enter_context(ModelReader(model))
    lora = read_adapter(adapter) if adapter is not None else None
    if lora is not None:
        stack.callback(lora.close)
    return TaskModel(reader, lora)


def open_same_family(
    stack: ExitStack, task: TaskModel, path: str | os.PathLike, role: str
) -> ModelReader:
    """A reader for another model of the family; the first mismatch with the task is named."""
    reader = stack.enter_context(ModelReader(path))
    shapes = task.reader.shapes()
    check_compatible(
        fingerprint(task.reader.config(), shapes),
        reader.config(),
        reader.shapes(),
        tensors=shapes,
        what=f"{role} model {reader.path}",
    )
    return reader


def projection_modules(task: TaskModel) -> list[str]:
    """The weights whose task update SafeLoRA/SafeMERGE inspect: the LoRA's targets for a LoRA
    target, else every attention and MLP projection of the decoder layers."""
    if task.lora is not None:
        return [m + ".weight" for m in task.lora.modules]
    model_type = task.reader.config().get("model_type")
    return [
        n
        for n in task.reader.names()
        if n.endswith(".weight")
        and len(task.reader.entry(n).shape) == 2
        and parse_name(n, model_type).kind in DEFAULT_KINDS
    ]


def write_transformed(
    task: TaskModel,
    out: str | os.PathLike,
    transform: Transform,
    *,
    force: bool = False,
    shard_size: int = DEFAULT_SHARD_BYTES,
    desc: str = "merging",
    progress: bool | None = None,
    records: dict[str, dict] | None = None,
) -> Path:
    """Stream every tensor of `task` through `transform` into a new checkpoint at `out`;
    `records` {file name: object} are written beside the weights as JSON (inside the same atomic
    output)."""
    check_output_path(out, force, inputs=(task.reader.path,))
    reader = task.reader
    items = [(n, reader.entry(n).dtype, reader.entry(n).shape) for n in reader.names()]
    with atomic_output_dir(out, force) as tmp:
        writer = ShardWriter(tmp, items, max_shard_bytes=shard_size)
        for name in tqdm(
            reader.names(),
            desc=desc,
            unit="tensor",
            disable=None if progress is None else not progress,
        ):
            original = reader.entry(name)
            if not original.dtype.is_floating_point:
                writer.write(name, reader.get(name))
                continue
            w = task.get(name)
            new = transform(name, w)
            w = w if new is None else new
            if not bool(torch.isfinite(w).all()):
                raise SafeGeneError(f"NaN or Inf in the output tensor {name!r}")
            writer.write(name, w.to(original.dtype))
            del w
        writer.close()
        copy_side_files(reader.path, tmp)
        write_card(tmp, method_card(desc, records or {}, model_name(reader.path)))
        for file, record in (records or {}).items():
            (tmp / file).write_text(json.dumps(record, indent=1) + "\n")
    return Path(out)
