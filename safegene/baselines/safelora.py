"""SafeLoRA (Hsu et al. 2024, "Safe LoRA: the Silver Lining of Reducing Safety Risks when
Fine-tuning Large Language Models"): project a module's task update onto the alignment subspace
when it has drifted away from it.

For each module: V = W_aligned − W_base (the alignment direction), C = V·Vᵀ / ‖V‖_F, and the task
update ΔW (a LoRA's B·A, or W_task − W_aligned for a full fine-tune) is replaced by C·ΔW when
cos(C·ΔW, ΔW) < τ ("threshold" mode) or for the N least similar modules ("number" mode).

C is d_out × d_out; it is never built: C·ΔW = V·(Vᵀ·ΔW) / ‖V‖_F costs two thin products.
"""

from __future__ import annotations

import torch


def project(v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """C·ΔW with C = V·Vᵀ/‖V‖_F, without materialising C."""
    v = v.float()
    norm = torch.linalg.matrix_norm(v)
    if norm == 0:
        return torch.zeros_like(delta, dtype=torch.float32)
    return v @ (v.T @ delta.float()) / norm


def similarity(v: torch.Tensor, delta: torch.Tensor) -> float:
    """cos(C·ΔW, ΔW), flattening both.

    A zero update is perfectly similar (there is nothing to project); an update orthogonal to the
    alignment subspace (C·ΔW = 0) is not similar at all.
    """
    delta = delta.float()
    if delta.norm() == 0:
        return 1.0
    projected = project(v, delta)
    if projected.norm() == 0:
        return 0.0
    return float((projected * delta).sum() / (projected.norm() * delta.norm()))


def modules_to_project(similarities: dict[str, float], *, threshold: float | None = None,
                       number: int | None = None) -> set[str]:
    """The modules SafeLoRA projects: cos < threshold, or the `number` least similar."""
    if (threshold is None) == (number is None):
        raise ValueError("SafeLoRA needs exactly one of threshold or number")
    if threshold is not None:
        return {name for name, s in similarities.items() if s < threshold}
    return set(sorted(similarities, key=lambda name: (similarities[name], name))[:number])


def safelora_tensor(aligned: torch.Tensor, base: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """A projected full fine-tune module: W_aligned + C·(W_task − W_aligned)."""
    delta = task.float() - aligned.float()
    return (aligned.float() + project(aligned.float() - base.float(), delta)).to(task.dtype)
