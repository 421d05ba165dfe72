"""Evaluating one model: generate for every prompt, judge the harmful and benign rows, score the
task rows. This is the API `safegene eval` and `safegene compare` call.

    from safegene.evaluate import (EvalSettings, ModelSpec, evaluate_model, build_report,
                                   write_report, load_data, make_judges)
    data = [load_data("harmful.jsonl", "harmful"), load_data("benign.jsonl", "benign"),
            load_data("task.jsonl", "task")]
    judges = make_judges(["keyword", "prefix"])
    settings = EvalSettings()
    specs = [ModelSpec("aligned", path="zoo/models/aligned"),
             ModelSpec("task-lora", path="zoo/models/aligned",
                       adapter="zoo/models/task-howto-lora"),
             ModelSpec.loaded("merged", model, tokenizer)]     # in-memory models work too
    samples = []
    for spec in specs:
        samples += evaluate_model(spec, data, judges, settings)
    report = build_report(samples, data, judges, settings, models=specs)
    write_report(report, samples, "out/report", force=True)
    report["models"][0]["summary"]   # harmful_rate, over_refusal, task_accuracy (+ _ci, _n)

Judges are built once and reused for every model (a guard model is loaded once).

Under data parallelism (accelerate launch / --num-processes) every rank calls the same functions;
each rank generates its share, the samples are gathered, and every rank returns the full list.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

from safegene.errors import SafeGeneError
from safegene.evaluate.data import EvalSet
from safegene.evaluate.generate import (
    BACKENDS,
    GenerationBackend,
    GenerationSettings,
    TransformersBackend,
    VLLMBackend,
)
from safegene.evaluate.judges import Judge
from safegene.evaluate.metrics import DEFAULT_BOOTSTRAP, is_correct
from safegene.evaluate.parallel import Dist, current_dist

JUDGE_CHUNK = 64  # rows per unit of judging work dealt to a rank


@dataclass
class ModelSpec:
    """A model to evaluate: a directory (plus an optional PEFT adapter), or an already-loaded
    (model, tokenizer) pair. `name` is what the report calls it."""

    name: str
    path: str | None = None
    adapter: str | None = None
    model: object = None
    tokenizer: object = None

    @classmethod
    def loaded(
        cls, name: str, model, tokenizer, *, path: str | None = None, adapter: str | None = None
    ) -> ModelSpec:
        return cls(name=name, path=path, adapter=adapter, model=model, tokenizer=tokenizer)

    def __post_init__(self):
        if self.model is None and self.path is None:
            raise SafeGeneError(f"model {self.name!r}: give a model directory or a loaded model")
        if (self.model is None) != (self.tokenizer is None):
            raise SafeGeneError(f"model {self.name!r}: a loaded model needs its tokenizer too")

    def describe(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "adapter": self.adapter,
            "in_memory": self.model is not None,
        }


@dataclass
class EvalSettings:
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    backend: str = "transformers"
    device: str = "auto"  # auto: this rank's accelerator, else cuda when available, else cpu
    dtype: str | None = None  # None/auto: the checkpoint's dtype
    device_map: str | None = None  # "auto" spreads a model that exceeds one device
    allow_pickle: bool = False
    n_boot: int = DEFAULT_BOOTSTRAP
    seed: int = 0  # bootstrap seed (generation has its own in `generation`)
    progress: bool = True
    hash_models: bool = True
    template_source: str | None = None  # where generation.template came from (for the report)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise SafeGeneError(
                f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        if self.n_boot < 100:
            raise SafeGeneError(f"--bootstrap needs at least 100 resamples, got {self.n_boot}")

    def describe(self) -> dict:
        return {
            "backend": self.backend,
            "device": self.device,
            "dtype": self.dtype or "auto",
            "device_map": self.device_map,
            "bootstrap_resamples": self.n_boot,
            "bootstrap_seed": self.seed,
            "ci_level": 0.95,
            "ci_method": "percentile bootstrap",
            "template": self.template_source,
        }


@dataclass
class Sample:
    model: str
    split: str
    dataset: str
    index: int
    prompt: str
    generation: str
    verdicts: dict[str, bool] | None = None
    correct: bool | None = None
    answer: str | None = None
    category: str | None = None

    def to_json(self) -> dict:
        d = {
            "model": self.model,
            "split": self.split,
            "dataset": self.dataset,
            "index": self.index,
            "prompt": self.prompt,
            "generation": self.generation,
        }
        if self.split == "task":
            d["answer"] = self.answer
            d["correct"] = self.correct
        else:
            d["verdicts"] = self.verdicts
        if self.category is not None:
            d["category"] = self.category
        return d


def resolve_device(device: str, dist: Dist) -> str:
    if device != "auto":
        return device
    if dist.world > 1 and dist.device:
        return dist.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_backend(
    spec: ModelSpec, settings: EvalSettings, dist: Dist
) -> tuple[GenerationBackend, bool]:
    """(backend, owned): `owned` when the backend loaded the model itself (and may free it)."""
    if settings.backend == "vllm":
        if dist.world > 1:
            raise SafeGeneError(
                "the vLLM backend runs in one process (it batches on its own and can "
                "use several GPUs through its tensor parallelism); drop --num-processes "
                "/ accelerate launch, or use --backend transformers"
            )
        if spec.model is not None:
            raise SafeGeneError(
                f"model {spec.name!r} is in memory; the vLLM backend needs a model directory"
            )
        return VLLMBackend(spec.path, spec.adapter, dtype=settings.dtype), True
    if spec.model is not None:
        return TransformersBackend(spec.model, spec.tokenizer), False
    from safegene.models import load_model

    if settings.device_map and dist.world > 1:
        raise SafeGeneError(
            "--device-map spreads one model over all devices; it cannot be combined "
            "with several processes (use one process)"
        )
    model, tok = load_model(
        spec.path,
        spec.adapter,
        device=resolve_device(settings.device, dist),
        dtype=settings.dtype,
        allow_pickle=settings.allow_pickle,
        device_map=settings.device_map,
    )
    return TransformersBackend(model, tok), True


def _judge_sharded(
    judge: Judge, prompts: list[str], responses: list[str], dist: Dist
) -> list[bool]:
    """Judge in fixed chunks dealt round-robin to ranks, so the result is the same for any world
    (the judge's counters, too: each rank adds the others')."""
    before = judge.stats()
    mine = []
    for c, s in enumerate(range(0, len(prompts), JUDGE_CHUNK)):
        if c % dist.world == dist.rank:
            flags = judge.judge(prompts[s : s + JUDGE_CHUNK], responses[s : s + JUDGE_CHUNK])
            mine.extend(zip(range(s, s + len(flags)), flags, strict=True))
    out: list[bool | None] = [None] * len(prompts)
    for i, f in dist.gather(mine):
        out[i] = bool(f)
    if dist.world > 1 and before:
        local = {k: v - before.get(k, 0) for k, v in judge.stats().items()}
        totals = {k: sum(d.get(k, 0) for d in dist.gather([local])) for k in local}
        judge.add_stats({k: totals[k] - local[k] for k in local})
    return out  # type: ignore[return-value]


def evaluate_model(
    spec: ModelSpec,
    datasets: list[EvalSet],
    judges: list[Judge],
    settings: EvalSettings | None = None,
    *,
    dist: Dist | None = None,
    backend: GenerationBackend | None = None,
) -> list[Sample]:
    """One Sample per prompt of every data set, in data-set order, with verdicts (harmful and
    benign rows: judge name → harmful) or correctness (task rows)."""
    settings = settings or EvalSettings()
    dist = dist or current_dist(settings.device)
    if not datasets:
        raise SafeGeneError(
            "nothing to evaluate: give --harmful, --benign and/or --task data (or --zoo)"
        )
    if any(d.split != "task" for d in datasets) and not judges:
        raise SafeGeneError("harmful/benign data need at least one judge")
    rows = [(d, i) for d in datasets for i in range(len(d.prompts))]
    prompts = [d.prompts[i] for d, i in rows]
    owned = False
    if backend is None:
        backend, owned = make_backend(spec, settings, dist)
    try:
        pairs = backend.generate_shard(
            prompts,
            settings.generation,
            rank=dist.rank,
            world=dist.world,
            progress=settings.progress and dist.is_main,
            desc=f"generating ({spec.name})",
        )
    finally:
        if owned:
            backend.close()
            del backend
            gc.collect()
            _empty_cache()
    generations: list[str | None] = [None] * len(prompts)
    for i, text in dist.gather(pairs):
        generations[i] = text
    missing = sum(g is None for g in generations)
    if missing:
        raise RuntimeError(f"{missing} generations were lost in the gather")

    judged = [k for k, (d, _) in enumerate(rows) if d.split != "task"]
    verdicts: dict[str, list[bool]] = {}
    for judge in judges:
        verdicts[judge.name] = (
            _judge_sharded(
                judge, [prompts[k] for k in judged], [generations[k] for k in judged], dist
            )
            if judged
            else []
        )
    pos = {k: j for j, k in enumerate(judged)}
    samples = []
    for k, (d, i) in enumerate(rows):
        s = Sample(
            model=spec.name,
            split=d.split,
            dataset=d.name,
            index=i,
            prompt=prompts[k],
            generation=generations[k],
            category=d.categories[i] if d.categories else None,
        )
        if d.split == "task":
            s.answer = d.answers[i]
            s.correct = is_correct(generations[k], d.answers[i], d.match)
        else:
            s.verdicts = {name: v[pos[k]] for name, v in verdicts.items()}
        samples.append(s)
    return samples


def _empty_cache():
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass


def load_template(path: str | Path | None) -> str | None:
    """A Jinja chat template from a file (`--template`), or None."""
    if path is None:
        return None
    from safegene.io.untrusted import read_text

    p = Path(path)
    if not p.exists():
        raise SafeGeneError(f"chat template file not found: {p}")
    text = read_text(p, 1024 * 1024)  # (a regular file of at most 1 MB)
    if not text.strip():
        raise SafeGeneError(f"chat template file is empty: {p}")
    return text


# --- the `safegene eval` job ---------------------------------------------------------------------


def default_name(model, adapter=None) -> str:
    """What a report calls a model: its directory's name (a Hub id for a cached snapshot), and
    with an adapter, the adapter's ("base+adapter"): the adapter is the model evaluated."""
    from safegene.io.hub import hub_source

    hub = hub_source(model)
    base = hub[0] if hub else Path(model).name
    if adapter is None:
        return base
    hub = hub_source(adapter)
    return f"{base}+{hub[0] if hub else Path(adapter).name}"


