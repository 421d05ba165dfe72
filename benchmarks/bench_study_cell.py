"""One study cell two ways, one after the other in one run: only each method's chosen setting read
on test (the default) and every setting read on test (`test_every_setting`). Same zoo, target,
config and seeds, so the choices must agree; prints both wall times, their ratio, and whether the
chosen settings and their test numbers are the same.

    python benchmarks/bench_study_cell.py benchmarks/study-llama.yaml zoos/small-llama-s0 task-howto
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safegene.study import load_study, run_cell  # noqa: E402


def chosen(cell: dict) -> dict:
    """Per method: its chosen setting and that setting's test summary."""
    out = {}
    for name, m in cell["methods"].items():
        row = m["settings"][m["chosen"]]
        out[name] = (row["setting"], row["test"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("zoo", type=Path)
    ap.add_argument("target")
    args = ap.parse_args(argv)
    config = load_study(args.config)
    zoo = json.loads((args.zoo / "zoo.json").read_text())
    seconds, cells = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for every in (False, True):
            work = Path(tmp) / f"every-{every}"
            t0 = time.perf_counter()
            cells[every] = run_cell(
                args.zoo, zoo, args.target, replace(config, test_every_setting=every), work, False
            )
            seconds[every] = time.perf_counter() - t0
            shutil.rmtree(work, ignore_errors=True)
    same = chosen(cells[False]) == chosen(cells[True])
    print(f"chosen settings read on test: {seconds[False]:.0f} s")
    print(f"every setting read on test:   {seconds[True]:.0f} s")
    print(f"ratio (every / chosen): {seconds[True] / seconds[False]:.2f}")
    print(f"same choices and chosen test numbers: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
