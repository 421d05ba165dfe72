"""The `compare` recipe: a YAML file naming the family, the task models, the data, the judges and
the methods with their hyperparameter grids. Validated field by field before any heavy work; the
methods, their parameters (type, default grid) and whether they need `family.base` come from the
method registry (safegene.methods: each method declares them in its own file).

```yaml
family:
  aligned: models/aligned          # paths are relative to the recipe file; a model may also be a
                                   # cached Hub id: meta-llama/Llama-3.1-8B-Instruct[@revision]
  degraded: [models/degraded]      # one or more
  base: models/base                # needed by SafeLoRA and SafeMERGE
data:
  harmful_test: data/harmful_test.jsonl
  benign_test: data/benign_test.jsonl
  harmful_shots: data/harmful_shots.jsonl   # calibration, selection and re-alignment prompts
  benign_shots: data/benign_shots.jsonl     # optional: SafeGene's helpfulness check (look-alikes)
  harmful_val: data/harmful_val.jsonl       # optional, with benign_val and every task's val: each
  benign_val: data/benign_val.jsonl         # method's setting is then chosen on these, not on test
tasks:
  - name: howto
    model: models/task-howto         # a full fine-tune ...
    adapter: null                    # ... or `model: <aligned>` plus a PEFT LoRA here
    shots: data/howto/shots.jsonl    # {"prompt", "answer"}: calibration examples
    test: data/howto/test.jsonl      # {"prompt", "answer"}: task accuracy
    val: data/howto/val.jsonl        # optional (with data.harmful_val): the choice's accuracy
judges: [keyword, prefix]            # `guard` also needs guard: {model: DIR, format: llamaguard3}
methods:                             # every value is a grid: a list of settings to try
  resta: {beta: [0.25, 0.5, 1.0]}
  safelora: {threshold: [0.35, 0.5]}
  safemerge: {threshold: [0.35], task_weight: [0.8]}
  interpolate: {t: [0.25, 0.5]}
  antidote: {ratio: [0.01, 0.05, 0.1]}  # prunes with the harmful_shots (+ the target's answers)
  safegene: {rank: [1], shots: [16]}
generation: {max_new_tokens: 48, batch_size: 32}
seed: 0
device: cpu
dtype: float32
```
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from safegene.errors import SafeGeneError
from safegene.methods import methods as methods_registry

KNOWN_JUDGES = {"keyword", "prefix", "guard"}
GUARD_FORMATS = {"llamaguard3", "harmbench"}
GENERATION_KEYS = {
    "max_new_tokens": int,
    "batch_size": int,
    "do_sample": bool,
    "temperature": float,
    "top_p": float,
}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    model: Path
    adapter: Path | None
    shots: Path
    test: Path
    val: Path | None = None  # the task's validation split (see CompareRecipe.validation)


@dataclass(frozen=True)
class CompareRecipe:
    aligned: Path
    degraded: list[Path]
    base: Path | None
    harmful_test: Path
    benign_test: Path
    harmful_shots: Path
    tasks: list[TaskSpec]
    judges: list[str]
    methods: dict[str, list[dict[str, Any]]]  # method → the settings of its grid
    generation: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] | None = None  # {"model": Path, "format": str} when judges has guard
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    source: Path | None = None
    benign_shots: Path | None = None  # benign prompts SafeGene's calibration keeps answering
    harmful_val: Path | None = None  # validation splits: given together with benign_val and
    benign_val: Path | None = None  # every task's val, each method's setting is chosen on them
    # the task models SafeGene's layer selection is scored on (the mean score over them: the
    # study's held-in task models, so the selection never sees the target); empty: the target
    select_on: list[TaskSpec] = field(default_factory=list)

    @property
    def validation(self) -> bool:
        """Whether the settings are chosen on validation splits (else on the test split)."""
        return self.harmful_val is not None

    def input_paths(self) -> tuple[Path | None, ...]:
        """Every file and directory the recipe reads (itself included): what an output must
        never touch."""
        return (
            self.source,
            self.aligned,
            *self.degraded,
            self.base,
            self.harmful_test,
            self.benign_test,
            self.harmful_shots,
            self.benign_shots,
            self.harmful_val,
            self.benign_val,
            *(p for t in self.tasks for p in (t.model, t.adapter, t.shots, t.test, t.val)),
            *(p for t in self.select_on for p in (t.model, t.adapter, t.shots)),
            (self.guard or {}).get("model"),
        )


def grid(params: dict[str, list]) -> list[dict[str, Any]]:
    """The cartesian product of a method's grids; an empty list drops that parameter."""
    names = [n for n, values in params.items() if values]
    return [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*(params[n] for n in names))
    ]


