"""Recipe validation: every problem named by its field, before any heavy work."""

import json

import pytest

from safegene.errors import SafeGeneError
from safegene.recipe import grid, load_recipe


@pytest.fixture
def layout(tmp_path):
    for d in ("aligned", "degraded", "base", "task"):
        (tmp_path / d).mkdir()
    for f in ("harmful_test", "benign_test", "harmful_shots"):
        (tmp_path / f"{f}.jsonl").write_text(json.dumps({"prompt": "p"}) + "\n")
    for f in ("shots", "test"):
        (tmp_path / f"{f}.jsonl").write_text(json.dumps({"prompt": "2+2?", "answer": "4"}) + "\n")
    return tmp_path


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


GOOD = """
family: {aligned: aligned, degraded: degraded, base: base}
data:
  harmful_test: harmful_test.jsonl
  benign_test: benign_test.jsonl
  harmful_shots: harmful_shots.jsonl
tasks:
  - {name: arith, model: task, shots: shots.jsonl, test: test.jsonl}
judges: [keyword, prefix]
methods:
  resta: {beta: [0.5, 1.0]}
  safelora: {number: [2]}
  safegene: {}
seed: 3
"""


def test_good_recipe_resolves_paths_and_grids(layout):
    r = load_recipe(write(layout, GOOD))
    assert r.aligned == (layout / "aligned").resolve() and r.degraded == [
        (layout / "degraded").resolve()
    ]
    assert r.tasks[0].name == "arith" and r.tasks[0].adapter is None
    assert r.methods["resta"] == [
        {"beta": 0.5, "dare": 0.0, "ties": 1.0},
        {"beta": 1.0, "dare": 0.0, "ties": 1.0},
    ]
    assert r.methods["safelora"] == [{"number": 2}]
    assert r.methods["safegene"] == [{"rank": 1, "shots": 16, "ablations": True}]
    assert r.seed == 3 and r.judges == ["keyword", "prefix"]
    assert r.benign_shots is None  # optional


def test_benign_shots_are_optional_and_resolved(layout):
    (layout / "benign_shots.jsonl").write_text(json.dumps({"prompt": "p"}) + "\n")
    text = GOOD.replace(
        "  harmful_shots: harmful_shots.jsonl",
        "  harmful_shots: harmful_shots.jsonl\n  benign_shots: benign_shots.jsonl",
    )
    r = load_recipe(write(layout, text))
    assert r.benign_shots == (layout / "benign_shots.jsonl").resolve()
    assert r.benign_shots in r.input_paths()
    with pytest.raises(SafeGeneError, match=r"data\.benign_shots: file not found"):
        load_recipe(write(layout, text.replace("benign_shots.jsonl", "nowhere.jsonl")))


def test_validation_splits_go_together(layout):
    for f in ("harmful_val", "benign_val"):
        (layout / f"{f}.jsonl").write_text(json.dumps({"prompt": "p"}) + "\n")
    (layout / "val.jsonl").write_text(json.dumps({"prompt": "3+3?", "answer": "6"}) + "\n")
    data = "  harmful_shots: harmful_shots.jsonl"
    both = f"{data}\n  harmful_val: harmful_val.jsonl\n  benign_val: benign_val.jsonl"
    with_val = GOOD.replace(data, both).replace(
        "test: test.jsonl}", "test: test.jsonl, val: val.jsonl}"
    )
    r = load_recipe(write(layout, with_val))
    assert r.validation and r.tasks[0].val == (layout / "val.jsonl").resolve()
    assert {r.harmful_val, r.benign_val, r.tasks[0].val} <= set(r.input_paths())
    assert not load_recipe(write(layout, GOOD)).validation
    cases = [
        (GOOD.replace(data, both), r"tasks\[0\]\.val: every task needs a val split"),
        (with_val.replace("  benign_val: benign_val.jsonl\n", ""), "harmful_val and benign_val go"),
        (GOOD.replace("test: test.jsonl}", "test: test.jsonl, val: val.jsonl}"), "needs data.harm"),
    ]
    for text, message in cases:
        with pytest.raises(SafeGeneError, match=message):
            load_recipe(write(layout, text))


def test_grid_is_the_cartesian_product():
    assert grid({"a": [1, 2], "b": ["x"], "c": []}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]


