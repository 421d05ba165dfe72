"""SafeMERGE-style layer-wise merging (Djuraskovic et al. 2025, "SafeMERGE: Preserving Safety
Alignment in Fine-Tuned Large Language Models via Selective Layer-Wise Model Merging").

A module whose task update has drifted from the safety subspace (SafeLoRA's cosine gate,
cos(C·ΔW, ΔW) < τ with V = W_aligned − W_base and ΔW = W_task − W_aligned) is replaced by a merge
of the task and aligned weights, task_weight·W_task + (1 − task_weight)·W_aligned, linear or with
the task update DARE-sparsified first; other modules keep the task weights.
The paper's formula against this one, and why they differ: docs/baselines.md, section
"SafeMERGE-style merging".
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import torch

from safegene.baselines.safelora import module_similarities
from safegene.baselines.sparsify import dare, tensor_generator
from safegene.baselines.stream import open_same_family, open_task_model, write_transformed
from safegene.io import check_output_path
from safegene.methods import Param, Run, register_method


def safemerge_tensor(
    task: torch.Tensor,
    aligned: torch.Tensor,
    task_weight: float,
    *,
    dare_rate: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Merge one drifted module: W_aligned + task_weight·DARE(W_task − W_aligned)."""
    update = task.float() - aligned.float()
    if dare_rate > 0.0:
        update = dare(update, dare_rate, generator or torch.Generator().manual_seed(0))
    return (aligned.float() + task_weight * update).to(task.dtype)


def safemerge(
    task_model: str | os.PathLike,
    aligned: str | os.PathLike,
    base: str | os.PathLike,
    out: str | os.PathLike,
    *,
    threshold: float,
    task_weight: float = 0.8,
    dare_rate: float = 0.0,
    adapter: str | os.PathLike | None = None,
    seed: int = 0,
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """Merge the drifted modules of a task model (full, or `aligned` + `adapter`) with the
    aligned weights; write the full checkpoint to `out`."""
    check_output_path(out, force, inputs=(task_model, adapter, aligned, base))
    with ExitStack() as stack:
        task = open_task_model(stack, task_model, adapter)
        ref = open_same_family(stack, task, aligned, "aligned")
        pre = open_same_family(stack, task, base, "base")
        sims = module_similarities(task, ref, pre, progress=progress)
        drifted = {name for name, s in sims.items() if s < threshold}

        def transform(name: str, w: torch.Tensor) -> torch.Tensor | None:
            if name not in drifted:
                return None
            return safemerge_tensor(
                w,
                ref.get(name, torch.float32),
                task_weight,
                dare_rate=dare_rate,
                generator=tensor_generator(seed, name),
            )

        return write_transformed(
            task, out, transform, force=force, desc="SafeMERGE", progress=progress
        )


@register_method(
    "safemerge",
    params={
        "threshold": Param(float, [0.35, 0.5]),
        "task_weight": Param(float, [0.8]),
        "dare": Param(float, [0.0]),
    },
    needs_base=True,
    demo={"threshold": [0.35, 0.5], "task_weight": [0.8]},
)
def build(run: Run, task, setting: dict, out: Path) -> tuple[Path, None]:
    """One SafeMERGE-style setting on one task model (`dare`: DARE's drop rate)."""
    r = run.recipe
    made = safemerge(
        task.model,
        r.aligned,
        r.base,
        out,
        seed=r.seed,
        **run.options(task, setting, {"dare": "dare_rate"}),
    )
    return made, None
