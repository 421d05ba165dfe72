"""SafeGene: extract a model family's safety alignment once, re-express it in every fine-tune.

The public API (each name imported on first use, so `import safegene` and `safegene --help` stay
free of torch):

    from safegene import extract, select, calibrate, apply_gene, evaluate, compare
    gene = extract("zoo/models/aligned", ["zoo/models/degraded"], "gene", rank=1)
    select(gene, "zoo/models/task-howto", harmful="zoo/data/harmful_shots.jsonl", top_k=2,
           out="gene-selected")
    calibrate("gene-selected", "zoo/models/task-howto", harmful="zoo/data/harmful_shots.jsonl",
              task="zoo/data/tasks/howto/shots.jsonl", out="gene-howto")
    apply_gene("gene-howto", "zoo/models/task-howto", "howto-safe", form="merged")
    evaluate("howto-safe", "howto-report", zoo="zoo")

A Hub id becomes a directory with `resolve_model("owner/name", revision)` (offline, from the HF
cache); `degrade(aligned, out, ...)` makes a degraded model.

`select`, `calibrate`, `compare`, `evaluate` and `degrade` are the functions; their modules (and the
`safegene.evaluate` package) are imported as `from safegene.select import ...` as usual.
"""

import importlib
import sys
import types

from safegene.errors import SafeGeneError, SafeGeneWarning

__version__ = "0.1.0"

_EXPORTS = {  # name → (module, attribute)
    "extract": ("safegene.gene", "extract"),
    "load_gene": ("safegene.gene", "load_gene"),
    "save_gene": ("safegene.gene", "save_gene"),
    "Gene": ("safegene.gene", "Gene"),
    "select": ("safegene.select", "select"),
    "calibrate": ("safegene.calibrate", "calibrate"),
    "apply_gene": ("safegene.apply", "apply_gene"),
    "evaluate": ("safegene.evaluate.run", "evaluate"),
    "degrade": ("safegene.degrade", "degrade"),
    "resolve_model": ("safegene.io.hub", "resolve_model"),
    "compare": ("safegene.compare", "run_compare"),
    "run_demo": ("safegene.demo", "run_demo"),
    "build_zoo": ("safegene.zoo", "build_zoo"),
    "load_zoo": ("safegene.zoo", "load_zoo"),
    "SelectSettings": ("safegene.settings", "SelectSettings"),
    "FitSettings": ("safegene.settings", "FitSettings"),
    "ComputeSettings": ("safegene.settings", "ComputeSettings"),
    "DegradeSettings": ("safegene.settings", "DegradeSettings"),
}
__all__ = ["SafeGeneError", "SafeGeneWarning", "__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'safegene' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """The package: importing the submodule `safegene.select` (or `.calibrate`, `.compare`,
    `.evaluate`) does not replace the API function of that name on the package."""

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable through sys.modules and `from ... import`
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
