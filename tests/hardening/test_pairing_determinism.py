"""Wrong pairings fail before anything is written; the provenance check warns or (--strict)
refuses; same inputs and seed give the same bytes (extract) and coefficients (calibrate)."""

from __future__ import annotations

import json
import shutil

import pytest
from hardening_util import run_cli, snapshot, temp_siblings, tree_bytes


@pytest.mark.parametrize("form", ["merged", "adapter"])
@pytest.mark.parametrize(
    "target,words", [("qwen", "model_type"), ("layers3", "num_layers"), ("wide", "shape")]
)
def test_gene_on_another_model_fails_before_writing(fam, tmp_path, form, target, words):
    from safegene.apply import apply_gene
    from safegene.errors import SafeGeneError

    out = tmp_path / "out"
    t = getattr(fam, target)
    before = snapshot(t, fam.gene)
    with pytest.raises(SafeGeneError, match="mismatch") as exc:
        apply_gene(fam.gene, t, out, form=form)
    assert words in str(exc.value)
    assert not out.exists() and temp_siblings(out) == [] and snapshot(t, fam.gene) == before


def _lora_on(fam, base_dir, tmp_path):
    """The task LoRA, with its config naming `base_dir` as its base."""
    ad = shutil.copytree(fam.adapter, tmp_path / "ad")
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    return ad


def test_provenance_matching_base_is_silent(fam, tmp_path):
    r = run_cli(
        "apply",
        "--gene",
        fam.gene,
        "--target",
        fam.aligned,
        "--adapter",
        fam.adapter,
        "--as",
        "combined",
        "--out",
        tmp_path / "out",
        "--strict",
    )
    assert r.code == 0, r.err
    assert "warning" not in r.err


@pytest.mark.parametrize("cmd", ["apply", "calibrate"])
def test_provenance_other_base_warns_or_refuses_with_strict(fam, tmp_path, cmd):
    other = shutil.copytree(fam.degraded, tmp_path / "not-aligned")  # same family, other weights
    ad = _lora_on(fam, other, tmp_path)
    if cmd == "apply":
        argv = ["apply", "--gene", fam.gene, "--target", other, "--adapter", ad, "--as", "combined"]
    else:
        argv = [
            "calibrate",
            "--gene",
            fam.gene_sel,
            "--target",
            other,
            "--adapter",
            ad,
            "--harmful",
            fam.harmful,
            "--task",
            fam.task,
            "--shots",
            "2",
            "--steps",
            "1",
        ]
    inputs = [other, ad, fam.gene, fam.gene_sel]
    before = snapshot(*inputs)
    out = tmp_path / "strict"
    r = run_cli(*argv, "--out", out, "--strict")
    assert r.code == 2 and len(r.err_lines) == 1 and "hashes differ" in r.err, r.err
    assert not out.exists() and temp_siblings(out) == []
    out = tmp_path / "lenient"
    r = run_cli(*argv, "--out", out)
    assert r.code == 0, r.err
    warn = [line for line in r.err_lines if line.startswith("safegene: warning")]
    assert len(warn) == 1 and "hashes differ" in warn[0], r.err
    assert out.exists()
    assert snapshot(*inputs) == before


def test_extract_is_byte_identical(fam, tmp_path):
    for extra in ([], ["--dense"]):
        outs = []
        for i in range(2):  # two separate processes
            out = tmp_path / f"g{len(extra)}-{i}"
            r = (
                run_cli(
                    "extract",
                    "--aligned",
                    fam.aligned,
                    "--degraded",
                    fam.degraded,
                    "--rank",
                    "3",
                    "--seed",
                    "7",
                    "--out",
                    out,
                    *extra,
                )
                if not extra
                else run_cli(
                    "extract",
                    "--aligned",
                    fam.aligned,
                    "--degraded",
                    fam.degraded,
                    "--out",
                    out,
                    *extra,
                )
            )
            assert r.code == 0, r.err
            outs.append(tree_bytes(out))
        assert outs[0] == outs[1]


def test_randomized_svd_is_seeded():
    """The randomized SVD path (matrices above EXACT_SVD_MAX_DIM) gives the same factors per seed,
    whatever the global RNG state."""
    import torch

    from safegene.gene import compress

    g = torch.Generator().manual_seed(0)
    delta = torch.randn(600, 520, generator=g)
    torch.manual_seed(1)
    a = compress(delta, rank=8, seed=3)
    torch.manual_seed(2)
    b = compress(delta, rank=8, seed=3)
    assert a.method == "randomized_svd"
    assert torch.equal(a.a, b.a) and torch.equal(a.b, b.b)


def test_calibration_coefficients_identical(fam, tmp_path):
    metas = []
    for i in range(2):
        out = tmp_path / f"cal{i}"
        r = run_cli(
            "calibrate",
            "--gene",
            fam.gene_sel,
            "--target",
            fam.degraded,
            "--harmful",
            fam.harmful,
            "--task",
            fam.task,
            "--shots",
            "4",
            "--steps",
            "4",
            "--seed",
            "3",
            "--out",
            out,
        )
        assert r.code == 0, r.err
        meta = json.loads((out / "safegene.json").read_text())
        metas.append(meta)
        assert (out / "adapter_model.safetensors").read_bytes() == (
            fam.gene_sel / "adapter_model.safetensors"
        ).read_bytes()
    assert metas[0]["coefficients"] == metas[1]["coefficients"]
    assert (
        metas[0]["calibration"]["fit"]["loss_curve"] == metas[1]["calibration"]["fit"]["loss_curve"]
    )
