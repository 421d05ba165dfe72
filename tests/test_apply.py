"""apply: merged == stock PEFT on the gene; combined == task LoRA then gene; sharded outputs load;
coefficients and selection honoured; cross-family and NaN inputs write nothing."""

import json

import engine_models as em
import pytest
import torch

from safegene.apply import apply_gene
from safegene.errors import SafeGeneError
from safegene.gene import extract, load_gene, save_gene

IDS = torch.tensor([[1, 5, 9, 17, 33, 64, 3, 80]])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Sharded llama pair, an energy gene (so ranks differ per module), a stock PEFT task LoRA."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("apply")
    aligned, degraded = em.family_pair(root, "llama", shard="40KB")
    gene = extract(aligned, [degraded], root / "gene", energy=0.8, progress=False)
    task_model = get_peft_model(
        em.build_model("llama"),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj"],
            init_lora_weights=False,
        ),
    )
    task_model.save_pretrained(root / "task_lora")
    return {
        "root": root,
        "aligned": aligned,
        "degraded": degraded,
        "gene": gene,
        "lora": root / "task_lora",
    }


def _logits(path, adapter=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_gene_ranks_differ_and_config_scales_by_one(setup):
    cfg = json.loads((setup["gene"] / "adapter_config.json").read_text())
    ranks = {m.rank for m in load_gene(setup["gene"]).modules.values()}
    assert len(ranks) > 1 and cfg["rank_pattern"] and cfg["rank_pattern"] == cfg["alpha_pattern"]


def test_peft_gene_equals_merged(setup, tmp_path):
    merged = apply_gene(
        setup["gene"], setup["degraded"], tmp_path / "m", shard_size=40_000, progress=False
    )
    peft = _logits(setup["degraded"], adapter=setup["gene"])
    torch.testing.assert_close(_logits(merged), peft, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(peft, _logits(setup["degraded"]), atol=1e-3)  # the gene did act


def test_sharded_in_sharded_out(setup, tmp_path):
    merged = apply_gene(
        setup["gene"], setup["degraded"], tmp_path / "m", shard_size=30_000, progress=False
    )
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards == sorted(p.name for p in merged.glob("*.safetensors"))
    assert sorted(index["weight_map"]) == sorted(em.state(setup["degraded"]))
    assert (merged / "config.json").is_file() and (merged / "safegene_apply.json").is_file()
    from transformers import AutoModelForCausalLM

    _, info = AutoModelForCausalLM.from_pretrained(merged, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_combined_equals_task_lora_then_gene(setup, tmp_path):
    combined = apply_gene(
        setup["gene"],
        setup["aligned"],
        tmp_path / "c",
        form="combined",
        adapter=setup["lora"],
        coefficients=0.7,
        progress=False,
    )
    task_merged = apply_gene(
        setup["gene"],
        setup["aligned"],
        tmp_path / "t",
        adapter=setup["lora"],
        coefficients=0.0,
        progress=False,
    )  # task LoRA merged, gene off
    both = apply_gene(setup["gene"], task_merged, tmp_path / "b", coefficients=0.7, progress=False)
    torch.testing.assert_close(
        _logits(setup["aligned"], adapter=combined), _logits(both), atol=1e-4, rtol=1e-4
    )
    # and the task-only merge agrees with stock PEFT on the task LoRA
    torch.testing.assert_close(
        _logits(task_merged), _logits(setup["aligned"], setup["lora"]), atol=1e-4, rtol=1e-4
    )
    cfg = json.loads((combined / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] and cfg["rank_pattern"] == cfg["alpha_pattern"]


def test_adapter_form_scales_lora_b(setup, tmp_path):
    out = apply_gene(
        setup["gene"],
        setup["degraded"],
        tmp_path / "a",
        form="adapter",
        coefficients=[0.5, 2.0],
        progress=False,
    )
    from safetensors.torch import load_file

    got = load_file(out / "adapter_model.safetensors")
    g = load_gene(setup["gene"])
    for t, m in g.modules.items():
        a, b = g.factors(t)
        key = "base_model.model." + m.module_path
        assert torch.equal(got[key + ".lora_A.weight"], a)
        torch.testing.assert_close(got[key + ".lora_B.weight"], b * (0.5, 2.0)[m.layer])
    merged = apply_gene(
        setup["gene"], setup["degraded"], tmp_path / "m", coefficients=[0.5, 2.0], progress=False
    )
    torch.testing.assert_close(
        _logits(setup["degraded"], adapter=out), _logits(merged), atol=1e-4, rtol=1e-4
    )


def test_stored_selection_and_coefficients_are_honoured(setup, tmp_path):
    gene2 = save_gene(
        setup["gene"],
        tmp_path / "g2",
        selection={"attn": [1], "mlp": [0]},
        coefficients={"attn": {"1": 0.5}, "mlp": {"0": 2.0}},
    )
    merged = apply_gene(gene2, setup["degraded"], tmp_path / "m", progress=False)
    d, m = em.state(setup["degraded"]), em.state(merged)
    g = load_gene(gene2)
    for t, mod in g.modules.items():
        want = {(1, "attn"): 0.5, (0, "mlp"): 2.0}.get((mod.layer, mod.kind), 0.0)
        if want == 0.0:
            assert torch.equal(m[t], d[t]), t
        else:
            torch.testing.assert_close(m[t], d[t] + want * g.delta(t), atol=1e-6, rtol=0)
    adapter = apply_gene(gene2, setup["degraded"], tmp_path / "a", form="adapter", progress=False)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert isinstance(cfg["target_modules"], str)  # exact regex: only the selected modules
    torch.testing.assert_close(
        _logits(setup["degraded"], adapter=adapter), _logits(merged), atol=1e-4, rtol=1e-4
    )


def test_cross_family_fails_before_writing(setup, tmp_path):
    qa, qd = em.family_pair(tmp_path, "qwen2")
    with pytest.raises(SafeGeneError, match="model_type='llama'.*model_type='qwen2'"):
        apply_gene(setup["gene"], qd, tmp_path / "out", progress=False)
    deep = em.save(em.build_model("llama", num_hidden_layers=3), tmp_path / "deep")
    with pytest.raises(SafeGeneError, match="num_layers"):
        apply_gene(setup["gene"], deep, tmp_path / "out", form="adapter", progress=False)
    wide = em.save(em.build_model("llama", intermediate_size=48), tmp_path / "wide")
    with pytest.raises(SafeGeneError, match="gate_proj.weight' has shape"):
        apply_gene(setup["gene"], wide, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_nan_target_and_bad_options_write_nothing(setup, tmp_path):
    model = em.build_model("llama")
    with torch.no_grad():
        model.model.norm.weight[3] = float("inf")
    bad = em.save(model, tmp_path / "bad")
    with pytest.raises(SafeGeneError, match="NaN or Inf.*model.norm.weight"):
        apply_gene(setup["gene"], bad, tmp_path / "out", progress=False)
    with pytest.raises(SafeGeneError, match="needs the task LoRA"):
        apply_gene(setup["gene"], setup["degraded"], tmp_path / "out", form="combined")
    with pytest.raises(SafeGeneError, match="not finite"):
        apply_gene(setup["gene"], setup["degraded"], tmp_path / "out", coefficients=float("nan"))
    with pytest.raises(SafeGeneError, match="overlaps"):
        apply_gene(setup["gene"], setup["degraded"], setup["degraded"], force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_lm_head_gene_through_peft(tmp_path):
    """Outside the decoder layers: lm_head δ as LoRA (regex target_modules), same logits."""
    aligned, degraded = em.family_pair(tmp_path, "qwen2")
    gene = extract(
        aligned, [degraded], tmp_path / "gene", modules=["lm_head", "q_proj"], progress=False
    )
    with load_gene(gene) as g:
        assert {m.module for m in g.modules.values()} == {"lm_head", "q_proj"}
    assert isinstance(json.loads((gene / "adapter_config.json").read_text())["target_modules"], str)
    merged = apply_gene(gene, degraded, tmp_path / "m", progress=False)
    torch.testing.assert_close(
        em.state(merged)["lm_head.weight"], em.state(aligned)["lm_head.weight"], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        _logits(degraded, adapter=gene), _logits(merged), atol=1e-4, rtol=1e-4
    )
