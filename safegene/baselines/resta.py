"""RESTA (Bhardwaj et al. 2024, "Language Models are Homer Simpson! Safety Re-Alignment of
Fine-tuned Language Models through Task Arithmetic"): add the safety vector back, one global β.

    θ = θ_task + β · (θ_aligned − θ_degraded)

with optional DARE or TIES sparsification of the safety vector (the paper uses DARE).
"""

from __future__ import annotations

import torch

from safegene.baselines.sparsify import dare, ties_trim


def resta_tensor(task: torch.Tensor, aligned: torch.Tensor, degraded: torch.Tensor, beta: float, *,
                 dare_rate: float = 0.0, ties_density: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One tensor of the RESTA model, computed in float32 and returned in the task's dtype."""
    safety = aligned.float() - degraded.float()
    if ties_density < 1.0:
        safety = ties_trim(safety, ties_density)
    if dare_rate > 0.0:
        safety = dare(safety, dare_rate, generator or torch.Generator().manual_seed(0))
    return (task.float() + beta * safety).to(task.dtype)
