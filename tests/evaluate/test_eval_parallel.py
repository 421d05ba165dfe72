"""Data parallelism: two CPU processes (gloo) give the same samples and report as one process,
through `--num-processes 2` and through `accelerate launch`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from safegene.evaluate.parallel import Dist

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _common(model_dir, data):
    return [
        "eval",
        "--model",
        str(model_dir),
        "--harmful",
        str(data / "harmful.jsonl"),
        "--benign",
        str(data / "benign.jsonl"),
        "--task",
        str(data / "task.jsonl"),
        "--judge",
        "keyword",
        "prefix",
        "guard",
        "--guard-model",
        str(model_dir),  # any causal LM
        "--max-new-tokens",
        "6",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--bootstrap",
        "300",
    ]


def _run(cmd):
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _strip_run(report):
    report = dict(report)
    report.pop("run")
    return report


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tiny_data, tmp_path_factory):
    from safegene.cli import main

    out = tmp_path_factory.mktemp("np1") / "rep"
    assert main([*_common(tiny_model_dir, tiny_data), "--out", str(out)]) == 0  # in this process
    return out


def _same_as_one_process(one: Path, two: Path):
    s1, s2 = (one / "samples.jsonl").read_text(), (two / "samples.jsonl").read_text()
    assert s1 == s2 and len(s1.splitlines()) == 12
    r1 = json.loads((one / "report.json").read_text())
    r2 = json.loads((two / "report.json").read_text())
    assert r1["run"]["num_processes"] == 1 and r2["run"]["num_processes"] == 2
    assert _strip_run(r1) == _strip_run(r2)
    assert [j["name"] for j in r1["judges"]] == ["keyword", "prefix", "guard"] and "unparsed" in r1[
        "judges"
    ][2]
    assert (one / "report.md").read_text() == (two / "report.md").read_text()


def test_dist_single_process_gather():
    d = Dist()
    assert d.is_main and d.gather([(1, "a")]) == [(1, "a")]


def test_num_processes_2_matches_one(one_process, tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "np2"
    _run(
        [
            sys.executable,
            "-m",
            "safegene",
            *_common(tiny_model_dir, tiny_data),
            "--num-processes",
            "2",
            "--out",
            str(out),
        ]
    )
    _same_as_one_process(one_process, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["np2"]  # no stray temporary directories


def test_accelerate_launch_matches_one(one_process, tiny_model_dir, tiny_data, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    assert accelerate is not None, "the accelerate launcher (a dependency) is not installed"
    out = tmp_path / "acc"
    _run(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "safegene",
            *_common(tiny_model_dir, tiny_data),
            "--out",
            str(out),
        ]
    )
    _same_as_one_process(one_process, out)


def test_a_launcher_with_one_process_warns(
    tiny_model_dir, tiny_data, tmp_path, capsys, monkeypatch
):
    """`accelerate launch --num_processes 2` without --multi_gpu on CPU starts one process: eval
    says so (and how to get N) instead of running unsplit in silence."""
    from safegene.cli import main

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what accelerate's launcher sets
    for var in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(var, raising=False)
    argv = ["eval", "--model", str(tiny_model_dir), "--harmful", str(tiny_data / "harmful.jsonl")]
    argv += ["--judge", "keyword", "--max-new-tokens", "2", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "started by accelerate launch as one process" in err and "--multi_gpu" in err
