"""Generation backends behind one interface.

`TransformersBackend` (the default): batched `model.generate` on CPU or GPU, chat template applied
by the tokenizer, prompts sorted by length and padded on the left, KV cache, greedy by default,
sampling seeded per batch. `VLLMBackend` (optional extra `safegene[vllm]`): the same prompts
rendered by the same chat template and tokenized the same way, served by vLLM as token prompts, a
LoRA adapter through a vLLM `LoRARequest`.

Data parallelism: the batches are formed once over *all* prompts, in the same way for any number
of processes, and batch `b` is run by rank `b % world`. Every batch is therefore computed exactly as
in a single-process run, and the gathered outputs are the same. `generate(...)` is the simple
single-process call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from safegene.errors import SafeGeneError
from safegene.io.lora import max_lora_rank

BACKENDS = ("transformers", "vllm")


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    batch_size: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    template: str | None = None  # a Jinja chat template overriding (or supplying) the tokenizer's

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise SafeGeneError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise SafeGeneError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise SafeGeneError("sampling needs temperature > 0 and 0 < top_p <= 1")

    def describe(self) -> dict:
        d = asdict(self)
        d["template"] = "custom" if self.template else "tokenizer"
        return d


def chat_texts(tokenizer, prompts: list[str], template: str | None = None) -> list[str]:
    """Each prompt as one user turn, rendered by the tokenizer's chat template (or `template`)."""
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise SafeGeneError(
            "the tokenizer has no chat template; pass --template FILE (a Jinja chat template)"
        )
    from safegene.evaluate.chat import render_chat

    return [
        render_chat(
            tokenizer, [{"role": "user", "content": p}], template, add_generation_prompt=True
        )
        for p in prompts
    ]


def plan_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (fewer pad tokens); stable, so
    deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def input_device(model) -> torch.device:
    """Where the inputs go: the embedding's device (right for device_map='auto' too)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (chat models such as
    Llama-3-Instruct end a turn with a token other than the tokenizer's EOS)."""
    ids: list[int] = []
    cfg = getattr(model, "generation_config", None)
    for v in (getattr(cfg, "eos_token_id", None), tokenizer.eos_token_id):
        for i in v if isinstance(v, (list, tuple)) else [v]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


