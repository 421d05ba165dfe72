"""Sparsification of a task/safety vector, shared by RESTA and SafeMERGE-style merging.

DARE (Yu et al. 2024, "Language Models are Super Mario"): drop each entry with probability p and
rescale the survivors by 1/(1-p), so the expectation is unchanged.
TIES trim step (Yadav et al. 2023, "TIES-Merging"): keep the top-k fraction of entries by magnitude.
"""

from __future__ import annotations

import hashlib

import torch


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """A generator for one tensor's random mask, seeded by (seed, tensor name): reruns match and
    masks do not depend on the order in which tensors are streamed."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def dare(delta: torch.Tensor, drop_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Drop entries with probability `drop_rate`, rescale the rest by 1/(1 - drop_rate)."""
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"DARE drop rate must be in [0, 1), got {drop_rate}")
    if drop_rate == 0.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator, device="cpu").to(delta.device) >= drop_rate
    return delta * keep / (1.0 - drop_rate)


def ties_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` fraction of entries with the largest magnitude, zero the rest."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"TIES density must be in (0, 1], got {density}")
    if density == 1.0 or delta.numel() == 0:
        return delta
    k = max(1, int(round(density * delta.numel())))
    threshold = delta.abs().flatten().kthvalue(delta.numel() - k + 1).values
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))
