"""Statistics for comparing methods on the same prompts: Wilson intervals for rates, and paired
tests of two methods' 0/1 outcomes (exact McNemar test and a paired bootstrap of the difference).

Pure functions over lists of booleans; scipy does the distributions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest

from safegene.errors import SafeGeneError


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """The Wilson score interval of k successes in n trials (None when n = 0). Unlike the
    percentile bootstrap it is not [0, 0] for 0 of 100."""
    if n == 0:
        return None
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def rate_ci(flags: Sequence[bool], level: float = 0.95) -> dict:
    """{"rate", "k", "n", "ci"} of a list of booleans, with the Wilson interval."""
    k, n = sum(bool(f) for f in flags), len(flags)
    ci = wilson(k, n, level)
    return {"rate": k / n if n else None, "k": k, "n": n, "ci": list(ci) if ci else None}


def paired(
    a: Sequence[bool],
    b: Sequence[bool],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Method a against method b on the same items (a[i] and b[i]: the outcomes of item i).

    diff: mean(a) − mean(b); ci: the paired percentile bootstrap of diff (items resampled with
    their pair); p: the exact McNemar test (two-sided binomial test of the discordant pairs);
    a_only / b_only: the discordant counts."""
    if len(a) != len(b):
        raise SafeGeneError(f"paired outcomes differ in length: {len(a)} and {len(b)}")
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = x.size
    if n == 0:
        return {"diff": None, "ci": None, "p": None, "a_only": 0, "b_only": 0, "n": 0}
    d = x - y
    a_only, b_only = int((d > 0).sum()), int((d < 0).sum())
    p = binomtest(a_only, a_only + b_only).pvalue if a_only + b_only else 1.0
    rng = np.random.default_rng(seed)
    means = np.array([d[rng.integers(0, n, n)].mean() for _ in range(n_boot)])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {
        "diff": float(d.mean()),
        "ci": [float(lo), float(hi)],
        "p": float(p),
        "a_only": a_only,
        "b_only": b_only,
        "n": n,
    }


def verdict(test: dict, alpha: float = 0.05, lower_is_better: bool = True) -> str:
    """win / loss / tie of a (the first method of `paired`) from a paired test: a significant
    difference in the better direction is a win."""
    if test["diff"] is None or test["p"] is None or test["p"] >= alpha or test["diff"] == 0:
        return "tie"
    better = test["diff"] < 0 if lower_is_better else test["diff"] > 0
    return "win" if better else "loss"
