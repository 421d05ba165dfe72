"""Loading a Hugging Face causal LM (and optionally a PEFT adapter) the safe way.

Safetensors only unless pickle is explicitly allowed; `trust_remote_code` is never implied.
Every user-facing failure is a SafeGeneError naming the path.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from safegene.errors import SafeGeneError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """'bf16' → torch.bfloat16; None/'auto' → None (the checkpoint's own dtype)."""
    if name is None or name == "auto":
        return None
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise SafeGeneError(
            f"unknown dtype {name!r}; choose one of {sorted(set(_DTYPES))} or auto"
        ) from None


def device_problem(device) -> str | None:
    """What is wrong with a device name (`cpu`, `cuda`, `cuda:1`, `auto`), if anything."""
    if device == "auto":
        return None
    if not isinstance(device, str):
        return f"expected a device name, got {device!r}"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        return f"unknown device {device!r} (e.g. cpu, cuda, cuda:1)"
    if kind == "cuda" and not torch.cuda.is_available():
        return f"device {device}: no CUDA device is available here"
    return None


def check_model_dir(path: str | Path, *, allow_pickle: bool = False) -> Path:
    """A Hugging Face model directory with a config and safetensors weights, or a clear error."""
    path = Path(path)
    if not path.is_dir():
        raise SafeGeneError(f"model directory not found: {path}")
    from safegene.io.untrusted import check_regular_files

    check_regular_files(path)
    if not (path / "config.json").is_file():
        raise SafeGeneError(f"not a Hugging Face model directory (no config.json): {path}")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth"})
        if not pickles:
            raise SafeGeneError(f"no weights (*.safetensors) in {path}")
        if not allow_pickle:
            raise SafeGeneError(
                f"{path} holds only pickle weights ({pickles[0]}); convert them to safetensors "
                "or pass --allow-pickle to load them with weights_only=True"
            )
    from safegene.io.reader import ModelReader

    # the one validation of weights, for every loader: safetensors headers and shard index, or
    # (allow_pickle) a weights_only load that must give a flat dict of tensors
    ModelReader(path, allow_pickle=allow_pickle).close()
    return path


def check_adapter_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise SafeGeneError(f"not a PEFT adapter directory (no adapter_config.json): {path}")
    if not (path / "adapter_model.safetensors").is_file():
        raise SafeGeneError(f"no adapter_model.safetensors in {path}")
    from safegene.io.lora import read_adapter

    read_adapter(path).close()  # the one adapter validation (config, factors)
    return path


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:  # transformers raises many types for a broken tokenizer
        raise SafeGeneError(f"cannot load the tokenizer of {path}: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str | Path,
    adapter: str | Path | None = None,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    device_map: str | None = None,
):
    """(model, tokenizer) in eval mode; with `adapter`, a PeftModel over the model (not merged)."""
    from transformers import AutoModelForCausalLM

    path = check_model_dir(path, allow_pickle=allow_pickle)
    if adapter is not None:
        from safegene.io.lora import validate_adapter

        validate_adapter(adapter, path, allow_pickle=allow_pickle)  # as `apply` checks it
    torch_dtype = parse_dtype(dtype) if isinstance(dtype, (str, type(None))) else dtype
    kwargs = dict(trust_remote_code=False, use_safetensors=not allow_pickle, weights_only=True)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except pickle.UnpicklingError as exc:  # weights_only=True met something other than tensors
        detail = next(
            (ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), ""
        )
        detail = (
            detail.split(". Please")[0].removeprefix("WeightsUnpickler error: ")
            or "not plain tensors"
        )
        raise SafeGeneError(
            f"refused to unpickle the weights in {path} ({detail}): loading them would "
            "run code; convert the checkpoint to safetensors where it is trusted"
        ) from None
    except (OSError, ValueError) as exc:
        raise SafeGeneError(f"cannot load the model in {path}: {exc}") from exc
    if adapter is not None:
        from peft import PeftModel

        adapter = check_adapter_dir(adapter)
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    if device_map is None:
        model.to(device)
    model.eval()
    return model, load_tokenizer(path)
