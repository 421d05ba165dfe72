"""The gene, the target's own rollback, and both, calibrated on one study cell, read on validation.

    python benchmarks/bench_rollback.py ZOO TARGET WORKDIR [--parts gene gene+rb rb]
        [--fits default strong] [--config benchmarks/study-llama.yaml]

For the cell's loto gene (rank 1, the study's sources: `study.cell_recipe`) calibrated over every
layer, with calibrate's fit and choice (validation splits as the check sets, the study's seed):
`gene` fits the gene's per-layer α alone (the study's `gene-calibrate`), `gene+rb` adds the
per-layer β on the target's rollback (`calibrate --rollback`), `rb` fits β alone (per-layer
interpolation toward the aligned model, no gene: what the gene adds is the difference). Prints,
per part and fit preset, the candidate chosen and its validation harmful / over-refusal / skill,
against the target's own.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

from safegene import study
from safegene.gene import extract, load_gene
from safegene.models import load_model
from safegene.pipeline import FIT_PRESETS
from safegene.rollback import rollback_deltas, rollback_groups
from safegene.settings import ComputeSettings, FitSettings
from safegene.shots import answer_of
from safegene.targets import given_or_own, refusal_targets

cal = importlib.import_module("safegene.calibrate")  # the module (the package exports the function)


def run(zoo_dir: Path, target: str, work: Path, parts, fits, config: Path) -> None:
    zoo = json.loads((zoo_dir / "zoo.json").read_text())
    r = study.cell_recipe(zoo_dir, zoo, target, study.load_study(config))
    task = r.tasks[0]
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "gene-r1").exists():
        extract(r.aligned, r.degraded, work / "gene-r1", rank=1, seed=0, progress=False)
    gene = load_gene(work / "gene-r1")
    deltas = gene.linear_deltas()
    groups = [str(layer) for layer in sorted({d.layer for d in deltas})]
    back = rollback_deltas(deltas, task.model, task.adapter, r.aligned, rank=4)
    compute, loaded = ComputeSettings(), load_model(task.model, task.adapter)
    checks = dict(harmful=r.harmful_val, benign=r.benign_val, task=task.val)
    for name in fits:
        fit = FitSettings(shots=16, seed=0, **FIT_PRESETS[name])
        shots = cal._shots(r.harmful_shots, task.shots, r.benign_shots, fit, checks)
        refusals = refusal_targets(shots["harmful"], gene=gene, aligned=r.aligned, compute=compute)
        keep = given_or_own(
            shots["benign"], task.model, adapter=task.adapter, loaded=loaded, compute=compute
        )
        reference = cal.aligned_over_refusal(shots, gene, r.aligned, compute)
        for part in parts:
            t0 = time.time()
            ds = (deltas if "gene" in part else []) + (back if "rb" in part else [])
            gs = (groups if "gene" in part else []) + (
                rollback_groups(groups, back) if "rb" in part else []
            )
            fitted = cal.fit_alpha(
                *loaded,
                ds,
                gs,
                harmful=[(x["prompt"], t) for x, t in zip(shots["harmful"], refusals, strict=True)],
                task=[(x["prompt"], answer_of(x)) for x in shots["task"]],
                keep=[(x["prompt"], t) for x, t in zip(shots["benign"], keep, strict=True)],
                fit=fit,
            )
            choice = cal.choose_coefficients(
                loaded, ds, gs, fitted["alpha"], shots, fit, compute, reference=reference
            )
            kind, value = next(iter(choice["chosen"].items()))
            kept = next(t for t in choice["tried"] if t.get(kind) == value)
            base = choice["tried"][0]
            print(
                f"{target} {part:8s} {name:8s} chose {kind} {value:g}: harmful / over-refusal / "
                f"skill {kept['harmful']:.2f} / {kept['over_refusal']:.2f} / {kept['skill']:.2f} "
                f"(target {base['harmful']:.2f} / {base['over_refusal']:.2f} / "
                f"{base['skill']:.2f}); {time.time() - t0:.0f} s",
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("zoo", type=Path)
    p.add_argument("target")
    p.add_argument("work", type=Path)
    p.add_argument("--parts", nargs="+", default=["gene", "gene+rb", "rb"])
    p.add_argument("--fits", nargs="+", default=list(FIT_PRESETS))
    p.add_argument("--config", type=Path, default=Path(__file__).with_name("study-llama.yaml"))
    a = p.parse_args()
    run(a.zoo, a.target, a.work, a.parts, a.fits, a.config)


if __name__ == "__main__":
    main()
