"""The zoo's training code: a BPE tokenizer, a tiny `LlamaForCausalLM`, one deterministic loop.

All of it goes through the ecosystem's own classes (tokenizers' BPE trainer saved as a transformers
`PreTrainedTokenizerFast` with a chat template, transformers' Llama, PEFT's LoRA), so the zoo's
models are ordinary Hugging Face directories.

Determinism: `seed_everything` seeds Python, NumPy and torch and turns on torch's deterministic
algorithms; batches come from a seeded `random.Random`; on the same machine and thread count the
same seed gives bit-identical weights.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from safegene.zoo.recipe import ModelShape, Stage

log = logging.getLogger("safegene.zoo")


@dataclass(frozen=True)
class Arch:
    """One architecture of the zoo: its transformers classes and its chat format."""

    config: str  # transformers config class
    model: str  # transformers causal-LM class
    special_tokens: tuple[str, ...]
    bos: str | None
    eos: str  # ends an assistant turn (generation stops here)
    pad: str
    doc_end: str  # ends a plain pretraining document
    chat_template: str
    extra_config: tuple[tuple[str, object], ...] = ()
    # The pre-tokenizer split that transformers' own tokenizer class for this model type imposes
    # when it loads a checkpoint (None: it keeps the tokenizer.json's ByteLevel split). Training the
    # BPE with it keeps one tokenization for the build and for every loader.
    split: str | None = None


# transformers' Qwen2Tokenizer rebuilds any Qwen2 checkpoint's tokenizer with NFC and this split
# (one digit per token, models/qwen2/tokenization_qwen2.py); a BPE trained on ByteLevel's split
# encoded " 8" as one token in the build and as " " + "8" in every later load, so the Qwen2 zoo's
# arithmetic models scored 9 % on test (zoo v2, benchmarks/RESULTS.md).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# Llama: a Zephyr-like template with a BOS token. Qwen2: ChatML, no BOS, q/k/v biases.
ARCHS = {
    "llama": Arch(
        "LlamaConfig",
        "LlamaForCausalLM",
        ("<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"),
        "<s>",
        "</s>",
        "<pad>",
        "</s>",
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}"
        "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
        "{% elif message['role'] == 'assistant' %}"
        "<|assistant|>{{ message['content'] }}{{ eos_token }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}",
    ),
    "qwen2": Arch(
        "Qwen2Config",
        "Qwen2ForCausalLM",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        None,
        "<|im_end|>",
        "<|endoftext|>",
        "<|endoftext|>",
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        (("use_sliding_window", False),),
        split=QWEN2_SPLIT,
    ),
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


# --- tokenizer ------------------------------------------------------------------------------------
def train_tokenizer(texts: list[str], vocab_size: int, arch: str = "llama"):
    """A byte-level BPE trained on `texts`, as a transformers fast tokenizer with the chat template
    of `arch`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    a = ARCHS[arch]
    tok = Tokenizer(models.BPE())
    if a.split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(a.split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(a.special_tokens),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    named = {a.bos, a.eos, a.pad}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=a.bos,
        eos_token=a.eos,
        pad_token=a.pad,
        additional_special_tokens=[t for t in a.special_tokens if t not in named],
        model_max_length=512,
        padding_side="left",
    )
    fast.chat_template = a.chat_template
    return fast


def check_reloads(tokenizer, arch: str, texts: list[str]) -> None:
    """Raise unless `tokenizer`, saved beside a config of `arch` and loaded as any checkpoint is
    (AutoTokenizer, which may swap in the model type's own class), encodes `texts` the same."""
    import tempfile

    import transformers

    from safegene.errors import SafeGeneError
    from safegene.models import load_tokenizer

    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        getattr(transformers, ARCHS[arch].config)().save_pretrained(d)
        loaded = load_tokenizer(d)
    trained = tokenizer(texts, add_special_tokens=False)["input_ids"]
    again = loaded(texts, add_special_tokens=False)["input_ids"]
    for text, a, b in zip(texts, trained, again, strict=True):
        if a != b:
            raise SafeGeneError(
                f"the {arch} tokenizer loads as {type(loaded).__name__}, which encodes "
                f"{text!r} differently from the trained one"
            )


