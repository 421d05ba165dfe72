"""Data-aware layer selection: which layers' δ transfer safety without disturbing the model.

Per group (a layer, or a (layer, module kind) pair) two scores, in loss units:
- `gain`: how much adding that group's δ lowers the refusal loss on harmful prompts
  (targets: the data's refusals, or the aligned model's own responses);
- `interference`: how much it raises the loss on benign prompts (targets: the data's responses,
  or the scored model's own responses) plus the task loss when task data is given.
`score = gain − interference`. Method `attribution` (default) takes the gain to first order: the
gradient with respect to the group's coefficient at 0, i.e. ⟨−∇_W L, δ⟩, one backward pass. The
interference is always measured exactly (the group applied alone at coefficient 1, one forward pass
per group): a task model sits at a minimum of its task loss, where the first-order term is zero and
the damage δ does is second order, so a gradient would report no interference at all. Method
`ablation` measures the gain exactly too.

Policies keep the best-scoring groups: top-k, a score threshold, or a parameter budget (a fraction
of the gene's parameters). The scores, the policy, the data hashes and the selection are written to
the gene's `safegene.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from safegene.attach import GeneAttachment, encode_pairs, pairs_loss, read_gene_modules, read_meta
from safegene.errors import SafeGeneError

METHODS = ("attribution", "ablation")
META = "safegene.json"


# --- data ----------------------------------------------------------------------------------------


def load_records(
    path: str | Path,
    *,
    split: str = "harmful",
    name: str | None = None,
    zoo: str | Path | None = None,
) -> list[dict]:
    """Records {"prompt", "answer"?} through the project's data loader (JSONL, CSV, text, zoo splits)."""
    from safegene.evaluate.data import load_data

    ds = load_data(path, split, zoo=zoo, name=name)
    answers = ds.answers or [None] * len(ds.prompts)
    return [
        {"prompt": p, **({"answer": a} if a is not None else {})}
        for p, a in zip(ds.prompts, answers)
    ]


def data_hash(records: list[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def take(records: list[dict], k: int | None, *, seed: int, name: str) -> list[dict]:
    """k records drawn without replacement with `seed` (all of them when k is None)."""
    if not records:
        raise SafeGeneError(f"no {name} examples given (the {name} data is empty)")
    if k is None:
        return list(records)
    if k < 1:
        raise SafeGeneError(f"--shots must be at least 1 (got {k})")
    if k > len(records):
        raise SafeGeneError(
            f"asked for {k} {name} examples but the {name} data has only {len(records)}"
        )
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(records), generator=g)[:k].tolist()
    return [records[i] for i in sorted(idx)]


def _answer(rec: dict) -> str | None:
    for key in ("response", "answer", "completion", "output"):
        v = rec.get(key)
        if isinstance(v, str) and v.strip():
            return v
        if v is not None and not isinstance(v, (dict, list)) and str(v).strip():
            return str(v)
    return None


# --- targets -------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    root = os.environ.get("SAFEGENE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "safegene"
    )
    return Path(root) / "responses"


def model_id(path: str | Path, adapter: str | Path | None = None) -> str:
    """A content identity of a model (and adapter): the project's sampled content hash."""
    from safegene.io.outdir import hash_model_dir

    h = hash_model_dir(path)
    if adapter is not None:
        a = Path(adapter)
        h += (
            "|"
            + hashlib.sha256(
                b"".join(
                    (a / f).read_bytes()
                    for f in ("adapter_config.json", "adapter_model.safetensors")
                    if (a / f).is_file()
                )
            ).hexdigest()
        )
    return h


