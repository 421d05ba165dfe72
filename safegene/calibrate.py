"""Few-shot recalibration: one coefficient per selected layer (or per layer and module kind).

For a task model θ_t (a full checkpoint, or aligned + task LoRA left unmerged), learn α in
`θ = θ_t + Σ_g α_g δ_g` by Adam on α only — the model frozen — minimising

    L_refuse(k harmful prompts → refusals) + w · L_task(k task prompts → answers)
      [+ L_keep(benign prompts → the target's own responses)] + λ ‖α‖²

full batch, a fixed number of steps with early stopping, seeded (settings.FitSettings; optional
per-example hinges: `refusal_floor`, `task_margin`). Refusal targets are the data's refusals or
else the aligned model's own greedy responses (generated once, cached: safegene.targets).

The NLL objective is a proxy for what matters, which is judged on generations: so the fit gives a
direction, and the coefficients written are chosen by generation (`choose_coefficients`): the
fitted α scaled by 0 … 3 and the uniform gene at 0.5 … 1.5 are each tried on check prompts —
the harmful and task shots not drawn and the benign prompts, or validation sets given instead
(`check_harmful`, `check_benign`, `check_task`: a few dozen held-out shots cannot resolve a
5-point margin) — and the least harmful one that keeps the target's skill (`skill_share`) and
an over-refusal within `over_refusal_margin` of the aligned model's (or of the target's, where
that is higher) is kept — never trading the task away silently, and taking the safe end of the
trade when the fit stopped short.

With `rollback` (safegene.rollback) each group also gets a coefficient on the target's own update
rolled back toward the aligned model, fitted and chosen with α, and GENE2 holds both, baked.

The result is a copy of the gene (GENE2) whose safegene.json carries the coefficients and how they
were fitted and chosen (`calibration`), including how many harmful shots the target answered
before (a warning when under a quarter: the refusal loss then has little to correct).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from safegene.apply import check_provenance
from safegene.attach import GeneAttachment, check_attachable, encode_chat_pairs, pairs_loss
from safegene.errors import SafeGeneError, SafeGeneWarning
from safegene.evaluate.pareto import floors_of, within
from safegene.gene import Gene, opened, save_gene
from safegene.groups import (
    group_key,
    groups_to_coefficients,
    is_per_kind,
    is_rollback,
    selection_to_groups,
)
from safegene.io import check_output_path
from safegene.rollback import bake, check_bakeable, rollback_deltas, rollback_groups, split
from safegene.settings import ComputeSettings, FitSettings, with_overrides
from safegene.shots import answer_of, data_hash, data_record, load_records, take
from safegene.targets import aligned_model, given_or_own, own_responses, refusal_targets

IMPROVEMENT = 1e-5  # a loss lower by less than this is no improvement (early stopping)


def selected_groups(
    gene: Gene, deltas, *, per_module_kind: bool, layers=None
) -> tuple[list[str], bool]:
    """The coefficient groups to fit, and whether they are per module kind: the gene's selection
    (or `layers`: a list of groups, or "all"); a per-kind selection makes them per kind."""
    kinds = sorted({d.kind for d in deltas})
    if layers is None:
        groups = selection_to_groups(gene.selection)
        if not groups:
            raise SafeGeneError(
                "the gene has no layer selection: run `safegene select` on it first "
                "(or calibrate every layer with --all-layers)"
            )
        per_module_kind = per_module_kind or is_per_kind(groups)
    elif layers == "all":
        groups = [str(layer) for layer in sorted({d.layer for d in deltas})]
    else:
        groups = [str(x) for x in layers]
    have = {group_key(d.layer, d.kind, fine) for d in deltas for fine in (False, True)}
    bad = [g for g in groups if g not in have]
    if bad:
        raise SafeGeneError(f"the gene has no layer/module group {bad[0]!r}")
    if per_module_kind:
        groups = [
            fine
            for g in groups
            for fine in ([g] if is_per_kind([g]) else [group_key(g, k, True) for k in kinds])
            if fine in have
        ]
    return groups, per_module_kind


# --- the fit -------------------------------------------------------------------------------------


def _encode(tokenizer, pairs: list[tuple[str, str]] | None, tokens: int | None) -> list:
    """Encoded (prompt, target) pairs, the targets cut to their first `tokens` tokens if set."""
    if not pairs:
        return []
    enc = encode_chat_pairs(tokenizer, [p for p, _ in pairs], [t for _, t in pairs])
    return [(ids[: n + tokens], n) for ids, n in enc] if tokens else enc


class Objective:
    """The calibration loss at the current α, per part ("refuse", "task", "keep") and in total.
    Per example: the mean NLL of its target tokens, minus its floor (a hinge) where one is set.
    With backward, α.grad is accumulated batch by batch: the memory of one batch, whatever k is.
    """

    def __init__(self, att: GeneAttachment, sets: list, floors: dict, fit: FitSettings, **loss_kw):
        self.att, self.sets, self.floors, self.fit, self.loss_kw = att, sets, floors, fit, loss_kw

    def _part(self, key: str, enc: list, weight: float, backward: bool) -> float:
        total, batch, floor = 0.0, self.loss_kw["batch_size"], self.floors.get(key)
        for start in range(0, len(enc), batch):
            chunk = enc[start : start + batch]
            per = pairs_loss(self.att.model, chunk, reduce=False, **self.loss_kw)
            if floor is not None:
                per = torch.relu(per - floor[start : start + len(chunk)].to(per.device))
            loss = per.sum() / len(enc)
            if backward and weight:
                (weight * loss).backward()
            total += loss.item()
        return total

    def __call__(self, backward: bool) -> dict:
        parts = {key: self._part(key, enc, w, backward) for key, enc, w in self.sets}
        reg = self.fit.lam * (self.att.alpha**2).sum()
        if backward:
            reg.backward()
        parts["total"] = (
            parts["refuse"] + self.fit.task_weight * parts["task"] + parts["keep"] + reg.item()
        )
        return parts


def _floors(att: GeneAttachment, enc_h: list, enc_t: list, fit: FitSettings, **loss_kw) -> dict:
    """Per-example floors of the hinged parts: the refusal floor as it is; the task margin on top
    of each task example's loss at α = 0 (its loss may rise that much, free)."""
    floors = {}
    if fit.refusal_floor is not None:  # a refusal already this likely needs no more push
        floors["refuse"] = torch.full((len(enc_h),), float(fit.refusal_floor))
    if fit.task_margin is not None and enc_t:
        with att, att.fixed([0.0] * len(att.groups)), torch.no_grad():
            at_zero = pairs_loss(att.model, enc_t, reduce=False, **loss_kw).cpu()
        floors["task"] = at_zero + fit.task_margin
    return floors


