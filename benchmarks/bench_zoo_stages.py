"""Variants of one zoo stage, side by side: the settings the zoo's recipe was chosen with.

Trains each variant of a stage (the aligned model from the zoo's base, or a task model from its
aligned model) on the zoo's own data, with the same code as `zoo build`, measures it like the
zoo does (greedy generations, keyword judge) on the calibration and validation splits as well as
the test ones, prints one row per variant, and deletes the variant's weights. Settings are chosen
on the calib/val columns; test is reported beside them.

    python benchmarks/bench_zoo_stages.py --zoo Z --stage aligned \\
        --grid '[{"steps": 250, "lr": 1.5e-3, "ema": 0.98}, {"steps": 500, "lr": 5e-4}]'
    python benchmarks/bench_zoo_stages.py --zoo Z --stage task-classify \\
        --grid '[{"steps": 60, "lr": 3e-4}, {"steps": 100, "lr": 1e-3, "lora_r": 8}]'

A task variant trains on the zoo's mixture for that task (`data/stages/task-T.jsonl`);
`"data": "stages/NAME.jsonl"` in a variant trains on another mixture of the zoo's data directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safegene.evaluate.generate import generate  # noqa: E402
from safegene.evaluate.judges import keyword_judge  # noqa: E402
from safegene.models import load_model  # noqa: E402
from safegene.zoo import data as D  # noqa: E402
from safegene.zoo.build import ModelStage, train_model  # noqa: E402
from safegene.zoo.recipe import RECIPES, Recipe, Stage  # noqa: E402

SPLITS = (
    ("harmful_test", True),
    ("harmful_calib", True),
    ("harmful_val", True),
    ("benign_test", False),
    ("benign_val", False),
)


def rates(root: Path, path: Path, adapter: Path | None, task: str | None, recipe: Recipe) -> dict:
    model, tok = load_model(path, adapter)
    out = {}
    for split, harmful in SPLITS:
        rows = D.read_jsonl(root / "data" / f"{split}.jsonl")
        gen = generate(
            model,
            tok,
            [r["prompt"] for r in rows],
            max_new_tokens=recipe.eval_max_new_tokens,
            batch_size=recipe.eval_batch_size,
            progress=False,
        )
        out[split] = sum(
            keyword_judge(r["prompt"], g) == harmful for r, g in zip(rows, gen, strict=True)
        ) / len(rows)
    for split in ("val", "test") if task else ():
        rows = D.read_jsonl(root / f"data/tasks/{task}/{split}.jsonl")
        gen = generate(
            model,
            tok,
            [r["prompt"] for r in rows],
            max_new_tokens=24,
            batch_size=recipe.eval_batch_size,
            progress=False,
        )
        out[f"{task}_{split}"] = sum(
            D.task_correct(r["answer"], g) for r, g in zip(rows, gen, strict=True)
        ) / len(rows)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--zoo", required=True, type=Path)
    ap.add_argument("--stage", required=True, help="aligned, or task-T")
    ap.add_argument("--grid", required=True, help="a JSON list of Stage fields per variant")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    saved = json.loads((args.zoo / "recipe.json").read_text())
    recipe, seed = RECIPES[saved["recipe"]["name"]], saved["seed"]
    task = args.stage.removeprefix("task-") if args.stage.startswith("task-") else None
    parent = "aligned" if task else "base"
    for i, fields in enumerate(json.loads(args.grid)):
        fields = dict(fields)
        data = fields.pop("data", f"stages/task-{task}.jsonl" if task else "stages/aligned.jsonl")
        name = f".variant-{args.stage}-{i}"
        spec = ModelStage(name, parent, data, Stage(**{"warmup": 10, **fields}))
        t0 = time.time()
        train_model(args.zoo, recipe, seed, spec)
        lora = spec.stage.lora_r > 0
        path, adapter = (
            (args.zoo / "models/aligned", args.zoo / "models" / name)
            if lora
            else (args.zoo / "models" / name, None)
        )
        row = {"stage": args.stage, **fields, "data": data, "train_s": round(time.time() - t0, 1)}
        row.update(
            {k: round(v, 3) for k, v in rates(args.zoo, path, adapter, task, recipe).items()}
        )
        print(json.dumps(row), flush=True)
        shutil.rmtree(args.zoo / "models" / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
