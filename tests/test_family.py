"""Tensor names → (layer, module, kind) by table and by fallback; fingerprints; compatibility."""

import engine_models as em
import pytest
import torch

from safegene.errors import SafeGeneError
from safegene.family import check_compatible, fingerprint, parse_name
from safegene.io import ModelReader


@pytest.fixture(scope="module")
def readers(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    out = {f: ModelReader(em.save(em.build_model(f), root / f)) for f in em.FAMILIES}
    out["llama3"] = ModelReader(em.save(em.build_model("llama", num_hidden_layers=3), root / "l3"))
    return out


@pytest.mark.parametrize("family", em.FAMILIES)
def test_every_layer_tensor_maps_to_a_known_kind(readers, family):
    r = readers[family]
    parsed = [parse_name(n, family) for n in r.names()]
    layered = [p for p in parsed if p.layer is not None]
    assert {p.layer for p in layered} == {0, 1}
    assert all(p.kind in ("attn", "mlp", "norm") for p in layered), [
        p for p in layered if p.kind == "other"
    ]
    kinds = {p.module: p.kind for p in layered}
    if family == "phi3":
        assert kinds["qkv_proj"] == "attn" and kinds["gate_up_proj"] == "mlp"
    else:
        assert kinds["q_proj"] == "attn" and kinds["down_proj"] == "mlp"
    if family == "qwen2":
        assert any(p.param == "bias" and p.module == "q_proj" for p in layered)


def test_parse_name_table_and_fallback():
    p = parse_name("model.layers.3.self_attn.q_proj.weight", "llama")
    assert (p.layer, p.path, p.module, p.kind, p.param) == (
        3,
        "self_attn.q_proj",
        "q_proj",
        "attn",
        "weight",
    )
    assert p.module_path == "model.layers.3.self_attn.q_proj"
    assert parse_name("model.embed_tokens.weight", "llama").kind == "embed"
    assert parse_name("lm_head.weight", "qwen2").kind == "lm_head"
    assert parse_name("model.norm.weight", "gemma").kind == "norm"
    # an unknown architecture: inferred from the words in the name
    q = parse_name("transformer.layers.7.attention.wq.weight", "newarch")
    assert (q.layer, q.kind) == (7, "attn")
    assert parse_name("transformer.layers.0.feed_forward.w1.weight", None).kind == "mlp"
    assert parse_name("transformer.layers.0.ffn_norm.weight", None).kind == "norm"


def test_fingerprint_same_family_equal_other_differs(readers, tmp_path):
    fps = {f: fingerprint(r.config(), r.shapes()) for f, r in readers.items()}
    again = ModelReader(em.save(em.perturbed(em.build_model("qwen2"), 3), tmp_path / "q"))
    assert fingerprint(again.config(), again.shapes()) == fps["qwen2"]
    assert len({tuple(sorted(fp.items())) for fp in fps.values()}) == len(fps)
    assert fps["qwen2"]["layer_tensors_sha256"] != fps["llama"]["layer_tensors_sha256"]  # biases


def test_check_compatible_names_first_mismatch(readers):
    fp = fingerprint(readers["llama"].config(), readers["llama"].shapes())
    r = readers["llama"]
    check_compatible(fp, r.config(), r.shapes())  # itself: fine
    with pytest.raises(SafeGeneError, match="model_type='llama'.*model_type='mistral'"):
        check_compatible(fp, readers["mistral"].config(), readers["mistral"].shapes())
    with pytest.raises(SafeGeneError, match="num_layers=2.*num_layers=3"):
        check_compatible(fp, readers["llama3"].config(), readers["llama3"].shapes())
    shapes = dict(r.shapes())
    q = "model.layers.1.self_attn.q_proj.weight"
    with pytest.raises(SafeGeneError, match="no tensor 'model.layers.1.self_attn.q_proj.weight'"):
        check_compatible(
            fp, r.config(), {k: v for k, v in shapes.items() if k != q}, tensors={q: shapes[q]}
        )
    with pytest.raises(SafeGeneError, match=r"shape \(32, 32\) in the target but \(32, 16\)"):
        check_compatible(fp, r.config(), shapes, tensors={q: (32, 16)})
    with pytest.raises(SafeGeneError, match="decoder-layer tensors differ"):
        check_compatible(fp, r.config(), {**shapes, q: (32, 16)})


@pytest.mark.parametrize("family", em.MORE_FAMILIES)
def test_more_families_by_table_and_exact_extract_apply(tmp_path, family):
    """Qwen3, Gemma-3 (text), OLMo-2 and Granite: every tensor is in the table (not the name
    fallback), their extra norms included; a dense gene of every kind applied to the degraded
    model gives back the aligned one exactly."""
    from safegene.apply import apply_gene
    from safegene.family import FAMILIES
    from safegene.gene import extract

    aligned, degraded = em.family_pair(tmp_path, family)
    reader = ModelReader(aligned)
    model_type = reader.config()["model_type"]
    assert model_type == family
    table = FAMILIES[family]
    for name in reader.names():
        p = parse_name(name, model_type)
        where = table["layer_modules"] if p.layer is not None else table["global_modules"]
        assert p.path in where, name  # by the table, not by inference
    extras = {p.path for n in reader.names() if (p := parse_name(n, model_type)).layer == 0}
    if family != "granite":
        assert {"self_attn.q_norm", "self_attn.k_norm"} <= extras
        assert all(table["layer_modules"][e] == "norm" for e in extras if "norm" in e)
    reader.close()
    gene = extract(
        aligned, [degraded], tmp_path / "g", dense=True, modules=["attn", "mlp", "norm"],
        progress=False,
    )  # fmt: skip
    back = em.state(apply_gene(gene, degraded, tmp_path / "back", progress=False))
    want = em.state(aligned)
    for name, t in want.items():
        if parse_name(name, model_type).layer is not None:
            torch.testing.assert_close(back[name], t, atol=1e-6, rtol=0)
