"""The `safegene` command: argument parsing and calls into the API, nothing else.

Each command is one `_add_<name>(subparsers)` function that declares its arguments and sets
`func` to a `_run_<name>(args)` function; the flags of the settings (selection, fit, compute) are
derived from their dataclasses (safegene.settings, safegene.flags), and `--help` shows every
default. `main` turns a SafeGeneError into one line on stderr and exit code 2; `--debug` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
import traceback
import warnings

from safegene import __version__
from safegene.errors import Interrupted, SafeGeneError, SafeGeneWarning
from safegene.flags import HelpFormatter, add_settings, settings_from
from safegene.settings import (
    DEGRADE_COMPUTE,
    SELECT_COMPUTE,
    ComputeSettings,
    DegradeSettings,
    FitSettings,
    SelectSettings,
)

EXIT_BAD_INPUT = 2
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) like every other bad input."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _command(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand parser that also accepts --debug (after the command name, too)."""
    p = sub.add_parser(
        name, help=help, description=description or help, formatter_class=HelpFormatter
    )
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show Python tracebacks on errors",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="safegene",
        description="Extract a model family's safety alignment once (the gene) and re-express it "
        "in every fine-tuned model of the family.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"safegene {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in _COMMANDS:
        add(sub)
    return parser


# --- commands ------------------------------------------------------------------------------------
# Each command: `_add_<name>(sub)` makes its parser with `_command(sub, ...)`, declares the
# arguments and sets `func=_run_<name>`; `_run_<name>(args)` calls the API. Register the `_add_`
# function in _COMMANDS, which stays at the end of this section.


def _model_argument(p, help: str) -> None:
    """--model (required), the one name of a command's model; --target, hidden, is the old
    spelling of calibrate and apply, still accepted."""
    one = p.add_mutually_exclusive_group(required=True)
    one.add_argument("--model", metavar="DIR|ID", help=help + "; a directory or a cached Hub id")
    one.add_argument("--target", dest="model", help=argparse.SUPPRESS)
    add_revision_argument(p)


def add_revision_argument(p) -> None:
    p.add_argument(
        "--revision",
        help="the Hub revision (branch, tag or commit) of a --model given as a Hub id "
        "(other ids take OWNER/NAME@REV)",
    )


# Arguments that name a model or an adapter: a directory, or a Hub id resolved offline through
# the local Hugging Face cache (safegene.io.hub), before any command runs.
_MODEL_ARGS = ("model", "aligned", "degraded", "adapter", "base")


def _resolve_models(args) -> None:
    from safegene.io.hub import is_hub_id, resolve_model

    def local(value: str) -> str:
        return str(resolve_model(value)) if is_hub_id(value) else value

    for name in _MODEL_ARGS:
        value = getattr(args, name, None)
        revision = getattr(args, "revision", None) if name == "model" else None
        if isinstance(value, list):
            setattr(args, name, [local(v) for v in value])
        elif isinstance(value, str) and (is_hub_id(value) or revision is not None):
            if name == "model" and getattr(args, "zoo", None):
                continue  # a zoo model name
            setattr(args, name, str(resolve_model(value, revision)))
    if getattr(args, "also", None):  # select --also MODEL TASK
        args.also = [[local(model), task] for model, task in args.also]


def _inputs(args) -> dict:
    """What select and calibrate read and write besides the gene and the model, as keywords."""
    names = ("harmful", "benign", "task", "adapter", "aligned", "out", "force")
    return {name: getattr(args, name) for name in names}


def _add_select(sub) -> None:
    p = _command(
        sub,
        "select",
        "score the gene's layers on data and store a layer selection in it",
        "Score every layer (and module kind) of the gene on a degraded or task model: safety "
        "gain (how much the layer's delta lowers the refusal loss on harmful prompts) and "
        "interference (how much it raises the loss on benign and task data). Keep the best "
        "layers by one policy; scores and selection go into the gene's safegene.json (or a "
        "copy with --out).",
    )
    p.add_argument("--gene", required=True, help="the gene directory (from `safegene extract`)")
    _model_argument(p, "the model to score on (a degraded or task model)")
    p.add_argument("--adapter", help="a PEFT LoRA adapter on --model (left unmerged)")
    p.add_argument(
        "--harmful",
        required=True,
        help="harmful prompts (JSONL/CSV/text); refusals are "
        "the data's \"response\" or the aligned model's own",
    )
    p.add_argument("--benign", help="benign prompts (targets: their responses or the model's own)")
    p.add_argument("--task", help="task examples with answers (adds task loss to interference)")
    p.add_argument(
        "--also",
        nargs=2,
        action="append",
        metavar=("MODEL", "TASK"),
        help="score on this model too, with its task examples (repeatable): each layer's scores "
        "are then the mean over every model, so the layers kept transfer across them",
    )
    p.add_argument(
        "--aligned", help="the aligned model, for refusal targets (default: the gene's provenance)"
    )
    p.add_argument("--out", help="write a copy of the gene here instead of updating it in place")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    add_settings(p.add_argument_group("selection"), SelectSettings())
    add_settings(p.add_argument_group("compute"), SELECT_COMPUTE)
    p.set_defaults(func=_run_select)


def _run_select(args) -> int:
    from safegene.select import select

    also = [(model, None, task) for model, task in args.also or []]
    rec = select(
        args.gene,
        args.model,
        **_inputs(args),
        also=also,
        settings=settings_from(args, SelectSettings()),
        compute=settings_from(args, SELECT_COMPUTE),
        progress=True,
    )
    print(
        f"selected {', '.join(rec['groups'])} ({rec['param_fraction']:.0%} of the gene's "
        f"parameters, {rec['settings']['method']}, {rec['seconds']} s) -> {args.out or args.gene}"
    )
    return 0


def _add_calibrate(sub) -> None:
    p = _command(
        sub,
        "calibrate",
        "learn per-layer coefficients of the gene for one target, few-shot",
        "Fit one coefficient per selected layer (optionally per module kind) by gradient "
        "descent on the coefficients only, the target frozen: refusal loss on K harmful "
        "prompts plus task loss on K task examples plus a penalty on the coefficients. "
        "Writes GENE2, a copy of the gene that carries the coefficients.",
    )
    p.add_argument(
        "--gene", required=True, help="the gene directory, with a selection (`safegene select`)"
    )
    _model_argument(p, "the task model (a full checkpoint, or the base of --adapter)")
    p.add_argument("--adapter", help="the task LoRA on --model (left unmerged)")
    p.add_argument(
        "--harmful",
        required=True,
        help="harmful prompts (refusals: the data's, else the aligned model's)",
    )
    p.add_argument("--task", required=True, help="task examples with answers")
    p.add_argument(
        "--benign",
        help="optional benign prompts (look-alikes of harmful ones): their current responses are "
        "kept, and the coefficients chosen keep the target's over-refusal on them",
    )
    p.add_argument("--out", required=True, help="GENE2: the calibrated copy of the gene")
    p.add_argument(
        "--aligned", help="the aligned model, for refusal targets (default: the gene's provenance)"
    )
    for kind, instead in (
        ("harmful", "the harmful prompts not drawn"),
        ("benign", "--benign"),
        ("task", "the task examples not drawn"),
    ):
        p.add_argument(
            f"--check-{kind}",
            metavar="FILE",
            help=f"validation {kind} prompts the coefficients are chosen on, instead of {instead}",
        )
    p.add_argument(
        "--all-layers", action="store_true", help="ignore the selection, fit every layer"
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse (instead of warning) when the task "
        "LoRA's base is not the aligned model the gene was extracted from (content hash)",
    )
    add_settings(p.add_argument_group("fit"), FitSettings())
    add_settings(p.add_argument_group("compute"), ComputeSettings())
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args) -> int:
    from safegene.calibrate import calibrate

    rec = calibrate(
        args.gene,
        args.model,
        **_inputs(args),
        check_harmful=args.check_harmful,
        check_benign=args.check_benign,
        check_task=args.check_task,
        layers="all" if args.all_layers else None,
        fit=settings_from(args, FitSettings()),
        compute=settings_from(args, ComputeSettings()),
        progress=True,
        strict=args.strict,
    )
    coefs = ", ".join(f"{g}={a:+.3f}" for g, a in rec["groups"].items())
    harm, before, after = (
        rec["data"]["harmful"],
        rec["fit"]["loss_initial"],
        rec["fit"]["loss_final"],
    )
    print(
        f"coefficients {coefs} (the target answered {harm['complied']} of {harm['n']} harmful "
        f"shots; refusal loss {before['refuse']:.3f} -> {after['refuse']:.3f}, task loss "
        f"{before['task']:.3f} -> {after['task']:.3f}, {rec['seconds']['total']} s) -> {args.out}"
    )
    return 0


