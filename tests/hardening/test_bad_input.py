"""Bad input through the CLI: every case exits 2 with one clear line on stderr (no traceback),
leaves every input byte-identical and creates nothing at the output path (nor a temp sibling).

Each case builds its broken inputs under the test's tmp dir and returns the command line. The
commands run as `python -m safegene ...` in a separate process (see conftest.run_cli)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import corrupt as C
import pytest
import torch
from hardening_util import run_cli, snapshot, temp_siblings


def _pickle_only(fam, w):
    d = w / "pickled"
    d.mkdir()
    shutil.copy2(fam.aligned / "config.json", d / "config.json")
    from safetensors.torch import load_file

    torch.save(load_file(str(fam.aligned / "model.safetensors")), d / "pytorch_model.bin")
    return d


def _model_with(fam, w, fn, name="broken", src=None):
    d = C.copy(src or fam.degraded, w / name)
    fn(d / "model.safetensors")
    return d


def _gene_with(fam, w, edit_meta=None, edit_file=None, src=None):
    g = C.copy(src or fam.gene, w / "gene_x")
    if edit_meta:
        meta = json.loads((g / "safegene.json").read_text())
        edit_meta(meta)
        (g / "safegene.json").write_text(json.dumps(meta))
    if edit_file:
        edit_file(g / "adapter_model.safetensors")
    return g


def _write(w, name, data: bytes | str):
    p = w / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def _recipe(fam, w, body: str):
    p = w / "recipe.yaml"
    p.write_text(body)
    return p


VALID_RECIPE = """
family: {{aligned: {a}, degraded: [{d}]}}
data: {{harmful_test: {h}, benign_test: {b}, harmful_shots: {h}}}
tasks:
  - {{name: t, model: {d}, shots: {t}, test: {t}}}
