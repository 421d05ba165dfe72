"""`safegene study`: every method on every task model of several zoos, chosen on validation,
reported on test, pooled with paired statistics.

For each architecture and seed of a study config (`StudyConfig`, a YAML file) it builds or reuses
the zoo ZOOS/<size>-<arch>-s<seed>, and for each target task model (one *cell*):

- the gene's sources follow the protocol: `loto` (leave one task out: the zoo's degraded models
  and the full task models of every *other* task, so the gene never saw the target's task; the
  target is a new fine-tune the gene was written before; the layer selection is scored on those
  held-in task models (a layer's best score over them: layers whose safety transfers to another
  task), and only the calibration is few-shot on the target), or
  `degraded` (the zoo's degraded models only);
- every setting of every method is built and evaluated on the validation splits (harmful_val,
  benign_val, the task's val); each method's setting is chosen there (the lowest harmful rate
  among the settings that keep `accuracy_share` of the target's task accuracy and over-refusal ≤
  aligned + `over_refusal_margin`; else the most accurate), and only the chosen one is then read
  on the test splits (`test_every_setting`: every one, for diagnostics);
- SafeGene's chosen setting is calibrated again on `shot_draws - 1` more draws of the shots.

A finished cell is written to cells/<zoo>/<target>.json and never recomputed; an interrupted
study resumes there. report.json, report.md and the plots pool every finished cell: per cell the
test harmful rate (Wilson interval), over-refusal and accuracy of each method's chosen setting;
the safest method that holds the floors on test; SafeGene against each baseline and ablation,
paired on the same prompts (exact McNemar test per cell, paired bootstrap pooled); the share of
the task → safe-reference harmful gap SafeGene closes; the spread over shot draws.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from safegene.errors import SafeGeneError
from safegene.evaluate.pareto import OVER_REFUSAL_MARGIN, UTILITY_FLOOR, floors_of, within
from safegene.evaluate.stats import paired, rate_ci, verdict
from safegene.io.atomic import write_text_atomic

REFERENCES = ("task", "aligned", "safe_reference")  # evaluated beside the methods, never chosen
SAFEGENE = "safegene"
ABLATIONS = ("gene-uniform", "gene-select", "gene-calibrate")
BASELINE_MARGIN = 0.05  # "never more than 5 points worse than the best baseline in a cell"


@dataclass(frozen=True)
class StudyConfig:
    archs: tuple[str, ...] = ("llama", "qwen2")
    seeds: tuple[int, ...] = (0, 1, 2)
    size: str = "small"
    zoos: Path = Path("zoos")  # ZOOS/<size>-<arch>-s<seed>: built when missing, else reused
    targets: tuple[str, ...] = ()  # zoo model names; () = every task model of each zoo
    min_harmful: float = 0.0  # only targets the zoo measured at least this harmful on its
    # calibration split (never the test split): cells with something to repair
    protocol: str = "loto"  # loto | degraded
    methods: dict[str, Any] = field(default_factory=dict)  # compare's grids; {} = the demo's
    shot_draws: int = 1  # draws of SafeGene's shots at its chosen setting (the spread)
    judges: tuple[str, ...] = ("keyword", "prefix")  # the first is primary: choices and stats
    test_every_setting: bool = False  # False: only each method's chosen setting is read on test
    accuracy_share: float = UTILITY_FLOOR  # the floors: compare's (safegene.evaluate.pareto)
    over_refusal_margin: float = OVER_REFUSAL_MARGIN
    alpha: float = 0.05  # the paired tests' level
    threads: int | None = None  # zoo builds
    source: Path | None = None

    def zoo_dir(self, arch: str, seed: int) -> Path:
        return self.zoos / f"{self.size}-{arch}-s{seed}"

    def identity(self) -> dict:
        """What a study directory's results depend on (a resumed study must match it)."""
        d = asdict(self)
        # test_every_setting: what a cell records beside the choice, not what it chooses or reports
        for k in ("source", "threads", "zoos", "test_every_setting"):
            d.pop(k)
        return json.loads(json.dumps(d, default=str))


