"""Linear interpolation toward the aligned model: θ = (1 − t)·θ_task + t·θ_aligned.

Its reference and fidelity note: docs/baselines.md, section "Linear interpolation".
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import torch

from safegene.baselines.stream import open_same_family, open_task_model, write_transformed
from safegene.io import check_output_path
from safegene.methods import Param, Run, register_method


def interpolate_tensor(task: torch.Tensor, aligned: torch.Tensor, t: float) -> torch.Tensor:
    """t = 0 keeps the task model, t = 1 gives the aligned model. Float32 arithmetic."""
    return torch.lerp(task.float(), aligned.float(), t).to(task.dtype)


def interpolate(
    task_model: str | os.PathLike,
    aligned: str | os.PathLike,
    out: str | os.PathLike,
    *,
    t: float,
    adapter: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """Write (1 − t)·θ_task + t·θ_aligned for a task model (full, or `aligned` + `adapter`)."""
    check_output_path(out, force, inputs=(task_model, adapter, aligned))
    with ExitStack() as stack:
        task = open_task_model(stack, task_model, adapter)
        ref = open_same_family(stack, task, aligned, "aligned")
        return write_transformed(
            task,
            out,
            lambda name, w: interpolate_tensor(w, ref.get(name, torch.float32), t),
            force=force,
            desc="interpolate",
            progress=progress,
        )


@register_method(
    "interpolate", params={"t": Param(float, [0.25, 0.5, 0.75])}, demo={"t": [0.25, 0.5, 0.75]}
)
def build(run: Run, task, setting: dict, out: Path) -> tuple[Path, None]:
    """One interpolation setting on one task model."""
    return interpolate(task.model, run.recipe.aligned, out, **run.options(task, setting)), None
