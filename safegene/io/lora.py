"""PEFT LoRA adapter directories: the one reader (with PEFT's own scaling) and the one writer.

The layout is stock PEFT: `adapter_config.json` and `adapter_model.safetensors` with keys
`base_model.model.<module path>.lora_A.weight` (r × in) and `….lora_B.weight` (out × r). A module
adds `scaling · B @ A`, scaling = lora_alpha / r (lora_alpha / √r with use_rslora), where r and
lora_alpha of a module come from rank_pattern / alpha_pattern as PEFT looks them up
(`peft.utils.other.get_pattern_key`: the first key matching the end of the module path as a regex).

- `read_adapter(path) -> LoraAdapter`: the factors read lazily, one module at a time;
- `lora_scaling(config, module_path, rank)`: one module's scaling, as PEFT computes it;
- `adapter_base_model(path)`, `max_lora_rank(path)`: what a config names, read leniently;
- `AdapterWriter(directory, base_model, num_layers, revision)`: SafeGene's own adapters (genes,
  `apply`'s outputs): factors streamed in, then a config whose scaling is exactly 1
  (`adapter_config`); base_model is a Hub id (with its revision) where the base came from the
  HF cache, else a local path (safegene.io.hub.model_name).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import torch

from safegene.errors import SafeGeneError
from safegene.family import parse_name
from safegene.io.reader import ModelReader
from safegene.io.untrusted import read_json
from safegene.io.writer import SpooledWriter

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# What cannot be written as δ = scaling · B @ A per Linear (config key, its name for the user).
UNSUPPORTED = (
    ("use_dora", "DoRA"),
    ("modules_to_save", "modules_to_save"),
    ("lora_bias", "LoRA biases"),
    ("fan_in_fan_out", "fan_in_fan_out"),
)


# --- reading -----------------------------------------------------------------------------------


def read_adapter_config(path: str | os.PathLike) -> dict:
    """A LoRA adapter's config; SafeGeneError for anything else or what cannot be merged exactly."""
    path = Path(path)
    file = path / ADAPTER_CONFIG
    if not file.is_file():
        raise SafeGeneError(f"not a PEFT adapter directory (no {ADAPTER_CONFIG}): {path}")
    config = read_json(file)
    if not isinstance(config, dict):
        raise SafeGeneError(f"unreadable {file}: not a JSON object")
    if config.get("peft_type") != "LORA":
        raise SafeGeneError(
            f"{path} is a {config.get('peft_type')} adapter; only LoRA is supported"
        )
    for key, what in UNSUPPORTED:
        if config.get(key):
            raise SafeGeneError(f"the adapter {path} uses {what}, which cannot be combined exactly")
    problem = _config_problem(config)
    if problem:
        raise SafeGeneError(f"invalid {file}: {problem}")
    return config


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _config_problem(config: dict) -> str | None:
    """What is wrong with the values of a LoRA config (PEFT would fail on them, or later), if
    anything: r and rank_pattern positive integers, lora_alpha and alpha_pattern finite numbers,
    target_modules a string or a list of strings."""
    if "r" in config and not (_is_int(config["r"]) and config["r"] > 0):
        return f"r must be a positive integer, got {config['r']!r}"
    if "lora_alpha" in config and not _is_number(config["lora_alpha"]):
        return f"lora_alpha must be a number, got {config['lora_alpha']!r}"
    for key, ok in (
        ("rank_pattern", lambda v: _is_int(v) and v > 0),
        ("alpha_pattern", _is_number),
    ):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict):
            return f"{key} must be a mapping"
        bad = [(k, v) for k, v in pattern.items() if not ok(v)]
        if bad:
            return f"{key}[{bad[0][0]!r}] is invalid: {bad[0][1]!r}"
    targets = config.get("target_modules")
    if targets is not None and not (
        isinstance(targets, str)
        or isinstance(targets, list)
        and all(isinstance(t, str) for t in targets)
    ):
        return f"target_modules must be a string or a list of strings, got {targets!r}"
    return None


def _tolerant_config(path: str | os.PathLike) -> dict:
    """An adapter's config as far as it reads ({} when absent or unreadable)."""
    try:
        config = read_json(Path(path) / ADAPTER_CONFIG)
    except (OSError, SafeGeneError):
        return {}
    return config if isinstance(config, dict) else {}


