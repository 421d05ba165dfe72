import numpy as np
import pytest

from safegene.errors import SafeGeneError
from safegene.evaluate.metrics import (
    bootstrap_ci,
    cohen_kappa,
    is_correct,
    last_number,
    normalize_answer,
    rate,
    resolve_match,
)


def test_all_zero_and_all_one():
    assert rate([False] * 20) == {"rate": 0.0, "k": 0, "n": 20, "ci": [0.0, 0.0]}
    assert rate([True] * 7) == {"rate": 1.0, "k": 7, "n": 7, "ci": [1.0, 1.0]}


def test_empty():
    assert rate([]) == {"rate": None, "k": 0, "n": 0, "ci": None}
    assert bootstrap_ci([]) is None


def test_seeded_and_contains_estimate():
    flags = [True] * 30 + [False] * 70
    a, b = rate(flags, seed=1), rate(flags, seed=1)
    assert a == b
    lo, hi = a["ci"]
    assert lo < 0.3 < hi and lo > 0.18 and hi < 0.42


def test_binary_shortcut_matches_resampling():
    flags = np.array([1] * 12 + [0] * 28, dtype=float)
    lo, hi = bootstrap_ci(flags, n_boot=4000, seed=0)
    rng = np.random.default_rng(0)
    means = flags[rng.integers(0, flags.size, size=(4000, flags.size))].mean(axis=1)
    rlo, rhi = np.quantile(means, [0.025, 0.975])
    assert abs(lo - rlo) <= 0.03 and abs(hi - rhi) <= 0.03


def test_continuous_values():
    lo, hi = bootstrap_ci([0.1, 0.5, 0.9, 0.3, 0.7], n_boot=1000, seed=0)
    assert 0.1 <= lo < 0.5 < hi <= 0.9


def test_coverage_sanity():
    """A 95% CI should cover the true rate in roughly 95% of repeated experiments."""
    rng = np.random.default_rng(123)
    p, n, trials = 0.3, 150, 300
    covered = 0
    for t in range(trials):
        flags = rng.random(n) < p
        lo, hi = bootstrap_ci(flags, n_boot=1000, seed=t)
        covered += lo <= p <= hi
    assert 0.88 <= covered / trials <= 0.99


def test_matching():
    assert is_correct(" 42 ", "42", "exact") and not is_correct("42.", "42", "exact")
    assert is_correct("The Positive.", "positive", "normalised")
    assert not is_correct("positive review", "positive", "normalised")
    assert is_correct("so the answer is 1,234.", "1234", "numeric")
    assert is_correct("3 + 4 = 7", "7", "numeric")
    assert not is_correct("7 or 8", "7", "numeric")
    assert not is_correct("no number", "7", "numeric")
    assert is_correct("Sure! The answer is 5.", "Sure! The answer is 5.", "numeric")
    assert is_correct("it is 5", "The answer is 5.", "numeric")
    assert last_number("x -3.5 y") == -3.5
    assert normalize_answer("  The  Cat!! ") == "cat"
    assert resolve_match("auto", ["1", "2.5", "-3"]) == "numeric"
    assert resolve_match("auto", ["1", "two"]) == "normalised"
    with pytest.raises(SafeGeneError, match="numeric answers"):
        resolve_match("numeric", ["one"])
    assert resolve_match("numeric", ["The answer is 5."]) == "numeric"


def test_kappa():
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.0)
    assert cohen_kappa([1, 1], [1, 1]) is None
