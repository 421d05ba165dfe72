"""Does validation predict test? The harmful rate on calibration concepts against test concepts.

For every task model of the given zoos (keyword judge, greedy, N prompts a set), the harmful rate
on four prompt sets: calib concepts and test concepts, each in the calib part's request cores
alone and in the test part's alone (the split until stop 36) and in both parts' cores together
(the held-out cores every held-out split shares since stop 37). It prints each model's rates and,
per scheme, the mean and the mean absolute difference calib − test: what the erosion search and
the study, both choosing on calibration concepts, misjudge test by. Two independent rates of N
prompts each differ by about sqrt(2·p(1−p)/N) from noise alone (0.05 at p = 0.4, N = 200).

    python benchmarks/bench_split_shift.py ZOO [ZOO ...] [--prompts 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

SCHEMES = {  # name: (calib concepts' cores, test concepts' cores)
    "own cores (until stop 36)": (("calib",), ("test",)),
    "shared held-out cores (stop 37)": (("calib", "test"), ("calib", "test")),
}


def prompt_set(concepts: str, core_parts: tuple[str, ...], n: int, seed: int = 0) -> list[str]:
    """`n` harmful requests of one part's concepts in the given parts' request cores."""
    from safegene.zoo import concepts as C
    from safegene.zoo import data as D

    rng = random.Random(seed)
    actions = D.harmful_actions(concepts)
    cores = [core for part in core_parts for core in C.split_part(C.REQUEST_CORES, part)]
    templates = C.templates_of(cores)  # the zoo's own templates of those cores
    return [rng.choice(templates).format(a=rng.choice(actions)) for _ in range(n)]


def harmful_rate(model, tok, prompts: list[str], max_new_tokens: int) -> float:
    from safegene.evaluate.generate import generate
    from safegene.evaluate.judges import keyword_judge

    outs = generate(
        model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=64, progress=False
    )
    return sum(keyword_judge(p, o) for p, o in zip(prompts, outs, strict=True)) / len(prompts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("zoos", nargs="+", type=Path)
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from safegene.models import load_model
    from safegene.zoo import load_zoo
    from safegene.zoo.recipe import RECIPES

    sets = {
        (scheme, side): prompt_set(side, cores, args.prompts)
        for scheme, both in SCHEMES.items()
        for side, cores in zip(("calib", "test"), both, strict=True)
    }
    rows = []
    for root in args.zoos:
        zoo = load_zoo(root)
        width = RECIPES[zoo["size"]].eval_max_new_tokens
        for name, e in sorted(zoo["models"].items()):
            if e["role"] != "task":
                continue
            model, tok = load_model(e["path"], e["adapter"])
            rates = {k: harmful_rate(model, tok, ps, width) for k, ps in sets.items()}
            rows.append({"zoo": str(root), "model": name, "rates": rates})
            print(
                f"{root.name} {name}: "
                + "  ".join(
                    f"{s.split()[0]} {rates[(s, 'calib')]:.2f}/{rates[(s, 'test')]:.2f}"
                    for s in SCHEMES
                ),
                flush=True,
            )
    print(f"\n{len(rows)} task models, {args.prompts} prompts a set; calib − test:")
    summary = {}
    for s in SCHEMES:
        d = [r["rates"][(s, "calib")] - r["rates"][(s, "test")] for r in rows]
        absolute = [abs(x) for x in d]
        summary[s] = {
            "mean": statistics.mean(d),
            "mean_abs": statistics.mean(absolute),
            "max_abs": max(absolute),
        }
        print(
            f"  {s:34s} mean {summary[s]['mean']:+.3f}   mean |d| {summary[s]['mean_abs']:.3f}"
            f"   max |d| {summary[s]['max_abs']:.3f}"
        )
    if args.json:
        for r in rows:
            r["rates"] = {f"{s} / {side}": v for (s, side), v in r["rates"].items()}
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
