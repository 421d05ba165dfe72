"""The real-shape benchmark at reduced depth and width (slow: `pytest -m slow`): every step runs
on a checkpoint built from a real config, the chunked loss equals the full-logit loss, the merged
output equals W + α·B·A, and select/calibrate stay within bf16 weights + 2 GB."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_real_shapes.py"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen3-8b", "gemma-2-9b"])
def test_real_config_at_reduced_size(tmp_path, name):
    spec = importlib.util.spec_from_file_location("bench_real_shapes", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.run_config(tmp_path, name, 1, 4, 48, width=1 / 16, vocab=16384)
    assert set(r["steps"]) == {"extract", "select", "calibrate", "apply", "eval"}
    assert r["check"]["loss_max_abs_diff"] < 1e-4 and r["check"]["merged_tensors"] > 0
    assert r["check"]["merged_max_bf16_ulps"] <= 1.0
    assert r["within_budget"], r["steps"]


def test_cuda_steps_run_select_calibrate_and_eval_on_the_gpu_in_bf16():
    spec = importlib.util.spec_from_file_location("bench_real_shapes", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    on = ["--device", "cuda", "--dtype", "bf16"]
    for step, cmd in bench.steps(Path("/r"), 32, "cuda").items():
        gpu = step in ("select", "calibrate", "eval")
        assert (cmd[-4:] == on) == gpu, step
        assert (bench._CUDA_RUNNER in cmd) == gpu, step  # its CUDA peak is recorded
    assert "cuda" not in " ".join(bench.steps(Path("/r"), 32)["eval"])