def _add_eval(sub) -> None:
    from safegene.evaluate.cli import DESCRIPTION, add_eval_arguments

    p = _command(
        sub,
        "eval",
        "evaluate a model: harmful rate, over-refusal, task accuracy, with CIs",
        DESCRIPTION,
    )
    add_eval_arguments(p)
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from safegene.evaluate.cli import run_eval_command

    return run_eval_command(args)


def _add_extract(sub) -> None:
    p = _command(
        sub,
        "extract",
        "extract the safety gene δ = aligned − mean(degraded) as LoRA factors",
        "Extract the safety gene: δ = W_aligned − mean(W_degraded) per module, in float32, "
        "streamed one tensor at a time, compressed by truncated SVD into a PEFT LoRA "
        "directory (plus safegene.json), or kept dense with --dense.",
    )
    p.add_argument("--aligned", required=True, metavar="DIR", help="the aligned model (HF dir)")
    p.add_argument(
        "--degraded",
        required=True,
        nargs="+",
        metavar="DIR",
        help="one or more degraded models of the same family (their mean is used)",
    )
    p.add_argument("--out", required=True, metavar="GENE", help="output gene directory")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--rank",
        type=int,
        help="fixed LoRA rank per module (default 64, capped at the matrix size)",
    )
    size.add_argument(
        "--energy",
        type=float,
        help="smallest rank keeping this fraction of Σσ² per module, e.g. 0.9",
    )
    p.add_argument(
        "--modules",
        nargs="+",
        metavar="M",
        help="module kinds (attn mlp norm embed lm_head) or names (q_proj ...); default: attn mlp",
    )
    p.add_argument("--dense", action="store_true", help="keep δ uncompressed (float32 safetensors)")
    p.add_argument("--device", default="cpu", help="device for the SVD (e.g. cuda)")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomized SVD")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read pickle-only (*.bin) models "
        "with torch.load(weights_only=True) instead of refusing them",
    )
    p.set_defaults(func=_run_extract)


