"""SafeLoRA (Hsu et al. 2024, "Safe LoRA: the Silver Lining of Reducing Safety Risks when
Fine-tuning Large Language Models"): project a module's task update onto the alignment subspace
when it has drifted away from it.

For each module: V = W_aligned − W_base (the alignment direction), C = V·Vᵀ / ‖V‖_F, and the task
update ΔW (a LoRA's B·A, or W_task − W_aligned for a full fine-tune) is replaced by C·ΔW when
cos(C·ΔW, ΔW) < τ ("threshold" mode) or for the N least similar modules ("number" mode).

C is d_out × d_out; it is never built: C·ΔW = V·(Vᵀ·ΔW) / ‖V‖_F costs two thin products.
The paper's formula against this one, and why they differ: docs/baselines.md, section "SafeLoRA".
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path

import torch
from tqdm.auto import tqdm

from safegene.baselines.stream import (
    TaskModel,
    open_same_family,
    open_task_model,
    projection_modules,
    write_transformed,
)
from safegene.card import method_card, write_card
from safegene.family import num_layers
from safegene.io import ModelReader, atomic_output_dir, check_output_path, save_tensors
from safegene.io.lora import ADAPTER_WEIGHTS, adapter_config, write_adapter_config
from safegene.methods import Param, Run, register_method

RECORD = "safelora.json"


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


def modules_to_project(
    similarities: dict[str, float], *, threshold: float | None = None, number: int | None = None
) -> set[str]:
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


def module_similarities(
    task: TaskModel, aligned: ModelReader, base: ModelReader, *, progress: bool | None = None
) -> dict[str, float]:
    """cos(C·ΔW, ΔW) for every module SafeLoRA inspects (one pass, one module in memory)."""
    sims = {}
    for name in tqdm(
        projection_modules(task),
        desc="alignment similarity",
        unit="module",
        disable=None if progress is None else not progress,
    ):
        v = aligned.get(name, torch.float32) - base.get(name, torch.float32)
        sims[name] = similarity(v, task.update(name, aligned))
    return sims


def safelora(
    task_model: str | os.PathLike,
    aligned: str | os.PathLike,
    base: str | os.PathLike,
    out: str | os.PathLike,
    *,
    adapter: str | os.PathLike | None = None,
    threshold: float | None = None,
    number: int | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """SafeLoRA a task model. With a task LoRA (`adapter`) the output is that adapter with
    lora_B ← C·lora_B in the projected modules (the paper's form, loadable with stock PEFT on
    the same base); for a full fine-tune it is a checkpoint with W_aligned + C·ΔW there.
    `out/safelora.json` records every module's similarity and which were projected."""
    check_output_path(out, force, inputs=(task_model, adapter, aligned, base))
    with ExitStack() as stack:
        task = open_task_model(stack, task_model, adapter)
        ref = open_same_family(stack, task, aligned, "aligned")
        pre = open_same_family(stack, task, base, "base")
        sims = module_similarities(task, ref, pre, progress=progress)
        chosen = modules_to_project(sims, threshold=threshold, number=number)
        record = {
            "method": "safelora",
            "threshold": threshold,
            "number": number,
            "similarities": sims,
            "projected": sorted(chosen),
        }
        if task.lora is not None:
            _write_projected_adapter(task, ref, pre, chosen, out, force, record)
        else:
            write_transformed(
                task,
                out,
                lambda name, w: (
                    safelora_tensor(ref.get(name, torch.float32), pre.get(name, torch.float32), w)
                    if name in chosen
                    else None
                ),
                force=force,
                desc="SafeLoRA",
                progress=progress,
                records={RECORD: record},
            )
    return Path(out)


def _write_projected_adapter(
    task: TaskModel,
    aligned: ModelReader,
    base: ModelReader,
    chosen: set[str],
    out,
    force: bool,
    record: dict,
) -> None:
    """The task LoRA with lora_B <- C·(s·lora_B) in the chosen modules, every module's PEFT
    scale s folded into lora_B and the config written with scaling 1 (r = the largest rank), so
    PEFT and vLLM (which ignores rank/alpha patterns) both load it exactly, whatever the user's
    config held (rank_pattern above r, alpha_pattern, rsLoRA)."""
    lora = task.lora
    tensors, ranks = {}, {}
    for module, (key_a, key_b, _) in lora.modules.items():
        a, b, scale = lora.factors(module)
        b = b.mul_(scale)
        if module + ".weight" in chosen:
            v = aligned.get(module + ".weight", torch.float32) - base.get(
                module + ".weight", torch.float32
            )
            b = project(v, b)
        tensors[key_a] = a.to(lora.reader.entry(key_a).dtype)  # (exact: read up to float32)
        tensors[key_b] = b.to(lora.reader.entry(key_b).dtype)
        ranks[module] = a.shape[0]
    name = lora.config.get("base_model_name_or_path")
    config = adapter_config(
        ranks, name, num_layers(task.reader.config()), lora.config.get("revision")
    )
    with atomic_output_dir(out, force) as tmp:
        save_tensors(tmp / ADAPTER_WEIGHTS, tensors)
        write_adapter_config(tmp, config)
        (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        write_card(tmp, method_card("SafeLoRA", {RECORD: record}, name, "peft"))


@register_method(
    "safelora",
    params={"threshold": Param(float, [0.35, 0.5]), "number": Param(int, [])},
    needs_base=True,
    demo={"threshold": [0.35, 0.5]},
    alternatives=("threshold", "number"),
)
def build(run: Run, task, setting: dict, out: Path) -> tuple[Path, Path | None]:
    """One SafeLoRA setting on one task model: the projected adapter on the task's base for a
    task LoRA, else the projected checkpoint."""
    r = run.recipe
    made = safelora(task.model, r.aligned, r.base, out, **run.options(task, setting))
    return (task.model, made) if task.adapter else (made, None)