def own_responses(
    model_path,
    prompts: list[str],
    *,
    adapter=None,
    model=None,
    tokenizer=None,
    device: str = "cpu",
    dtype=None,
    max_new_tokens: int = 48,
    progress: bool = False,
    cache: bool = True,
) -> list[str]:
    """A model's own greedy responses to `prompts`, generated once and cached on disk.

    The cache key is the model's identity (weights' names, sizes, mtimes) plus the prompts' hash.
    """
    from safegene.evaluate.generate import generate

    key = hashlib.sha256(
        (model_id(model_path, adapter) + f"|{max_new_tokens}|" + "\x00".join(prompts)).encode()
    ).hexdigest()[:32]
    path = _cache_dir() / f"{key}.json"
    if cache and path.is_file():
        try:
            got = json.loads(path.read_text())
            if isinstance(got, list) and len(got) == len(prompts):
                return got
        except (OSError, json.JSONDecodeError):
            pass
    if model is None:
        from safegene.models import load_model

        model, tokenizer = load_model(model_path, adapter, device=device, dtype=dtype)
    out = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        progress=progress,
        desc="reference responses",
    )
    out = [o if o.strip() else (tokenizer.eos_token or ".") for o in out]
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(out))
            os.replace(tmp, path)
        except OSError:
            pass
    return out


def aligned_path(gene_dir: str | Path, aligned: str | Path | None) -> Path | None:
    """The aligned model: given explicitly, else the gene's recorded source (`sources.aligned`,
    checked against its content hash), else the base its adapter_config names."""
    if aligned is not None:
        return Path(aligned)
    src = read_meta(gene_dir).get("sources")
    src = src.get("aligned") if isinstance(src, dict) else None
    cands = [src.get("path") if isinstance(src, dict) else None]
    try:
        cands.append(
            json.loads((Path(gene_dir) / "adapter_config.json").read_text()).get(
                "base_model_name_or_path"
            )
        )
    except (OSError, json.JSONDecodeError):
        pass
    recorded = src.get("hash") if isinstance(src, dict) else None
    for c in cands:
        if isinstance(c, str) and c and (Path(c) / "config.json").is_file():
            if isinstance(recorded, str):  # the provenance names a model by content: check it
                from safegene.io import matches_hash

                if not matches_hash(c, recorded):
                    raise SafeGeneError(
                        f"the gene's aligned model {c} is not the one it was extracted "
                        "from (content hash differs): pass --aligned DIR"
                    )
            return Path(c)
    return None


