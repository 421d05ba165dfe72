"""Few-shot recalibration: one coefficient per selected layer (or per layer and module kind).

For a task model θ_t (a full checkpoint, or aligned + task LoRA left unmerged), learn α in
`θ = θ_t + Σ_g α_g δ_g` by Adam on α only — the model frozen — minimising

    L_refuse(k harmful prompts → refusals) + w · L_task(k task prompts → answers)
      [+ L_keep(benign prompts → the target's own responses)] + λ ‖α‖²

full batch, a fixed number of steps with early stopping, seeded. Refusal targets are the data's
refusals or else the aligned model's own greedy responses (generated once, cached). The result is
a copy of the gene (GENE2) whose safegene.json carries the coefficients and how they were fitted,
including how many harmful shots the target answered before (a warning when under a quarter: the
refusal loss then has little to correct).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

from safegene.errors import SafeGeneError, SafeGeneWarning

# torch and the modules that import it are imported inside the functions that use them, so the CLI
# can read DEFAULTS (for --help) without loading torch.

DEFAULTS = dict(
    lam=0.01,
    steps=150,
    lr=0.05,
    patience=25,
    init=0.0,
    task_weight=1.0,
    refusal_tokens=None,
    task_margin=None,
    refusal_floor=None,
)


def selected_groups(
    meta: dict, modules, *, per_module_kind: bool, layers=None
) -> tuple[list[str], bool]:
    """The coefficient groups to fit: the gene's selection (or `layers`: a list, or "all")."""
    from safegene.select import selection_to_groups

    kinds = sorted({g.kind for g in modules})
    gene_layers = sorted({g.layer for g in modules})
    if layers is None:
        groups = selection_to_groups(meta.get("selection"))
        if not groups:
            raise SafeGeneError(
                "the gene has no layer selection: run `safegene select` on it first "
                "(or calibrate every layer with --all-layers)"
            )
        if any("." in g for g in groups):
            per_module_kind = True
    elif layers == "all":
        groups = [str(layer) for layer in gene_layers]
    else:
        groups = [str(x) for x in layers]
    have = {str(g.layer) for g in modules} | {f"{g.layer}.{g.kind}" for g in modules}
    bad = [g for g in groups if g not in have]
    if bad:
        raise SafeGeneError(f"the gene has no layer/module group {bad[0]!r}")
    if per_module_kind:
        fine = []
        for g in groups:
            fine += [g] if "." in g else [f"{g}.{k}" for k in kinds if f"{g}.{k}" in have]
        groups = fine
    return groups, per_module_kind


