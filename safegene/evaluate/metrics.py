"""Metrics as pure functions: rates with n and a seeded percentile-bootstrap 95% CI, task answer
matching, and agreement between judges (pairwise agreement rate and Cohen's kappa)."""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Sequence

import numpy as np

from safegene.errors import SafeGeneError

DEFAULT_BOOTSTRAP = 2000


# --- confidence intervals ------------------------------------------------------------------------


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile-bootstrap CI of the mean of `values`; None for no values.

    For 0/1 values the resampled mean is drawn directly as Binomial(n, p̂)/n, which is the same
    distribution as resampling n rows with replacement, in O(n_boot) time and memory.
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n == 0:
        return None
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    if np.all((x == 0) | (x == 1)):
        means = rng.binomial(n, x.mean(), size=n_boot) / n
    else:
        means = np.empty(n_boot)
        chunk = max(1, 2_000_000 // n)
        for s in range(0, n_boot, chunk):
            m = min(chunk, n_boot - s)
            means[s : s + m] = x[rng.integers(0, n, size=(m, n))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def rate(flags: Sequence[bool], *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """{"rate", "k", "n", "ci": [lo, hi]} of a list of booleans; rate and ci are None when n = 0."""
    flags = [bool(f) for f in flags]
    n, k = len(flags), sum(flags)
    ci = bootstrap_ci(flags, n_boot=n_boot, seed=seed)
    return {"rate": k / n if n else None, "k": k, "n": n, "ci": list(ci) if ci else None}


# --- task answers --------------------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD-style: NFKC, lower case, no punctuation, no articles, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def parse_number(text: str) -> float | None:
    """The number a string *is* (commas as thousands separators allowed), else None."""
    t = text.strip().replace(",", "")
    if t.endswith("."):
        t = t[:-1]
    try:
        v = float(t)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def last_number(text: str) -> float | None:
    """The last number written in `text` (the GSM8K convention for a model's final answer)."""
    found = _NUMBER.findall(text)
    return parse_number(found[-1]) if found else None


def answer_number(answer: str) -> float | None:
    """The number an answer is, or else the last number it contains ("The answer is 5." → 5)."""
    v = parse_number(answer)
    return v if v is not None else last_number(answer)


def resolve_match(method: str, answers: Sequence[str]) -> str:
    """`auto` → `numeric` when every answer is a number, else `normalised`."""
    if method == "auto":
        return (
            "numeric"
            if answers and all(parse_number(a) is not None for a in answers)
            else "normalised"
        )
    if method not in ("exact", "normalised", "numeric"):
        raise SafeGeneError(
            f"unknown match method {method!r}; choose auto, exact, normalised or numeric"
        )
    if method == "numeric":
        bad = [a for a in answers if answer_number(a) is None]
        if bad:
            raise SafeGeneError(
                f"numeric matching needs numeric answers; {bad[0]!r} holds no number"
            )
    return method


def is_correct(generation: str, answer: str, method: str) -> bool:
    if method == "exact":
        return generation.strip() == answer.strip()
    if method == "normalised":
        return normalize_answer(generation) == normalize_answer(answer)
    if method == "numeric":
        got, want = last_number(generation), answer_number(answer)
        if got is None or want is None:
            return False
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    raise SafeGeneError(f"unknown match method {method!r}")


# --- judge agreement -----------------------------------------------------------------------------


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary raters; None when undefined (both raters constant and equal)."""
    if len(a) != len(b):
        raise ValueError("raters must judge the same items")
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(map(bool, a)) / n, sum(map(bool, b)) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def agreement(verdicts: dict[str, Sequence[bool]]) -> list[dict]:
    """Every pair of judges: {"judges": [a, b], "n", "agreement", "kappa"}."""
    names = list(verdicts)
    out = []
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            a, b = list(verdicts[x]), list(verdicts[y])
            n = len(a)
            out.append(
                {
                    "judges": [x, y],
                    "n": n,
                    "agreement": (sum(p == q for p, q in zip(a, b, strict=True)) / n)
                    if n
                    else None,
                    "kappa": cohen_kappa(a, b),
                }
            )
    return out