def refusal_targets(
    records: list[dict],
    *,
    gene_dir=None,
    aligned=None,
    device="cpu",
    dtype=None,
    max_new_tokens: int = 48,
    progress: bool = False,
) -> list[str]:
    """Each harmful record's refusal: its "response", else the aligned model's own (cached)."""
    from safegene.evaluate.judges import is_refusal_keyword

    # a record's response counts only when it is a refusal (harmful data often carries compliances)
    have = [a if a is not None and is_refusal_keyword(a) else None for a in map(_answer, records)]
    missing = [i for i, t in enumerate(have) if t is None]
    if missing:
        path = (
            aligned_path(gene_dir, aligned)
            if gene_dir is not None
            else (Path(aligned) if aligned else None)
        )
        if path is None:
            raise SafeGeneError(
                'the harmful data has no "response" refusals and the aligned model is '
                "unknown (not in the gene's provenance): pass --aligned DIR"
            )
        gen = own_responses(
            path,
            [records[i]["prompt"] for i in missing],
            device=device,
            dtype=dtype,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
        for i, t in zip(missing, gen):
            have[i] = t
    return have  # type: ignore[return-value]


# --- gene metadata -------------------------------------------------------------------------------


def write_meta(gene_dir: str | Path, meta: dict) -> None:
    """Replace the gene's safegene.json atomically."""
    p = Path(gene_dir) / META
    tmp = p.with_name(f".{META}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, p)


def check_family(gene_dir, model_path, modules=None) -> None:
    """The target belongs to the gene's family, or a SafeGeneError naming the first mismatch."""
    from safegene.family import check_compatible
    from safegene.io.reader import ModelReader

    reader = ModelReader(model_path)
    shapes = reader.shapes()
    fp = read_meta(gene_dir).get("fingerprint")
    need = {}
    for g in modules or []:
        name = g.name + ".weight"
        if name not in shapes:  # checkpoints without the "model." prefix, or a wrapper's prefix
            hits = [n for n in shapes if n.endswith(name[name.find("layers.") :])]
            name = hits[0] if hits else name
        need[name] = g.shape
    if fp:
        check_compatible(fp, reader.config(), shapes, tensors=need or None)
    else:
        for name, shape in need.items():
            if name not in shapes:
                raise SafeGeneError(f"family mismatch: the target has no tensor {name!r}")
            if tuple(shapes[name]) != tuple(shape):
                raise SafeGeneError(
                    f"family mismatch: {name!r} has shape {tuple(shapes[name])} in the "
                    f"target but {tuple(shape)} in the gene"
                )


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


def score_groups(
    model,
    tokenizer,
    modules,
    *,
    harmful: list[tuple[str, str]],
    benign: list[tuple[str, str]] | None = None,
    task: list[tuple[str, str]] | None = None,
    method: str = "attribution",
    per_module_kind: bool = True,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, dict]:
    """{group: {"gain", "interference", "task", "score", "n_params"}} for every group of the gene.

    `harmful`, `benign`, `task` are (prompt, target) pairs. Loss units (mean NLL per target token).
    """
    if method not in METHODS:
        raise SafeGeneError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not harmful:
        raise SafeGeneError("no harmful prompts to score the layers on")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sets = {"harmful": harmful, "benign": benign or [], "task": task or []}
    enc = {
        k: encode_pairs(tokenizer, [p for p, _ in v], [t for _, t in v])
        for k, v in sets.items()
        if v
    }
    att = GeneAttachment(model, modules, per_module_kind=per_module_kind)
    deltas: dict[str, torch.Tensor] = {}
    base: dict[str, float] = {}
    exact = [k for k in enc if method == "ablation" or k != "harmful"]
    with att:
        if method == "attribution":
            base["harmful"], deltas["harmful"] = _loss_grad(
                att, enc["harmful"], batch_size=batch_size, pad_id=pad_id
            )
        if exact:
            from tqdm.auto import tqdm

            n = len(att.groups)
            with att.fixed():
                for k in exact:
                    base[k] = _loss(att, enc[k], batch_size=batch_size, pad_id=pad_id)
                    deltas[k] = torch.zeros(n)
                for i in tqdm(
                    range(n),
                    desc="ablation" if method == "ablation" else "interference",
                    disable=not progress,
                    leave=False,
                ):
                    att.set(torch.nn.functional.one_hot(torch.tensor(i), n).float())
                    for k in exact:
                        deltas[k][i] = (
                            _loss(att, enc[k], batch_size=batch_size, pad_id=pad_id) - base[k]
                        )
    scores = {}
    zero = torch.zeros(len(att.groups))
    for i, g in enumerate(att.groups):
        gain = -float(deltas["harmful"][i])
        inter = float(deltas.get("benign", zero)[i])
        tsk = float(deltas.get("task", zero)[i])
        scores[g] = {
            "gain": gain,
            "interference": inter,
            "task": tsk,
            "score": gain - inter - tsk,
            "n_params": int(att.n_params[i]),
        }
    scores["_base_loss"] = base  # type: ignore[assignment]
    return scores


def per_layer(scores: dict[str, dict]) -> dict[str, dict]:
    """Per-module-kind scores summed per layer (exact for a first-order gain, which is linear; for
    the measured interference, the sum of its module kinds' — their cross terms left out)."""
    out: dict[str, dict] = {}
    for g, s in scores.items():
        if g.startswith("_"):
            continue
        layer = g.split(".")[0]
        acc = out.setdefault(
            layer, {"gain": 0.0, "interference": 0.0, "task": 0.0, "score": 0.0, "n_params": 0}
        )
        for k in acc:
            acc[k] += s[k]
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


# --- policies ------------------------------------------------------------------------------------


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
    given = [x is not None for x in (top_k, threshold, budget)]
    if sum(given) > 1:
        raise SafeGeneError("choose one selection policy: --top-k, --threshold or --budget")
    items = [(g, s) for g, s in scores.items() if not g.startswith("_")]
    ranked = sorted(items, key=lambda gs: -gs[1]["score"])
    useful = [(g, s) for g, s in ranked if s["gain"] > 0]
    if top_k is not None:
        if top_k < 1 or top_k > len(items):
            raise SafeGeneError(f"--top-k must be between 1 and {len(items)} (got {top_k})")
        kept = [g for g, _ in useful[:top_k]]
    elif budget is not None:
        if not 0 < budget <= 1:
            raise SafeGeneError(
                f"--budget is a fraction of the gene's parameters in (0, 1] (got {budget})"
            )
        total = sum(s["n_params"] for _, s in items)
        kept, used = [], 0
        for g, s in useful:
            if s["score"] <= 0:
                break
            if used + s["n_params"] <= budget * total:
                kept.append(g)
                used += s["n_params"]
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
    return sorted(kept, key=lambda g: (int(g.split(".")[0]), g))


# --- the command ---------------------------------------------------------------------------------


def select(
    gene: str | Path,
    model: str | Path,
    *,
    harmful: str | Path,
    benign: str | Path | None = None,
    task: str | Path | None = None,
    adapter: str | Path | None = None,
    aligned: str | Path | None = None,
    top_k: int | None = None,
    threshold: float | None = None,
    budget: float | None = None,
    method: str = "attribution",
    per_module_kind: bool = False,
    n_examples: int | None = 32,
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 48,
    progress: bool = False,
) -> dict:
    """Score the gene's layers on `model` (a degraded or task model) and store the selection.

    Writes the scores and selection into `out`'s safegene.json (a copy of the gene), or into the
    gene's own safegene.json when `out` is None. Returns the selection record.
    """
    t0 = time.perf_counter()
    gene = Path(gene)
    if out is not None:
        _check_out(out, force, inputs=(gene, model, adapter, aligned))
    modules = read_gene_modules(gene)
    meta = read_meta(gene)
    check_family(gene, model, modules)
    harm = load_records(harmful, split="harmful")
    harm = take(
        harm, min(n_examples, len(harm)) if n_examples and harm else None, seed=seed, name="harmful"
    )
    ben = load_records(benign, split="benign") if benign else []
    tsk = load_records(task, split="task") if task else []
    if ben:
        ben = take(ben, min(n_examples, len(ben)) if n_examples else None, seed=seed, name="benign")
    if tsk:
        tsk = take(tsk, min(n_examples, len(tsk)) if n_examples else None, seed=seed, name="task")
    refusals = refusal_targets(
        harm,
        gene_dir=gene,
        aligned=aligned,
        device=device,
        dtype=dtype,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    from safegene.models import load_model

    net, tok = load_model(model, adapter, device=device, dtype=dtype)
    ben_targets = _own_or_given(ben, model, adapter, net, tok, max_new_tokens, progress)
    tsk_targets = [_answer(r) for r in tsk]
    if any(t is None for t in tsk_targets):
        raise SafeGeneError('every task example needs an "answer" (or "response")')
    fine = score_groups(
        net,
        tok,
        modules,
        harmful=[(r["prompt"], t) for r, t in zip(harm, refusals)],
        benign=[(r["prompt"], t) for r, t in zip(ben, ben_targets)],
        task=[(r["prompt"], t) for r, t in zip(tsk, tsk_targets)],
        method=method,
        per_module_kind=True if method == "attribution" else per_module_kind,
        batch_size=batch_size,
        progress=progress,
    )
    base_loss = fine.pop("_base_loss")
    layers = per_layer(fine)
    if method == "ablation" and not per_module_kind:
        fine = {}
    groups = choose(
        fine if per_module_kind else layers, top_k=top_k, threshold=threshold, budget=budget
    )
    n_total = sum(g.n_params for g in modules)
    n_kept = sum((fine if per_module_kind else layers)[g]["n_params"] for g in groups)
    record = {
        "layers": sorted({int(g.split(".")[0]) for g in groups}),
        "groups": groups,
        "per_module_kind": per_module_kind,
        "method": method,
        "policy": {"top_k": top_k, "threshold": threshold, "budget": budget},
        "param_fraction": n_kept / max(n_total, 1),
        "model": {
            "path": str(model),
            "adapter": str(adapter) if adapter else None,
            "id": model_id(model, adapter),
        },
        "data": {
            "harmful": {"path": str(harmful), "n": len(harm), "sha256": data_hash(harm)},
            "benign": {"path": str(benign), "n": len(ben), "sha256": data_hash(ben)}
            if ben
            else None,
            "task": {"path": str(task), "n": len(tsk), "sha256": data_hash(tsk)} if tsk else None,
        },
        "base_loss": base_loss,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    scores_record = {
        "method": method,
        "units": "mean NLL per target token",
        "layers": layers,
        "module_kinds": fine,
    }
    _store(gene, out, force, meta, scores_record, record)
    return record


def _own_or_given(records, model_path, adapter, net, tok, max_new_tokens, progress):
    if not records:
        return []
    given = [_answer(r) for r in records]
    missing = [i for i, t in enumerate(given) if t is None]
    if missing:
        gen = own_responses(
            model_path,
            [records[i]["prompt"] for i in missing],
            adapter=adapter,
            model=net,
            tokenizer=tok,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
        for i, t in zip(missing, gen):
            given[i] = t
    return given


def _check_out(out, force: bool, inputs: tuple = ()) -> None:
    from safegene.io.outdir import check_output_path

    check_output_path(out, force, inputs=inputs)


def copy_gene(gene: Path, out: Path, meta: dict, force: bool) -> None:
    """A copy of the gene at `out` with `meta` as its safegene.json, appearing atomically."""
    import shutil

    from safegene.io.outdir import atomic_output_dir

    _check_out(out, force, inputs=(gene,))
    with atomic_output_dir(out, force) as tmp:
        for f in Path(gene).iterdir():
            if f.is_file() and f.name != META:
                shutil.copy2(f, tmp / f.name)
        write_meta(tmp, meta)


def groups_to_selection(groups: list[str]):
    """Internal groups ("3", or "3.attn") → the gene's selection schema ([3] or {"attn": [3]})."""
    if any("." in g for g in groups):
        sel: dict[str, list[int]] = {}
        for g in groups:
            layer, kind = g.split(".", 1)
            sel.setdefault(kind, []).append(int(layer))
        return {k: sorted(v) for k, v in sorted(sel.items())}
    return sorted(int(g) for g in groups)


def selection_to_groups(selection) -> list[str] | None:
    """The gene's selection schema → internal groups; None when the gene has no selection."""
    if selection is None:
        return None
    if isinstance(selection, dict):
        return sorted(
            (f"{int(layer)}.{kind}" for kind, layers in selection.items() for layer in layers),
            key=lambda g: (int(g.split(".")[0]), g),
        )
    return [str(int(layer)) for layer in sorted(selection)]


def _store(gene: Path, out, force, meta: dict, scores: dict, selection: dict) -> None:
    meta = dict(meta)
    meta["scores"] = scores
    meta["selection"] = groups_to_selection(selection["groups"])
    meta["selection_info"] = selection
    meta["coefficients"] = None  # coefficients fitted under another selection no longer hold
    meta.pop("calibration", None)
    if out is None:
        write_meta(gene, meta)
    else:
        copy_gene(gene, Path(out), meta, force)