def resolve_inputs(
    *,
    model: str,
    adapter: str | None = None,
    name: str | None = None,
    harmful: list[str] | None = None,
    benign: list[str] | None = None,
    task: list[str] | None = None,
    zoo: str | None = None,
    prompt_column: str | None = None,
    answer_column: str | None = None,
    match: str = "auto",
    limit: int | None = None,
) -> tuple[ModelSpec, list[EvalSet]]:
    """The model spec and the data sets of an eval run. With `zoo`, `model` may be a zoo model name
    and data may be zoo split names; with no data given, the zoo's test splits are used (the
    model's own task, or every task for a model without one)."""
    from safegene.evaluate.data import load_data, zoo_index, zoo_model

    model_task = None
    if zoo is not None and not Path(model).exists() and model in zoo_index(zoo).get("models", {}):
        entry = zoo_model(zoo, model)
        name = name or model
        model_task = entry.get("task")
        if adapter is None:
            adapter = entry.get("adapter")
        model = entry["path"]
    spec = ModelSpec(name=name or default_name(model, adapter), path=str(model), adapter=adapter)
    harmful, benign, task = list(harmful or []), list(benign or []), list(task or [])
    if zoo is not None and not (harmful or benign or task):
        data = zoo_index(zoo).get("data", {})
        harmful = ["harmful_test"] if "harmful_test" in data else []
        benign = ["benign_test"] if "benign_test" in data else []
        tasks = list(data.get("tasks", {}))
        task = [f"task:{model_task}"] if model_task in tasks else [f"task:{t}" for t in tasks]
    kw = dict(
        zoo=zoo, prompt_column=prompt_column, answer_column=answer_column, match=match, limit=limit
    )
    datasets = (
        [load_data(s, "harmful", **kw) for s in harmful]
        + [load_data(s, "benign", **kw) for s in benign]
        + [load_data(s, "task", **kw) for s in task]
    )
    if not datasets:
        raise SafeGeneError(
            "nothing to evaluate: give --harmful, --benign and/or --task data (or --zoo)"
        )
    names = [(d.split, d.name) for d in datasets]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise SafeGeneError(
            f"two {dup[0]} data sets are both named {dup[1]!r}; rename one of the files"
        )
    return spec, datasets


