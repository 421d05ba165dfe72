"""SafeGene as a method of `compare`: extract → select → calibrate → express, and its ablations.

For one setting of its grid on one task model: the gene of that rank (extracted once per
comparison, under the report's genes/), selected and calibrated on the task model with the
recipe's few-shot data only (harmful_shots, the task's shots), expressed as stock PEFT (an
adapter on a full fine-tune, or task LoRA + gene combined in one adapter). With `ablations`, three
more rows: `gene-uniform` (no selection, α = 1), `gene-select` (the selection, α = 1) and
`gene-calibrate` (calibration over every layer, no selection). The `rollback` setting adds the
target's per-layer rollback to the calibration (safegene.rollback), in the method and in
`gene-calibrate`.
The method against its paper, beside the baselines: docs/baselines.md, section "SafeGene".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from safegene.methods import Param, Run, Variant, register_method

if TYPE_CHECKING:
    from safegene.recipe import TaskSpec


def express(gene: Path, task: TaskSpec, out: Path, coefficients=None) -> tuple[Path, Path]:
    """The gene on the task model as stock PEFT: an adapter on a full fine-tune, or one adapter
    combining the task LoRA and the gene (rank concatenation) on the aligned model; a gene whose
    coefficients are all 0 (calibration kept the target as it is) is the task model itself."""
    from safegene.apply import apply_gene, resolve_coefficients
    from safegene.gene import opened

    with opened(gene) as g:
        if not resolve_coefficients(g, coefficients):  # calibrated to nothing: the target itself
            return task.model, task.adapter
    form = "combined" if task.adapter else "adapter"
    apply_gene(
        gene,
        task.model,
        out,
        form=form,
        adapter=task.adapter,
        coefficients=coefficients,
        progress=False,
    )
    return task.model, out


def gene_of_rank(run: Run, rank: int) -> Path:
    """The comparison's gene of `rank` (aligned − mean(degraded)), extracted on first use."""
    from safegene.gene import extract

    r, out = run.recipe, run.keep / f"gene-r{rank}"
    if not out.exists():
        extract(r.aligned, r.degraded, out, rank=rank, device=r.device, seed=r.seed, progress=False)
    return out


# How hard calibration fits (settings.FitSettings fields): `default` is calibrate's own defaults;
# `strong` lets α travel far (no L2 penalty, a larger step, twice the steps) — what a target whose
# task update itself carries the erosion needs (small zoo arith: 99 % → 44 % harmful on validation,
# where `default` stays at 99 %), and what over-fits a mildly eroded one (email: over-refusal 97 %).
# A study chooses between them on validation.
FIT_PRESETS = {
    "default": {},
    "strong": {"lr": 0.3, "lam": 0.0, "steps": 300},
}


def _check_fit(value: str) -> str | None:
    return None if value in FIT_PRESETS else f"unknown fit preset; choose from {list(FIT_PRESETS)}"


@register_method(
    "safegene",
    params={
        "rank": Param(int, [1]),
        "shots": Param(int, [16]),
        "top_k": Param(int, []),
        "fit": Param(str, [], check=_check_fit),
        "rollback": Param(bool, []),
        "ablations": Param(bool, [True]),
    },
    demo={"rank": [1], "shots": [16], "ablations": [True]},
    yields_variants=True,
)
def variants(run: Run, task: TaskSpec, setting: dict) -> Iterator[Variant]:
    """SafeGene's row for one setting (and, with `ablations`, its three ablations' rows); the
    selected and calibrated genes are kept under `run.keep`."""
    from safegene.calibrate import calibrate
    from safegene.select import select

    r, s = run.recipe, setting
    gene = gene_of_rank(run, s["rank"])
    shown = {k: v for k, v in s.items() if k != "ablations"}
    fit, back = s.get("fit", "default"), s.get("rollback", False)
    tag = f"{task.name}-r{s['rank']}-k{s['shots']}" + (f"-top{s['top_k']}" if "top_k" in s else "")
    data = dict(harmful=r.harmful_shots, task=task.shots, aligned=r.aligned, adapter=task.adapter)
    data.update(seed=r.seed, device=r.device, dtype=r.dtype)
    # where the recipe has validation splits, calibration chooses its coefficients on them (as
    # every method's setting is chosen), not on the few held-out shots
    checks = (
        dict(check_harmful=r.harmful_val, check_benign=r.benign_val, check_task=task.val)
        if r.validation
        else {}
    )

    def selected() -> Path:
        """Scored on the recipe's `select_on` task models (combined by `across`), else the target;
        one selection serves every fit preset of the tag."""
        first, *more = r.select_on or [task]
        also = [(t.model, t.adapter, t.shots) for t in more]
        kw = {**data, "adapter": first.adapter, "task": first.shots, "also": also}
        return run.once(
            run.keep / f"{tag}-selected",
            lambda out: select(gene, first.model, top_k=s.get("top_k"), out=out, **kw),
        )

    def calibrated(d: Path, source=selected, suffix: str = "", **kw) -> tuple[Path, Path]:
        preset = ("" if fit == "default" else f"-{fit}") + ("-rollback" if back else "")
        fitted = run.once(  # once per setting, whichever of its rows asks first
            run.keep / f"{tag}{preset}-calibrated{suffix}",
            lambda out: calibrate(
                source(),
                task.model,
                shots=s["shots"],
                rollback=back,
                out=out,
                benign=r.benign_shots,  # None: no helpfulness check (select gets none)
                **checks,
                **kw,
                **FIT_PRESETS[fit],
                **data,
            ),
        )
        return express(fitted, task, d)

    def all_layers(d: Path) -> tuple[Path, Path]:
        """gene-calibrate: every layer calibrated. Where the selection kept every layer, that is
        SafeGene's own calibration (the same groups, shots, seed and checks give the same α), so
        its gene is expressed instead of being fitted a second time."""
        if keeps_every_layer(selected()):
            return calibrated(d)
        return calibrated(d, lambda: gene, "-all-layers", layers="all")

    yield Variant("safegene", shown, calibrated)
    if s["ablations"] and fit == "default" and not back:  # the uncalibrated ablations: once
        yield Variant("gene-uniform", shown, lambda d: express(gene, task, d, coefficients=1.0))
        yield Variant(
            "gene-select", shown, lambda d: express(selected(), task, d, coefficients=1.0)
        )
    if s["ablations"]:
        yield Variant(
            "gene-calibrate",
            shown,
            all_layers,
        )


def keeps_every_layer(gene: Path) -> bool:
    """Whether the gene's selection is every one of its layers, whole (not per module kind)."""
    from safegene.gene import opened
    from safegene.groups import selection_to_groups

    with opened(gene) as g:
        return set(selection_to_groups(g.selection) or ()) == {str(layer) for layer in g.layers()}