@pytest.mark.parametrize(
    "change, message",
    [
        (("resta: {beta: [0.5, 1.0]}", "rest: {beta: [0.5]}"), "methods.rest: unknown method"),
        (
            ("resta: {beta: [0.5, 1.0]}", "resta: {beta: [high]}"),
            "methods.resta.beta: expected float values",
        ),
        (
            ("resta: {beta: [0.5, 1.0]}", "resta: {gamma: [1]}"),
            "methods.resta.gamma: unknown hyperparameter",
        ),
        (
            ("degraded: degraded", "degraded: missing-model"),
            "family.degraded[0]: directory not found",
        ),
        (
            ("judges: [keyword, prefix]", "judges: [keyword, oracle]"),
            "judges: unknown judge 'oracle'",
        ),
        ((", base: base", ""), "methods.safelora: needs family.base"),
        (("seed: 3", "seed: three"), "seed: expected an integer"),
        (("model: task,", "model: nowhere,"), "tasks[0].model: directory not found"),
        (
            ("seed: 3", "seed: 3\ngeneration: {max_tokens: 5}"),
            "generation.max_tokens: unknown setting",
        ),
        (
            ("seed: 3", "seed: 3\ngeneration: {batch_size: big}"),
            "generation.batch_size: expected int",
        ),
        (
            ("judges: [keyword, prefix]", "judges: [keyword, guard]"),
            "guard.model: the guard judge needs",
        ),
    ],
)
def test_problems_are_named_by_field(layout, change, message):
    with pytest.raises(SafeGeneError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(write(layout, GOOD.replace(*change)))


@pytest.mark.parametrize("ratio", ["0.0", "1.0", "1.5", "-0.2", ".nan"])
def test_antidote_ratio_outside_the_open_unit_interval(layout, ratio):
    text = GOOD.replace("safegene: {}", f"antidote: {{ratio: [0.1, {ratio}]}}")
    with pytest.raises(SafeGeneError, match=r"methods\.antidote\.ratio: the pruning ratio"):
        load_recipe(write(layout, text))


def test_antidote_grid_and_its_checks(layout):
    r = load_recipe(write(layout, GOOD.replace("safegene: {}", "antidote: {ratio: [0.05]}")))
    assert r.methods["antidote"] == [{"ratio": 0.05, "shots": 16}]
    with pytest.raises(SafeGeneError, match=r"methods\.antidote\.shots: .* at least 1"):
        load_recipe(write(layout, GOOD.replace("safegene: {}", "antidote: {shots: [0]}")))


def test_empty_harmful_shots(layout):
    (layout / "harmful_shots.jsonl").write_text("")
    with pytest.raises(SafeGeneError, match=r"data\.harmful_shots: .*empty.*re-alignment"):
        load_recipe(write(layout, GOOD))


def test_task_data_without_answers(layout):
    (layout / "test.jsonl").write_text(json.dumps({"prompt": "2+2?"}) + "\n")
    with pytest.raises(
        SafeGeneError, match=r"tasks\[0\]\.test: task data must be JSONL rows with an \"answer\""
    ):
        load_recipe(write(layout, GOOD))


def test_all_problems_reported_together(layout):
    text = (
        GOOD.replace("rest", "nope")
        .replace("seed: 3", "seed: x")
        .replace("judges: [keyword, prefix]", "judges: [z]")
    )
    with pytest.raises(SafeGeneError) as info:
        load_recipe(write(layout, text))
    assert "(3 problem(s))" in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: [", "not valid YAML"),
        ("- 1\n- 2\n", "must be a YAML mapping"),
    ],
)
def test_not_a_recipe(layout, text, message):
    with pytest.raises(SafeGeneError, match=message):
        load_recipe(write(layout, text))


def test_missing_recipe(tmp_path):
    with pytest.raises(SafeGeneError, match="recipe not found"):
        load_recipe(tmp_path / "none.yaml")


def test_safegene_fit_presets_are_checked(layout):
    def with_grid(grid: str) -> str:
        return GOOD.replace("safegene: {}", f"safegene: {{fit: {grid}}}")

    r = load_recipe(write(layout, with_grid("[default, strong]")))
    assert [s["fit"] for s in r.methods["safegene"]] == ["default", "strong"]
    with pytest.raises(SafeGeneError, match="safegene.fit: unknown fit preset"):
        load_recipe(write(layout, with_grid("[gentle]")))
    with pytest.raises(SafeGeneError, match="expected str values"):
        load_recipe(write(layout, with_grid("[1.5]")))


def test_safegene_rollback_is_a_grid_of_booleans(layout):
    def with_grid(grid: str) -> str:
        return GOOD.replace("safegene: {}", f"safegene: {{rollback: {grid}}}")

    r = load_recipe(write(layout, with_grid("[false, true]")))
    assert [s["rollback"] for s in r.methods["safegene"]] == [False, True]
    with pytest.raises(SafeGeneError, match="expected bool values"):
        load_recipe(write(layout, with_grid("[yes please]")))