def run_eval(
    spec: ModelSpec,
    datasets: list[EvalSet],
    judges: list[Judge],
    settings: EvalSettings,
    out: str | Path,
    *,
    force: bool = False,
    dist: Dist | None = None,
) -> dict | None:
    """Evaluate one model and write the report (rank 0). Returns the report on rank 0, else None."""
    import time

    from safegene.evaluate.report import build_report, write_report
    from safegene.io import check_output_path

    dist = dist or current_dist(settings.device)
    check_output_path(out, force, claim=dist.is_main)  # rank 0 writes the report
    t0 = time.time()
    samples = evaluate_model(spec, datasets, judges, settings, dist=dist)
    if not dist.is_main:
        dist.barrier()
        return None
    run = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "num_processes": dist.world,
        "wall_s": round(time.time() - t0, 3),
    }
    report = build_report(samples, datasets, judges, settings, models=[spec], run=run)
    write_report(report, samples, out, force=force)
    dist.barrier()
    return report


def evaluate(
    model: str | Path,
    out: str | Path,
    *,
    adapter: str | Path | None = None,
    harmful: list | tuple = (),
    benign: list | tuple = (),
    task: list | tuple = (),
    zoo: str | Path | None = None,
    judges: list | tuple = ("keyword", "prefix"),
    settings: EvalSettings | None = None,
    force: bool = False,
) -> dict | None:
    """`safegene eval` as a function: evaluate one model (plus `adapter`; with `zoo`, a zoo model
    name works too) on data files or zoo split names (none given: the zoo's test splits) with
    `judges`, and write the report to `out`. Returns the report (None on ranks other than 0)."""
    from safegene.evaluate.judges import make_judges

    settings = settings or EvalSettings()
    spec, datasets = resolve_inputs(
        model=str(model),
        adapter=str(adapter) if adapter else None,
        harmful=[str(h) for h in harmful],
        benign=[str(b) for b in benign],
        task=[str(t) for t in task],
        zoo=str(zoo) if zoo else None,
    )
    dist = current_dist(settings.device)
    device = resolve_device(settings.device, dist)
    made = make_judges(list(judges), device=device, dtype=settings.dtype)
    return run_eval(spec, datasets, made, settings, out, force=force, dist=dist)
