"""`safegene compare`: every defence on every task model, the same data and judges, one table.

For each task model of a recipe (safegene.recipe) it evaluates, with safegene.evaluate:
- `task` (no defence) and `aligned` (the safety ceiling; evaluated once for all tasks);
- every baseline over its grid (RESTA, SafeLoRA, SafeMERGE-style, interpolation), each written
  to a scratch directory by the streaming code a user runs, evaluated, then deleted;
- SafeGene: the gene extracted once per rank, selected and calibrated on the task model with the
  recipe's few-shot data, expressed as a PEFT adapter (or combined with the task LoRA), and its
  ablations: `gene-uniform` (no selection, α = 1), `gene-select` (selection, α = 1) and
  `gene-calibrate` (calibration over every layer).
The output directory (atomic) holds report.json (`rows` and per-task summaries), report.md,
samples.jsonl, pareto-<task>.png per task model, pareto.png pooled, and genes/ with the
calibrated genes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from safegene.errors import SafeGeneError
from safegene.io import atomic_output_dir, check_output_path
from safegene.recipe import Recipe, TaskSpec, load_recipe

ABLATIONS = ("gene-uniform", "gene-select", "gene-calibrate")


@dataclass
class Variant:
    """One model to evaluate: `build(scratch)` writes what it needs and returns (path, adapter)."""

    method: str
    setting: dict
    build: Callable[[Path], tuple[Path, Path | None]]


def setting_label(setting: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items())


# --- the baselines ---------------------------------------------------------------------------


def baseline_variants(recipe: Recipe, task: TaskSpec) -> Iterator[Variant]:
    """Every baseline setting of the recipe's grids for one task model."""
    from safegene.baselines.interpolate import interpolate
    from safegene.baselines.resta import resta
    from safegene.baselines.safelora import safelora
    from safegene.baselines.safemerge import safemerge

    common = dict(adapter=task.adapter, progress=False)
    for s in recipe.methods.get("resta", []):
        yield Variant(
            "resta",
            s,
            lambda d, s=s: (
                resta(
                    task.model,
                    recipe.aligned,
                    recipe.degraded,
                    d,
                    beta=s["beta"],
                    dare_rate=s["dare"],
                    ties_density=s["ties"],
                    seed=recipe.seed,
                    **common,
                ),
                None,
            ),
        )
    for s in recipe.methods.get("safelora", []):

        def build_safelora(d, s=s):
            out = safelora(
                task.model,
                recipe.aligned,
                recipe.base,
                d,
                threshold=s.get("threshold"),
                number=s.get("number"),
                **common,
            )
            return (task.model, out) if task.adapter else (out, None)

        yield Variant("safelora", s, build_safelora)
    for s in recipe.methods.get("safemerge", []):
        yield Variant(
            "safemerge",
            s,
            lambda d, s=s: (
                safemerge(
                    task.model,
                    recipe.aligned,
                    recipe.base,
                    d,
                    threshold=s["threshold"],
                    task_weight=s["task_weight"],
                    dare_rate=s["dare"],
                    seed=recipe.seed,
                    **common,
                ),
                None,
            ),
        )
    for s in recipe.methods.get("interpolate", []):
        yield Variant(
            "interpolate",
            s,
            lambda d, s=s: (interpolate(task.model, recipe.aligned, d, t=s["t"], **common), None),
        )


# --- SafeGene --------------------------------------------------------------------------------


def express(gene: Path, task: TaskSpec, out: Path, coefficients=None) -> tuple[Path, Path]:
    """The gene on the task model as stock PEFT: an adapter on a full fine-tune, or one adapter
    combining the task LoRA and the gene (rank concatenation) on the aligned model."""
    from safegene.apply import apply_gene

    form = "combined" if task.adapter else "adapter"
    apply_gene(
        gene,
        task.model,
        out,
        form=form,
        adapter=task.adapter,
        coefficients=coefficients,
        progress=False,
    )
    return task.model, out


