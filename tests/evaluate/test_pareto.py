"""The comparison table's logic: Pareto front, best setting under the utility floor, verdicts."""

import pytest

from safegene.evaluate.pareto import (
    KEYS,
    best_setting,
    comparison_markdown,
    dominates,
    pareto_front,
    summarize_task,
)


def r(method, harmful, acc, setting="", task="t", over=0.0):
    return {
        "task_model": task,
        "method": method,
        "setting": setting,
        "harmful_rate": harmful,
        "harmful_rate_ci": [harmful, harmful],
        "harmful_rate_n": 10,
        "over_refusal": over,
        "over_refusal_ci": None,
        "over_refusal_n": 10,
        "task_accuracy": acc,
        "task_accuracy_ci": None,
        "task_accuracy_n": 10,
    }


def test_dominance_needs_one_strict_improvement():
    assert dominates(r("a", 0.1, 0.9), r("b", 0.2, 0.9))
    assert dominates(r("a", 0.1, 0.9), r("b", 0.1, 0.8))
    assert not dominates(r("a", 0.1, 0.9), r("b", 0.1, 0.9))
    assert not dominates(r("a", 0.1, 0.5), r("b", 0.2, 0.9))


def test_pareto_front():
    rows = [
        r("a", 0.1, 0.5),
        r("b", 0.2, 0.9),
        r("c", 0.3, 0.8),
        r("d", 0.0, 0.1),
        r("e", None, 0.9),
    ]
    assert [x["method"] for x in pareto_front(rows)] == ["a", "b", "d"]


def test_best_setting_respects_the_floor():
    rows = [r("m", 0.05, 0.5, "x=1"), r("m", 0.2, 0.96, "x=2"), r("m", 0.4, 1.0, "x=3")]
    best, ok = best_setting(rows, 0.95)
    assert ok and best["setting"] == "x=2"
    best, ok = best_setting(rows, 1.01)  # nothing qualifies: the most accurate
    assert not ok and best["setting"] == "x=3"


def test_summary_verdict_compares_against_baselines_not_ablations():
    rows = [
        r("aligned", 0.0, 0.0),
        r("task", 0.9, 1.0),
        r("resta", 0.5, 0.97, "beta=0.5"),
        r("resta", 0.1, 0.5, "beta=1.0"),
        r("safegene", 0.2, 0.96),
        r("gene-select", 0.1, 0.99),
    ]
    s = summarize_task(rows, "t")
    assert s["accuracy_floor"] == pytest.approx(0.95)
    assert s["best"]["resta"]["setting"] == "beta=0.5"
    v = s["verdict"]
    assert v["qualified"] and v["lowest_harmful_among_qualified"]
    assert not v["on_pareto_front"]  # gene-select dominates it
    assert v["safest_qualified_method"] == "safegene"
    text = comparison_markdown([s], judge="keyword")
    assert "| resta | beta=0.5 | 50.0 [50, 50]" in text and "NOT on the Pareto front" in text


def test_the_floors_include_over_refusal_where_an_aligned_row_is_given():
    rows = [
        r("aligned", 0.0, 0.0, over=0.02),
        r("task", 0.9, 1.0),
        r("resta", 0.05, 0.99, "beta=1.0", over=0.2),  # the safest, but refuses look-alikes
        r("resta", 0.3, 0.99, "beta=0.5", over=0.07),
        r("safegene", 0.1, 0.99, over=0.08),  # 6 points over the aligned model's 2 %
    ]
    s = summarize_task(rows, "t")
    assert s["over_refusal_ceiling"] == pytest.approx(0.07)
    assert s["best"]["resta"]["setting"] == "beta=0.5" and s["best"]["resta"]["qualified"]
    assert not s["best"]["safegene"]["qualified"]
    assert s["verdict"]["safest_qualified_method"] == "resta"
    assert "over-refusal at most 7.0%" in comparison_markdown([s], judge="keyword")
    no_aligned = summarize_task(rows[1:], "t")  # no aligned row: the accuracy floor alone
    assert no_aligned["over_refusal_ceiling"] is None
    assert no_aligned["best"]["resta"]["setting"] == "beta=1.0"


def test_the_choice_reads_validation_not_test():
    """With validation rates on every row, each method's setting is chosen on them: here the
    test split would pick the other setting of each method."""

    def rv(method, harmful, acc, setting, val):
        return {**r(method, harmful, acc, setting), "val": dict(zip(KEYS, val, strict=True))}

    rows = [
        rv("task", 0.9, 1.0, "", (0.8, 0.0, 0.9)),
        rv("resta", 0.1, 0.99, "beta=1.0", (0.3, 0.0, 0.5)),  # best on test, below floor on val
        rv("resta", 0.5, 0.99, "beta=0.5", (0.4, 0.0, 0.9)),
        rv("safegene", 0.2, 0.99, "a", (0.2, 0.0, 0.9)),
        rv("safegene", 0.3, 0.90, "b", (0.1, 0.0, 0.86)),  # best on val, below floor on test
    ]
    s = summarize_task(rows, "t")
    assert s["chosen_on"] == "validation"
    assert s["best"]["resta"]["setting"] == "beta=0.5" and s["best"]["resta"]["qualified"]
    assert s["best"]["safegene"]["setting"] == "b" and not s["best"]["safegene"]["qualified"]
    assert s["best"]["resta"]["harmful_rate"] == 0.5  # the test number of the val choice
    assert "chosen on the validation splits." in comparison_markdown([s], judge="keyword")
    plain = summarize_task([{k: v for k, v in x.items() if k != "val"} for x in rows], "t")
    assert plain["chosen_on"] == "test" and plain["best"]["resta"]["setting"] == "beta=1.0"
    assert "the test split itself." in comparison_markdown([plain], judge="keyword")


def test_summary_when_a_baseline_is_safer():
    rows = [r("task", 0.9, 1.0), r("interpolate", 0.1, 0.99, "t=0.5"), r("safegene", 0.3, 0.99)]
    v = summarize_task(rows, "t")["verdict"]
    assert not v["lowest_harmful_among_qualified"] and v["safest_qualified_method"] == "interpolate"
