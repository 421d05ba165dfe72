"""compare and demo end to end on the micro zoo: every method evaluated with the same data and
judges, one row per (task model, method, setting), tables, plots and the calibrated genes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from safegene.demo import run_demo

SMALL_GRID = {
    "resta": {"beta": [0.5, 1.0]},
    "safelora": {"number": [2]},
    "safemerge": {"threshold": [0.5]},
    "interpolate": {"t": [0.5]},
    "antidote": {"ratio": [0.05], "shots": [8]},
    "safegene": {"rank": [8], "shots": [8], "top_k": [1]},
}


@pytest.fixture(scope="module")
def demo_run(micro_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(
        out, zoo=micro_zoo, methods=SMALL_GRID, tasks=["howto", "arith-lora"], progress=False
    )
    return out, report


def test_every_method_and_setting_has_a_row(demo_run):
    out, report = demo_run
    rows = report["rows"]
    got = {(r["task_model"], r["method"], r["setting"]) for r in rows}
    for task in ("howto", "arith-lora"):
        for method in (
            "aligned",
            "task",
            "safegene",
            "gene-uniform",
            "gene-select",
            "gene-calibrate",
            "safelora",
            "safemerge",
            "interpolate",
        ):
            assert any(t == task and m == method for t, m, _ in got), (task, method)
        assert {s for t, m, s in got if t == task and m == "antidote"} == {"ratio=0.05, shots=8"}
        assert {s for t, m, s in got if t == task and m == "resta"} == {
            "beta=0.5, dare=0.0, ties=1.0",
            "beta=1.0, dare=0.0, ties=1.0",
        }
    for r in rows:
        for k in ("harmful_rate", "over_refusal", "task_accuracy"):
            assert 0.0 <= r[k] <= 1.0 and r[f"{k}_n"] > 0 and len(r[f"{k}_ci"]) == 2


def test_report_files_and_summaries(demo_run):
    out, report = demo_run
    rdir = out / "report"
    for f in (
        "report.json",
        "report.md",
        "samples.jsonl",
        "pareto.png",
        "pareto-howto.png",
        "pareto-arith-lora.png",
    ):
        assert (rdir / f).is_file() and (rdir / f).stat().st_size > 0, f
    assert json.loads((rdir / "report.json").read_text())["rows"] == report["rows"]
    md = (rdir / "report.md").read_text()
    assert "## howto" in md and "## arith-lora" in md and "| safegene" in md
    samples = [json.loads(line) for line in (rdir / "samples.jsonl").read_text().splitlines()]
    assert {s["split"] for s in samples} == {"harmful", "benign", "task"}
    assert "| antidote" in md
    for t in report["tasks"]:
        assert t["verdict"] is not None and set(t["best"]) >= {"task", "safegene", "resta"}
    # the aligned model is the safety ceiling of the zoo, the task model is not
    aligned = next(r for r in report["rows"] if r["method"] == "aligned")
    task = next(r for r in report["rows"] if r["method"] == "task" and r["task_model"] == "howto")
    assert aligned["harmful_rate"] < task["harmful_rate"]


def test_the_demo_chooses_every_setting_on_validation(demo_run):
    """The zoo's val splits are evaluated beside the test splits, and each method's reported
    setting is the one the validation rates choose (recomputed here from the rows)."""
    out, report = demo_run
    assert report["chosen_on"] == "validation"
    samples = [json.loads(x) for x in (out / "report" / "samples.jsonl").read_text().splitlines()]
    assert {s["dataset"] for s in samples} >= {"val:harmful", "val:benign", "val:howto"}
    for t in report["tasks"]:
        assert t["chosen_on"] == "validation"
        rows = [r for r in report["rows"] if r["task_model"] == t["task_model"]]
        assert all(set(r["val"]) == {"harmful_rate", "over_refusal", "task_accuracy"} for r in rows)
        ref = next(r for r in rows if r["method"] == "task")
        aligned = next(r for r in rows if r["method"] == "aligned")
        floor = 0.95 * ref["val"]["task_accuracy"]
        ceiling = aligned["val"]["over_refusal"] + 0.05
        for method, best in t["best"].items():
            mine = [r["val"] for r in rows if r["method"] == method]
            ok = [
                v
                for v in mine
                if v["task_accuracy"] >= floor - 1e-12 and v["over_refusal"] <= ceiling + 1e-12
            ]
            top = max(x["task_accuracy"] for x in mine)  # none holds: the most accurate,
            most = [v for v in mine if v["task_accuracy"] == top]  # the least harmful of them
            want = min(v["harmful_rate"] for v in (ok or most))
            assert best["val"]["harmful_rate"] == want, (t["task_model"], method)


def test_calibrated_genes_are_kept_with_their_coefficients(demo_run):
    out, _ = demo_run
    genes = out / "report" / "genes"
    calibrated = sorted(genes.glob("*-calibrated"))
    assert [g.name for g in calibrated] == [
        "arith-lora-r8-k8-top1-calibrated",
        "howto-r8-k8-top1-calibrated",
    ]
    meta = json.loads((calibrated[0] / "safegene.json").read_text())
    assert meta["coefficients"] and meta["selection"]
    # the demo's recipe has validation splits: calibration chose its α on them, as every method
    # chose its setting (not on the few shots it did not draw)
    cal = meta["calibration"]
    assert Path(cal["data"]["check_harmful"]["path"]).name == "harmful_val.jsonl"
    assert Path(cal["data"]["check_task"]["path"]).name == "val.jsonl"
    assert cal["fit"]["choice"]["n_harmful"] == cal["data"]["check_harmful"]["n"]
    assert not (out / "report" / "scratch").exists()


def test_demo_refuses_to_overwrite_the_report(demo_run, micro_zoo):
    out, _ = demo_run
    before = (out / "report" / "report.json").read_bytes()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "safegene",
            "demo",
            "--out",
            str(out),
            "--zoo",
            str(micro_zoo),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "pass --force" in proc.stderr
    assert (out / "report" / "report.json").read_bytes() == before


def test_compare_rejects_a_bad_recipe_before_any_work(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("family: {aligned: nowhere}\nmethods: {resta: {beta: high}, magic: {}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "safegene", "compare", str(recipe), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1  # every problem on the one line, separated by "; "
    for field in (
        "family.aligned",
        "family.degraded",
        "methods.resta.beta",
        "methods.magic",
        "tasks",
    ):
        assert f"{field}:" in proc.stderr, field
    assert not (tmp_path / "out").exists()


def test_the_demos_default_grid_runs_antidote(micro_zoo, tmp_path):
    import yaml

    from safegene.demo import zoo_recipe
    from safegene.recipe import load_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(zoo_recipe(micro_zoo, tmp_path)))
    settings = load_recipe(recipe).methods["antidote"]
    assert len(settings) >= 2 and all(0 < s["ratio"] < 1 and s["shots"] >= 1 for s in settings)
