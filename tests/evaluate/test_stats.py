"""Wilson intervals and paired tests against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from safegene.errors import SafeGeneError
from safegene.evaluate.stats import paired, rate_ci, verdict, wilson


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 100), (3, 10), (50, 100), (100, 100), (1, 7)])
def test_wilson_matches_the_closed_form(k, n):
    lo, hi = wilson(k, n)
    want = _wilson_by_hand(k, n)
    assert lo == pytest.approx(max(0.0, want[0]), abs=1e-9)
    assert hi == pytest.approx(min(1.0, want[1]), abs=1e-9)


def test_zero_of_a_hundred_is_not_a_point_interval():
    r = rate_ci([False] * 100)
    assert r["rate"] == 0 and r["ci"][0] == pytest.approx(0.0, abs=1e-12)
    assert 0.03 < r["ci"][1] < 0.04  # Wilson: 3.7 %
    assert wilson(0, 0) is None and rate_ci([])["ci"] is None


def test_paired_mcnemar_exact_and_bootstrap():
    # 10 items: a is harmful on 0-5, b on 3-9 -> a-only {0,1,2}, b-only {6,7,8,9}
    a = [i < 6 for i in range(10)]
    b = [i >= 3 for i in range(10)]
    t = paired(a, b, n_boot=500, seed=1)
    assert (t["a_only"], t["b_only"], t["n"]) == (3, 4, 10)
    assert t["diff"] == pytest.approx(0.6 - 0.7)
    # exact two-sided binomial test of 3 successes in 7 at p = 1/2: sum of the tail, doubled
    tail = sum(math.comb(7, i) for i in range(0, 4)) / 2**7
    assert t["p"] == pytest.approx(min(1.0, 2 * tail))
    assert t["ci"][0] <= t["diff"] <= t["ci"][1]
    assert verdict(t) == "tie"


def test_paired_significant_difference_is_a_win_for_the_lower():
    a = [False] * 40 + [True] * 2
    b = [True] * 40 + [True] * 2
    t = paired(a, b, n_boot=300)
    assert t["p"] < 1e-6 and t["ci"][1] < 0
    assert verdict(t) == "win"
    assert verdict(paired(b, a, n_boot=300)) == "loss"
    assert verdict(paired(a, a, n_boot=10)) == "tie"
    assert paired(a, a, n_boot=10)["p"] == 1.0


def test_paired_needs_the_same_items():
    with pytest.raises(SafeGeneError, match="differ in length"):
        paired([True], [True, False])
