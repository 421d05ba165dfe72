"""Evaluation: data loading, generation backends, judges, metrics and reports.

The API `compare` and `eval` use: `load_data` → `EvalSet`s, `make_judges` → judges,
`evaluate_model(ModelSpec, datasets, judges, EvalSettings)` → `Sample`s (call it once per model),
`build_report(samples, datasets, judges, settings, models=[specs])` → dict,
`write_report(report, samples, out_dir, force=...)`.

Names are imported lazily, so `import safegene.evaluate.judges` (or the CLI) does not pull in torch.
"""

import importlib

_EXPORTS = {
    "EvalSet": "data",
    "load_data": "data",
    "GenerationSettings": "generate",
    "generate": "generate",
    "REFUSAL_STRINGS": "judges",
    "Judge": "judges",
    "keyword_judge": "judges",
    "make_judges": "judges",
    "build_report": "report",
    "write_report": "report",
    "EvalSettings": "run",
    "ModelSpec": "run",
    "Sample": "run",
    "evaluate_model": "run",
    "resolve_inputs": "run",
    "run_eval": "run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"safegene.evaluate.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'safegene.evaluate' has no attribute {name!r}")