class Problems:
    """Collects field-level problems so the user sees all of them at once."""

    def __init__(self, source: str):
        self.source, self.items = source, []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def raise_if_any(self) -> None:
        if self.items:
            lines = "\n".join(f"  {p}" for p in self.items)
            raise SafeGeneError(
                f"invalid recipe {self.source} ({len(self.items)} problem(s)):\n{lines}"
            )


def _path(raw: Any, where: str, root: Path, problems: Problems, *, kind: str) -> Path | None:
    if not isinstance(raw, str) or not raw:
        problems.add(where, f"expected a path, got {raw!r}")
        return None
    path = (root / raw).resolve() if not Path(raw).is_absolute() else Path(raw)
    from safegene.io.hub import is_hub_id, resolve_model  # (safegene.io imports torch)

    if kind == "dir" and not path.exists() and is_hub_id(raw):  # owner/name[@rev], cached
        try:
            return resolve_model(raw)
        except SafeGeneError as exc:
            problems.add(where, str(exc))
            return None
    exists = path.is_dir() if kind == "dir" else path.is_file()
    if not exists:
        problems.add(where, f"{'directory' if kind == 'dir' else 'file'} not found: {path}")
    return path


def _task_file_has_answers(path: Path) -> bool:
    from safegene.evaluate.data import lines
    from safegene.io.untrusted import MAX_DATA_BYTES, parse_json, read_text

    try:
        for line in lines(read_text(path, MAX_DATA_BYTES)):
            if line.strip():
                row = parse_json(line, str(path))
                if not isinstance(row, dict) or row.get("answer") in (None, ""):
                    return False
    except SafeGeneError:
        return False
    return True


def _check_shots_file(path: Path | None, problems: Problems) -> None:
    """The harmful shots hold prompts (SafeGene's shots, Antidote's re-alignment set): found
    empty here rather than after the first evaluations."""
    if path is None or not path.is_file():
        return
    from safegene.shots import load_records

    try:
        load_records(path, split="harmful")
    except SafeGeneError as exc:
        problems.add(
            "data.harmful_shots",
            f"{exc} (SafeGene's shots and Antidote's re-alignment set need at least one)",
        )


def method_grids(raw: Any, problems: Problems) -> dict[str, list[dict[str, Any]]]:
    """{method: the settings of its grid}, each method's grid completed with its defaults."""
    registered = methods_registry()
    if raw is None:
        raw = {name: {} for name in registered}
    if not isinstance(raw, dict):
        problems.add("methods", "expected a mapping of method name to its grid")
        return {}
    grids = {}
    for name, params in raw.items():
        where = f"methods.{name}"
        if name not in registered:
            problems.add(where, f"unknown method; choose from {', '.join(sorted(registered))}")
            continue
        params = params or {}
        if not isinstance(params, dict):
            problems.add(where, "expected a mapping of hyperparameter to a list of values")
            continue
        grids[name] = grid(_method_grid(registered[name], params, where, problems))
    return grids


def _method_grid(method, params: dict, where: str, problems: Problems) -> dict[str, list]:
    """A method's grid: the recipe's values (type-checked) over the method's defaults; giving
    one of its alternative parameters drops the others' defaults."""
    full = {p: list(spec.default) for p, spec in method.params.items()}
    if any(p in params for p in method.alternatives):
        full.update({p: [] for p in method.alternatives if p not in params})
    for p, values in params.items():
        if p not in method.params:
            choices = ", ".join(method.params)
            problems.add(f"{where}.{p}", f"unknown hyperparameter; choose from {choices}")
            continue
        typ = method.params[p].type
        values = values if isinstance(values, list) else [values]
        bad = [v for v in values if not _is_type(v, typ)]
        if bad:
            problems.add(f"{where}.{p}", f"expected {typ.__name__} values, got {bad[0]!r}")
            continue
        check = method.params[p].check
        problem = next((c for c in map(check, values) if c), None) if check else None
        if problem:
            problems.add(f"{where}.{p}", problem)
            continue
        full[p] = [typ(v) for v in values]
    return full


