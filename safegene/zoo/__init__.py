"""The embedded model family ("the zoo"): data generators, training stages and the recipe."""

from safegene.zoo.build import build_zoo, load_zoo, measure
from safegene.zoo.recipe import RECIPES, Recipe

__all__ = ["build_zoo", "load_zoo", "measure", "RECIPES", "Recipe"]
