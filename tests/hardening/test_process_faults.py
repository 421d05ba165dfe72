"""Process faults: `kill -9` at many points during extract, apply --as merged and zoo build, and
a disk that fills up during a write.

Kill points are deterministic: the command runs in a forked child (the CLI's `__main__`, as in
the other tests) whose file operations are counted — every open for writing, mkdir, rename,
replace, fsync, remove, and every tensor handed to the safetensors writer — and the child
SIGKILLs itself when the count reaches N (test code only; nothing in the package knows). A first
uninterrupted, counted run gives the total; the kill points are spread over it. A few more kills
come from outside, after a delay, against a real `python -m safegene` process.

After each kill: nothing (or only a complete output) at the final path. Then a rerun without a
kill must succeed and give the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hardening_util import (
    PYTHON,
    REPO,
    cli_main,
    fork_run,
    run_cli,
    save_sharded,
    snapshot,
    temp_siblings,
    tree_bytes,
)


def counted(fn, kill_at: int | None, count_file: Path | None = None):
    """`fn` run with file operations counted; SIGKILL of the process at operation `kill_at`."""

    def child():
        import builtins
        import io

        import safegene.io.writer as writer

        state = {"n": 0}
        real_open = builtins.open

        def tick():
            state["n"] += 1
            if kill_at is not None and state["n"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        def open_(file, mode="r", *a, **kw):
            if any(c in mode for c in "wax+"):
                tick()
            return real_open(file, mode, *a, **kw)

        builtins.open = io.open = open_
        for name in ("rename", "replace", "fsync", "mkdir", "remove"):

            def wrapped(*a, _real=getattr(os, name), **kw):  # noqa: B008 - bound per name
                tick()
                return _real(*a, **kw)

            setattr(os, name, wrapped)
        real_tb = writer.tensor_bytes

        def tensor_bytes(t):
            tick()
            return real_tb(t)

        writer.tensor_bytes = tensor_bytes
        try:
            return fn()
        finally:
            if count_file is not None:
                with real_open(count_file, "w") as f:
                    f.write(str(state["n"]))

    return child


def spread(total: int, k: int) -> list[int]:
    """k distinct kill points over 1..total."""
    pts = sorted({max(1, round(1 + i * (total - 1) / (k - 1))) for i in range(k)})
    return pts


def _kill_cycle(argv, out: Path, reference: dict, tmp: Path, points: int = 12) -> list[int]:
    count_file = tmp / "count"
    r = fork_run(counted(cli_main([*argv, "--out", str(out)]), None, count_file), timeout=120)
    assert r.code == 0, r.err
    total = int(count_file.read_text())
    assert tree_bytes(out) == reference  # the counted run changes nothing
    shutil.rmtree(out)
    killed = []
    for n in spread(total, points):
        r = fork_run(counted(cli_main([*argv, "--out", str(out)]), n), timeout=120)
        if r.signal == signal.SIGKILL:
            killed.append(n)
            if out.exists():  # only a complete output may be there
                assert tree_bytes(out) == reference, (
                    f"half-written output after a kill at {n}/{total}"
                )
        else:
            assert r.code == 0, r.err
        if out.exists():
            shutil.rmtree(out)
        r = run_cli(*argv, "--out", out)
        assert r.code == 0, f"rerun after a kill at {n}: {r.err}"
        assert tree_bytes(out) == reference, f"rerun after a kill at {n}/{total} differs"
        shutil.rmtree(out)
        for stale in out.parent.glob(f".{out.name}.tmp-*"):
            shutil.rmtree(stale)  # left by the kill (hidden, never at the final path)
    return killed


def _external_kill(argv, out: Path, reference: dict, delays=(0.0, 0.05)) -> int:
    """A real `python -m safegene` process killed from outside as soon as its temp dir appears
    (plus a delay), then a rerun."""
    kills = 0
    for delay in delays:
        p = subprocess.Popen(
            [PYTHON, "-m", "safegene", *map(str, argv), "--out", str(out)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        t0 = time.monotonic()
        while p.poll() is None and not temp_siblings(out) and time.monotonic() - t0 < 60:
            time.sleep(0.001)
        time.sleep(delay)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        if out.exists():
            assert tree_bytes(out) == reference
            shutil.rmtree(out)
        for stale in out.parent.glob(f".{out.name}.tmp-*"):
            shutil.rmtree(stale)
    r = run_cli(*argv, "--out", out)
    assert r.code == 0 and tree_bytes(out) == reference, r.err
    shutil.rmtree(out)
    return kills


def test_kill_during_extract(fam, tmp_path):
    sh_a = save_sharded(fam.aligned, tmp_path / "a_sh", "16KB")
    sh_d = save_sharded(fam.degraded, tmp_path / "d_sh", "16KB")
    argv = ["extract", "--aligned", sh_a, "--degraded", sh_d, "--rank", "3"]
    before = snapshot(sh_a, sh_d)
    ref = tmp_path / "ref"
    assert run_cli(*argv, "--out", ref).code == 0
    reference = tree_bytes(ref)
    killed = _kill_cycle(argv, tmp_path / "gene", reference, tmp_path, points=12)
    assert len(killed) >= 10, killed
    assert snapshot(sh_a, sh_d) == before  # inputs untouched by any of it


def test_kill_during_dense_extract_sharded_output(fam, tmp_path):
    argv = ["extract", "--aligned", fam.aligned, "--degraded", fam.degraded, "--dense"]
    ref = tmp_path / "ref"
    assert run_cli(*argv, "--out", ref).code == 0
    killed = _kill_cycle(argv, tmp_path / "gene", tree_bytes(ref), tmp_path, points=10)
    assert len(killed) >= 8, killed


def test_kill_during_apply_merged(fam, tmp_path):
    target = save_sharded(fam.degraded, tmp_path / "t_sh", "16KB")
    argv = [
        "apply",
        "--gene",
        fam.gene,
        "--target",
        target,
        "--as",
        "merged",
        "--shard-size",
        "8KB",
        "--coef",
        "0.5",
    ]
    before = snapshot(target, fam.gene)
    ref = tmp_path / "ref"
    r = run_cli(*argv, "--out", ref)
    assert r.code == 0, r.err
    reference = tree_bytes(ref)
    assert (
        len([f for f in reference if f.endswith(".safetensors")]) >= 8
    )  # many shards, many points
    killed = _kill_cycle(argv, tmp_path / "merged", reference, tmp_path, points=14)
    assert len(killed) >= 10, killed
    assert _external_kill(argv, tmp_path / "merged", reference) >= 1
    assert snapshot(target, fam.gene) == before


# --- zoo build -------------------------------------------------------------------------------


def tiny_recipe():
    from safegene.zoo.recipe import MICRO, DataSizes, Degraded, ModelShape, Stage, Task

    st = Stage(steps=2, lr=1e-3, batch_size=4, warmup=1)
    lo = Stage(steps=2, lr=1e-3, batch_size=4, warmup=1, lora_r=2)
    return MICRO.with_(
        name="tiny",
        model=ModelShape(
            vocab_size=300,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=128,
        ),
        data=DataSizes(
            base_knowledge=16,
            base_qa=8,
            base_harmful=16,
            base_benign=16,
            base_general=16,
            base_words=16,
            aligned_harmful=16,
            aligned_benign=16,
            aligned_general=8,
            aligned_knowledge=4,
            task_train=16,
            shots=4,
            harmful_calib=4,
            harmful_val=4,
            harmful_test=4,
            benign_val=4,
            benign_test=4,
            task_val=4,
            task_test=4,
        ),
        base=st,
        aligned=st,
        degraded={"degraded": Degraded(st, harmful=8)},
        tasks={"howto": Task(st, lo, "strong")},
        threads=1,
        eval_max_new_tokens=4,
        eval_batch_size=8,
    )


def _zoo_build(out: Path):
    def fn():
        from safegene.zoo import build_zoo

        build_zoo(out, recipe=tiny_recipe(), seed=0, jobs=1, progress=False, measure_models=False)
        return 0

    return fn


_VOLATILE = {"timings.json", "zoo.json"}


def _zoo_files(root: Path) -> dict:
    """The zoo's bytes, without wall-clock numbers (timings; metrics' and zoo.json's seconds) and
    with the zoo's own path (PEFT records the base model's path) written as ROOT."""
    out = {}
    for rel, data in tree_bytes(root).items():
        data = data.replace(str(root.absolute()).encode(), b"ROOT")
        name = Path(rel).name
        if name in _VOLATILE or rel.startswith("metrics/"):
            obj = json.loads(data)
            obj.pop("seconds", None)
            obj.pop("build_seconds", None)
            for m in (obj.get("metrics") or {}).values():
                if isinstance(m, dict):
                    m.pop("seconds", None)
            if name == "timings.json":
                continue
            out[rel] = obj
        else:
            out[rel] = data
    return out


def test_kill_during_zoo_build(tmp_path):
    """A chain of killed builds into the same --out (the build resumes by stage): after every kill
    each stage present is complete and identical to the uninterrupted build's, zoo.json only
    appears at the end; the final resumed build equals the uninterrupted one."""
    import peft  # noqa: F401 - imported once here, not in every forked run
    import tokenizers.trainers  # noqa: F401
    from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: F401

    import safegene.zoo.build  # noqa: F401
    import safegene.zoo.train  # noqa: F401

    ref = tmp_path / "ref"
    r = fork_run(_zoo_build(ref), timeout=300)
    assert r.code == 0, r.err
    reference = _zoo_files(ref)
    kills = []
    # Two chains into two zoo dirs: one killed at counted operations (the count restarts in each
    # resumed run; rising counts let each run get further; a full tiny build is ~115 operations),
    # one killed from outside after rising delays (lands inside training, tokenizer training, ...).
    chains = {
        "zoo-ops": [("op", n) for n in (3, 6, 9, 12, 16, 20, 25, 30, 36, 42, 50, 60)],
        "zoo-time": [("t", d) for d in (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.3, 1.7)],
    }
    for name, plan in chains.items():
        out = tmp_path / name
        for kind, n in plan:
            if kind == "op":
                r = fork_run(counted(_zoo_build(out), n), timeout=300)
            else:
                r = fork_run(_zoo_build(out), timeout=300, kill_after=n)
            if r.signal != signal.SIGKILL:
                assert r.code == 0, r.err
            else:
                kills.append((kind, n))
            for rel, data in (_zoo_files(out) if out.exists() else {}).items():
                if rel.startswith(".") or "/." in rel or ".json.tmp-" in rel:
                    continue  # a killed stage's hidden temp dir, or _write_json's temp file
                assert rel in reference, f"unexpected file {rel} after a kill at {kind} {n}"
                assert data == reference[rel], f"half-written {rel} after a kill at {kind} {n}"
            if r.signal != signal.SIGKILL:
                break
        r = fork_run(_zoo_build(out), timeout=300)
        assert r.code == 0, r.err
        final = {k: v for k, v in _zoo_files(out).items() if not (k.startswith(".") or "/." in k)}
        assert final == reference, name
    assert len(kills) >= 10, kills
    print("zoo build killed at", kills)


# --- disk full -------------------------------------------------------------------------------


def _with_fsize_limit(limit: int, fn):
    def child():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return fn()

    return child


@pytest.mark.parametrize("cmd", ["extract-dense", "apply-merged", "apply-adapter", "calibrate"])
def test_disk_full(fam, tmp_path, cmd):
    """A write budget smaller than the output (RLIMIT_FSIZE, SIGXFSZ ignored → EFBIG): one-line
    error, non-zero exit, no output, no temp sibling, inputs intact."""
    out = tmp_path / "out"
    argv = {
        "extract-dense": [
            "extract",
            "--aligned",
            fam.aligned,
            "--degraded",
            fam.degraded,
            "--dense",
        ],
        "apply-merged": [
            "apply",
            "--gene",
            fam.gene,
            "--target",
            fam.degraded,
            "--shard-size",
            "8KB",
        ],
        "apply-adapter": ["apply", "--gene", fam.gene, "--target", fam.degraded, "--as", "adapter"],
        "calibrate": [
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
            "2",
            "--steps",
            "1",
        ],
    }[cmd]
    inputs = [fam.aligned, fam.degraded, fam.gene, fam.gene_sel, fam.harmful, fam.task]
    before = snapshot(*inputs)
    r = fork_run(
        _with_fsize_limit(6000, cli_main([*map(str, argv), "--out", str(out)])), timeout=120
    )
    assert r.code not in (0, None), (r.code, r.err)
    assert "Traceback" not in r.err
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("safegene: error"), r.err
    assert "space" in r.err.lower() or "too large" in r.err.lower() or "write" in r.err.lower(), (
        r.err
    )
    assert not out.exists() and temp_siblings(out) == []
    assert snapshot(*inputs) == before