judges: [keyword]
methods: {{interpolate: {{t: [0.5]}}}}
generation: {{max_new_tokens: 4, batch_size: 8}}
"""


def _valid_recipe_text(fam):
    return VALID_RECIPE.format(
        a=fam.aligned, d=fam.degraded, h=fam.harmful, b=fam.benign, t=fam.task
    )


# Each case: (fam, w, out) -> (argv, [inputs to hash], expected words in the message)
def extract_args(aligned, degraded, out, *more):
    return [
        "extract",
        "--aligned",
        aligned,
        "--degraded",
        *([degraded] if not isinstance(degraded, list) else degraded),
        "--out",
        out,
        "--rank",
        "2",
        *more,
    ]


def calibrate_args(f, out, *more, gene=None, target=None, harmful=None, task=None):
    """`calibrate` on the fixture's selected gene, degraded model, harmful and task shots, each
    replaceable, with `more` flags."""
    return [
        "calibrate",
        "--gene",
        gene or f.gene_sel,
        "--target",
        target or f.degraded,
        "--harmful",
        harmful or f.harmful,
        "--task",
        task or f.task,
        *more,
        "--out",
        out,
    ]


CASES = {
    # --- extract ---------------------------------------------------------------------------
    "extract-missing-aligned": lambda f, w, o: (
        extract_args(w / "nope", f.degraded, o),
        [f.degraded],
        ["not found"],
    ),
    "extract-non-model-dir": lambda f, w, o: (
        extract_args((w / "empty").mkdir() or w / "empty", f.degraded, o),
        [f.degraded],
        ["config.json"],
    ),
    "extract-pickle-only": lambda f, w, o: (
        extract_args(_pickle_only(f, w), f.degraded, o),
        [f.degraded, w / "pickled"],
        ["pickle"],
    ),
    "extract-other-layer-count": lambda f, w, o: (
        extract_args(f.aligned, f.layers3, o),
        [f.aligned, f.layers3],
        ["num_layers"],
    ),
    "extract-other-shape": lambda f, w, o: (
        extract_args(f.aligned, f.wide, o),
        [f.aligned, f.wide],
        ["mismatch"],
    ),
    "extract-other-family": lambda f, w, o: (
        extract_args(f.aligned, f.qwen, o),
        [f.aligned, f.qwen],
        ["model_type"],
    ),
    "extract-nan-in-degraded": lambda f, w, o: (
        extract_args(f.aligned, _model_with(f, w, C.poison), o),
        [f.aligned, w / "broken"],
        ["nan"],
    ),
    "extract-inf-in-aligned": lambda f, w, o: (
        extract_args(
            _model_with(f, w, lambda p: C.poison(p, float("inf")), src=f.aligned), f.degraded, o
        ),
        [w / "broken", f.degraded],
        ["inf"],
    ),
    "extract-existing-output": lambda f, w, o: (
        extract_args(f.aligned, f.degraded, (o.mkdir() or o)),
        [f.aligned, f.degraded, o],
        ["--force"],
    ),
    "extract-output-inside-input": lambda f, w, o: (
        extract_args(C.copy(f.aligned, w / "al"), f.degraded, w / "al" / "gene"),
        [w / "al", f.degraded],
        ["overlaps"],
    ),
    "extract-output-inside-input-via-symlink": lambda f, w, o: (
        extract_args(
            C.copy(f.aligned, w / "al"), f.degraded, _symlink(w / "link", w / "al") / "gene"
        ),
        [w / "al", f.degraded],
        ["overlaps"],
    ),
    "extract-truncated-safetensors": lambda f, w, o: (
        extract_args(f.aligned, _model_with(f, w, C.truncate), o),
        [f.aligned, w / "broken"],
        ["truncated"],
    ),
    "extract-header-offsets-lie": lambda f, w, o: (
        extract_args(f.aligned, _model_with(f, w, C.lie_offsets), o),
        [f.aligned, w / "broken"],
        ["outside"],
    ),
    "extract-header-shape-lies": lambda f, w, o: (  # both lie alike: the families still match
        extract_args(
            _model_with(f, w, C.lie_shape, "al", src=f.aligned), _model_with(f, w, C.lie_shape), o
        ),
        [w / "al", w / "broken"],
        ["lies"],
    ),
    "extract-header-length-huge": lambda f, w, o: (
        extract_args(f.aligned, _model_with(f, w, C.huge_header_length), o),
        [f.aligned, w / "broken"],
        ["safetensors"],
    ),
    "extract-header-not-object": lambda f, w, o: (
        extract_args(f.aligned, _model_with(f, w, C.header_not_object), o),
        [f.aligned, w / "broken"],
        ["safetensors"],
    ),
    "extract-index-points-outside": lambda f, w, o: (
        extract_args(f.aligned, _outside_index(f, w), o),
        [f.aligned, w / "sharded", f.degraded],
        ["outside"],
    ),
    "extract-bad-energy": lambda f, w, o: (
        [
            "extract",
            "--aligned",
            f.aligned,
            "--degraded",
            f.degraded,
            "--out",
            o,
            "--energy",
            "1.5",
        ],
        [f.aligned, f.degraded],
        ["energy"],
    ),
    "extract-unknown-module": lambda f, w, o: (
        extract_args(f.aligned, f.degraded, o, "--modules", "wormhole"),
        [f.aligned, f.degraded],
        ["wormhole"],
    ),
    # --- apply -----------------------------------------------------------------------------
    "apply-other-family": lambda f, w, o: (
        ["apply", "--gene", f.gene, "--target", f.qwen, "--out", o],
        [f.gene, f.qwen],
        ["model_type"],
    ),
    "apply-other-layer-count": lambda f, w, o: (
        ["apply", "--gene", f.gene, "--target", f.layers3, "--out", o],
        [f.gene, f.layers3],
        ["num_layers"],
    ),
    "apply-other-shape": lambda f, w, o: (
        ["apply", "--gene", f.gene, "--target", f.wide, "--out", o],
        [f.gene, f.wide],
        ["shape"],
    ),
    "apply-nan-in-gene": lambda f, w, o: (
        [
            "apply",
            "--gene",
            _gene_with(f, w, edit_file=lambda p: C.poison(p, contains="lora_B")),
            "--target",
            f.degraded,
            "--out",
            o,
        ],
        [w / "gene_x", f.degraded],
        ["nan"],
    ),
    "apply-nan-in-target": lambda f, w, o: (
        ["apply", "--gene", f.gene, "--target", _model_with(f, w, C.poison), "--out", o],
        [f.gene, w / "broken"],
        ["nan"],
    ),
    "apply-gene-factor-shape-lies": lambda f, w, o: (
        [
            "apply",
            "--gene",
            _gene_with(f, w, edit_file=_narrow_factor),
            "--target",
            f.degraded,
            "--out",
            o,
            "--as",
            "merged",
        ],
        [w / "gene_x", f.degraded],
        ["factors"],
    ),
    "apply-gene-meta-malformed": lambda f, w, o: (
        [
            "apply",
            "--gene",
            _gene_with(f, w, edit_meta=lambda m: m.pop("modules")),
            "--target",
            f.degraded,
            "--out",
            o,
        ],
        [w / "gene_x", f.degraded],
        ["safegene.json"],
    ),
    "apply-gene-meta-not-json": lambda f, w, o: (
        [
            "apply",
            "--gene",
            _gene_with(f, w, edit_meta=None) and _break_json(w / "gene_x"),
            "--target",
            f.degraded,
            "--out",
            o,
        ],
        [w / "gene_x", f.degraded],
        ["safegene.json"],
    ),
    "apply-gene-selection-malformed": lambda f, w, o: (
        [
            "apply",
            "--gene",
            _gene_with(f, w, edit_meta=lambda m: m.update(selection="all of them")),
            "--target",
            f.degraded,
            "--out",
            o,
        ],
        [w / "gene_x", f.degraded],
        ["selection"],
    ),
    "apply-gene-coefficients-nan": lambda f, w, o: (
        [
            "apply",
            "--gene",
            _gene_with(f, w, edit_meta=lambda m: m.update(coefficients={"0": float("nan")})),
            "--target",
            f.degraded,
            "--out",
            o,
        ],
        [w / "gene_x", f.degraded],
        ["not finite"],
    ),
    "select-gene-layer-not-a-number": lambda f, w, o: (
        [
            "select",
            "--gene",
            _gene_with(
                f, w, edit_meta=lambda m: [v.update(layer="x") for v in m["modules"].values()]
            ),
            "--model",
            f.degraded,
            "--harmful",
            f.harmful,
            "--out",
            o,
        ],
        [w / "gene_x", f.degraded],
        ["malformed"],
    ),
    "select-gene-meta-not-an-object": lambda f, w, o: (
        [
            "select",
            "--gene",
            _gene_with(f, w) and _meta_text(w / "gene_x", "[1, 2]"),
            "--model",
            f.degraded,
            "--harmful",
            f.harmful,
            "--out",
            o,
        ],
        [w / "gene_x", f.degraded],
        ["safegene.json"],
    ),
    "apply-unknown-as": lambda f, w, o: (
        ["apply", "--gene", f.gene, "--target", f.degraded, "--out", o, "--as", "tarball"],
        [f.gene, f.degraded],
        ["--as"],
    ),
    "apply-bad-coefs-file": lambda f, w, o: (
        [
            "apply",
            "--gene",
            f.gene,
            "--target",
            f.degraded,
            "--out",
            o,
            "--coefs",
            _write(w, "c.json", "{0: 1.0,"),
        ],
        [f.gene, f.degraded, w / "c.json"],
        ["coefficients"],
    ),
    "apply-nan-coefs": lambda f, w, o: (
        [
            "apply",
            "--gene",
            f.gene,
            "--target",
            f.degraded,
            "--out",
            o,
            "--coefs",
            _write(w, "c.json", '{"0": NaN}'),
        ],
        [f.gene, f.degraded, w / "c.json"],
        ["finite"],
    ),
    "apply-huge-coef-overflows": lambda f, w, o: (
        ["apply", "--gene", f.gene, "--target", _half(f, w), "--out", o, "--coef", "1e38"],
        [f.gene, w / "half"],
        ["nan or inf"],
    ),
    "apply-bad-shard-size": lambda f, w, o: (
        ["apply", "--gene", f.gene, "--target", f.degraded, "--out", o, "--shard-size", "lots"],
        [f.gene, f.degraded],
        ["size"],
    ),
    "apply-adapter-index-outside": lambda f, w, o: (
        [
            "apply",
            "--gene",
            f.gene,
            "--target",
            f.aligned,
            "--adapter",
            _adapter_outside(f, w),
            "--out",
            o,
            "--as",
            "combined",
        ],
        [f.gene, f.aligned, w / "ad"],
        ["outside"],
    ),
    "apply-adapter-dora": lambda f, w, o: (
        [
            "apply",
            "--gene",
            f.gene,
            "--target",
            f.aligned,
            "--adapter",
            _adapter_cfg(f, w, use_dora=True),
            "--out",
            o,
            "--as",
            "combined",
        ],
        [f.gene, f.aligned, w / "ad"],
        ["dora"],
    ),
    "apply-output-is-the-target": lambda f, w, o: (
        [
            "apply",
            "--gene",
            f.gene,
            "--target",
            C.copy(f.degraded, w / "t"),
            "--out",
            w / "t",
            "--force",
        ],
        [f.gene, w / "t"],
        ["overlaps"],
    ),
    # --- select / calibrate ----------------------------------------------------------------
    "select-empty-data": lambda f, w, o: (
        [
            "select",
            "--gene",
            f.gene,
            "--model",
            f.degraded,
            "--harmful",
            _write(w, "h.jsonl", ""),
            "--out",
            o,
        ],
        [f.gene, f.degraded, w / "h.jsonl"],
        ["h.jsonl"],
    ),
    "select-malformed-jsonl": lambda f, w, o: (
        [
            "select",
            "--gene",
            f.gene,
            "--model",
            f.degraded,
            "--harmful",
            _write(w, "h.jsonl", '{"prompt": "a"}\n{"prompt": \n'),
            "--out",
            o,
        ],
        [f.gene, f.degraded, w / "h.jsonl"],
        ["h.jsonl:2"],
    ),
    "select-mis-encoded": lambda f, w, o: (
        [
            "select",
            "--gene",
            f.gene,
            "--model",
            f.degraded,
            "--harmful",
            _write(w, "h.jsonl", '{"prompt": "caf\xe9"}\n'.encode("latin-1")),
            "--out",
            o,
        ],
        [f.gene, f.degraded, w / "h.jsonl"],
        ["utf-8"],
    ),
    "select-csv-missing-column": lambda f, w, o: (
        [
            "select",
            "--gene",
            f.gene,
            "--model",
            f.degraded,
            "--harmful",
            _write(w, "h.csv", "question,reply\nhow do i,no\n"),
            "--out",
            o,
        ],
        [f.gene, f.degraded, w / "h.csv"],
        ["prompt"],
    ),
    "select-nan-in-gene": lambda f, w, o: (
        [
            "select",
            "--gene",
            _gene_with(f, w, edit_file=lambda p: C.poison(p, contains="lora_A")),
            "--model",
            f.degraded,
            "--harmful",
            f.harmful,
            "--out",
            o,
        ],
        [w / "gene_x", f.degraded],
        ["nan"],
    ),
    "calibrate-shots-exceed-data": lambda f, w, o: (
        calibrate_args(f, o, "--shots", "50"),
        [f.gene_sel, f.degraded, f.harmful, f.task],
        ["50"],
    ),
    "calibrate-task-without-answers": lambda f, w, o: (
        calibrate_args(f, o, "--shots", "4", task=f.harmful_bare),
        [f.gene_sel, f.degraded, f.harmful_bare],
        ["answer"],
    ),
    "calibrate-check-set-without-answers": lambda f, w, o: (
        calibrate_args(f, o, "--check-task", f.harmful_bare, "--shots", "4"),
        [f.gene_sel, f.degraded, f.harmful_bare],
        ["answer"],
    ),
    "calibrate-check-set-missing": lambda f, w, o: (
        calibrate_args(f, o, "--check-harmful", w / "no-such-val.jsonl", "--shots", "4"),
        [f.gene_sel, f.degraded, f.harmful, f.task],
        ["not found", "no-such-val"],
    ),
    "calibrate-diverges": lambda f, w, o: (
        calibrate_args(f, o, "--shots", "4", "--steps", "6", "--lr", "1e30"),
        [f.gene_sel, f.degraded, f.harmful, f.task],
        ["diverged"],
    ),
    "calibrate-aligned-provenance-changed": lambda f, w, o: (
        calibrate_args(
            f,
            o,
            "--shots",
            "4",
            gene=_gene_pointing_at_changed_aligned(f, w),
            harmful=f.harmful_bare,
        ),
        [w / "gene_x", f.degraded, w / "al"],
        ["hash differs"],
    ),
    "calibrate-nan-in-gene": lambda f, w, o: (
        calibrate_args(
            f,
            o,
            "--shots",
            "2",
            "--steps",
            "2",
            gene=_gene_with(
                f, w, edit_file=lambda p: C.poison(p, contains="lora_B"), src=f.gene_sel
            ),
        ),
        [w / "gene_x", f.degraded],
        ["nan"],
    ),
    "apply-dense-gene-as-adapter": lambda f, w, o: (
        [
            "apply",
            "--gene",
            _dense_gene(f, w),
            "--target",
            f.degraded,
            "--as",
            "adapter",
            "--out",
            o,
        ],
        [w / "dense", f.degraded],
        ["dense"],
    ),
    "calibrate-zero-steps": lambda f, w, o: (
        calibrate_args(f, o, "--shots", "2", "--steps", "0"),
        [f.gene_sel, f.degraded],
        ["--steps"],
    ),
    "calibrate-zero-rollback-rank": lambda f, w, o: (
        calibrate_args(f, o, "--shots", "2", "--rollback", "--rollback-rank", "0"),
        [f.gene_sel, f.degraded],
        ["--rollback-rank"],
    ),
    "calibrate-rollback-of-a-dense-gene": lambda f, w, o: (
        calibrate_args(f, o, "--shots", "2", "--rollback", "--all-layers", gene=_dense_gene(f, w)),
        [w / "dense", f.degraded],
        ["LoRA gene"],
    ),
    "calibrate-nan-lr": lambda f, w, o: (
        calibrate_args(f, o, "--shots", "2", "--lr", "nan"),
        [f.gene_sel, f.degraded],
        ["--lr"],
    ),
    "apply-coefs-not-numbers": lambda f, w, o: (
        [
            "apply",
            "--gene",
            f.gene,
            "--target",
            f.degraded,
            "--out",
            o,
            "--coefs",
            _write(w, "c.json", '{"0": "a lot"}'),
        ],
        [f.gene, f.degraded, w / "c.json"],
        ["number"],
    ),
    "extract-unknown-device": lambda f, w, o: (
        extract_args(f.aligned, f.degraded, o, "--device", "tpu9"),
        [f.aligned, f.degraded],
        ["--device"],
    ),
    "calibrate-output-is-the-target": lambda f, w, o: (
        calibrate_args(f, w / "t", "--shots", "2", "--force", target=C.copy(f.degraded, w / "t")),
        [f.gene_sel, w / "t"],
        ["overlaps"],
    ),
    "select-output-inside-the-model": lambda f, w, o: (
        [
            "select",
            "--gene",
            f.gene,
            "--model",
            C.copy(f.degraded, w / "m"),
            "--harmful",
            f.harmful,
            "--out",
            w / "m" / "gene",
        ],
        [f.gene, w / "m"],
        ["overlaps"],
    ),
    # --- eval ------------------------------------------------------------------------------
    "eval-unknown-judge": lambda f, w, o: (
        [
            "eval",
            "--model",
            f.aligned,
            "--harmful",
            f.harmful,
            "--judge",
            "oracle",
            "--out",
            o,
            "--device",
            "cpu",
        ],
        [f.aligned, f.harmful],
        ["oracle"],
    ),
    "eval-pickle-without-flag": lambda f, w, o: (
        [
            "eval",
            "--model",
            _pickle_only(f, w),
            "--harmful",
            f.harmful,
            "--out",
            o,
            "--device",
            "cpu",
        ],
        [w / "pickled", f.harmful],
        ["--allow-pickle"],
    ),
    "eval-data-missing": lambda f, w, o: (
        [
            "eval",
            "--model",
            f.aligned,
            "--harmful",
            w / "none.jsonl",
            "--out",
            o,
            "--device",
            "cpu",
        ],
        [f.aligned],
        ["not found"],
    ),
    "eval-task-csv-missing-answer": lambda f, w, o: (
        [
            "eval",
            "--model",
            f.aligned,
            "--task",
            _write(w, "t.csv", "prompt\nwhat is 1\n"),
            "--out",
            o,
            "--device",
            "cpu",
        ],
        [f.aligned, w / "t.csv"],
        ["answer"],
    ),
    # --- compare / zoo ---------------------------------------------------------------------
    "compare-recipe-not-yaml": lambda f, w, o: (
        ["compare", _recipe(f, w, "family: [unclosed\n  - x: {"), "--out", o],
        [w / "recipe.yaml"],
        ["recipe"],
    ),
    "compare-recipe-unknown-method": lambda f, w, o: (
        [
            "compare",
            _recipe(f, w, _valid_recipe_text(f).replace("interpolate:", "alchemy:")),
            "--out",
            o,
        ],
        [w / "recipe.yaml", f.aligned, f.degraded],
        ["alchemy"],
    ),
    "compare-recipe-missing-model": lambda f, w, o: (
        [
            "compare",
            _recipe(f, w, _valid_recipe_text(f).replace(str(f.degraded), str(w / "gone"))),
            "--out",
            o,
        ],
        [w / "recipe.yaml", f.aligned],
        ["gone"],
    ),
    "compare-antidote-ratio-out-of-range": lambda f, w, o: (
        [
            "compare",
            _recipe(
                f,
                w,
                _valid_recipe_text(f).replace(
                    "interpolate: {t: [0.5]}", "antidote: {ratio: [1.5]}"
                ),
            ),
            "--out",
            o,
        ],
        [w / "recipe.yaml", f.aligned, f.degraded, f.harmful],
        ["methods.antidote.ratio", "(0, 1)"],
    ),
    "compare-antidote-empty-realignment-set": lambda f, w, o: (
        [
            "compare",
            _recipe(
                f,
                w,
                _valid_recipe_text(f)
                .replace(
                    f"harmful_shots: {f.harmful}", f"harmful_shots: {_write(w, 'e.jsonl', '')}"
                )
                .replace("interpolate: {t: [0.5]}", "antidote: {ratio: [0.1]}"),
            ),
            "--out",
            o,
        ],
        [w / "recipe.yaml", w / "e.jsonl", f.aligned, f.degraded],
        ["data.harmful_shots", "empty", "re-alignment"],
    ),
    "eval-output-is-the-model": lambda f, w, o: (
        [
            "eval",
            "--model",
            C.copy(f.aligned, w / "m"),
            "--harmful",
            f.harmful,
            "--out",
            w / "m",
            "--force",
            "--device",
            "cpu",
        ],
        [w / "m", f.harmful],
        ["overlaps"],
    ),
    "eval-unknown-device": lambda f, w, o: (
        ["eval", "--model", f.aligned, "--harmful", f.harmful, "--out", o, "--device", "tpu9"],
        [f.aligned, f.harmful],
        ["--device"],
    ),
    "compare-output-is-a-task-model": lambda f, w, o: (
        [
            "compare",
            _recipe(
                f,
                w,
                _valid_recipe_text(f).replace(f"model: {f.degraded}", f"model: {w / 't'}")
                if C.copy(f.degraded, w / "t")
                else "",
            ),
            "--out",
            w / "t",
            "--force",
        ],
        [w / "recipe.yaml", w / "t"],
        ["overlaps"],
    ),
    "zoo-build-bad-threads": lambda f, w, o: (
        ["zoo", "build", "--out", o, "--size", "micro", "--threads", "0"],
        [],
        ["--threads"],
    ),
    "zoo-build-into-a-model": lambda f, w, o: (
        ["zoo", "build", "--out", C.copy(f.aligned, w / "m"), "--size", "micro"],
        [w / "m"],
        ["no zoo"],
    ),
    "zoo-build-unknown-size": lambda f, w, o: (
        ["zoo", "build", "--out", o, "--size", "huge"],
        [],
        ["huge"],
    ),
    "zoo-build-other-recipe-in-out": lambda f, w, o: (
        ["zoo", "build", "--out", _other_zoo(o), "--size", "micro"],
        [o],
        ["another recipe"],
    ),
}


def _symlink(link, target):
    link.symlink_to(target)
    return link


def _dense_gene(f, w):
    from safegene.gene import extract

    return extract(f.aligned, [f.degraded], w / "dense", dense=True, progress=False)


def _outside_index(f, w):
    """A model whose shard index names a file outside its directory (../degraded/...)."""
    d = C.copy(f.aligned, w / "sharded")
    (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
    hdr, _ = C.header(d / "model-00001-of-00001.safetensors")
    wm = {k: "model-00001-of-00001.safetensors" for k in hdr if k != "__metadata__"}
    wm[C.first_tensor(hdr)] = f"../{f.degraded.name}/model.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    # the other file must be reachable for the trap to matter
    shutil.copytree(f.degraded, w / f.degraded.name, dirs_exist_ok=True)
    return d


def _adapter_outside(f, w):
    d = C.copy(f.adapter, w / "ad")
    (d / "adapter_model.safetensors").rename(w / "stolen.safetensors")
    hdr, _ = C.header(w / "stolen.safetensors")
    wm = {k: "../stolen.safetensors" for k in hdr if k != "__metadata__"}
    (d / "adapter_model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    return d


def _adapter_cfg(f, w, **changes):
    d = C.copy(f.adapter, w / "ad")
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(changes)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


def _narrow_factor(path):
    """One lora_A whose shape does not fit the module that safegene.json says it belongs to."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path))
    key = next(k for k in sd if k.endswith("layers.0.self_attn.q_proj.lora_A.weight"))
    sd[key] = sd[key][:, :16].contiguous()
    save_file(sd, str(path))


