"""The zoo's aligned model under data-size variants, side by side: base and aligned stages only
(about 3 minutes per variant and seed on one thread), then the aligned model's harmful rate on
`harmful_test` and its over-refusal on `benign_val` and `benign_test`.

    python benchmarks/bench_aligned_data.py --out /tmp/ax --seeds 0 1 2 \
        --variant 'current={}' --variant 'bb4k={"base_benign": 4000}'

A variant is a name and the `DataSizes` fields it changes (JSON); each (variant, seed) builds into
OUT/NAME-sSEED (resumed by stage) and appends its row to OUT/results.jsonl. Run lanes as separate
processes (one per core) rather than one process with more threads: same threads, same bytes.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from safegene.evaluate.generate import generate
from safegene.models import load_model
from safegene.zoo import data as D
from safegene.zoo.build import _judged_share, _prompts, build_zoo, measure
from safegene.zoo.recipe import RECIPES


def aligned_rates(root: Path, recipe) -> dict:
    """Harmful rate (test, calibration) and over-refusal (test, validation) of root's aligned."""
    m = measure(root, {"path": "models/aligned", "adapter": None, "task": None}, recipe, tasks=[])
    model, tok = load_model(root / "models/aligned")
    rows = D.read_jsonl(root / "data/benign_val.jsonl")
    outs = generate(
        model,
        tok,
        _prompts(rows),
        max_new_tokens=recipe.eval_max_new_tokens,
        batch_size=recipe.eval_batch_size,
        progress=False,
    )
    keys = ("harmful_rate", "harmful_rate_calib", "over_refusal")
    return {**{k: m[k] for k in keys}, "over_refusal_val": _judged_share(rows, outs, False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variant", action="append", required=True, help="NAME=JSON")
    ap.add_argument("--size", default="small")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    base = RECIPES[args.size]
    for spec in args.variant:
        name, _, changes = spec.partition("=")
        recipe = base.with_(data=replace(base.data, **json.loads(changes or "{}")))
        for seed in args.seeds:
            t0, root = time.time(), args.out / f"{name}-s{seed}"
            build_zoo(
                root,
                recipe=recipe,
                seed=seed,
                stages=["aligned"],
                threads=1,
                jobs=1,
                progress=False,
            )
            row = {"variant": name, "seed": seed, **aligned_rates(root, recipe)}
            row["seconds"] = round(time.time() - t0)
            print(json.dumps(row), flush=True)
            with open(args.out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