def _is_type(value: Any, typ: type) -> bool:
    if typ is str:
        return isinstance(value, str)
    if typ is bool:
        return isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


MAX_RECIPE_BYTES = 1024 * 1024


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader without anchors and aliases: an alias bomb (a billion laughs) is refused
    at its first alias instead of expanding into gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not allowed", event.start_mark
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str, where: str) -> Any:
    """The YAML document `text` (safe types only, no aliases, bounded nesting), or one
    SafeGeneError naming `where`."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise SafeGeneError(f"recipe {where} is nested too deeply") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SafeGeneError(f"recipe {where} is not valid YAML: {first}") from None


def load_recipe(path: str | Path) -> CompareRecipe:
    """Parse and validate a recipe; every problem is reported, one line each, in one error."""
    path = Path(path)
    if not os.path.lexists(path):
        raise SafeGeneError(f"recipe not found: {path}")
    from safegene.io.untrusted import read_text  # (safegene.io imports torch)

    raw = parse_yaml(read_text(path, MAX_RECIPE_BYTES), str(path))
    if not isinstance(raw, dict):
        raise SafeGeneError(f"recipe {path} must be a YAML mapping")
    root, problems = path.resolve().parent, Problems(str(path))
    for key in sorted(
        set(raw)
        - {
            "family",
            "data",
            "tasks",
            "judges",
            "methods",
            "generation",
            "guard",
            "seed",
            "device",
            "dtype",
        }
    ):
        problems.add(key, "unknown field")

    family = raw.get("family") or {}
    if not isinstance(family, dict):
        problems.add("family", "expected a mapping with aligned, degraded and base")
        family = {}
    aligned = _path(family.get("aligned"), "family.aligned", root, problems, kind="dir")
    degraded_raw = family.get("degraded")
    degraded_raw = [degraded_raw] if isinstance(degraded_raw, str) else degraded_raw
    if not isinstance(degraded_raw, list) or not degraded_raw:
        problems.add("family.degraded", "expected one or more model paths")
        degraded_raw = []
    degraded = [
        _path(d, f"family.degraded[{i}]", root, problems, kind="dir")
        for i, d in enumerate(degraded_raw)
    ]
    base = (
        _path(family["base"], "family.base", root, problems, kind="dir")
        if family.get("base") is not None
        else None
    )

    data = raw.get("data") or {}
    if not isinstance(data, dict):
        problems.add("data", "expected a mapping with harmful_test, benign_test, harmful_shots")
        data = {}
    files = {
        k: _path(data.get(k), f"data.{k}", root, problems, kind="file")
        for k in ("harmful_test", "benign_test", "harmful_shots")
    }
    _check_shots_file(files["harmful_shots"], problems)
    for k in ("benign_shots", "harmful_val", "benign_val"):
        if data.get(k) is not None:
            files[k] = _path(data[k], f"data.{k}", root, problems, kind="file")
    validation = "harmful_val" in files or "benign_val" in files
    if validation and not ("harmful_val" in files and "benign_val" in files):
        problems.add("data", "harmful_val and benign_val go together (the validation splits)")

    tasks = []
    raw_tasks = raw.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        problems.add("tasks", "expected a list of task models")
        raw_tasks = []
    names = set()
    for i, t in enumerate(raw_tasks):
        where = f"tasks[{i}]"
        if not isinstance(t, dict):
            problems.add(where, "expected a mapping with name, model, shots, test")
            continue
        name = t.get("name")
        if not isinstance(name, str) or not name:
            problems.add(f"{where}.name", "missing")
        elif name in names:
            problems.add(f"{where}.name", f"duplicate task name {name!r}")
        names.add(name)
        model = _path(t.get("model"), f"{where}.model", root, problems, kind="dir")
        adapter = (
            _path(t["adapter"], f"{where}.adapter", root, problems, kind="dir")
            if t.get("adapter") is not None
            else None
        )
        shots = _path(t.get("shots"), f"{where}.shots", root, problems, kind="file")
        test = _path(t.get("test"), f"{where}.test", root, problems, kind="file")
        val = None
        if t.get("val") is not None:
            val = _path(t["val"], f"{where}.val", root, problems, kind="file")
        if validation != (val is not None):
            problems.add(
                f"{where}.val",
                "every task needs a val split when data gives harmful_val and benign_val"
                if validation
                else "a task's val split needs data.harmful_val and data.benign_val",
            )
        for key, f in (("shots", shots), ("test", test), ("val", val)):
            if f is not None and f.is_file() and not _task_file_has_answers(f):
                problems.add(
                    f"{where}.{key}", f'task data must be JSONL rows with an "answer": {f}'
                )
        tasks.append(TaskSpec(str(name), model, adapter, shots, test, val))

    judges = raw.get("judges", ["keyword"])
    judges = [judges] if isinstance(judges, str) else judges
    if not isinstance(judges, list) or not judges:
        problems.add("judges", "expected a list of judge names")
        judges = []
    for j in judges:
        if not isinstance(j, str) or j not in KNOWN_JUDGES:
            problems.add(
                "judges", f"unknown judge {j!r}; choose from {', '.join(sorted(KNOWN_JUDGES))}"
            )

    judges = [j for j in judges if isinstance(j, str)]
    guard = None
    if "guard" in judges:
        g = raw.get("guard") or {}
        if not isinstance(g, dict) or "model" not in g:
            problems.add("guard.model", "the guard judge needs a local guard model directory")
        else:
            guard = {
                "model": _path(g["model"], "guard.model", root, problems, kind="dir"),
                "format": g.get("format", "llamaguard3"),
            }
            if not isinstance(guard["format"], str) or guard["format"] not in GUARD_FORMATS:
                problems.add("guard.format", f"choose from {', '.join(sorted(GUARD_FORMATS))}")

    registered = methods_registry()
    methods = method_grids(raw.get("methods"), problems)
    if base is None:
        for m in sorted(m for m in methods if registered[m].needs_base):
            problems.add(
                f"methods.{m}", "needs family.base (the pretrained model before alignment)"
            )

    generation = raw.get("generation") or {}
    if not isinstance(generation, dict):
        problems.add("generation", "expected a mapping (max_new_tokens, batch_size)")
        generation = {}
    for key, value in generation.items():
        if key not in GENERATION_KEYS:
            problems.add(
                f"generation.{key}", f"unknown setting; choose from {', '.join(GENERATION_KEYS)}"
            )
        elif not _is_type(value, GENERATION_KEYS[key]):
            problems.add(
                f"generation.{key}", f"expected {GENERATION_KEYS[key].__name__}, got {value!r}"
            )
    seed = raw.get("seed", 0)
    if not _is_type(seed, int):
        problems.add("seed", f"expected an integer, got {seed!r}")
    from safegene.models import device_problem, parse_dtype

    problem = device_problem(raw.get("device", "cpu"))
    if problem:
        problems.add("device", problem)
    try:
        if not isinstance(raw.get("dtype", "float32"), str):
            raise SafeGeneError(f"expected a dtype name, got {raw.get('dtype')!r}")
        parse_dtype(raw.get("dtype", "float32"))
    except SafeGeneError as exc:
        problems.add("dtype", str(exc))
    problems.raise_if_any()
    return CompareRecipe(
        aligned=aligned,
        degraded=degraded,
        base=base,
        tasks=tasks,
        judges=list(judges),
        methods=methods,
        generation=generation,
        guard=guard,
        seed=int(seed),
        device=str(raw.get("device", "cpu")),
        dtype=str(raw.get("dtype", "float32")),
        source=path.resolve(),
        **files,
    )
