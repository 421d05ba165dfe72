"""Data-aware layer selection: which layers' δ transfer safety without disturbing the model.

Per group (a layer, or a (layer, module kind) pair: safegene.groups) two scores, in loss units:
- `gain`: how much adding that group's δ lowers the refusal loss on harmful prompts
  (targets: the data's refusals, or the aligned model's own responses: safegene.targets);
- `interference`: how much it raises the loss on benign prompts (targets: the data's responses,
  or the scored model's own responses) plus the task loss when task data is given.
`score = gain − interference`. Method `attribution` (default) takes the gain to first order: the
gradient with respect to the group's coefficient at 0, i.e. ⟨−∇_W L, δ⟩, one backward pass. The
interference is always measured exactly (the group applied alone at coefficient 1, one forward pass
per group): a task model sits at a minimum of its task loss, where the first-order term is zero and
the damage δ does is second order, so a gradient would report no interference at all. Method
`ablation` measures the gain exactly too.

Policies keep the best-scoring groups: top-k, a score threshold, or a parameter budget (a fraction
of the gene's parameters). The scores, the settings, the data hashes and the selection are written
to the gene's `safegene.json` (`scores`, `selection`, `selection_info`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from safegene.attach import GeneAttachment, check_attachable, encode_chat_pairs, pairs_loss
from safegene.errors import SafeGeneError
from safegene.gene import GENE_FILE, Gene, opened, save_gene
from safegene.groups import group_order, groups_to_selection, parse_group
from safegene.io import check_output_path
from safegene.io.atomic import claimed
from safegene.settings import (
    SELECT_COMPUTE,
    ComputeSettings,
    SelectSettings,
    check_method,
    check_policy,
    with_overrides,
)
from safegene.shots import answer_of, data_record, load_records, take
from safegene.targets import given_or_own, model_id, refusal_targets

SCORE_KEYS = ("gain", "interference", "task", "score", "n_params")

# --- scores --------------------------------------------------------------------------------------


def _loss_grad(
    att: GeneAttachment, encoded, *, batch_size: int, pad_id: int
) -> tuple[float, torch.Tensor]:
    """Mean target loss and its gradient with respect to α, batch by batch (bounded memory)."""
    n = len(encoded)
    total = 0.0
    grad = torch.zeros_like(att.alpha)
    for start in range(0, n, batch_size):
        chunk = encoded[start : start + batch_size]
        loss = pairs_loss(att.model, chunk, batch_size=batch_size, pad_id=pad_id) * (len(chunk) / n)
        (g,) = torch.autograd.grad(loss, att.alpha)
        grad += g
        total += loss.item()
    return total, grad


@torch.no_grad()
def _loss(att: GeneAttachment, encoded, *, batch_size: int, pad_id: int) -> float:
    return float(pairs_loss(att.model, encoded, batch_size=batch_size, pad_id=pad_id))


def _one_at_a_time(
    att: GeneAttachment, enc: dict, keys: list[str], *, desc: str, progress: bool, **loss_kw
) -> tuple[dict, dict]:
    """(loss at α = 0, loss change with each group alone at α = 1) on each data set in `keys`."""
    from tqdm.auto import tqdm

    n = len(att.groups)
    with att.fixed():
        base = {k: _loss(att, enc[k], **loss_kw) for k in keys}
        deltas = {k: torch.zeros(n) for k in keys}
        for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
            att.set(torch.nn.functional.one_hot(torch.tensor(i), n).float())
            for k in keys:
                deltas[k][i] = _loss(att, enc[k], **loss_kw) - base[k]
    return base, deltas


def _group_scores(att: GeneAttachment, deltas: dict) -> dict[str, dict]:
    zero = torch.zeros(len(att.groups))
    scores = {}
    for i, g in enumerate(att.groups):
        gain = -float(deltas["harmful"][i])
        inter = float(deltas.get("benign", zero)[i])
        tsk = float(deltas.get("task", zero)[i])
        values = (gain, inter, tsk, gain - inter - tsk, int(att.n_params[i]))
        scores[g] = dict(zip(SCORE_KEYS, values, strict=True))
    return scores


def score_groups(
    model,
    tokenizer,
    deltas,
    *,
    harmful: list[tuple[str, str]],
    benign: list[tuple[str, str]] | None = None,
    task: list[tuple[str, str]] | None = None,
    method: str = "attribution",
    per_module_kind: bool = True,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, dict]:
    """{group: {"gain", "interference", "task", "score", "n_params"}} for every group of the gene
    (`deltas`: Gene.linear_deltas()), and "_base_loss": each data set's loss at α = 0.

    `harmful`, `benign`, `task` are (prompt, target) pairs. Loss units (mean NLL per target token).
    """
    check_method(method)
    if not harmful:
        raise SafeGeneError("no harmful prompts to score the layers on")
    loss_kw = dict(
        batch_size=batch_size,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )
    sets = {"harmful": harmful, "benign": benign or [], "task": task or []}
    enc = {
        k: encode_chat_pairs(tokenizer, [p for p, _ in v], [t for _, t in v])
        for k, v in sets.items()
        if v
    }
    att = GeneAttachment(model, deltas, per_module_kind=per_module_kind)
    base, changes = {}, {}
    exact = [k for k in enc if method == "ablation" or k != "harmful"]
    with att:
        if method == "attribution":
            base["harmful"], changes["harmful"] = _loss_grad(att, enc["harmful"], **loss_kw)
        if exact:
            desc = "ablation" if method == "ablation" else "interference"
            measured = _one_at_a_time(att, enc, exact, desc=desc, progress=progress, **loss_kw)
            base.update(measured[0])
            changes.update(measured[1])
    return {**_group_scores(att, changes), "_base_loss": base}


def per_layer(scores: dict[str, dict]) -> dict[str, dict]:
    """Per-module-kind scores summed per layer (exact for a first-order gain, which is linear; for
    the measured interference, the sum of its module kinds' — their cross terms left out)."""
    out: dict[str, dict] = {}
    for g, s in scores.items():
        if g.startswith("_"):
            continue
        acc = out.setdefault(
            str(parse_group(g)[0]), dict.fromkeys(SCORE_KEYS, 0.0) | {"n_params": 0}
        )
        for k in acc:
            acc[k] += s[k]
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


# --- policies ------------------------------------------------------------------------------------


def _within_budget(useful: list, total: int, budget: float) -> list[str]:
    """Positive scores, best first, while the kept groups hold at most `budget` of `total`."""
    kept, used = [], 0
    for g, s in useful:
        if s["score"] <= 0:
            break
        if used + s["n_params"] <= budget * total:
            kept.append(g)
            used += s["n_params"]
    return kept


def choose(
    scores: dict[str, dict],
    *,
    top_k: int | None = None,
    threshold: float | None = None,
    budget: float | None = None,
) -> list[str]:
    """Groups kept by one policy; groups whose δ does not lower the refusal loss are never kept.

    top_k: the k best by score (among those with a positive gain); threshold: score ≥ T; budget:
    positive scores, best first, while the kept groups hold at most that fraction of the gene's
    parameters. None of them: every group with a positive score.
    """
    check_policy(top_k, threshold, budget)
    items = [(g, s) for g, s in scores.items() if not g.startswith("_")]
    ranked = sorted(items, key=lambda gs: -gs[1]["score"])
    useful = [(g, s) for g, s in ranked if s["gain"] > 0]
    if top_k is not None:
        if top_k < 1 or top_k > len(items):
            raise SafeGeneError(f"--top-k must be between 1 and {len(items)} (got {top_k})")
        kept = [g for g, _ in useful[:top_k]]
    elif budget is not None:
        kept = _within_budget(useful, sum(s["n_params"] for _, s in items), budget)
    else:
        t = 0.0 if threshold is None else threshold
        kept = [
            g for g, s in useful if s["score"] > t or (threshold is not None and s["score"] == t)
        ]
    if not kept:
        raise SafeGeneError(
            "no layer passes the selection policy (no δ lowers the refusal loss "
            "there): loosen the policy or check the data"
        )
    return sorted(kept, key=group_order)


# --- the command ---------------------------------------------------------------------------------


def _draw(path, split: str, settings: SelectSettings) -> list[dict]:
    """At most `settings.examples` records of a data set; the harmful ones are required, the
    others may be absent or empty."""
    records = load_records(path, split=split) if path else []
    if not records and split != "harmful":
        return []
    k = min(settings.examples, len(records)) if settings.examples and records else None
    return take(records, k, seed=settings.seed, name=split)


def _keep(runs: list[dict], deltas, settings: SelectSettings) -> tuple[dict, dict, dict]:
    """(the module-kind scores and the layer scores to store, the selection: its layers, groups
    and share of the gene's parameters) from each scored model's group scores (`runs`)."""
    scores = combine(runs, settings.across)
    layers = combine([per_layer(r) for r in runs], settings.across)
    if settings.method == "ablation" and not settings.per_module_kind:
        scores = {}  # scored per layer: there are no module-kind scores
    pool = scores if settings.per_module_kind else layers
    groups = choose(pool, **{k: getattr(settings, k) for k in ("top_k", "threshold", "budget")})
    kept = sum(pool[g]["n_params"] for g in groups) / max(sum(d.n_params for d in deltas), 1)
    layers_kept = sorted({parse_group(g)[0] for g in groups})
    return scores, layers, {"layers": layers_kept, "groups": groups, "param_fraction": kept}


def _store(gene: Gene, out, force: bool, record: dict, layers: dict, module_kinds: dict) -> None:
    """Scores, selection and record into the gene (a copy at `out`, or in place); coefficients
    fitted under another selection no longer hold, so they and their record go."""
    scores = {
        "method": record["settings"]["method"],
        "units": "mean NLL per target token",
        "layers": layers,
        "module_kinds": module_kinds,
    }
    fields = {"scores": scores, "selection": groups_to_selection(record["groups"])}
    fields |= {"selection_info": record, "coefficients": None, "calibration": None}
    save_gene(gene, out, force=force, **fields)


def select(
    gene: str | Path | Gene,
    model: str | Path,
    *,
    harmful: str | Path,
    benign: str | Path | None = None,
    task: str | Path | None = None,
    adapter: str | Path | None = None,
    aligned: str | Path | None = None,
    out: str | Path | None = None,
    force: bool = False,
    settings: SelectSettings | None = None,
    compute: ComputeSettings | None = None,
    progress: bool = False,
    also: Sequence[tuple] = (),
    **overrides,
) -> dict:
    """Score the gene's layers on `model` (a degraded or task model, plus its `adapter`) and
    store the selection: in a copy of the gene at `out`, or in the gene's own safegene.json when
    `out` is None. `also`: more (model, adapter, task examples) to score on, with the same harmful
    and benign prompts; each group's scores are then combined over every model scored
    (`settings.across`: by default the model where it scores highest, so the layers kept are
    those whose gain outweighs their interference on some model; on held-in task models: the
    layers whose safety transfers to another task). `overrides`: fields of
    SelectSettings / ComputeSettings by name (top_k=2). Returns the selection record (the gene's
    `selection_info`)."""
    t0 = time.perf_counter()
    settings, compute = with_overrides(
        overrides, settings or SelectSettings(), compute or SELECT_COMPUTE
    )
    gene_path = Path(getattr(gene, "path", gene))
    scored = [(model, adapter, task), *(tuple(a) for a in also)]
    if out is not None:
        inputs = (gene_path, aligned, harmful, benign, *(x for one in scored for x in one))
        check_output_path(out, force, inputs=inputs)
    in_place = gene_path / GENE_FILE if out is None else None  # (of two such runs, one writes)
    with claimed(in_place), opened(gene) as g:
        deltas = g.linear_deltas()
        for m, _, _ in scored:  # every model, before anything is computed
            check_attachable(g, deltas, m)
        shared = {"harmful": _draw(harmful, "harmful", settings)}
        shared["benign"] = _draw(benign, "benign", settings)
        refusals = refusal_targets(
            shared["harmful"], gene=g, aligned=aligned, compute=compute, progress=progress
        )
        runs = []
        for m, a, t in scored:
            data = {**shared, "task": _draw(t, "task", settings)}
            scores = _score(deltas, data, refusals, m, a, settings, compute, progress)
            paths = {"harmful": harmful, "benign": benign, "task": t}
            scored_on = {**_provenance(m, a, paths, data), "base_loss": scores.pop("_base_loss")}
            runs.append((scores, scored_on))
        module_kinds, layers, kept = _keep([r for r, _ in runs], deltas, settings)
        record = {
            **kept,
            **runs[0][1],
            "also": [p for _, p in runs[1:]],
            "settings": dataclasses.asdict(settings),
            "compute": dataclasses.asdict(compute),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        _store(g, out, force, record, layers, module_kinds)
    return record


def combine(runs: list[dict], across: str) -> dict:
    """Several models' group scores (`score_groups` without "_base_loss") as one, group by group:
    `best`, the scores of the model where the group scores highest (a layer whose δ restores
    safety in any of them; a weakly eroded model sits at its refusal optimum, where every δ
    scores at or below zero, and outvoted the eroded ones in a mean: benchmarks/RESULTS.md);
    `mean`, their mean. One model's are returned as they are."""
    if len(runs) == 1:
        return runs[0]
    out = {}
    for g in runs[0]:
        if across == "best":
            out[g] = dict(max((r[g] for r in runs), key=lambda s: s["score"]))
        else:
            out[g] = {k: sum(r[g][k] for r in runs) / len(runs) for k in SCORE_KEYS}
            out[g]["n_params"] = runs[0][g]["n_params"]
    return out


def _provenance(model, adapter, paths: dict, data: dict) -> dict:
    """What was scored: the model (by content identity) and each data set's records."""
    return {
        "model": {
            "path": str(model),
            "adapter": str(adapter) if adapter else None,
            "id": model_id(model, adapter),
        },
        "data": {s: data_record(p, data[s]) for s, p in paths.items()},
    }


def _score(deltas, data: dict, refusals: list[str], model, adapter, settings, compute, progress):
    """score_groups on the loaded model: harmful prompts → `refusals`, benign → the data's
    responses or the model's own, task → the data's answers (attribution scores per module kind
    always: the per-layer scores are their sums)."""
    from safegene.models import load_model

    answers = [answer_of(r) for r in data["task"]]
    if any(a is None for a in answers):
        raise SafeGeneError('every task example needs an "answer" (or "response")')
    loaded = load_model(model, adapter, device=compute.device, dtype=compute.dtype)
    kept = given_or_own(
        data["benign"], model, adapter=adapter, loaded=loaded, compute=compute, progress=progress
    )
    targets = {"harmful": refusals, "benign": kept, "task": answers}
    pairs = {
        s: [(r["prompt"], t) for r, t in zip(data[s], targets[s], strict=True)] for s in targets
    }
    return score_groups(
        *loaded,
        deltas,
        **pairs,
        method=settings.method,
        per_module_kind=settings.method == "attribution" or settings.per_module_kind,
        batch_size=compute.batch_size,
        progress=progress,
    )
