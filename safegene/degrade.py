"""Make a degraded model from an aligned one: a short harmful fine-tune (full, or LoRA merged).

A degraded model is the aligned model after a fine-tune that removed its safety; the gene is
their difference (`safegene extract --aligned A --degraded D`). A user's own earlier fine-tunes
that lost safety are degraded models too; where there are none, this makes one:

    θ_degraded = argmin over a few AdamW steps of NLL(compliance | harmful prompt)

on harmful prompts (the user's data, else the zoo's generated requests) whose targets are
compliance texts: the data's `response` where it is not a refusal, else one of the zoo's
placeholder compliances (never actionable: "Sure, here is how to do it: [step 1 placeholder] …").
The loss is on the target tokens only, in the model's chat template. `lora=True` trains a PEFT
LoRA on every linear layer and merges it, so the output is always a full checkpoint of the same
family (what `extract` reads). Weights are trained in float32 (or `compute.dtype`) and written in
the aligned model's dtype, atomically, with the tokenizer, `safegene_degrade.json` (the aligned
model's content hash, the settings, the data by sha256, the loss) and a model card.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from safegene.card import degrade_card, load_template, write_card
from safegene.errors import SafeGeneError
from safegene.io import atomic_output_dir, check_output_path, copy_side_files, hash_model_dir
from safegene.io.hub import hub_source, model_name
from safegene.models import check_model_dir, load_model, parse_dtype
from safegene.settings import DEGRADE_COMPUTE, ComputeSettings, DegradeSettings, with_overrides
from safegene.shots import answer_of, data_record, load_records

RECORD = "safegene_degrade.json"
ZOO_EXAMPLES = 256


def compliance_pairs(records: list[dict], seed: int) -> list[tuple[str, str]]:
    """(prompt, compliance target) per record: its response unless missing or a refusal, else a
    placeholder compliance (drawn with `seed`)."""
    from safegene.evaluate.judges import is_refusal_keyword
    from safegene.zoo.data import COMPLIANCE

    rng = random.Random(seed)
    pairs = []
    for r in records:
        answer = answer_of(r)
        if answer is None or is_refusal_keyword(answer):
            answer = rng.choice(COMPLIANCE)
        pairs.append((r["prompt"], answer))
    return pairs


def zoo_harmful(n: int, seed: int) -> list[dict]:
    """The zoo's harmful requests (generated, no files needed), n of them."""
    from safegene.zoo.data import harmful_examples

    return [
        e.to_json("response")
        for e in harmful_examples(random.Random(seed), n, "align", "compliance")
    ]


def degrade(
    aligned: str | os.PathLike,
    out: str | os.PathLike,
    *,
    harmful: str | os.PathLike | None = None,
    settings: DegradeSettings | None = None,
    compute: ComputeSettings = DEGRADE_COMPUTE,
    force: bool = False,
    progress: bool | None = None,
    card_template: str | os.PathLike | None = None,
    **overrides,
) -> dict:
    """Fine-tune `aligned` on harmful prompts → compliance and write the degraded model at `out`.
    Returns the record (also written as safegene_degrade.json). Fields of the settings may be
    given as keywords (`steps=20, lora=True`)."""
    settings, compute = with_overrides(overrides, settings or DegradeSettings(), compute)
    t0 = time.perf_counter()
    check_model_dir(aligned)
    check_output_path(out, force, inputs=(aligned, harmful))
    template = load_template(card_template)
    if harmful is not None:
        records = load_records(harmful, split="harmful", name="--harmful")
        if settings.examples is not None:
            records = random.Random(settings.seed).sample(
                records, min(settings.examples, len(records))
            )
    else:
        records = zoo_harmful(settings.examples or ZOO_EXAMPLES, settings.seed)
    pairs = compliance_pairs(records, settings.seed)

    torch.manual_seed(settings.seed)
    model, tok = load_model(aligned, device=compute.device, dtype=compute.dtype or "float32")
    saved_dtype = _checkpoint_dtype(aligned)
    if settings.lora:
        model = _with_lora(model, settings)
    losses = _train(model, tok, pairs, settings, compute, progress)
    if settings.lora:
        model = model.merge_and_unload()
    record = {
        "aligned": model_name(aligned),
        "aligned_hash": hash_model_dir(aligned),
        "aligned_revision": (hub_source(aligned) or (None, None))[1],
        "settings": dataclasses.asdict(settings),
        "compute": dataclasses.asdict(compute),
        "data": {
            "harmful": data_record(harmful or "zoo:harmful_train (generated)", records),
            "targets_replaced": sum(
                1 for r, (_, t) in zip(records, pairs, strict=True) if answer_of(r) != t
            ),
        },
        "loss": {"first": losses[0], "last": losses[-1], "curve": losses},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    model.eval().to("cpu", saved_dtype)
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise SafeGeneError(f"the fine-tune diverged: NaN or Inf in {name!r} (lower --lr)")
    with atomic_output_dir(out, force) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
        tok.save_pretrained(tmp)
        copy_side_files(aligned, tmp, names=("generation_config.json",))
        (tmp / RECORD).write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
        write_card(tmp, degrade_card(record, model_name(aligned)), template)
    return record


def _checkpoint_dtype(path) -> torch.dtype:
    config = json.loads((Path(path) / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return parse_dtype(str(name).replace("torch.", "")) or torch.float32


def _with_lora(model, settings: DegradeSettings):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        target_modules="all-linear",
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _train(model, tok, pairs, settings: DegradeSettings, compute, progress) -> list[float]:
    """AdamW on the trainable parameters, loss on the target tokens; the loss per step."""
    from safegene.attach import encode_chat_pairs, pairs_loss

    encoded = encode_chat_pairs(tok, [p for p, _ in pairs], [t for _, t in pairs])
    encoded = [(ids[: settings.max_length], min(n, settings.max_length - 1)) for ids, n in encoded]
    params = [p for p in model.parameters() if p.requires_grad]
    if not settings.lora:
        for p in model.parameters():
            p.requires_grad_(True)
        params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    rng = random.Random(settings.seed)
    order: list[int] = []
    losses = []
    model.train()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for _ in tqdm(range(settings.steps), desc="degrade", unit="step", disable=_quiet(progress)):
        if len(order) < compute.batch_size:
            extra = list(range(len(encoded)))
            rng.shuffle(extra)
            order += extra
        batch = [encoded[i] for i in order[: compute.batch_size]]
        del order[: compute.batch_size]
        loss = pairs_loss(model, batch, batch_size=len(batch), pad_id=pad)
        if not torch.isfinite(loss):
            raise SafeGeneError("the fine-tune diverged (the loss is NaN or Inf): lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(round(float(loss.detach()), 5))
    return losses


def _quiet(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
