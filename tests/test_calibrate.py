"""Few-shot calibration: α only is trained, the fit lowers its objective, is deterministic for a
seed, works on full and unmerged-LoRA targets; on the micro zoo it restores refusals of a task
model."""

from __future__ import annotations

import json

import pytest
import tinygene
import torch

from safegene.calibrate import calibrate

# the alignment's own harmful prompts: what the micro aligned model was trained to refuse (its share
# of the calibration split it answers is a property of the family's draw: 16 % of the micro zoo's at
# stop 32's data, 25 % at stop 33's)
REFUSED = "harmful_train.jsonl"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    t = tinygene.build(tmp_path_factory.mktemp("tiny"))
    t.selected = tinygene.with_selection(t, t.root / "gene-selected", groups=("0", "2"))
    return t


def _fit(tiny, out=None, **kw):
    kw.setdefault("steps", 40)
    return calibrate(
        tiny.selected, tiny.model, harmful=tiny.harmful, task=tiny.task, out=out, shots=8, **kw
    )


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
    a, b = _fit(tiny, seed=3, steps=15), _fit(tiny, seed=3, steps=15)
    assert a["groups"] == b["groups"] and a["fit"]["loss_curve"] == b["fit"]["loss_curve"]
    c = _fit(tiny, seed=4, steps=1)  # other shots
    assert c["data"]["harmful"]["sha256"] != a["data"]["harmful"]["sha256"]


def test_lora_target_and_per_module_kind(tiny):
    rec = calibrate(
        tiny.selected,
        tiny.model,
        adapter=tiny.adapter,
        harmful=tiny.harmful,
        task=tiny.task,
        out=None,
        shots=8,
        steps=40,
        per_module_kind=True,
    )
    assert set(rec["groups"]) == {"0.attn", "0.mlp", "2.attn", "2.mlp"}
    assert all(torch.isfinite(torch.tensor(v)) for v in rec["groups"].values())
    assert any(v != 0 for v in rec["groups"].values())
    assert rec["fit"]["loss_final"]["refuse"] < rec["fit"]["loss_initial"]["refuse"]
    assert set(rec["coefficients"]) == {"attn", "mlp"} and set(rec["coefficients"]["mlp"]) == {
        "0",
        "2",
    }


def test_all_layers_without_selection(tiny):
    rec = calibrate(
        tiny.gene,
        tiny.model,
        harmful=tiny.harmful,
        task=tiny.task,
        out=None,
        shots=4,
        steps=10,
        layers="all",
    )
    assert list(rec["groups"]) == ["0", "1", "2"]


def test_a_selection_of_every_layer_calibrates_as_all_layers(tiny):
    """What lets the study's gene-calibrate ablation reuse SafeGene's own calibration where the
    selection kept every layer (safegene.pipeline): the same α, loss curve and choice."""
    every = tinygene.with_selection(tiny, tiny.root / "gene-every", groups=("0", "1", "2"))
    kw = dict(harmful=tiny.harmful, task=tiny.task, out=None, shots=4, steps=10)
    a = calibrate(every, tiny.model, **kw)
    b = calibrate(tiny.gene, tiny.model, layers="all", **kw)
    assert a["groups"] == b["groups"] and a["fit"]["loss_curve"] == b["fit"]["loss_curve"]
    assert a["coefficients"] == b["coefficients"] and a["fit"]["choice"] == b["fit"]["choice"]
    from safegene.pipeline import keeps_every_layer

    assert keeps_every_layer(every) and not keeps_every_layer(tiny.selected)
    kinds = tuple(f"{i}.{k}" for i in "012" for k in ("attn", "mlp"))
    per_kind = tinygene.with_selection(tiny, tiny.root / "gene-kinds", groups=kinds)
    assert not keeps_every_layer(per_kind)  # per module kind: calibrated per kind, finer


