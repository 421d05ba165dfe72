"""SafeGene as a method of compare/study (safegene.pipeline): which rows one setting yields and
what each hands to calibrate — the steps themselves stubbed, so only the wiring is under test."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from safegene import pipeline
from safegene.methods import Run
from safegene.recipe import TaskSpec


@pytest.fixture
def selects(monkeypatch):
    """The outputs select was asked to write, in order (select stubbed)."""
    seen = []
    stub = lambda *a, **k: seen.append(Path(k["out"]).name) or {}  # noqa: E731
    monkeypatch.setattr(importlib.import_module("safegene.select"), "select", stub)
    return seen


@pytest.fixture
def calls(monkeypatch, tmp_path, selects):
    """calibrate's calls, in order (calibrate, select and the gene's expression stubbed)."""
    seen = []

    def fake_calibrate(gene, model, **kw):
        seen.append({"gene": Path(gene).name, **kw})
        return {}

    monkeypatch.setattr(importlib.import_module("safegene.calibrate"), "calibrate", fake_calibrate)
    monkeypatch.setattr(pipeline, "gene_of_rank", lambda run, rank: tmp_path / f"gene-r{rank}")
    monkeypatch.setattr(pipeline, "express", lambda gene, task, d, **kw: (Path(gene), None))
    monkeypatch.setattr(pipeline, "keeps_every_layer", lambda gene: False)
    return seen


def _recipe(tmp_path):
    return SimpleNamespace(
        harmful_shots=tmp_path / "h.jsonl",
        benign_shots=None,
        aligned=tmp_path / "aligned",
        seed=0,
        device="cpu",
        dtype=None,
        validation=False,
        select_on=[],
    )


def _variants(tmp_path, run=None, **setting):
    task = TaskSpec("arith", tmp_path / "task", None, tmp_path / "shots.jsonl", tmp_path / "t")
    base = {"rank": 1, "shots": 16, "ablations": True}
    run = run or Run(_recipe(tmp_path), tmp_path / "keep")
    return list(pipeline.variants(run, task, {**base, **setting}))


@pytest.mark.parametrize("rollback", [False, True])
def test_rollback_reaches_calibrate_and_names_its_genes(calls, tmp_path, rollback):
    rows = _variants(tmp_path, fit="default", rollback=rollback)
    # the uncalibrated ablations do not depend on the rollback: once, with the plain setting
    want = ["safegene", "gene-calibrate"] + ([] if rollback else ["gene-uniform", "gene-select"])
    assert sorted(v.method for v in rows) == sorted(want)
    for v in rows:
        if v.method in ("safegene", "gene-calibrate"):
            path, _ = v.build(tmp_path / "scratch")
            assert path.name.endswith("-calibrated" + ("-all-layers" if "-c" in v.method else ""))
            assert ("-rollback-" in path.name) == rollback
    assert [c["rollback"] for c in calls] == [rollback, rollback]
    assert calls[1].get("layers") == "all"  # the ablation: every layer, no selection


def test_gene_calibrate_reuses_safegenes_calibration_where_every_layer_is_kept(
    calls, tmp_path, monkeypatch
):
    monkeypatch.setattr(pipeline, "keeps_every_layer", lambda gene: True)
    rows = {v.method: v for v in _variants(tmp_path, fit="default", rollback=False)}
    own, _ = rows["safegene"].build(tmp_path / "a")
    ablation, _ = rows["gene-calibrate"].build(tmp_path / "b")
    assert ablation == own and len(calls) == 1  # one fit: the same groups give the same α
    assert calls[0].get("layers") is None


def test_a_calibration_is_fitted_once_per_setting(calls, tmp_path):
    rows = {v.method: v for v in _variants(tmp_path, fit="default", rollback=False)}
    first, _ = rows["safegene"].build(tmp_path / "a")
    again, _ = rows["safegene"].build(tmp_path / "b")
    assert again == first and len(calls) == 1


def test_a_selection_is_made_once_per_run_and_never_taken_from_another(calls, selects, tmp_path):
    left = tmp_path / "keep" / "arith-r1-k16-selected"
    left.mkdir(parents=True)  # what an earlier run left behind
    run = Run(_recipe(tmp_path), tmp_path / "keep")
    for fit in ("default", "strong"):  # two settings of one tag share their selection
        rows = {v.method: v for v in _variants(tmp_path, run=run, fit=fit, rollback=False)}
        rows["safegene"].build(tmp_path / fit)
    assert selects == [left.name]
    assert [c["gene"] for c in calls] == [left.name, left.name]