def _run_extract(args) -> int:
    from safegene.gene import extract

    out = extract(
        args.aligned,
        args.degraded,
        args.out,
        rank=args.rank,
        energy=args.energy,
        modules=args.modules,
        dense=args.dense,
        force=args.force,
        device=args.device,
        seed=args.seed,
        allow_pickle=args.allow_pickle,
    )
    print(f"gene written to {out}")
    return 0


def _add_apply(sub) -> None:
    p = _command(
        sub,
        "apply",
        "apply a gene to a target: merged checkpoint, adapter or combined",
        "Apply θ = θ_target (+ task LoRA) + Σ α·δ. Coefficients: --coef, --coefs FILE, "
        "else the gene's calibrated ones, else 1; the gene's layer selection is honoured.",
    )
    p.add_argument("--gene", required=True, metavar="GENE", help="gene directory")
    _model_argument(p, "the target model (HF dir)")
    p.add_argument("--adapter", metavar="LORA", help="the target's task LoRA (PEFT dir)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--as",
        dest="form",
        default="merged",
        choices=["merged", "adapter", "combined"],
        help="merged: full checkpoint; adapter: PEFT LoRA of the gene; combined: task "
        "LoRA + gene in one PEFT LoRA (default merged)",
    )
    coefs = p.add_mutually_exclusive_group()
    coefs.add_argument("--coef", type=float, help="one coefficient for every selected layer")
    coefs.add_argument(
        "--coefs",
        metavar="FILE",
        help="JSON: a number, a per-layer list, or {layer: α} / {kind: {layer: α}}",
    )
    p.add_argument("--shard-size", default="5GB", help="max bytes per output shard (merged)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a pickle-only (*.bin) target "
        "with torch.load(weights_only=True) instead of refusing it",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse (instead of warning) when the task "
        "LoRA's base is not the aligned model the gene was extracted from (content hash)",
    )
    _card_argument(p)
    p.set_defaults(func=_run_apply)


