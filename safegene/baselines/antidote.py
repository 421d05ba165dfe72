"""Antidote (Huang et al. 2024, "Antidote: Post-fine-tuning Safety Alignment for Large Language
Models against Harmful Fine-tuning", code: github.com/git-disl/Antidote): after fine-tuning, zero
the weights that a Wanda score on harmful data marks as carrying the harmful behaviour.

    score_ij = |W_ij| · ‖X_j‖₂     X_j: input j of the module over every re-alignment token
    W ← W ⊙ (1 − M)                 M_ij = 1 for the top-scored entries of row i

per module and per output row, as the reference code ranks (`prune_wanda_outlier`): of a row's
n_in entries the n_in − ⌊n_in · (1 − ratio)⌋ highest-scored are removed.

The re-alignment set is harmful prompts with harmful answers: the data's answers where they are
not refusals, else the target's own greedy answers (generated once, cached: safegene.targets),
so Antidote sees exactly the harmful shots SafeGene sees. ‖X_j‖ is measured with forward hooks on
the loaded target; the pruning then streams the checkpoint one tensor at a time. What is pruned:
for a full fine-tune every attention and MLP projection of the decoder layers; for a task LoRA
its factors lora_A and lora_B (as the reference code does), and the pruned adapter is merged
into the aligned weights, so every output is a full checkpoint that stock transformers loads.
`out/antidote.json` records the settings, the data and how many weights each tensor lost.

The paper's formula against this implementation, and why they differ: docs/baselines.md, section
"Antidote".
"""

from __future__ import annotations

import math
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from safegene.baselines.stream import (
    TaskModel,
    open_task_model,
    projection_modules,
    write_transformed,
)
from safegene.errors import SafeGeneError
from safegene.io import check_output_path
from safegene.methods import Param, Run, register_method
from safegene.settings import ComputeSettings, option
from safegene.shots import data_hash, data_record, load_records, take

RECORD = "antidote.json"

# --- settings ------------------------------------------------------------------------------------


def ratio_problem(ratio) -> str | None:
    """What is wrong with a pruning ratio (None: it lies in (0, 1))."""
    ok = isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and math.isfinite(ratio)
    if not ok or not 0 < ratio < 1:
        return f"the pruning ratio must lie in (0, 1) (got {ratio!r})"
    return None


def shots_problem(shots) -> str | None:
    """What is wrong with a number of re-alignment examples (None: all of them, or k ≥ 1)."""
    if shots is None:
        return None
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 1:
        return f"the re-alignment shots must be at least 1 (got {shots!r})"
    return None


@dataclass(frozen=True)
class AntidoteSettings:
    """How Antidote prunes, validated when made."""

    ratio: float = option(0.1, "fraction of each row's weights removed, in (0, 1)")
    shots: int | None = option(
        16, "harmful re-alignment examples drawn (at most; None: all)", metavar="K"
    )
    seed: int = option(0, "seed of the examples drawn")

    def __post_init__(self):
        for problem in (ratio_problem(self.ratio), shots_problem(self.shots)):
            if problem:
                raise SafeGeneError(problem)


# --- the arithmetic ------------------------------------------------------------------------------


def prune_count(n_in: int, ratio: float) -> int:
    """Entries removed from a row of `n_in`: the reference code keeps ⌊n_in · (1 − ratio)⌋ (so
    any ratio > 0 removes at least one where n_in · (1 − ratio) is not whole)."""
    return n_in - int(n_in * (1.0 - ratio))