def _meta_text(g, text):
    (g / "safegene.json").write_text(text)
    return g


def _break_json(g):
    (g / "safegene.json").write_text('{"format": "safegene-gene", ')
    return g


def _half(f, w):
    """The degraded model in float16 (so that a large α overflows on the cast back)."""
    from safetensors.torch import load_file, save_file

    d = C.copy(f.degraded, w / "half")
    sd = load_file(str(d / "model.safetensors"))
    save_file(
        {k: v.half() for k, v in sd.items()},
        str(d / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return d


def _gene_pointing_at_changed_aligned(f, w):
    """A gene whose recorded aligned source (path + hash) has since been replaced by another
    model."""
    al = C.copy(f.degraded, w / "al")  # different weights at the recorded path
    g = _gene_with(
        f, w, edit_meta=lambda m: m["sources"]["aligned"].update(path=str(al)), src=f.gene_sel
    )
    return g


def _other_zoo(o: Path) -> Path:
    o.mkdir()
    (o / "recipe.json").write_text(json.dumps({"seed": 99, "recipe": {"name": "else"}}))
    return o


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, fam, tmp_path):
    check_case(CASES[case], case, fam, tmp_path)


def check_case(make, case: str, fam, tmp_path, timeout: float = 120) -> None:
    """Run one case: one line on stderr, exit 2, within `timeout`; its inputs (and an `out`
    that existed) byte for byte as they were, no output and no temporary left."""
    w = tmp_path / "w"
    w.mkdir()
    out = tmp_path / "out"
    argv, inputs, words = make(fam, w, out)
    existed = out.exists()
    inputs = (
        [fam.gene, fam.gene_sel, *inputs]
        if case.startswith(("apply", "select", "calibrate"))
        else inputs
    )
    before = snapshot(*inputs, *([out] if existed else []))
    r = run_cli(*argv, timeout=timeout)
    assert not r.timed_out, f"{case}: hung"
    assert r.code == 2, f"{case}: exit {r.code}\nstderr: {r.err[-3000:]}"
    lines = r.err_lines
    assert "Traceback" not in r.err, r.err
    # (compare reports every problem of a recipe: on the one line, separated by "; ")
    assert len(lines) == 1 and lines[0].startswith("safegene") and "error: " in lines[0], (
        f"{case}: {r.err}"
    )
    msg = r.err.lower()
    for word in words:
        assert word.lower() in msg, f"{case}: {word!r} not in {r.err!r}"
    assert snapshot(*inputs, *([out] if existed else [])) == before, f"{case}: an input changed"
    if not existed:
        assert not out.exists(), f"{case}: created {out}"
    assert temp_siblings(out) == [], f"{case}: left {temp_siblings(out)}"


def test_enough_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize(
    "case", ["extract-header-offsets-lie", "apply-other-family", "eval-unknown-judge"]
)
def test_real_interpreter(case, fam, tmp_path):
    """A few cases through a fresh `python -m safegene` interpreter (the rest are forked)."""
    w = tmp_path / "w"
    w.mkdir()
    out = tmp_path / "out"
    argv, inputs, words = CASES[case](fam, w, out)
    before = snapshot(*inputs)
    r = run_cli(*argv, real=True, timeout=120)
    assert r.code == 2 and len(r.err_lines) == 1 and "Traceback" not in r.err, r.err
    assert snapshot(*inputs) == before and not out.exists() and temp_siblings(out) == []