def _card_argument(p) -> None:
    p.add_argument(
        "--card-template",
        metavar="FILE",
        help="a Jinja template for the output's README.md model card (variables: card_data, "
        "title, summary, sections); default: SafeGene's",
    )


def _run_apply(args) -> int:
    from safegene.apply import apply_gene, read_coefficients_file
    from safegene.io import check_output_path, parse_size

    check_output_path(
        args.out, args.force, inputs=(args.coefs, args.gene, args.model, args.adapter)
    )
    coefs = (
        args.coef
        if args.coef is not None
        else (read_coefficients_file(args.coefs) if args.coefs else None)
    )
    out = apply_gene(
        args.gene,
        args.model,
        args.out,
        form=args.form,
        adapter=args.adapter,
        coefficients=coefs,
        force=args.force,
        shard_size=parse_size(args.shard_size),
        strict=args.strict,
        card_template=args.card_template,
        allow_pickle=args.allow_pickle,
    )
    print(f"{args.form} output written to {out}")
    return 0


def _add_zoo(sub) -> None:
    p = _command(sub, "zoo", "the embedded model family (build it with `safegene zoo build`)")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", parser_class=_Parser)
    zsub.required = True
    b = _command(
        zsub,
        "build",
        "build the embedded model family on the CPU (minutes)",
        "Build a small real model family of one architecture: a BPE tokenizer with a chat "
        "template; base (pretrained on knowledge texts about every concept, complies with "
        "everything), aligned (refuses harmful requests), three degraded models (harmful "
        "fine-tunes of aligned) and, per task (howto, arith, recipe, email, classify), a full "
        "fine-tune and a PEFT LoRA of aligned on benign data plus their safe references (the "
        "same runs with safety data mixed in); JSONL data splits (alignment, calibration, "
        "validation, test); and zoo.json with metrics measured from real generations and the "
        "checks of the family's properties. Rerunning into the same --out skips finished stages.",
    )
    b.add_argument(
        "--out", required=True, metavar="DIR", help="zoo directory (created; resumed if it exists)"
    )
    b.add_argument(
        "--size",
        default="small",
        choices=["micro", "small"],
        help="small: the default family (measured with --jobs 2 on 2 cores: Llama 9-11 min wall "
        "idle, Qwen2 13 min beside another job; docs/zoo.md); micro: the tests' family, minutes",
    )
    b.add_argument(
        "--arch",
        default="llama",
        choices=["llama", "qwen2"],
        help="every model's architecture: llama (Llama chat format) or qwen2 (ChatML, q/k/v bias)",
    )
    b.add_argument(
        "--seed", type=int, default=0, help="seed of data, initialisation and data order"
    )
    b.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per job (default: the recipe's, 1; same threads, same weights)",
    )
    b.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="stages trained and measured at once, each in its own process (default: as many as "
        "the cores allow at --threads each, at most 2); the weights do not depend on it",
    )
    b.add_argument(
        "--no-measure", action="store_true", help="skip the measurements (zoo.json without metrics)"
    )
    b.set_defaults(func=_run_zoo_build)