@torch.inference_mode()
def generate_texts(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    desc: str = "generating",
) -> list[tuple[int, str]]:
    """Complete already-rendered `texts`; returns (index, completion) for this rank's batches.

    Batch `b` (of the length-sorted plan) runs on rank `b % world`; with sampling, batch `b` is
    seeded with `seed + b`, so the outputs do not depend on the number of processes.
    """
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = input_device(model)
    eos = stop_token_ids(model, tokenizer)
    lengths = [len(t) for t in texts]
    batches = [
        (b, idx) for b, idx in enumerate(plan_batches(lengths, batch_size)) if b % world == rank
    ]
    out: list[tuple[int, str]] = []
    bar = tqdm(
        total=sum(len(i) for _, i in batches),
        desc=desc,
        disable=not progress,
        leave=False,
        unit="prompt",
    )
    for b, idx in batches:
        enc = tokenizer(
            [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        if do_sample:
            torch.manual_seed(seed + b)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        new = gen[:, enc["input_ids"].shape[1] :]
        for i, row in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
            out.append((i, row.strip()))
        bar.update(len(idx))
    bar.close()
    return out


def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    template: str | None = None,
    progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """One completion per prompt, in the prompts' order (single process, transformers).

    Prompts are batched by length and padded on the left, so greedy outputs are the same as one
    prompt at a time up to floating-point ties.
    """
    texts = chat_texts(tokenizer, prompts, template)
    pairs = generate_texts(
        model,
        tokenizer,
        texts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        progress=progress,
        desc=desc,
    )
    outputs: list[str | None] = [None] * len(prompts)
    for i, text in pairs:
        outputs[i] = text
    return outputs  # type: ignore[return-value]


# --- backends ------------------------------------------------------------------------------------


class GenerationBackend:
    """Turns user prompts into completions. `generate_shard` returns (index, text) for the share of
    the prompts that belongs to `rank` of `world`; `generate` is the whole list, in order."""

    name = "base"

    def generate_shard(
        self,
        prompts: list[str],
        settings: GenerationSettings,
        *,
        rank: int = 0,
        world: int = 1,
        progress: bool = True,
        desc: str = "generating",
    ) -> list[tuple[int, str]]:
        raise NotImplementedError

    def generate(
        self,
        prompts: list[str],
        settings: GenerationSettings,
        *,
        progress: bool = True,
        desc: str = "generating",
    ) -> list[str]:
        outputs: list[str | None] = [None] * len(prompts)
        for i, text in self.generate_shard(prompts, settings, progress=progress, desc=desc):
            outputs[i] = text
        return outputs  # type: ignore[return-value]

    def describe(self) -> dict:
        return {"backend": self.name}

    def close(self) -> None:
        pass


class TransformersBackend(GenerationBackend):
    name = "transformers"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def generate_shard(
        self, prompts, settings, *, rank=0, world=1, progress=True, desc="generating"
    ):
        texts = chat_texts(self.tokenizer, prompts, settings.template)
        return generate_texts(
            self.model,
            self.tokenizer,
            texts,
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
            do_sample=settings.do_sample,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=settings.seed,
            rank=rank,
            world=world,
            progress=progress,
            desc=desc,
        )

    def describe(self):
        p = next(self.model.parameters())
        return {
            "backend": self.name,
            "device": str(input_device(self.model)),
            "dtype": str(p.dtype).replace("torch.", ""),
            "device_map": getattr(self.model, "hf_device_map", None) is not None,
        }


# --- vLLM (optional extra) -----------------------------------------------------------------------


_VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def vllm_request_args(
    settings: GenerationSettings,
    *,
    model_path: str,
    adapter: str | None = None,
    dtype: str | None = None,
    lora_rank: int | None = None,
    seed: int | None = None,
    extra_llm_args: dict | None = None,
) -> dict:
    """The keyword arguments of vLLM's `LLM(...)`, `SamplingParams(...)` and `LoRARequest(...)`
    for these settings, as plain data (so they can be checked without vLLM installed).

    Greedy decoding is temperature 0 in vLLM. A LoRA adapter is served through a LoRA request
    (`LoRARequest(lora_name, lora_int_id, lora_path)`) on an engine created with `enable_lora=True`.
    """
    llm = {
        "model": model_path,
        "tokenizer": model_path,
        "trust_remote_code": False,
        "seed": settings.seed if seed is None else seed,
    }
    if dtype and dtype != "auto":
        llm["dtype"] = _VLLM_DTYPES.get(dtype.lower(), dtype)
    lora = None
    if adapter is not None:
        llm["enable_lora"] = True
        if lora_rank is not None:
            llm["max_lora_rank"] = max(8, 1 << max(0, int(lora_rank) - 1).bit_length())
        lora = {"lora_name": "adapter", "lora_int_id": 1, "lora_path": str(adapter)}
    llm.update(extra_llm_args or {})
    sampling = {
        "max_tokens": settings.max_new_tokens,
        "temperature": settings.temperature if settings.do_sample else 0.0,
        "top_p": settings.top_p if settings.do_sample else 1.0,
    }
    if settings.do_sample:
        sampling["seed"] = settings.seed
    return {"llm": llm, "sampling": sampling, "lora": lora}


def vllm_prompts(tokenizer, texts: list[str]) -> list[dict]:
    """vLLM `TokensPrompt`s of chat-rendered texts, tokenized exactly as the transformers backend
    does (no special tokens added: the chat template already wrote BOS where the model wants
    one)."""
    return [
        {"prompt_token_ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts
    ]


def import_vllm():
    try:
        import vllm  # noqa: F401
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise SafeGeneError(
            "the vLLM backend needs the optional extra: pip install 'safegene[vllm]' "
            "(a CUDA machine); or use --backend transformers"
        ) from None
    return LLM, SamplingParams, LoRARequest


class VLLMBackend(GenerationBackend):
    """vLLM offline inference. Prompts are rendered with the Hugging Face tokenizer's chat template
    and tokenized exactly as for transformers, then passed to `LLM.generate` as token prompts; an
    adapter goes through a `LoRARequest`. One process (vLLM batches and shards on its own)."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        adapter: str | None = None,
        *,
        tokenizer=None,
        dtype: str | None = None,
        llm_args: dict | None = None,
    ):
        self._classes = import_vllm()
        from safegene.models import check_adapter_dir, check_model_dir, load_tokenizer

        self.model_path = str(check_model_dir(model_path))
        self.adapter = str(check_adapter_dir(adapter)) if adapter else None
        self.tokenizer = tokenizer or load_tokenizer(model_path)
        self.dtype = dtype
        self.llm_args = llm_args or {}
        self._llm = None

    def _engine(self, settings: GenerationSettings):
        LLM, _, _ = self._classes
        if self._llm is None:
            args = vllm_request_args(
                settings,
                model_path=self.model_path,
                adapter=self.adapter,
                dtype=self.dtype,
                lora_rank=max_lora_rank(self.adapter) if self.adapter else None,
                extra_llm_args=self.llm_args,
            )
            self._llm = LLM(**args["llm"])
        return self._llm

    def generate_shard(
        self, prompts, settings, *, rank=0, world=1, progress=True, desc="generating"
    ):
        _, SamplingParams, LoRARequest = self._classes
        texts = chat_texts(self.tokenizer, prompts, settings.template)
        mine = [i for i in range(len(texts)) if i % world == rank]
        args = vllm_request_args(
            settings, model_path=self.model_path, adapter=self.adapter, dtype=self.dtype
        )
        llm = self._engine(settings)
        lora = LoRARequest(**args["lora"]) if args["lora"] else None
        params = SamplingParams(**args["sampling"])
        results = llm.generate(
            vllm_prompts(self.tokenizer, [texts[i] for i in mine]),
            params,
            lora_request=lora,
            use_tqdm=progress,
        )
        return [(i, r.outputs[0].text.strip()) for i, r in zip(mine, results, strict=True)]

    def describe(self):
        return {
            "backend": self.name,
            "dtype": self.dtype or "auto",
            "lora_request": self.adapter is not None,
        }

    def close(self):
        self._llm = None