def safegene_variants(
    recipe: Recipe, task: TaskSpec, genes: dict[int, Path], keep: Path
) -> Iterator[Variant]:
    """SafeGene (select → calibrate → express) and, when asked, its three ablations.

    Selection and calibration use only the recipe's few-shot data (harmful_shots, the task's
    shots); the calibrated genes are kept under `keep`."""
    from safegene.calibrate import calibrate
    from safegene.select import select

    for s in recipe.methods.get("safegene", []):
        gene = genes[s["rank"]]
        shown = {k: v for k, v in s.items() if k != "ablations"}
        tag = f"{task.name}-r{s['rank']}-k{s['shots']}" + (
            f"-top{s['top_k']}" if "top_k" in s else ""
        )
        shots = dict(
            harmful=recipe.harmful_shots,
            task=task.shots,
            adapter=task.adapter,
            aligned=recipe.aligned,
            seed=recipe.seed,
            device=recipe.device,
            dtype=recipe.dtype,
        )

        def selected(tag=tag, gene=gene, s=s) -> Path:
            out = keep / f"{tag}-selected"
            if not out.exists():
                select(gene, task.model, top_k=s.get("top_k"), out=out, **shots)
            return out

        def calibrated(d, tag=tag, s=s) -> tuple[Path, Path]:
            out = keep / f"{tag}-calibrated"
            calibrate(selected(), task.model, shots=s["shots"], out=out, **shots)
            return express(out, task, d)

        yield Variant("safegene", shown, calibrated)
        if not s["ablations"]:
            continue
        yield Variant(
            "gene-uniform", shown, lambda d, gene=gene: express(gene, task, d, coefficients=1.0)
        )
        yield Variant(
            "gene-select",
            shown,
            lambda d, selected=selected: express(selected(), task, d, coefficients=1.0),
        )

        def calibrated_all(d, tag=tag, gene=gene, s=s) -> tuple[Path, Path]:
            out = keep / f"{tag}-calibrated-all-layers"
            calibrate(gene, task.model, shots=s["shots"], layers="all", out=out, **shots)
            return express(out, task, d)

        yield Variant("gene-calibrate", shown, calibrated_all)


def extract_genes(recipe: Recipe, out: Path) -> dict[int, Path]:
    """One gene per rank in the SafeGene grid, extracted once for every task model."""
    from safegene.gene import extract

    genes = {}
    for rank in sorted({s["rank"] for s in recipe.methods.get("safegene", [])}):
        genes[rank] = extract(
            recipe.aligned,
            recipe.degraded,
            out / f"gene-r{rank}",
            rank=rank,
            device=recipe.device,
            seed=recipe.seed,
            progress=False,
        )
    return genes


# --- running ---------------------------------------------------------------------------------