# --- model ----------------------------------------------------------------------------------------
def new_model(shape: ModelShape, tokenizer, seed: int, arch: str = "llama"):
    import transformers

    a = ARCHS[arch]
    config = getattr(transformers, a.config)(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=shape.tie_word_embeddings,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **dict(a.extra_config),
    )
    torch.manual_seed(seed)
    model = getattr(transformers, a.model)(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# --- encoding -------------------------------------------------------------------------------------
@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]


def encode_pairs(
    tokenizer, pairs: list[tuple[str, str]], *, prompt_loss: bool = False, max_len: int = 128
) -> list[Encoded]:
    """(prompt, response) pairs as chat sequences; labels are -100 on the prompt unless
    `prompt_loss`. The prompt is rendered by the chat template exactly as at generation time."""
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p, _ in pairs
    ]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for p, r in zip(p_ids, r_ids, strict=True):
        r = r + [eos]
        ids = (p + r)[:max_len]
        labels = (list(p) if prompt_loss else [-100] * len(p)) + r
        out.append(Encoded(ids, labels[:max_len]))
    return out


def encode_texts(
    tokenizer, texts: list[str], arch: str = "llama", max_len: int = 128
) -> list[Encoded]:
    """Plain pretraining documents (no chat template), every token learned."""
    if not texts:
        return []
    a = ARCHS[arch]
    head = [tokenizer.convert_tokens_to_ids(a.bos)] if a.bos else []
    end = tokenizer.convert_tokens_to_ids(a.doc_end)
    out = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids = (head + ids + [end])[:max_len]
        out.append(Encoded(ids, list(ids)))
    return out


def _batches(data: list[Encoded], batch_size: int, steps: int, rng: random.Random):
    """`steps` batches: epochs of a seeded shuffle; similar lengths within a window of 8 batches."""
    produced = 0
    while True:
        order = list(range(len(data)))
        rng.shuffle(order)
        window = batch_size * 8
        batches = []
        for w in range(0, len(order), window):
            chunk = sorted(order[w : w + window], key=lambda i: len(data[i].ids))
            batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        for b in batches:
            if len(b) < batch_size // 2:
                continue
            yield b
            produced += 1
            if produced >= steps:
                return


def _collate(data: list[Encoded], idx: list[int], pad_id: int):
    width = max(len(data[i].ids) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), -100, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(data[i].ids)
        ids[row, :n] = torch.tensor(data[i].ids)
        labels[row, :n] = torch.tensor(data[i].labels)
        mask[row, :n] = 1
    return ids, labels, mask


def train(
    model,
    tokenizer,
    data: list[Encoded],
    stage: Stage,
    *,
    seed: int,
    desc: str,
    log_every: int = 25,
    every: int = 0,
    on_step=None,
):
    """Train `model` in place (or, with stage.lora_r, a PEFT LoRA over it, which is returned).

    `on_step(step, model)` is called after every `every`-th step (and the last), in eval mode; it
    may read the model (e.g. measure it), not change it."""
    if stage.lora_r:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        cfg = LoraConfig(
            r=stage.lora_r,
            lora_alpha=stage.lora_alpha,
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
            target_modules=list(stage.lora_targets),
        )
        model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params] if stage.ema else None
    start = [p.detach().clone() for p in params] if stage.anchor else None
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < stage.warmup:
            return (step + 1) / stage.warmup
        t = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(seed)
    model.train()
    t0, tokens, running = time.time(), 0, 0.0
    for step, idx in enumerate(_batches(data, stage.batch_size, stage.steps, rng)):
        ids, labels, mask = _collate(data, idx, tokenizer.pad_token_id)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if start is not None:  # pull toward the starting weights, decoupled like AdamW's decay
            with torch.no_grad():
                torch._foreach_lerp_(
                    params, start, stage.lr * sched.get_last_lr()[0] / stage.lr * stage.anchor
                )
        sched.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - stage.ema)
        tokens += int(mask.sum())
        running = loss.item() if step == 0 else 0.9 * running + 0.1 * loss.item()
        if (step + 1) % log_every == 0 or step + 1 == stage.steps:
            dt = time.time() - t0
            log.info(
                "%s: step %d/%d loss %.3f (%.0f tok/s)",
                desc,
                step + 1,
                stage.steps,
                running,
                tokens / max(dt, 1e-9),
            )
        if on_step is not None and every and ((step + 1) % every == 0 or step + 1 == stage.steps):
            model.eval()
            on_step(step + 1, model)
            model.train()
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema, strict=True):
                p.copy_(e)
    model.eval()
    return model
