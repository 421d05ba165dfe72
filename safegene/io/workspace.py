"""Reusable scratch buffers for the streaming loops.

A freshly allocated large tensor costs a page fault per 4 KiB page on first touch (the
allocator hands big blocks back to the OS on free), which measured 3–5× slower than the copy
itself. The loops therefore read and convert into named, grow-only scratch slots: one buffer
per slot, as large as the largest tensor that went through it. Memory stays at a few tensors;
a slot's contents are valid only until the next use of that slot.
"""

from __future__ import annotations

import math

import torch


class Workspace:
    """Named grow-only scratch buffers: `tensor(slot, shape, dtype)` is a view into slot's bytes."""

    def __init__(self):
        self._slots: dict[str, torch.Tensor] = {}

    def tensor(self, slot: str, shape, dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        buf = self._slots.get(slot)
        if buf is None or buf.numel() < nbytes:
            self._slots.pop(slot, None)  # free the old one before allocating the larger
            buf = self._slots[slot] = torch.empty(max(nbytes, 1), dtype=torch.uint8)
        return buf[:nbytes].view(dtype).view(tuple(shape))

    def nbytes(self) -> int:
        return sum(b.numel() for b in self._slots.values())

    def clear(self) -> None:
        self._slots.clear()