def fit_alpha(
    model,
    tokenizer,
    modules,
    groups: list[str],
    *,
    harmful: list[tuple[str, str]],
    task: list[tuple[str, str]] | None = None,
    keep: list[tuple[str, str]] | None = None,
    per_module_kind: bool = False,
    lam: float = DEFAULTS["lam"],
    steps: int = DEFAULTS["steps"],
    lr: float = DEFAULTS["lr"],
    patience: int = DEFAULTS["patience"],
    init: float = DEFAULTS["init"],
    task_weight: float = DEFAULTS["task_weight"],
    refusal_tokens: int | None = DEFAULTS["refusal_tokens"],
    task_tokens: int | None = None,
    task_margin: float | None = DEFAULTS["task_margin"],
    refusal_floor: float | None = DEFAULTS["refusal_floor"],
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> dict:
    """Adam on α (float32) over `groups`; returns {"alpha": {group: value}, "curve": [...], ...}."""
    import torch

    from safegene.attach import GeneAttachment, encode_pairs, pairs_loss

    if not harmful:
        raise SafeGeneError("no harmful examples to calibrate on")
    torch.manual_seed(seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc_h = encode_pairs(tokenizer, [p for p, _ in harmful], [t for _, t in harmful])
    if refusal_tokens:  # the decision to refuse lives in the first tokens of the response
        enc_h = [(ids[: n + refusal_tokens], n) for ids, n in enc_h]
    enc_t = encode_pairs(tokenizer, [p for p, _ in task], [t for _, t in task]) if task else []
    if task_tokens:
        enc_t = [(ids[: n + task_tokens], n) for ids, n in enc_t]
    enc_k = encode_pairs(tokenizer, [p for p, _ in keep], [t for _, t in keep]) if keep else []
    att = GeneAttachment(
        model,
        modules,
        per_module_kind=per_module_kind,
        groups=groups,
        alpha=torch.full((len(groups),), float(init)),
    )
    opt = torch.optim.Adam([att.alpha], lr=lr)
    sets = [("refuse", enc_h, 1.0), ("task", enc_t, task_weight), ("keep", enc_k, 1.0)]
    floor: dict[str, torch.Tensor | None] = {"refuse": None, "task": None, "keep": None}
    if refusal_floor is not None:  # a refusal already this likely needs no more push
        floor["refuse"] = torch.full((len(enc_h),), float(refusal_floor))
    if task_margin is not None:  # the task may lose up to `task_margin` nats per example, free
        with att, att.fixed([0.0] * len(groups)), torch.no_grad():
            floor["task"] = (
                pairs_loss(model, enc_t, batch_size=batch_size, pad_id=pad_id, reduce=False).cpu()
                + task_margin
                if enc_t
                else None
            )

    def objective(backward: bool) -> dict:
        """The loss parts at the current α; with backward, α.grad accumulated batch by batch (the
        memory of one batch, whatever k is). Per example: mean NLL of its target tokens, minus its
        floor (hinge) where one is set."""
        parts = {}
        for key, enc, weight in sets:
            total = 0.0
            for start in range(0, len(enc), batch_size):
                chunk = enc[start : start + batch_size]
                per = pairs_loss(model, chunk, batch_size=batch_size, pad_id=pad_id, reduce=False)
                if floor[key] is not None:
                    per = torch.relu(per - floor[key][start : start + len(chunk)].to(per.device))
                loss = per.sum() / len(enc)
                if backward and weight:
                    (weight * loss).backward()
                total += loss.item()
            parts[key] = total
        reg = lam * (att.alpha**2).sum()
        if backward:
            reg.backward()
        parts["total"] = parts["refuse"] + task_weight * parts["task"] + parts["keep"] + reg.item()
        return parts

    curve, best, best_alpha, best_parts, since = (
        [],
        float("inf"),
        att.alpha.detach().clone(),
        None,
        0,
    )
    parts0 = None
    from tqdm.auto import tqdm

    bar = tqdm(range(steps), desc="calibrating", disable=not progress, leave=False)
    with att:
        for _ in bar:
            opt.zero_grad(set_to_none=True)
            parts = objective(backward=True)
            if not math.isfinite(
                parts["total"]
            ):  # NaN/Inf from the gene, the target or a huge --lr
                raise SafeGeneError(
                    f"calibration diverged (the loss is {parts['total']} at step "
                    f"{len(curve) + 1}): lower --lr, and check the gene and the target"
                )
            if parts0 is None:
                parts0 = parts
            curve.append(parts["total"])
            if parts["total"] < best - 1e-5:
                best, best_alpha, best_parts, since = (
                    parts["total"],
                    att.alpha.detach().clone(),
                    parts,
                    0,
                )
            else:
                since += 1
                if since >= patience:
                    break
            opt.step()
            bar.set_postfix(loss=f"{parts['total']:.3f}")
        # the α after the last step has not been scored yet: it may be the best one
        with att.fixed(), torch.no_grad():
            parts = objective(backward=False)
        if parts["total"] < best - 1e-5:
            best, best_alpha, best_parts = parts["total"], att.alpha.detach().clone(), parts
    if not torch.isfinite(best_alpha).all():
        raise SafeGeneError("calibration diverged (NaN/Inf coefficients): lower --lr")
    return {
        "alpha": {g: round(float(a), 6) for g, a in zip(groups, best_alpha.tolist())},
        "steps_run": len(curve),
        "initial": parts0,
        "final": best_parts,
        "curve": [round(c, 5) for c in curve[:: max(1, len(curve) // 20)]],
    }


def complied_shots(
    prompts: list[str],
    target,
    adapter,
    model,
    tokenizer,
    *,
    max_new_tokens: int,
    progress: bool = False,
) -> int:
    """How many of the harmful shots the target, as it is, answers instead of refusing (keyword
    judge, greedy; generated once and cached). Calibration learns mostly from these: a
    target that refuses its shots but not other prompts gives it little to correct (small zoo:
    task-classify refuses all 32 harmful shots and answers 14 % of the held-out prompts)."""
    from safegene.evaluate.judges import keyword_judge
    from safegene.select import own_responses

    responses = own_responses(
        target,
        prompts,
        adapter=adapter,
        model=model,
        tokenizer=tokenizer,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    return sum(keyword_judge(p, r) for p, r in zip(prompts, responses))


def to_coefficients(alpha: dict[str, float]) -> dict:
    """Fitted α per group → the gene's coefficients schema ({"3": a} or {"attn": {"3": a}, ...})."""
    if any("." in g for g in alpha):
        out: dict[str, dict[str, float]] = {}
        for g, a in alpha.items():
            layer, kind = g.split(".", 1)
            out.setdefault(kind, {})[layer] = a
        return dict(sorted(out.items()))
    return dict(alpha)


def calibrate(
    gene: str | Path,
    target: str | Path,
    *,
    harmful: str | Path,
    task: str | Path,
    out: str | Path | None,
    shots: int = 16,
    adapter: str | Path | None = None,
    aligned: str | Path | None = None,
    benign: str | Path | None = None,
    per_module_kind: bool = False,
    layers=None,
    lam: float = DEFAULTS["lam"],
    steps: int = DEFAULTS["steps"],
    lr: float = DEFAULTS["lr"],
    patience: int = DEFAULTS["patience"],
    init: float = DEFAULTS["init"],
    task_weight: float = DEFAULTS["task_weight"],
    refusal_tokens: int | None = DEFAULTS["refusal_tokens"],
    task_tokens: int | None = None,
    task_margin: float | None = DEFAULTS["task_margin"],
    refusal_floor: float | None = DEFAULTS["refusal_floor"],
    seed: int = 0,
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 48,
    force: bool = False,
    progress: bool = False,
    model=None,
    tokenizer=None,
    strict: bool = False,
) -> dict:
    """Fit α for one target and write GENE2 (a copy of the gene with `coefficients`) to `out`.

    `layers`: None → the gene's selection; "all" → every layer; or a list of groups. With `out`
    None nothing is written (the Python API's dry run). `model`/`tokenizer`: an already loaded
    target (skips loading). Returns the coefficients record.
    """
    from safegene.apply import check_provenance
    from safegene.attach import read_gene_modules
    from safegene.select import (
        _answer,
        _check_out,
        _own_or_given,
        check_family,
        copy_gene,
        data_hash,
        load_records,
        read_meta,
        refusal_targets,
        take,
    )

    t0 = time.perf_counter()
    if steps < 1:
        raise SafeGeneError(f"--steps must be at least 1 (got {steps})")
    if not (math.isfinite(lr) and lr > 0) or not (math.isfinite(lam) and lam >= 0):
        raise SafeGeneError(
            f"--lr must be a positive number and --lam a non-negative one (got {lr}, {lam})"
        )
    gene = Path(gene)
    if out is not None:
        _check_out(out, force, inputs=(gene, target, adapter, aligned))
    modules = read_gene_modules(gene)
    meta = read_meta(gene)
    check_family(gene, target, modules)
    check_provenance(meta, target, adapter, strict=strict)  # warning, or an error with strict
    groups, per_module_kind = selected_groups(
        meta, modules, per_module_kind=per_module_kind, layers=layers
    )
    harm = take(load_records(harmful, split="harmful"), shots, seed=seed, name="harmful")
    tsk = take(load_records(task, split="task"), shots, seed=seed, name="task")
    ben = (
        take(load_records(benign, split="benign"), shots, seed=seed, name="benign")
        if benign
        else []
    )
    refusals = refusal_targets(
        harm,
        gene_dir=gene,
        aligned=aligned,
        device=device,
        dtype=dtype,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    answers = [_answer(r) for r in tsk]
    if model is None:
        from safegene.models import load_model

        model, tokenizer = load_model(target, adapter, device=device, dtype=dtype)
    keep = (
        _own_or_given(ben, target, adapter, model, tokenizer, max_new_tokens, progress)
        if ben
        else []
    )
    complied = complied_shots(
        [r["prompt"] for r in harm],
        target,
        adapter,
        model,
        tokenizer,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    if complied < len(harm) / 4:
        name = f"{target} + {adapter}" if adapter else str(target)
        warnings.warn(
            f"the target ({name}) already refuses {len(harm) - complied} of its {len(harm)} "
            "harmful shots: calibration sees little of the harm it is to correct; give harmful "
            "prompts this model answers",
            SafeGeneWarning,
            stacklevel=2,
        )
    t_fit = time.perf_counter()
    fit = fit_alpha(
        model,
        tokenizer,
        modules,
        groups,
        harmful=[(r["prompt"], t) for r, t in zip(harm, refusals)],
        task=[(r["prompt"], a) for r, a in zip(tsk, answers)],
        keep=[(r["prompt"], t) for r, t in zip(ben, keep)],
        per_module_kind=per_module_kind,
        lam=lam,
        steps=steps,
        lr=lr,
        patience=patience,
        init=init,
        task_weight=task_weight,
        refusal_tokens=refusal_tokens,
        task_tokens=task_tokens,
        task_margin=task_margin,
        refusal_floor=refusal_floor,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    record = {
        "groups": fit["alpha"],
        "coefficients": to_coefficients(fit["alpha"]),
        "per_module_kind": per_module_kind,
        "target": {"path": str(target), "adapter": str(adapter) if adapter else None},
        "data": {
            "harmful": {
                "path": str(harmful),
                "n": len(harm),
                "sha256": data_hash(harm),
                "complied": complied,
            },
            "task": {"path": str(task), "n": len(tsk), "sha256": data_hash(tsk)},
            "benign": {"path": str(benign), "n": len(ben), "sha256": data_hash(ben)}
            if ben
            else None,
            "refusal_targets_sha256": data_hash([{"t": t} for t in refusals]),
        },
        "fit": {
            "shots": shots,
            "lam": lam,
            "steps": steps,
            "lr": lr,
            "patience": patience,
            "init": init,
            "task_weight": task_weight,
            "refusal_tokens": refusal_tokens,
            "task_tokens": task_tokens,
            "task_margin": task_margin,
            "refusal_floor": refusal_floor,
            "seed": seed,
            "steps_run": fit["steps_run"],
            "loss_initial": fit["initial"],
            "loss_final": fit["final"],
            "loss_curve": fit["curve"],
            "selection": "all" if layers == "all" else (list(layers) if layers else "gene"),
        },
        "seconds": {
            "fit": round(time.perf_counter() - t_fit, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
    }
    if out is not None:
        meta = dict(meta)
        meta["coefficients"] = record["coefficients"]
        meta["calibration"] = {k: v for k, v in record.items() if k != "coefficients"}
        copy_gene(gene, Path(out), meta, force)
    return record
