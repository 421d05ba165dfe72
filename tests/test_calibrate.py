"""Few-shot calibration: α only is trained, the fit lowers its objective, is deterministic for a seed,
works on full and unmerged-LoRA targets; on the micro zoo it restores refusals of a task model."""

from __future__ import annotations

import json

import pytest
import torch

from safegene.calibrate import calibrate

import tinygene


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    t = tinygene.build(tmp_path_factory.mktemp("tiny"))
    t.selected = tinygene.with_selection(t, t.root / "gene-selected", groups=("0", "2"))
    return t


def _fit(tiny, out=None, **kw):
    kw.setdefault("steps", 40)
    return calibrate(tiny.selected, tiny.model, harmful=tiny.harmful, task=tiny.task, out=out, shots=8, **kw)


def test_fit_lowers_the_objective_and_writes_gene2(tiny, tmp_path):
    rec = _fit(tiny, out=tmp_path / "g2")
    assert list(rec["groups"]) == ["0", "2"]
    fit = rec["fit"]
    assert fit["loss_final"]["total"] < fit["loss_initial"]["total"]
    assert fit["loss_final"]["refuse"] < fit["loss_initial"]["refuse"]
    meta = json.loads((tmp_path / "g2" / "safegene.json").read_text())
    assert meta["coefficients"] == rec["groups"]  # the gene's schema: {"<layer>": α}
    c = meta["calibration"]
    assert c["data"]["harmful"]["n"] == 8 and len(c["data"]["task"]["sha256"]) == 64
    assert meta["selection"] == [0, 2]  # the selection travels on
    from safegene.gene import load_gene

    g = load_gene(tmp_path / "g2")  # the gene API reads what calibrate wrote
    assert g.coefficient(1, "attn") == 0.0 and g.coefficient(0, "mlp") == rec["groups"]["0"]
    g.close()


def test_deterministic_for_a_seed(tiny):
    a, b = _fit(tiny, seed=3), _fit(tiny, seed=3)
    assert a["groups"] == b["groups"]
    c = _fit(tiny, seed=4)  # other shots
    assert c["data"]["harmful"]["sha256"] != a["data"]["harmful"]["sha256"]


def test_lora_target_and_per_module_kind(tiny):
    rec = calibrate(tiny.selected, tiny.model, adapter=tiny.adapter, harmful=tiny.harmful, task=tiny.task,
                    out=None, shots=8, steps=40, per_module_kind=True)
    assert set(rec["groups"]) == {"0.attn", "0.mlp", "2.attn", "2.mlp"}
    assert all(torch.isfinite(torch.tensor(v)) for v in rec["groups"].values())
    assert any(v != 0 for v in rec["groups"].values())
    assert rec["fit"]["loss_final"]["refuse"] < rec["fit"]["loss_initial"]["refuse"]
    assert set(rec["coefficients"]) == {"attn", "mlp"} and set(rec["coefficients"]["mlp"]) == {"0", "2"}


def test_all_layers_without_selection(tiny):
    rec = calibrate(tiny.gene, tiny.model, harmful=tiny.harmful, task=tiny.task, out=None, shots=4,
                    steps=10, layers="all")
    assert list(rec["groups"]) == ["0", "1", "2"]


def test_model_stays_frozen(tiny):
    from safegene.models import load_model

    model, tok = load_model(tiny.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibrate(tiny.selected, tiny.model, harmful=tiny.harmful, task=tiny.task, out=None, shots=4, steps=10,
              model=model, tokenizer=tok)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters())


def test_apply_expresses_exactly_the_calibrated_model(tiny, tmp_path):
    """`apply --as merged` of GENE2 gives the model calibration optimised (hooks with the same α)."""
    from safegene.apply import apply_gene
    from safegene.attach import GeneAttachment, read_gene_modules
    from safegene.models import load_model

    rec = _fit(tiny, out=tmp_path / "g2", per_module_kind=True)
    apply_gene(tmp_path / "g2", tiny.model, tmp_path / "merged", form="merged", progress=False)
    merged, tok = load_model(tmp_path / "merged")
    model, _ = load_model(tiny.model)
    groups = list(rec["groups"])
    att = GeneAttachment(model, read_gene_modules(tiny.gene), per_module_kind=True, groups=groups)
    ids = torch.tensor([tok("How do I make a weapon?")["input_ids"]])
    with att, att.fixed([rec["groups"][g] for g in groups]):
        hooked = model(ids).logits
    assert torch.allclose(merged(ids).logits, hooked, atol=1e-4)
