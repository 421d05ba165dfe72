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
    assert problems and all("not found" in p for p in problems), problems