def _eval_setup(recipe: Recipe, progress: bool):
    from safegene.evaluate import EvalSettings, GenerationSettings, load_data, make_judges

    settings = EvalSettings(
        generation=GenerationSettings(seed=recipe.seed, **recipe.generation),
        device=recipe.device,
        dtype=recipe.dtype,
        seed=recipe.seed,
        progress=progress,
        hash_models=False,
    )
    guard = recipe.guard or {}
    judges = make_judges(
        recipe.judges,
        guard_model=guard.get("model"),
        guard_format=guard.get("format", "llamaguard3"),
        device=recipe.device,
    )
    common = [
        load_data(recipe.harmful_test, "harmful", name="harmful_test"),
        load_data(recipe.benign_test, "benign", name="benign_test"),
    ]
    tasks = {t.name: load_data(t.test, "task", name=f"{t.name}_test") for t in recipe.tasks}
    return settings, judges, common, tasks


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[compare {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_compare(
    recipe: Recipe | str | Path, out: str | Path, *, force: bool = False, progress: bool = True
) -> dict:
    """Run the comparison of a recipe and write the report directory `out` atomically."""
    from safegene.evaluate import ModelSpec, evaluate_model

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    out = check_output_path(
        out,
        force,
        inputs=(
            recipe.aligned,
            *recipe.degraded,
            recipe.base,
            *(t.model for t in recipe.tasks),
            *(t.adapter for t in recipe.tasks),
            (recipe.guard or {}).get("model"),
        ),
    )  # inputs stay intact
    settings, judges, common, task_sets = _eval_setup(recipe, progress)
    judge_info = [j.describe() for j in judges]
    t0 = time.time()
    with atomic_output_dir(out, force) as tmp:
        scratch, keep = tmp / "scratch", tmp / "genes"
        scratch.mkdir()
        keep.mkdir()
        _log(progress, "evaluating the aligned model")
        samples = evaluate_model(
            ModelSpec("aligned", path=str(recipe.aligned)),
            common + list(task_sets.values()),
            judges,
            settings,
        )
        groups: dict[tuple[str, str, str], list] = {}
        for task in recipe.tasks:
            groups[(task.name, "aligned", "")] = [
                s for s in samples if s.split != "task" or s.dataset == task_sets[task.name].name
            ]
        genes = extract_genes(recipe, keep) if "safegene" in recipe.methods else {}
        for task in recipe.tasks:
            data = common + [task_sets[task.name]]
            variants = [
                Variant("task", {}, lambda d, task=task: (task.model, task.adapter)),
                *baseline_variants(recipe, task),
                *safegene_variants(recipe, task, genes, keep),
            ]
            for v in variants:
                label = setting_label(v.setting)
                _log(progress, f"{task.name}: {v.method} {label}".rstrip())
                work = scratch / f"{task.name}-{v.method}-{len(groups)}"
                path, adapter = v.build(work)
                name = f"{task.name}/{v.method}" + (f" ({label})" if label else "")
                spec = ModelSpec(name, path=str(path), adapter=str(adapter) if adapter else None)
                rows = evaluate_model(spec, data, judges, settings)
                samples += rows
                groups[(task.name, v.method, label)] = rows
                shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch)
        report = _report(recipe, groups, judge_info, settings, time.time() - t0)
        _write(tmp, report, samples)
    _log(progress, f"report written to {out}")
    return report


def _report(recipe: Recipe, groups: dict, judge_info: list[dict], settings, seconds: float) -> dict:
    """report.json: one row per (task model, method, setting) and a summary per task model."""
    from safegene.evaluate.pareto import row, summarize_task
    from safegene.evaluate.report import model_metrics, versions

    rows = []
    for (task, method, label), samples in groups.items():
        m = model_metrics(samples, judge_info, n_boot=settings.n_boot, seed=settings.seed)
        rows.append(row(task, method, label, m["summary"]))
    order = {t.name: i for i, t in enumerate(recipe.tasks)}
    rows.sort(key=lambda r: order[r["task_model"]])
    summaries = [summarize_task(rows, t.name) for t in recipe.tasks]
    return {
        "format": "safegene-compare",
        "format_version": 1,
        "rows": rows,
        "tasks": summaries,
        "judge": judge_info[0]["name"],
        "judges": judge_info,
        "recipe": str(recipe.source),
        "seed": recipe.seed,
        "generation": settings.generation.describe(),
        "versions": versions(),
        "wall_s": round(seconds, 1),
    }


def _write(tmp: Path, report: dict, samples: list) -> None:
    from safegene.evaluate.pareto import plot_pareto, render_markdown

    (tmp / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    with open(tmp / "samples.jsonl", "w", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps(s.to_json(), ensure_ascii=False) + "\n")
    (tmp / "report.md").write_text(render_markdown(report["tasks"], judge=report["judge"]))
    for t in report["tasks"]:
        plot_pareto(
            [r for r in report["rows"] if r["task_model"] == t["task_model"]],
            tmp / f"pareto-{t['task_model']}.png",
            title=f"{t['task_model']}: safety–utility",
            judge=report["judge"],
        )
    plot_pareto(report["rows"], tmp / "pareto.png", title="All task models", judge=report["judge"])


def format_table(report: dict) -> str:
    """The terminal version of the table (what `demo` prints at the end)."""
    from safegene.evaluate.pareto import render_markdown

    return render_markdown(report["tasks"], judge=report["judge"])
