"""Linear interpolation toward the aligned model: θ = (1 − t)·θ_task + t·θ_aligned."""

from __future__ import annotations

import torch


def interpolate_tensor(task: torch.Tensor, aligned: torch.Tensor, t: float) -> torch.Tensor:
    """t = 0 keeps the task model, t = 1 gives the aligned model. Float32 arithmetic."""
    return torch.lerp(task.float(), aligned.float(), t).to(task.dtype)