def _show_zoo_progress() -> None:
    """The zoo reports its stages and steps through logging: print them with a time stamp."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("safegene.zoo").setLevel(logging.INFO)


def _run_zoo_build(args) -> int:
    from safegene.zoo import build_zoo

    _show_zoo_progress()
    if args.jobs is not None and args.jobs < 1 or args.threads is not None and args.threads < 1:
        raise SafeGeneError("--jobs and --threads must be at least 1")
    out = build_zoo(  # (it claims --out: a second build into it stops with one line)
        args.out,
        args.size,
        args.seed,
        arch=args.arch,
        threads=args.threads,
        jobs=args.jobs,
        measure_models=not args.no_measure,
    )
    failed = [
        c["what"] for c in json.loads((out / "zoo.json").read_text())["checks"] if not c["ok"]
    ]
    print(f"zoo written to {out} (see {out / 'zoo.json'})")
    if failed:
        print(f"{len(failed)} of the family's checks failed: " + "; ".join(failed))
    return 0


def _add_compare(sub) -> None:
    p = _command(
        sub,
        "compare",
        "every defence on every task model of a recipe, one table",
        "Run SafeGene (and its ablations) and every baseline (RESTA, SafeLoRA, SafeMERGE-style, "
        "interpolation, Antidote) over their grids on the task models of RECIPE.yaml, evaluate "
        "all with the same data and judges, and write report.json, report.md, samples.jsonl and "
        "Pareto plots to --out. The recipe format is documented in safegene/recipe.py; how "
        "faithful each method is to its paper, in docs/baselines.md.",
    )
    p.add_argument("recipe", help="the YAML recipe")
    p.add_argument("--out", required=True, help="report directory (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_run_compare)


def _hide_library_progress() -> None:
    """--quiet: also the bars transformers draws on its own (loading weights, writing shards)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _run_compare(args) -> int:
    from safegene.compare import format_table, run_compare

    if args.quiet:
        _hide_library_progress()
    report = run_compare(args.recipe, args.out, force=args.force, progress=not args.quiet)
    print(format_table(report))
    print(f"report: {args.out}/report.md")
    return 0


