"""Layer selection: the hook mechanism is exact, attribution is the gradient, policies, storage;
on the micro zoo, the selected layers' δ measurably moves a degraded model toward refusing."""

from __future__ import annotations

import json

import pytest
import tinygene
import torch

from safegene.attach import GeneAttachment, encode_chat_pairs, pairs_loss
from safegene.errors import SafeGeneError
from safegene.models import load_model
from safegene.select import choose, combine, score_groups, select


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return tinygene.build(tmp_path_factory.mktemp("tiny"))


def _pairs(path, key):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["prompt"], r[key]) for r in rows]


def test_hooks_equal_stock_peft(tiny):
    from peft import PeftModel

    model, tok = load_model(tiny.model)
    ids = torch.tensor([tok("How do I bake a cake?")["input_ids"]])
    modules = tinygene.deltas(tiny.gene)
    att = GeneAttachment(model, modules)
    with att, att.fixed([1.0] * len(att.groups)):
        hooked = model(ids).logits
    with att, att.fixed([0.0] * len(att.groups)):
        plain = model(ids).logits
    stock = PeftModel.from_pretrained(load_model(tiny.model)[0], str(tiny.gene))(ids).logits
    assert torch.allclose(hooked, stock, atol=1e-5)
    assert not torch.allclose(plain, stock, atol=1e-3)


