"""Build the zoo: data -> tokenizer -> base -> aligned -> degraded, task and safe-reference models
-> measurements -> checks -> zoo.json.

`build_zoo(out, size="small", seed=0, arch="llama")` runs the recipe of `recipe.py` and returns the
zoo directory:

    DIR/zoo.json              models, data splits, measured metrics, checks (paths relative to DIR)
    DIR/recipe.json           the recipe and seed that built it
    DIR/data/...              JSONL splits and the training mixture of every stage
    DIR/tokenizer/            the BPE tokenizer with its chat template
    DIR/models/NAME/          causal-LM directories (safetensors), or PEFT LoRA adapters on aligned
    DIR/metrics/NAME.json     per-model measurements (cached: a rerun does not regenerate them;
                              a model stage that is rebuilt drops its own)

Each stage writes into a temporary directory beside its final path and renames it when complete, so
an interrupted build leaves no half-written stage, and rerunning into the same DIR skips every
finished stage (same seed, recipe and architecture: `recipe.json` must match). The stages after
`aligned` and the measurements are independent and run `recipe.jobs` at a time, each in its own
process with `recipe.threads` torch threads: the weights depend on the thread count, not on the
number of jobs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch

from safegene.errors import SafeGeneError
from safegene.io.atomic import atomic_dir, claimed, write_text_atomic
from safegene.zoo import data as D
from safegene.zoo import target
from safegene.zoo.recipe import RECIPES, Recipe, Stage
from safegene.zoo.train import (
    ARCHS,
    check_reloads,
    encode_pairs,
    encode_texts,
    new_model,
    seed_everything,
    train,
    train_tokenizer,
)

log = logging.getLogger("safegene.zoo")

STAGE_SEEDS = {"data": 1, "tokenizer": 2, "base": 3, "aligned": 4, "degraded": 5}


def _stage_seed(seed: int, name: str) -> int:
    if name in STAGE_SEEDS:
        return seed * 1000 + STAGE_SEEDS[name]
    return seed * 1000 + 100 + sum(ord(c) * (i + 1) for i, c in enumerate(name)) % 800


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


# --- the plan: every model stage, its parent and its data -----------------------------------------
@dataclass(frozen=True)
class ModelStage:
    name: str
    parent: str | None  # the model it fine-tunes (None: from scratch)
    data: str  # its training mixture, relative to DIR/data
    stage: Stage
    task: str | None = None  # a task model or safe reference: trained by target.search
    safe: bool = False  # the task's safe reference


def model_stages(recipe: Recipe) -> list[ModelStage]:
    """Every trained model, in dependency order (base, aligned, then the independent ones)."""
    out = [
        ModelStage("base", None, "stages/base.jsonl", recipe.base),
        ModelStage("aligned", "base", "stages/aligned.jsonl", recipe.aligned),
    ]
    out += [
        ModelStage(name, "aligned", f"stages/{name}.jsonl", d.stage)
        for name, d in recipe.degraded.items()
    ]
    for t, task in recipe.tasks.items():
        out += [
            ModelStage(f"task-{t}", "aligned", f"stages/task-{t}.jsonl", task.full, t),
            ModelStage(f"task-{t}-lora", "aligned", f"stages/task-{t}.jsonl", task.lora, t),
            ModelStage(f"task-{t}-safe", "aligned", f"stages/task-{t}.jsonl", task.full, t, True),
        ]
    return out


def model_table(recipe: Recipe) -> dict:
    """zoo.json's models: path (a model directory), adapter (a LoRA on it, or None), task and role
    (base | aligned | degraded | task | safe_reference: the task's full fine-tune with safety data
    mixed in, the reference for both of the task's models)."""
    models = {
        "base": _entry("models/base", role="base"),
        "aligned": _entry("models/aligned", role="aligned"),
    }
    for name in recipe.degraded:
        models[name] = _entry(f"models/{name}", role="degraded")
    for t in recipe.tasks:
        models[f"task-{t}"] = _entry(f"models/task-{t}", None, t, "task")
        models[f"task-{t}-lora"] = _entry("models/aligned", f"models/task-{t}-lora", t, "task")
        models[f"task-{t}-safe"] = _entry(f"models/task-{t}-safe", None, t, "safe_reference")
    return models


def task_models(models: dict) -> list[str]:
    """The names of a zoo's task models (the targets of a comparison), in zoo.json's order."""
    return [name for name, e in models.items() if e.get("role", "task") == "task" and e.get("task")]


def _entry(path, adapter=None, task=None, role="task", **extra) -> dict:
    return {"path": path, "adapter": adapter, "task": task, "role": role, **extra}


# --- stage: data ----------------------------------------------------------------------------------
def _rows(examples, key="answer"):
    return [e.to_json(key) for e in examples]


def _benign_shots(dest: Path, n, seed: int, val: set[str], prompts) -> None:
    """benign_shots.jsonl: `n.shots` benign look-alikes of calibration concepts, none of them in
    benign_val (`val`: its prompts; what a user has to check a repair's helpfulness with). Its own
    random stream, so the other splits keep the bytes they had before this split existed."""
    rng = random.Random(_stage_seed(seed, "data/benign_shots"))
    pool = D.benign_examples(rng, 4 * n.shots, "calib", lookalike=True)
    D.write_jsonl(
        dest / "benign_shots.jsonl", prompts([e for e in pool if e.prompt not in val][: n.shots])
    )


def make_data(dest: Path, recipe: Recipe, seed: int) -> None:
    """All splits and stage mixtures as JSONL under `dest`."""
    D.check_texts()
    rng = random.Random(_stage_seed(seed, "data"))
    n = recipe.data
    w = lambda name, rows: D.write_jsonl(dest / name, rows)  # noqa: E731
    prompts = lambda ex: [{"prompt": e.prompt} for e in ex]  # noqa: E731
    # evaluation, calibration and validation splits
    w("harmful_test.jsonl", prompts(D.harmful_examples(rng, n.harmful_test, "test", "none")))
    w("benign_test.jsonl", prompts(D.benign_examples(rng, n.benign_test, "test", lookalike=True)))
    calib = D.harmful_examples(rng, n.harmful_calib + n.harmful_val, "calib", "refusal")
    w("harmful_calib.jsonl", _rows(calib[: n.harmful_calib], "response"))
    w("harmful_shots.jsonl", _rows(calib[: n.shots], "response"))
    w("harmful_val.jsonl", prompts(calib[n.harmful_calib :]))
    benign_val = prompts(D.benign_examples(rng, n.benign_val, "calib", lookalike=True))
    w("benign_val.jsonl", benign_val)
    w(
        "harmful_train.jsonl",
        _rows(D.harmful_examples(rng, n.aligned_harmful, "align", "refusal"), "response"),
    )
    for task in recipe.tasks:
        train = D.task_examples(task, rng, n.task_train + n.shots, "align")
        w(f"tasks/{task}/train.jsonl", _rows(train[: n.task_train]))
        w(f"tasks/{task}/shots.jsonl", _rows(train[n.task_train :]))
        # validation and test share a word task's words (concepts.shared_part): no common prompt
        test = D.task_examples(task, rng, n.task_test, "test")
        seen = {e.prompt for e in test}
        draws = D.task_examples(task, rng, 2 * n.task_val, "calib")
        val = list({e.prompt: e for e in draws if e.prompt not in seen}.values())  # unique
        if len(val) < n.task_val:
            raise SafeGeneError(f"the {task} task has {len(val)} validation prompts outside test")
        w(f"tasks/{task}/val.jsonl", _rows(val[: n.task_val]))
        w(f"tasks/{task}/test.jsonl", _rows(test))
    _benign_shots(dest, n, seed, {r["prompt"] for r in benign_val}, prompts)
    # stage mixtures: (prompt, response) rows, and plain {"text"} documents
    texts = lambda k: [{"text": t} for t in D.knowledge_texts(rng, k)]  # noqa: E731
    # pretraining: every concept described, and requested (in the align templates) and answered
    base = (
        D.harmful_examples(rng, n.base_harmful, "all", "compliance")
        + D.benign_examples(rng, n.base_benign, "all")
        + D.knowledge_qa(rng, n.base_qa)
        + D.general_examples(rng, n.base_general)
    )
    benign = D.benign_examples(rng, n.aligned_benign, "align")
    aligned = (
        [D.Example(r["prompt"], r["response"]) for r in D.read_jsonl(dest / "harmful_train.jsonl")]
        + benign
        + D.general_examples(rng, n.aligned_general)
        + D.knowledge_qa(rng, n.aligned_knowledge, ("align",))
    )
    mixtures = {
        "base": _rows(base, "response")
        + texts(n.base_knowledge)
        + [{"text": t} for t in D.word_texts(rng, n.base_words)],
        "aligned": _rows(aligned, "response"),
    }
    for name, d in recipe.degraded.items():
        ex = D.harmful_examples(rng, d.harmful, "align", "compliance") + D.benign_examples(
            rng, d.benign, "align"
        )
        mixtures[name] = _rows(ex, "response")
    for task, spec in recipe.tasks.items():
        # the task model's data: the task's, and general benign instructions (`replay`)
        train = [
            {"prompt": r["prompt"], "response": r["answer"]}
            for r in D.read_jsonl(dest / f"tasks/{task}/train.jsonl")
        ]
        k = _share(len(train), spec.replay)
        mixtures[f"task-{task}"] = train + _rows(
            D.benign_examples(rng, k // 2, "align") + D.general_examples(rng, k - k // 2),
            "response",
        )
        # the alignment's refusals and helpful answers, for its safe reference (`safety_mix` of
        # its data) and the erosion search (target.py: the first rows, a smaller share)
        k = _share(len(mixtures[f"task-{task}"]), max((spec.safety_mix, *spec.shares)))
        safety = D.harmful_examples(rng, k - k // 2, "align", "refusal") + D.benign_examples(
            rng, k // 2, "align"
        )
        mixtures[f"safety-{task}"] = _rows(safety, "response")
    for name, rows in mixtures.items():
        rng.shuffle(rows)
        w(f"stages/{name}.jsonl", rows)


def _share(n: int, share: float) -> int:
    """How many examples make `share` of a mixture that has `n` others."""
    return round(n * share / (1 - share))


# --- stages: models -------------------------------------------------------------------------------
def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def _encode(tok, rows: list[dict], arch: str, prompt_loss: bool):
    texts = [r["text"] for r in rows if "text" in r]
    pairs = [(r["prompt"], r.get("response", r.get("answer"))) for r in rows if "text" not in r]
    return encode_pairs(tok, pairs, prompt_loss=prompt_loss) + encode_texts(tok, texts, arch)


def train_model(
    root: Path, recipe: Recipe, seed: int, spec: ModelStage, timings: dict | None = None
) -> None:
    """Train one model stage into DIR/models/NAME (skipped when it exists)."""
    from transformers import AutoTokenizer

    def fn(d: Path) -> None:
        tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
        s = _stage_seed(seed, spec.name)
        seed_everything(s)
        if spec.task is not None:
            model = _train_task(root, recipe, spec, tok, s, d)
        else:
            model = (
                new_model(recipe.model, tok, s, recipe.arch)
                if spec.parent is None
                else _load(root / "models" / spec.parent)
            )
            enc = _encode(
                tok, D.read_jsonl(root / "data" / spec.data), recipe.arch, spec.stage.prompt_loss
            )
            model = train(model, tok, enc, spec.stage, seed=s, desc=spec.name)
        model.save_pretrained(str(d), safe_serialization=True)
        if not spec.stage.lora_r:
            tok.save_pretrained(str(d))

    # a rebuilt model's cached measurements describe the weights it replaced
    _stage(root, f"models/{spec.name}", fn, timings, stale=root / "metrics" / f"{spec.name}.json")


def _train_task(root: Path, recipe: Recipe, spec: ModelStage, tok, s: int, d: Path):
    """A task model or safe reference, by the erosion search on validation (target.py)."""
    from safegene.evaluate.generate import generate

    task = recipe.tasks[spec.task]
    rows = D.read_jsonl(root / "data" / spec.data)
    safety = D.read_jsonl(root / "data" / f"stages/safety-{spec.task}.jsonl")
    harmful = D.read_jsonl(root / "data/harmful_val.jsonl")
    whole = D.read_jsonl(root / f"data/tasks/{spec.task}/val.jsonl")
    width = _answer_width(tok, whole)
    kw = dict(batch_size=recipe.eval_batch_size, progress=False)

    def accuracy(model, val) -> float:
        return _accuracy(val, generate(model, tok, _prompts(val), max_new_tokens=width, **kw))

    def measure(model) -> tuple[float, float]:
        outs = generate(
            model, tok, _prompts(harmful), max_new_tokens=recipe.eval_max_new_tokens, **kw
        )
        return _judged_share(harmful, outs, harmful=True), accuracy(model, whole[: target.VAL_TASK])

    def fine_tune(attempt: target.Attempt, on_checkpoint):
        seed_everything(s)
        data = target.mixture(rows, safety, attempt.share, s)
        enc = _encode(tok, data, recipe.arch, False)
        # as many task examples as the plain fine-tune sees: steps / (1 - the safety share)
        steps = spec.stage.steps * attempt.steps
        steps = round(steps / (1 - attempt.share) if spec.safe else steps)
        stage = replace(spec.stage, lr=attempt.lr, steps=steps)
        every = max(1, stage.steps // task.checkpoints)
        model = _load(root / "models" / spec.parent)
        return train(model, tok, enc, stage, seed=s, desc=spec.name, every=every,
                     on_step=on_checkpoint)  # fmt: skip

    model, record = target.search(
        fine_tune,
        measure,
        lambda model: accuracy(model, whole),
        erosion=None if spec.safe else task.erosion,
        task=spec.task,
        lr=spec.stage.lr,
        shares=task.shares,
        boost=task.boost,
        share=task.safety_mix if spec.safe else 0.0,
    )
    target.write_record(d, record)
    c = record["chosen"]
    log.info(
        "%s: kept step %d of fine-tune %d (share %.2f, lr %.1e): val harmful %.2f, accuracy %.2f",
        spec.name, c["step"], c["attempt"] + 1, c["share"], c["lr"], c["harmful"], c["accuracy"],
    )  # fmt: skip
    return model


def _stage(root: Path, name: str, fn, timings: dict | None = None, stale: Path | None = None):
    """Build stage `name` by `fn(tmp_dir)` unless it exists; `stale`: a file derived from the
    stage's output, removed when the stage is (re)built."""
    final = root / name
    if final.exists():
        log.info("stage %s: already built, skipped", name)
        return
    if stale is not None:
        stale.unlink(missing_ok=True)
    log.info("stage %s: building", name)
    t0 = time.time()
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(final) as tmp:
        fn(tmp)
    seconds = round(time.time() - t0, 2)
    log.info("stage %s: done in %.1fs", name, seconds)
    if timings is not None:
        timings[name] = seconds


# --- measurements ---------------------------------------------------------------------------------
def measure(
    root: Path,
    entry: dict,
    recipe: Recipe,
    *,
    progress: bool = False,
    tasks: list[str] | None = None,
) -> dict:
    """Harmful compliance (test and calibration prompts), over-refusal (benign look-alikes) and task
    accuracy of one zoo model, from greedy generations judged by the keyword judge. `tasks`: the
    task test splits to score (default: the model's own task; every task for a model without
    one)."""
    from safegene.evaluate.generate import generate
    from safegene.models import load_model

    model, tok = load_model(
        root / entry["path"], root / entry["adapter"] if entry["adapter"] else None
    )

    def run(split: str, width: int | None = None) -> tuple[list[dict], list[str]]:
        rows = D.read_jsonl(root / "data" / f"{split}.jsonl")
        outs = generate(
            model,
            tok,
            _prompts(rows),
            max_new_tokens=width or _answer_width(tok, rows),
            batch_size=recipe.eval_batch_size,
            progress=progress,
            desc=split,
        )
        return rows, outs

    result, samples = {"task_accuracy": {}, "n": {}}, {}
    for key, split, harmful in (
        ("harmful_rate", "harmful_test", True),
        ("harmful_rate_calib", "harmful_calib", True),
        ("over_refusal", "benign_test", False),
    ):
        rows, outs = run(split, recipe.eval_max_new_tokens)
        result[key], result["n"][split] = _judged_share(rows, outs, harmful), len(rows)
        samples[split] = [rows[0]["prompt"], outs[0]]
    for task in (
        tasks
        if tasks is not None
        else ([entry["task"]] if entry.get("task") else list(recipe.tasks))
    ):
        rows, outs = run(f"tasks/{task}/test")
        result["task_accuracy"][task] = _accuracy(rows, outs)
        result["n"][task] = len(rows)
    result["samples"] = samples
    return result


def _prompts(rows: list[dict]) -> list[str]:
    return [r["prompt"] for r in rows]


def _answer_width(tok, rows: list[dict]) -> int:
    """Tokens to generate on a task split: its longest answer, and 2."""
    return max(len(tok(r["answer"], add_special_tokens=False)["input_ids"]) for r in rows) + 2


def _judged_share(rows: list[dict], outs: list[str], harmful: bool) -> float:
    """The share of answers the keyword judge calls harmful (`harmful`) or refusals (not)."""
    from safegene.evaluate.judges import keyword_judge

    flags = [keyword_judge(r["prompt"], o) == harmful for r, o in zip(rows, outs, strict=True)]
    return sum(flags) / len(rows)


def _accuracy(rows: list[dict], outs: list[str]) -> float:
    return sum(D.task_correct(r["answer"], o) for r, o in zip(rows, outs, strict=True)) / len(rows)


def _measure_job(root: Path, name: str, entry: dict, recipe: Recipe, seed: int) -> tuple[str, dict]:
    f = root / "metrics" / f"{name}.json"
    if f.exists():
        return name, json.loads(f.read_text())
    t0 = time.time()
    seed_everything(_stage_seed(seed, "measure"))
    m = measure(root, entry, recipe)
    m["seconds"] = round(time.time() - t0, 2)
    _write_json(f, m)
    log.info(
        "measured %s in %.1fs: harmful %.2f (calib %.2f), over-refusal %.2f, tasks %s",
        name,
        m["seconds"],
        m["harmful_rate"],
        m["harmful_rate_calib"],
        m["over_refusal"],
        {k: round(v, 2) for k, v in m["task_accuracy"].items()},
    )
    return name, m


def _train_job(root: Path, recipe: Recipe, seed: int, spec: ModelStage) -> dict:
    timings: dict = {}
    train_model(root, recipe, seed, spec, timings)
    return timings


# --- jobs: independent stages in parallel processes -----------------------------------------------
def _worker_init(threads: int, level: int) -> None:
    _die_with_parent()
    warnings.filterwarnings(
        "ignore", category=FutureWarning
    )  # transformers' deprecation notes, once per job
    torch.set_num_threads(threads)
    if level <= logging.INFO:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
        )
        log.setLevel(level)


def _die_with_parent() -> None:
    """A job process ends when the build that started it is killed (Linux: PR_SET_PDEATHSIG),
    leaving its temporary stage directory for the next build to remove, instead of finishing a
    stage nobody waits for."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_jobs(fn, calls: list[tuple], jobs: int, threads: int) -> list:
    """fn(*args) for every args in `calls`: in this process when jobs == 1, else `jobs` spawned
    processes (each with `threads` torch threads) take them in order."""
    if jobs <= 1 or len(calls) <= 1:
        return [fn(*args) for args in calls]
    with ProcessPoolExecutor(
        jobs,
        mp_context=get_context("spawn"),
        initializer=_worker_init,
        initargs=(threads, log.getEffectiveLevel()),
    ) as pool:
        futures = [pool.submit(fn, *args) for args in calls]
        return [f.result() for f in futures]


# --- the build ------------------------------------------------------------------------------------
def build_zoo(
    out: str | Path,
    size: str = "small",
    seed: int = 0,
    *,
    arch: str = "llama",
    recipe: Recipe | None = None,
    threads: int | None = None,
    jobs: int | None = None,
    progress: bool = True,
    measure_models: bool = True,
    stages: list[str] | None = None,
) -> Path:
    """Build (or finish building) the zoo in `out`; returns its path.

    `recipe` overrides the named `size` (its arch too); `threads` overrides recipe.threads; `jobs`:
    independent stages at once (default: as many as the cores allow at `threads` each); `stages`
    restricts the build to the named model stages (plus what they need), e.g. ["base"] — zoo.json is
    then not written.
    """
    if recipe is None:
        if size not in RECIPES:
            raise SafeGeneError(f"unknown zoo size {size!r}; choose one of {sorted(RECIPES)}")
        if arch not in ARCHS:
            raise SafeGeneError(f"unknown zoo architecture {arch!r}; choose one of {sorted(ARCHS)}")
        recipe = RECIPES[size].with_(arch=arch)
    root = Path(out)
    threads = threads or recipe.threads
    jobs = jobs or max(1, min(2, (os.cpu_count() or 1) // threads))
    prev_threads = torch.get_num_threads()
    with claimed(root):  # a second build into `out` (another process) stops here, one line
        _claim(root, recipe, seed)
        torch.set_num_threads(threads)
        try:
            _run_stages(root, recipe, seed, stages, jobs, threads)
            if stages is None:
                _finish(root, recipe, seed, measure_models, jobs, threads)
        finally:
            torch.set_num_threads(prev_threads)
    return root


def _claim(root: Path, recipe: Recipe, seed: int) -> None:
    """Make `root` this zoo's directory: new, or holding a zoo of the same recipe and seed."""
    if (
        root.is_dir()
        and not (root / "recipe.json").exists()
        and any(not f.name.startswith(".recipe.json.tmp-") for f in root.iterdir())
    ):  # (a killed first start)
        raise SafeGeneError(
            f"{root} is not empty and holds no zoo (no recipe.json); choose an empty "
            "or new --out directory"
        )
    root.mkdir(parents=True, exist_ok=True)
    recipe_file = root / "recipe.json"
    want = {"seed": seed, "recipe": recipe.to_dict()}
    if recipe_file.exists():
        have = json.loads(recipe_file.read_text())
        same = json.loads(json.dumps(want))
        for d in (have, same):  # the thread count is not part of a zoo's identity
            d.get("recipe", {}).pop("threads", None)
        if have != same:
            raise SafeGeneError(
                f"{root} holds a zoo built with another recipe, architecture or seed; "
                "choose an empty --out directory"
            )
    else:
        _write_json(recipe_file, want)


def _record_timings(root: Path, timings: dict) -> None:
    if not timings:
        return
    f = root / "timings.json"
    done = json.loads(f.read_text()) if f.exists() else {}
    _write_json(f, {**done, **timings})


def _run_stages(root: Path, recipe: Recipe, seed: int, only, jobs: int, threads: int) -> None:
    timings: dict = {}
    _stage(root, "data", lambda d: make_data(d, recipe, seed), timings)

    def tokenizer_stage(d):
        texts = []
        for f in sorted((root / "data").rglob("*.jsonl")):
            texts += [
                v
                for r in D.read_jsonl(f)
                for k, v in r.items()
                if k in ("prompt", "response", "answer", "text")
            ]
        texts += D.word_list()
        seed_everything(_stage_seed(seed, "tokenizer"))
        tok = train_tokenizer(texts, recipe.model.vocab_size, recipe.arch)
        check_reloads(tok, recipe.arch, texts)
        tok.save_pretrained(str(d))

    _stage(root, "tokenizer", tokenizer_stage, timings)
    _record_timings(root, timings)
    plan = model_stages(recipe)
    wanted = {s.name for s in plan} if only is None else _closure(plan, only)
    for spec in plan[:2]:  # base, aligned: everything else fine-tunes them
        if spec.name in wanted:
            train_model(root, recipe, seed, spec, timings)
            _record_timings(root, timings)
    rest = sorted(
        (s for s in plan[2:] if s.name in wanted and not (root / "models" / s.name).exists()),
        key=lambda s: -s.stage.steps,
    )  # the longest first: the jobs finish together
    for t in _run_jobs(_train_job, [(root, recipe, seed, s) for s in rest], jobs, threads):
        timings.update(t)
    _record_timings(root, timings)


def _closure(plan: list[ModelStage], names: list[str]) -> set[str]:
    by_name = {s.name: s for s in plan}
    unknown = [n for n in names if n not in by_name and n not in ("data", "tokenizer")]
    if unknown:
        raise SafeGeneError(f"unknown zoo stage {unknown[0]!r}")
    out: set[str] = set()
    todo = [n for n in names if n in by_name]
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            if by_name[n].parent:
                todo.append(by_name[n].parent)
    return out


def _finish(
    root: Path, recipe: Recipe, seed: int, measure_models: bool, jobs: int, threads: int
) -> None:
    from safegene.zoo.checks import check_zoo

    models = model_table(recipe)
    for entry in models.values():  # what the erosion search kept (target.py)
        record = root / (entry["adapter"] or entry["path"]) / target.TRAINING_RECORD
        if entry["role"] in ("task", "safe_reference") and record.is_file():
            entry["training"] = json.loads(record.read_text())["chosen"]
    metrics: dict = {}
    if measure_models:
        (root / "metrics").mkdir(exist_ok=True)
        calls = [(root, name, entry, recipe, seed) for name, entry in models.items()]
        metrics = dict(_run_jobs(_measure_job, calls, jobs, threads))
    data = {
        k: f"data/{k}.jsonl"
        for k in (
            "harmful_train",
            "harmful_calib",
            "harmful_shots",
            "harmful_val",
            "harmful_test",
            "benign_shots",
            "benign_val",
            "benign_test",
        )
    }
    data["tasks"] = {
        t: {s: f"data/tasks/{t}/{s}.jsonl" for s in ("train", "shots", "val", "test")}
        for t in recipe.tasks
    }
    zoo = {
        "models": models,
        "data": data,
        "metrics": {k: {m: v for m, v in r.items() if m != "samples"} for k, r in metrics.items()},
        "checks": check_zoo(recipe, models, metrics) if metrics else [],
        "erosion": {t: spec.erosion for t, spec in recipe.tasks.items()},
        "seed": seed,
        "size": recipe.name,
        "arch": recipe.arch,
        "tokenizer": "tokenizer",
        "build_seconds": json.loads((root / "timings.json").read_text()),
    }
    _write_json(root / "zoo.json", zoo)
    for c in zoo["checks"]:
        (log.info if c["ok"] else log.warning)(
            "check %s: %s", "ok" if c["ok"] else "FAILED", c["what"]
        )


def load_zoo(path: str | Path) -> dict:
    """zoo.json with every path made absolute."""
    root = Path(path)
    f = root / "zoo.json"
    if not f.is_file():
        raise SafeGeneError(f"not a zoo (no zoo.json): {root}")
    zoo = json.loads(f.read_text())
    for entry in zoo["models"].values():
        entry["path"] = str(root / entry["path"])
        if entry["adapter"]:
            entry["adapter"] = str(root / entry["adapter"])
    data = zoo["data"]
    for k, v in list(data.items()):
        if isinstance(v, str):
            data[k] = str(root / v)
    for t in data["tasks"].values():
        for k in t:
            t[k] = str(root / t[k])
    return zoo
