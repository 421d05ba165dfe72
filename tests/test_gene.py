"""Extraction and compression: exact at full rank for every family, honest errors below it."""

import json

import engine_models as em
import pytest
import torch

from safegene.apply import apply_gene
from safegene.errors import SafeGeneError
from safegene.gene import (
    compress,
    extract,
    load_gene,
    normalize_coefficients,
    normalize_selection,
    save_gene,
)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    return {f: em.family_pair(root, f) for f in em.FAMILIES}


def _rel(x, y, ref):
    return float((x - y).norm() / ref.norm())


@pytest.mark.parametrize("family", em.FAMILIES)
def test_full_rank_roundtrip(pairs, family, tmp_path):
    aligned, degraded = pairs[family]
    gene = extract(aligned, [degraded], tmp_path / "gene", rank=10_000, progress=False)
    merged = apply_gene(gene, degraded, tmp_path / "merged", progress=False)
    a, d, m = em.state(aligned), em.state(degraded), em.state(merged)
    g = load_gene(gene)
    names = set(g.modules)
    expected = 8 if family == "phi3" else 14  # 2 layers × (4|7) projections
    assert len(names) == expected and all(g.modules[n].rel_error < 1e-5 for n in names)
    for n in a:
        if n in names:
            torch.testing.assert_close(m[n], a[n], atol=2e-6, rtol=0)
        else:  # outside the gene: the target's own tensor, untouched
            assert torch.equal(m[n], d[n]), n


def test_lower_rank_error_is_the_reported_truncation_error(pairs, tmp_path):
    aligned, degraded = pairs["llama"]
    gene = extract(aligned, [degraded], tmp_path / "gene", rank=3, progress=False)
    merged = apply_gene(gene, degraded, tmp_path / "merged", progress=False)
    a, d, m = em.state(aligned), em.state(degraded), em.state(merged)
    g = load_gene(gene)
    for n, mod in g.modules.items():
        delta = a[n] - d[n]
        s = torch.linalg.svdvals(delta.double())
        truncation = float(s[3:].square().sum().sqrt() / s.square().sum().sqrt())
        assert mod.rank == 3 and truncation > 0.1
        assert mod.rel_error == pytest.approx(truncation, rel=1e-4)
        assert _rel(m[n], a[n], delta) == pytest.approx(mod.rel_error, rel=1e-3)


def test_randomized_svd_is_accurate():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(600, 600, generator=g))
    v, _ = torch.linalg.qr(torch.randn(700, 600, generator=g))
    s = torch.logspace(0, -3, 600)
    delta = (u * s) @ v.T
    c = compress(delta, rank=16, seed=1)
    exact = float(s[16:].square().sum().sqrt() / s.square().sum().sqrt())
    assert c.method == "randomized_svd"
    residual = float((delta - c.b @ c.a).norm() / delta.norm())
    assert c.rel_error == pytest.approx(residual, rel=1e-3)  # the spectrum shortcut is honest
    assert c.rel_error == pytest.approx(exact, rel=0.02)
    assert c.a.shape == (16, 700) and c.b.shape == (600, 16)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again = compress(delta, rank=16, seed=1)
    assert torch.equal(again.a, c.a) and torch.equal(again.b, c.b)  # seeded: reproducible
    assert torch.equal(torch.get_rng_state(), state)  # and the global RNG is left alone


def test_energy_picks_the_smallest_rank_and_zero_delta():
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])
    delta = torch.diag(s)
    # energies: 9/14.25=.63, 13/14.25=.91, 14/14.25=.98
    assert compress(delta, rank=None, energy=0.9).a.shape[0] == 2
    assert compress(delta, rank=None, energy=0.95).a.shape[0] == 3
    z = compress(torch.zeros(5, 4), rank=2)
    assert z.rel_error == 0.0 and torch.equal(z.b @ z.a, torch.zeros(5, 4))