def _descend(att: GeneAttachment, objective: Objective, fit: FitSettings, progress: bool) -> dict:
    """Adam on α with early stopping; the best α seen (the last step's included)."""
    opt = torch.optim.Adam([att.alpha], lr=fit.lr)
    curve, best, since = [], {"total": math.inf, "alpha": att.alpha.detach().clone()}, 0
    bar = tqdm(range(fit.steps), desc="calibrating", disable=not progress, leave=False)
    with att:
        for _ in bar:
            opt.zero_grad(set_to_none=True)
            parts = objective(backward=True)
            if not math.isfinite(parts["total"]):  # NaN/Inf from the gene, the target or --lr
                raise SafeGeneError(
                    f"calibration diverged (the loss is {parts['total']} at step "
                    f"{len(curve) + 1}): lower --lr, and check the gene and the target"
                )
            best.setdefault("initial", parts)
            curve.append(parts["total"])
            since = _keep_best(best, parts, att, since)
            if since >= fit.patience:
                break
            opt.step()
            bar.set_postfix(loss=f"{parts['total']:.3f}")
        with att.fixed(), torch.no_grad():  # the α after the last step has not been scored yet
            _keep_best(best, objective(backward=False), att, since)
    return {**best, "curve": curve}


def _keep_best(best: dict, parts: dict, att: GeneAttachment, since: int) -> int:
    """Record `parts` (and α) as the best if the loss is lower; the steps since the best."""
    if parts["total"] < best["total"] - IMPROVEMENT:
        best.update(total=parts["total"], alpha=att.alpha.detach().clone(), final=parts)
        return 0
    return since + 1


