"""`safegene compare`: every defence on every task model, the same data and judges, one table.

For each task model of a recipe (safegene.recipe) it evaluates, with safegene.evaluate:
- `task` (no defence) and `aligned` (the safety ceiling; evaluated once for all tasks);
- every setting of every registered method the recipe names (safegene.methods), in the
  registry's order: the baselines (RESTA, SafeLoRA, SafeMERGE-style, interpolation, Antidote),
  each written to a scratch directory by the streaming code a user runs, evaluated, then
  deleted; and SafeGene with its ablations (safegene.pipeline), whose genes are kept.
Where the recipe gives validation splits (data.harmful_val, data.benign_val and every task's
val), every setting is evaluated on them too and each method's setting is *chosen* there
(safegene.evaluate.pareto.summarize_task), then reported with its test numbers; without them the
choice reads the test split itself, and the report says so (`chosen_on`).
The output directory (atomic) holds report.json (`rows` and per-task summaries), report.md,
samples.jsonl, pareto-<task>.png per task model, pareto.png pooled, and genes/ with the
calibrated genes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from safegene.io import atomic_output_dir, check_output_path
from safegene.methods import Run, Variant, methods
from safegene.recipe import CompareRecipe, TaskSpec, load_recipe

VAL = "val:"  # the name prefix of the validation data sets


def setting_label(setting: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items())


def method_variants(run: Run, task: TaskSpec) -> Iterator[Variant]:
    """Every setting of every registered method the recipe names, for one task model (in the
    registry's order)."""
    for name, method in methods().items():
        for setting in run.recipe.methods.get(name, []):
            yield from method.variants(run, task, setting)


# --- running ---------------------------------------------------------------------------------


def eval_context(recipe: CompareRecipe, progress: bool):
    """The evaluation settings and judges of a recipe (compare's and the study's)."""
    from safegene.evaluate import EvalSettings, GenerationSettings, make_judges

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
    return settings, judges


def _eval_setup(recipe: CompareRecipe, progress: bool):
    """The settings, judges, the data sets every task model is evaluated on and each task's own
    (its test split, and its val split where the recipe chooses on validation: data sets named
    val:<split>, see `is_validation`)."""
    from safegene.evaluate import load_data

    settings, judges = eval_context(recipe, progress)
    common = [
        load_data(recipe.harmful_test, "harmful", name="harmful_test"),
        load_data(recipe.benign_test, "benign", name="benign_test"),
    ]
    tasks = {t.name: [load_data(t.test, "task", name=f"{t.name}_test")] for t in recipe.tasks}
    if recipe.validation:
        common += [
            load_data(recipe.harmful_val, "harmful", name=f"{VAL}harmful"),
            load_data(recipe.benign_val, "benign", name=f"{VAL}benign"),
        ]
        for t in recipe.tasks:
            tasks[t.name].append(load_data(t.val, "task", name=f"{VAL}{t.name}"))
    return settings, judges, common, tasks


def is_validation(sample) -> bool:
    """Whether an evaluated sample is of a validation split (it chooses; it is never reported)."""
    return sample.dataset.startswith(VAL)


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[compare {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_compare(
    recipe: CompareRecipe | str | Path,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Run the comparison of a recipe and write the report directory `out` atomically."""
    from safegene.evaluate import ModelSpec, evaluate_model

    recipe = recipe if isinstance(recipe, CompareRecipe) else load_recipe(recipe)
    out = check_output_path(out, force, inputs=recipe.input_paths())  # inputs stay intact
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
            common + [d for sets in task_sets.values() for d in sets],
            judges,
            settings,
        )
        groups: dict[tuple[str, str, str], list] = {}
        for task in recipe.tasks:
            own = {d.name for d in task_sets[task.name]}
            groups[(task.name, "aligned", "")] = [
                s for s in samples if s.split != "task" or s.dataset in own
            ]
        run = Run(recipe, keep)
        for task in recipe.tasks:
            data = common + task_sets[task.name]
            variants = [
                Variant("task", {}, lambda d, task=task: (task.model, task.adapter)),
                *method_variants(run, task),
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


def _report(
    recipe: CompareRecipe, groups: dict, judge_info: list[dict], settings, seconds: float
) -> dict:
    """report.json: one row per (task model, method, setting) and a summary per task model."""
    from safegene.evaluate.pareto import row, summarize_task
    from safegene.evaluate.report import model_metrics, versions

    def metrics(samples: list) -> dict | None:
        kw = dict(n_boot=settings.n_boot, seed=settings.seed)
        return model_metrics(samples, judge_info, **kw)["summary"] if samples else None

    rows = []
    for (task, method, label), samples in groups.items():
        test = metrics([s for s in samples if not is_validation(s)])
        val = metrics([s for s in samples if is_validation(s)])
        rows.append(row(task, method, label, test, val=val))
    order = {t.name: i for i, t in enumerate(recipe.tasks)}
    rows.sort(key=lambda r: order[r["task_model"]])
    summaries = [summarize_task(rows, t.name) for t in recipe.tasks]
    return {
        "format": "safegene-compare",
        "format_version": 1,
        "rows": rows,
        "tasks": summaries,
        "chosen_on": "validation" if recipe.validation else "test",
        "judge": judge_info[0]["name"],
        "judges": judge_info,
        "recipe": str(recipe.source),
        "seed": recipe.seed,
        "generation": settings.generation.describe(),
        "versions": versions(),
        "wall_s": round(seconds, 1),
    }


def _write(tmp: Path, report: dict, samples: list) -> None:
    from safegene.evaluate.pareto import comparison_markdown, plot_pareto

    (tmp / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    with open(tmp / "samples.jsonl", "w", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps(s.to_json(), ensure_ascii=False) + "\n")
    (tmp / "report.md").write_text(comparison_markdown(report["tasks"], judge=report["judge"]))
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
    from safegene.evaluate.pareto import comparison_markdown

    return comparison_markdown(report["tasks"], judge=report["judge"])
