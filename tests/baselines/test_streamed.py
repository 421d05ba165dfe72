"""The baselines streamed over whole checkpoints equal their per-tensor math, for full and LoRA
task models, and load with stock transformers / PEFT."""

import json

import pytest
import torch
from engine_models import build_model, perturbed, save, state

from safegene.baselines.interpolate import interpolate
from safegene.baselines.resta import resta
from safegene.baselines.safelora import project, safelora, similarity
from safegene.baselines.safemerge import safemerge
from safegene.errors import SafeGeneError


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    base = build_model("llama", seed=0)
    aligned = perturbed(base, seed=1)
    paths = {
        "base": save(base, root / "base"),
        "aligned": save(aligned, root / "aligned"),
        "degraded": save(perturbed(aligned, seed=2), root / "degraded"),
        "task": save(perturbed(aligned, seed=3), root / "task"),
    }
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(
        perturbed(aligned, seed=0, scale=0.0),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj"],
            init_lora_weights=False,
        ),
    )
    lora.save_pretrained(root / "lora")
    paths["lora"] = root / "lora"
    return paths


def merged_lora_state(family):
    """aligned + task LoRA, merged by PEFT itself (the reference for the LoRA target)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(family["aligned"], dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, family["lora"]).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def test_resta_full_target(family, tmp_path):
    out = resta(
        family["task"],
        family["aligned"],
        [family["degraded"]],
        tmp_path / "o",
        beta=0.5,
        progress=False,
    )
    t, a, d = (state(family[k]) for k in ("task", "aligned", "degraded"))
    o = state(out)
    for name in t:
        assert torch.allclose(o[name], t[name] + 0.5 * (a[name] - d[name]), atol=1e-6), name


def test_resta_lora_target_matches_peft_merge(family, tmp_path):
    out = resta(
        family["aligned"],
        family["aligned"],
        [family["degraded"]],
        tmp_path / "o",
        beta=1.0,
        adapter=family["lora"],
        progress=False,
    )
    ref, a, d, o = (
        merged_lora_state(family),
        state(family["aligned"]),
        state(family["degraded"]),
        state(out),
    )
    for name in a:
        assert torch.allclose(o[name], ref[name] + (a[name] - d[name]), atol=1e-5), name


def test_resta_dare_is_deterministic(family, tmp_path):
    kw = dict(beta=1.0, dare_rate=0.5, seed=7, progress=False)
    one = resta(family["task"], family["aligned"], [family["degraded"]], tmp_path / "a", **kw)
    two = resta(family["task"], family["aligned"], [family["degraded"]], tmp_path / "b", **kw)
    assert (one / "model.safetensors").read_bytes() == (two / "model.safetensors").read_bytes()
    t, o = state(family["task"]), state(one)
    assert any(not torch.equal(o[n], t[n]) for n in t)


def test_interpolate_loads_with_transformers(family, tmp_path):
    from transformers import AutoModelForCausalLM

    out = interpolate(family["task"], family["aligned"], tmp_path / "o", t=1.0, progress=False)
    a, o = state(family["aligned"]), state(out)
    assert all(torch.allclose(o[n], a[n]) for n in a)
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_safelora_full_target_projects_the_least_similar(family, tmp_path):
    out = safelora(
        family["task"], family["aligned"], family["base"], tmp_path / "o", number=3, progress=False
    )
    record = json.loads((out / "safelora.json").read_text())
    sims = record["similarities"]
    chosen = set(sorted(sims, key=sims.get)[:3])
    assert set(record["projected"]) == chosen
    t, a, b = (state(family[k]) for k in ("task", "aligned", "base"))
    o = state(out)
    for name in t:
        if name in chosen:
            want = a[name] + project(a[name] - b[name], t[name] - a[name])
            assert sims[name] == pytest.approx(similarity(a[name] - b[name], t[name] - a[name]))
        else:
            want = t[name]
        assert torch.allclose(o[name], want, atol=1e-6), name


def test_safelora_lora_target_writes_a_projected_peft_adapter(family, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = safelora(
        family["aligned"],
        family["aligned"],
        family["base"],
        tmp_path / "o",
        adapter=family["lora"],
        threshold=2.0,
        progress=False,
    )  # τ > 1: project all
    record = json.loads((out / "safelora.json").read_text())
    assert len(record["projected"]) == 6  # q, v, down in 2 layers
    model = AutoModelForCausalLM.from_pretrained(family["aligned"], dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, out).merge_and_unload().state_dict()
    ref, a, b = merged_lora_state(family), state(family["aligned"]), state(family["base"])
    for name in record["projected"]:
        want = a[name] + project(a[name] - b[name], ref[name] - a[name])
        assert torch.allclose(merged[name], want, atol=1e-5), name


def test_safemerge_merges_only_drifted_modules(family, tmp_path):
    sims = json.loads(
        (
            safelora(
                family["task"],
                family["aligned"],
                family["base"],
                tmp_path / "s",
                number=1,
                progress=False,
            )
            / "safelora.json"
        ).read_text()
    )["similarities"]
    tau = sorted(sims.values())[len(sims) // 2]
    out = safemerge(
        family["task"],
        family["aligned"],
        family["base"],
        tmp_path / "o",
        threshold=tau,
        task_weight=0.8,
        progress=False,
    )
    t, a, o = state(family["task"]), state(family["aligned"]), state(out)
    drifted = {n for n, s in sims.items() if s < tau}
    assert 0 < len(drifted) < len(sims)
    for name in t:
        want = 0.8 * t[name] + 0.2 * a[name] if name in drifted else t[name]
        assert torch.allclose(o[name], want, atol=1e-6), name


def test_other_family_fails_before_writing(family, tmp_path):
    other = save(build_model("llama", seed=0, num_hidden_layers=3), tmp_path / "deeper")
    with pytest.raises(SafeGeneError, match="family mismatch"):
        resta(family["task"], other, [family["degraded"]], tmp_path / "o", beta=1.0, progress=False)
    assert not (tmp_path / "o").exists()


def test_existing_output_is_kept_without_force(family, tmp_path):
    (tmp_path / "o").mkdir()
    with pytest.raises(SafeGeneError, match="already exists"):
        interpolate(family["task"], family["aligned"], tmp_path / "o", t=0.5, progress=False)


def test_safelora_adapter_is_vllm_safe_whatever_the_users_config(family, tmp_path):
    """A user's LoRA whose rank_pattern goes above r and whose scales differ per module (PEFT
    reads the patterns; vLLM ignores them): the output folds every scale into lora_B, so its
    config has r = the largest rank and one global scale of 1, and loads exactly in PEFT."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from safegene.io.lora import read_adapter

    user = get_peft_model(
        perturbed(build_model("llama", seed=0), seed=1),
        LoraConfig(
            r=2,
            lora_alpha=3,
            rank_pattern={"v_proj": 6},
            alpha_pattern={"v_proj": 24},
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
        ),
    )
    user.save_pretrained(tmp_path / "user")
    out = safelora(family["aligned"], family["aligned"], family["base"], tmp_path / "o",
                   adapter=tmp_path / "user", number=1, progress=False)  # fmt: skip
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 6 and cfg["lora_alpha"] == 6
    assert set(cfg["rank_pattern"].values()) == {2} and cfg["alpha_pattern"] == cfg["rank_pattern"]
    ad = read_adapter(out)
    assert {m.scale for m in ad.modules.values()} == {1.0}  # vLLM's global alpha / r, too
    ad.close()
    model = AutoModelForCausalLM.from_pretrained(family["aligned"], dtype=torch.float32)
    got = PeftModel.from_pretrained(model, out).merge_and_unload().state_dict()
    model = AutoModelForCausalLM.from_pretrained(family["aligned"], dtype=torch.float32)
    ref = PeftModel.from_pretrained(model, tmp_path / "user").merge_and_unload().state_dict()
    projected = set(json.loads((out / "safelora.json").read_text())["projected"])
    assert len(projected) == 1
    a, b = state(family["aligned"]), state(family["base"])
    for name in ref:
        want = (
            a[name] + project(a[name] - b[name], ref[name] - a[name])
            if name in projected
            else ref[name]
        )
        assert torch.allclose(got[name], want, atol=1e-5), name
