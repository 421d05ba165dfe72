"""A study on a small machine: a config's cells split over worker processes, pooled in one report.

`safegene study` runs its cells one after another, each on every core; on 2 cores two one-thread
studies side by side finish sooner. This script writes, per seed of the config and per worker, a
config naming every `workers`-th target (OUT/configs/s<seed>-w<i>.yaml, same grids, same zoos),
runs each with `safegene study` (OMP_NUM_THREADS=1, at most `--workers` at once, each resumable),
then pools every cell with `study.write_report` (OUT/report.md, report.json, the plots) and prints
the markdown. The zoos must exist (build them first: a study builds a missing one, and two studies
must not build the same zoo at once).

    python benchmarks/bench_study.py benchmarks/study-llama.yaml --out /tmp/study --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safegene.study import load_study, study_markdown, write_report  # noqa: E402


def part_configs(config: Path, out: Path, seeds: list[int], workers: int) -> list[Path]:
    """One config per (seed, worker): the config's targets dealt round-robin to the workers."""
    raw = yaml.safe_load(config.read_text())
    raw["zoos"] = str(load_study(config).zoos)  # the parts live elsewhere: the resolved path
    targets = raw.get("targets") or []
    if len(targets) < workers:
        raise SystemExit(f"{config}: name at least {workers} targets to split them over workers")
    paths = []
    for seed in seeds:
        for i in range(workers):
            part = {**raw, "seeds": [seed], "targets": targets[i::workers]}
            path = out / "configs" / f"s{seed}-w{i}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(part, sort_keys=False))
            paths.append(path)
    return paths


def run_parts(paths: list[Path], out: Path, workers: int) -> None:
    """Each part as its own `safegene study`, `workers` at a time; a failed part stops the run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    queue, running = list(paths), []
    while queue or running:
        while queue and len(running) < workers:
            p = queue.pop(0)
            log = open(out / f"{p.stem}.log", "w")  # noqa: SIM115 - closed when the part ends
            cmd = [sys.executable, "-m", "safegene", "study", str(p), "--out", str(out / p.stem)]
            running.append(
                (p, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
            )
            time.sleep(5)  # the parts open the same zoos: not at the same instant
        for p, proc in list(running):
            if proc.poll() is not None:
                running.remove((p, proc))
                if proc.returncode:
                    raise SystemExit(
                        f"study {p} failed (exit {proc.returncode}): {out / p.stem}.log"
                    )
        time.sleep(2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("config", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", help="default: the config's")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds or list(load_study(args.config).seeds)
    paths = part_configs(args.config, args.out, seeds, args.workers)
    t0 = time.time()
    run_parts(paths, args.out, args.workers)
    cells = [
        json.loads(c.read_text())
        for p in paths
        for c in sorted((args.out / p.stem).glob("cells/*/*.json"))
    ]
    report = write_report(cells, load_study(paths[0]), args.out)
    print(study_markdown(report))
    print(f"{len(cells)} cells from {len(paths)} parts, {time.time() - t0:.0f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