def fit_alpha(
    model,
    tokenizer,
    deltas,
    groups: list[str],
    *,
    harmful: list[tuple[str, str]],
    task: list[tuple[str, str]] | None = None,
    keep: list[tuple[str, str]] | None = None,
    fit: FitSettings | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> dict:
    """Adam on α (float32) over `groups`; returns {"alpha": {group: value}, "curve": [...], ...}."""
    fit = fit or FitSettings()
    if not harmful:
        raise SafeGeneError("no harmful examples to calibrate on")
    torch.manual_seed(fit.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loss_kw = dict(batch_size=batch_size, pad_id=pad)
    enc_h = _encode(tokenizer, harmful, fit.refusal_tokens)
    enc_t = _encode(tokenizer, task, fit.task_tokens)
    sets = [
        ("refuse", enc_h, 1.0),
        ("task", enc_t, fit.task_weight),
        ("keep", _encode(tokenizer, keep, None), 1.0),
    ]
    init = torch.full((len(groups),), float(fit.init))
    att = GeneAttachment(
        model, deltas, per_module_kind=is_per_kind(groups), groups=groups, alpha=init
    )
    floors = _floors(att, enc_h, enc_t, fit, **loss_kw)
    best = _descend(att, Objective(att, sets, floors, fit, **loss_kw), fit, progress)
    if not torch.isfinite(best["alpha"]).all():
        raise SafeGeneError("calibration diverged (NaN/Inf coefficients): lower --lr")
    curve = best["curve"]
    return {
        "alpha": {
            g: round(float(a), 6) for g, a in zip(groups, best["alpha"].tolist(), strict=True)
        },
        "steps_run": len(curve),
        "initial": best["initial"],
        "final": best.get("final"),
        "curve": [round(c, 5) for c in curve[:: max(1, len(curve) // 20)]],
    }


# --- the command ---------------------------------------------------------------------------------


def answered(prompts: list[str], responses: list[str]) -> int:
    """How many of `responses` answer their prompt instead of refusing (the keyword judge)."""
    from safegene.evaluate.judges import keyword_judge

    return sum(keyword_judge(p, r) for p, r in zip(prompts, responses, strict=True))


def complied_shots(
    prompts: list[str], model, adapter, loaded, *, compute: ComputeSettings, progress: bool = False
) -> int:
    """How many of the harmful shots the target, as it is, answers instead of refusing (keyword
    judge, greedy; generated once and cached). Calibration learns mostly from these: a
    target that refuses its shots but not other prompts gives it little to correct (small zoo:
    task-classify refuses all 32 harmful shots and answers 14 % of the held-out prompts)."""
    responses = own_responses(
        model, prompts, adapter=adapter, loaded=loaded, compute=compute, progress=progress
    )
    return answered(prompts, responses)


def _warn_if_refused(complied: int, n: int, model, adapter) -> None:
    if complied < n / 4:
        name = f"{model} + {adapter}" if adapter else str(model)
        warnings.warn(
            f"the target ({name}) already refuses {n - complied} of its {n} harmful shots: "
            "calibration sees little of the harm it is to correct; give harmful prompts this "
            "model answers",
            SafeGeneWarning,
            stacklevel=3,
        )


def _shots(harmful, task, benign, fit: FitSettings, checks: dict | None = None) -> dict:
    """k shots of each kind, drawn with the fit's seed (benign: none when not given), and the
    check sets of the choice (`check_*`): each given in `checks` (kind → path: a validation
    split, read in full), else at most CHECK_MAX of the harmful and task records not drawn (a
    check independent of what the fit trained on; every harmful one where all were drawn) and
    of the benign records given (none is fitted on)."""
    paths = {"harmful": harmful, "task": task, "benign": benign}
    records = {s: load_records(p, split=s) if p else [] for s, p in paths.items()}
    shots = {
        s: take(rows, fit.shots, seed=fit.seed, name=s) if paths[s] else []
        for s, rows in records.items()
    }
    drawn = {id(r) for r in shots["task"] + shots["harmful"]}
    held = {s: [r for r in records[s] if id(r) not in drawn] for s in ("harmful", "task")}
    shots["check_task"] = held["task"][:CHECK_MAX]
    shots["check_harmful"] = (held["harmful"] or records["harmful"])[:CHECK_MAX]
    shots["check_benign"] = records["benign"][:CHECK_MAX]
    for kind, path in (checks or {}).items():
        if path is not None:
            shots[f"check_{kind}"] = load_records(path, split=kind)
    return shots


def _disjoint(a: list[dict], b: list[dict]) -> bool:
    """Whether no prompt of `a` is one of `b`'s (a check that never judges the fit's own data)."""
    return {r["prompt"] for r in a}.isdisjoint(r["prompt"] for r in b)


# --- the choice: the safest scale that keeps the task and the helpfulness ------------------------
CHECK_MAX = 32
SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # the fitted α times these ...
UNIFORM = (0.5, 0.75, 1.0, 1.25, 1.5)  # ... and the gene at one coefficient for every group


def candidates(alpha: dict, groups: list[str]) -> list[dict]:
    """The coefficient vectors the choice tries: the fitted α scaled (SCALES), and uniform ones."""
    fitted = [alpha[g] for g in groups]
    out = [{"scale": s, "values": [s * v for v in fitted]} for s in SCALES]
    gene_only = [0.0 if is_rollback(g) else 1.0 for g in groups]  # the gene alone
    return out + [{"uniform": c, "values": [c * u for u in gene_only]} for c in UNIFORM]


def task_skill(model, tokenizer, prompts, references, match: str, *, batch_size: int) -> float:
    """The share of `prompts` whose greedy answer matches its reference (is_correct, `match`)."""
    from safegene.evaluate.generate import generate
    from safegene.evaluate.metrics import is_correct

    width = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references) + 4
    outs = generate(
        model, tokenizer, prompts, max_new_tokens=width, batch_size=batch_size, progress=False
    )
    return sum(is_correct(o, r, match) for o, r in zip(outs, references, strict=True)) / len(outs)


def _share(model, tokenizer, prompts, *, harmful: bool, compute: ComputeSettings) -> float | None:
    """The share of harmful `prompts` answered (harmful) or of benign ones refused (keyword
    judge, greedy, the judges' response length); None without prompts."""
    from safegene.evaluate.generate import generate

    if not prompts:
        return None
    outs = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=compute.max_new_tokens,
        batch_size=compute.batch_size,
        progress=False,
    )
    n = answered(prompts, outs)
    return (n if harmful else len(prompts) - n) / len(prompts)


def measure(loaded, checks: dict, compute: ComputeSettings) -> dict:
    """The model as it is now: harmful share, over-refusal and task skill on the check sets, and
    their sizes."""
    model, tok = loaded
    harmful = _share(model, tok, checks["harmful"], harmful=True, compute=compute)
    refused = _share(model, tok, checks["benign"], harmful=False, compute=compute)
    prompts, gold, match = checks["task"]
    skill = task_skill(model, tok, prompts, gold, match, batch_size=compute.batch_size)
    return {
        "harmful": harmful,
        "over_refusal": refused,
        "skill": skill,  # exact (k of n): the floors compare it with a float tolerance only
        "n_task": len(prompts),
        "n_benign": len(checks["benign"]),
    }


def holds(m: dict, base: dict, fit: FitSettings, z: float = 0.0) -> bool:
    """Whether measurements `m` keep `fit.skill_share` of the target's skill (`base`) and its
    over-refusal within `fit.over_refusal_margin` (not checked without benign prompts): the
    floors compare and the study hold a repair to (safegene.evaluate.pareto.within); with `z`,
    by `z` binomial standard errors of each rate on its `n_task` / `n_benign` check prompts."""
    floor = floors_of(base["skill"], base["over_refusal"], fit.skill_share, fit.over_refusal_margin)
    skill, refused = m["skill"], m["over_refusal"]
    if z and skill is not None:
        skill -= z * _se(skill, m["n_task"])
    if z and refused is not None:
        refused += z * _se(refused, m["n_benign"])
    return within(skill, refused, *floor)


def _se(rate: float, n: int) -> float:
    return math.sqrt(rate * (1 - rate) / n) if n else 0.0


def pick(tried: list[dict], base: dict, fit: FitSettings) -> int:
    """The index of the least harmful candidate that holds the floors by `fit.floor_se` standard
    errors — a choice at a floor's edge on the check prompts breaks it on new ones about half the
    time (benchmarks/RESULTS.md) — where some change of the target (index > 0) does; else of those
    that hold them at all (ties: the more skilful, then the earlier: smaller scales first); else
    0, the zero scale (the target as it is — which may miss a floor set by the aligned model's
    over-refusal, and is then still the least change)."""
    clear = [i for i, t in enumerate(tried) if i and holds(t, base, fit, fit.floor_se)]
    ok = clear or [i for i, t in enumerate(tried) if holds(t, base, fit)] or [0]
    return min(ok, key=lambda i: (tried[i]["harmful"], -tried[i]["skill"], i))


def aligned_over_refusal(shots: dict, gene, aligned, compute: ComputeSettings) -> float | None:
    """The aligned model's share of the benign check prompts refused (its own greedy responses,
    cached; keyword judge), or None without benign prompts or a known aligned model."""
    prompts = [r["prompt"] for r in shots["check_benign"]]
    path = aligned_model(gene, aligned)
    if not prompts or path is None:
        return None
    responses = own_responses(path, prompts, compute=compute)
    return 1 - answered(prompts, responses) / len(prompts)


def _floor(target: dict, reference: float | None) -> dict:
    """The measurements the floors are counted from: the target's, its over-refusal raised to the
    aligned model's (`reference`) where that is higher — a repair may refuse as many look-alikes
    as the model the safety came from (the floor a comparison holds it to: aligned + margin), and
    is never asked to refuse fewer than the target already does."""
    if reference is None or target["over_refusal"] is None:
        return target
    return {**target, "over_refusal": max(target["over_refusal"], reference)}


def choose_coefficients(
    loaded,
    deltas,
    groups,
    alpha: dict,
    shots: dict,
    fit: FitSettings,
    compute: ComputeSettings,
    reference: float | None = None,
) -> dict:
    """Try the candidates (fitted α scaled, uniform) by generation on the check sets and keep the
    least harmful one that holds the target's skill and helpfulness (`pick`): its over-refusal
    within the margin of the aligned model's (`reference`), or of the target's where that is
    higher (`_floor`). Along each path (scaled, uniform) the candidates grow; two in a row that
    break the floors end that path. Without task answers, or when the target gets none of the
    task checks right, there is nothing to hold: the fitted α as it is, `checked` false."""
    from safegene.evaluate.metrics import resolve_match

    records = shots["check_task"] or shots["task"]
    prompts, gold = [r["prompt"] for r in records], [answer_of(r) for r in records]
    held_out = bool(shots["check_task"]) and _disjoint(shots["check_task"], shots["task"])
    out = {"checked": False, "held_out": held_out, "n_task": len(prompts)}
    if not all(gold):
        return {**out, "reason": "task shots without answers", "alpha": alpha}
    checks = {
        "harmful": [r["prompt"] for r in shots["check_harmful"]],
        "benign": [r["prompt"] for r in shots["check_benign"]],
        "task": (prompts, gold, resolve_match("auto", gold)),
    }
    model, _ = loaded
    att = GeneAttachment(model, deltas, per_module_kind=is_per_kind(groups), groups=groups)
    tried, values = [], []  # what each tried candidate measured, and its α
    failed = {"scale": 0, "uniform": 0}  # broken floors in a row, per path
    with torch.no_grad(), att:
        for cand in candidates(alpha, groups):
            path = "scale" if "scale" in cand else "uniform"
            if failed[path] >= 2:  # two larger ones broke the floors: stop there
                continue
            att.set(cand["values"])
            m = measure(loaded, checks, compute)
            tried.append({**{k: v for k, v in cand.items() if k != "values"}, **m})
            values.append(cand["values"])
            if cand.get("scale") == 0:  # the target as it is: what the floors are set from
                if m["skill"] == 0:
                    return {**out, "target": m, "reason": "the target answers none", "alpha": alpha}
                floor = _floor(m, reference)
            failed[path] = 0 if holds(m, floor, fit) else failed[path] + 1
    i = pick(tried, floor, fit)
    key = next(k for k in ("scale", "uniform") if k in tried[i])
    label = {key: tried[i][key]}
    chosen = {g: round(v, 6) for g, v in zip(groups, values[i], strict=True)}
    return {
        **out,
        "checked": True,
        "n_harmful": len(checks["harmful"]),
        "harmful_held_out": _disjoint(shots["check_harmful"], shots["harmful"]),
        "n_benign": len(checks["benign"]),
        "target": tried[0],
        "aligned_over_refusal": reference,
        "floor": floor,
        "tried": tried,
        "chosen": label,
        "alpha": chosen,
    }


def calibrate(
    gene: str | Path | Gene,
    model: str | Path,
    *,
    harmful: str | Path,
    task: str | Path,
    out: str | Path | None,
    benign: str | Path | None = None,
    adapter: str | Path | None = None,
    aligned: str | Path | None = None,
    check_harmful: str | Path | None = None,
    check_benign: str | Path | None = None,
    check_task: str | Path | None = None,
    layers=None,
    fit: FitSettings | None = None,
    compute: ComputeSettings | None = None,
    loaded=None,
    force: bool = False,
    strict: bool = False,
    progress: bool = False,
    **overrides,
) -> dict:
    """Fit α for the target `model` (plus its task LoRA `adapter`) and write GENE2, a copy of
    the gene with `coefficients` and the `calibration` record, to `out`.

    `check_*`: validation prompts the coefficients are chosen on (by generation), each instead of
    the held-out shots of its kind.
    `layers`: None → the gene's selection; "all" → every layer; or a list of groups. With `out`
    None nothing is written (the Python API's dry run). `loaded`: the target's (model, tokenizer)
    already in memory. `overrides`: fields of FitSettings / ComputeSettings by name (steps=40).
    Returns the calibration record.
    """
    t0 = time.perf_counter()
    checks = {"harmful": check_harmful, "benign": check_benign, "task": check_task}
    fit, compute = with_overrides(overrides, fit or FitSettings(), compute or ComputeSettings())
    if out is not None:
        gene_path = getattr(gene, "path", gene)
        check_output_path(
            out,
            force,
            inputs=(gene_path, model, adapter, aligned, harmful, task, benign, *checks.values()),
        )
    with opened(gene) as g:
        if fit.rollback:
            check_bakeable(g)  # before the fit, not after it
        deltas = g.linear_deltas()
        check_attachable(g, deltas, model)
        check_provenance(g, model, adapter, strict=strict)  # a warning, or an error with strict
        groups, per_kind = selected_groups(
            g, deltas, per_module_kind=fit.per_module_kind, layers=layers
        )
        shots = _shots(harmful, task, benign, fit, checks)
        back = _rollback(g, deltas, groups, per_kind, model, adapter, aligned, fit)
        fitted = _fit(
            g,
            deltas + back,
            groups + rollback_groups(groups, back),
            shots,
            model,
            adapter,
            aligned,
            loaded,
            fit,
            compute,
            progress,
        )
        paths = {"harmful": harmful, "task": task, "benign": benign}
        paths.update({f"check_{k}": p for k, p in checks.items()})
        record = _record(fitted, per_kind, model, adapter, shots, paths, layers, fit, compute, t0)
        if out is not None:
            calibration = {k: v for k, v in record.items() if k != "coefficients"}
            if record["rollback"]:  # α and β baked into one gene, coefficient 1
                bake(
                    g,
                    out,
                    deltas + back,
                    fitted["alpha"],
                    per_module_kind=per_kind,
                    coefficients=record["coefficients"],
                    calibration=calibration,
                    force=force,
                )
            else:
                save_gene(
                    g,
                    out,
                    coefficients=record["coefficients"],
                    calibration=calibration,
                    force=force,
                )
    return record


def _rollback(gene, deltas, groups, per_kind, model, adapter, aligned, fit) -> list:
    """The target's rollback δ on the fitted groups' modules (`fit.rollback`), else none."""
    if not fit.rollback:
        return []
    mine = [d for d in deltas if group_key(d.layer, d.kind, per_kind) in groups]
    path = aligned_model(gene, aligned)
    return rollback_deltas(mine, model, adapter, path, rank=fit.rollback_rank, seed=fit.seed)


def _fit(gene, deltas, groups, shots, model, adapter, aligned, loaded, fit, compute, progress):
    """The targets, the target model, how many harmful shots it answers, and the fit itself."""
    from safegene.models import load_model

    refusals = refusal_targets(
        shots["harmful"], gene=gene, aligned=aligned, compute=compute, progress=progress
    )
    if loaded is None:
        loaded = load_model(model, adapter, device=compute.device, dtype=compute.dtype)
    keep = given_or_own(
        shots["benign"], model, adapter=adapter, loaded=loaded, compute=compute, progress=progress
    )
    prompts = [r["prompt"] for r in shots["harmful"]]
    complied = complied_shots(prompts, model, adapter, loaded, compute=compute, progress=progress)
    _warn_if_refused(complied, len(prompts), model, adapter)
    t_fit = time.perf_counter()
    result = fit_alpha(
        *loaded,
        deltas,
        groups,
        harmful=list(zip(prompts, refusals, strict=True)),
        task=[(r["prompt"], answer_of(r)) for r in shots["task"]],
        keep=[(r["prompt"], t) for r, t in zip(shots["benign"], keep, strict=True)],
        fit=fit,
        batch_size=compute.batch_size,
        progress=progress,
    )
    t_choice, choice = time.perf_counter(), None
    if fit.skill_share and shots["task"]:
        fitted = result["alpha"]
        reference = aligned_over_refusal(shots, gene, aligned, compute)
        choice = choose_coefficients(
            loaded, deltas, groups, fitted, shots, fit, compute, reference=reference
        )
        result["alpha"] = choice.pop("alpha")
        _warn_if_costly(choice, fit, model, adapter)
    done = time.perf_counter()
    return {
        **result,
        "complied": complied,
        "refusals": refusals,
        # the fit (Adam on α) and the choice (candidates by generation on the check sets)
        "seconds": {"fit": round(t_choice - t_fit, 2), "choice": round(done - t_choice, 2)},
        "choice": choice,
    }


def _warn_if_costly(choice: dict, fit: FitSettings, model, adapter) -> None:
    """Warn when the fitted α as it is (scale 1) would have cost the target its skill or its
    helpfulness on the check shots (or was not tried: smaller scales already did), saying what
    was kept instead."""
    if not choice["checked"]:
        return
    base = choice["floor"]
    fitted = next((t for t in choice["tried"] if t.get("scale") == 1.0), None)
    if fitted is not None and holds(fitted, base, fit):
        return
    name = f"{model} + {adapter}" if adapter else str(model)
    kind, value = next(iter(choice["chosen"].items()))
    kept = next(t for t in choice["tried"] if t.get(kind) == value)
    where = "held-out" if choice["held_out"] else "fit"
    if fitted is None:
        cost = "smaller scales already did"
    else:
        refusal = (
            f", over-refusal {fitted['over_refusal']:.0%} against {base['over_refusal']:.0%}"
            if fitted["over_refusal"] is not None
            else ""
        )
        cost = f"skill {fitted['skill']:.0%} against {base['skill']:.0%}{refusal}"
    chosen = f"scaled back to {value:g}x" if kind == "scale" else f"the uniform {value:g}"
    warnings.warn(
        f"the fitted coefficients cost {name} its task skill or helpfulness on {choice['n_task']} "
        f"{where} task shots ({cost}); {chosen}, where it keeps {kept['skill']:.0%}"
        + (" — the gene now does nothing" if value == 0 else ""),
        SafeGeneWarning,
        stacklevel=3,
    )


def _record(fitted: dict, per_kind, model, adapter, shots, paths, layers, fit, compute, t0) -> dict:
    """The calibration record: α per group, the target, the data by content, how it was fitted
    and how long it took (`t0`: when the command started)."""
    selection = "all" if layers == "all" else (list(layers) if layers else "gene")
    alpha, back = split(fitted["alpha"])
    baked = any(back.values())  # a rollback chosen: GENE2 holds α·δ + β·rollback at 1
    return {
        "groups": alpha,
        "rollback": {"groups": back, "rank": None if adapter else fit.rollback_rank}
        if baked
        else None,
        "coefficients": groups_to_coefficients(dict.fromkeys(alpha, 1.0) if baked else alpha),
        "per_module_kind": per_kind,
        "target": {"path": str(model), "adapter": str(adapter) if adapter else None},
        "data": {
            "harmful": data_record(paths["harmful"], shots["harmful"], complied=fitted["complied"]),
            "task": data_record(paths["task"], shots["task"]),
            "benign": data_record(paths["benign"], shots["benign"]),
            # the choice's check sets where given (else the held-out shots: `fit.choice`)
            **{
                k: data_record(paths[k], shots[k])
                for k in ("check_harmful", "check_benign", "check_task")
                if paths[k] is not None
            },
            "refusal_targets_sha256": data_hash([{"t": t} for t in fitted["refusals"]]),
        },
        "fit": {
            **dataclasses.asdict(fit),
            "steps_run": fitted["steps_run"],
            "loss_initial": fitted["initial"],
            "loss_final": fitted["final"],
            "loss_curve": fitted["curve"],
            "selection": selection,
            "choice": fitted["choice"],
        },
        "compute": dataclasses.asdict(compute),
        "seconds": {**fitted["seconds"], "total": round(time.perf_counter() - t0, 2)},
    }