def test_hooks_on_unmerged_lora_target_equal_merged(tiny):
    """A PeftModel target (model + task LoRA) gets the gene exactly as its merged checkpoint
    does."""
    modules = tinygene.deltas(tiny.gene)
    peft_model, tok = load_model(tiny.model, tiny.adapter)
    merged = load_model(tiny.model, tiny.adapter)[0].merge_and_unload()
    ids = torch.tensor([tok("Tell me how to fix a bike.")["input_ids"]])
    alpha = [0.7, -0.2, 1.3]
    outs = []
    for m in (peft_model, merged):
        att = GeneAttachment(m, modules)
        with att, att.fixed(alpha):
            outs.append(m(ids).logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_attribution_is_the_gradient(tiny):
    model, tok = load_model(tiny.model)
    modules = tinygene.deltas(tiny.gene)
    harmful = _pairs(tiny.harmful, "response")[:4]
    scores = score_groups(
        model, tok, modules, harmful=harmful, method="attribution", per_module_kind=True
    )
    enc = encode_chat_pairs(tok, [p for p, _ in harmful], [t for _, t in harmful])
    att = GeneAttachment(model, modules, per_module_kind=True)
    eps = 1e-3
    with att, att.fixed():
        for i, g in enumerate(att.groups):
            v = torch.zeros(len(att.groups))
            v[i] = eps
            att.set(v)
            up = float(pairs_loss(model, enc))
            v[i] = -eps
            att.set(v)
            down = float(pairs_loss(model, enc))
            fd = (up - down) / (2 * eps)
            assert scores[g]["gain"] == pytest.approx(-fd, abs=2e-3 + 0.05 * abs(fd))


def test_ablation_agrees_in_sign_with_attribution_for_the_top_group(tiny):
    model, tok = load_model(tiny.model)
    modules = tinygene.deltas(tiny.gene)
    harmful = _pairs(tiny.harmful, "response")[:6]
    # a small gene (scaled down) keeps first order accurate at coefficient 1
    for g in modules:
        g.B = g.B * 0.05
    att_scores = score_groups(model, tok, modules, harmful=harmful, per_module_kind=False)
    abl_scores = score_groups(
        model, tok, modules, harmful=harmful, method="ablation", per_module_kind=False
    )
    top = max(
        (g for g in att_scores if not g.startswith("_")), key=lambda g: abs(att_scores[g]["gain"])
    )
    assert att_scores[top]["gain"] * abl_scores[top]["gain"] > 0


def test_interference_is_measured_not_extrapolated(tiny):
    """At a trained model's optimum the task loss has no gradient, so first-order interference would
    be 0 for every group; attribution measures it exactly (δ applied at 1), as ablation does."""
    model, tok = load_model(tiny.model)
    modules = tinygene.deltas(tiny.gene)
    harmful = _pairs(tiny.harmful, "response")[:4]
    task = _pairs(tiny.task, "answer")[:4]
    att_scores = score_groups(
        model, tok, modules, harmful=harmful, task=task, per_module_kind=False
    )
    abl_scores = score_groups(
        model, tok, modules, harmful=harmful, task=task, method="ablation", per_module_kind=False
    )
    enc = encode_chat_pairs(tok, [p for p, _ in task], [t for _, t in task])
    att = GeneAttachment(model, modules)
    with att, att.fixed():
        base = float(pairs_loss(model, enc))
        for i, g in enumerate(att.groups):
            att.set(torch.nn.functional.one_hot(torch.tensor(i), len(att.groups)).float())
            measured = float(pairs_loss(model, enc)) - base
            assert att_scores[g]["task"] == pytest.approx(measured, abs=1e-5)
            assert abl_scores[g]["task"] == pytest.approx(measured, abs=1e-5)
    assert any(abs(att_scores[g]["task"]) > 1e-3 for g in att.groups)


def _scores(**gains):
    return {
        g: {"gain": v, "interference": 0.0, "task": 0.0, "score": v, "n_params": 10}
        for g, v in gains.items()
    }


def test_policies():
    s = _scores(**{"0": 0.5, "1": -0.1, "2": 0.2, "3": 0.05})
    assert choose(s, top_k=2) == ["0", "2"]
    assert choose(s, top_k=4) == ["0", "2", "3"]  # a group that does not help is never kept
    assert choose(s, threshold=0.1) == ["0", "2"]
    assert choose(s) == ["0", "2", "3"]
    assert choose(s, budget=0.5) == ["0", "2"]
    assert choose(s, budget=0.25) == ["0"]
    with pytest.raises(SafeGeneError):
        choose(s, top_k=9)
    with pytest.raises(SafeGeneError):
        choose(s, threshold=1.0)
    with pytest.raises(SafeGeneError):
        choose(s, top_k=1, budget=0.5)


def test_select_stores_scores_and_selection(tiny, tmp_path):
    before = tinygene.tree(tiny.gene)
    rec = select(tiny.gene, tiny.model, harmful=tiny.harmful, top_k=2, out=tmp_path / "g")
    assert rec["groups"] == ["0", "2"]  # the two layers whose δ lowers the refusal loss (tinygene)
    assert tinygene.tree(tiny.gene) == before  # the input gene is untouched when --out is given
    meta = json.loads((tmp_path / "g" / "safegene.json").read_text())
    assert meta["selection"] == [0, 2] and meta["selection_info"]["groups"] == rec["groups"]
    assert set(meta["scores"]["layers"]) == {"0", "1", "2"}
    assert len(meta["scores"]["module_kinds"]) == 6
    assert len(meta["selection_info"]["data"]["harmful"]["sha256"]) == 64
    # per-layer scores are the sums of the per-module-kind ones (attribution is linear)
    for layer, s in meta["scores"]["layers"].items():
        parts = [
            v["gain"] for g, v in meta["scores"]["module_kinds"].items() if g.split(".")[0] == layer
        ]
        assert s["gain"] == pytest.approx(sum(parts), abs=1e-6)
    # the gene's factors travel unchanged
    assert (tmp_path / "g" / "adapter_model.safetensors").read_bytes() == (
        tiny.gene / "adapter_model.safetensors"
    ).read_bytes()


def test_select_with_benign_and_task_in_place(tiny, tmp_path):
    import shutil

    gene = tmp_path / "g"
    shutil.copytree(tiny.gene, gene)
    rec = select(
        gene,
        tiny.model,
        harmful=tiny.harmful,
        benign=tiny.benign,
        task=tiny.task,
        per_module_kind=True,
        budget=1.0,
    )
    meta = json.loads((gene / "safegene.json").read_text())
    assert all("." in g for g in rec["groups"])
    assert set(meta["selection"]) <= {"attn", "mlp"}
    for kind in ("harmful", "benign", "task"):
        assert len(meta["selection_info"]["data"][kind]["sha256"]) == 64
    s = meta["scores"]["module_kinds"]
    for g in rec["groups"]:
        assert s[g]["gain"] > 0 and s[g]["score"] > 0


@pytest.mark.parametrize("across", ["best", "mean"])
def test_select_across_models_combines_their_scores(tiny, tmp_path, across):
    """Scored on two models (the model, and the model under a LoRA adapter), each layer's scores
    are those of the model where it scores higher (`best`) or the mean of both (`mean`), and the
    record names both."""
    kw = dict(harmful=tiny.harmful, benign=tiny.benign, task=tiny.task)
    select(tiny.gene, tiny.model, out=tmp_path / "a", **kw)
    select(tiny.gene, tiny.model, adapter=tiny.adapter, out=tmp_path / "b", **kw)
    rec = select(
        tiny.gene, tiny.model, also=[(tiny.model, tiny.adapter, tiny.task)], out=tmp_path / "ab",
        across=across, **kw,
    )  # fmt: skip

    def layers(d):
        return json.loads((tmp_path / d / "safegene.json").read_text())["scores"]["layers"]

    a, b, ab = layers("a"), layers("b"), layers("ab")
    assert a != b  # the adapter changes the scores, so the combination is a real test
    for layer, s in ab.items():
        for k in ("gain", "interference", "task", "score"):
            if across == "mean":
                want = (a[layer][k] + b[layer][k]) / 2
            else:
                want = max(a[layer], b[layer], key=lambda x: x["score"])[k]
            assert s[k] == pytest.approx(want, abs=1e-6)
    assert rec["groups"] == [g for g, s in ab.items() if s["gain"] > 0 and s["score"] > 0]
    assert rec["settings"]["across"] == across
    assert rec["model"]["adapter"] is None and rec["also"][0]["model"]["adapter"] == str(
        tiny.adapter
    )


def test_best_keeps_a_layer_that_one_eroded_model_gains_from():
    """Two weakly eroded models at their refusal optimum (every gain below zero) outvote an eroded
    one in the mean; `best` keeps the layer the eroded one gains from."""

    def run(g0, g1):
        return {
            "0": {"gain": g0, "interference": 0.0, "task": 0.0, "score": g0, "n_params": 4},
            "1": {"gain": g1, "interference": 0.0, "task": 0.0, "score": g1, "n_params": 4},
        }

    runs = [run(0.02, 0.04), run(-0.05, 0.01), run(-0.06, 0.03)]
    assert choose(combine(runs, "mean")) == ["1"]
    assert choose(combine(runs, "best")) == ["0", "1"]
    assert combine(runs, "best")["0"] == runs[0]["0"]
    assert combine(runs[:1], "mean") is runs[0]


def test_an_unknown_way_of_combining_models_is_refused(tiny, tmp_path):
    with pytest.raises(SafeGeneError, match="unknown --across 'max'"):
        select(tiny.gene, tiny.model, harmful=tiny.harmful, out=tmp_path / "x", across="max")
    assert not (tmp_path / "x").exists()


# --- on the micro zoo: a real gene, a real degradation --------------------------------------------


@pytest.fixture(scope="module")
def zoo(request, tmp_path_factory):
    root = tinygene.micro_zoo(request)
    return root, tinygene.zoo_gene(root, tmp_path_factory.mktemp("zoo-gene") / "gene")


def test_selection_on_the_micro_zoo_picks_the_layer_whose_delta_helps(zoo, tmp_path):
    root, gene = zoo
    model_dir, _ = tinygene.zoo_model(root, "task-howto")
    rec = select(
        gene, model_dir, harmful=root / "data" / "harmful_shots.jsonl", top_k=1, out=tmp_path / "g"
    )
    layers = json.loads((tmp_path / "g" / "safegene.json").read_text())["scores"]["layers"]
    top = max(layers, key=lambda g: layers[g]["score"])
    bottom = min(layers, key=lambda g: layers[g]["score"])
    assert rec["groups"] == [top] and top != bottom

    # exactly: each layer's δ alone, refusal loss on held-out harmful prompts — at coefficient
    # 0.25 for the first-order pick (its score is the loss's slope at 0), at 1 for the exact one
    model, tok = load_model(model_dir)
    held_out = [
        (r["prompt"], r["response"])
        for r in tinygene.rows(root / "data" / "harmful_train.jsonl")[:48]
    ]
    enc = encode_chat_pairs(tok, [p for p, _ in held_out], [t for _, t in held_out])
    shots = tinygene.rows(root / "data" / "harmful_shots.jsonl")
    enc_shots = encode_chat_pairs(tok, [r["prompt"] for r in shots], [r["response"] for r in shots])
    att = GeneAttachment(model, tinygene.deltas(gene))
    with att, att.fixed(), torch.no_grad():
        base = float(pairs_loss(model, enc))
        loss, small, on_shots = {}, {}, {}
        for i, g in enumerate(att.groups):
            one = torch.nn.functional.one_hot(torch.tensor(i), len(att.groups)).float()
            att.set(one)
            loss[g] = float(pairs_loss(model, enc))
            on_shots[g] = float(pairs_loss(model, enc_shots))
            att.set(0.25 * one)
            small[g] = float(pairs_loss(model, enc))
    assert small[top] < base  # the first-order pick measurably helps on held-out prompts
    # the exact method's pick is the layer whose δ alone lowers the shots' refusal loss most, and
    # it helps on held-out prompts too (whether more than the first-order pick there is the
    # family's draw: on one micro family it did, on another not)
    exact = select(
        gene,
        model_dir,
        harmful=root / "data" / "harmful_shots.jsonl",
        top_k=1,
        method="ablation",
        out=tmp_path / "g-ablation",
    )
    assert exact["groups"] == [min(on_shots, key=on_shots.get)]
    assert loss[exact["groups"][0]] < base

    # each method's pick gains under its own measure (attribution: the slope at 0; ablation: the
    # layer at coefficient 1 — on the micro zoo the first-order pick overshoots there, which is
    # what method="ablation" is for)
    abl = score_groups(
        model,
        tok,
        tinygene.deltas(gene),
        harmful=held_out,
        method="ablation",
        per_module_kind=False,
    )
    assert layers[top]["gain"] > 0 and abl[exact["groups"][0]]["gain"] > 0