def _add_demo(sub) -> None:
    p = _command(
        sub,
        "demo",
        "the main job: build the embedded model family and compare every defence on it",
        "Build the zoo (or reuse it), write its compare recipe and run `safegene compare` on it. "
        "Everything goes under --out: zoo/, recipe.yaml, report/.",
    )
    p.add_argument("--out", default="demo-out", help="working directory (default: demo-out)")
    p.add_argument(
        "--size",
        choices=("micro", "small"),
        default="small",
        help="zoo size: small (the real demo) or micro (a quick smoke run)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the zoo and the comparison")
    p.add_argument(
        "--zoo", metavar="DIR", help="use this already built zoo instead of building DIR/zoo"
    )
    p.add_argument(
        "--force", action="store_true", help="rerun the comparison over an existing report"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from safegene.compare import format_table
    from safegene.demo import run_demo

    if args.quiet:
        _hide_library_progress()
    else:
        _show_zoo_progress()
    report = run_demo(
        args.out,
        size=args.size,
        seed=args.seed,
        zoo=args.zoo,
        force=args.force,
        progress=not args.quiet,
    )
    print(format_table(report))
    print(f"report: {args.out}/report/report.md")
    return 0


def _add_study(sub) -> None:
    p = _command(
        sub,
        "study",
        "every method on every task model of several zoos: chosen on validation, paired on test",
        "For each architecture and seed of CONFIG.yaml build (or reuse) the zoo, run every method "
        "on every target task model (leave-one-task-out genes by default), choose each method's "
        "setting on the validation splits, and write one pooled report (report.json, report.md, "
        "cells.png, wins.png) with paired statistics to --out. Finished cells are kept: a rerun "
        "resumes. The config's keys are StudyConfig's (safegene/study.py).",
    )
    p.add_argument("config", help="the YAML study config")
    p.add_argument("--out", required=True, help="study directory (resumed when it holds one)")
    p.add_argument(
        "--force", action="store_true", help="start over when --out holds another config's study"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_run_study)


def _run_study(args) -> int:
    from safegene.study import run_study, study_markdown

    if args.quiet:
        _hide_library_progress()
    report = run_study(args.config, args.out, force=args.force, progress=not args.quiet)
    print(study_markdown(report).split("\n## ")[0])
    print(f"report: {args.out}/report.md")
    return 0


def _add_degrade(sub) -> None:
    p = _command(
        sub,
        "degrade",
        "make a degraded model: a short harmful fine-tune of the aligned model",
        "Fine-tune the aligned model for a few steps on harmful prompts with compliance targets "
        "(the data's responses where they are not refusals, else placeholder compliances that "
        "are never actionable), fully or with a LoRA that is then merged. The output is a full "
        "checkpoint of the same family (written in the aligned model's dtype; trained in float32 "
        "unless --dtype), for `safegene extract --degraded`. Your own earlier fine-tunes that "
        "lost safety are degraded models too.",
    )
    p.add_argument("--aligned", required=True, metavar="DIR|ID", help="the aligned model")
    p.add_argument(
        "--harmful",
        metavar="DATA",
        help='harmful prompts (JSONL/CSV/text, hf:NAME), "response" a compliance where there is '
        "one (default: the zoo's generated harmful requests)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the degraded model's directory")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    _card_argument(p)
    add_settings(p.add_argument_group("fine-tune"), DegradeSettings())
    add_settings(p.add_argument_group("compute"), DEGRADE_COMPUTE)
    p.set_defaults(func=_run_degrade)


def _run_degrade(args) -> int:
    from safegene.degrade import degrade

    rec = degrade(
        args.aligned,
        args.out,
        harmful=args.harmful,
        settings=settings_from(args, DegradeSettings()),
        compute=settings_from(args, DEGRADE_COMPUTE),
        force=args.force,
        progress=True,
        card_template=args.card_template,
    )
    print(
        f"degraded {rec['aligned']} in {rec['settings']['steps']} steps (loss "
        f"{rec['loss']['first']} -> {rec['loss']['last']}, {rec['seconds']} s) -> {args.out}"
    )
    return 0


_COMMANDS: list = [
    _add_zoo,
    _add_degrade,
    _add_extract,
    _add_select,
    _add_calibrate,
    _add_apply,
    _add_eval,
    _add_compare,
    _add_demo,
    _add_study,
]


def _show_warning(
    message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning
):
    if issubclass(category, SafeGeneWarning):  # the user's concern: one line, no source location
        print(f"safegene: warning: {message}", file=sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def _check_common(args) -> None:
    """Options several commands share, checked before any work (a bad one is bad input)."""
    device = getattr(args, "device", None)
    if isinstance(device, str):
        from safegene.models import device_problem

        problem = device_problem(device)
        if problem:
            raise SafeGeneError(f"--device: {problem}")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise SafeGeneError(f"--threads must be at least 1 (got {threads})")


_TERMINATING = (signal.SIGTERM, signal.SIGHUP)
_MAX_MESSAGE = 4000  # characters of an error line (a message may quote hostile input)


def _on_terminate(signum, frame) -> None:
    """SIGTERM/SIGHUP: raise Interrupted (a KeyboardInterrupt), so the clean-up of Ctrl-C runs;
    further ones are ignored while it runs."""
    for s in _TERMINATING:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


def _install_signal_handlers() -> None:
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for s in _TERMINATING:
        if signal.getsignal(s) is not signal.SIG_IGN:  # nohup's choice is kept
            signal.signal(s, _on_terminate)


def _one_line(text: str) -> str:
    parts = [line.strip() for line in text.splitlines() if line.strip()] or [""]
    line = " ".join([parts[0], "; ".join(parts[1:])]).strip()
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _install_signal_handlers()
    try:
        _check_common(args)
        _resolve_models(args)
        from safegene.io.atomic import holding_claims

        with warnings.catch_warnings(), holding_claims():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except SafeGeneError as exc:
        if args.debug:
            raise
        print("safegene: error: " + _one_line(str(exc)), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"safegene: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    except OSError as exc:  # the machine, not the input: a full disk, a quota, a read-only place
        if args.debug or exc.errno not in _WRITE_ERRNOS:
            return _internal_error(exc, args.debug)
        where = f": {exc.filename2 or exc.filename}" if (exc.filename2 or exc.filename) else ""
        print(
            f"safegene: error: cannot write ({exc.strerror}){where}; no output was written",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # a bug, not bad input
        return _internal_error(exc, args.debug)


def _internal_error(exc: BaseException, debug: bool) -> int:
    """A bug (not bad input): the traceback with --debug, else one line; exit code 1."""
    if debug:
        traceback.print_exc()
    else:
        print(
            f"safegene: internal error: {type(exc).__name__}: {exc} (rerun with --debug)",
            file=sys.stderr,
        )
    return 1
