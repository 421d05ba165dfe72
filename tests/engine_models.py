"""Tiny random checkpoints of the five supported families, built with transformers' own model
classes and saved with save_pretrained (single file or sharded), for the weight-engine tests."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "mistral", "qwen2", "gemma", "phi3")
# The families known to family.py's table beyond those five (their extra tensors: q/k norms,
# extra norms), covered by the families test only.
MORE_FAMILIES = ("qwen3", "gemma3_text", "olmo2", "granite")
_COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_config(family: str, **overrides):
    """A tiny config of the real transformers class for `family`."""
    import transformers as tf

    cls = {
        "llama": tf.LlamaConfig,
        "mistral": tf.MistralConfig,
        "qwen2": tf.Qwen2Config,
        "gemma": tf.GemmaConfig,
        "phi3": tf.Phi3Config,
        "qwen3": tf.Qwen3Config,
        "gemma2": tf.Gemma2Config,
        "gemma3_text": tf.Gemma3TextConfig,
        "olmo2": tf.Olmo2Config,
        "granite": tf.GraniteConfig,
    }[family]
    kw = dict(_COMMON)
    if family in ("gemma", "gemma2", "qwen3", "gemma3_text"):
        kw["head_dim"] = 8
    kw.update(overrides)
    return cls(**kw)


def build_model(family: str, seed: int = 0, **overrides):
    """A randomly initialised float32 causal LM of `family` (deterministic in `seed`)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), dtype=torch.float32)
    with torch.no_grad():  # make every tensor nonzero and distinct (norms start at 1 / 0)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def perturbed(model, seed: int, scale: float = 0.05):
    """A copy of `model` with every weight moved by Gaussian noise (a stand-in for fine-tuning)."""
    import copy

    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return other


def save(model, path: Path, shard: str | None = None, dtype=None) -> Path:
    """save_pretrained into `path` (safetensors; `shard` like "40KB" makes several shards)."""
    if dtype is not None:
        model = model.to(dtype)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kw)
    return Path(path)


def family_pair(
    root: Path, family: str, shard: str | None = None, seed: int = 0, **overrides
) -> tuple[Path, Path]:
    """(aligned dir, degraded dir) of one tiny family, the degraded = aligned + noise."""
    aligned = build_model(family, seed, **overrides)
    degraded = perturbed(aligned, seed + 100)
    return (
        save(aligned, root / f"{family}-aligned", shard),
        save(degraded, root / f"{family}-degraded", shard),
    )


def state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint dir (tests only: loads it all)."""
    from safegene.io import ModelReader

    with ModelReader(path) as r:
        return {n: r.get(n) for n in r.names()}
