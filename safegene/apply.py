"""Express a gene in a target model: merged checkpoint, PEFT adapter, or task LoRA + gene combined.

    θ = θ_target (+ task LoRA) + Σ α(layer, kind) · δ(layer, module)

α comes from `coefficients` (a number, a per-layer list, a dict — see gene.py's schema), else
from the gene's calibrated `coefficients`, else 1; layers outside the gene's `selection` get 0.

- merged:   a full checkpoint, streamed tensor by tensor (sharded with a byte budget, float32
            arithmetic, cast back to each tensor's dtype); the task LoRA, if given, is merged too.
- adapter:  a PEFT LoRA adapter: the gene's factors with lora_B scaled by α (exact).
- combined: one PEFT LoRA adapter holding task LoRA and gene by rank concatenation:
            A = [A_task; A_gene], B = [s_task·B_task, α·B_gene], scaling 1 (exact).
Every output also carries `safegene_apply.json` (what was applied, with which coefficients).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from safegene.card import load_template, output_card, write_card
from safegene.errors import SafeGeneError, SafeGeneWarning
from safegene.family import check_compatible
from safegene.gene import Gene, load_gene, normalize_coefficients
from safegene.io import (
    DEFAULT_SHARD_BYTES,
    ModelReader,
    ShardWriter,
    all_finite,
    atomic_output_dir,
    check_output_path,
    copy_side_files,
    hash_model_dir,
    matches_hash,
)
from safegene.io.hub import hub_source, model_name
from safegene.io.lora import (
    AdapterWriter,
    LoraAdapter,
    adapter_base_model,
    check_adapter_fits,
    read_adapter,
)
from safegene.io.untrusted import read_json

FORMS = ("merged", "adapter", "combined")
APPLY_RECORD = "safegene_apply.json"


# --- coefficients ----------------------------------------------------------------------------


def read_coefficients_file(path: str | os.PathLike):
    """JSON file: a number, a per-layer list, or a dict (gene.py schema)."""
    if not os.path.lexists(path):
        raise SafeGeneError(f"coefficients file not found: {path}")
    return read_json(path, "coefficients file")


def resolve_coefficients(gene: Gene, coefficients) -> dict[str, float]:
    """{gene tensor: effective α} (selection applied; α == 0 entries dropped)."""
    coefs = (
        "gene" if coefficients is None else normalize_coefficients(coefficients, gene.num_layers)
    )
    alphas = {t: gene.coefficient(m.layer, m.kind, coefs) for t, m in gene.modules.items()}
    return {t: a for t, a in alphas.items() if a != 0.0}


# --- provenance ------------------------------------------------------------------------------


def check_provenance(gene: Gene, model, adapter=None, *, strict: bool = False) -> str | None:
    """Does the model descend from the aligned model the gene was extracted from?

    Known only where a task LoRA is given: its base (`model`, and the local directory its
    adapter_config names, if any) should be that aligned model. A content hash other than the
    gene's recorded one is a SafeGeneWarning, or a SafeGeneError with `strict`. A full checkpoint
    records no ancestor: nothing to compare. Returns the warning's text, or None.
    """
    src = gene.aligned_source
    recorded = src.get("hash")
    if adapter is None or not isinstance(recorded, str):
        return None
    bases = [Path(model)]
    named = adapter_base_model(adapter)
    if named and (Path(named) / "config.json").is_file():
        bases.append(Path(named))
    for base in bases:
        if not matches_hash(base, recorded):
            msg = (
                f"{base} (the task LoRA's base) is not the aligned model the gene was extracted "
                f"from ({src.get('path')}): their content hashes differ"
            )
            if strict:
                raise SafeGeneError(msg + " (--strict)")
            warnings.warn(msg + "; --strict refuses this", SafeGeneWarning, stacklevel=2)
            return msg
    return None


# --- entry point -----------------------------------------------------------------------------


def apply_gene(
    gene: str | os.PathLike | Gene,
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    form: str = "merged",
    adapter: str | os.PathLike | None = None,
    coefficients=None,
    force: bool = False,
    shard_size: int = DEFAULT_SHARD_BYTES,
    progress: bool | None = None,
    strict: bool = False,
    allow_pickle: bool = False,
    card_template: str | os.PathLike | None = None,
) -> Path:
    """Apply `gene` to the target `model` (plus its task LoRA `adapter`) and write `out`.

    form: "merged" | "adapter" | "combined" (see module doc). coefficients: None (the gene's
    own), a number, a per-layer list or a dict. Checks the family before writing anything.
    The output carries a model card (README.md; `card_template`: a Jinja file of one's own).
    """
    if form not in FORMS:
        raise SafeGeneError(f"--as must be one of {', '.join(FORMS)}, got {form!r}")
    if form == "combined" and adapter is None:
        raise SafeGeneError("--as combined needs the task LoRA (--adapter)")
    if form == "adapter" and adapter is not None:
        raise SafeGeneError("--as adapter writes the gene alone; use --as combined with --adapter")
    gene_path = gene.path if isinstance(gene, Gene) else Path(gene)
    check_output_path(out, force, inputs=(model, gene_path, adapter))
    template = load_template(card_template)
    gene = gene if isinstance(gene, Gene) else load_gene(gene)
    reader = ModelReader(model, allow_pickle=allow_pickle)
    task = read_adapter(adapter) if adapter is not None else None
    try:
        _check_family(gene, reader, task)
        check_provenance(gene, model, adapter, strict=strict)
        alphas = resolve_coefficients(gene, coefficients)
        record = {
            "gene": str(gene_path.absolute()),
            "target": str(Path(model).absolute()),
            "target_hash": hash_model_dir(model),
            "adapter": str(Path(adapter).absolute()) if adapter else None,
            "form": form,
            "coefficients": normalize_coefficients(coefficients, gene.num_layers)
            if coefficients is not None
            else gene.coefficients,
            "selection": gene.selection,
            "applied": alphas,
        }
        with atomic_output_dir(out, force) as tmp:
            if form == "merged":
                _write_merged(tmp, reader, gene, alphas, task, shard_size, progress)
            else:  # adapter (task None) or combined
                _write_adapter(tmp, gene, alphas, task, model)
            (tmp / APPLY_RECORD).write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
            card = output_card(form, record, gene.meta, model_name(model))
            write_card(tmp, card, template)  # replaces a README.md copied from the target
    finally:
        reader.close()
        gene.close()
        if task is not None:
            task.close()
    return Path(out)


def _check_family(gene: Gene, reader: ModelReader, task: LoraAdapter | None) -> None:
    """Gene and task LoRA must fit the target; the first mismatch is named."""
    shapes = reader.shapes()
    check_compatible(
        gene.fingerprint,
        reader.config(),
        shapes,
        tensors={t: m.shape for t, m in gene.modules.items()},
        what=f"target {reader.path}",
    )
    if task is not None:
        check_adapter_fits(task, shapes, "the target")


# --- the three forms -------------------------------------------------------------------------


def _write_merged(
    tmp: Path,
    reader: ModelReader,
    gene: Gene,
    alphas: dict,
    task: LoraAdapter | None,
    shard_size: int,
    progress,
) -> None:
    items = [(n, reader.entry(n).dtype, reader.entry(n).shape) for n in reader.names()]
    writer = ShardWriter(tmp, items, max_shard_bytes=shard_size, check_finite=False)
    task_mods = task.modules if task else {}
    ws = reader.workspace
    for name in tqdm(
        reader.names(),
        desc="apply (merged)",
        unit="tensor",
        disable=None if progress is None else not progress,
    ):
        t = reader.get_temp(name, slot="target")  # scratch slots: see safegene.io.workspace
        if not all_finite(t):
            raise SafeGeneError(f"NaN or Inf in the target's tensor {name!r}")
        mod = name.removesuffix(".weight")
        task_here = name.endswith(".weight") and mod in task_mods
        if name in alphas or task_here:
            w = ws.tensor("work", t.shape, torch.float32).copy_(t)
            if task_here:
                a, b, s = task.factors(mod)
                w.addmm_(b, a, alpha=s)
            if name in alphas:
                gene.add_to(w, name, alphas[name])
            t = ws.tensor("merged", t.shape, t.dtype).copy_(w)
            if not all_finite(t):
                raise SafeGeneError(
                    f"NaN or Inf in the merged tensor {name!r} (from the gene, "
                    "the adapter or the coefficients)"
                )
        writer.write(name, t)
        del t
    writer.close()
    copy_side_files(reader.path, tmp)


def _write_adapter(
    tmp: Path, gene: Gene, alphas: dict, task: LoraAdapter | None, base_model
) -> None:
    """`adapter` (task None) or `combined` (task given) PEFT output, scaling 1 everywhere."""
    gene_mods = {gene.modules[t].module_path: (t, a) for t, a in alphas.items()}
    task_mods = task.modules if task else {}
    hub = hub_source(base_model)
    with AdapterWriter(
        tmp, model_name(base_model), gene.num_layers, hub[1] if hub else None
    ) as writer:
        for mod in dict.fromkeys([*task_mods, *gene_mods]):
            parts_a, parts_b = [], []
            if mod in task_mods:
                a, b, s = task.factors(mod)
                parts_a.append(a)
                parts_b.append(b.mul_(s))
            if mod in gene_mods:
                t, alpha = gene_mods[mod]
                a, b = gene.factors(t)
                parts_a.append(a)
                parts_b.append(b.mul_(alpha))
            writer.write(mod, torch.cat(parts_a, 0), torch.cat(parts_b, 1))
