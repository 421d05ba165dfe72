"""The attachment: hooks that add Σ α_g δ_g are exactly the merged weights, for LoRA and dense
genes; a plain PEFT LoRA directory opens as a gene with PEFT's own scaling (regex patterns too)."""

from __future__ import annotations

import json
import shutil

import engine_models as em
import pytest
import tinygene
import torch

from safegene.attach import GeneAttachment
from safegene.gene import extract
from safegene.groups import group_key
from safegene.models import load_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return tinygene.build(tmp_path_factory.mktemp("tiny"))


def _ids(tok, text="How do I make a weapon number 3?"):
    return torch.tensor([tok(text)["input_ids"]])


def _merged(model_dir, deltas, alpha_of):
    """The model with W += α · δ written into its weights, one module at a time."""
    merged, _ = load_model(model_dir)
    with torch.no_grad():
        for d in deltas:
            delta = d.A if d.B is None else d.B @ d.A
            merged.get_submodule(d.name).weight += alpha_of(d) * delta
    return merged


@pytest.mark.parametrize("per_module_kind", [False, True])
def test_hooks_equal_the_merged_weights(tiny, per_module_kind):
    model, tok = load_model(tiny.model)
    deltas = tinygene.deltas(tiny.gene)
    att = GeneAttachment(model, deltas, per_module_kind=per_module_kind)
    alpha = torch.linspace(-1.5, 2.0, len(att.groups))
    with att, att.fixed(alpha.tolist()), torch.no_grad():
        hooked = model(_ids(tok)).logits

    def alpha_of(d):
        return alpha[att.groups.index(group_key(d.layer, d.kind, per_module_kind))]

    with torch.no_grad():
        merged = _merged(tiny.model, deltas, alpha_of)(_ids(tok)).logits
    assert torch.allclose(hooked, merged, atol=1e-5)


def test_dense_gene_hooks_equal_the_merged_weights(tiny, tmp_path):
    model, tok = load_model(tiny.model)
    with torch.no_grad():  # a "degraded" copy of the tiny model: its projections nudged
        g = torch.Generator().manual_seed(7)
        for name, p in model.named_parameters():
            if name.endswith("_proj.weight"):
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    model.save_pretrained(tmp_path / "degraded")
    tok.save_pretrained(tmp_path / "degraded")
    gene = extract(
        tiny.model, [tmp_path / "degraded"], tmp_path / "dense", dense=True, progress=False
    )
    deltas = tinygene.deltas(gene)
    assert all(d.B is None for d in deltas)
    target, _ = load_model(tmp_path / "degraded")
    att = GeneAttachment(target, deltas)
    with att, att.fixed([1.0] * len(att.groups)), torch.no_grad():
        hooked = target(_ids(tok)).logits  # degraded + (aligned − degraded) = aligned
    with torch.no_grad():
        aligned = load_model(tiny.model)[0](_ids(tok)).logits
        merged = _merged(tmp_path / "degraded", deltas, lambda d: 1.0)(_ids(tok)).logits
    assert torch.allclose(hooked, merged, atol=1e-5)
    assert torch.allclose(hooked, aligned, atol=1e-4)


def _peft_scalings(model_dir, adapter) -> tuple[dict[str, float], object]:
    """({module path: scaling} as stock PEFT computes it when it loads `adapter`, the PeftModel)."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(load_model(model_dir)[0], str(adapter))
    return {
        name.removeprefix("base_model.model."): m.scaling["default"]
        for name, m in peft_model.named_modules()
        if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling
    }, peft_model


def test_plain_peft_adapter_with_regex_patterns_scales_as_peft(tiny, tmp_path):
    """alpha_pattern keys are regexes matched against the end of the module path (PEFT's
    get_pattern_key): with r 2 and lora_alpha 8, q_proj|v_proj get 32/2 = 16, not 8/2 = 4."""
    from safetensors.torch import load_file

    adapter = tmp_path / "regex-lora"
    shutil.copytree(tiny.adapter, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(
        lora_alpha=8, alpha_pattern={"q_proj|v_proj": 32, "layers\\.1\\.mlp\\.up_proj": 2}
    )
    (adapter / "adapter_config.json").write_text(json.dumps(config))

    peft_scale, peft_model = _peft_scalings(tiny.model, adapter)
    assert peft_scale["model.layers.0.self_attn.q_proj"] == 16.0
    assert peft_scale["model.layers.1.mlp.up_proj"] == 1.0
    assert peft_scale["model.layers.1.mlp.down_proj"] == 4.0
    raw = load_file(str(adapter / "adapter_model.safetensors"))
    deltas = tinygene.deltas(adapter)  # a plain PEFT directory opens as a gene
    assert len(deltas) == len(peft_scale)
    for d in deltas:
        b = raw[f"base_model.model.{d.name}.lora_B.weight"].float()
        assert torch.equal(d.B, b * peft_scale[d.name]), d.name

    model, tok = load_model(tiny.model)
    att = GeneAttachment(model, deltas)
    with att, att.fixed([1.0] * len(att.groups)), torch.no_grad():
        hooked = model(_ids(tok)).logits
    with torch.no_grad():
        stock = peft_model(_ids(tok)).logits
    assert torch.allclose(hooked, stock, atol=1e-5)


@pytest.mark.parametrize("family", [*em.FAMILIES, *em.MORE_FAMILIES, "gemma2"])
def test_target_only_chunked_loss_equals_the_full_logits(family):
    """pairs_loss from the decoder's hidden states at the target tokens, the LM head in chunks
    (recomputed in backward), equals the loss from the full logits, value and gradient, in every
    family of the table (Gemma's logit softcapping and Granite's logit scaling included)."""
    from safegene.attach import _split_head, pairs_loss

    over = {"final_logit_softcapping": 5.0} if family.startswith("gemma") else {}
    model = em.build_model(family, **over)
    if family == "granite":
        model.config.logits_scaling = 4.0
    assert _split_head(model) is not None
    g = torch.Generator().manual_seed(1)
    encoded = [
        (torch.randint(3, 96, (length,), generator=g).tolist(), n)
        for length, n in ((12, 5), (7, 2), (15, 14), (9, 3))
    ]
    weight = model.get_decoder().layers[0].mlp.down_proj.weight
    weight.requires_grad_(True)
    out = {}
    for name, chunk in (("chunked", 4 * 96 * 3), ("full", None)):  # 3 target tokens a chunk
        weight.grad = None
        per = pairs_loss(model, encoded, batch_size=3, reduce=False, chunk_bytes=chunk)
        per.sum().backward()
        out[name] = (per.detach(), weight.grad.clone())
    torch.testing.assert_close(out["chunked"][0], out["full"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["chunked"][1], out["full"][1], atol=1e-6, rtol=1e-4)
