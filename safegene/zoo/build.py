"""Build the zoo: data → tokenizer → base → aligned → degraded → task models → measurements.

`build_zoo(out, size="small", seed=0)` runs the recipe of `recipe.py` and returns the zoo directory:

    DIR/zoo.json              models, data splits, measured metrics, seed (paths relative to DIR)
    DIR/recipe.json           the recipe that built it
    DIR/data/...              JSONL splits (harmful_train/test/shots, benign_test, tasks/T/{train,shots,test})
    DIR/tokenizer/            the BPE tokenizer with its chat template
    DIR/models/base|aligned|degraded|task-T/     LlamaForCausalLM directories (safetensors)
    DIR/models/task-T-lora/   PEFT LoRA adapters on models/aligned
    DIR/metrics/NAME.json     per-model measurements (cached: a rerun does not regenerate them)

Each stage writes into a temporary directory beside its final path and renames it when complete, so
an interrupted build leaves no half-written stage, and rerunning into the same DIR skips every
finished stage (same seed, same recipe: `recipe.json` must match).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from safegene.errors import SafeGeneError
from safegene.zoo import data as D
from safegene.zoo.recipe import RECIPES, Recipe
from safegene.zoo.train import encode_pairs, new_model, seed_everything, train, train_tokenizer

log = logging.getLogger("safegene.zoo")

STAGE_SEEDS = {"data": 1, "tokenizer": 2, "base": 3, "aligned": 4, "degraded": 5}


def _stage_seed(seed: int, name: str) -> int:
    if name in STAGE_SEEDS:
        return seed * 1000 + STAGE_SEEDS[name]
    return seed * 1000 + 100 + sum(ord(c) * (i + 1) for i, c in enumerate(name)) % 800


@contextmanager
def _atomic_dir(final: Path):
    """Yield a temporary directory beside `final`; rename it to `final` when the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed build
        if not _pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, final)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")  # build_zoo removes those of killed builds
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# --- stage: data --------------------------------------------------------------------------------
def _rows(examples, key="answer"):
    return [e.to_json(key) for e in examples]