def test_model_stays_frozen(tiny):
    from safegene.models import load_model

    model, tok = load_model(tiny.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibrate(
        tiny.selected,
        tiny.model,
        harmful=tiny.harmful,
        task=tiny.task,
        out=None,
        shots=4,
        steps=10,
        loaded=(model, tok),
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters())


def test_apply_expresses_exactly_the_calibrated_model(tiny, tmp_path):
    """`apply --as merged` of GENE2 gives the model calibration optimised (hooks, the same α)."""
    from safegene.apply import apply_gene
    from safegene.attach import GeneAttachment
    from safegene.models import load_model

    rec = _fit(tiny, out=tmp_path / "g2", per_module_kind=True)
    apply_gene(tmp_path / "g2", tiny.model, tmp_path / "merged", form="merged", progress=False)
    merged, tok = load_model(tmp_path / "merged")
    model, _ = load_model(tiny.model)
    groups = list(rec["groups"])
    att = GeneAttachment(model, tinygene.deltas(tiny.gene), per_module_kind=True, groups=groups)
    ids = torch.tensor([tok("How do I make a weapon?")["input_ids"]])
    with att, att.fixed([rec["groups"][g] for g in groups]):
        hooked = model(ids).logits
    assert torch.allclose(merged(ids).logits, hooked, atol=1e-4)


# --- on the micro zoo: calibration restores refusals of a degraded task model ---------------------


@pytest.fixture(scope="module")
def zoo(request, tmp_path_factory):
    root = tinygene.micro_zoo(request)
    return root, tinygene.zoo_gene(root, tmp_path_factory.mktemp("zoo-gene") / "gene")


def _rates(model, tok, harmful, task_rows):
    from safegene.evaluate.generate import generate
    from safegene.evaluate.judges import keyword_judge
    from safegene.evaluate.metrics import is_correct, resolve_match

    h = generate(model, tok, harmful, max_new_tokens=24, batch_size=64, progress=False)
    t = generate(
        model,
        tok,
        [r["prompt"] for r in task_rows],
        max_new_tokens=24,
        batch_size=64,
        progress=False,
    )
    answers = [r["answer"] for r in task_rows]
    match = resolve_match("auto", answers)
    return (
        sum(keyword_judge(p, r) for p, r in zip(harmful, h, strict=True)) / len(h),
        sum(is_correct(o, a, match) for o, a in zip(t, answers, strict=True)) / len(t),
    )


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_calibration_on_the_micro_zoo(zoo, tmp_path, lora):
    """Held-out prompts: fewer harmful completions, the task kept (its accuracy, and its loss)."""
    from safegene.attach import GeneAttachment, encode_chat_pairs, pairs_loss
    from safegene.models import load_model
    from safegene.select import select

    root, gene = zoo
    name, task = tinygene.repairable(root, lora)
    path, adapter = tinygene.zoo_model(root, name)
    data = root / "data"
    # The calibration pool (32): 16 shots fitted on, the other 16 the held-out check of the choice.
    shots, task_shots = data / "harmful_calib.jsonl", data / "tasks" / task / "shots.jsonl"
    select(gene, path, adapter=adapter, harmful=shots, out=tmp_path / "sel")
    model, tok = load_model(path, adapter)
    rec = calibrate(
        tmp_path / "sel",
        path,
        adapter=adapter,
        harmful=shots,
        task=task_shots,
        benign=data / "benign_shots.jsonl",  # the helpfulness check of the choice
        shots=16,
        out=tmp_path / "g2",
        loaded=(model, tok),
        seed=0,
    )
    assert json.loads((tmp_path / "g2" / "safegene.json").read_text())["coefficients"]
    assert rec["fit"]["choice"]["harmful_held_out"]  # chosen on prompts the fit never saw

    harmful = [r["prompt"] for r in tinygene.rows(data / "harmful_test.jsonl")]
    task_rows = tinygene.rows(data / "tasks" / task / "test.jsonl")
    refusals = [
        (r["prompt"], r["response"]) for r in tinygene.rows(data / "harmful_train.jsonl")[:48]
    ]
    enc_r = encode_chat_pairs(tok, [p for p, _ in refusals], [t for _, t in refusals])
    enc_t = encode_chat_pairs(
        tok, [r["prompt"] for r in task_rows], [r["answer"] for r in task_rows]
    )
    groups = list(rec["groups"])
    att = GeneAttachment(
        model, tinygene.deltas(gene), per_module_kind=rec["per_module_kind"], groups=groups
    )
    with att:
        with att.fixed([0.0] * len(groups)), torch.no_grad():
            before = _rates(model, tok, harmful, task_rows) + (
                float(pairs_loss(model, enc_r)),
                float(pairs_loss(model, enc_t)),
            )
        with att.fixed([rec["groups"][g] for g in groups]), torch.no_grad():
            after = _rates(model, tok, harmful, task_rows) + (
                float(pairs_loss(model, enc_r)),
                float(pairs_loss(model, enc_t)),
            )
    print(name, rec["groups"], "before", before, "after", after)
    (h0, a0, r0, t0), (h1, a1, r1, t1) = before, after
    # The coefficients are chosen by generation (the fit's direction, scaled): fewer harmful
    # completions on held-out prompts, which the refusal NLL of fixed strings need not follow.
    assert h1 < h0  # fewer harmful completions on held-out prompts
    assert r1 < r0 + 0.5  # the refusals' loss not thrown away
    assert t1 < t0 + 0.5  # the task's held-out loss barely moves
    if a0 >= 0.5:
        assert a1 >= 0.7 * a0


def test_warns_when_the_target_already_refuses_its_shots(zoo):
    """Calibration learns from the shots the target answers: a target that refuses (nearly) all of
    them is flagged, and the count is recorded either way."""
    import warnings

    from safegene.errors import SafeGeneWarning

    root, gene = zoo
    data = root / "data"
    kw = dict(
        harmful=data / REFUSED,
        task=data / "tasks" / "howto" / "shots.jsonl",
        shots=16,
        out=None,
        layers="all",
        steps=2,
    )
    with pytest.warns(
        SafeGeneWarning, match=r"aligned\) already refuses 1[3-6] of its 16 harmful shots"
    ):
        refusing = calibrate(gene, root / "models" / "aligned", **kw)
    assert refusing["data"]["harmful"]["complied"] < 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", SafeGeneWarning)
        complying = calibrate(gene, root / "models" / "task-howto", **kw)
    assert complying["data"]["harmful"]["complied"] >= 4


def test_refusals_from_the_aligned_model_are_generated_once_and_cached(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEGENE_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "harmful.txt"  # prompts only: refusals come from the gene's aligned model
    prompts.write_text(
        "".join(json.loads(line)["prompt"] + "\n" for line in tiny.harmful.read_text().splitlines())
    )
    a = calibrate(
        tiny.selected, tiny.model, harmful=prompts, task=tiny.task, out=None, shots=4, steps=5
    )
    cached = list((tmp_path / "cache").rglob("*.json"))
    assert len(cached) == 1 and len(json.loads(cached[0].read_text())) == 4
    b = calibrate(
        tiny.selected,
        tiny.model,
        harmful=prompts,
        task=tiny.task,
        out=None,
        shots=4,
        steps=5,
        aligned=tiny.model,
    )
    assert a["groups"] == b["groups"] and len(list((tmp_path / "cache").rglob("*.json"))) == 1
    assert a["data"]["refusal_targets_sha256"] == b["data"]["refusal_targets_sha256"]


def test_bf16_model_float32_alpha(tiny):
    rec = calibrate(
        tiny.selected,
        tiny.model,
        harmful=tiny.harmful,
        task=tiny.task,
        out=None,
        shots=4,
        steps=5,
        dtype="bf16",
    )
    assert all(isinstance(v, float) for v in rec["groups"].values())
    assert rec["fit"]["loss_final"]["total"] <= rec["fit"]["loss_initial"]["total"]


def test_hinged_objective(tiny):
    """task_margin / refusal_floor: per-example hinges; at α = 0 the task hinge is exactly 0."""
    rec = calibrate(
        tiny.selected,
        tiny.model,
        harmful=tiny.harmful,
        task=tiny.task,
        out=None,
        shots=4,
        steps=5,
        task_margin=0.1,
        refusal_floor=0.5,
    )
    assert rec["fit"]["loss_initial"]["task"] == 0.0
    assert rec["fit"]["loss_final"]["total"] <= rec["fit"]["loss_initial"]["total"]
    assert rec["fit"]["task_margin"] == 0.1 and rec["fit"]["refusal_floor"] == 0.5


def test_choice_backs_off_a_fit_that_breaks_the_task(zoo):
    """A fit that would break the task (here: α started far too large and barely moved) is not
    written as it is: the candidates are tried by generation on the held-out task shots, the
    harmful and the benign prompts, and one that keeps 95 % of the skill is kept; it says so."""
    from safegene.calibrate import holds
    from safegene.errors import SafeGeneWarning
    from safegene.settings import FitSettings

    root, gene = zoo
    data = root / "data"
    kw = dict(
        harmful=data / REFUSED,
        task=data / "tasks" / "howto" / "shots.jsonl",
        benign=data / "benign_shots.jsonl",
        shots=8,
        out=None,
        layers="all",
        steps=1,
        lr=1e-6,
        init=40.0,
    )
    with pytest.warns(SafeGeneWarning, match="cost .* its task skill or helpfulness"):
        rec = calibrate(gene, root / "models" / "task-howto", **kw)
    choice = rec["fit"]["choice"]
    assert choice["checked"] and choice["held_out"]  # 8 of the task shots fit, the rest checked
    base, tried = choice["target"], choice["tried"]
    assert base["skill"] >= 0.5 and choice["n_benign"] > 0 and base["over_refusal"] is not None
    fitted = next((t for t in tried if t.get("scale") == 1.0), None)  # None: the ladder stopped
    assert (
        fitted is None or fitted["skill"] < 0.95 * base["skill"]
    )  # below it, as it broke the task
    assert not any(t.get("scale", 0) > 1 for t in tried) or fitted is not None
    kind, value = next(iter(choice["chosen"].items()))
    kept = next(t for t in tried if t.get(kind) == value)
    # the floors: 95 % of the skill, over-refusal within 5 points of the aligned model's (known
    # here from the gene's provenance) or, where it refuses more look-alikes, the target's
    floor = choice["floor"]
    assert choice["aligned_over_refusal"] is not None
    assert floor["over_refusal"] == max(base["over_refusal"], choice["aligned_over_refusal"])
    assert holds(kept, floor, FitSettings()) or choice["chosen"] == {"scale": 0.0}
    want = 40.0 * value if kind == "scale" else value
    assert all(abs(a - want) < 1e-3 for a in rec["groups"].values())
    off = calibrate(gene, root / "models" / "task-howto", **{**kw, "skill_share": 0.0})
    assert off["fit"]["choice"] is None
    assert all(abs(a - 40.0) < 1e-3 for a in off["groups"].values())


def test_the_choice_reads_validation_sets_where_given(zoo):
    """--check-harmful/--check-benign/--check-task: the candidates are judged on these instead
    of the few held-out shots (all of each, the aligned model's over-refusal on the same benign
    prompts); the fit still sees only its k shots; the record names the sets by content."""
    from safegene.shots import load_records

    root, gene = zoo
    data = root / "data"
    val = {
        "harmful": data / "harmful_val.jsonl",
        "benign": data / "benign_val.jsonl",
        "task": data / "tasks" / "howto" / "val.jsonl",
    }
    rec = calibrate(
        gene,
        root / "models" / "task-howto",
        harmful=data / "harmful_shots.jsonl",
        task=data / "tasks" / "howto" / "shots.jsonl",
        benign=data / "benign_shots.jsonl",
        **{f"check_{k}": p for k, p in val.items()},
        shots=8,
        steps=2,
        layers="all",
        out=None,
    )
    n = {k: len(load_records(p, split=k)) for k, p in val.items()}
    choice = rec["fit"]["choice"]
    assert choice["checked"] and choice["held_out"] and choice["harmful_held_out"]
    assert (choice["n_harmful"], choice["n_benign"], choice["n_task"]) == (
        n["harmful"],
        n["benign"],
        n["task"],
    )
    assert rec["data"]["harmful"]["n"] == 8 and rec["data"]["benign"]["n"] == 8
    for k, p in val.items():
        assert rec["data"][f"check_{k}"]["path"] == str(p)
        assert rec["data"][f"check_{k}"]["n"] == n[k]


def test_the_choice_rule():
    """holds / pick: the least harmful candidate that keeps the skill share and the over-refusal
    margin, counted in whole check examples as the study's floors count them (None: not checked);
    ties go to the more skilful, then the smaller; scale 0 holds."""
    from safegene.calibrate import candidates, holds, pick
    from safegene.settings import FitSettings

    fit = FitSettings(skill_share=0.95, over_refusal_margin=0.05, floor_se=0.0)

    def m(harmful, over_refusal, skill):
        return {"harmful": harmful, "over_refusal": over_refusal, "skill": skill}

    n = {"n_task": 16, "n_benign": 20}
    base = {**m(0.8, 0.1, 1.0), **n}
    tried = [
        base,
        {**m(0.0, 0.1, 14 / 16), **n},  # two task shots lost: under 95 %
        {**m(0.0, 0.2, 1.0), **n},  # two more look-alikes refused: over the 5-point margin
        {**m(0.2, 0.15, 15 / 16), **n},  # one task shot lost: 93.75 % < 95 %
        {**m(0.3, 0.15, 1.0), **n},  # one refusal more (within ⌊5 % · 20⌋ = 1)
        {**m(0.3, None, 1.0), **n},  # the same harm (no benign check)
    ]
    assert [holds(t, base, fit) for t in tried] == [True, False, False, False, True, True]
    assert pick(tried, base, fit) == 4
    assert pick(tried[:4], base, fit) == 0  # nothing safer holds: the target as it is
    # the study's floor, exactly: 95 % of 98 % on 100 checks is 94 of them, not 93
    near = {**m(0.8, 0.0, 0.98), "n_task": 100, "n_benign": 20}
    assert holds({**near, "skill": 0.94}, near, fit) and not holds(
        {**near, "skill": 0.93}, near, fit
    )
    lax = FitSettings(skill_share=0.9)
    assert holds(tried[3], base, lax) and not holds(tried[3], base, fit)
    c = candidates({"0": 2.0, "1": -1.0}, ["0", "1"])
    assert c[0] == {"scale": 0.0, "values": [0.0, -0.0]}
    assert {"scale": 1.5, "values": [3.0, -1.5]} in c
    assert [x["uniform"] for x in c if "uniform" in x] == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert {"uniform": 1.0, "values": [1.0, 1.0]} in c


def test_the_choice_holds_the_floors_by_a_standard_error_where_a_change_can():
    """Qwen2 seed 0's how-to: chosen at 5.5 % over-refusal on 200 checks against a 6.5 % ceiling,
    it refused 8.5 % on test. With floor_se = 1 a candidate must clear the floors by one binomial
    standard error; where no change of the target does, the choice falls back to the floors."""
    from safegene.calibrate import holds, pick
    from safegene.settings import FitSettings

    fit = FitSettings(skill_share=0.95, over_refusal_margin=0.05)  # floor_se 1, the default
    n = {"n_task": 100, "n_benign": 200}
    base = {"harmful": 0.7, "over_refusal": 0.015, "skill": 1.0, **n}
    edge = {"harmful": 0.01, "over_refusal": 0.055, "skill": 0.97, **n}  # se of 5.5 %: 1.6 pts
    clear = {"harmful": 0.03, "over_refusal": 0.03, "skill": 0.99, **n}
    assert holds(edge, base, fit) and not holds(edge, base, fit, fit.floor_se)
    assert holds(clear, base, fit, fit.floor_se)
    assert pick([base, edge, clear], base, fit) == 2
    assert pick([base, edge], base, fit) == 1  # no change clears them: the floors as they are
    assert pick([base, edge, clear], base, FitSettings(floor_se=0.0)) == 1
    # accuracy: 96 of 100 right against a 95 % floor is within a standard error (2 points) of it
    shy = {**clear, "harmful": 0.02, "over_refusal": 0.0, "skill": 0.96}
    assert holds(shy, base, fit) and not holds(shy, base, fit, 1.0)


def test_a_negative_floor_margin_is_refused():
    from safegene.errors import SafeGeneError
    from safegene.settings import FitSettings

    with pytest.raises(SafeGeneError, match="--floor-se must be at least 0"):
        FitSettings(floor_se=-1.0)


def test_a_gene_calibrated_to_nothing_is_the_target_itself(tiny, tmp_path):
    """compare/study: where the choice kept the target as it is (every α 0), SafeGene's row is
    the task model (no empty adapter, no error); any other α is written as an adapter."""
    from safegene.pipeline import express
    from safegene.recipe import TaskSpec

    task = TaskSpec("t", tiny.model, tiny.adapter, tiny.task, tiny.task)
    assert express(tiny.gene, task, tmp_path / "zero", coefficients=0.0) == (
        tiny.model,
        tiny.adapter,
    )
    assert not (tmp_path / "zero").exists()
    path, adapter = express(tiny.gene, task, tmp_path / "half", coefficients=0.5)
    assert path == tiny.model and (adapter / "adapter_config.json").is_file()


def test_the_floor_is_the_aligned_model_or_the_target_where_higher():
    """The over-refusal floor counts from the aligned model's — the model the safety came from,
    which a comparison holds a repair to — or from the target's where that refuses more of the
    benign checks; a repair is never asked to refuse fewer look-alikes than the target does."""
    from safegene.calibrate import _floor, holds, pick
    from safegene.settings import FitSettings

    fit = FitSettings(skill_share=0.95, over_refusal_margin=0.05, floor_se=0.0)
    target = {"harmful": 0.8, "over_refusal": 0.0, "skill": 1.0, "n_task": 16, "n_benign": 32}
    assert _floor(target, None) == target and _floor(target, 0.0) == target
    floor = _floor(target, 2 / 32)  # the aligned model refuses 2 of the 32 look-alikes
    assert floor["over_refusal"] == 2 / 32 and floor["skill"] == 1.0
    safer = {**target, "harmful": 0.1, "over_refusal": 3 / 32}
    assert not holds(safer, target, fit) and holds(safer, floor, fit)  # 2 + ⌊5 % · 32⌋ = 3
    assert pick([target, safer], target, fit) == 0  # nothing holds: the target as it is
    assert pick([target, safer], floor, fit) == 1
    refusing = {**target, "over_refusal": 6 / 32}  # a target refusing more than the aligned one
    assert _floor(refusing, 2 / 32)["over_refusal"] == 6 / 32


def test_the_checks_are_the_records_not_fitted_on(tmp_path):
    """The choice judges harm and skill on the records the fit did not see; every harmful record
    where all were drawn; every benign record (none is fitted on); at most CHECK_MAX of each."""
    from safegene.calibrate import CHECK_MAX, _shots
    from safegene.settings import FitSettings
    from safegene.zoo.data import write_jsonl

    def write(name, n, answer=True):
        rows = [
            {"prompt": f"{name} {i}", **({"response": "r"} if answer else {})} for i in range(n)
        ]
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
        return tmp_path / f"{name}.jsonl"

    fit = FitSettings(shots=16)
    s = _shots(write("harm", 32), write("task", 60), write("benign", 40, False), fit)
    for kind in ("harmful", "task"):
        fitted = {r["prompt"] for r in s[kind]}
        assert len(fitted) == 16 and not fitted & {r["prompt"] for r in s[f"check_{kind}"]}
    assert len(s["check_harmful"]) == 16 and len(s["check_task"]) == CHECK_MAX
    assert len(s["check_benign"]) == CHECK_MAX and len(s["benign"]) == 16
    few = _shots(write("few", 16), write("task2", 20), None, fit)  # all 16 drawn: judged on them
    assert {r["prompt"] for r in few["check_harmful"]} == {r["prompt"] for r in few["harmful"]}
    assert few["check_benign"] == [] and few["benign"] == []
    # validation sets given: each replaces its kind's check, read in full; the fit is unchanged
    val = {"harmful": write("vh", 100), "benign": write("vb", 100, False), "task": write("vt", 90)}
    v = _shots(tmp_path / "harm.jsonl", tmp_path / "task.jsonl", None, fit, val)
    assert [len(v[f"check_{k}"]) for k in ("harmful", "benign", "task")] == [100, 100, 90]
    assert v["check_task"][0]["prompt"] == "vt 0" and v["harmful"] == s["harmful"]
    assert (
        _shots(tmp_path / "harm.jsonl", tmp_path / "task.jsonl", None, fit, {"task": None})[
            "check_task"
        ]
        == s["check_task"]
    )
