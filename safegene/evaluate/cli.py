"""The arguments of `safegene eval` and the call into the API (safegene/cli.py registers them)."""

from __future__ import annotations

import argparse
import warnings

from safegene.errors import SafeGeneWarning
from safegene.evaluate.data import MATCH_METHODS
from safegene.evaluate.judges import GUARD_FORMATS, JUDGES
from safegene.flags import argv_of

DESCRIPTION = (
    "Generate with a model (optionally with a PEFT LoRA adapter) on harmful prompts, benign "
    "look-alikes and task data; judge the harmful and benign answers with one or more judges "
    "(keyword, prefix, guard); score task answers (exact / normalised / numeric match); write "
    "report.json, samples.jsonl, report.md and safety_utility.png to --out. Rates come with n and "
    "a bootstrap 95% confidence interval. Data-parallel: --num-processes N on one machine, or "
    "`accelerate launch --multi_gpu --num_processes N -m safegene eval ...` (GPUs, nodes; on CPU "
    "too, with gloo); one merged report, the same as a single-process run."
)


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        required=True,
        help="a Hugging Face model directory or a cached Hub id (or, with --zoo, a zoo model "
        "name such as aligned)",
    )
    g.add_argument(
        "--revision", help="the Hub revision (branch, tag or commit) of a --model given as a Hub id"
    )
    g.add_argument("--adapter", help="a PEFT LoRA adapter directory on --model")
    g.add_argument(
        "--name",
        help="the model's name in the report (default: the directory name, or the Hub id; "
        "with --adapter, MODEL+ADAPTER)",
    )
    g.add_argument(
        "--template",
        metavar="FILE",
        help="a Jinja chat template, for a tokenizer without one (or to override it)",
    )
    g.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow *.bin/*.pt weights (loaded with weights_only=True)",
    )
    d = p.add_argument_group(
        'data (JSONL with "prompt" [+ "answer"], CSV, plain text, zoo split names, '
        "hf:owner/name[:split])"
    )
    d.add_argument(
        "--harmful", action="append", metavar="DATA", help="harmful prompts (repeatable)"
    )
    d.add_argument(
        "--benign", action="append", metavar="DATA", help="benign look-alike prompts (repeatable)"
    )
    d.add_argument(
        "--task", action="append", metavar="DATA", help="task prompts with answers (repeatable)"
    )
    d.add_argument(
        "--zoo",
        metavar="DIR",
        help="a zoo directory: data names like harmful_test, benign_test, "
        "task:<name>; with no data given, its test splits",
    )
    d.add_argument("--prompt-column", help="the prompt column/key (default: prompt)")
    d.add_argument(
        "--answer-column", help="the answer column/key of task data (default: answer, response)"
    )
    d.add_argument(
        "--match",
        choices=MATCH_METHODS,
        default="auto",
        help="task answer matching (auto: numeric when all answers are numbers, else normalised)",
    )
    d.add_argument(
        "--limit", type=int, metavar="N", help="use the first N prompts of each data set"
    )
    j = p.add_argument_group("judges")
    j.add_argument(
        "--judge",
        nargs="+",
        action="extend",
        metavar="NAME",
        help=f"judges, in order, the first is primary: {', '.join(JUDGES)} "
        "(default: keyword prefix)",
    )
    j.add_argument(
        "--guard-model",
        metavar="DIR",
        help="the guard judge's local model (Llama Guard 3, "
        "HarmBench classifier, or a sequence classifier)",
    )
    j.add_argument(
        "--guard-format",
        choices=GUARD_FORMATS,
        default="llamaguard3",
        help="the guard's prompt format (default: llamaguard3)",
    )
    gen = p.add_argument_group("generation")
    gen.add_argument(
        "--backend",
        choices=("transformers", "vllm"),
        default="transformers",
        help="transformers (default) or vllm (optional extra: pip install 'safegene[vllm]')",
    )
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--batch-size", type=int, default=32)
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed")
    c = p.add_argument_group("compute")
    c.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default auto)")
    c.add_argument("--dtype", default=None, help="float32|bf16|fp16 (default: the checkpoint's)")
    c.add_argument("--device-map", choices=("auto",), help="spread a model larger than one device")
    c.add_argument(
        "--num-processes",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes on this machine (as accelerate launch --num_processes N)",
    )
    r = p.add_argument_group("report")
    r.add_argument("--out", required=True, metavar="REPORT_DIR", help="the report directory")
    r.add_argument("--force", action="store_true", help="replace an existing --out")
    r.add_argument(
        "--card",
        action="store_true",
        help="also write the evaluation summary into the model card (README.md) of the evaluated "
        "SafeGene output: the --adapter directory, else the --model directory",
    )
    r.add_argument("--bootstrap", type=int, default=2000, metavar="B", help="bootstrap resamples")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument(
        "--no-hash-models",
        action="store_true",
        help="do not hash the model's weights into the report (faster for huge models)",
    )


def _child_argv(args) -> list[str]:
    """The same eval command, for a spawned rank: every option as parsed, but --num-processes."""
    parser = argparse.ArgumentParser(add_help=False)
    add_eval_arguments(parser)
    argv = ["eval", *argv_of(parser, args, skip={"num_processes"})]
    return argv + (["--debug"] if getattr(args, "debug", False) else [])


def run_eval_command(args) -> int:
    from safegene.errors import SafeGeneError
    from safegene.evaluate.generate import GenerationSettings
    from safegene.evaluate.judges import check_judge_names, make_judges
    from safegene.evaluate.parallel import current_dist, in_distributed_env, lone_launch, spawn
    from safegene.evaluate.run import (
        EvalSettings,
        load_template,
        resolve_device,
        resolve_inputs,
        run_eval,
    )
    from safegene.io import check_output_path
    from safegene.models import check_adapter_dir, check_model_dir

    judge_names = args.judge or ["keyword", "prefix"]
    check_judge_names(judge_names)
    if "guard" in judge_names and not args.guard_model:
        raise SafeGeneError(
            "the guard judge needs --guard-model DIR (a local Hugging Face guard model)"
        )
    template = load_template(args.template)
    gen = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        template=template,
    )
    settings = EvalSettings(
        generation=gen,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        allow_pickle=args.allow_pickle,
        n_boot=args.bootstrap,
        seed=args.seed,
        progress=not args.no_progress,
        hash_models=not args.no_hash_models,
        template_source=args.template,
    )
    spec, datasets = resolve_inputs(
        model=args.model,
        adapter=args.adapter,
        name=args.name,
        harmful=args.harmful,
        benign=args.benign,
        task=args.task,
        zoo=args.zoo,
        prompt_column=args.prompt_column,
        answer_column=args.answer_column,
        match=args.match,
        limit=args.limit,
    )
    check_model_dir(spec.path, allow_pickle=args.allow_pickle)
    if spec.adapter:
        check_adapter_dir(spec.adapter)
    if args.card:  # before any work: the card to update must be one SafeGene wrote
        from safegene.card import safegene_card

        safegene_card(spec.adapter or spec.path)
    if template is None:  # fail before loading weights or spawning processes
        from safegene.models import load_tokenizer

        if not getattr(load_tokenizer(spec.path), "chat_template", None):
            raise SafeGeneError(
                f"the tokenizer of {spec.path} has no chat template; pass --template FILE "
                "(a Jinja chat template)"
            )
    # the report must not replace or land inside the model, adapter or guard (inputs stay intact)
    data_files = [d.source for d in datasets]
    check_output_path(
        args.out,
        args.force,
        inputs=(spec.path, spec.adapter, args.guard_model, args.template, args.zoo, *data_files),
        claim=not in_distributed_env(),  # one claim per run: the launching process's, not a rank's
    )
    if args.num_processes < 1:
        raise SafeGeneError(f"--num-processes must be at least 1, got {args.num_processes}")
    if args.num_processes > 1 and not in_distributed_env():
        if args.backend == "vllm":
            raise SafeGeneError(
                "the vLLM backend runs in one process (it batches on its own); "
                "drop --num-processes or use --backend transformers"
            )
        if args.device_map:
            raise SafeGeneError("--device-map cannot be combined with --num-processes")
        import torch

        cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
        return spawn(_child_argv(args), args.num_processes, cpu=cpu)

    dist = current_dist(args.device)
    launcher = lone_launch()
    if launcher is not None:
        warnings.warn(
            f"started by {launcher} as one process (world size 1): evaluation is not split; for "
            "N processes use `accelerate launch --multi_gpu --num_processes N -m safegene eval "
            "...` (CPU too) or `safegene eval --num-processes N`",
            SafeGeneWarning,
            stacklevel=1,
        )
    judges = make_judges(
        judge_names,
        guard_model=args.guard_model,
        guard_format=args.guard_format,
        device=resolve_device(args.device, dist),
        dtype=args.dtype,
    )
    report = run_eval(spec, datasets, judges, settings, args.out, force=args.force, dist=dist)
    if report is not None and args.card:
        from safegene.card import add_evaluation

        print(f"card: {add_evaluation(spec.adapter or spec.path, report)}")
    if report is not None:
        for m in report["models"]:
            s = m["summary"]
            parts = []
            for key, label in (
                ("harmful_rate", "harmful"),
                ("over_refusal", "over-refusal"),
                ("task_accuracy", "task accuracy"),
            ):
                if s[key] is not None:
                    lo, hi = s[f"{key}_ci"]
                    parts.append(
                        f"{label} {100 * s[key]:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
                        f"(n={s[f'{key}_n']})"
                    )
            by_task = s.get("task_accuracy_by_task") or {}
            if len(by_task) > 1:  # one number per task, never pooled
                parts += [f"{t} {100 * r['rate']:.1f}% (n={r['n']})" for t, r in by_task.items()]
            print(f"{m['name']}: " + "; ".join(parts))
        print(f"report: {args.out}")
    return 0