def test_mean_of_several_degraded_and_metadata(pairs, tmp_path):
    aligned, degraded = pairs["mistral"]
    other = em.save(em.perturbed(em.build_model("mistral"), 7), tmp_path / "degraded2")
    gene = extract(aligned, [degraded, other], tmp_path / "gene", rank=10_000, progress=False)
    g = load_gene(gene)
    a, d1, d2 = em.state(aligned), em.state(degraded), em.state(other)
    n = "model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(g.delta(n), a[n] - (d1[n] + d2[n]) / 2, atol=1e-6, rtol=0)
    meta = g.meta
    assert meta["fingerprint"]["model_type"] == "mistral" and len(meta["sources"]["degraded"]) == 2
    assert meta["sources"]["aligned"]["hash"].startswith("sample-sha256:")
    cfg = json.loads((gene / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == cfg["lora_alpha"]
    assert cfg["base_model_name_or_path"] == str(aligned.absolute())
    assert sorted(cfg["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def test_dense_gene_keeps_biases_and_norms(pairs, tmp_path):
    aligned, degraded = pairs["qwen2"]
    gene = extract(
        aligned,
        [degraded],
        tmp_path / "gene",
        dense=True,
        modules=["attn", "mlp", "norm"],
        progress=False,
    )
    g = load_gene(gene)
    assert g.kind == "dense" and "model.layers.0.self_attn.q_proj.bias" in g.modules
    assert "model.norm.weight" in g.modules
    merged = apply_gene(gene, degraded, tmp_path / "merged", progress=False)
    a, m = em.state(aligned), em.state(merged)
    for n in g.modules:
        torch.testing.assert_close(m[n], a[n], atol=1e-6, rtol=0)
    with pytest.raises(SafeGeneError, match="dense"):
        apply_gene(gene, degraded, tmp_path / "adapter", form="adapter", progress=False)
    assert not (tmp_path / "adapter").exists()


def test_lora_gene_refuses_norms_and_unknown_modules(pairs, tmp_path):
    aligned, degraded = pairs["llama"]
    with pytest.raises(SafeGeneError, match="--dense"):
        extract(aligned, [degraded], tmp_path / "g", modules=["norm"], progress=False)
    with pytest.raises(SafeGeneError, match="unknown module"):
        extract(aligned, [degraded], tmp_path / "g", modules=["qproj"], progress=False)
    only_q = extract(aligned, [degraded], tmp_path / "q", modules=["q_proj", "mlp"], progress=False)
    assert {m.module for m in load_gene(only_q).modules.values()} == {
        "q_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert not (tmp_path / "g").exists()


def test_nan_input_writes_nothing(pairs, tmp_path):
    aligned, _ = pairs["gemma"]
    model = em.build_model("gemma")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    bad = em.save(model, tmp_path / "bad")
    with pytest.raises(SafeGeneError, match="NaN or Inf.*up_proj"):
        extract(aligned, [bad], tmp_path / "gene", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_selection_and_coefficients_roundtrip(pairs, tmp_path):
    aligned, degraded = pairs["llama"]
    gene = extract(aligned, [degraded], tmp_path / "gene", rank=2, progress=False)
    out = save_gene(
        gene,
        tmp_path / "gene2",
        selection={"attn": [1], "mlp": [0, 1]},
        coefficients={"attn": {"1": 0.5}, "mlp": [0.25, 2]},
        scores={"layer_gain": [1, 2]},
        calibration={"shots": 8},
    )
    g = load_gene(out)
    assert g.selection == {"attn": [1], "mlp": [0, 1]} and g.scores == {"layer_gain": [1, 2]}
    assert g.meta["calibration"] == {"shots": 8}
    assert g.coefficient(0, "attn") == 0.0  # unselected
    assert g.coefficient(1, "attn") == 0.5 and g.coefficient(0, "mlp") == 0.25
    assert g.coefficient(1, "mlp") == 2.0
    assert load_gene(gene).selection is None and load_gene(gene).coefficient(0, "attn") == 1.0
    a, b = g.factors("model.layers.0.self_attn.q_proj.weight")
    a0, b0 = load_gene(gene).factors("model.layers.0.self_attn.q_proj.weight")
    assert torch.equal(a, a0) and torch.equal(b, b0)
    with pytest.raises(SafeGeneError, match="--force"):
        save_gene(gene, out)


def test_normalizers():
    assert normalize_coefficients(2) == 2.0
    assert normalize_coefficients([1, 0.5]) == {"0": 1.0, "1": 0.5}
    assert normalize_coefficients({3: 1}) == {"3": 1.0}
    assert normalize_coefficients({"attn": 0.5, "mlp": {"0": 1}}) == {
        "attn": 0.5,
        "mlp": {"0": 1.0},
    }
    assert normalize_selection([3, 1, 1]) == [1, 3]
    for bad in ({"bogus": 1}, [float("nan")], "x"):
        with pytest.raises(SafeGeneError):
            normalize_coefficients(bad)
    with pytest.raises(SafeGeneError, match="needs 3"):
        normalize_coefficients([1, 2], num_layers=3)
    with pytest.raises(SafeGeneError):
        normalize_selection({"bogus": [1]})


def test_pickle_inputs_refused_unless_allowed(pairs, tmp_path):
    """A pickle-only degraded model: refused by default; with allow_pickle read with
    weights_only=True and giving the same gene as its safetensors twin."""
    import shutil

    aligned, degraded = pairs["llama"]
    pk = tmp_path / "pickled"
    pk.mkdir()
    shutil.copy(degraded / "config.json", pk / "config.json")
    torch.save(em.state(degraded), pk / "pytorch_model.bin")
    with pytest.raises(SafeGeneError, match="--allow-pickle"):
        extract(aligned, [pk], tmp_path / "g", progress=False)
    assert not (tmp_path / "g").exists()
    ref = load_gene(extract(aligned, [degraded], tmp_path / "ref", rank=2, progress=False))
    got = load_gene(
        extract(aligned, [pk], tmp_path / "g", rank=2, progress=False, allow_pickle=True)
    )
    for t in ref.modules:
        assert torch.equal(got.delta(t), ref.delta(t))
    merged = apply_gene(tmp_path / "ref", pk, tmp_path / "m", progress=False, allow_pickle=True)
    assert torch.equal(
        em.state(merged)["model.norm.weight"], em.state(degraded)["model.norm.weight"]
    )


# --- the schema's versions, plain PEFT directories -------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import tinygene

    torch.set_num_threads(1)
    return tinygene.build(tmp_path_factory.mktemp("tiny"))


def test_version_1_reads_and_copies_are_version_2(tiny, tmp_path):
    with load_gene(tiny.gene) as g:  # tinygene writes a version-1 safegene.json
        assert g.meta["format_version"] == 1 and g.selection_info is None
    out = save_gene(tiny.gene, tmp_path / "g2", selection=[0, 2])
    meta = json.loads((out / "safegene.json").read_text())
    assert meta["format_version"] == 2 and meta["selection"] == [0, 2]
    assert meta["selection_info"] is None and meta["calibration"] is None
    meta["calibration"] = "fitted"
    (out / "safegene.json").write_text(json.dumps(meta))
    with pytest.raises(SafeGeneError, match="calibration must be an object"):
        load_gene(out)


def test_a_plain_peft_adapter_opens_and_saves_as_a_gene(tiny, tmp_path):
    from safegene.select import select

    with load_gene(tiny.adapter) as g:
        assert g.kind == "lora" and g.fingerprint is None and g.num_layers == 3
        assert len(g.modules) == 21 and g.selection is None
    rec = select(tiny.adapter, tiny.model, harmful=tiny.harmful, top_k=1, out=tmp_path / "sel")
    with load_gene(tmp_path / "sel") as g:  # saved: safegene.json without a family
        assert g.fingerprint is None and g.selection == [int(rec["groups"][0])]
    with pytest.raises(SafeGeneError, match="family mismatch"):  # no family: shapes are checked
        apply_gene(tmp_path / "sel", tiny.other, tmp_path / "out", progress=False)
    apply_gene(tmp_path / "sel", tiny.model, tmp_path / "merged", progress=False)
    assert not (tmp_path / "out").exists() and (tmp_path / "merged" / "config.json").is_file()
