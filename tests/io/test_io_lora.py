"""Written adapters are exact under both loaders that matter: PEFT (per-module rank_pattern /
alpha_pattern) and vLLM (patterns ignored, one global lora_alpha / r, `max_lora_rank >= r`).

vLLM is not installed here, so its loader rules (vllm/lora/peft_helper.py, lora/models.py) are
reproduced in plain torch: refuse DoRA / modules_to_save / biases, check r against
max_lora_rank, take each module's rank from its tensors, scale every B by the global
lora_alpha / r (lora_alpha / sqrt(r) with use_rslora)."""

import json
import math

import engine_models as em
import pytest
import torch
from safetensors.torch import load_file

from safegene.apply import apply_gene
from safegene.gene import extract, load_gene
from safegene.io.lora import PEFT_PREFIX, adapter_config, max_lora_rank


def vllm_deltas(adapter_dir, max_rank: int) -> dict[str, torch.Tensor]:
    """{module path: δ} as vLLM's LoRA loader computes it (see the module doc)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert not config.get("use_dora") and not config.get("modules_to_save")
    assert config.get("bias", "none") == "none"
    r, alpha = config["r"], config["lora_alpha"]
    assert r <= max_rank, f"LoRA rank {r} is greater than max_lora_rank {max_rank}"
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    out = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key[len(PEFT_PREFIX) : -len(".lora_A.weight")]
            b = tensors[key.replace("lora_A", "lora_B")]
            assert a.shape[0] <= r <= max_rank  # vLLM pads each module up to max_lora_rank
            out[module] = scale * b.float() @ a.float()
    return out


def peft_deltas(base_dir, adapter_dir) -> dict[str, torch.Tensor]:
    """{module path: δ} as stock PEFT loads the adapter (get_delta_weight per LoRA layer)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft = PeftModel.from_pretrained(model, adapter_dir)
    out = {}
    for name, module in peft.base_model.model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            with torch.no_grad():
                out[name] = module.get_delta_weight("default").float()
    return out


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """An energy gene (ranks differ per module) and apply's adapter and combined outputs."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("vllm")
    aligned, degraded = em.family_pair(root, "llama")
    gene = extract(aligned, [degraded], root / "gene", energy=0.8, progress=False)
    task = get_peft_model(
        em.build_model("llama"),
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False
        ),
    )
    task.save_pretrained(root / "task")
    adapter = apply_gene(gene, degraded, root / "a", form="adapter", coefficients=[0.5, 2.0])
    combined = apply_gene(
        gene, aligned, root / "c", form="combined", adapter=root / "task", coefficients=0.7
    )
    return {"aligned": aligned, "gene": gene, "adapter": adapter, "combined": combined}


@pytest.mark.parametrize("which", ["gene", "adapter", "combined"])
def test_written_adapter_is_exact_under_vllm_and_peft(outputs, which):
    path = outputs[which]
    cfg = json.loads((path / "adapter_config.json").read_text())
    ranks = {
        k: t.shape[0]
        for k, t in load_file(path / "adapter_model.safetensors").items()
        if k.endswith("lora_A.weight")
    }
    assert len(set(ranks.values())) > 1  # the case that needs care
    assert cfg["r"] == max(ranks.values()) == max_lora_rank(path)
    vllm = vllm_deltas(path, max_rank=cfg["r"])
    peft = peft_deltas(outputs["aligned"], path)
    assert set(vllm) == set(peft)
    for module, delta in peft.items():
        torch.testing.assert_close(vllm[module], delta, atol=1e-6, rtol=1e-5)
    with pytest.raises(AssertionError, match="greater than max_lora_rank"):
        vllm_deltas(path, max_rank=cfg["r"] - 1)  # vLLM refuses a server below r


def test_gene_factors_are_what_both_loaders_add(outputs):
    """The gene (scaling 1) adds exactly B @ A per module under both rules."""
    gene = load_gene(outputs["gene"])
    vllm = vllm_deltas(outputs["gene"], max_rank=64)
    for t, m in gene.modules.items():
        torch.testing.assert_close(vllm[m.module_path], gene.delta(t), atol=1e-6, rtol=1e-5)
    gene.close()


def test_adapter_config_r_is_the_largest_rank():
    cfg = adapter_config(
        {
            "model.layers.0.mlp.up_proj": 3,
            "model.layers.0.mlp.down_proj": 27,
            "model.layers.1.mlp.up_proj": 3,
        },
        "base",
        2,
    )
    assert cfg["r"] == cfg["lora_alpha"] == 27
    assert (
        cfg["rank_pattern"]
        == cfg["alpha_pattern"]
        == {
            "model.layers.0.mlp.up_proj": 3,
            "model.layers.1.mlp.up_proj": 3,
        }
    )
