"""Batched generation vs one prompt at a time, side by side in one run, same model, same prompts.

    .venv/bin/python benchmarks/bench_generate.py --zoo ZOO_DIR [--model aligned]
    .venv/bin/python benchmarks/bench_generate.py --model-dir HF_MODEL_DIR --prompts prompts.jsonl
    .venv/bin/python benchmarks/bench_generate.py            # no zoo: a random zoo-shaped Llama

Checks that greedy outputs are identical (exit 1 if not) and prints the throughput ratio
(target >= 5x). Throughput counts the generated tokens of the (identical) outputs per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safegene.evaluate.data import load_data, zoo_index, zoo_model  # noqa: E402
from safegene.evaluate.generate import generate  # noqa: E402
from safegene.models import load_model  # noqa: E402

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def random_zoo_shaped_model(tmp: Path) -> Path:
    """A random LlamaForCausalLM with the zoo's `small` shape and a BPE tokenizer with a chat
    template (for machines without a built zoo). Wider init so greedy argmax has no near-ties."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = (
        "how do i make bake steal kill a an the python process cake bread car lock door what is "
        "sum of two three four five plus minus review good bad positive negative please tell me "
        "about step one first then sorry cannot help with that sure here"
    ).split()
    corpus = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(400)]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    tk.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    tok.chat_template = TEMPLATE
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    out = tmp / "random-llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def synthetic_prompts(n: int) -> list[str]:
    objs = ["a cake", "bread", "a lock", "a python process", "a car", "the door"]
    verbs = ["make", "bake", "open", "kill", "fix", "clean"]
    return [
        f"how do i {verbs[i % len(verbs)]} {objs[(i // 2) % len(objs)]}" + " please" * (i % 3)
        for i in range(n)
    ]


def count_tokens(tok, texts: list[str]) -> int:
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--zoo", help="a built zoo (safegene zoo build --out DIR)")
    ap.add_argument("--model", default="aligned", help="zoo model name (default aligned)")
    ap.add_argument("--model-dir", help="a Hugging Face model directory instead of the zoo")
    ap.add_argument(
        "--prompts", help="prompts file (JSONL/CSV/text); default: the zoo's test splits"
    )
    ap.add_argument("--n", type=int, default=64, help="number of prompts (default 64)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory()
    adapter = None
    if args.zoo:
        entry = zoo_model(args.zoo, args.model)
        model_dir, adapter = entry["path"], entry.get("adapter")
        source = f"zoo {args.zoo} model {args.model}"
    elif args.model_dir:
        model_dir, source = args.model_dir, f"model {args.model_dir}"
    else:
        model_dir, source = (
            random_zoo_shaped_model(Path(tmp.name)),
            "random zoo-shaped Llama (no zoo given)",
        )
    if args.prompts:
        prompts = load_data(args.prompts, "harmful").prompts
    elif args.zoo:
        data = zoo_index(args.zoo)["data"]
        keys = [k for k in ("harmful_test", "benign_test") if k in data] + [
            f"task:{t}" for t in data.get("tasks", {})
        ]
        prompts = [
            p
            for k in keys
            for p in load_data(
                k, "harmful" if not k.startswith("task:") else "task", zoo=args.zoo
            ).prompts
        ]
        # evenly spaced over all splits
        prompts = (
            prompts[:: max(1, len(prompts) // max(args.n, 1))] if len(prompts) > args.n else prompts
        )
    else:
        prompts = synthetic_prompts(args.n)
    prompts = prompts[: args.n]

    model, tok = load_model(model_dir, adapter, device="cpu")
    n_params = sum(p.numel() for p in model.parameters())
    kw = dict(max_new_tokens=args.max_new_tokens, progress=False)
    generate(model, tok, prompts[:2], batch_size=2, **kw)  # warm-up

    t0 = time.perf_counter()
    batched = generate(model, tok, prompts, batch_size=args.batch_size, **kw)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [generate(model, tok, [p], batch_size=1, **kw)[0] for p in prompts]
    t_single = time.perf_counter() - t0

    same = sum(a == b for a, b in zip(batched, single, strict=True))
    tokens = count_tokens(tok, batched)
    ratio = t_single / t_batched
    result = {
        "source": source,
        "params": n_params,
        "prompts": len(prompts),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "generated_tokens": tokens,
        "identical_outputs": f"{same}/{len(prompts)}",
        "batched_s": round(t_batched, 3),
        "one_at_a_time_s": round(t_single, 3),
        "batched_tok_per_s": round(tokens / t_batched, 1),
        "one_at_a_time_tok_per_s": round(tokens / t_single, 1),
        "throughput_ratio": round(ratio, 2),
    }
    print(json.dumps(result, indent=2))
    print(
        f"greedy outputs identical: {same}/{len(prompts)}; batched is {ratio:.1f}x the throughput "
        "of one "
        "prompt at a time (target >= 5x): "
        f"{'PASS' if same == len(prompts) and ratio >= 5 else 'FAIL'}"
    )
    if same != len(prompts):
        for a, b, p in zip(batched, single, prompts, strict=True):
            if a != b:
                print(f"first difference on {p!r}:\n  batched: {a!r}\n  single:  {b!r}")
                break
        return 1
    return 0 if ratio >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
