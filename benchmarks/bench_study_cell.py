"""One study cell two ways, one after the other in one run, with the same zoo, target, config and
seeds, so the choices must agree; prints both wall times, their ratio, and whether every method's
chosen setting and its test numbers are the same.

- `--compare every`: only each method's chosen setting read on test (the default) against every
  setting read on test (`test_every_setting`).
- `--compare refit`: `gene-calibrate` reusing SafeGene's own calibration where the selection kept
  every layer (the default, stop 33) against fitting it again (as before).

    python benchmarks/bench_study_cell.py benchmarks/study-llama.yaml zoos/small-llama-s0 task-howto
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safegene import pipeline  # noqa: E402
from safegene.study import load_study, run_cell  # noqa: E402


def chosen(cell: dict) -> dict:
    """Per method: its chosen setting and that setting's test summary."""
    out = {}
    for name, m in cell["methods"].items():
        row = m["settings"][m["chosen"]]
        out[name] = (row["setting"], row["test"])
    return out


@contextmanager
def refitting():
    """gene-calibrate fitted again even where the selection kept every layer."""
    keep = pipeline.keeps_every_layer
    pipeline.keeps_every_layer = lambda gene: False
    try:
        yield
    finally:
        pipeline.keeps_every_layer = keep


def ways(config, compare: str) -> dict:
    """name → (config, context) of the two ways, the default first."""
    if compare == "every":
        return {
            "chosen settings read on test": (config, nullcontext),
            "every setting read on test": (replace(config, test_every_setting=True), nullcontext),
        }
    return {
        "gene-calibrate reused": (config, nullcontext),
        "gene-calibrate fitted again": (config, refitting),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("zoo", type=Path)
    ap.add_argument("target")
    ap.add_argument("--compare", choices=("every", "refit"), default="every")
    args = ap.parse_args(argv)
    config = load_study(args.config)
    zoo = json.loads((args.zoo / "zoo.json").read_text())
    seconds, cells = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (cfg, context)) in enumerate(ways(config, args.compare).items()):
            work = Path(tmp) / f"way-{i}"
            t0 = time.perf_counter()
            with context():
                cells[name] = run_cell(args.zoo, zoo, args.target, cfg, work, False)
            seconds[name] = time.perf_counter() - t0
            shutil.rmtree(work, ignore_errors=True)
    (a, ta), (b, tb) = seconds.items()
    same = chosen(cells[a]) == chosen(cells[b])
    for name, t in seconds.items():
        print(f"{name}: {t:.0f} s")
    print(f"ratio ({b} / {a}): {tb / ta:.2f}")
    print(f"same choices and chosen test numbers: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
