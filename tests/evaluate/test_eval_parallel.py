"""Data parallelism: two CPU processes (gloo) give the same samples and report as one process."""

import json
import os
import subprocess
import sys

import pytest

from safegene.evaluate.parallel import Dist


def _strip_run(report):
    report = dict(report)
    report.pop("run")
    return report


def test_dist_single_process_gather():
    d = Dist()
    assert d.is_main and d.gather([(1, "a")]) == [(1, "a")]


def test_two_processes_match_one(tiny_model_dir, tiny_data, tmp_path):
    common = ["eval", "--model", str(tiny_model_dir), "--harmful", str(tiny_data / "harmful.jsonl"),
              "--benign", str(tiny_data / "benign.jsonl"), "--task", str(tiny_data / "task.jsonl"),
              "--judge", "keyword", "prefix", "--max-new-tokens", "6", "--batch-size", "2",
              "--device", "cpu", "--no-progress", "--bootstrap", "300"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"np{n}"
        r = subprocess.run([sys.executable, "-m", "safegene", *common, "--num-processes", str(n),
                            "--out", str(outs[n])], env=env, capture_output=True, text=True, timeout=280)
        assert r.returncode == 0, r.stderr[-2000:]
    s1 = (outs[1] / "samples.jsonl").read_text()
    s2 = (outs[2] / "samples.jsonl").read_text()
    assert s1 == s2 and len(s1.splitlines()) == 12
    r1 = json.loads((outs[1] / "report.json").read_text())
    r2 = json.loads((outs[2] / "report.json").read_text())
    assert r2["run"]["num_processes"] == 2 and r1["run"]["num_processes"] == 1
    assert _strip_run(r1) == _strip_run(r2)
    assert (outs[1] / "report.md").read_text() == (outs[2] / "report.md").read_text()
    # no stray temporary directories
    assert sorted(p.name for p in tmp_path.iterdir()) == ["np1", "np2"]