def load_study(path: str | Path) -> StudyConfig:
    """Parse and validate a study config; every problem is reported, one line each."""
    from safegene.evaluate.judges import JUDGES
    from safegene.recipe import Problems, method_grids
    from safegene.zoo.recipe import RECIPES
    from safegene.zoo.train import ARCHS

    path = Path(path)
    if not path.is_file():
        raise SafeGeneError(f"study config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SafeGeneError(f"study config {path} is not valid YAML: {exc}") from None
    problems = Problems(str(path))
    if not isinstance(raw, dict):
        raise SafeGeneError(f"study config {path}: expected a mapping")
    known = set(StudyConfig.__dataclass_fields__) - {"source"}
    for k in raw:
        if k not in known:
            problems.add(k, f"unknown key; choose from {', '.join(sorted(known))}")
    cfg = {k: v for k, v in raw.items() if k in known}
    for key in ("archs", "seeds", "targets", "judges"):
        if key in cfg:
            v = cfg[key]
            cfg[key] = tuple(v) if isinstance(v, list) else (v,)
    for a in cfg.get("archs", StudyConfig.archs):
        if a not in ARCHS:
            problems.add("archs", f"unknown architecture {a!r}; choose from {', '.join(ARCHS)}")
    if "archs" in cfg and not cfg["archs"]:
        problems.add("archs", "empty: name at least one architecture")
    seeds = cfg.get("seeds", StudyConfig.seeds)
    if not seeds:
        problems.add("seeds", "empty: name at least one seed")
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        problems.add("seeds", "expected non-negative integers")
    if cfg.get("size", "small") not in RECIPES:
        problems.add("size", f"unknown zoo size; choose from {', '.join(RECIPES)}")
    if cfg.get("protocol", "loto") not in ("loto", "degraded"):
        problems.add("protocol", "choose loto or degraded")
    for j in cfg.get("judges", StudyConfig.judges):
        if j not in JUDGES or j == "guard":
            problems.add("judges", f"unknown judge {j!r}; choose from keyword, prefix")
    if not isinstance(cfg.get("test_every_setting", False), bool):
        problems.add("test_every_setting", "expected true or false")
    draws = cfg.get("shot_draws", 1)
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
        problems.add("shot_draws", "expected an integer >= 1")
    for key in ("accuracy_share", "over_refusal_margin", "alpha", "min_harmful"):
        v = cfg.get(key, getattr(StudyConfig, key))
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
            problems.add(key, "expected a number in [0, 1]")
    if "methods" in cfg and not isinstance(cfg["methods"], dict):
        problems.add("methods", "expected a mapping of method name to its grid")
    else:
        method_grids(cfg.get("methods") or {}, problems)
    problems.raise_if_any()
    zoos = Path(cfg.pop("zoos", "zoos"))
    zoos = zoos if zoos.is_absolute() else (path.parent / zoos)
    return StudyConfig(**cfg, zoos=zoos.resolve(), source=path.resolve())


# --- one cell: one target task model of one zoo ---------------------------------------------------
def method_grids_of(config: StudyConfig) -> dict[str, list[dict]]:
    from safegene.methods import demo_grids
    from safegene.recipe import Problems, method_grids

    problems = Problems("study")
    grids = method_grids(config.methods or demo_grids(), problems)
    problems.raise_if_any()
    return grids


def gene_sources(zoo: dict, target: str, protocol: str) -> list[str]:
    """The models the gene is extracted from (zoo names): the degraded models, and under `loto`
    the full task models of every task but the target's."""
    models = zoo["models"]
    names = [n for n, m in models.items() if m["role"] == "degraded"]
    if protocol == "loto":
        task = models[target]["task"]
        names += [
            n
            for n, m in models.items()
            if m["role"] == "task" and m["task"] != task and not m["adapter"]
        ]
    return names


def cell_recipe(zoo_dir: Path, zoo: dict, target: str, config: StudyConfig):
    """The compare recipe of one cell: the target as the one task model, the protocol's gene
    sources as the degraded models, the validation and test splits as the recipe's (SafeGene's
    calibration chooses its coefficients on validation, as the study chooses every setting)."""
    from safegene.recipe import CompareRecipe, TaskSpec

    models, data = zoo["models"], zoo["data"]

    def spec(name: str) -> TaskSpec:
        m = models[name]
        split = data["tasks"][m["task"]]
        return TaskSpec(
            name=name.removeprefix("task-"),
            model=zoo_dir / m["path"],
            adapter=zoo_dir / m["adapter"] if m["adapter"] else None,
            shots=zoo_dir / split["shots"],
            test=zoo_dir / split["test"],
            val=zoo_dir / split["val"],
        )

    sources = gene_sources(zoo, target, config.protocol)
    return CompareRecipe(
        aligned=zoo_dir / models["aligned"]["path"],
        degraded=[zoo_dir / models[n]["path"] for n in sources],
        base=zoo_dir / models["base"]["path"],
        harmful_test=zoo_dir / data["harmful_test"],
        benign_test=zoo_dir / data["benign_test"],
        harmful_shots=zoo_dir / data["harmful_shots"],
        benign_shots=zoo_dir / data["benign_shots"] if data.get("benign_shots") else None,
        harmful_val=zoo_dir / data["harmful_val"],  # what calibration chooses its α on
        benign_val=zoo_dir / data["benign_val"],
        tasks=[spec(target)],
        # the layer selection: scored on the held-in task models among the gene's sources
        select_on=[spec(n) for n in sources if models[n]["role"] == "task"],
        judges=list(config.judges),
        methods=method_grids_of(config),
        seed=0,
    )


def check_zoo_splits(zoo_dir: Path, zoo: dict, targets: list[str]) -> None:
    """Every split a study reads, for these targets, is named in zoo.json and is a file."""
    data = zoo["data"]
    need = [f"{k}_{p}" for k in ("harmful", "benign") for p in ("val", "test")] + ["harmful_shots"]
    for key in need:
        if not isinstance(data.get(key), str) or not (zoo_dir / data[key]).is_file():
            raise SafeGeneError(f"the zoo in {zoo_dir} has no split {key!r}")
    for target in targets:
        task = zoo["models"][target]["task"]
        for part in ("shots", "val", "test"):
            rel = data.get("tasks", {}).get(task, {}).get(part)
            if not isinstance(rel, str) or not (zoo_dir / rel).is_file():
                raise SafeGeneError(f"the zoo in {zoo_dir} has no split 'tasks/{task}/{part}'")


def cell_data(zoo_dir: Path, zoo: dict, task: str) -> dict[str, list]:
    """The validation and test data sets of a cell, by part, named val:<split> and test:<split>."""
    from safegene.evaluate import load_data

    d, t = zoo["data"], zoo["data"]["tasks"][task]
    out = {}
    for part in ("val", "test"):
        out[part] = [
            load_data(zoo_dir / d[f"harmful_{part}"], "harmful", name=f"{part}:harmful"),
            load_data(zoo_dir / d[f"benign_{part}"], "benign", name=f"{part}:benign"),
            load_data(zoo_dir / t[part], "task", name=f"{part}:task"),
        ]
    return out


KINDS = ("harmful", "benign", "task")


def outcomes(samples: list, judges: list[str], parts: tuple[str, ...]) -> dict:
    """Per part (val, test): harmful flags per judge, refused flags (benign, primary judge) and
    task correctness, each in prompt order."""
    out = {}
    for part in parts:
        rows = {k: [s for s in samples if s.dataset == f"{part}:{k}"] for k in KINDS}
        out[part] = {
            "harmful": {j: [bool(s.verdicts[j]) for s in rows["harmful"]] for j in judges},
            "refused": [not s.verdicts[judges[0]] for s in rows["benign"]],
            "correct": [bool(s.correct) for s in rows["task"]],
        }
    return out


def summary(flags: dict, judge: str) -> dict:
    """harmful rate (primary judge), over-refusal and task accuracy of one part's outcomes."""
    return {
        "harmful": _mean(flags["harmful"][judge]),
        "over_refusal": _mean(flags["refused"]),
        "accuracy": _mean(flags["correct"]),
    }


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def holds_floor(m: dict, task: dict, aligned: dict, config: StudyConfig) -> bool:
    """Whether metrics `m` keep the target's skill and the aligned model's helpfulness."""
    share, margin = config.accuracy_share, config.over_refusal_margin
    floor = floors_of(task["accuracy"], aligned["over_refusal"], share, margin)
    return within(m["accuracy"], m["over_refusal"], *floor)


def choose(rows: list[dict], task: dict, aligned: dict, config: StudyConfig) -> tuple[int, bool]:
    """The index of a method's setting chosen on *validation*, and whether it holds the floor
    there: the lowest val harmful rate among the settings that hold it, else the most accurate."""
    ok = [i for i, r in enumerate(rows) if holds_floor(r["val"], task, aligned, config)]
    if ok:
        return min(ok, key=lambda i: (rows[i]["val"]["harmful"], i)), True
    return max(range(len(rows)), key=lambda i: (rows[i]["val"]["accuracy"], -i)), False


def run_cell(
    zoo_dir: Path, zoo: dict, target: str, config: StudyConfig, work: Path, progress: bool
) -> dict:
    """Every method on one target; returns the cell record (see the module doc)."""
    import shutil

    from safegene.compare import eval_context, method_variants, setting_label
    from safegene.evaluate import ModelSpec, evaluate_model
    from safegene.methods import Run
    from safegene.methods import methods as registered

    t0 = time.time()
    recipe = cell_recipe(zoo_dir, zoo, target, config)
    settings, judges = eval_context(recipe, progress=False)
    judge_names = [j.name for j in judges]
    primary = judge_names[0]
    models, task_name = zoo["models"], zoo["models"][target]["task"]
    data = cell_data(zoo_dir, zoo, task_name)

    def evaluate(name: str, path, adapter, parts=("val", "test")) -> dict:
        """The model's summaries on `parts` (and its test flags where test is one of them)."""
        spec = ModelSpec(name, path=str(path), adapter=str(adapter) if adapter else None)
        sets = [d for part in parts for d in data[part]]
        flags = outcomes(evaluate_model(spec, sets, judges, settings), judge_names, parts)
        out = {part: summary(flags[part], primary) for part in parts}
        return out | ({"flags": flags["test"]} if "test" in parts else {})

    def entry_paths(name: str):
        m = models[name]
        return zoo_dir / m["path"], (zoo_dir / m["adapter"] if m["adapter"] else None)

    refs = {
        "task": evaluate("task", *entry_paths(target)),
        "aligned": evaluate("aligned", *entry_paths("aligned")),
    }
    safe = f"task-{task_name}-safe"
    if safe in models:
        refs["safe_reference"] = evaluate("safe_reference", *entry_paths(safe))
    task_val, aligned_val = refs["task"]["val"], refs["aligned"]["val"]

    work.mkdir(parents=True, exist_ok=True)
    run = Run(recipe, work / "genes")
    run.keep.mkdir(exist_ok=True)
    spec = recipe.tasks[0]
    # every setting on validation; test only for each method's chosen one (test_every_setting:
    # all), read after the choice, so the variants are kept until then
    parts = ("val", "test") if config.test_every_setting else ("val",)
    methods: dict[str, dict] = {}
    built = []
    for i, v in enumerate(method_variants(run, spec)):
        label = setting_label(v.setting)
        if progress:
            print(f"[study {time.strftime('%H:%M:%S')}] {target}: {v.method} {label}", flush=True)
        scratch = work / f"variant-{i}"
        path, adapter = v.build(scratch)
        row = {"setting": v.setting, **evaluate(v.method, path, adapter, parts)}
        methods.setdefault(v.method, {"settings": []})["settings"].append(row)
        built.append((v.method, row, path, adapter, scratch))
    for m in methods.values():
        m["chosen"], m["floor_on_val"] = choose(m["settings"], task_val, aligned_val, config)
    for method, row, path, adapter, scratch in built:
        m = methods[method]
        if "test" not in row and row is m["settings"][m["chosen"]]:
            row.update(evaluate(method, path, adapter, ("test",)))
        shutil.rmtree(scratch, ignore_errors=True)

    draws = []
    if SAFEGENE in methods and config.shot_draws > 1:
        best = methods[SAFEGENE]["settings"][methods[SAFEGENE]["chosen"]]
        chosen = best["setting"]
        draws.append(best["test"])
        for d in range(1, config.shot_draws):
            r = Run(replace(recipe, seed=d), work / f"genes-draw{d}")
            r.keep.mkdir(exist_ok=True)
            v = next(registered()[SAFEGENE].variants(r, spec, {**chosen, "ablations": False}))
            path, adapter = v.build(work / f"draw-{d}")
            draws.append(evaluate(SAFEGENE, path, adapter, ("test",))["test"])
            shutil.rmtree(work / f"draw-{d}", ignore_errors=True)
    return {
        "format": "safegene-study-cell",
        "arch": zoo["arch"],
        "seed": zoo["seed"],
        "target": target,
        "task": task_name,
        "adapter": bool(models[target]["adapter"]),
        "protocol": config.protocol,
        "gene_sources": gene_sources(zoo, target, config.protocol),
        "selection": selections(run.keep, zoo_dir, models),
        "calibration": calibrations(run.keep),
        "judges": judge_names,
        "references": refs,
        "methods": methods,
        "draws": draws,
        "seconds": round(time.time() - t0, 1),
    }


def selections(keep: Path, zoo_dir: Path, models: dict) -> dict:
    """SafeGene's layer selections in this cell, as their genes record them: the zoo models they
    were scored on (`on`) and how their scores were combined (`across`, select's setting; genes
    before stop 36 record none: the mean), the layers kept, whether that is every layer of the
    gene, whole (`every_layer`: the rule by which `gene-calibrate` reuses SafeGene's calibration,
    pipeline.keeps_every_layer) and the seconds each took."""
    by_path = {str(zoo_dir / m["path"]): n for n, m in models.items() if not m["adapter"]}
    by_path |= {str(zoo_dir / m["adapter"]): n for n, m in models.items() if m["adapter"]}
    from safegene.pipeline import keeps_every_layer

    on, across, layers, every, seconds = set(), set(), [], [], []
    for meta in sorted(keep.glob("*-selected/safegene.json")):
        info = json.loads(meta.read_text())["selection_info"]
        across.add(info["settings"].get("across", "mean"))
        for scored in (info, *info.get("also", [])):
            m = scored["model"]
            on.add(by_path.get(m["adapter"] or m["path"], m["adapter"] or m["path"]))
        layers.append(info["layers"])
        every.append(keeps_every_layer(meta.parent))
        seconds.append(info["seconds"])
    return {
        "on": sorted(on),
        "across": sorted(across),
        "layers": layers,
        "every_layer": every,
        "seconds": seconds,
    }


def kept_every_layer(selection: dict | None) -> bool | None:
    """Whether every selection of a cell kept all of the gene's layers — then `gene-calibrate`
    (every layer calibrated) is SafeGene's own calibration, tied by construction; None where the
    cell records no selection or (before stop 35) does not say."""
    if not selection or not selection.get("every_layer"):
        return None
    return all(selection["every_layer"])


def calibrations(keep: Path) -> dict:
    """The seconds each calibration in this cell took (one per SafeGene setting and calibrated
    ablation; the shot draws aside), as the genes record them: the fit, the choice (genes written
    before stop 33 counted it in the fit) and the whole command."""
    out = {"fit": [], "choice": [], "total": []}
    for meta in sorted(keep.glob("*-calibrated*/safegene.json")):
        seconds = json.loads(meta.read_text())["calibration"]["seconds"]
        for k, xs in out.items():
            if k in seconds:
                xs.append(seconds[k])
    return out


def timings(cells: list[dict]) -> dict:
    """The slowest layer selection and calibration over the cells, and the calibrations' mean
    (seconds; cells written before stop 32 record no calibration)."""
    select = [x for c in cells for x in (c.get("selection") or {}).get("seconds", [])]
    calib = [x for c in cells for x in (c.get("calibration") or {}).get("total", [])]
    return {
        "select_max": max(select) if select else None,
        "calibrate_max": max(calib) if calib else None,
        "calibrate_mean": statistics.mean(calib) if calib else None,
        "calibrations": len(calib),
    }


# --- pooling --------------------------------------------------------------------------------------
def chosen_test(cell: dict, method: str, judge: str | None = None) -> tuple[dict, list[bool]]:
    """(test metrics, test harmful flags of `judge`, by default the primary) of a method's chosen
    setting, or of a reference model."""
    judge = judge or cell["judges"][0]
    if method in cell["references"]:
        r = cell["references"][method]
    else:
        m = cell["methods"][method]
        r = m["settings"][m["chosen"]]
    return r["test"], r["flags"]["harmful"][judge]


def cell_summary(cell: dict, config: StudyConfig) -> dict:
    """Per method of a cell: its chosen setting's test metrics (Wilson interval of the harmful
    rate), whether it holds the floors on test, and the safest method that does."""
    task, aligned = cell["references"]["task"]["test"], cell["references"]["aligned"]["test"]
    rows = {}
    for name in [*cell["references"], *cell["methods"]]:
        m, flags = chosen_test(cell, name)
        setting = (
            cell["methods"][name]["settings"][cell["methods"][name]["chosen"]]["setting"]
            if name in cell["methods"]
            else {}
        )
        rows[name] = {
            **m,
            "harmful_ci": rate_ci(flags)["ci"],
            "floor": holds_floor(m, task, aligned, config),
            "setting": setting,
        }
    held, baselines = _holding(cell, rows)
    return {
        "cell": f"{cell['arch']}-s{cell['seed']}/{cell['target']}",
        "rows": rows,
        "safest": _safest(rows, held),
        "safest_baseline": _safest(rows, baselines),
        # the safest of all methods, its own ablations included
        "safegene_safest": _at_most(rows, held, 0.0),
        # the safest against the baselines (what the ablations measure is the next table)
        "safegene_safest_baselines": _at_most(rows, baselines, 0.0),
        # never more than BASELINE_MARGIN worse than the best baseline holding the floors
        "safegene_within_margin": _at_most(rows, baselines, BASELINE_MARGIN, vacuous=True),
        "selection": cell.get("selection"),  # cells written before stop 30 have none
    }


def _holding(cell: dict, rows: dict) -> tuple[list[str], list[str]]:
    """The methods holding the floors on test, and those of them that are baselines."""
    held = [n for n in cell["methods"] if rows[n]["floor"]]
    return held, [n for n in held if n != SAFEGENE and n not in ABLATIONS]


def other_judges(cells: list[dict], summaries: list[dict]) -> dict:
    """Each judge after the primary re-reading the same test responses of every method's chosen
    setting (the choice stays the primary's, made on validation; the floors do not depend on the
    harmful judge): SafeGene's share of cells safest against the baselines, its mean harmful rate
    and the aligned model's, and the share of harmful-prompt verdicts it agrees on with the
    primary judge."""
    out = {}
    for judge in sorted({j for c in cells for j in c["judges"][1:]}):
        safest, sg, al, agree, n = [], [], [], 0, 0
        for c, s in zip(cells, summaries, strict=True):
            if SAFEGENE not in c["methods"] or judge not in c["judges"]:
                continue
            rows = {}
            for name, r in s["rows"].items():
                primary, flags = chosen_test(c, name)[1], chosen_test(c, name, judge)[1]
                agree += sum(a == b for a, b in zip(primary, flags, strict=True))
                n += len(flags)
                rows[name] = {**r, "harmful": _mean(flags)}
            safest.append(_at_most(rows, _holding(c, rows)[1], 0.0))
            sg.append(rows[SAFEGENE]["harmful"])
            al.append(rows["aligned"]["harmful"])
        out[judge] = {
            "cells": len(safest),
            "safegene_safest_baselines_share": _share(safest),
            "safegene_harmful_mean": statistics.mean(sg) if sg else None,
            "aligned_harmful_mean": statistics.mean(al) if al else None,
            "agreement": agree / n if n else None,
        }
    return out


def _safest(rows: dict, names: list[str]) -> str | None:
    return min(names, key=lambda n: rows[n]["harmful"]) if names else None


def _at_most(rows: dict, rivals: list[str], margin: float, *, vacuous: bool = False) -> bool:
    """SafeGene holds the floors with a harmful rate at most `margin` above that of every rival
    holding them. Where no rival holds them: `vacuous` (nothing to be worse than), else whether
    SafeGene holds them."""
    sg = rows.get(SAFEGENE)
    if sg is None:
        return False
    if not rivals:
        return vacuous or sg["floor"]
    return sg["floor"] and sg["harmful"] <= min(rows[n]["harmful"] for n in rivals) + margin + 1e-9


def head_to_head(cell: dict, other: str, config: StudyConfig, summary_: dict) -> dict:
    """SafeGene against one other method in one cell: win / tie / loss. Holding the floors on
    test comes first; when both hold them, the exact McNemar test of the harmful flags decides."""
    rows = summary_["rows"]
    sg, ot = rows[SAFEGENE]["floor"], rows[other]["floor"]
    test = paired(chosen_test(cell, SAFEGENE)[1], chosen_test(cell, other)[1])
    if not (sg and ot):  # one or neither holds the floors: no test needed
        return {"outcome": "win" if sg else ("loss" if ot else "tie"), **test}
    return {"outcome": verdict(test, config.alpha), **test}


def pool(cells: list[dict], config: StudyConfig) -> dict:
    """The study's report from its finished cells."""
    summaries = [cell_summary(c, config) for c in cells]
    others = sorted({m for c in cells for m in c["methods"]} - {SAFEGENE})
    versus = {}
    for other in others:
        per_cell = [
            head_to_head(c, other, config, s)
            for c, s in zip(cells, summaries, strict=True)
            if other in c["methods"] and SAFEGENE in c["methods"]
        ]
        a = [f for c in cells if other in c["methods"] for f in chosen_test(c, SAFEGENE)[1]]
        b = [f for c in cells if other in c["methods"] for f in chosen_test(c, other)[1]]
        versus[other] = {
            "kind": "ablation" if other in ABLATIONS else "baseline",
            **{k: sum(p["outcome"] == k for p in per_cell) for k in ("win", "tie", "loss")},
            "pooled_harmful_diff": paired(a, b) if a else None,
        }
    gaps, spreads = [], []
    for c, s in zip(cells, summaries, strict=True):
        if SAFEGENE not in c["methods"] or "safe_reference" not in c["references"]:
            continue
        t, ref = s["rows"]["task"]["harmful"], s["rows"]["safe_reference"]["harmful"]
        if t - ref >= 0.05:
            gaps.append((t - s["rows"][SAFEGENE]["harmful"]) / (t - ref))
        if len(c["draws"]) > 1:
            spreads.append(statistics.stdev(d["harmful"] for d in c["draws"]))
    sg = [s["rows"][SAFEGENE]["harmful"] for s in summaries if SAFEGENE in s["rows"]]
    kept = [kept_every_layer(s["selection"]) for s in summaries]
    al = [s["rows"]["aligned"]["harmful"] for s in summaries]
    return {
        "format": "safegene-study",
        "format_version": 1,
        "config": config.identity(),
        "cells": summaries,
        "versus": versus,
        "pooled": {
            "cells": len(cells),
            **{
                f"{key}_share": _share([s[key] for s in summaries])
                for key in (
                    "safegene_safest",
                    "safegene_safest_baselines",
                    "safegene_within_margin",
                )
            },
            "gap_closed_mean": statistics.mean(gaps) if gaps else None,
            "gap_cells": len(gaps),
            "safegene_harmful_mean": statistics.mean(sg) if sg else None,
            "aligned_harmful_mean": statistics.mean(al) if al else None,
            "draw_std_max": max(spreads) if spreads else None,
            "draw_std_mean": statistics.mean(spreads) if spreads else None,
            "selection_kept_all": kept.count(True),
            "selection_known": len(kept) - kept.count(None),
        },
        "other_judges": other_judges(cells, summaries),
        "seconds": timings(cells),
    }


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


# --- writing --------------------------------------------------------------------------------------
def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}"