def wanda_score(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| · ‖X_j‖ in float32 (`norms`: one per input column)."""
    if weight.dim() != 2 or norms.shape != (weight.shape[1],):
        raise SafeGeneError(
            f"activation norms of shape {tuple(norms.shape)} do not fit a weight of shape "
            f"{tuple(weight.shape)}"
        )
    return weight.float().abs() * norms.float().unsqueeze(0)


def harmful_mask(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """True at the `prune_count` highest scores of each row; ties go as a stable ascending sort
    orders them (the later column is removed first), as in the reference code."""
    n_in = score.shape[1]
    n = prune_count(n_in, ratio)
    mask = torch.zeros_like(score, dtype=torch.bool)
    if n:
        order = torch.sort(score, dim=1, stable=True).indices
        mask.scatter_(1, order[:, n_in - n :], True)
    return mask


def prune(weight: torch.Tensor, norms: torch.Tensor, ratio: float) -> torch.Tensor:
    """The weight with its harmful entries (`harmful_mask` of the Wanda score) set to zero."""
    return weight.masked_fill(harmful_mask(wanda_score(weight, norms), ratio), 0)


# --- the activations -----------------------------------------------------------------------------


def activation_norms(
    model, encoded, points: dict[str, torch.nn.Module], *, batch_size: int = 16, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """{key: ‖X_j‖₂ per input column j} of each module in `points`, over every real (unpadded)
    token of the encoded pairs (safegene.attach.encode_chat_pairs), measured by forward hooks
    (float32, on the CPU)."""
    from safegene.attach import pad_batch

    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def hook(key: str):
        def record(_mod, inputs, _output):
            x = inputs[0].detach().float()
            keep = current["mask"]
            if x.shape[:-1].numel() != keep.numel():
                raise SafeGeneError(f"unexpected input of shape {tuple(x.shape)} at {key}")
            x = x.reshape(-1, x.shape[-1]) * keep.reshape(-1, 1).to(x.device, x.dtype)
            sq = (x * x).sum(0)
            sums[key] = sq if key not in sums else sums[key] + sq

        return record

    handles = [mod.register_forward_hook(hook(key)) for key, mod in points.items()]
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                ids, mask, _ = pad_batch(encoded[start : start + batch_size], pad_id)
                current["mask"] = mask
                model(input_ids=ids.to(device), attention_mask=mask.to(device))
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(points) - set(sums))
    if missing:
        raise SafeGeneError(f"the model never ran the module of {missing[0]}")
    return {key: sums[key].sqrt().cpu() for key in points}


def _modules_by_name(model) -> dict[str, torch.nn.Module]:
    """The model's modules by their checkpoint name (a PeftModel's prefix removed) and by their
    `layers.N....` suffix (a checkpoint saved without the "model." prefix), a LoRA layer's inner
    base and factor modules left out."""
    found = {}
    for full, mod in model.named_modules():
        if full.endswith("base_layer") or ".lora_" in full:
            continue
        name = full.removeprefix("base_model.model.")
        found.setdefault(name, mod)
        if "layers." in name:
            found.setdefault(name[name.find("layers.") :], mod)
    return found


def hook_points(model, task: TaskModel, weights: list[str]) -> dict[str, torch.nn.Module]:
    """The module whose input scores each tensor Antidote prunes, keyed by that tensor's name:
    for a full target the Linear of each weight; for a LoRA target each module's lora_A (input
    x) and lora_B (input A·x), keyed by the adapter's factor names."""
    modules = _modules_by_name(model)
    points = {}
    for name in weights:
        path = name.removesuffix(".weight")
        mod = modules.get(path)
        if mod is None and "layers." in path:
            mod = modules.get(path[path.find("layers.") :])
        if mod is None:
            raise SafeGeneError(f"the loaded model has no module {path} (is it the task model?)")
        if task.lora is None:
            points[name] = mod
            continue
        lora_a, lora_b = getattr(mod, "lora_A", None), getattr(mod, "lora_B", None)
        if not lora_a or not lora_b:
            raise SafeGeneError(f"the loaded model has no LoRA factors at {path}")
        m = task.lora.modules[path]
        points[m.a_key] = next(iter(lora_a.values()))
        points[m.b_key] = next(iter(lora_b.values()))
    return points


# --- the method ----------------------------------------------------------------------------------


def realignment_records(path: str | os.PathLike, settings: AntidoteSettings) -> list[dict]:
    """The harmful re-alignment examples: at most `settings.shots` drawn with its seed (the draw
    SafeGene's calibration makes with the same k and seed)."""
    try:
        records = load_records(path, split="harmful")
    except SafeGeneError as exc:
        raise SafeGeneError(f"Antidote's re-alignment set: {exc}") from None
    k = None if settings.shots is None else min(settings.shots, len(records))
    return take(records, k, seed=settings.seed, name="re-alignment")


