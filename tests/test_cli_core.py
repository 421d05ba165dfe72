"""`safegene select` and `safegene calibrate` on the command line: the happy path, and every bad
input of the issue as one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import json

import pytest
import tinygene
import torch

from safegene.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    t = tinygene.build(tmp_path_factory.mktemp("tiny"))
    t.selected = tinygene.with_selection(t, t.root / "gene-selected")
    return t


def _calibrate_args(tiny, out, **over):
    args = {
        "--gene": tiny.selected,
        "--target": tiny.model,
        "--harmful": tiny.harmful,
        "--task": tiny.task,
        "--shots": 4,
        "--steps": 5,
        "--out": out,
    }
    args.update(over)
    return ["calibrate"] + [str(x) for kv in args.items() if kv[1] is not None for x in kv]


def test_select_then_calibrate(tiny, tmp_path, capsys):
    g1, g2 = tmp_path / "g1", tmp_path / "g2"
    assert (
        main(
            [
                "select",
                "--gene",
                str(tiny.gene),
                "--model",
                str(tiny.model),
                "--harmful",
                str(tiny.harmful),
                "--benign",
                str(tiny.benign),
                "--top-k",
                "2",
                "--out",
                str(g1),
            ]
        )
        == 0
    )
    assert "selected" in capsys.readouterr().out
    assert main(_calibrate_args(tiny, g2, **{"--gene": g1})) == 0
    assert "coefficients" in capsys.readouterr().out
    meta = json.loads((g2 / "safegene.json").read_text())
    assert sorted(int(k) for k in meta["coefficients"]) == meta["selection"]


def test_select_also_scores_on_more_models(tiny, tmp_path, capsys):
    args = ["select", "--gene", str(tiny.gene), "--model", str(tiny.model), "--harmful"]
    args += [str(tiny.harmful), "--task", str(tiny.task)]
    also = ["--also", str(tiny.model), str(tiny.task)]
    assert main([*args, *also, "--out", str(tmp_path / "g")]) == 0
    info = json.loads((tmp_path / "g" / "safegene.json").read_text())["selection_info"]
    assert [a["model"]["path"] for a in info["also"]] == [str(tiny.model)]
    capsys.readouterr()
    other = ["--also", str(tiny.other), str(tiny.task)]  # another family: one line, exit 2
    assert main([*args, *other, "--out", str(tmp_path / "g2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("safegene: error: family mismatch") and not (tmp_path / "g2").exists()


@pytest.mark.parametrize(
    "case",
    ["shots_too_many", "no_harmful", "no_selection", "other_family", "exists", "missing_gene"],
)
def test_bad_input_exit_2_one_line_nothing_written(tiny, tmp_path, capsys, case):
    out = tmp_path / "out"
    over = {
        "shots_too_many": {"--shots": 50},
        "no_harmful": {"--harmful": tiny.empty},
        "no_selection": {"--gene": tiny.gene},
        "other_family": {"--target": tiny.other},
        "exists": {},
        "missing_gene": {"--gene": tmp_path / "nope"},
    }[case]
    if case == "exists":
        out.mkdir()
        (out / "keep").write_text("x")
    before = tinygene.tree(tiny.root)
    code = main(_calibrate_args(tiny, out, **over))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("safegene: error:") and err.count("\n") == 1, err
    assert tinygene.tree(tiny.root) == before
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_select_bad_input(tiny, tmp_path, capsys):
    before = tinygene.tree(tiny.root)
    code = main(
        [
            "select",
            "--gene",
            str(tiny.gene),
            "--model",
            str(tiny.other),
            "--harmful",
            str(tiny.harmful),
            "--out",
            str(tmp_path / "g"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "mismatch" in err and err.count("\n") == 1
    code = main(
        [
            "select",
            "--gene",
            str(tiny.gene),
            "--model",
            str(tiny.model),
            "--harmful",
            str(tiny.empty),
            "--out",
            str(tmp_path / "g"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert tinygene.tree(tiny.root) == before and not (tmp_path / "g").exists()


def test_help_does_not_load_torch():
    """`safegene --help` / `calibrate --help` build every subparser; none of them may import torch
    (seconds of start-up for a usage message)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom safegene.cli import main\n"
        "for argv in (['--help'], ['calibrate', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--lam" in done.stdout  # the calibrate help (with its defaults) was printed


def test_quiet_hides_the_progress_bars_of_transformers(tiny, monkeypatch, capfd):
    """`demo --quiet` loads many models: transformers' own "Loading weights" bars go too."""
    from transformers.utils import logging as hf_logging

    import safegene.demo
    from safegene.errors import SafeGeneError
    from safegene.models import load_model

    def run_demo(*args, **kwargs):  # the part of a demo that draws the bars, then stop
        load_model(tiny.model)
        raise SafeGeneError("stopped here")

    monkeypatch.setattr(safegene.demo, "run_demo", run_demo)
    try:
        assert main(["demo", "--out", "unused"]) == 2
        assert "Loading weights" in capfd.readouterr().err
        assert main(["demo", "--out", "unused", "--quiet"]) == 2
        assert "Loading weights" not in capfd.readouterr().err
    finally:
        hf_logging.enable_progress_bar()