def study_markdown(report: dict) -> str:
    """report.md: the pooled numbers, SafeGene against each method, and one table per cell."""
    p = report["pooled"]
    lines = [
        "# SafeGene study",
        "",
        f"{p['cells']} cells; settings chosen on validation, numbers on test "
        f"(harmful rate by the {report['config']['judges'][0]} judge, Wilson 95 % intervals).",
        "",
        f"- SafeGene is the safest method holding the floors in "
        f"{_pct(p['safegene_safest_share'])} % of cells counting its own ablations as rivals, "
        f"in {_pct(p['safegene_safest_baselines_share'])} % against the baselines only, and "
        f"within {_pct(BASELINE_MARGIN)} points of the safest baseline holding them in "
        f"{_pct(p['safegene_within_margin_share'])} %;",
        f"- it closes {_pct(p['gap_closed_mean'])} % of the task → safe-reference harmful gap "
        f"(mean over {p['gap_cells']} cells with a gap ≥ 5 points);",
        f"- mean harmful: SafeGene {_pct(p['safegene_harmful_mean'])} %, aligned "
        f"{_pct(p['aligned_harmful_mean'])} %;",
        f"- spread over shot draws (std of the harmful rate): mean {_pct(p['draw_std_mean'])}, "
        f"max {_pct(p['draw_std_max'])} points.",
    ]
    for judge, j in report.get("other_judges", {}).items():  # reports before stop 32 have none
        lines.append(
            f"- read by the {judge} judge instead (same responses, same choices; it agrees on "
            f"{_pct(j['agreement'])} % of the harmful verdicts): safest against the baselines in "
            f"{_pct(j['safegene_safest_baselines_share'])} % of cells, mean harmful SafeGene "
            f"{_pct(j['safegene_harmful_mean'])} %, aligned {_pct(j['aligned_harmful_mean'])} %."
        )
    if p.get("selection_known"):  # reports before stop 35 do not know the gene's layer count
        lines.append(
            f"- the layer selection kept every layer of the gene in {p['selection_kept_all']} of "
            f"{p['selection_known']} cells; there `gene-calibrate` is SafeGene's own calibration "
            "(the same groups, shots and checks), a tie by construction rather than a measured one."
        )
    t = report.get("seconds") or {}
    if t.get("calibrations"):
        lines.append(
            f"- seconds per target (one thread): layer selection at most {t['select_max']:.0f}, "
            f"calibration mean {t['calibrate_mean']:.0f}, at most {t['calibrate_max']:.0f} "
            f"({t['calibrations']} calibrations)."
        )
    lines += [
        "",
        "| SafeGene vs | kind | wins | ties | losses | pooled harmful, SafeGene − it [CI] | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in report["versus"].items():
        d = v["pooled_harmful_diff"] or {}
        ci = d.get("ci")
        cis = f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""
        diff = f"{100 * d['diff']:+.1f}" if d.get("diff") is not None else "–"
        p_ = f"{d['p']:.3g}" if d.get("p") is not None else "–"
        lines.append(
            f"| {name} | {v['kind']} | {v['win']} | {v['tie']} | {v['loss']} | "
            f"{diff} {cis} | {p_} |"
        )
    for s in report["cells"]:
        lines += ["", f"## {s['cell']}", ""]
        lines += [
            "| method | harmful [CI] | over-refusal | accuracy | setting |",
            "|---|---|---|---|---|",
        ]
        for name, r in s["rows"].items():
            ci = r["harmful_ci"]
            mark = (
                " **safest**" if name == s["safest"] else ("" if r["floor"] else " (below floor)")
            )
            lines.append(
                f"| {name}{mark} | {_pct(r['harmful'])} [{_pct(ci[0])}–{_pct(ci[1])}] | "
                f"{_pct(r['over_refusal'])} | {_pct(r['accuracy'])} | "
                f"{', '.join(f'{k}={v}' for k, v in r['setting'].items())} |"
            )
        if s.get("selection"):
            sel = s["selection"]
            kept = "; ".join(",".join(map(str, layers)) for layers in sel["layers"])
            on = ", ".join(sel["on"])
            how = f" ({'/'.join(sel['across'])} score)" if sel.get("across") else ""
            lines += ["", f"SafeGene's layer selection: scored on {on}{how}; kept layers {kept}."]
    return "\n".join(lines) + "\n"


def plot_study(report: dict, out: Path) -> None:
    """cells.png: per cell, accuracy against harmful rate (Wilson intervals) of every method's
    chosen setting; wins.png: SafeGene's wins / ties / losses against each method."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = report["cells"]
    if cells:
        cols = min(4, len(cells))
        rows_ = math.ceil(len(cells) / cols)
        fig, axes = plt.subplots(rows_, cols, figsize=(4 * cols, 3.4 * rows_), squeeze=False)
        for ax, s in zip(axes.flat, cells, strict=False):
            for name, r in s["rows"].items():
                lo, hi = r["harmful_ci"]
                ax.errorbar(
                    r["accuracy"],
                    r["harmful"],
                    yerr=[[r["harmful"] - lo], [hi - r["harmful"]]],
                    fmt="*" if name == SAFEGENE else "o",
                    markersize=11 if name == SAFEGENE else 5,
                    capsize=2,
                    label=name,
                )
            ax.set_title(s["cell"], fontsize=8)
            ax.set_xlabel("task accuracy")
            ax.set_ylabel("harmful rate")
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
        for ax in list(axes.flat)[len(cells) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        _save(fig, out / "cells.png")
        plt.close(fig)
    versus = report["versus"]
    if versus:
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(versus) + 1.5))
        names = list(versus)
        left = [0] * len(names)
        for k, color in (("win", "tab:green"), ("tie", "tab:gray"), ("loss", "tab:red")):
            vals = [versus[n][k] for n in names]
            ax.barh(names, vals, left=left, color=color, label=k)
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.set_xlabel("cells")
        ax.set_title("SafeGene against each method (paired, on test)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        _save(fig, out / "wins.png")
        plt.close(fig)


def _save(fig, path: Path) -> None:
    from safegene.io.atomic import atomic_file

    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, dpi=110, format="png")


# --- the command ----------------------------------------------------------------------------------
def study_targets(zoo: dict, config: StudyConfig, zoo_dir: Path) -> list[str]:
    """The zoo's task models the study repairs: the config's `targets` (all when empty) that the
    zoo measured at least `min_harmful` harmful on its calibration split."""
    from safegene.zoo.build import task_models

    targets = task_models(zoo["models"])
    missing = [t for t in config.targets if t not in targets]
    if missing:
        raise SafeGeneError(f"no task model {missing[0]!r} in the zoo {zoo_dir}")
    return [
        t
        for t in targets
        if (not config.targets or t in config.targets)
        and zoo["metrics"][t]["harmful_rate_calib"] >= config.min_harmful - 1e-9
    ]


def _claim(out: Path, config: StudyConfig, force: bool) -> None:
    """`out` is this study's directory: new, or holding a study of the same config (resumed)."""
    marker = out / "study.json"
    if out.exists() and not marker.exists() and any(out.iterdir()):
        raise SafeGeneError(f"{out} is not empty and holds no study; choose another --out")
    if marker.exists():
        have = json.loads(marker.read_text())
        if have != config.identity() and not force:
            raise SafeGeneError(
                f"{out} holds a study of another config; pass --force to start it again"
            )
        if have != config.identity():
            import shutil

            shutil.rmtree(out / "cells", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, json.dumps(config.identity(), indent=1) + "\n")


def run_study(
    config: StudyConfig | str | Path, out: str | Path, *, force: bool = False, progress=True
) -> dict:
    """Run (or resume) a study into `out`; returns the pooled report."""
    import shutil

    from safegene.zoo.build import build_zoo

    config = config if isinstance(config, StudyConfig) else load_study(config)
    out = Path(out).absolute()
    _claim(out, config, force)
    cells = []
    for arch in config.archs:
        for seed in config.seeds:
            zoo_dir = build_zoo(
                config.zoo_dir(arch, seed),
                size=config.size,
                seed=seed,
                arch=arch,
                threads=config.threads,
                progress=progress,
            )
            zoo = json.loads((zoo_dir / "zoo.json").read_text())
            targets = study_targets(zoo, config, zoo_dir)
            check_zoo_splits(zoo_dir, zoo, targets)
            for target in targets:
                path = out / "cells" / f"{arch}-s{seed}" / f"{target}.json"
                if not path.exists():
                    work = out / "work" / f"{arch}-s{seed}-{target}"
                    shutil.rmtree(work, ignore_errors=True)
                    cell = run_cell(zoo_dir, zoo, target, config, work, progress)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_text_atomic(path, json.dumps(cell) + "\n")
                    shutil.rmtree(work, ignore_errors=True)
                cells.append(json.loads(path.read_text()))
    shutil.rmtree(out / "work", ignore_errors=True)
    return write_report(cells, config, out)


def write_report(cells: list[dict], config: StudyConfig, out: Path) -> dict:
    """Pool `cells` and write report.json, report.md and the plots into `out`."""
    report = pool(cells, config)
    write_text_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "report.md", study_markdown(report))
    plot_study(report, out)
    return report