def measure(
    task: TaskModel,
    model: str | os.PathLike,
    adapter: str | os.PathLike | None,
    records: list[dict],
    compute: ComputeSettings,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the activation norms of every tensor Antidote prunes, the harmful answers used): the
    target loaded once, answers generated where the data has none (cached), one forward pass."""
    from safegene.attach import encode_chat_pairs
    from safegene.models import load_model
    from safegene.targets import compliance_targets

    net, tokenizer = load_model(model, adapter, device=compute.device, dtype=compute.dtype)
    answers = compliance_targets(
        records,
        model,
        adapter=adapter,
        loaded=(net, tokenizer),
        compute=compute,
        progress=progress,
    )
    encoded = encode_chat_pairs(tokenizer, [r["prompt"] for r in records], answers)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    points = hook_points(net, task, projection_modules(task))
    norms = activation_norms(net, encoded, points, batch_size=compute.batch_size, pad_id=pad)
    return norms, answers


def _pruned_counts(task: TaskModel, norms: dict, ratio: float) -> dict[str, int]:
    """How many entries each pruned tensor loses (exactly `prune_count` per row)."""
    counts = {}
    for key in norms:
        shape = task.lora.reader.entry(key).shape if task.lora else task.reader.entry(key).shape
        counts[key] = shape[0] * prune_count(shape[1], ratio)
    return counts


def antidote(
    task_model: str | os.PathLike,
    harmful: str | os.PathLike,
    out: str | os.PathLike,
    *,
    ratio: float,
    shots: int | None = 16,
    adapter: str | os.PathLike | None = None,
    seed: int = 0,
    compute: ComputeSettings | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """Antidote a task model (full, or `task_model` = the aligned model plus a task LoRA
    `adapter`) with the harmful re-alignment data `harmful`; write the full checkpoint to `out`.
    Bad settings, an empty re-alignment set or a taken `out` fail before anything is written."""
    settings = AntidoteSettings(ratio=ratio, shots=shots, seed=seed)
    compute = compute or ComputeSettings()
    check_output_path(out, force, inputs=(task_model, adapter, harmful))
    records = realignment_records(harmful, settings)
    with ExitStack() as stack:
        task = open_task_model(stack, task_model, adapter)
        norms, answers = measure(task, task_model, adapter, records, compute, bool(progress))
        counts = _pruned_counts(task, norms, ratio)
        record = {
            "method": "antidote",
            "target": "lora" if task.lora else "full",
            "ratio": ratio,
            "shots": shots,
            "seed": seed,
            "data": data_record(harmful, records),
            "answers_sha256": data_hash([{"answer": a} for a in answers]),
            "pruned": counts,
            "pruned_total": sum(counts.values()),
        }
        if task.lora is None:
            writer, transform = task, _full_transform(norms, ratio)
        else:  # the aligned weights, each LoRA module entering pruned through the transform
            writer, transform = TaskModel(task.reader), _lora_transform(task, norms, ratio)
        return write_transformed(
            writer,
            out,
            transform,
            force=force,
            desc="Antidote",
            progress=progress,
            records={RECORD: record},
        )


def _full_transform(norms: dict, ratio: float):
    def transform(name: str, w: torch.Tensor) -> torch.Tensor | None:
        return prune(w, norms[name], ratio) if name in norms else None

    return transform


def _lora_transform(task: TaskModel, norms: dict, ratio: float):
    lora = task.lora

    def transform(name: str, w: torch.Tensor) -> torch.Tensor | None:
        module = name.removesuffix(".weight")
        if not name.endswith(".weight") or module not in lora.modules:
            return None
        a, b, scale = lora.factors(module)
        m = lora.modules[module]
        a, b = prune(a, norms[m.a_key], ratio), prune(b, norms[m.b_key], ratio)
        return w + scale * (b @ a)

    return transform


@register_method(
    "antidote",
    params={
        "ratio": Param(float, [0.01, 0.05, 0.1, 0.2], check=ratio_problem),
        "shots": Param(int, [16], check=shots_problem),
    },
    demo={"ratio": [0.01, 0.05, 0.1], "shots": [16]},
)
def build(run: Run, task, setting: dict, out: Path) -> tuple[Path, None]:
    """One Antidote setting on one task model: pruned with the recipe's harmful shots."""
    r = run.recipe
    compute = ComputeSettings(device=r.device, dtype=r.dtype)
    made = antidote(
        task.model, r.harmful_shots, out, seed=r.seed, compute=compute, **run.options(task, setting)
    )
    return made, None
