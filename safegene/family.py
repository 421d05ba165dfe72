"""Which tensor belongs to which layer and module, the family fingerprint, compatibility checks.

Architecture knowledge is data: `FAMILIES` maps a config `model_type` to the module paths of one
decoder layer and their kind ("attn", "mlp", "norm"), plus the non-layer tensors. Anything not
in the table (a new model_type, an extra tensor) falls back to inference from the name
(`...layers.{L}.<path>.<weight|bias>`, kind from words like attn/mlp/norm).

    parse_name("model.layers.3.self_attn.q_proj.weight", "llama")
      -> TensorName(layer=3, path="self_attn.q_proj", module="q_proj", kind="attn", param="weight")
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from safegene.errors import SafeGeneError

_LLAMA_LAYER = {
    "self_attn.q_proj": "attn",
    "self_attn.k_proj": "attn",
    "self_attn.v_proj": "attn",
    "self_attn.o_proj": "attn",
    "mlp.gate_proj": "mlp",
    "mlp.up_proj": "mlp",
    "mlp.down_proj": "mlp",
    "input_layernorm": "norm",
    "post_attention_layernorm": "norm",
}
_GLOBAL = {"model.embed_tokens": "embed", "model.norm": "norm", "lm_head": "lm_head"}

# model_type -> (layer prefix regex, per-layer module paths -> kind, global module paths -> kind)
FAMILIES: dict[str, dict] = {
    "llama": {"layer_modules": _LLAMA_LAYER, "global_modules": _GLOBAL},
    "mistral": {"layer_modules": _LLAMA_LAYER, "global_modules": _GLOBAL},
    "qwen2": {"layer_modules": _LLAMA_LAYER, "global_modules": _GLOBAL},  # + q/k/v biases
    "gemma": {"layer_modules": _LLAMA_LAYER, "global_modules": _GLOBAL},
    "gemma2": {
        "layer_modules": {
            **_LLAMA_LAYER,
            "pre_feedforward_layernorm": "norm",
            "post_feedforward_layernorm": "norm",
        },
        "global_modules": _GLOBAL,
    },
    "gemma3_text": {  # Gemma-3's text model: Gemma-2's four norms plus per-head q/k norms
        "layer_modules": {
            **_LLAMA_LAYER,
            "pre_feedforward_layernorm": "norm",
            "post_feedforward_layernorm": "norm",
            "self_attn.q_norm": "norm",
            "self_attn.k_norm": "norm",
        },
        "global_modules": _GLOBAL,
    },
    "qwen3": {  # Qwen2's layout without q/k/v biases, plus per-head q/k norms
        "layer_modules": {**_LLAMA_LAYER, "self_attn.q_norm": "norm", "self_attn.k_norm": "norm"},
        "global_modules": _GLOBAL,
    },
    "olmo2": {  # norms after attention and MLP (no input norm), q/k norms over the full width
        "layer_modules": {
            **{k: v for k, v in _LLAMA_LAYER.items() if k != "input_layernorm"},
            "post_feedforward_layernorm": "norm",
            "self_attn.q_norm": "norm",
            "self_attn.k_norm": "norm",
        },
        "global_modules": _GLOBAL,
    },
    "granite": {"layer_modules": _LLAMA_LAYER, "global_modules": _GLOBAL},  # + scalar multipliers
    "phi3": {
        "layer_modules": {
            "self_attn.qkv_proj": "attn",
            "self_attn.o_proj": "attn",
            "mlp.gate_up_proj": "mlp",
            "mlp.down_proj": "mlp",
            "input_layernorm": "norm",
            "post_attention_layernorm": "norm",
        },
        "global_modules": _GLOBAL,
    },
}
LAYER_RE = re.compile(
    r"^(?P<prefix>.*?\blayers)\.(?P<layer>\d+)\.(?P<path>.+)\.(?P<param>weight|bias)$"
)
GLOBAL_RE = re.compile(r"^(?P<path>.+)\.(?P<param>weight|bias)$")
KINDS = ("attn", "mlp", "norm", "embed", "lm_head", "other")
DEFAULT_KINDS = ("attn", "mlp")


@dataclass(frozen=True)
class TensorName:
    """A parsed tensor name. `layer` is None for tensors outside the decoder layers."""

    name: str
    layer: int | None
    path: str  # module path inside the layer ("self_attn.q_proj") or the global path
    kind: str
    param: str  # "weight" or "bias"

    @property
    def module(self) -> str:
        """Short module name ("q_proj"), what PEFT's target_modules use."""
        return self.path.rsplit(".", 1)[-1]

    @property
    def module_path(self) -> str:
        """The full module path without the parameter ("model.layers.3.self_attn.q_proj")."""
        return self.name.rsplit(".", 1)[0]


