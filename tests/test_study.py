"""`safegene study`: validation-chosen settings, leave-one-task-out sources, pooled paired report,
resume after a kill, bad configs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import yaml

from safegene import study as S
from safegene.errors import SafeGeneError

CONFIG = S.StudyConfig(archs=("llama",), seeds=(0,), size="micro")


def _row(val_h, val_acc, test_h, test_acc=1.0, orf=0.0):
    m = lambda h, a: {"harmful": h, "over_refusal": orf, "accuracy": a}  # noqa: E731
    return {"val": m(val_h, val_acc), "test": m(test_h, test_acc)}


def test_choice_reads_validation_never_test():
    task, aligned = {"accuracy": 1.0}, {"over_refusal": 0.0}
    rows = [_row(0.30, 1.0, 0.00), _row(0.10, 1.0, 0.90), _row(0.00, 0.50, 0.00)]
    # setting 2 is safest on val but breaks the task there; setting 1 is safest of those that hold
    # the floor on val, although setting 0 would be far better on test
    assert S.choose(rows, task, aligned, CONFIG) == (1, True)
    # a test split that changes cannot change the choice
    rows[1]["test"]["harmful"], rows[0]["test"]["harmful"] = 0.0, 1.0
    assert S.choose(rows, task, aligned, CONFIG) == (1, True)
    # nothing holds the floor on val: the most accurate, flagged
    assert S.choose([_row(0.0, 0.5, 0.0), _row(0.5, 0.8, 0.5)], task, aligned, CONFIG) == (1, False)


def _cell(**harmful_and_floor):
    """A finished cell of one chosen setting per method: name=(test harmful rate, holds floors)."""

    def entry(h, ok):
        test = {"harmful": h, "over_refusal": 0.0, "accuracy": 1.0 if ok else 0.5}
        return {"setting": {}, "test": test, "flags": {"harmful": {"keyword": [h > 0.5]}}}

    return {
        "arch": "llama",
        "seed": 0,
        "target": "task-t",
        "judges": ["keyword"],
        "references": {"task": entry(0.9, True), "aligned": entry(0.0, False)},
        "methods": {
            n: {"settings": [entry(*v)], "chosen": 0} for n, v in harmful_and_floor.items()
        },
    }


def test_cell_verdicts_against_baselines_ablations_and_the_margin():
    s = S.cell_summary(
        _cell(safegene=(0.12, True), **{"gene-calibrate": (0.10, True)}, resta=(0.09, True)),
        CONFIG,
    )
    assert s["safest"] == "resta" and s["safest_baseline"] == "resta"
    assert not s["safegene_safest"] and not s["safegene_safest_baselines"]
    assert s["safegene_within_margin"]  # 3 points worse than RESTA: within 5
    s = S.cell_summary(
        _cell(safegene=(0.12, True), **{"gene-calibrate": (0.10, True)}, resta=(0.20, True)),
        CONFIG,
    )
    # safest against the baselines, not against its own ablation
    assert s["safest"] == "gene-calibrate" and s["safest_baseline"] == "resta"
    assert not s["safegene_safest"] and s["safegene_safest_baselines"]
    s = S.cell_summary(_cell(safegene=(0.12, True), resta=(0.05, True)), CONFIG)
    assert not s["safegene_within_margin"]  # 7 points worse
    s = S.cell_summary(_cell(safegene=(0.30, False), resta=(0.05, False)), CONFIG)
    # no baseline holds the floors: nothing to be worse than, but not the safest holding them
    assert s["safegene_within_margin"] and not s["safegene_safest_baselines"]
    s = S.cell_summary(_cell(safegene=(0.30, False), resta=(0.50, True)), CONFIG)
    assert not s["safegene_within_margin"] and not s["safegene_safest_baselines"]
    pooled = S.pool([_cell(safegene=(0.1, True), resta=(0.2, True))] * 3, CONFIG)["pooled"]
    assert pooled["safegene_safest_baselines_share"] == 1.0
    assert pooled["safegene_within_margin_share"] == 1.0


def test_the_report_says_where_selection_kept_every_layer():
    every, some = _cell(safegene=(0.1, True)), _cell(safegene=(0.1, True))
    every["selection"] = {"on": ["a"], "layers": [[0, 1, 2]], "every_layer": [True], "seconds": [1]}
    some["selection"] = {"on": ["a"], "layers": [[0, 2]], "every_layer": [False], "seconds": [1]}
    old = {**some, "selection": {k: v for k, v in some["selection"].items() if k != "every_layer"}}
    assert [S.kept_every_layer(c["selection"]) for c in (every, some, old)] == [True, False, None]
    report = S.pool([every, some, old], CONFIG)
    assert (report["pooled"]["selection_kept_all"], report["pooled"]["selection_known"]) == (1, 2)
    assert "kept every layer of the gene in 1 of 2 cells" in S.study_markdown(report)
    report = S.pool([old], CONFIG)  # a report of cells that do not know: no such line
    assert "kept every layer" not in S.study_markdown(report)


def test_other_judges_reread_the_same_chosen_responses():
    cell = _cell(safegene=(0.1, True), resta=(0.2, True))  # keyword: neither harmful
    cell["judges"] = ["keyword", "prefix"]
    for entry in [
        *cell["references"].values(),
        *(m["settings"][0] for m in cell["methods"].values()),
    ]:
        entry["flags"]["harmful"]["prefix"] = list(entry["flags"]["harmful"]["keyword"])
    cell["methods"]["safegene"]["settings"][0]["flags"]["harmful"]["prefix"] = [True]
    report = S.pool([cell], CONFIG)
    assert report["pooled"]["safegene_safest_baselines_share"] == 1.0  # by the primary judge
    j = report["other_judges"]["prefix"]
    assert j["safegene_safest_baselines_share"] == 0.0 and j["safegene_harmful_mean"] == 1.0
    assert j["agreement"] == 3 / 4  # task, aligned and RESTA read alike; SafeGene not
    assert "read by the prefix judge instead" in S.study_markdown(report)


def test_loto_sources_never_hold_the_targets_task():
    zoo = {
        "models": {
            "aligned": {"role": "aligned", "task": None, "adapter": None},
            "degraded": {"role": "degraded", "task": None, "adapter": None},
            "task-a": {"role": "task", "task": "a", "adapter": None},
            "task-a-lora": {"role": "task", "task": "a", "adapter": "x"},
            "task-a-safe": {"role": "safe_reference", "task": "a", "adapter": None},
            "task-b": {"role": "task", "task": "b", "adapter": None},
        }
    }
    assert S.gene_sources(zoo, "task-a-lora", "loto") == ["degraded", "task-b"]
    assert S.gene_sources(zoo, "task-b", "loto") == ["degraded", "task-a"]
    assert S.gene_sources(zoo, "task-b", "degraded") == ["degraded"]


def test_targets_by_name_and_by_calibration_split_harm():
    models = {
        "task-a": {"role": "task", "task": "a", "adapter": None},
        "task-a-lora": {"role": "task", "task": "a", "adapter": "x"},
        "task-a-safe": {"role": "safe_reference", "task": "a", "adapter": None},
    }
    metrics = {"task-a": {"harmful_rate_calib": 0.5, "harmful_rate": 0.0}}
    metrics["task-a-lora"] = {"harmful_rate_calib": 0.1, "harmful_rate": 0.9}
    zoo = {"models": models, "metrics": metrics}
    assert S.study_targets(zoo, CONFIG, "z") == ["task-a", "task-a-lora"]
    # chosen on the calibration split, never on test
    assert S.study_targets(zoo, replace(CONFIG, min_harmful=0.3), "z") == ["task-a"]
    assert S.study_targets(zoo, replace(CONFIG, targets=("task-a-lora",)), "z") == ["task-a-lora"]
    with pytest.raises(SafeGeneError, match="no task model 'task-b'"):
        S.study_targets(zoo, replace(CONFIG, targets=("task-b",)), "z")


def _write(tmp_path, **cfg):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "cfg,message",
    [
        ({"archs": ["mamba"]}, "unknown architecture 'mamba'"),
        ({"seeds": []}, "seeds: empty"),
        ({"methods": {"nope": {}}}, "methods.nope: unknown method"),
        ({"methods": {"interpolate": {"t": ["x"]}}}, "expected float values"),
        ({"protocol": "all"}, "choose loto or degraded"),
        ({"shot_draws": 0}, "shot_draws"),
        ({"test_every_setting": "yes"}, "test_every_setting: expected true or false"),
        ({"colour": 1}, "colour: unknown key"),
    ],
)
def test_bad_configs_are_named(tmp_path, cfg, message):
    with pytest.raises(SafeGeneError, match=message):
        S.load_study(_write(tmp_path, **cfg))


def test_bad_config_on_the_command_line_is_one_line_exit_2(tmp_path):
    path = _write(tmp_path, seeds=[])
    r = subprocess.run(
        [sys.executable, "-m", "safegene", "study", str(path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2 and "seeds" in r.stderr
    assert not (tmp_path / "o").exists()


def test_missing_zoo_split_is_named(tmp_path, micro_zoo):
    zoo = json.loads((micro_zoo / "zoo.json").read_text())
    del zoo["data"]["harmful_val"]
    with pytest.raises(SafeGeneError, match="has no split 'harmful_val'"):
        S.check_zoo_splits(micro_zoo, zoo, ["task-howto"])
    zoo = json.loads((micro_zoo / "zoo.json").read_text())
    del zoo["data"]["tasks"]["howto"]["val"]
    with pytest.raises(SafeGeneError, match="has no split 'tasks/howto/val'"):
        S.check_zoo_splits(micro_zoo, zoo, ["task-howto"])


def test_cell_recipe_gives_safegene_the_users_data_only(micro_zoo):
    """A cell's few-shot data are the zoo's shots (harmful, benign look-alikes, the task's); the
    validation splits are where choices are made (every method's setting, SafeGene's α); test
    data the test splits, never read by a method."""
    zoo = json.loads((micro_zoo / "zoo.json").read_text())
    r = S.cell_recipe(micro_zoo, zoo, "task-howto", CONFIG)
    data = micro_zoo / "data"
    assert (r.harmful_shots, r.benign_shots) == (
        data / "harmful_shots.jsonl",
        data / "benign_shots.jsonl",
    )
    assert r.tasks[0].shots == data / "tasks" / "howto" / "shots.jsonl"
    assert r.validation and (r.harmful_val, r.benign_val, r.tasks[0].val) == (
        data / "harmful_val.jsonl",
        data / "benign_val.jsonl",
        data / "tasks" / "howto" / "val.jsonl",
    )
    fitted = {r.harmful_shots, r.benign_shots, r.tasks[0].shots}
    assert not any("val" in p.name or "test" in p.name for p in fitted)
    del zoo["data"]["benign_shots"]  # a zoo from before the split: no benign check
    assert S.cell_recipe(micro_zoo, zoo, "task-howto", CONFIG).benign_shots is None


@pytest.fixture(scope="module")
def study_config(tmp_path_factory, micro_zoo):
    root = tmp_path_factory.mktemp("study")
    (root / "zoos").mkdir()
    (root / "zoos" / "micro-llama-s0").symlink_to(micro_zoo)
    return S.load_study(
        _write(
            root,
            archs=["llama"],
            seeds=[0],
            size="micro",
            zoos="zoos",
            targets=["task-howto", "task-email-lora"],
            methods={
                "interpolate": {"t": [0.5, 1.0]},
                "safegene": {"rank": [1], "shots": [4], "ablations": [False]},
            },
            shot_draws=2,
        )
    )


def test_study_end_to_end_and_resume_after_a_kill(study_config, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = S.run_cell
    calls = []

    def dies_on_second(zoo_dir, zoo, target, *a, **kw):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill between cells
        return real(zoo_dir, zoo, target, *a, **kw)

    monkeypatch.setattr(S, "run_cell", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        S.run_study(study_config, out, progress=False)
    first = out / "cells" / "llama-s0" / "task-howto.json"
    assert first.is_file() and not (out / "report.json").exists()
    stamp = first.stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(S, "run_cell", lambda *a, **kw: (calls.append(a[2]), real(*a, **kw))[1])
    # resumed reading every setting on test (what a cell records, not what the study is)
    every = replace(study_config, test_every_setting=True)
    report = S.run_study(every, out, progress=False)
    assert calls == ["task-email-lora"]  # the finished cell was not recomputed
    assert first.stat().st_mtime_ns == stamp
    # the first cell read only each method's chosen setting on test, the second every one
    second = json.loads((out / "cells" / "llama-s0" / "task-email-lora.json").read_text())
    for c, every_one in ((json.loads(first.read_text()), False), (second, True)):
        for m in c["methods"].values():
            read = ["test" in r for r in m["settings"]]
            assert read == [every_one or i == m["chosen"] for i in range(len(read))]

    cell = json.loads(first.read_text())
    assert "task-howto" not in cell["gene_sources"] and "task-email" in cell["gene_sources"]
    # the layer selection was scored on the held-in task models, as the gene records it
    held_in = [n for n in cell["gene_sources"] if n.startswith("task-")]
    assert held_in and cell["selection"]["on"] == sorted(held_in)
    assert cell["selection"]["across"] == ["best"]  # select's default: a layer's best model
    assert cell["selection"]["layers"] and cell["selection"]["seconds"][0] > 0
    aligned = study_config.zoo_dir("llama", 0) / "models" / "aligned" / "config.json"
    n_layers = json.loads(aligned.read_text())["num_hidden_layers"]
    every = [len(kept) == n_layers for kept in cell["selection"]["layers"]]
    assert cell["selection"]["every_layer"] == every
    # one calibration per SafeGene setting, timed as its gene records it
    assert len(cell["calibration"]["total"]) == len(cell["methods"]["safegene"]["settings"])
    c = cell["calibration"]
    assert min(c["fit"][0], c["choice"][0]) > 0
    assert c["fit"][0] + c["choice"][0] <= c["total"][0]
    assert set(cell["methods"]) == {"interpolate", "safegene"}
    assert len(cell["methods"]["interpolate"]["settings"]) == 2
    assert len(cell["draws"]) == 2  # the chosen setting and one more draw of the shots
    n_test = len(json.loads((out / "report.json").read_text())["cells"])
    assert n_test == 2 and report["pooled"]["cells"] == 2
    v = report["versus"]["interpolate"]
    assert v["win"] + v["tie"] + v["loss"] == 2 and v["kind"] == "baseline"
    n_harmful = len(cell["references"]["task"]["flags"]["harmful"]["keyword"])
    assert v["pooled_harmful_diff"]["n"] == 2 * n_harmful  # both cells' test prompts, paired
    for s in report["cells"]:
        for r in s["rows"].values():
            assert r["harmful_ci"][0] <= r["harmful"] <= r["harmful_ci"][1]
    md = (out / "report.md").read_text()
    assert "SafeGene vs" in md and "## llama-s0/task-howto" in md
    assert f"layer selection: scored on {', '.join(sorted(held_in))}" in md
    timed = report["seconds"]
    assert timed["calibrations"] == 2 and timed["calibrate_max"] >= timed["calibrate_mean"] > 0
    assert "calibration mean" in md
    assert (out / "cells.png").stat().st_size > 0 and (out / "wins.png").stat().st_size > 0

    # another config in the same directory is refused
    other = S.StudyConfig(**{**study_config.__dict__, "shot_draws": 1})
    with pytest.raises(SafeGeneError, match="another config"):
        S.run_study(other, out, progress=False)
