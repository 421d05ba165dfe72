"""Issue 17: no input lost to `--force`, clean on SIGTERM/SIGHUP and races, bounded on hostile
files. Bad-input cases run through `test_bad_input.check_case` (one line, exit 2, inputs and an
existing `out` byte for byte intact, nothing left beside `out`)."""

from __future__ import annotations

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
    cli_main,
    fork_run,
    run_cli,
    temp_siblings,
    tree_bytes,
)
from test_bad_input import VALID_RECIPE, check_case


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


def _out_is_file_force(f, w, o):
    o.write_text("mine")
    argv = ["extract", "--aligned", f.aligned, "--degraded", f.degraded, "--out", o, "--force"]
    return argv, [f.aligned], ["not a directory"]


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
    "extract-force-out-is-a-file": _out_is_file_force,
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
    from hardening_util import save_sharded

    out = tmp_path / "out"
    if cmd == "extract":
        a = save_sharded(fam.aligned, tmp_path / "a_sh", "16KB")
        argv = ["extract", "--aligned", a, "--degraded", fam.degraded, "--dense"]
    else:
        t = save_sharded(fam.degraded, tmp_path / "t_sh", "16KB")
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


def test_disk_full_during_in_place_select_leaves_gene_intact(fam, tmp_path):
    """ENOSPC (here EFBIG under RLIMIT_FSIZE) while `select` rewrites the gene's safegene.json
    in place: one line, the gene byte for byte as it was, no temporary inside it."""
    import resource

    gene = C.copy(fam.gene, tmp_path / "gene")
    before = tree_bytes(gene)
    argv = ["select", "--gene", gene, "--model", fam.degraded, "--harmful", fam.harmful]
    argv += ["--benign", fam.benign, "--top-k", "1"]

    def child():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
        return cli_main([*map(str, argv)])()

    r = fork_run(child, timeout=120)
    assert r.code not in (0, None) and "Traceback" not in r.err, r.err
    assert tree_bytes(gene) == before
    assert sorted(p.name for p in gene.iterdir()) == sorted(before)


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