def infer_kind(path: str) -> str:
    """Fallback: a module's kind from the words in its path."""
    p = path.lower()
    if "norm" in p or p.endswith("ln") or ".ln_" in p:
        return "norm"
    if "attn" in p or "attention" in p:
        return "attn"
    if "mlp" in p or "ffn" in p or "feed_forward" in p or "experts" in p:
        return "mlp"
    if "embed" in p or "wte" in p:
        return "embed"
    if "lm_head" in p:
        return "lm_head"
    return "other"


def parse_name(name: str, model_type: str | None = None) -> TensorName:
    """Map a tensor name to (layer, module path, kind, param), by table, else by name."""
    table = FAMILIES.get(model_type or "", {})
    m = LAYER_RE.match(name)
    if m:
        path = m["path"]
        kind = table.get("layer_modules", {}).get(path) or infer_kind(path)
        return TensorName(name, int(m["layer"]), path, kind, m["param"])
    m = GLOBAL_RE.match(name)
    path = m["path"] if m else name
    kind = table.get("global_modules", {}).get(path) or infer_kind(path)
    return TensorName(name, None, path, kind, m["param"] if m else "")


def num_layers(config: dict) -> int:
    """Decoder layer count from a config dict (text_config for multimodal wrappers)."""
    cfg = config.get("text_config") or config
    if not isinstance(cfg, dict):
        raise SafeGeneError("config.json: text_config is not an object")
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in cfg:
            n = cfg[key]
            if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= 100_000:
                raise SafeGeneError(f"config.json: {key} must be a positive integer, got {n!r}")
            return n
    raise SafeGeneError("config.json gives no layer count (num_hidden_layers)")


def fingerprint(config: dict, shapes: dict[str, tuple[int, ...]]) -> dict:
    """What makes two checkpoints the same family: model_type, layer count, hidden size and a
    hash of the decoder-layer tensor names and shapes (embeddings/lm_head excluded so that a
    resized vocabulary or tied head does not change the family)."""
    cfg = config.get("text_config") or config
    model_type = cfg.get("model_type") or config.get("model_type")
    layer_shapes = {
        n: list(s) for n, s in sorted(shapes.items()) if parse_name(n, model_type).layer is not None
    }
    digest = hashlib.sha256(json.dumps(layer_shapes, sort_keys=True).encode()).hexdigest()
    n = num_layers(config)
    layers = {parse_name(name, model_type).layer for name in layer_shapes}
    if layers and layers != set(range(n)):
        raise SafeGeneError(
            f"config.json says {n} layers but the weights hold layers "
            f"{min(layers)}..{max(layers)} ({len(layers)} of them): the checkpoint disagrees "
            "with its config"
        )
    return {
        "model_type": model_type,
        "num_layers": n,
        "hidden_size": cfg.get("hidden_size"),
        "layer_tensors_sha256": digest,
    }


def check_compatible(
    expected: dict | None,
    config: dict,
    shapes: dict[str, tuple[int, ...]],
    tensors: dict[str, tuple[int, ...]] | None = None,
    what: str = "target",
) -> None:
    """Raise SafeGeneError naming the first mismatch between a family fingerprint (`expected`,
    e.g. a gene's) and a checkpoint (`config`, `shapes`): model_type, layer count, hidden size,
    then each tensor in `tensors` (name -> required shape) missing or of another shape.
    `expected` None (no family recorded, e.g. a gene from a plain PEFT adapter): tensors only."""
    got = fingerprint(config, shapes) if expected is not None else None
    for key in ("model_type", "num_layers", "hidden_size") if got else ():
        if expected.get(key) != got[key]:
            raise SafeGeneError(
                f"family mismatch: the gene was extracted from {key}="
                f"{expected.get(key)!r} but the {what} has {key}={got[key]!r}"
            )
    for name, shape in (tensors or {}).items():
        if name not in shapes:
            raise SafeGeneError(f"family mismatch: the {what} has no tensor {name!r}")
        if tuple(shapes[name]) != tuple(shape):
            raise SafeGeneError(
                f"family mismatch: {name!r} has shape {tuple(shapes[name])} in the "
                f"{what} but {tuple(shape)} in the gene"
            )
    if (
        got
        and expected.get("layer_tensors_sha256") not in (None, got["layer_tensors_sha256"])
        and not tensors
    ):
        raise SafeGeneError(
            f"family mismatch: the {what}'s decoder-layer tensors differ from the gene's"
        )
