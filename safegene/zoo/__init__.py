"""The embedded model family ("the zoo"): data generators, training stages and the recipe.

    from safegene.zoo import build_zoo, load_zoo
    root = build_zoo("zoo", size="small", seed=0)   # or: safegene zoo build --out zoo
    zoo = load_zoo(root)                            # zoo.json, paths made absolute

Modules: `data` (generators and splits), `recipe` (every hyperparameter, per size), `train`
(tokenizer, tiny Llama, the training loop), `build` (stages, resume, measurements, zoo.json).
docs/zoo.md describes the family and records measured build times and metrics.

Measured (seed 0, one thread, a shared 2-core machine under heavy load from other jobs):
small: 246 s CPU (8:10 wall under load), 551 MB peak RSS; aligned 0 % harmful / 3 % over-refusal;
degraded 100 %; howto full/LoRA 100 %/48 % harmful, accuracy 1.00/1.00; arith 100 %/100 %,
0.96/0.96; classify 14 %/15 %, 0.98/0.90. micro: 66 s CPU (4:18 wall under load), 468 MB;
aligned 7 % harmful / 10 % over-refusal; every task model ≥ 88 % harmful.
"""

from safegene.zoo.build import build_zoo, load_zoo, measure, task_models
from safegene.zoo.recipe import RECIPES, Recipe

__all__ = ["build_zoo", "load_zoo", "measure", "task_models", "RECIPES", "Recipe"]
