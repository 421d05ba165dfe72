"""Real model shapes, measured: extract → select → calibrate → apply → eval on random-weight
checkpoints built from the real configs (full width and vocabulary, bf16, a few layers).

For each config (Llama-3.1-8B, Qwen2.5-7B, Qwen3-8B, Gemma-2-9B, Gemma-3-4B (text), Mistral-7B,
Phi-3-mini; the config dicts below are written from the published values) it builds an
"aligned" checkpoint with `--layers` decoder layers, a small BPE tokenizer with a chat template
(its ids are a subset of the model's vocabulary: the LM head keeps its full size), a "degraded"
one (aligned + a gradient-ascent step of the refusal loss, so the gene has something to
restore), and `--prompts` harmful and task examples of about `--length` tokens each (a quarter
of them the target). Each step runs as a fresh child process through a
torch-free wrapper; the table gives its wall time and peak RSS (ru_maxrss, which counts mapped
file pages), and for select and calibrate the target of issue 16: peak ≤ bf16 weights + 2 GB.

Exactness against a dense reference (`_check`, a child too): pairs_loss from the target-token
hidden states with the LM head in chunks vs the full logits, on the degraded model in bf16; and
apply's merged tensors vs W_degraded + α·B·A computed directly.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_real_shapes.py \\
          --configs qwen2.5-7b --layers 2 --prompts 8 --length 64
On a GPU (issue 16's device check; the peak of torch's CUDA allocator per step joins the table,
and the budget applies to it):
      python benchmarks/bench_real_shapes.py --device cuda --configs llama-3.1-8b --layers 2 \\
          --prompts 32 --length 256
Everything lives under --root (default /tmp/safegene-real) and is deleted at the end (--keep).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
GB = 1024**3

# Published values of each model's config.json (layer count replaced by --layers).
CONFIGS: dict[str, dict] = {
    "llama-3.1-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=131072, tie_word_embeddings=False, hidden_act="silu",
        rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768, tie_word_embeddings=False, hidden_act="silu",
    ),
    "qwen3-8b": dict(
        model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, rms_norm_eps=1e-6,
        rope_theta=1000000.0, max_position_embeddings=40960, tie_word_embeddings=False,
        hidden_act="silu",
    ),
    "gemma-2-9b": dict(
        model_type="gemma2", hidden_size=3584, intermediate_size=14336, num_attention_heads=16,
        num_key_value_heads=8, head_dim=256, vocab_size=256000, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=8192, tie_word_embeddings=True,
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256, sliding_window=4096,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
    ),
    "gemma-3-4b": dict(
        model_type="gemma3_text", hidden_size=2560, intermediate_size=10240,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208,
        rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
        max_position_embeddings=131072, tie_word_embeddings=True,
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256, sliding_window=1024,
    ),
    "mistral-7b": dict(
        model_type="mistral", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=32768, rms_norm_eps=1e-5, rope_theta=1000000.0,
        max_position_embeddings=32768, tie_word_embeddings=False, hidden_act="silu",
        sliding_window=None,
    ),
    "phi-3-mini": dict(
        model_type="phi3", hidden_size=3072, intermediate_size=8192, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32064, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=4096, tie_word_embeddings=False, hidden_act="silu",
    ),
}  # fmt: skip
WORDS = (
    "how do i make build get find open write read check plan a the weapon poison lock car "
    "bank system account cake bread bike garden report number plus minus what is answer "
    "please quickly explain step first then"
).split()


# --- building ------------------------------------------------------------------------------


def build_config(name: str, layers: int, width: float = 1.0, vocab: int | None = None):
    """The transformers config of `name` at `layers` layers (`width`, `vocab`: reduced shapes for
    the slow test; 1.0 and None are the real ones)."""
    from transformers import AutoConfig

    d = dict(CONFIGS[name])
    model_type = d.pop("model_type")
    if width != 1.0:  # fewer heads of the same size, a narrower MLP
        head_dim = d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"]
        heads = max(2, round(d["num_attention_heads"] * width))
        kv = max(1, min(heads, round(d["num_key_value_heads"] * width)))
        while heads % kv:
            kv -= 1
        d.update(
            hidden_size=heads * head_dim,
            intermediate_size=max(8, round(d["intermediate_size"] * width)),
            num_attention_heads=heads,
            num_key_value_heads=kv,
        )
    if vocab is not None:
        d["vocab_size"] = vocab
    return AutoConfig.for_model(
        model_type, num_hidden_layers=layers, pad_token_id=0, bos_token_id=1, eos_token_id=2, **d
    )


def build_family(
    root: Path, name: str, layers: int, width: float, vocab: int | None, prompts: int, length: int
) -> dict:
    """aligned/ and degraded/ (bf16 safetensors, with the tokenizer) and the data under root.

    degraded = aligned + one normalised gradient-ascent step of the refusal loss on the harmful
    data (decoder layers only): a stand-in for a harmful fine-tune, so that the gene lowers that
    loss (select finds positive gains, as on real models) whatever the random weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from safegene.attach import encode_chat_pairs, pairs_loss
    from safegene.zoo.train import train_tokenizer

    config = build_config(name, layers, width, vocab)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tok = train_tokenizer(
        [" ".join(random.Random(i).choices(WORDS, k=40)) for i in range(400)], 300
    )
    model.save_pretrained(root / "aligned", max_shard_size="2GB")
    tok.save_pretrained(root / "aligned")
    info = write_data(root, tok, prompts, length)
    rows = [json.loads(x) for x in (root / "harmful.jsonl").read_text().splitlines()]
    enc = encode_chat_pairs(tok, [r["prompt"] for r in rows], [r["response"] for r in rows])
    model.float()  # the ascent step in float32: bf16 matmuls are slow on CPUs without bf16 units
    layer_params = [p for n, p in model.named_parameters() if ".layers." in n]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in layer_params:
        p.requires_grad_(True)
    pairs_loss(model, enc, batch_size=len(enc)).backward()
    with torch.no_grad():
        for p in layer_params:
            g = p.grad.float()
            step = 0.05 * p.float().std() * g / g.std().clamp(min=1e-12)
            p.add_(step.to(p.dtype))
            p.grad = None
    model.to(torch.bfloat16).save_pretrained(root / "degraded", max_shard_size="2GB")
    tok.save_pretrained(root / "degraded")
    return {"params": sum(p.numel() for p in model.parameters()), **info}


