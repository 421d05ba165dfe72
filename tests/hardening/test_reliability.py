"""Issue 17: no input lost to `--force`, clean on SIGTERM/SIGHUP and races, bounded on hostile
files. Bad-input cases run through `test_bad_input.check_case` (one line, exit 2, inputs and an
existing `out` byte for byte intact, nothing left beside `out`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import corrupt as C
import pytest
from hardening_util import (
    PYTHON,
    REPO,
    fork_run,
    jsonl_file,
    run_cli,
    snapshot,
    temp_siblings,
    tree_bytes,
)
from test_bad_input import VALID_RECIPE, _adapter_cfg, check_case


def _sharded(src: Path, dst: Path, shard: str = "16KB") -> Path:
    """`save_sharded` in a forked child: transformers' loading leaves worker threads behind, and
    a later forked CLI run that loads a model would wait on them forever."""
    from hardening_util import save_sharded

    r = fork_run(lambda: save_sharded(src, dst, shard) and 0, timeout=120)
    assert r.code == 0, r.err
    return dst


def _data_into(o: Path, *files: Path) -> list[Path]:
    """`o` made a directory holding copies of `files` (the user's data, next to --out)."""
    o.mkdir(exist_ok=True)
    return [Path(shutil.copy2(f, o / f.name)) for f in files]


def _calibrate_data_in_out(f, w, o):
    h, t = _data_into(o, f.harmful, f.task)
    argv = ["calibrate", "--gene", f.gene_sel, "--target", f.degraded, "--harmful", h]
    return [*argv, "--task", t, "--shots", "2", "--out", o, "--force"], [h, t], ["overlaps"]


def _select_data_in_out(f, w, o):
    (h,) = _data_into(o, f.harmful)
    argv = ["select", "--gene", f.gene, "--model", f.degraded, "--harmful", h]
    return [*argv, "--out", o, "--force"], [h], ["overlaps"]


def _eval_data_in_out(f, w, o):
    (h,) = _data_into(o, f.harmful)
    argv = ["eval", "--model", f.aligned, "--harmful", h, "--device", "cpu"]
    return [*argv, "--out", o, "--force"], [h], ["overlaps"]


def _compare_recipe_in_out(f, w, o):
    o.mkdir()
    r = o / "recipe.yaml"
    r.write_text(VALID_RECIPE.format(a=f.aligned, d=f.degraded, h=f.harmful, b=f.benign, t=f.task))
    return ["compare", r, "--out", o, "--force"], [r], ["overlaps"]


def _compare_data_in_out(f, w, o):
    h, b, t = _data_into(o, f.harmful, f.benign, f.task)
    r = w / "recipe.yaml"
    r.write_text(VALID_RECIPE.format(a=f.aligned, d=f.degraded, h=h, b=b, t=t))
    return ["compare", r, "--out", o, "--force"], [r, h, b, t], ["overlaps"]


def _hf_cache(f, w, name="model.safetensors"):
    """The Hugging Face cache layout: snap/FILE -> ../blobs/HASH, the real bytes in blobs/."""
    blobs, snap = w / "blobs", w / "snap"
    blobs.mkdir()
    snap.mkdir()
    for p in f.degraded.iterdir():
        shutil.copy2(p, blobs / p.name)
        (snap / p.name).symlink_to(Path("..") / "blobs" / p.name)
    return snap, blobs


def _apply_out_is_blobs(f, w, o):
    snap, blobs = _hf_cache(f, w)
    argv = ["apply", "--gene", f.gene, "--target", snap, "--out", blobs, "--force"]
    return argv, [blobs, snap], ["overlaps"]


def _extract_out_holds_hard_link(f, w, o):
    o.mkdir()
    os.link(f.aligned / "model.safetensors", o / "weights")
    argv = ["extract", "--aligned", f.aligned, "--degraded", f.degraded, "--rank", "2"]
    return [*argv, "--out", o, "--force"], [f.aligned], ["hard link"]


def _apply_coefs_in_out(f, w, o):
    o.mkdir()
    c = o / "coefs.json"
    c.write_text("[1.0, 1.0]")
    argv = ["apply", "--gene", f.gene, "--target", f.degraded, "--coefs", c]
    return [*argv, "--out", o, "--force"], [c], ["overlaps"]


def _data_symlink_into_out(f, w, o):
    (h,) = _data_into(o, f.harmful)
    link = w / "harmful.jsonl"
    link.symlink_to(h)
    argv = ["select", "--gene", f.gene, "--model", f.degraded, "--harmful", link]
    return [*argv, "--out", o, "--force"], [h], ["overlaps"]


def _out_dangling_symlink(f, w, o):
    o.symlink_to(w / "nowhere")
    argv = ["extract", "--aligned", f.aligned, "--degraded", f.degraded, "--out", o]
    return argv, [f.aligned], ["dangling"]


FORCE_CASES = {
    "calibrate-force-data-inside-out": _calibrate_data_in_out,
    "select-force-data-inside-out": _select_data_in_out,
    "eval-force-data-inside-out": _eval_data_in_out,
    "compare-force-recipe-inside-out": _compare_recipe_in_out,
    "compare-force-data-inside-out": _compare_data_in_out,
    "apply-force-out-is-hf-cache-blobs": _apply_out_is_blobs,
    "extract-force-out-holds-hard-link": _extract_out_holds_hard_link,
    "apply-force-coefs-inside-out": _apply_coefs_in_out,
    "select-force-data-symlink-into-out": _data_symlink_into_out,
    "extract-out-dangling-symlink": _out_dangling_symlink,
}


@pytest.mark.parametrize("case", sorted(FORCE_CASES))
def test_force_never_removes_an_input(case, fam, tmp_path):
    check_case(FORCE_CASES[case], case, fam, tmp_path, timeout=60)


# --- SIGTERM / SIGHUP ------------------------------------------------------------------------


def _signal_when_temp_appears(argv, out: Path, sig: int) -> subprocess.CompletedProcess:
    """A real `python -m safegene` run sent `sig` as soon as its temporary output appears."""
    p = subprocess.Popen(
        [PYTHON, "-m", "safegene", *map(str, argv), "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    t0 = time.monotonic()
    while p.poll() is None and not any(".tmp-" in n for n in temp_siblings(out)):
        assert time.monotonic() - t0 < 90, "no temporary output appeared"
        time.sleep(0.001)
    if p.poll() is None:
        p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, "", err)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("cmd", ["extract", "apply"])
def test_terminate_leaves_no_temporary(fam, tmp_path, sig, cmd):
    """`timeout`, `docker stop`, Slurm, Kubernetes (SIGTERM) and a closed terminal (SIGHUP) get
    the clean-up of Ctrl-C: no output, no temporary; a rerun succeeds."""
    out = tmp_path / "out"
    if cmd == "extract":
        a = _sharded(fam.aligned, tmp_path / "a_sh")
        argv = ["extract", "--aligned", a, "--degraded", fam.degraded, "--dense"]
    else:
        t = _sharded(fam.degraded, tmp_path / "t_sh")
        argv = ["apply", "--gene", fam.gene, "--target", t, "--shard-size", "8KB"]
    r = _signal_when_temp_appears(argv, out, sig)
    if r.returncode != 0:  # (it may have finished first on a fast machine)
        assert r.returncode == 128 + sig, (r.returncode, r.err)
        assert "interrupted" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not out.exists()
    assert temp_siblings(out) == [], temp_siblings(out)
    if out.exists():
        shutil.rmtree(out)
    assert run_cli(*argv, "--out", out).code == 0


def test_stale_temporaries_of_dead_processes_removed_before_work(fam, tmp_path):
    """Every command (here: one that fails after its output check) removes the `.NAME.tmp-PID`
    siblings of dead processes, as `zoo build` does."""
    out = tmp_path / "out"
    stale = tmp_path / f".out.tmp-{2**22 + 12345}"  # above any pid_max: a dead process
    stale.mkdir()
    (stale / "half.safetensors").write_bytes(b"x" * 10)
    r = run_cli("extract", "--aligned", fam.aligned, "--degraded", fam.layers3, "--out", out)
    assert r.code == 2, r.err
    assert temp_siblings(out) == []


# --- races -----------------------------------------------------------------------------------


def test_racing_extracts_exactly_one_writes(fam, tmp_path):
    """Two real `extract` runs to one --out at once: one writes (exit 0), the other is refused
    (exit 2); the output is complete and nothing is left beside it."""
    out = tmp_path / "gene"
    argv = ["extract", "--aligned", fam.aligned, "--degraded", fam.degraded, "--rank", "2"]
    for trial in range(2):
        procs = [
            subprocess.Popen(
                [PYTHON, "-m", "safegene", *map(str, argv), "--out", str(out)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            for _ in range(2)
        ]
        codes = sorted(p.wait(timeout=120) for p in procs)
        errs = [p.stderr.read() for p in procs]
        assert codes == [0, 2], (trial, codes, errs)
        assert (out / "safegene.json").is_file() and temp_siblings(out) == []
        shutil.rmtree(out)


def test_claimed_output_is_refused_before_work(fam, tmp_path):
    """A live writer of OUT (here this test process) makes another run stop at once, exit 2."""
    from safegene.io.atomic import claim, release

    out = tmp_path / "gene"
    claim(out)
    try:
        r = run_cli("extract", "--aligned", fam.aligned, "--degraded", fam.degraded, "--out", out)
    finally:
        release(out)
    assert r.code == 2 and "another process" in r.err, r.err
    assert not out.exists()


def test_in_place_select_claims_the_gene(fam, tmp_path):
    """Two `select`s updating one gene in place: while one runs, the other stops with one line
    (instead of both rewriting safegene.json, the last silently winning)."""
    from safegene.io.atomic import claim, release

    gene = C.copy(fam.gene, tmp_path / "gene")
    before = tree_bytes(gene)
    claim(gene / "safegene.json")
    try:
        r = run_cli("select", "--gene", gene, "--model", fam.degraded, "--harmful", fam.harmful)
    finally:
        release(gene / "safegene.json")
    assert r.code == 2 and "another process" in r.err, r.err
    assert tree_bytes(gene) == before


@pytest.mark.parametrize("method", ["resta", "interpolate", "safemerge", "safelora"])
def test_baselines_never_remove_an_input(fam, tmp_path, method):
    """The baselines' API checks every model it reads before `force` may remove anything."""
    from safegene.baselines import interpolate, resta, safelora, safemerge
    from safegene.errors import SafeGeneError

    out = tmp_path / "out"
    ref = C.copy(fam.aligned, out / "aligned")  # the aligned model lies inside --out
    before = snapshot(ref)
    call = {
        "resta": lambda: resta.resta(fam.degraded, ref, [fam.degraded], out, beta=0.5, force=True),
        "interpolate": lambda: interpolate.interpolate(fam.degraded, ref, out, t=0.5, force=True),
        "safemerge": lambda: safemerge.safemerge(
            fam.degraded, ref, fam.layers3, out, threshold=0.5, force=True
        ),
        "safelora": lambda: safelora.safelora(
            fam.degraded, ref, fam.layers3, out, threshold=0.5, force=True
        ),
    }[method]
    with pytest.raises(SafeGeneError, match="overlaps"):
        call()
    assert snapshot(ref) == before


def test_output_appearing_meanwhile_is_not_replaced(tmp_path):
    """Without --force the final rename never replaces what appeared while the run worked."""
    from safegene.errors import SafeGeneError
    from safegene.io.atomic import atomic_dir

    final = tmp_path / "out"
    with pytest.raises(SafeGeneError, match="appeared"), atomic_dir(final, replace=False) as tmp:
        (tmp / "mine").write_text("new")
        final.mkdir()  # someone else's output, empty (a plain rename would replace it)
    assert final.is_dir() and list(final.iterdir()) == []
    assert temp_siblings(final) == []


def test_concurrent_zoo_builds_one_line(tmp_path):
    """A second `zoo build` into a directory another one is building stops with one line."""
    from safegene.io.atomic import claim, release

    out = tmp_path / "zoo"
    claim(out)
    try:
        r = run_cli("zoo", "build", "--out", out, "--size", "micro", "--no-measure", timeout=60)
    finally:
        release(out)
    assert r.code == 2 and "another process" in r.err, r.err
    assert len(r.err_lines) == 1, r.err


# --- hostile files: bounded ------------------------------------------------------------------


def _fifo_in(d: Path, name: str) -> Path:
    (d / name).unlink(missing_ok=True)
    os.mkfifo(d / name)
    return d


def _loop_in(d: Path) -> Path:
    (d / "loop.json").symlink_to(d / "loop.json")
    return d


def _with_state_dict(src: Path, dst: Path, edit) -> Path:
    """A copy of the model `src` whose weights are `edit(state dict)` (saved by safetensors)."""
    from safetensors.torch import load_file, save_file

    d = C.copy(src, dst)
    sd = edit(load_file(str(d / "model.safetensors")))
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def _empty_q(shape):
    import torch

    def edit(sd):
        sd["model.layers.0.self_attn.q_proj.weight"] = torch.empty(shape)
        return sd

    return edit


def _header_edit(src: Path, dst: Path, edit) -> Path:
    """A copy of the model `src` whose safetensors header is `edit(header, data)` -> (header,
    data), written back by hand (so it may break the library's rules)."""
    d = C.copy(src, dst)
    f = d / "model.safetensors"
    hdr, data = C.header(f)
    hdr, data = edit(hdr, data)
    if isinstance(hdr, bytes):
        import struct

        hdr += b" " * (-len(hdr) % 8)
        f.write_bytes(struct.pack("<Q", len(hdr)) + hdr + data)
    else:
        C.write_with_header(f, hdr, data)
    return d


def _duplicate_key(hdr, data):
    import json as _json

    name = C.first_tensor(hdr)
    text = _json.dumps(hdr)
    dup = f'"{name}": {_json.dumps(hdr[name])}'
    return ("{" + dup + ", " + text[1:]).encode(), data


def _overlapping(hdr, data):
    a = C.first_tensor(hdr)
    b = C.first_tensor(hdr, "layers.0.self_attn.o_proj")
    assert hdr[a]["shape"] == hdr[b]["shape"]
    hdr[b]["data_offsets"] = list(hdr[a]["data_offsets"])  # b reads a's bytes
    return hdr, data


def _template(w: Path, text: str) -> Path:
    p = w / "template.jinja"
    p.write_text(text)
    return p


def _eval(f, w, o, *more, harmful=None):
    return [
        "eval",
        "--model",
        f.aligned,
        "--harmful",
        harmful or f.harmful,
        "--out",
        o,
        "--device",
        "cpu",
        "--max-new-tokens",
        "2",
        *more,
    ]


def _extract(a, d, o, *more):
    return ["extract", "--aligned", a, "--degraded", d, "--out", o, "--rank", "2", *more]


def _deep(n: int = 100_000) -> str:
    return "[" * n + "]" * n


def _lora_unknown_module(f, w):
    """A task LoRA that also adapts a module the model lacks (layer 7 of a 2-layer model)."""
    import torch
    from safetensors.torch import load_file, save_file

    d = C.copy(f.adapter, w / "ad")
    sd = load_file(str(d / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.7.self_attn.q_proj"
    sd[key + ".lora_A.weight"] = torch.zeros(2, 32)
    sd[key + ".lora_B.weight"] = torch.zeros(32, 2)
    save_file(sd, str(d / "adapter_model.safetensors"))
    return d


def _calibrate(f, o, adapter, *more):
    argv = ["calibrate", "--gene", f.gene_sel, "--model", f.aligned, "--adapter", adapter]
    argv += ["--harmful", f.harmful, "--task", f.task, "--shots", "2", "--steps", "1"]
    return [*argv, "--out", o, *more]


def _recipe_with(f, w, old: str, new: str) -> Path:
    r = w / "recipe.yaml"
    text = VALID_RECIPE.format(a=f.aligned, d=f.degraded, h=f.harmful, b=f.benign, t=f.task)
    assert old in text
    r.write_text(text.replace(old, new))
    return r


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def _pickle_model(f, w, payload) -> Path:
    import torch

    d = w / "pickled"
    d.mkdir()
    for p in f.aligned.iterdir():
        if p.suffix != ".safetensors":
            shutil.copy2(p, d / p.name)
    torch.save(payload, d / "pytorch_model.bin")
    return d


def _float8(f, w, name):
    import torch

    return _with_state_dict(
        getattr(f, name),
        w / name,
        lambda sd: {k: v.to(torch.float8_e4m3fn) for k, v in sd.items()},
    )


HOSTILE_CASES = {
    # FIFOs (and other special files) named like the files a command reads
    "extract-fifo-weights": lambda f, w, o: (
        _extract(_fifo_in(C.copy(f.aligned, w / "a"), "model.safetensors"), f.degraded, o),
        [f.degraded],
        ["regular file"],
    ),
    "eval-fifo-config": lambda f, w, o: (
        ["eval", "--model", _fifo_in(C.copy(f.aligned, w / "a"), "config.json")]
        + _eval(f, w, o)[3:],
        [f.harmful],
        ["regular file"],
    ),
    "select-fifo-data": lambda f, w, o: (
        ["select", "--gene", f.gene, "--model", f.degraded, "--harmful"]
        + [_fifo_in(w, "h.jsonl") / "h.jsonl", "--out", o],
        [f.degraded],
        ["regular file"],
    ),
    "apply-fifo-in-gene": lambda f, w, o: (
        ["apply", "--gene", _fifo_in(C.copy(f.gene, w / "g"), "adapter_model.safetensors")]
        + ["--model", f.degraded, "--out", o],
        [f.degraded],
        ["regular file"],
    ),
    "eval-data-is-dev-zero": lambda f, w, o: (
        _eval(f, w, o, harmful="/dev/zero"),
        [],
        ["regular file"],
    ),
    "eval-template-is-fifo": lambda f, w, o: (
        _eval(f, w, o, "--template", _fifo_in(w, "t.jinja") / "t.jinja"),
        [],
        ["regular file"],
    ),
    "compare-recipe-is-fifo": lambda f, w, o: (
        ["compare", _fifo_in(w, "r.yaml") / "r.yaml", "--out", o],
        [],
        ["regular file"],
    ),
    "extract-symlink-loop-in-model": lambda f, w, o: (
        _extract(_loop_in(C.copy(f.aligned, w / "a")), f.degraded, o),
        [f.degraded],
        ["cannot be read"],
    ),
    # declared sizes
    "extract-zero-size-tensor-huge-dim": lambda f, w, o: (
        _extract(
            _with_state_dict(f.aligned, w / "a", _empty_q((2**27, 0))),
            _with_state_dict(f.degraded, w / "d", _empty_q((2**27, 0))),
            o,
        ),
        [],
        ["no elements"],
    ),
    "extract-zero-size-tensor-absurd-dim": lambda f, w, o: (
        _extract(
            _with_state_dict(f.aligned, w / "a", _empty_q((2**40, 0))),
            _with_state_dict(f.degraded, w / "d", _empty_q((2**40, 0))),
            o,
        ),
        [],
        ["dimension"],
    ),
    # recipes
    "compare-yaml-alias-bomb": lambda f, w, o: (
        ["compare", _write(w / "r.yaml", ALIAS_BOMB), "--out", o],
        [w / "r.yaml"],
        ["alias"],
    ),
    "compare-recipe-too-large": lambda f, w, o: (
        ["compare", _write(w / "r.yaml", "# " + "x" * (2 * 1024 * 1024) + "\n"), "--out", o],
        [w / "r.yaml"],
        ["too large"],
    ),
    # chat templates
    "eval-template-nested-loops": lambda f, w, o: (
        _eval(
            f,
            w,
            o,
            "--template",
            _template(
                w,
                "{% for i in range(99999) %}{% for j in range(99999) %}{% for k in range(99999) %}"
                "{% endfor %}{% endfor %}{% endfor %}",
            ),
        ),
        [w / "template.jinja"],
        ["took more than"],
    ),
    "eval-template-huge-string": lambda f, w, o: (
        _eval(f, w, o, "--template", _template(w, "{{ 'x' * 4000000000 }}")),
        [w / "template.jinja"],
        ["too large"],
    ),
    "eval-template-huge-concat-loop": lambda f, w, o: (
        _eval(
            f,
            w,
            o,
            "--template",
            _template(
                w,
                "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}"
                "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
            ),
        ),
        [w / "template.jinja"],
        ["too large"],
    ),
    # prompts
    "eval-10mb-prompt": lambda f, w, o: (
        _eval(f, w, o, harmful=jsonl_file(w / "h.jsonl", [{"prompt": "bomb " * 2_000_000}])),
        [w / "h.jsonl"],
        ["characters long"],
    ),
    "select-lone-surrogate-prompt": lambda f, w, o: (
        ["select", "--gene", f.gene, "--model", f.degraded, "--harmful"]
        + [_write(w / "h.jsonl", '{"prompt": "bomb \\ud800 now"}\n'), "--out", o],
        [w / "h.jsonl"],
        ["surrogate"],
    ),
    # the gene directory is data too
    "apply-gene-meta-deeply-nested": lambda f, w, o: (
        ["apply", "--gene", _gene_meta(f, w, _deep()), "--model", f.degraded, "--out", o],
        [f.degraded],
        ["nested"],
    ),
}


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def _gene_meta(f, w, text: str) -> Path:
    g = C.copy(f.gene, w / "g")
    (g / "safegene.json").write_text(text)
    return g


@pytest.mark.parametrize("case", sorted(HOSTILE_CASES))
def test_hostile_file_is_bounded(case, fam, tmp_path):
    """Each within 40 s (most in one or two), one line and exit 2."""
    check_case(HOSTILE_CASES[case], case, fam, tmp_path, timeout=40)


# --- one validation for all readers ----------------------------------------------------------


READER_CASES = {
    "extract-header-duplicate-key": lambda f, w, o: (
        _extract(_header_edit(f.aligned, w / "a", _duplicate_key), f.degraded, o),
        [f.degraded],
        ["duplicate"],
    ),
    "extract-header-overlapping-ranges": lambda f, w, o: (
        _extract(_header_edit(f.aligned, w / "a", _overlapping), f.degraded, o),
        [f.degraded],
        ["byte range"],
    ),
    "extract-trailing-bytes": lambda f, w, o: (
        _extract(_header_edit(f.aligned, w / "a", lambda h, d: (h, d + b"\0" * 64)), f.degraded, o),
        [f.degraded],
        ["stray bytes"],
    ),
    "eval-trailing-bytes": lambda f, w, o: (
        ["eval", "--model", _header_edit(f.aligned, w / "a", lambda h, d: (h, d + b"\0" * 8))]
        + _eval(f, w, o)[3:],
        [f.harmful],
        ["stray bytes"],
    ),
    "apply-single-file-and-index": lambda f, w, o: (
        ["apply", "--gene", f.gene, "--model", _with_index(f, w), "--out", o],
        [],
        ["ambiguous"],
    ),
    "calibrate-dora-adapter": lambda f, w, o: (
        _calibrate(f, o, _adapter_cfg(f, w, use_dora=True)),
        [w / "ad"],
        ["dora"],
    ),
    "calibrate-adapter-unknown-module": lambda f, w, o: (
        _calibrate(f, o, _lora_unknown_module(f, w)),
        [w / "ad"],
        ["lacks"],
    ),
    "eval-adapter-unknown-module": lambda f, w, o: (
        [*_eval(f, w, o), "--adapter", _lora_unknown_module(f, w)],
        [w / "ad"],
        ["lacks"],
    ),
}


def _with_index(f, w) -> Path:
    """The degraded model saved in shards, plus (stale, different) single-file weights."""
    d = _sharded(f.degraded, w / "m")
    shutil.copy2(f.aligned / "model.safetensors", d / "model.safetensors")
    return d


@pytest.mark.parametrize("case", sorted(READER_CASES))
def test_every_reader_validates_alike(case, fam, tmp_path):
    check_case(READER_CASES[case], case, fam, tmp_path, timeout=60)


# --- typed errors: one line and exit 2, never "internal error" --------------------------------


TYPED_CASES = {
    "select-deeply-nested-jsonl": lambda f, w, o: (
        ["select", "--gene", f.gene, "--model", f.degraded, "--harmful"]
        + [_write(w / "h.jsonl", _deep() + "\n"), "--out", o],
        [w / "h.jsonl"],
        ["nested"],
    ),
    "eval-deeply-nested-json": lambda f, w, o: (
        _eval(f, w, o, harmful=_write(w / "h.json", _deep())),
        [w / "h.json"],
        ["nested"],
    ),
    "extract-deeply-nested-header": lambda f, w, o: (
        _extract(
            _header_edit(f.aligned, w / "a", lambda h, d: (_deep(5000).encode(), d)), f.degraded, o
        ),
        [f.degraded],
        ["nested"],
    ),
    "extract-deeply-nested-config": lambda f, w, o: (
        _extract(_config_text(f, w, _deep()), f.degraded, o),
        [f.degraded],
        ["nested"],
    ),
    "apply-deeply-nested-coefs": lambda f, w, o: (
        ["apply", "--gene", f.gene, "--model", f.degraded, "--coefs"]
        + [_write(w / "c.json", _deep()), "--out", o],
        [w / "c.json"],
        ["nested"],
    ),
    "compare-judge-unhashable": lambda f, w, o: (
        ["compare", _recipe_with(f, w, "judges: [keyword]", "judges: [{keyword: 1}]"), "--out", o],
        [w / "recipe.yaml"],
        ["judge"],
    ),
    "compare-unknown-device": lambda f, w, o: (
        ["compare", _recipe_with(f, w, "judges: [keyword]", "judges: [keyword]\ndevice: warp9")]
        + ["--out", o],
        [w / "recipe.yaml"],
        ["device"],
    ),
    "compare-device-not-a-string": lambda f, w, o: (
        ["compare", _recipe_with(f, w, "judges: [keyword]", "judges: [keyword]\ndevice: [1]")]
        + ["--out", o],
        [w / "recipe.yaml"],
        ["device"],
    ),
    "apply-adapter-rank-zero": lambda f, w, o: (
        ["apply", "--gene", f.gene, "--model", f.aligned, "--adapter", _adapter_cfg(f, w, r=0)]
        + ["--as", "combined", "--out", o],
        [w / "ad"],
        ["positive integer"],
    ),
    "calibrate-adapter-rank-string": lambda f, w, o: (
        _calibrate(f, o, _adapter_cfg(f, w, r="two")),
        [w / "ad"],
        ["positive integer"],
    ),
    "apply-shard-size-overflow": lambda f, w, o: (
        ["apply", "--gene", f.gene, "--model", f.degraded, "--shard-size", "1e400GB", "--out", o],
        [f.degraded],
        ["out of range"],
    ),
    "extract-config-layers-disagree": lambda f, w, o: (
        _extract(_config_with(f, w, "aligned", num_hidden_layers=3), f.degraded, o),
        [f.degraded],
        ["disagrees"],
    ),
    "extract-config-layers-not-int": lambda f, w, o: (
        _extract(_config_with(f, w, "aligned", num_hidden_layers="2"), f.degraded, o),
        [f.degraded],
        ["positive integer"],
    ),
    "eval-pickle-non-tensor-values": lambda f, w, o: (
        ["eval", "--model", _pickle_model(f, w, {"model.norm.weight": [1, 2]}), "--allow-pickle"]
        + _eval(f, w, o)[3:],
        [f.harmful],
        ["tensors"],
    ),
}


def _deep_header(hdr, data):
    return _deep(5000).encode(), data


def _config_with(f, w, name: str, **changes) -> Path:
    d = C.copy(getattr(f, name), w / name)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _config_text(f, w, text: str) -> Path:
    d = C.copy(f.aligned, w / "a")
    (d / "config.json").write_text(text)
    return d


@pytest.mark.parametrize("case", sorted(TYPED_CASES))
def test_bad_input_is_typed(case, fam, tmp_path):
    check_case(TYPED_CASES[case], case, fam, tmp_path, timeout=60)


def test_float8_weights_not_an_internal_error(fam, tmp_path):
    """A float8 target: merged (float32 arithmetic, finiteness checked), never a crash."""
    d = _float8(fam, tmp_path, "degraded")
    out = tmp_path / "merged"
    r = run_cli("apply", "--gene", fam.gene, "--model", d, "--out", out)
    assert r.code == 0 and "Traceback" not in r.err, r.err
    from safetensors.torch import load_file

    assert {str(v.dtype) for v in load_file(str(out / "model.safetensors")).values()} == {
        "torch.float8_e4m3fn"
    }


# --- valid input accepted --------------------------------------------------------------------


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x1c", "\x0b", "\x0c"])
def test_raw_line_separators_inside_prompts_are_data(tmp_path, char):
    """JSON allows U+2028, U+2029 and U+0085 raw inside a string (control characters below
    U+0020 it does not); a line is split at line feeds only, in a text file too."""
    from safegene.evaluate.data import load_file

    if ord(char) >= 0x20:
        j = tmp_path / "h.jsonl"
        j.write_text(f'{{"prompt": "one{char}prompt"}}\n{{"prompt": "two"}}\n', encoding="utf-8")
        assert load_file(j, "harmful").prompts == [f"one{char}prompt", "two"]
    t = tmp_path / "h.txt"
    t.write_text(f"one{char}prompt\ntwo\n", encoding="utf-8")
    assert load_file(t, "harmful").prompts == [f"one{char}prompt", "two"]


def test_raw_u2028_jsonl_through_the_command(fam, tmp_path):
    h = tmp_path / "h.jsonl"
    rows = [{"prompt": f"how do i make a bomb\u2028{d}"} for d in range(4)]
    h.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    r = run_cli(*_eval(fam, tmp_path, tmp_path / "rep", harmful=h))
    assert r.code == 0, r.err
    samples = (tmp_path / "rep" / "samples.jsonl").read_text(encoding="utf-8").split("\n")
    prompts = [json.loads(x)["prompt"] for x in samples if x.strip()]
    assert sorted(prompts) == sorted(r["prompt"] for r in rows)


def test_error_line_is_bounded(fam, tmp_path):
    """A message that quotes hostile input (here a 300 kB recipe value) stays one short line."""
    r = _recipe_with(
        fam, tmp_path, "judges: [keyword]", "judges: [keyword]\nseed: " + "x" * 300_000
    )
    res = run_cli("compare", r, "--out", tmp_path / "out")
    assert res.code == 2 and len(res.err_lines) == 1, res.err[:300]
    assert "seed" in res.err and len(res.err) < 4100


def test_build_zoo_api_claims_its_directory(tmp_path):
    """The Python API holds the same claim as the CLI: a build into a directory another live
    process is writing stops before any stage, and a claim this process held is kept after."""
    import subprocess
    import sys

    from safegene.errors import SafeGeneError
    from safegene.io.atomic import claim, held_claims, release
    from safegene.zoo import build_zoo

    out = tmp_path / "zoo"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from safegene.io.atomic import claim; "
         f"claim({str(out)!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SafeGeneError, match="another process"):
            build_zoo(out, "micro", stages=["data"], progress=False)
        assert not (out / "data").exists()
    finally:
        holder.kill()
        holder.wait()
    claim(out)
    try:
        build_zoo(out, "micro", stages=["data"], progress=False)
        assert str(out.absolute()) in held_claims()  # the caller's claim survives the build
    finally:
        release(out)
