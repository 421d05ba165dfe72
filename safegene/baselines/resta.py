"""RESTA (Bhardwaj et al. 2024, "Language Models are Homer Simpson! Safety Re-Alignment of
Fine-tuned Language Models through Task Arithmetic"): add the safety vector back, one global β.

    θ = θ_task + β · (θ_aligned − θ_degraded)

with optional DARE or TIES sparsification of the safety vector (the paper uses DARE).
The paper's formula against this one, and why they differ: docs/baselines.md, section "RESTA".
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import torch

from safegene.baselines.sparsify import dare, tensor_generator, ties_trim
from safegene.baselines.stream import open_same_family, open_task_model, write_transformed
from safegene.io import check_output_path
from safegene.methods import Param, Run, register_method


def resta_tensor(
    task: torch.Tensor,
    aligned: torch.Tensor,
    degraded: torch.Tensor,
    beta: float,
    *,
    dare_rate: float = 0.0,
    ties_density: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One tensor of the RESTA model, computed in float32 and returned in the task's dtype."""
    safety = aligned.float() - degraded.float()
    if ties_density < 1.0:
        safety = ties_trim(safety, ties_density)
    if dare_rate > 0.0:
        safety = dare(safety, dare_rate, generator or torch.Generator().manual_seed(0))
    return (task.float() + beta * safety).to(task.dtype)


def resta(
    task_model: str | os.PathLike,
    aligned: str | os.PathLike,
    degraded: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    beta: float,
    adapter: str | os.PathLike | None = None,
    dare_rate: float = 0.0,
    ties_density: float = 1.0,
    seed: int = 0,
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """Write the RESTA model of a task model (full, or `aligned` + `adapter`) to `out`.

    With several degraded models the safety vector is taken against their mean, as the gene is.
    DARE masks are seeded per tensor (sparsify.tensor_generator): reruns give the same bytes.
    """
    check_output_path(out, force, inputs=(task_model, adapter, aligned, *degraded))
    with ExitStack() as stack:
        task = open_task_model(stack, task_model, adapter)
        ref = open_same_family(stack, task, aligned, "aligned")
        degs = [open_same_family(stack, task, d, "degraded") for d in degraded]

        def transform(name: str, w: torch.Tensor) -> torch.Tensor:
            mean_degraded = sum(d.get(name, torch.float32) for d in degs) / len(degs)
            return resta_tensor(
                w,
                ref.get(name, torch.float32),
                mean_degraded,
                beta,
                dare_rate=dare_rate,
                ties_density=ties_density,
                generator=tensor_generator(seed, name),
            )

        return write_transformed(task, out, transform, force=force, desc="RESTA", progress=progress)


@register_method(
    "resta",
    params={
        "beta": Param(float, [0.25, 0.5, 1.0]),
        "dare": Param(float, [0.0]),
        "ties": Param(float, [1.0]),
    },
    demo={"beta": [0.25, 0.5, 1.0]},
)
def build(run: Run, task, setting: dict, out: Path) -> tuple[Path, None]:
    """One RESTA setting on one task model (`dare`: DARE's drop rate, `ties`: TIES density)."""
    r, names = run.recipe, {"dare": "dare_rate", "ties": "ties_density"}
    return resta(
        task.model, r.aligned, r.degraded, out, seed=r.seed, **run.options(task, setting, names)
    ), None
