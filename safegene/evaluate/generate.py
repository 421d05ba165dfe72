"""Batched generation with transformers: chat template, left padding, KV cache, greedy by default."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from safegene.errors import SafeGeneError


def chat_texts(tokenizer, prompts: list[str], template: str | None = None) -> list[str]:
    """Each prompt as one user turn, rendered by the tokenizer's chat template (or `template`)."""
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise SafeGeneError("the tokenizer has no chat template; pass --template FILE (a Jinja chat template)")
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True, chat_template=template)
            for p in prompts]


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, batch_size: int = 32,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             template: str | None = None, progress: bool = True, desc: str = "generating") -> list[str]:
    """One completion per prompt, in the prompts' order.

    Prompts are batched by length (fewer pad tokens) and padded on the left, so greedy outputs are
    the same as one prompt at a time up to floating-point ties.
    """
    texts = chat_texts(tokenizer, prompts, template)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outputs: list[str | None] = [None] * len(texts)
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    if do_sample:
        torch.manual_seed(seed)
    bar = tqdm(total=len(texts), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                             temperature=temperature if do_sample else None,
                             top_p=top_p if do_sample else None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        for i, row in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
            outputs[i] = row.strip()
        bar.update(len(idx))
    bar.close()
    return outputs  # type: ignore[return-value]
