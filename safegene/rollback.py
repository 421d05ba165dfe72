"""The target's own way back to the aligned model, per layer, beside the gene.

A benign fine-tune erodes safety along its own update τ = θ_target − θ_aligned, which a gene made
from *other* models may not contain (seed-2 how-to LoRA of the small zoo: the held-in gene at any
scale leaves it at 45 % harmful on validation). `calibrate --rollback` therefore fits, next to
each layer's gene coefficient α_l, a coefficient β_l on that layer's rollback −τ_l:

    θ = θ_target + Σ_l α_l δ_l + Σ_l β_l (θ_aligned − θ_target)_l

— per-layer interpolation toward the aligned model, chosen by the same few shots and the same
generation check as α, so the layers that carry the erosion but not the skill are rolled back and
the rest keep the task. A task LoRA's rollback is exact (−scaling · B, A: β_l scales the task
update of layer l by 1 − β_l); a full fine-tune's is the truncated SVD of aligned − target per
Linear at `rank` (what `extract` does, seeded).

The written GENE2 bakes both into one LoRA gene by rank concatenation — A = [A_gene; A_rb],
B = [α·B_gene, β·B_rb], coefficient 1 — so `apply` and every output form take it as they take any
gene; the calibration record keeps α (`groups`) and β (`rollback`) apart.
"""

from __future__ import annotations

from pathlib import Path

import torch

from safegene.errors import SafeGeneError
from safegene.gene import Gene, LinearDelta, compress, write_meta
from safegene.groups import (
    ROLLBACK,
    group_key,
    group_order,
    groups_to_selection,
    is_rollback,
)
from safegene.io import ModelReader, atomic_output_dir, check_output_path
from safegene.io.lora import AdapterWriter, read_adapter


def rollback_deltas(
    deltas: list[LinearDelta], model, adapter, aligned, *, rank: int, seed: int = 0
) -> list[LinearDelta]:
    """(aligned − target) on each of the gene's Linear modules: the task LoRA's own factors
    (negated) where `adapter` is given, else the rank-`rank` SVD of the two checkpoints' weights
    (modules the adapter does not adapt have nothing to roll back)."""
    if adapter is not None:
        task = read_adapter(adapter)
        try:
            return [
                LinearDelta(d.module, a, b.mul_(-s), rollback=True)
                for d in deltas
                if d.name in task.modules
                for a, b, s in [task.factors(d.name)]
            ]
        finally:
            task.close()
    if aligned is None:
        raise SafeGeneError(
            "--rollback on a full fine-tune needs the aligned model (not in the gene's "
            "provenance): pass --aligned DIR"
        )
    a_reader, t_reader = ModelReader(aligned), ModelReader(model)
    try:
        out = []
        for i, d in enumerate(deltas):
            tensor = d.module.tensor
            diff = a_reader.get(tensor, torch.float32) - t_reader.get(tensor, torch.float32)
            c = compress(diff, rank, seed=seed + i)
            out.append(LinearDelta(d.module, c.a, c.b, rollback=True))
        return out
    finally:
        a_reader.close()
        t_reader.close()


def rollback_groups(groups: list[str], rollback: list[LinearDelta]) -> list[str]:
    """The rollback group of each of `groups` that has a rollback δ ("3" → "r3")."""
    have = {group_key(d.layer, d.kind, fine, True) for d in rollback for fine in (False, True)}
    return [ROLLBACK + g for g in groups if ROLLBACK + g in have]


def split(alpha: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """α per group → (the gene's groups, the rollback's groups)."""
    gene = {g: a for g, a in alpha.items() if not is_rollback(g)}
    return gene, {g: a for g, a in alpha.items() if is_rollback(g)}


def check_bakeable(gene: Gene) -> None:
    """A rollback is baked into LoRA factors: the gene must be a LoRA gene."""
    if gene.kind != "lora":
        raise SafeGeneError("--rollback needs a LoRA gene (extract without --dense)")


def bake(
    gene: Gene,
    out: Path,
    deltas: list[LinearDelta],
    alpha: dict[str, float],
    *,
    per_module_kind: bool,
    coefficients: dict,
    calibration: dict,
    force: bool = False,
) -> Path:
    """Write GENE2 at `out`: each fitted module's δ' = α·δ_gene + β·δ_rollback as LoRA factors
    (rank concatenation, exact), with `coefficients` (the calibration record's: 1 on every fitted
    group), the gene's other modules as they are (outside the selection: coefficient 0)."""
    check_bakeable(gene)
    check_output_path(out, force, inputs=(gene.path,))
    fitted = sorted({g.removeprefix(ROLLBACK) for g in alpha}, key=group_order)
    by_module: dict[str, list[LinearDelta]] = {}
    for d in deltas:
        if group_key(d.layer, d.kind, per_module_kind) in fitted:
            by_module.setdefault(d.module.tensor, []).append(d)
    meta = {**gene.meta, "modules": {t: dict(m) for t, m in gene.meta["modules"].items()}}
    meta.update(
        selection=groups_to_selection(fitted),
        coefficients=coefficients,
        calibration=calibration,
    )
    revision = ((gene.meta.get("sources") or {}).get("aligned") or {}).get("revision")
    with atomic_output_dir(out, force) as tmp:
        with AdapterWriter(tmp, gene.base_model or "", gene.num_layers, revision) as writer:
            for tensor, m in gene.modules.items():
                parts = by_module.get(tensor)
                if parts:
                    a, b = _combined(parts, alpha, per_module_kind)
                    meta["modules"][tensor]["rank"] = a.shape[0]
                else:
                    a, b = gene.factors(tensor)
                writer.write(m.module_path, a, b)
        write_meta(tmp, meta, gene.base_model)
    return Path(out)


def _combined(parts: list[LinearDelta], alpha: dict, per_module_kind: bool):
    """[A_1; A_2; ...], [c_1·B_1, c_2·B_2, ...] for one module's gene and rollback δ."""
    a = torch.cat([d.A for d in parts], 0)
    b = torch.cat(
        [
            d.B * alpha.get(group_key(d.layer, d.kind, per_module_kind, d.rollback), 0.0)
            for d in parts
        ],
        1,
    )
    return a.contiguous(), b.contiguous()
