"""The method registry: every defence `compare` runs, each declared in its own file.

A method registers its build function with `@register_method`: its name, its typed parameter grid
(each parameter's type and default values), whether it needs the recipe's base model, the grid
the demo runs, and parameters that are alternatives (giving one drops the others' defaults).
A parameter may carry a `check` of its values (Antidote's pruning ratio must lie in (0, 1)).

    @register_method("resta", params={"beta": Param(float, [0.25, 0.5, 1.0])}, demo={...})
    def build(run: Run, task, setting: dict, out: Path) -> tuple[Path, Path | None]:
        ...  # write the defended model under `out`; return (model path, adapter path or None)

A method whose one setting stands for several rows (SafeGene and its ablations) registers a
generator `variants(run, task, setting) -> Iterator[Variant]` with `yields_variants=True`.
`methods()` lists them all in a fixed order (MODULES, then registration order): recipe
validation, `compare` and `demo` iterate it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safegene.recipe import CompareRecipe, TaskSpec

# The files that register methods, in the order their rows appear in a comparison.
MODULES = (
    "safegene.baselines.resta",
    "safegene.baselines.safelora",
    "safegene.baselines.safemerge",
    "safegene.baselines.interpolate",
    "safegene.baselines.antidote",
    "safegene.pipeline",
)


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its type, its default grid ([]: left out unless a recipe sets it) and
    `check`, which names what is wrong with one value (None when it is fine): recipe validation
    reports it before any work."""

    type: type
    default: list = field(default_factory=list)
    check: Callable[[Any], str | None] | None = None


@dataclass
class Variant:
    """One model to evaluate: `build(scratch)` writes what it needs and returns (path, adapter)."""

    method: str
    setting: dict
    build: Callable[[Path], tuple[Path, Path | None]]


@dataclass
class Run:
    """What a method's build sees besides the task model: the recipe, and where outputs worth
    keeping go (`keep`: the report's genes/, e.g. SafeGene's calibrated genes), and which of
    them this run has made (`once`)."""

    recipe: CompareRecipe
    keep: Path
    made: set[Path] = field(default_factory=set)  # what this run wrote under `keep`

    def once(self, out: Path, make: Callable[[Path], object]) -> Path:
        """`make(out)` the first time this run asks for `out`, and `out` after that; an `out`
        another run left behind is not taken as made (`make` decides: write over it or refuse)."""
        if out not in self.made:
            make(out)
            self.made.add(out)
        return out

    def options(self, task: TaskSpec, setting: dict, renamed: dict | None = None) -> dict:
        """The keywords a baseline's entry point takes for one setting: the setting's values
        (a parameter its entry point names otherwise under that name: `renamed`), the task's
        adapter, and no progress bars."""
        renamed = renamed or {}
        options = {renamed.get(k, k): v for k, v in setting.items()}
        return {**options, "adapter": task.adapter, "progress": False}


@dataclass(frozen=True)
class Method:
    name: str
    params: dict[str, Param]
    variants: Callable[[Run, TaskSpec, dict], Iterator[Variant]]
    needs_base: bool = False
    demo: dict[str, list] = field(default_factory=dict)  # the demo's grid
    alternatives: tuple[str, ...] = ()  # giving one of these drops the others' default grids
    module: str = ""


_REGISTRY: dict[str, Method] = {}


def register_method(
    name: str,
    *,
    params: dict[str, Param],
    needs_base: bool = False,
    demo: dict[str, list] | None = None,
    alternatives: tuple[str, ...] = (),
    yields_variants: bool = False,
):
    """Register the decorated function as method `name` (see the module doc)."""

    def register(fn):
        if yields_variants:
            variants = fn
        else:

            def variants(run: Run, task: TaskSpec, setting: dict) -> Iterator[Variant]:
                yield Variant(name, setting, lambda out: fn(run, task, setting, out))

        _REGISTRY[name] = Method(
            name, dict(params), variants, needs_base, dict(demo or {}), alternatives, fn.__module__
        )
        return fn

    return register


def methods() -> dict[str, Method]:
    """Every registered method by name, in MODULES order (each file's in registration order)."""
    for module in MODULES:
        importlib.import_module(module)
    order = {m: i for i, m in enumerate(MODULES)}
    ranked = sorted(
        enumerate(_REGISTRY.values()), key=lambda im: (order.get(im[1].module, len(order)), im[0])
    )
    return {m.name: m for _, m in ranked}


def demo_grids() -> dict[str, dict[str, Any]]:
    """The grid of every method the demo runs."""
    return {name: dict(m.demo) for name, m in methods().items()}
