"""The gene's rank against its transfer: the same calibration, genes of several ranks, side by side.

One gene per rank is extracted from the zoo's aligned and degraded models (truncated SVD per
module).
For each task model, α is calibrated per layer over every layer (k harmful shots with refusals and k
task shots, the defaults of `safegene calibrate`) for each gene, and the result is measured on the
zoo's held-out test splits (keyword judge, greedy). One run, one machine state, every rank.

    python benchmarks/bench_rank.py --zoo /tmp/zoo-small [--ranks 1 2 4 16] \
        [--models task-howto ...]

Prints harmful rate / over-refusal / task accuracy per (task model, rank), and per task model the
harmful rate of each rank relative to the largest rank's (a ratio < 1: the smaller gene transfers
better) and whether each point keeps ≥ 95 % of the task model's accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_ablations import eval_settings, gene_deltas, measure, zoo_gene  # noqa: E402

from safegene.attach import GeneAttachment  # noqa: E402
from safegene.calibrate import calibrate  # noqa: E402
from safegene.evaluate.data import load_data  # noqa: E402
from safegene.models import load_model  # noqa: E402
from safegene.zoo.build import load_zoo, task_models  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--work", help="where the genes go (default: ZOO/bench-rank)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 16])
    ap.add_argument("--models", nargs="*", help="task model names (default: every task model)")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write every number here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    zoo = load_zoo(args.zoo)
    models, data = zoo["models"], zoo["data"]
    work = Path(args.work or Path(args.zoo) / "bench-rank")
    work.mkdir(parents=True, exist_ok=True)
    genes = {r: zoo_gene(models, work, r) for r in sorted(args.ranks)}
    modules = {r: gene_deltas(gene) for r, gene in genes.items()}
    settings = eval_settings(args.max_new_tokens)
    common = [load_data(data["harmful_test"], "harmful"), load_data(data["benign_test"], "benign")]
    results: dict = {}
    for name in args.models or task_models(models):
        entry, row = models[name], {}
        task = entry["task"]
        datasets = common + [load_data(data["tasks"][task]["test"], "task", name=task)]
        model, tok = load_model(entry["path"], entry.get("adapter"))
        row["none"] = measure(f"{name}/none", model, tok, datasets, settings)
        for r, gene in genes.items():
            t0 = time.perf_counter()
            rec = calibrate(
                gene,
                entry["path"],
                adapter=entry.get("adapter"),
                harmful=data["harmful_shots"],
                task=data["tasks"][task]["shots"],
                shots=args.shots,
                layers="all",
                out=None,
                loaded=(model, tok),
            )
            seconds = time.perf_counter() - t0
            att = GeneAttachment(
                model,
                modules[r],
                groups=list(rec["groups"]),
                alpha=torch.tensor(list(rec["groups"].values())),
            )
            with att, att.fixed():
                row[r] = measure(f"{name}/r{r}", model, tok, datasets, settings)
            row[r].update(alpha=rec["groups"], seconds=round(seconds, 1))
            print(
                f"{name} rank {r}: harmful {row[r]['harmful_rate']:.2f} over-refusal "
                f"{row[r]['over_refusal']:.2f} task {row[r]['task_accuracy']:.2f} "
                f"α { ({g: round(a, 2) for g, a in rec['groups'].items()}) } ({seconds:.0f} s)",
                flush=True,
            )
        results[name] = row
        del model
    _print_table(results, sorted(genes))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"ranks": sorted(genes), "models": results}, indent=1, default=str)
        )
    return 0


def _print_table(results: dict, ranks: list[int]) -> None:
    top = ranks[-1]
    print("\n| model | task model | " + " | ".join(f"rank {r}" for r in ranks) + " |")
    print("|---|---|" + "---|" * len(ranks))
    for name, row in results.items():
        floor = 0.95 * row["none"]["task_accuracy"]
        cells = []
        for r in ranks:
            m = row[r]
            ratio = (
                m["harmful_rate"] / row[top]["harmful_rate"]
                if row[top]["harmful_rate"]
                else float("nan")
            )
            cells.append(
                f"{m['harmful_rate']:.2f} / {m['over_refusal']:.2f} / {m['task_accuracy']:.2f}"
                f"{'' if m['task_accuracy'] >= floor - 1e-9 else ' ✗'} (×{ratio:.2f})"
            )
        none = row["none"]
        print(
            f"| {name} | {none['harmful_rate']:.2f} / {none['over_refusal']:.2f} / "
            f"{none['task_accuracy']:.2f} | " + " | ".join(cells) + " |"
        )
    print(
        "(cells: harmful / over-refusal / task accuracy; ✗ below 95 % of the task model's "
        "accuracy; "
        f"×: harmful rate relative to rank {top})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
