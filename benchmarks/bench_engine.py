"""Benchmark of the streaming weight engine against its floors, a naive script and mergekit.

Generates a Llama-shaped bf16 sharded pair (aligned, degraded = aligned + noise) of >= 1.5 GB
each, and a pair twice as deep, then measures side by side, each as a fresh child process
(peak RSS = the child's ru_maxrss from wait4, which counts mapped file pages; wall time; CPU
time = user + system, the robust number on a shared machine):

  read floor       a plain loop reading every tensor of both inputs with safetensors
  read+write floor reading every tensor of the target and writing its bytes to one file (fsynced)
  naive            load_file both models + subtract + save_file (the reference script)
  (the two genes apply uses are extracted once, untimed, before the measured rounds)
  extract --dense  / extract --rank 16 / apply --as merged (rank-16 gene, and dense gene)
  mergekit         task_arithmetic on the same pair (optional: --mergekit-python PY)

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_engine.py [--mergekit-python PY]
Everything lives under --root (default /tmp/safegene-bench) and is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HIDDEN, INTER, HEADS, VOCAB = 2048, 5632, 16, 32000
HERE = Path(__file__).resolve()


# --- checkpoint generation -------------------------------------------------------------------


def llama_items(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of a Llama checkpoint in Hugging Face's save order."""
    items = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        items += [
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
        ]
        items += [
            (p + f"self_attn.{m}.weight", (HIDDEN, HIDDEN))
            for m in ("q_proj", "k_proj", "v_proj", "o_proj")
        ]
        items += [
            (p + "mlp.gate_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTER)),
        ]
    return items + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def generate_pair(root: Path, layers: int, shard: str = "500MB") -> tuple[Path, Path]:
    """Write aligned and degraded (aligned + 1e-3 noise) as bf16 shards, one tensor at a time."""
    import torch
    from transformers import LlamaConfig

    from safegene.io import ShardWriter, parse_size

    dirs = root / "aligned", root / "degraded"
    items = llama_items(layers)
    plan = [(n, torch.bfloat16, s) for n, s in items]
    writers = []
    for d in dirs:
        d.mkdir(parents=True)
        LlamaConfig(
            hidden_size=HIDDEN,
            intermediate_size=INTER,
            num_hidden_layers=layers,
            num_attention_heads=HEADS,
            num_key_value_heads=HEADS,
            vocab_size=VOCAB,
            tie_word_embeddings=False,
            dtype="bfloat16",
            architectures=["LlamaForCausalLM"],
        ).save_pretrained(d)
        writers.append(ShardWriter(d, plan, parse_size(shard)))
    g = torch.Generator().manual_seed(0)
    for name, shape in items:
        a = torch.randn(shape, generator=g) * 0.02 + (1.0 if len(shape) == 1 else 0.0)
        writers[0].write(name, a.to(torch.bfloat16))
        a.add_(torch.randn(shape, generator=g), alpha=1e-3)
        writers[1].write(name, a.to(torch.bfloat16))
        del a
    for w in writers:
        w.close()
    return dirs


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


# --- the reference programs (run as children: `bench_engine.py _<name> ...`) -----------------


def _files(d: str) -> list[Path]:
    from safegene.io import find_weight_files

    return find_weight_files(Path(d))


def floor_read(*dirs: str) -> None:
    """Read every tensor of the inputs with safetensors (into memory, then drop it)."""
    from safetensors import safe_open

    for d in dirs:
        for f in _files(d):
            with safe_open(f, "pt") as fh:
                for k in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                    t = fh.get_tensor(k).clone()  # clone: actually read the mapped bytes
                    del t


def floor_read_write(src: str, out: str) -> None:
    """Read every tensor of src and write its bytes to one file, fsynced."""
    from safetensors import safe_open

    os.makedirs(out)
    with open(Path(out) / "blob.bin", "wb") as o:
        for f in _files(src):
            with safe_open(f, "pt") as fh:
                for k in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                    t = fh.get_tensor(k).clone()
                    o.write(t.contiguous().view(-1).view(__import__("torch").uint8).numpy())
                    del t
        o.flush()
        os.fsync(o.fileno())


def naive(aligned: str, degraded: str, out: str) -> None:
    """The naive script: load both models whole, subtract, save the delta in one file."""
    from safetensors.torch import load_file, save_file

    a, d = {}, {}
    for f in _files(aligned):
        a.update(load_file(f))
    for f in _files(degraded):
        d.update(load_file(f))
    delta = {k: a[k] - d[k] for k in a}
    os.makedirs(out)
    save_file(delta, str(Path(out) / "delta.safetensors"))


# --- measuring -------------------------------------------------------------------------------

# A torch-free wrapper, exec'd fresh, runs the command and reports the child's wait4 rusage. The
# wrapper matters: a child forked from this (large) process would inherit its RSS high-water mark.
_WRAPPER = """
import os, subprocess, sys, time, json
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - t0,
                  "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss}))
"""


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS GB) of one fresh child process (ru_maxrss: mapped pages count)."""
    p = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True)
    if p.returncode != 0 or not p.stdout.strip():
        raise RuntimeError(f"wrapper failed: {p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if r["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r['rc']}):\n{p.stderr[-3000:]}")
    return r["wall"], r["cpu"], r["maxrss_kib"] / 1024**2


def mergekit_cmd(py: str, base: Path, model: Path, out: Path, cfg_path: Path) -> list[str]:
    cfg_path.write_text(
        "merge_method: task_arithmetic\n"
        f"base_model: {base}\n"
        "dtype: bfloat16\n"
        "models:\n"
        f"  - model: {model}\n"
        "    parameters:\n"
        "      weight: 1.0\n"
    )
    exe = Path(py).parent / "mergekit-yaml"
    return [str(exe), str(cfg_path), str(out)]


def run_size(root: Path, layers: int, mergekit_python: str | None, repeat: int) -> list[dict]:
    """Every task `repeat` times, round robin (so load swings on a shared machine hit all tasks
    alike); per task the min wall and CPU time and the max peak RSS."""
    py, me = sys.executable, str(HERE)
    sg = [py, "-m", "safegene"]
    print(f"generating the {layers}-layer pair under {root} ...", flush=True)
    aligned, degraded = generate_pair(root, layers)
    size = dir_bytes(aligned)
    out = root / "out"
    genes = {"rank16": root / "gene16", "dense": root / "gene_dense"}
    pair = ["--aligned", str(aligned), "--degraded", str(degraded)]
    for kind, flag in (("rank16", ["--rank", "16"]), ("dense", ["--dense"])):  # apply's inputs
        subprocess.run(
            sg + ["extract", *pair, "--out", str(genes[kind]), *flag],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    tasks = {
        "read floor (both inputs)": [py, me, "_floor_read", str(aligned), str(degraded)],
        "read+write floor (target)": [py, me, "_floor_read_write", str(degraded), str(out)],
        "naive load+sub+save": [py, me, "_naive", str(aligned), str(degraded), str(out)],
        "extract --dense": sg + ["extract", *pair, "--out", str(out), "--dense"],
        "extract --rank 16": sg + ["extract", *pair, "--out", str(out), "--rank", "16"],
        "apply --as merged (rank 16)": sg
        + [
            "apply",
            "--gene",
            str(genes["rank16"]),
            "--target",
            str(degraded),
            "--out",
            str(out),
            "--shard-size",
            "500MB",
        ],
        "apply --as merged (dense)": sg
        + [
            "apply",
            "--gene",
            str(genes["dense"]),
            "--target",
            str(degraded),
            "--out",
            str(out),
            "--shard-size",
            "500MB",
        ],
    }
    if mergekit_python:
        tasks["mergekit task_arithmetic"] = mergekit_cmd(
            mergekit_python, degraded, aligned, out, root / "mergekit.yml"
        )
    runs: dict[str, list[tuple[float, float, float]]] = {t: [] for t in tasks}
    for i in range(repeat):
        for name, cmd in tasks.items():
            shutil.rmtree(out, ignore_errors=True)
            runs[name].append(measure(cmd))
            w, c, r = runs[name][-1]
            print(
                f"  [{i + 1}/{repeat}] {name:<28} {w:7.2f} s wall {c:7.2f} s cpu {r:6.2f} GB",
                flush=True,
            )
    shutil.rmtree(root)
    return [
        {
            "layers": layers,
            "model_gb": size / 1e9,
            "task": name,
            "wall_s": min(x[0] for x in rs),
            "cpu_s": min(x[1] for x in rs),
            "peak_rss_gb": max(x[2] for x in rs),
            "runs": rs,
        }
        for name, rs in runs.items()
    ]


def report(rows: list[dict]) -> str:
    """The table with ratios: extract vs the read floor, apply/mergekit vs the read+write floor."""
    lines = [
        "| layers | model GB | task | wall s | CPU s | peak RSS GB | wall ratio | CPU ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["layers"], r["task"]): r for r in rows}
    for r in rows:
        floor = (
            "read+write floor (target)"
            if r["task"].startswith(("apply", "mergekit"))
            else "read floor (both inputs)"
        )
        f = by[(r["layers"], floor)]
        name = floor.split(" (")[0]
        wr = "" if "floor" in r["task"] else f"{r['wall_s'] / f['wall_s']:.2f}x {name}"
        cr = "" if "floor" in r["task"] else f"{r['cpu_s'] / f['cpu_s']:.2f}x"
        lines.append(
            f"| {r['layers']} | {r['model_gb']:.2f} | {r['task']} | {r['wall_s']:.2f} | "
            f"{r['cpu_s']:.2f} | {r['peak_rss_gb']:.2f} | {wr} | {cr} |"
        )
    layers = sorted({r["layers"] for r in rows})
    if len(layers) == 2:
        lines.append("")
        for task in (
            "extract --dense",
            "extract --rank 16",
            "apply --as merged (rank 16)",
            "apply --as merged (dense)",
            "naive load+sub+save",
            "mergekit task_arithmetic",
        ):
            if (layers[0], task) in by and (layers[1], task) in by:
                a, b = by[(layers[0], task)]["peak_rss_gb"], by[(layers[1], task)]["peak_rss_gb"]
                lines.append(
                    f"- peak RSS at 2x depth, {task}: {a:.2f} -> {b:.2f} GB "
                    f"({(b / a - 1) * 100:+.1f}%)"
                )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        {"_floor_read": floor_read, "_floor_read_write": floor_read_write, "_naive": naive}[
            sys.argv[1]
        ](*sys.argv[2:])
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", default="/tmp/safegene-bench")
    ap.add_argument("--layers", type=int, default=13, help="depth of the first pair (13 -> 1.6 GB)")
    ap.add_argument("--mergekit-python", help="python of a venv with mergekit installed")
    ap.add_argument(
        "--repeat", type=int, default=2, help="rounds over all tasks (min time, max RSS)"
    )
    ap.add_argument("--json", help="also write the raw rows here")
    args = ap.parse_args()
    root = Path(args.root)
    if root.exists():
        shutil.rmtree(root)
    rows = []
    try:
        for layers in (args.layers, 2 * args.layers):
            rows += run_size(root / f"L{layers}", layers, args.mergekit_python, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = report(rows)
    print("\n" + table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