def adapter_base_model(path: str | os.PathLike) -> str | None:
    """The base model an adapter's config names (None when it names none or does not read)."""
    named = _tolerant_config(path).get("base_model_name_or_path")
    return named if isinstance(named, str) and named else None


def max_lora_rank(path: str | os.PathLike) -> int | None:
    """The largest rank an adapter's config declares (r and rank_pattern), e.g. for vLLM."""
    config = _tolerant_config(path)
    if not config:
        return None
    if _config_problem(config):
        return None
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def _pattern_value(patterns: dict | None, module_path: str, default):
    """rank_pattern / alpha_pattern lookup, by PEFT's own rule (imported only when needed)."""
    if not patterns:
        return default
    from peft.utils.other import get_pattern_key

    return patterns.get(get_pattern_key(list(patterns), module_path), default)


def lora_scaling(config: dict, module_path: str, rank: int) -> float:
    """PEFT's scaling of one module (`module_path` as in the model, e.g.
    "model.layers.3.self_attn.q_proj"); `rank` is the stored factors' rank, used where the
    config names none."""
    r = _pattern_value(config.get("rank_pattern"), module_path, config.get("r", rank))
    alpha = _pattern_value(config.get("alpha_pattern"), module_path, config.get("lora_alpha", r))
    return float(alpha / (r**0.5 if config.get("use_rslora") else r))


class LoraModule(NamedTuple):
    """One adapted Linear: its factors' keys in the adapter file and its scaling."""

    a_key: str
    b_key: str
    scale: float


