"""`safegene demo`: the main job on the embedded model family.

Builds the zoo (or reuses a finished one), writes the zoo's compare recipe, runs `compare` on it
and prints the table and the report's path. Everything lands under one directory:

    DIR/zoo/          the model family (safegene zoo build)
    DIR/recipe.yaml   the comparison recipe (paths relative to DIR)
    DIR/report/       the comparison report (safegene compare)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from safegene.errors import SafeGeneError
from safegene.io.atomic import write_text_atomic
from safegene.methods import demo_grids
from safegene.zoo.build import task_models


def zoo_recipe(
    zoo_dir: Path,
    relative_to: Path,
    *,
    generation: dict | None = None,
    methods: dict | None = None,
    seed: int = 0,
) -> dict:
    """The compare recipe of a built zoo: every task model (each task as a full fine-tune and as a
    LoRA; the zoo's safe references are not targets), with the zoo's validation splits, so that
    every method's setting is chosen on them and read on test."""
    zoo_file = zoo_dir / "zoo.json"
    if not zoo_file.is_file():
        raise SafeGeneError(f"not a finished zoo (no zoo.json): {zoo_dir}")
    zoo = json.loads(zoo_file.read_text())

    def rel(p: str | None) -> str | None:
        return None if p is None else os.path.relpath(zoo_dir / p, relative_to)

    models, data = zoo["models"], zoo["data"]
    tasks = []
    for name in task_models(models):
        m = models[name]
        split = data["tasks"][m["task"]]
        tasks.append(
            {
                "name": name.removeprefix("task-"),
                "model": rel(m["path"]),
                "adapter": rel(m["adapter"]),
                "shots": rel(split["shots"]),
                "test": rel(split["test"]),
                "val": rel(split["val"]),
            }
        )
    return {
        "family": {
            "aligned": rel(models["aligned"]["path"]),
            "degraded": [rel(models["degraded"]["path"])],
            "base": rel(models["base"]["path"]),
        },
        "data": {
            k: rel(data[k])
            for k in (
                "harmful_test",
                "benign_test",
                "harmful_shots",
                "benign_shots",
                "harmful_val",
                "benign_val",
            )
            if data.get(k)  # benign_shots: zoos from before it was a split lack it
        },
        "tasks": tasks,
        "judges": ["keyword", "prefix"],
        "methods": methods or demo_grids(),  # each method's demo grid (safegene.methods)
        "generation": generation or {"max_new_tokens": 48, "batch_size": 64},
        "seed": seed,
        "device": "cpu",
        "dtype": "float32",
    }


def run_demo(
    out: str | Path = "demo-out",
    *,
    size: str = "small",
    seed: int = 0,
    zoo: str | Path | None = None,
    methods: dict | None = None,
    tasks: list[str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Build/reuse the zoo, write the recipe, run compare; returns the compare report.

    `zoo`: an already built zoo to use instead of DIR/zoo. `methods`, `tasks`: a smaller grid or
    a subset of the task models (names as in the recipe, e.g. "howto", "howto-lora")."""
    from safegene.compare import run_compare
    from safegene.zoo.build import build_zoo

    out = Path(out).absolute()
    if zoo is not None and not (Path(zoo) / "zoo.json").is_file():
        raise SafeGeneError(f"not a finished zoo (no zoo.json): {zoo}")
    out.mkdir(parents=True, exist_ok=True)
    report_dir = out / "report"
    if report_dir.exists() and not force:
        raise SafeGeneError(
            f"{report_dir} exists; pass --force to run the comparison again "
            "(the zoo is reused either way)"
        )
    zoo_dir = (
        Path(zoo).absolute()
        if zoo
        else build_zoo(out / "zoo", size=size, seed=seed, progress=progress)
    )
    recipe = zoo_recipe(zoo_dir, out, seed=seed, methods=methods)
    if tasks is not None:
        unknown = set(tasks) - {t["name"] for t in recipe["tasks"]}
        if unknown:
            raise SafeGeneError(f"no task model {sorted(unknown)[0]!r} in the zoo")
        recipe["tasks"] = [t for t in recipe["tasks"] if t["name"] in tasks]
    recipe_path = out / "recipe.yaml"
    write_text_atomic(recipe_path, yaml.safe_dump(recipe, sort_keys=False))
    return run_compare(recipe_path, report_dir, force=force, progress=progress)
