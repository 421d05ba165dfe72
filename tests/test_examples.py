"""The example recipe shipped for real checkpoints parses, and fails only on its placeholder
paths."""

from pathlib import Path

import pytest

from safegene.errors import SafeGeneError
from safegene.recipe import load_recipe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("recipe", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_recipe_fails_only_on_missing_paths(recipe):
    with pytest.raises(SafeGeneError) as info:
        load_recipe(recipe)
    problems = str(info.value).splitlines()[1:]
    # a recipe for a GPU machine also names its device as a problem on a machine without one
    expected = ("not found", "no CUDA device is available here")
    assert problems and all(any(e in p for e in expected) for p in problems), problems
    assert any("not found" in p for p in problems)
