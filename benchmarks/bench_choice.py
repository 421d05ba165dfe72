"""Calibration's choice on validation against the test split: every candidate, both splits, one run.

For one target of a built zoo: the study's SafeGene variant (the loto gene — the degraded models and
every other task's full fine-tune — `select`, then `calibrate` with the zoo's few-shot data and the
validation splits as its check sets), then every coefficient vector the choice tried (the fitted α
scaled, the uniform gene) measured again on the test splits. Prints, per candidate, validation and
test harmful rate, over-refusal and task skill (keyword judge, greedy), and the aligned model's
test over-refusal: where the two splits disagree, the choice cannot see it.

    OMP_NUM_THREADS=1 python benchmarks/bench_choice.py --zoo /tmp/z/v25/llama-s2 \
        --target task-arith [--fit strong] [--work /tmp/choice]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from safegene.attach import GeneAttachment
from safegene.calibrate import calibrate, measure
from safegene.evaluate.metrics import resolve_match
from safegene.gene import extract, opened
from safegene.models import load_model
from safegene.pipeline import FIT_PRESETS
from safegene.select import select
from safegene.settings import ComputeSettings
from safegene.shots import answer_of, load_records
from safegene.study import gene_sources


def checks_on_test(zoo: Path, data: dict, task: str) -> dict:
    """The test splits as `calibrate.measure` check sets."""
    rows = load_records(zoo / data["tasks"][task]["test"], split="task")
    gold = [answer_of(r) for r in rows]
    prompts = {k: load_records(zoo / data[f"{k}_test"], split=k) for k in ("harmful", "benign")}
    return {
        "harmful": [r["prompt"] for r in prompts["harmful"]],
        "benign": [r["prompt"] for r in prompts["benign"]],
        "task": ([r["prompt"] for r in rows], gold, resolve_match("auto", gold)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--target", required=True, help="a task model of the zoo (task-arith ...)")
    ap.add_argument("--fit", default="default", choices=sorted(FIT_PRESETS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-choice"))
    args = ap.parse_args()
    zoo, work = args.zoo, args.work / args.target
    meta = json.loads((zoo / "zoo.json").read_text())
    models, data = meta["models"], meta["data"]
    m, task = models[args.target], models[args.target]["task"]
    model, adapter = zoo / m["path"], (zoo / m["adapter"] if m["adapter"] else None)
    work.mkdir(parents=True, exist_ok=True)
    gene, sel = work / "gene", work / "selected"
    aligned = zoo / models["aligned"]["path"]
    if not gene.exists():
        sources = [zoo / models[n]["path"] for n in gene_sources(meta, args.target, "loto")]
        extract(aligned, sources, gene, rank=1, seed=0, progress=False)
    shots = dict(
        harmful=zoo / data["harmful_shots"],
        task=zoo / data["tasks"][task]["shots"],
        aligned=aligned,
        adapter=adapter,
        seed=0,
    )
    if not sel.exists():
        select(gene, model, out=sel, **shots)
    rec = calibrate(
        sel,
        model,
        out=None,
        shots=16,
        benign=zoo / data["benign_shots"],
        check_harmful=zoo / data["harmful_val"],
        check_benign=zoo / data["benign_val"],
        check_task=zoo / data["tasks"][task]["val"],
        **shots,
        **FIT_PRESETS[args.fit],
    )
    choice = rec["fit"]["choice"]
    kind, value = next(iter(choice["chosen"].items()))
    groups = list(rec["groups"])
    fitted = None  # the fitted α, recovered from the chosen scale (unknown if 0 or uniform)
    if kind == "scale" and value:
        fitted = {g: a / value for g, a in rec["groups"].items()}
    checks, compute = checks_on_test(zoo, data, task), ComputeSettings()
    aligned_test = measure(load_model(aligned), checks, compute)["over_refusal"]
    print(
        f"{args.target} ({args.fit}): chosen {choice['chosen']}; aligned test over-refusal "
        f"{aligned_test:.3f}, validation {choice['aligned_over_refusal']:.3f}"
    )
    loaded = load_model(model, adapter)
    with opened(sel) as g:
        att = GeneAttachment(loaded[0], g.linear_deltas(), per_module_kind=False, groups=groups)
        with torch.no_grad(), att:
            for t in choice["tried"]:
                path = "scale" if "scale" in t else "uniform"
                if path == "scale" and fitted is None:
                    continue
                values = [t[path] * fitted[x] for x in groups] if path == "scale" else None
                att.set(values or [t[path]] * len(groups))
                on_test = measure(loaded, checks, compute)
                print(
                    f"  {path}={t[path]:<5} validation harmful {t['harmful']:.2f} over-refusal "
                    f"{t['over_refusal']:.2f} skill {t['skill']:.2f} | test harmful "
                    f"{on_test['harmful']:.3f} over-refusal {on_test['over_refusal']:.3f} "
                    f"skill {on_test['skill']:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