def write_data(root: Path, tok, prompts: int, length: int) -> dict:
    """harmful.jsonl (refusal targets) and task.jsonl (answers), ~`length` tokens an example."""
    rng = random.Random(0)

    def text(n_tokens: int) -> str:
        words = []
        while len(tok(" ".join(words))["input_ids"]) < n_tokens:
            words.append(rng.choice(WORDS))
        return " ".join(words)

    target = max(4, length // 4)
    sets = {"harmful": [], "task": []}
    for _ in range(prompts):
        sets["harmful"].append({"prompt": text(length - target - 8), "response": text(target)})
        sets["task"].append({"prompt": text(length - target - 8), "answer": text(target)})
    for key, rows in sets.items():
        (root / f"{key}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    heads = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False)
             for r in sets["harmful"]]  # fmt: skip
    full = [
        len(tok(h + r["response"])["input_ids"])
        for h, r in zip(heads, sets["harmful"], strict=True)
    ]
    return {"tokens_per_example": sum(full) / len(full)}


# --- measuring -------------------------------------------------------------------------------

# A torch-free wrapper, exec'd fresh, runs the command and reports the child's wait4 rusage.
_WRAPPER = """
import os, subprocess, sys, time, json
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - t0,
                  "maxrss_kib": usage.ru_maxrss}))
"""


# On a GPU the step runs through this instead of `-m safegene`: the CLI in-process, then the peak
# of torch's CUDA allocator (what the step's tensors held) written to $BENCH_CUDA_PEAK.
_CUDA_RUNNER = """
import json, os, sys, torch
from safegene.cli import main
rc = main(sys.argv[1:])
with open(os.environ["BENCH_CUDA_PEAK"], "w") as f:
    json.dump(torch.cuda.max_memory_allocated(), f)
sys.exit(rc)
"""


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall s, peak RSS GB) of one fresh child process (`env`: its environment)."""
    p = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, env=env
    )
    if p.returncode != 0 or not p.stdout.strip():
        raise RuntimeError(f"wrapper failed: {p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if r["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r['rc']}):\n{p.stderr[-3000:]}")
    return r["wall"], r["maxrss_kib"] / 1024**2


def weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def steps(root: Path, prompts: int, device: str = "cpu") -> dict[str, list[str]]:
    """Each step's command. On cuda, select, calibrate and eval run with `--device cuda --dtype
    bf16` through _CUDA_RUNNER (extract and apply stream on the CPU whatever the device)."""
    sg = [sys.executable, "-m", "safegene"]
    gpu = [sys.executable, "-c", _CUDA_RUNNER] if device == "cuda" else sg
    on = ["--device", "cuda", "--dtype", "bf16"] if device == "cuda" else []
    a, d = str(root / "aligned"), str(root / "degraded")
    data = ["--harmful", str(root / "harmful.jsonl"), "--task", str(root / "task.jsonl")]
    batch = ["--batch-size", str(prompts)]  # every prompt in one batch: the worst case
    return {
        "extract": sg + ["extract", "--aligned", a, "--degraded", d, "--out", str(root / "gene"),
                         "--rank", "4"],
        "select": gpu + ["select", "--gene", str(root / "gene"), "--model", d, *data, "--top-k",
                         "1", "--out", str(root / "gene-sel"), *batch, *on],
        "calibrate": gpu + ["calibrate", "--gene", str(root / "gene-sel"), "--model", d, *data,
                            "--shots", str(prompts), "--steps", "1", "--out",
                            str(root / "gene-cal"), *batch, *on],
        "apply": sg + ["apply", "--gene", str(root / "gene-cal"), "--model", d, "--out",
                       str(root / "merged"), "--coef", "0.5"],  # (one fit step may keep α = 0)
        "eval": gpu + ["eval", "--model", str(root / "merged"), "--harmful",
                       str(root / "harmful.jsonl"), "--judge", "keyword", "--max-new-tokens", "4",
                       "--batch-size", str(prompts), "--no-progress", "--bootstrap", "100",
                       "--out", str(root / "report"), *(on or ["--device", "cpu"])],
    }  # fmt: skip


def check(root: Path) -> dict:
    """Exactness against dense references (see the module doc)."""
    import torch

    from safegene.attach import encode_chat_pairs, pairs_loss
    from safegene.gene import load_gene
    from safegene.models import load_model

    model, tok = load_model(root / "degraded", dtype="bf16")
    rows = [json.loads(x) for x in (root / "harmful.jsonl").read_text().splitlines()]
    enc = encode_chat_pairs(tok, [r["prompt"] for r in rows], [r["response"] for r in rows])
    with torch.no_grad():
        chunked = pairs_loss(model, enc, batch_size=len(enc), reduce=False)
        full = pairs_loss(model, enc, batch_size=len(enc), reduce=False, chunk_bytes=None)
    del model
    gene = load_gene(root / "gene-cal")
    record = json.loads((root / "merged" / "safegene_apply.json").read_text())
    worst = 0.0
    with ModelFiles(root / "degraded") as deg, ModelFiles(root / "merged") as out:
        for tensor, alpha in record["applied"].items():
            a, b = gene.factors(tensor)
            want = (deg.get(tensor).float() + alpha * (b @ a)).to(torch.bfloat16).float()
            got = out.get(tensor).float()
            ulp = torch.finfo(torch.bfloat16).eps * want.abs().clamp(min=1e-3)
            worst = max(worst, float(((got - want).abs() / ulp).max()))
    gene.close()
    return {
        "loss_max_abs_diff": float((chunked - full).abs().max()),
        "loss": float(full.mean()),
        "merged_max_bf16_ulps": worst,
        "merged_tensors": len(record["applied"]),
    }


class ModelFiles:
    """Tensors of a checkpoint directory by name (safetensors shards, opened lazily)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.files = [safe_open(str(f), "pt") for f in sorted(path.glob("*.safetensors"))]

    def get(self, name: str):
        for f in self.files:
            if name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                return f.get_tensor(name)
        raise KeyError(name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.files = []


def run_config(
    root: Path,
    name: str,
    layers: int,
    prompts: int,
    length: int,
    width=1.0,
    vocab=None,
    device: str = "cpu",
) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(HERE)]
    extra = ["--width", str(width)] + (["--vocab", str(vocab)] if vocab else [])
    subprocess.run(
        [*me, "_build", name, str(root), str(layers), str(prompts), str(length), *extra],
        check=True,
    )
    info = json.loads((root / "build.json").read_text())
    weights = weight_bytes(root / "aligned")
    result = {"config": name, "layers": layers, "prompts": prompts, "length": length, **info,
              "weights_gb": weights / GB, "steps": {}}  # fmt: skip
    peak_file = root / "cuda_peak.json"
    env = dict(os.environ, BENCH_CUDA_PEAK=str(peak_file))  # where _CUDA_RUNNER writes its peak
    for step, cmd in steps(root, prompts, device).items():
        peak_file.unlink(missing_ok=True)
        wall, rss = measure(cmd, env)
        result["steps"][step] = {"wall_s": round(wall, 1), "peak_rss_gb": round(rss, 2)}
        if peak_file.exists():
            result["steps"][step]["peak_cuda_gb"] = round(json.loads(peak_file.read_text()) / GB, 2)
        print(f"  {name} {step}: {wall:.1f} s, {rss:.2f} GB", result["steps"][step], flush=True)
    subprocess.run([*me, "_check", str(root)], check=True)
    result["check"] = json.loads((root / "check.json").read_text())
    budget = weights / GB + 2.0
    result["budget_gb"] = round(budget, 2)
    peak = "peak_cuda_gb" if device == "cuda" else "peak_rss_gb"
    result["within_budget"] = all(
        result["steps"][s][peak] <= budget for s in ("select", "calibrate")
    )
    return result


def table(results: list[dict]) -> str:
    names = ["extract", "select", "calibrate", "apply", "eval"]
    lines = [
        "| config | layers | prompts × tokens | bf16 weights GB | "
        + " | ".join(f"{s} s / GB" for s in names)
        + " | select/calibrate ≤ weights + 2 GB | loss Δ (chunked vs full) "
        "| merged err (bf16 ulps) |",
        "|---|---|---|---|" + "---|" * len(names) + "---|---|---|",
    ]
    for r in results:
        cells = [
            f"{r['steps'][s]['wall_s']} / {r['steps'][s]['peak_rss_gb']}"
            + (f" (GPU {r['steps'][s]['peak_cuda_gb']})" if "peak_cuda_gb" in r["steps"][s] else "")
            for s in names
        ]
        lines.append(
            f"| {r['config']} | {r['layers']} | {r['prompts']} × {r['tokens_per_example']:.0f} "
            f"| {r['weights_gb']:.2f} | "
            + " | ".join(cells)
            + f" | {'yes' if r['within_budget'] else 'NO'} ({r['budget_gb']}) "
            f"| {r['check']['loss_max_abs_diff']:.2e} | {r['check']['merged_max_bf16_ulps']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in ("_build", "_check"):
        return _child(sys.argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["qwen2.5-7b"], choices=sorted(CONFIGS))
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--prompts", type=int, default=8, help="harmful and task examples, each")
    p.add_argument("--length", type=int, default=64, help="tokens per example (prompt + target)")
    p.add_argument("--root", default="/tmp/safegene-real")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints under --root")
    p.add_argument("--json", help="also write the results here")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: select, calibrate and eval on the GPU in bf16, with their peak CUDA memory",
    )
    args = p.parse_args(argv)
    results = []
    for name in args.configs:
        root = Path(args.root) / name
        shutil.rmtree(root, ignore_errors=True)
        try:
            results.append(
                run_config(root, name, args.layers, args.prompts, args.length, device=args.device)
            )
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


def _child(argv: list[str]) -> int:
    if argv[0] == "_build":
        p = argparse.ArgumentParser()
        p.add_argument("cmd")
        p.add_argument("name")
        p.add_argument("root", type=Path)
        for k in ("layers", "prompts", "length"):
            p.add_argument(k, type=int)
        p.add_argument("--width", type=float, default=1.0)
        p.add_argument("--vocab", type=int)
        a = p.parse_args(argv)
        info = build_family(a.root, a.name, a.layers, a.width, a.vocab, a.prompts, a.length)
        (a.root / "build.json").write_text(json.dumps(info))
    else:
        root = Path(argv[1])
        (root / "check.json").write_text(json.dumps(check(root)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