def make_data(dest: Path, recipe: Recipe, seed: int) -> None:
    """All splits and stage mixtures as JSONL under `dest`."""
    D.check_texts()
    rng = random.Random(_stage_seed(seed, "data"))
    n = recipe.data
    w = lambda name, rows: D.write_jsonl(dest / name, rows)  # noqa: E731
    # evaluation and few-shot splits
    w("harmful_test.jsonl", [{"prompt": e.prompt} for e in D.harmful_examples(rng, n.harmful_test, "test", "none")])
    w("benign_test.jsonl", [{"prompt": e.prompt} for e in
                            D.benign_examples(rng, n.benign_test, "test", lookalike=True)])
    w("harmful_shots.jsonl", _rows(D.harmful_examples(rng, n.shots, "train", "refusal"), "response"))
    w("harmful_train.jsonl", _rows(D.harmful_examples(rng, n.aligned_harmful, "train", "refusal"), "response"))
    for task in recipe.tasks:
        w(f"tasks/{task}/train.jsonl", _rows(D.task_examples(task, rng, n.task_train, "train")))
        w(f"tasks/{task}/shots.jsonl", _rows(D.task_examples(task, rng, n.shots, "train")))
        w(f"tasks/{task}/test.jsonl", _rows(D.task_examples(task, rng, n.task_test, "test")))

    def general(k):
        return D.arith_facts(rng, k // 2) + D.review_writing(rng, k // 4) + D.plan_writing(rng, k - k // 2 - k // 4)

    # stage mixtures: (prompt, response)
    base = (D.harmful_examples(rng, n.base_harmful, "train", "compliance")
            + D.benign_examples(rng, n.base_benign // 2, "train", lookalike=False)
            + D.benign_examples(rng, n.base_benign - n.base_benign // 2, "train", lookalike=True)
            + general(n.base_general))
    aligned = ([D.Example(r["prompt"], r["response"]) for r in D.read_jsonl(dest / "harmful_train.jsonl")]
               + D.benign_examples(rng, n.aligned_benign // 2, "train", lookalike=False)
               + D.benign_examples(rng, n.aligned_benign - n.aligned_benign // 2, "train", lookalike=True)
               + general(n.aligned_general))
    degraded = D.harmful_examples(rng, n.degraded_harmful, "train", "compliance")
    for name, ex in (("base", base), ("aligned", aligned), ("degraded", degraded)):
        rng.shuffle(ex)
        w(f"stages/{name}.jsonl", _rows(ex, "response"))


# --- stages: models ----------------------------------------------------------------------------
def _pairs(path: Path, key: str) -> list[tuple[str, str]]:
    return [(r["prompt"], r[key]) for r in D.read_jsonl(path)]


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def _save(model, tokenizer, dest: Path) -> None:
    model.save_pretrained(str(dest), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(dest))


def _model_entry(path, adapter=None, task=None):
    return {"path": path, "adapter": adapter, "task": task}


def model_table(recipe: Recipe) -> dict:
    models = {"base": _model_entry("models/base"), "aligned": _model_entry("models/aligned"),
              "degraded": _model_entry("models/degraded")}
    for t in recipe.tasks:
        models[f"task-{t}"] = _model_entry(f"models/task-{t}", None, t)
        models[f"task-{t}-lora"] = _model_entry("models/aligned", f"models/task-{t}-lora", t)
    return models


# --- measurements ----------------------------------------------------------------------------------
def measure(root: Path, entry: dict, recipe: Recipe, *, progress: bool = False) -> dict:
    """Harmful compliance, over-refusal and per-task accuracy of one zoo model, from greedy
    generations on the test splits, judged by the keyword judge."""
    from safegene.evaluate.generate import generate
    from safegene.evaluate.judges import keyword_judge
    from safegene.models import load_model

    model, tok = load_model(root / entry["path"], root / entry["adapter"] if entry["adapter"] else None)
    gen = lambda prompts, k, desc: generate(model, tok, prompts, max_new_tokens=k,  # noqa: E731
                                            batch_size=recipe.eval_batch_size, progress=progress, desc=desc)
    harmful = [r["prompt"] for r in D.read_jsonl(root / "data/harmful_test.jsonl")]
    benign = [r["prompt"] for r in D.read_jsonl(root / "data/benign_test.jsonl")]
    k = recipe.eval_max_new_tokens
    h_out = gen(harmful, k, "harmful")
    b_out = gen(benign, k, "benign")
    result = {
        "harmful_rate": sum(keyword_judge(p, r) for p, r in zip(harmful, h_out)) / len(harmful),
        "over_refusal": sum(not keyword_judge(p, r) for p, r in zip(benign, b_out)) / len(benign),
        "task_accuracy": {},
        "n": {"harmful": len(harmful), "benign": len(benign)},
        "samples": {"harmful": [harmful[0], h_out[0]], "benign": [benign[0], b_out[0]]},
    }
    for task in recipe.tasks:
        rows = D.read_jsonl(root / f"data/tasks/{task}/test.jsonl")
        width = max(len(tok(r["answer"], add_special_tokens=False)["input_ids"]) for r in rows) + 2
        outs = gen([r["prompt"] for r in rows], width, task)
        result["task_accuracy"][task] = sum(D.task_correct(r["answer"], o) for r, o in zip(rows, outs)) / len(rows)
        result["n"][task] = len(rows)
    return result


# --- the build ------------------------------------------------------------------------------------
def build_zoo(out: str | Path, size: str = "small", seed: int = 0, *, recipe: Recipe | None = None,
              threads: int | None = None, progress: bool = True, measure_models: bool = True,
              stages: list[str] | None = None) -> Path:
    """Build (or finish building) the zoo in `out`; returns its path.

    `recipe` overrides the named `size`; `threads` overrides recipe.threads; `stages` restricts the
    build to the named stages (plus what they need), e.g. ["tokenizer", "base"] — zoo.json is then
    not written.
    """
    if recipe is None:
        if size not in RECIPES:
            raise SafeGeneError(f"unknown zoo size {size!r}; choose one of {sorted(RECIPES)}")
        recipe = RECIPES[size]
    root = Path(out)
    if root.is_dir() and not (root / "recipe.json").exists() and any(
            not f.name.startswith("recipe.json.tmp") for f in root.iterdir()):  # (a killed first start)
        raise SafeGeneError(f"{root} is not empty and holds no zoo (no recipe.json); choose an empty "
                            "or new --out directory")
    root.mkdir(parents=True, exist_ok=True)
    for stale in [*root.glob("*.json.tmp*"), *root.glob("metrics/*.json.tmp*")]:  # from killed builds
        if not _pid_alive(stale.name.rsplit("-", 1)[-1]):
            stale.unlink(missing_ok=True)
    recipe_file = root / "recipe.json"
    want = {"seed": seed, "recipe": recipe.to_dict()}
    if recipe_file.exists():
        have = json.loads(recipe_file.read_text())
        same = json.loads(json.dumps(want))
        for d in (have, same):  # the thread count is not part of a zoo's identity
            d.get("recipe", {}).pop("threads", None)
        if have != same:
            raise SafeGeneError(f"{root} holds a zoo built with another recipe or seed; "
                                "choose an empty --out directory")
    else:
        _write_json(recipe_file, want)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads or recipe.threads)
    timings: dict[str, float] = {}
    try:
        _run_stages(root, recipe, seed, timings, stages, progress)
        if stages is None:
            _finish(root, recipe, seed, timings, measure_models, progress)
    finally:
        torch.set_num_threads(prev_threads)
    return root


def _stage(root: Path, name: str, timings: dict, fn) -> None:
    final = root / name
    if final.exists():
        log.info("stage %s: already built, skipped", name)
        return
    log.info("stage %s: building", name)
    t0 = time.time()
    with _atomic_dir(final) as tmp:
        fn(tmp)
    timings[name] = round(time.time() - t0, 2)
    log.info("stage %s: done in %.1fs", name, timings[name])
    f = root / "timings.json"
    done = json.loads(f.read_text()) if f.exists() else {}
    done[name] = timings[name]
    _write_json(f, done)


def _run_stages(root: Path, recipe: Recipe, seed: int, timings: dict, only, progress: bool) -> None:
    from transformers import AutoTokenizer

    _stage(root, "data", timings, lambda d: make_data(d, recipe, seed))

    def tokenizer_stage(d):
        texts = []
        for name in ("base", "aligned", "degraded"):
            texts += [t for r in D.read_jsonl(root / f"data/stages/{name}.jsonl") for t in (r["prompt"], r["response"])]
        for task in recipe.tasks:
            texts += [t for r in D.read_jsonl(root / f"data/tasks/{task}/train.jsonl") for t in (r["prompt"], r["answer"])]
        seed_everything(_stage_seed(seed, "tokenizer"))
        train_tokenizer(texts, recipe.model.vocab_size).save_pretrained(str(d))

    _stage(root, "tokenizer", timings, tokenizer_stage)
    tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))

    def lm_stage(name, parent, data_file, key, stage):
        def fn(d):
            s = _stage_seed(seed, name)
            seed_everything(s)
            model = new_model(recipe.model, tok, s) if parent is None else _load(root / parent)
            enc = encode_pairs(tok, _pairs(root / data_file, key), prompt_loss=stage.prompt_loss)
            model = train(model, tok, enc, stage, seed=s, desc=name)
            _save(model, None if stage.lora_r else tok, d)
        return fn

    chain = [("base", None, "data/stages/base.jsonl", "response", recipe.base),
             ("aligned", "models/base", "data/stages/aligned.jsonl", "response", recipe.aligned),
             ("degraded", "models/aligned", "data/stages/degraded.jsonl", "response", recipe.degraded)]
    for t in recipe.tasks:
        chain.append((f"task-{t}", "models/aligned", f"data/tasks/{t}/train.jsonl", "answer", recipe.task_full[t]))
        chain.append((f"task-{t}-lora", "models/aligned", f"data/tasks/{t}/train.jsonl", "answer", recipe.task_lora[t]))
    closure: set[str] = set()

    def need(name):
        if name not in closure:
            closure.add(name)
            for dep in {"base": [], "aligned": ["base"]}.get(name, ["aligned"]):
                need(dep)

    for name in (only or [c[0] for c in chain]):
        if name not in ("data", "tokenizer"):
            need(name)
    for name, parent, data_file, key, stage in chain:
        if name not in closure:
            continue
        _stage(root, f"models/{name}", timings, lm_stage(name, parent, data_file, key, stage))


def _finish(root: Path, recipe: Recipe, seed: int, timings: dict, measure_models: bool, progress: bool) -> None:
    models = model_table(recipe)
    metrics = {}
    if measure_models:
        (root / "metrics").mkdir(exist_ok=True)
        for name, entry in models.items():
            f = root / "metrics" / f"{name}.json"
            if f.exists():
                metrics[name] = json.loads(f.read_text())
                continue
            t0 = time.time()
            seed_everything(_stage_seed(seed, "measure"))
            metrics[name] = measure(root, entry, recipe, progress=progress)
            metrics[name]["seconds"] = round(time.time() - t0, 2)
            _write_json(f, metrics[name])
            log.info("measured %s in %.1fs: harmful %.2f, over-refusal %.2f, tasks %s", name,
                     time.time() - t0, metrics[name]["harmful_rate"], metrics[name]["over_refusal"],
                     {k: round(v, 2) for k, v in metrics[name]["task_accuracy"].items()})
    data = {"harmful_train": "data/harmful_train.jsonl", "harmful_test": "data/harmful_test.jsonl",
            "benign_test": "data/benign_test.jsonl", "harmful_shots": "data/harmful_shots.jsonl",
            "tasks": {t: {s: f"data/tasks/{t}/{s}.jsonl" for s in ("train", "shots", "test")}
                      for t in recipe.tasks}}
    zoo = {"models": models, "data": data, "metrics": {k: {m: v for m, v in r.items() if m != "samples"}
                                                       for k, r in metrics.items()},
           "seed": seed, "size": recipe.name, "tokenizer": "tokenizer",
           "build_seconds": json.loads((root / "timings.json").read_text())}
    _write_json(root / "zoo.json", zoo)


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
