"""SafeGene variants on one zoo target, scored on the validation splits (never test).

    python benchmarks/bench_safegene_variants.py ZOO TARGET VARIANTS_JSON WORKDIR
    python benchmarks/bench_safegene_variants.py zoos/small-llama-s0 task-arith \\
        '[{"rank": 1}, {"rank": 1, "fit": {"lr": 0.3, "steps": 300, "lam": 0.0}}]' /tmp/sg

A variant: rank, sources (loto: the degraded models and the other tasks' full fine-tunes |
degraded), select (bool), sel (select's settings), fit (calibrate's settings). Prints the
target's and each variant's harmful rate, over-refusal and task accuracy on harmful_val /
benign_val / the task's val split, with the fitted α and the
coefficients the choice kept (a scale of the fit, or the uniform gene).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

from safegene.apply import apply_gene
from safegene.calibrate import calibrate
from safegene.evaluate.generate import generate
from safegene.evaluate.judges import keyword_judge
from safegene.gene import extract
from safegene.models import load_model
from safegene.select import select
from safegene.zoo import data as D


def score(zoo: Path, z: dict, task: str, path: Path, adapter: Path | None) -> dict:
    """Harmful rate, over-refusal and task accuracy on the validation splits (greedy)."""
    model, tok = load_model(path, adapter)
    harmful = [r["prompt"] for r in D.read_jsonl(zoo / z["data"]["harmful_val"])]
    benign = [r["prompt"] for r in D.read_jsonl(zoo / z["data"]["benign_val"])]
    rows = D.read_jsonl(zoo / z["data"]["tasks"][task]["val"])

    def gen(prompts, n):
        return generate(model, tok, prompts, max_new_tokens=n, batch_size=64, progress=False)

    h, b, t = gen(harmful, 32), gen(benign, 32), gen([r["prompt"] for r in rows], 40)
    return {
        "harm": round(sum(map(keyword_judge, harmful, h)) / len(h), 3),
        "orf": round(
            sum(not keyword_judge(p, g) for p, g in zip(benign, b, strict=True)) / len(b), 3
        ),
        "acc": round(
            sum(D.task_correct(r["answer"], g) for r, g in zip(rows, t, strict=True)) / len(t), 3
        ),
    }


def sources(zoo: Path, z: dict, task: str, kind: str) -> list[Path]:
    models = z["models"]
    return [
        zoo / e["path"]
        for e in models.values()
        if e["role"] == "degraded"
        or (kind == "loto" and e["role"] == "task" and e["task"] != task and not e["adapter"])
    ]


def run_variant(zoo: Path, z: dict, target: str, v: dict, work: Path) -> dict:
    m = z["models"][target]
    task, path = m["task"], zoo / m["path"]
    adapter = zoo / m["adapter"] if m["adapter"] else None
    shots, tshots = zoo / z["data"]["harmful_shots"], zoo / z["data"]["tasks"][task]["shots"]
    aligned = zoo / "models/aligned"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    gene = extract(
        aligned,
        sources(zoo, z, task, v.get("sources", "loto")),
        work / "gene",
        rank=v.get("rank", 1),
        progress=False,
    )
    target = dict(adapter=adapter, harmful=shots, task=tshots, aligned=aligned)
    if v.get("select", True):
        select(gene, path, **target, out=work / "sel", **v.get("sel", {}))
        gene = work / "sel"
    rec = calibrate(
        gene,
        path,
        **target,
        out=work / "cal",
        layers=None if v.get("select", True) else "all",
        benign=zoo / z["data"]["benign_shots"] if z["data"].get("benign_shots") else None,
        shots=16,
        **v.get("fit", {}),
    )
    form = "combined" if adapter else "adapter"
    apply_gene(work / "cal", path, work / "out", form=form, adapter=adapter, progress=False)
    choice = rec["fit"]["choice"] or {}
    return {
        **score(zoo, z, task, path, work / "out"),
        "alpha": rec["groups"],
        "chosen": choice.get("chosen"),
    }


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    zoo, target, variants, work = Path(argv[0]), argv[1], json.loads(argv[2]), Path(argv[3])
    z = json.loads((zoo / "zoo.json").read_text())
    m = z["models"][target]
    adapter = zoo / m["adapter"] if m["adapter"] else None
    print("target", json.dumps(score(zoo, z, m["task"], zoo / m["path"], adapter)), flush=True)
    for v in variants:
        t0 = time.time()
        result = run_variant(zoo, z, target, v, work / "v")
        print(json.dumps({**v, **result, "sec": round(time.time() - t0)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
