"""Settings as data: how `select` scores and keeps layers, how `calibrate` fits, and the compute
both run on.

Each is a frozen dataclass validated when it is made (`__post_init__` raises SafeGeneError naming
the flag). A field's metadata holds its help text; `safegene.flags` derives the command-line
flags from the fields (`--name-with-dashes`, the field's type and default, the help), and the
record a gene keeps of a run is `dataclasses.asdict` of the settings it ran with. Nothing here
imports torch, so `--help` can show the defaults at once.

    select(gene, model, harmful=..., settings=SelectSettings(top_k=2))   # or, the same:
    select(gene, model, harmful=..., top_k=2)                             # fields as keywords
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from safegene.errors import SafeGeneError

SCORING_METHODS = ("attribution", "ablation")
ACROSS_MODELS = ("best", "mean")  # how `select` combines the scores of several models


def option(default, help: str, **flag):
    """A settings field: its default and help text, plus argparse extras (`choices`, `metavar`,
    `exclusive`: the name of a group of flags of which at most one may be given)."""
    return field(default=default, metadata={"help": help, **flag})


def _at_least(settings, name: str, low: int, *, optional: bool = False) -> None:
    value = getattr(settings, name)
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        flag = "--" + name.replace("_", "-")
        raise SafeGeneError(f"{flag} must be at least {low} (got {value})")


def _finite(settings, *names: str, optional: bool = True) -> None:
    for name in names:
        value = getattr(settings, name)
        if optional and value is None:
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SafeGeneError(f"--{name.replace('_', '-')} must be a finite number (got {value})")


@dataclass(frozen=True)
class ComputeSettings:
    """Where and how the model runs (select, calibrate)."""

    device: str = option("cpu", "cpu, cuda, cuda:1 ...")
    dtype: str | None = option(
        None, "float32|bf16|fp16 (default: the checkpoint's; coefficients stay float32)"
    )
    batch_size: int = option(32, "examples per forward pass")
    max_new_tokens: int = option(
        48, "tokens of a generated reference response (refusal targets, kept responses)"
    )

    def __post_init__(self):
        _at_least(self, "batch_size", 1)
        _at_least(self, "max_new_tokens", 1)


def check_method(method: str) -> None:
    if method not in SCORING_METHODS:
        raise SafeGeneError(
            f"unknown method {method!r}; choose one of {', '.join(SCORING_METHODS)}"
        )


def check_policy(top_k: int | None, threshold: float | None, budget: float | None) -> None:
    """At most one selection policy; a budget is a fraction in (0, 1]."""
    if sum(x is not None for x in (top_k, threshold, budget)) > 1:
        raise SafeGeneError("choose one selection policy: --top-k, --threshold or --budget")
    if budget is not None and not 0 < budget <= 1:
        raise SafeGeneError(
            f"--budget is a fraction of the gene's parameters in (0, 1] (got {budget})"
        )


@dataclass(frozen=True)
class SelectSettings:
    """How `select` scores the gene's layers and which it keeps (one policy, or every layer with
    a positive score)."""

    method: str = option(
        "attribution",
        "attribution: the safety gain to first order (one backward pass), the interference "
        "measured (one forward pass per layer); ablation: the gain measured too",
        choices=SCORING_METHODS,
    )
    top_k: int | None = option(None, "keep the K best layers", exclusive="policy", metavar="K")
    threshold: float | None = option(
        None, "keep layers with score >= T (loss units)", exclusive="policy", metavar="T"
    )
    budget: float | None = option(
        None,
        "keep the best layers within this fraction of the gene's parameters",
        exclusive="policy",
    )
    per_module_kind: bool = option(
        False, "select (layer, attention|MLP) groups instead of whole layers"
    )
    examples: int | None = option(32, "at most this many prompts per data set", metavar="N")
    seed: int = option(0, "seed of the prompts drawn")
    across: str = option(
        "best",
        "scored on several models: best — a layer's score on the model where it scores highest "
        "(kept if its safety transfers to any of them); mean — its mean over them",
        choices=ACROSS_MODELS,
    )

    def __post_init__(self):
        check_method(self.method)
        if self.across not in ACROSS_MODELS:
            raise SafeGeneError(
                f"unknown --across {self.across!r}; choose one of {', '.join(ACROSS_MODELS)}"
            )
        check_policy(self.top_k, self.threshold, self.budget)
        _at_least(self, "examples", 1, optional=True)
        _finite(self, "threshold")


@dataclass(frozen=True)
class FitSettings:
    """How `calibrate` fits α: Adam on α only, full batch, early stopping, seeded."""

    shots: int = option(16, "K examples of each kind", metavar="K")
    lam: float = option(0.01, "L2 penalty on the coefficients")
    steps: int = option(150, "Adam steps (early stopping)")
    lr: float = option(0.05, "Adam's learning rate on the coefficients")
    patience: int = option(25, "stop after this many steps without a lower loss")
    init: float = option(0.0, "the coefficients' starting value")
    task_weight: float = option(1.0, "weight of the task loss in the objective")
    refusal_tokens: int | None = option(
        None, "fit the refusal loss on the first N response tokens only", metavar="N"
    )
    task_tokens: int | None = option(
        None, "fit the task loss on the first N answer tokens only", metavar="N"
    )
    task_margin: float | None = option(
        None, "hinge: each task example may lose up to this many nats per token, free"
    )
    refusal_floor: float | None = option(
        None, "hinge: a refusal whose loss is at most this needs no further push"
    )
    per_module_kind: bool = option(
        False, "one coefficient per (layer, attention|MLP) instead of per layer"
    )
    rollback: bool = option(
        False,
        "also fit, per layer, a coefficient on the target's own update rolled back toward the "
        "aligned model (aligned - target: per-layer interpolation beside the gene)",
    )
    rollback_rank: int = option(
        4, "rank of a full fine-tune's rollback per Linear (a task LoRA's is exact)"
    )
    seed: int = option(0, "seed of the shots drawn and of the fit")
    skill_share: float | None = option(
        0.95,
        "after the fit, try the fitted α scaled (0 to 3x) and the uniform gene (0.5 to 1.5) by "
        "generation on the held-out task and harmful shots and the benign prompts (or the "
        "--check-* sets), and keep the least harmful that keeps this share of the target's task "
        "accuracy (0: keep the fit as it is)",
    )
    over_refusal_margin: float = option(
        0.05,
        "the choice also keeps the over-refusal on the benign prompts given (--benign) within "
        "this margin of the aligned model's, or of the target's where that is higher",
    )
    floor_se: float = option(
        1.0,
        "the choice holds the floors by this many standard errors of the check rates where a "
        "candidate can (0: at the floor; one picked at its edge breaks it on new prompts about "
        "half the time)",
        metavar="Z",
    )

    def __post_init__(self):
        _at_least(self, "shots", 1)
        _at_least(self, "steps", 1)
        if not (math.isfinite(self.lr) and self.lr > 0) or not (
            math.isfinite(self.lam) and self.lam >= 0
        ):
            raise SafeGeneError(
                f"--lr must be a positive number and --lam a non-negative one "
                f"(got {self.lr}, {self.lam})"
            )
        _at_least(self, "patience", 1)
        _at_least(self, "rollback_rank", 1)
        _at_least(self, "refusal_tokens", 1, optional=True)
        _at_least(self, "task_tokens", 1, optional=True)
        _finite(self, "init", "task_weight", "task_margin", "refusal_floor")
        if self.skill_share is not None and not 0 <= self.skill_share <= 1:
            raise SafeGeneError(f"--skill-share must lie in [0, 1] (got {self.skill_share})")
        if not (
            isinstance(self.over_refusal_margin, (int, float))
            and 0 <= self.over_refusal_margin <= 1
        ):
            raise SafeGeneError(
                f"--over-refusal-margin must lie in [0, 1] (got {self.over_refusal_margin})"
            )
        _finite(self, "floor_se", optional=False)
        if self.floor_se < 0:
            raise SafeGeneError(f"--floor-se must be at least 0 (got {self.floor_se})")


SELECT_COMPUTE = ComputeSettings(batch_size=16)  # select's default batch (calibrate: 32)
DEGRADE_COMPUTE = ComputeSettings(batch_size=8)  # degrade: examples per optimizer step


def with_overrides(overrides: dict, *settings):
    """`settings` with the fields named in `overrides` replaced (each name goes to the settings
    object that has that field); TypeError for a name none of them has."""
    unknown = set(overrides) - {f.name for s in settings for f in dataclasses.fields(s)}
    if unknown:
        raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
    return tuple(
        dataclasses.replace(
            s, **{f.name: overrides[f.name] for f in dataclasses.fields(s) if f.name in overrides}
        )
        for s in settings
    )


@dataclass(frozen=True)
class DegradeSettings:
    """How `degrade` fine-tunes an aligned model on harmful prompts with compliance targets."""

    steps: int = option(60, "optimizer steps")
    lr: float = option(1e-4, "AdamW's learning rate (full fine-tune; try 1e-3 with --lora)")
    examples: int | None = option(
        None, "use N harmful examples (default: all given, or 256 of the zoo's)", metavar="N"
    )
    max_length: int = option(256, "truncate each prompt + target to this many tokens")
    lora: bool = option(False, "train a LoRA (then merged) instead of every weight")
    lora_rank: int = option(16, "the LoRA's rank (--lora)")
    lora_alpha: float = option(32.0, "the LoRA's alpha (--lora)")
    seed: int = option(0, "seed of the examples drawn, their order and the LoRA's init")

    def __post_init__(self):
        _at_least(self, "steps", 1)
        _at_least(self, "examples", 1, optional=True)
        _at_least(self, "max_length", 2)
        _at_least(self, "lora_rank", 1)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SafeGeneError(f"--lr must be a positive number (got {self.lr})")
        _finite(self, "lora_alpha")
