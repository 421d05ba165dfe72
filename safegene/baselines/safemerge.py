"""SafeMERGE-style layer-wise merging (Djuraskovic et al. 2025, "SafeMERGE: Preserving Safety
Alignment in Fine-Tuned Large Language Models via Selective Layer-Wise Model Merging").

A module whose task update has drifted from the safety subspace (SafeLoRA's cosine gate,
cos(C·ΔW, ΔW) < τ with V = W_aligned − W_base and ΔW = W_task − W_aligned) is replaced by a merge
of the task and aligned weights, task_weight·W_task + (1 − task_weight)·W_aligned, linear or with
the task update DARE-sparsified first; other modules keep the task weights.
"""

from __future__ import annotations

import torch

from safegene.baselines.sparsify import dare


def safemerge_tensor(task: torch.Tensor, aligned: torch.Tensor, task_weight: float, *,
                     dare_rate: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Merge one drifted module: W_aligned + task_weight·DARE(W_task − W_aligned)."""
    update = task.float() - aligned.float()
    if dare_rate > 0.0:
        update = dare(update, dare_rate, generator or torch.Generator().manual_seed(0))
    return (aligned.float() + task_weight * update).to(task.dtype)
