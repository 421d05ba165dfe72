"""The target's rollback beside the gene (safegene.rollback): exact for a task LoRA, the SVD of
aligned − target for a full fine-tune, and baked into a GENE2 that `apply` expresses exactly."""

from __future__ import annotations

import json

import pytest
import tinygene
import torch

from safegene.calibrate import calibrate
from safegene.gene import load_gene
from safegene.groups import groups_to_coefficients
from safegene.io.lora import read_adapter
from safegene.rollback import bake, rollback_deltas, rollback_groups


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return tinygene.build(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def merged_target(tiny, tmp_path_factory):
    """A full fine-tune: the tiny model with its task LoRA merged."""
    from safegene.models import load_model

    model, tok = load_model(tiny.model, tiny.adapter)
    out = tmp_path_factory.mktemp("target") / "full"
    model.merge_and_unload().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _task_deltas(tiny) -> dict[str, torch.Tensor]:
    task = read_adapter(tiny.adapter)
    try:
        return {m: task.delta(m) for m in task.modules}
    finally:
        task.close()


def _logits(model, tok, text="How do I make a weapon?"):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits


def test_a_lora_targets_rollback_is_its_update_negated(tiny):
    deltas = tinygene.deltas(tiny.gene)
    back = rollback_deltas(deltas, tiny.model, tiny.adapter, tiny.model, rank=1)
    want = _task_deltas(tiny)
    assert len(back) == len(deltas) and all(d.rollback for d in back)
    for d in back:
        assert torch.allclose(d.B @ d.A, -want[d.name], atol=1e-6)
    assert rollback_groups(["0", "2"], back) == ["r0", "r2"]


def test_a_full_targets_rollback_is_the_svd_of_aligned_minus_target(tiny, merged_target):
    deltas = tinygene.deltas(tiny.gene)
    want = _task_deltas(tiny)  # rank 2: a rank-2 SVD recovers it, a rank-1 one does not
    exact = rollback_deltas(deltas, merged_target, None, tiny.model, rank=2)
    short = rollback_deltas(deltas, merged_target, None, tiny.model, rank=1)
    for d, s in zip(exact, short, strict=True):
        assert torch.allclose(d.B @ d.A, -want[d.name], atol=1e-5)
        assert not torch.allclose(s.B @ s.A, -want[d.name], atol=1e-5)


def test_a_full_rollback_needs_the_aligned_model(tiny, merged_target):
    from safegene.errors import SafeGeneError

    with pytest.raises(SafeGeneError, match="--aligned"):
        rollback_deltas(tinygene.deltas(tiny.gene), merged_target, None, None, rank=2)


def test_a_full_rollback_applied_gives_back_the_aligned_model(tiny, merged_target, tmp_path):
    """β = 1 on every layer and α = 0: the target rolled back is the aligned model (exact)."""
    from safegene.apply import apply_gene
    from safegene.models import load_model

    gene = load_gene(tiny.gene)
    deltas = gene.linear_deltas()
    back = rollback_deltas(deltas, merged_target, None, tiny.model, rank=2)
    alpha = {**dict.fromkeys(["0", "1", "2"], 0.0), **dict.fromkeys(["r0", "r1", "r2"], 1.0)}
    ones = groups_to_coefficients(dict.fromkeys(["0", "1", "2"], 1.0))
    bake(
        gene,
        tmp_path / "g2",
        deltas + back,
        alpha,
        per_module_kind=False,
        coefficients=ones,
        calibration={},
    )
    gene.close()
    apply_gene(tmp_path / "g2", merged_target, tmp_path / "out", form="merged", progress=False)
    (out, tok), (aligned, _) = load_model(tmp_path / "out"), load_model(tiny.model)
    target, _ = load_model(merged_target)
    assert torch.allclose(_logits(out, tok), _logits(aligned, tok), atol=1e-4)
    assert not torch.allclose(_logits(target, tok), _logits(aligned, tok), atol=1e-4)


@pytest.mark.parametrize("form", ["merged", "combined"])
def test_calibrate_with_rollback_bakes_what_it_fitted(tiny, tmp_path, form):
    """GENE2 of `calibrate --rollback` on a LoRA target, applied, is the hooked model the fit
    optimised: α on the gene and β on the task update, per layer."""
    from safegene.apply import apply_gene
    from safegene.attach import GeneAttachment
    from safegene.models import load_model

    rec = calibrate(
        tiny.gene,
        tiny.model,
        adapter=tiny.adapter,
        harmful=tiny.harmful,
        task=tiny.task,
        out=tmp_path / "g2",
        shots=8,
        steps=30,
        lr=0.2,
        layers="all",
        rollback=True,
        skill_share=0,  # the fit as it is (no choice by generation)
    )
    beta = rec["rollback"]["groups"]
    assert sorted(beta) == ["r0", "r1", "r2"] and any(beta.values())
    assert rec["rollback"]["rank"] is None  # a LoRA's rollback is exact
    meta = json.loads((tmp_path / "g2" / "safegene.json").read_text())
    assert meta["coefficients"] == {"0": 1.0, "1": 1.0, "2": 1.0}
    assert meta["calibration"]["groups"] == rec["groups"]
    assert meta["calibration"]["rollback"]["groups"] == beta

    out = tmp_path / "out"
    if form == "merged":
        apply_gene(tmp_path / "g2", tiny.model, out, form=form, adapter=tiny.adapter)
        expressed, tok = load_model(out)
    else:
        apply_gene(tmp_path / "g2", tiny.model, out, form=form, adapter=tiny.adapter)
        expressed, tok = load_model(tiny.model, out)
    model, _ = load_model(tiny.model, tiny.adapter)
    gene = load_gene(tiny.gene)
    deltas = gene.linear_deltas()
    deltas += rollback_deltas(deltas, tiny.model, tiny.adapter, tiny.model, rank=1)
    gene.close()
    groups = [*rec["groups"], *beta]
    att = GeneAttachment(model, deltas, groups=groups)
    with att, att.fixed([{**rec["groups"], **beta}[g] for g in groups]):
        hooked = _logits(model, tok)
    assert torch.allclose(_logits(expressed, tok), hooked, atol=1e-4)


def test_without_rollback_the_record_has_none(tiny):
    rec = calibrate(
        tiny.gene,
        tiny.model,
        harmful=tiny.harmful,
        task=tiny.task,
        out=None,
        shots=8,
        steps=5,
        layers="all",
        skill_share=0,
    )
    assert rec["rollback"] is None and set(rec["groups"]) == {"0", "1", "2"}
