"""The zoo over seeds, thread counts and architectures: every property, every build, side by side.

Builds (or resumes) one zoo per (architecture, seed, threads) with `safegene zoo build`, each in
its own process, and prints per build its wall time, peak RSS and failed checks; then, per model,
harmful rate / over-refusal / task accuracy for every build in one table, and the count of checks
that hold on every build. `--repeat` builds the first configuration a second time from scratch and
compares every weight file byte for byte (same machine, seed and threads: identical bytes).

    python benchmarks/bench_zoo.py --out /tmp/zoos --archs llama qwen2 --seeds 0 1 2 --threads 1 2
    python benchmarks/bench_zoo.py --out /tmp/zoos --size micro --seeds 0 --threads 1 --repeat

The builds run one after another (each uses the machine's cores); a finished zoo is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safegene.zoo.checks import check_zoo  # noqa: E402
from safegene.zoo.recipe import RECIPES  # noqa: E402


def _fmt(value) -> str:
    if isinstance(value, dict):  # the erosion spread: models per band
        return "/".join(str(n) for n in value.values())
    return f"{value:.2f}"


def build(out: Path, size: str, arch: str, seed: int, threads: int) -> dict:
    """One `safegene zoo build` in a child process: wall seconds and the child's peak RSS."""
    cmd = [
        sys.executable,
        "-m",
        "safegene",
        "zoo",
        "build",
        "--out",
        str(out),
        "--size",
        size,
        "--arch",
        arch,
        "--seed",
        str(seed),
        "--threads",
        str(threads),
    ]
    log = out.with_suffix(".log")
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.call(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        )
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"zoo build failed (exit {rc}); see {log}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    return {"wall_s": round(wall, 1), "peak_rss_mb_so_far": round(rss)}


def weight_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob("models/**/*.safetensors"))
    }


def row(zoo: dict, name: str) -> str:
    m = zoo["metrics"][name]
    acc = (
        "/".join(f"{v:.2f}" for v in m["task_accuracy"].values())
        if zoo["models"][name]["task"]
        else "-"
    )
    return f"{m['harmful_rate']:.2f} {m['over_refusal']:.2f} {acc}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--size", default="small")
    ap.add_argument("--archs", nargs="+", default=["llama"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--repeat", action="store_true", help="rebuild the first configuration, compare bytes"
    )
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    configs = [(a, s, t) for a in args.archs for s in args.seeds for t in args.threads]
    zoos, runs = {}, {}
    for arch, seed, threads in configs:
        key = f"{arch}-s{seed}-t{threads}"
        out = args.out / f"{args.size}-{key}"
        fresh = not (out / "zoo.json").exists()
        runs[key] = build(out, args.size, arch, seed, threads) if fresh else {"wall_s": None}
        zoos[key] = json.loads((out / "zoo.json").read_text())
        # today's contract on the build's own measurements (a reused zoo may predate it)
        recipe = RECIPES[args.size].with_(arch=arch)
        zoos[key]["checks"] = check_zoo(recipe, zoos[key]["models"], zoos[key]["metrics"])
        failed = [c["what"] for c in zoos[key]["checks"] if not c["ok"]]
        print(
            f"{key}: wall {runs[key]['wall_s']} s (None: reused), build stages "
            f"{sum(zoos[key]['build_seconds'].values()):.0f} s, failed checks: {failed or 'none'}",
            flush=True,
        )

    names = list(next(iter(zoos.values()))["models"])
    print("\nharmful over-refusal accuracy, per build:")
    print("model".ljust(24) + " | ".join(k.ljust(22) for k in zoos))
    for name in names:
        print(name.ljust(24) + " | ".join(row(z, name).ljust(22) for z in zoos.values()))
    checks = {}
    for key, z in zoos.items():
        for c in z["checks"]:
            checks.setdefault((c["check"], c["model"]), []).append((key, c["ok"], c["value"]))
    held = [k for k, v in checks.items() if all(ok for _, ok, _ in v)]
    print(f"\nchecks holding on every build: {len(held)} of {len(checks)}")
    for (check, model), v in checks.items():
        if (check, model) not in held:
            vals = ", ".join(f"{key}={_fmt(val)}{'' if ok else '!'}" for key, ok, val in v)
            print(f"  {model} {check}: {vals}")

    if args.repeat:
        arch, seed, threads = configs[0]
        first = args.out / f"{args.size}-{arch}-s{seed}-t{threads}"
        again = args.out / f"{args.size}-{arch}-s{seed}-t{threads}-again"
        shutil.rmtree(again, ignore_errors=True)
        build(again, args.size, arch, seed, threads)
        a, b = weight_hashes(first), weight_hashes(again)
        same = sum(a[k] == b.get(k) for k in a)
        print(f"\nrebuild of {first.name}: {same} of {len(a)} weight files byte-identical")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": runs,
                    "metrics": {k: z["metrics"] for k, z in zoos.items()},
                    "checks": {k: z["checks"] for k, z in zoos.items()},
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