class LoraAdapter:
    """A PEFT LoRA adapter read lazily: `modules` {module path: LoraModule}, in file order.
    `close()` closes its file(s)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config = read_adapter_config(self.path)
        self.reader = ModelReader(self.path, prefix="adapter_model", need_config=False)
        try:
            self.modules = self._index()
        except BaseException:
            self.reader.close()
            raise

    def _index(self) -> dict[str, LoraModule]:
        modules = {}
        for name in self.reader.names():
            if name.endswith(".lora_A.weight"):
                key = name[: -len(".lora_A.weight")]
                b_key = key + ".lora_B.weight"
                if b_key not in self.reader:
                    raise SafeGeneError(f"the adapter {self.path} has {name} but no {b_key}")
                module = key.removeprefix(PEFT_PREFIX)
                a_shape, b_shape = self.reader.entry(name).shape, self.reader.entry(b_key).shape
                if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
                    raise SafeGeneError(
                        f"the adapter {self.path}: the factors of {module!r} have the shapes "
                        f"{list(a_shape)} and {list(b_shape)}, which do not multiply"
                    )
                rank = a_shape[0]
                if rank == 0:
                    raise SafeGeneError(f"the adapter {self.path}: {module!r} has rank 0")
                modules[module] = LoraModule(name, b_key, lora_scaling(self.config, module, rank))
            elif ".lora_B." not in name:
                raise SafeGeneError(
                    f"the adapter {self.path} holds {name!r}, which is not a LoRA linear factor "
                    "(embedding LoRA and extra tensors are unsupported)"
                )
        return modules

    def shape(self, module: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The stored shapes of one module's (lora_A, lora_B), without reading them."""
        m = self.modules[module]
        return tuple(self.reader.entry(m.a_key).shape), tuple(self.reader.entry(m.b_key).shape)

    def factors(self, module: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(lora_A, lora_B, scaling) in float32; the module adds scaling · B @ A."""
        m = self.modules[module]
        return (
            self.reader.get(m.a_key, torch.float32),
            self.reader.get(m.b_key, torch.float32),
            m.scale,
        )

    def delta(self, module: str) -> torch.Tensor:
        """scaling · B @ A in float32."""
        a, b, s = self.factors(module)
        return (b @ a).mul_(s)

    def close(self) -> None:
        self.reader.close()


def read_adapter(path: str | os.PathLike) -> LoraAdapter:
    """Open a PEFT LoRA adapter; refuses what cannot be merged exactly (DoRA, modules_to_save,
    LoRA biases, fan_in_fan_out, embeddings)."""
    return LoraAdapter(path)


def check_adapter_fits(adapter: LoraAdapter, shapes: dict[str, tuple[int, ...]], what: str) -> None:
    """Every module the adapter adapts exists in the model (`shapes`: its tensors' shapes) with
    the shape its factors multiply to; the first mismatch is named. The one check of an adapter
    against a model, for every command (PEFT itself would drop an unknown module silently)."""
    for mod in adapter.modules:
        weight = mod + ".weight"
        if weight not in shapes:
            raise SafeGeneError(f"the adapter {adapter.path} targets {mod!r}, which {what} lacks")
        a, b = adapter.shape(mod)
        if (b[0], a[1]) != tuple(shapes[weight]):
            raise SafeGeneError(
                f"the adapter's factors for {mod!r} do not fit its shape "
                f"{tuple(shapes[weight])} in {what}"
            )


def validate_adapter(
    path: str | os.PathLike, model: str | os.PathLike, *, allow_pickle: bool = False
) -> None:
    """`read_adapter(path)` (its config and factors) and `check_adapter_fits` on the model
    directory `model`: what every command checks before PEFT loads an adapter."""
    adapter = read_adapter(path)
    try:
        with ModelReader(model, allow_pickle=allow_pickle) as reader:
            check_adapter_fits(adapter, reader.shapes(), f"the model {model}")
    finally:
        adapter.close()


# --- writing -----------------------------------------------------------------------------------


def adapter_config(
    ranks: dict[str, int], base_model: str, num_layers: int, revision: str | None = None
) -> dict:
    """A PEFT LoRA config for modules {module path: rank} with scaling exactly 1 everywhere.

    target_modules is the list of short module names when the modules cover every layer
    uniformly (all `num_layers` layers, every name), else a regex that matches exactly the given
    module paths.

    r is the largest rank present and lora_alpha == r, so both loaders scale every module by 1:
    PEFT reads each smaller rank from rank_pattern (with an equal alpha_pattern, alpha/r = 1);
    vLLM ignores both patterns, takes each module's rank from its tensors, scales every module by
    the global lora_alpha / r (= 1) and checks `max_lora_rank >= r` — with r the largest rank,
    that check is the one that matters.
    """
    if not ranks:
        raise SafeGeneError("nothing to put in the adapter (every coefficient is 0 or unselected)")
    r = max(ranks.values())
    pattern = {m: k for m, k in ranks.items() if k != r}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": _target_modules(list(ranks), num_layers),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": revision,
    }


def _target_modules(paths: list[str], num_layers: int) -> list[str] | str:
    """Short names when `paths` are exactly every layer × every short name, else an exact regex
    (PEFT full-matches a string target_modules against each module path)."""
    short = sorted({p.rsplit(".", 1)[-1] for p in paths})
    layers = {parse_name(p + ".weight").layer for p in paths}
    if layers == set(range(num_layers)) and len(set(paths)) == num_layers * len(short):
        return short
    return "^(?:" + "|".join(re.escape(p) for p in sorted(paths)) + ")$"


def write_adapter_config(directory: str | os.PathLike, config: dict) -> None:
    (Path(directory) / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


class AdapterWriter:
    """A SafeGene adapter written into `directory` (inside an atomic output): `write(module, A, B)`
    streams each module's factors (B already holding every scale), and leaving the `with` block
    writes adapter_config.json with scaling 1 (or, on an exception, removes the partial file)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        base_model: str,
        num_layers: int,
        revision: str | None = None,
    ):
        self.directory = Path(directory)
        self.base_model, self.num_layers, self.revision = base_model, num_layers, revision
        self.ranks: dict[str, int] = {}
        self._weights = SpooledWriter(self.directory / ADAPTER_WEIGHTS)

    def write(self, module: str, a: torch.Tensor, b: torch.Tensor) -> None:
        self._weights.write(PEFT_PREFIX + module + ".lora_A.weight", a)
        self._weights.write(PEFT_PREFIX + module + ".lora_B.weight", b)
        self.ranks[module] = a.shape[0]

    def __enter__(self) -> AdapterWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self._weights.abort()
            return
        self._weights.close()
        write_adapter_config(
            self.directory,
            adapter_config(self.ranks, self.base_model, self.num_layers, self.revision),
        )
