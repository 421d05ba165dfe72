"""The safety gene: the `Gene` type, the only reader and writer of `safegene.json`; extraction of
δ = aligned − mean(degraded) and its compression to LoRA factors.

A gene is a directory. The compressed (default) form is a stock PEFT LoRA adapter:

    adapter_config.json         peft_type LORA, task_type CAUSAL_LM, target_modules, r == lora_alpha
                                == the largest rank (what vLLM checks and scales by)
                                (rank_pattern == alpha_pattern where ranks differ): scaling is 1
    adapter_model.safetensors   base_model.model.<module>.lora_A.weight (r×in, float32)
                                base_model.model.<module>.lora_B.weight (out×r, float32)
                                so that δ[module] = lora_B @ lora_A exactly
    safegene.json               the metadata below

so `PeftModel.from_pretrained(degraded_model, GENE)` adds δ to the model. The `--dense` form has
no adapter files; it holds `deltas.safetensors` (or shards + `deltas.safetensors.index.json`)
with the uncompressed float32 δ under the original tensor names (weights, and biases/norms when
they were asked for), plus the same safegene.json. A plain PEFT LoRA directory (no safegene.json)
opens as a gene too: its modules come from the adapter, its factors carry PEFT's scaling, and it
records no family, sources, scores, selection or coefficients.

safegene.json schema (format_version 2; version 1, the same without the two records, is read too)
-------------------------------------------------------------------------------------------------
    format            "safegene-gene"
    format_version    2
    kind              "lora" | "dense"
    fingerprint       {model_type, num_layers, hidden_size, layer_tensors_sha256}
                      (family.fingerprint); null for a gene saved from a plain PEFT adapter
                      (then only tensor names and shapes are checked against a model)
    sources           {"aligned": {"path", "hash"}, "degraded": [{"path", "hash"}, ...]} | null
                      hash: safegene.io.hash_model_dir (sampled sha256 unless stated "sha256:");
                      a model read from the HF cache adds "hub_id" and "revision" (its commit)
    compression       {"method": "svd"|"randomized_svd"|"mixed"|"none", "rank", "energy", "seed"}
    modules           {tensor name: {"layer", "module", "kind", "shape", "rank", "rel_error",
                       "delta_norm"}}; tensor name e.g. "model.layers.3.self_attn.q_proj.weight",
                      rel_error = ‖δ − B·A‖_F / ‖δ‖_F measured on the stored factors (0 for dense)
    scores            null | {"method", "units", "layers": {"<layer>": score}, "module_kinds":
                      {"<layer>.<kind>": score}}, score = {"gain", "interference", "task", "score",
                      "n_params"} (`safegene select`; free-form in version 1)
    selection         null (all layers) | [layer, ...] | {"attn": [layer, ...], "mlp": [...]}
    selection_info    null | the record of `safegene select` (select.select: the groups kept, the
                      settings, the scored model, the data's sha256, base losses, seconds)
    coefficients      null (1.0 everywhere) | number | {"<layer>": number, ...}
                      | {"attn": number | {"<layer>": number}, "mlp": ...}
                      A layer (or kind) missing from a dict gets 0 (not applied). Tensors outside
                      the decoder layers use the key "global".
    calibration       null | the record of `safegene calibrate` (calibrate.calibrate: the fitted α
                      per group, the target, the data's sha256, the fit settings and its losses)

Both records are JSON objects (checked on reading); `select` clears the coefficients and the
calibration record (coefficients fitted under another selection no longer hold).

Python API: `extract(...)`, `load_gene(path) -> Gene`, `save_gene(gene, out, selection=...,
coefficients=..., scores=..., selection_info=..., calibration=...)`,
`normalize_coefficients(value)`, `normalize_selection(value)`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from safegene.card import gene_card, render, write_card
from safegene.errors import SafeGeneError
from safegene.family import (
    DEFAULT_KINDS,
    KINDS,
    TensorName,
    check_compatible,
    fingerprint,
    parse_name,
)
from safegene.io import (
    ModelReader,
    ShardWriter,
    all_finite,
    atomic_output_dir,
    check_output_path,
    hash_model_dir,
    write_text_atomic,
)
from safegene.io.hub import hub_source, model_name
from safegene.io.lora import ADAPTER_CONFIG, AdapterWriter, LoraAdapter, read_adapter
from safegene.io.untrusted import read_json

FORMAT = "safegene-gene"
CARD_FILE = "README.md"  # the model card (safegene.card)
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
GENE_FILE = "safegene.json"
RECORDS = ("selection_info", "calibration")  # what select and calibrate record in the gene
DENSE_PREFIX = "deltas"
DEFAULT_RANK = 64
# Exact SVD below this many rows/cols or when the rank is a large share of it; randomized above.
EXACT_SVD_MAX_DIM = 512
RANDOMIZED_MAX_RANK_SHARE = 0.25


# --- coefficients and selection --------------------------------------------------------------


def _is_layer_key(k) -> bool:
    return isinstance(k, int) or (isinstance(k, str) and (k.isdigit() or k == "global"))


def normalize_coefficients(value, num_layers: int | None = None):
    """Canonical form of coefficients (see the schema): None | float | {"<layer>": float} |
    {kind: float | {"<layer>": float}}. Accepts a per-layer list (index = layer) as well."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise SafeGeneError("a coefficient must be a number, not a boolean")
    if isinstance(value, (int, float)):
        return _finite(value, "coefficient")
    if isinstance(value, (list, tuple)):
        if num_layers is not None and len(value) != num_layers:
            raise SafeGeneError(
                f"a per-layer coefficient list needs {num_layers} values, got {len(value)}"
            )
        return {str(i): _finite(v, f"coefficient of layer {i}") for i, v in enumerate(value)}
    if isinstance(value, dict):
        if all(_is_layer_key(k) for k in value):
            return {str(k): _finite(v, f"coefficient of layer {k}") for k, v in value.items()}
        bad = [k for k in value if k not in KINDS]
        if bad:
            raise SafeGeneError(
                f"coefficient key {bad[0]!r} is neither a layer index nor a module "
                f"kind ({', '.join(KINDS)})"
            )
        return {k: normalize_coefficients(v, num_layers) for k, v in value.items()}
    raise SafeGeneError(f"cannot read coefficients of type {type(value).__name__}")


def _finite(x, what: str) -> float:
    if isinstance(x, (bool, str, bytes)) or not hasattr(x, "__float__"):
        raise SafeGeneError(f"{what} must be a number, got {x!r}")
    x = float(x)
    if x != x or x in (float("inf"), float("-inf")):
        raise SafeGeneError(f"{what} is not finite ({x})")
    return x


def normalize_selection(value):
    """Canonical selection: None | sorted [layer] | {kind: sorted [layer]}."""
    if value is None:
        return None
    if isinstance(value, dict):
        bad = [k for k in value if k not in KINDS]
        if bad:
            raise SafeGeneError(
                f"selection key {bad[0]!r} is not a module kind ({', '.join(KINDS)})"
            )
        return {k: normalize_selection(v) for k, v in value.items()}
    try:
        return sorted({int(v) for v in value})
    except (TypeError, ValueError):
        raise SafeGeneError(f"a selection is a list of layer indices, got {value!r}") from None


def coefficient_for(coefficients, layer: int | None, kind: str) -> float:
    """The coefficient a (layer, kind) gets under the schema's rules (missing → 0, None → 1)."""
    if coefficients is None:
        return 1.0
    if isinstance(coefficients, (int, float)):
        return float(coefficients)
    key = "global" if layer is None else str(layer)
    if all(_is_layer_key(k) for k in coefficients):
        return float(coefficients.get(key, 0.0))
    return coefficient_for(coefficients[kind], layer, kind) if kind in coefficients else 0.0


def is_selected(selection, layer: int | None, kind: str) -> bool:
    if selection is None:
        return True
    if isinstance(selection, dict):
        return kind in selection and is_selected(selection[kind], layer, kind)
    return layer is None or layer in selection


# --- the artifact ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneModule:
    """One δ tensor of the gene. `module_path` is the PEFT module name; rank None when dense."""

    tensor: str
    layer: int | None
    module: str
    kind: str
    shape: tuple[int, ...]
    rank: int | None
    rel_error: float

    @property
    def module_path(self) -> str:
        return self.tensor.rsplit(".", 1)[0]


@dataclass
class LinearDelta:
    """One decoder-layer Linear's δ in memory, for `safegene.attach`: δ = B @ A with every scale
    folded into B; for a dense gene A is δ itself and B is None. `rollback`: a δ of the
    target's own way back to the aligned model (safegene.rollback), not of the gene."""

    module: GeneModule
    A: torch.Tensor  # (r, in_features), or δ (out_features, in_features)
    B: torch.Tensor | None  # (out_features, r)
    rollback: bool = False

    name = property(lambda self: self.module.module_path)  # e.g. "model.layers.3.self_attn.q_proj"
    layer = property(lambda self: self.module.layer)
    kind = property(lambda self: self.module.kind)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.A.shape[0] if self.B is None else self.B.shape[0], self.A.shape[1])

    @property
    def n_params(self) -> int:
        return self.A.numel() + (0 if self.B is None else self.B.numel())


class Gene:
    """A gene opened once: safegene.json read and validated, tensors read lazily, one at a time.

    gene.modules            {tensor name: GeneModule}, in file order
    gene.factors(tensor)    (A, B) float32 with δ = B @ A  (LoRA genes; PEFT's scaling in B)
    gene.delta(tensor)      δ float32 (B @ A, or the stored dense δ)
    gene.linear_deltas()    every decoder-layer Linear's δ in memory (what `attach` adds)
    gene.selection / .coefficients / .scores / .selection_info / .calibration / .fingerprint
    gene.coefficient(layer, kind), gene.is_selected(layer, kind), gene.meta (the whole record)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._adapter: LoraAdapter | None = None
        if (self.path / GENE_FILE).is_file():
            self.meta = _read_meta(self.path / GENE_FILE)
        elif (self.path / ADAPTER_CONFIG).is_file():
            self._adapter = read_adapter(self.path)
            self.meta = _adapter_meta(self._adapter)
        else:
            raise SafeGeneError(
                f"not a gene (no {GENE_FILE}, and not a PEFT LoRA adapter): {self.path}"
            )
        self.kind = self.meta["kind"]
        self.modules = _modules(self.meta["modules"])
        if self.kind == "dense":
            self._reader = ModelReader(self.path, prefix=DENSE_PREFIX, need_config=False)
        else:
            self._adapter = self._adapter or read_adapter(self.path)
            self._reader = self._adapter.reader

    # metadata ---------------------------------------------------------------------------------
    fingerprint = property(lambda self: self.meta["fingerprint"])
    selection = property(lambda self: self.meta.get("selection"))
    coefficients = property(lambda self: self.meta.get("coefficients"))
    scores = property(lambda self: self.meta.get("scores"))
    selection_info = property(lambda self: self.meta.get("selection_info"))
    calibration = property(lambda self: self.meta.get("calibration"))

    @property
    def num_layers(self) -> int:
        """The family's layer count (without a fingerprint: one past the last layer present)."""
        if self.fingerprint:
            return int(self.fingerprint["num_layers"])
        return max(self.layers(), default=-1) + 1

    @property
    def aligned_source(self) -> dict:
        """{"path", "hash"} of the aligned model the gene was extracted from ({} if unknown)."""
        sources = self.meta.get("sources")
        src = sources.get("aligned") if isinstance(sources, dict) else None
        return src if isinstance(src, dict) else {}

    @property
    def base_model(self) -> str | None:
        """The base model the gene's adapter_config names (LoRA genes), else None."""
        return self._adapter.config.get("base_model_name_or_path") if self._adapter else None

    def layers(self) -> list[int]:
        return sorted({m.layer for m in self.modules.values() if m.layer is not None})

    def coefficient(self, layer: int | None, kind: str, coefficients="gene") -> float:
        """Effective coefficient: 0 when the selection excludes (layer, kind)."""
        coefs = self.coefficients if coefficients == "gene" else coefficients
        if not self.is_selected(layer, kind):
            return 0.0
        return coefficient_for(coefs, layer, kind)

    def is_selected(self, layer: int | None, kind: str) -> bool:
        return is_selected(self.selection, layer, kind)

    # tensors ----------------------------------------------------------------------------------
    def factors(self, tensor: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(lora_A, lora_B) in float32 for one module, δ = lora_B @ lora_A (PEFT's scaling, 1 for
        SafeGene's own genes, folded into lora_B)."""
        if self.kind != "lora":
            raise SafeGeneError(
                f"the gene {self.path} is dense and has no LoRA factors; "
                "extract it with --rank or --energy for adapter outputs"
            )
        m = self.modules[tensor]
        if m.module_path not in self._adapter.modules:
            raise SafeGeneError(
                f"the gene {self.path} has no factors for {tensor!r}: it is corrupt"
            )
        a, b, scale = self._adapter.factors(m.module_path)
        if (
            a.dim() != 2
            or b.dim() != 2
            or (b.shape[0], a.shape[1]) != tuple(m.shape)
            or a.shape[0] != b.shape[1]
        ):
            raise SafeGeneError(
                f"the gene's factors for {tensor!r} ({tuple(b.shape)} @ {tuple(a.shape)}) "
                f"do not make its recorded shape {tuple(m.shape)}: {self.path} is corrupt"
            )
        return a, (b if scale == 1.0 else b.mul_(scale))

    def delta(self, tensor: str) -> torch.Tensor:
        """δ for one tensor in float32 (dense read, or B @ A)."""
        if self.kind == "dense":
            return self._reader.get(tensor, torch.float32)
        a, b = self.factors(tensor)
        return b @ a

    def add_to(self, weight: torch.Tensor, tensor: str, alpha: float = 1.0) -> torch.Tensor:
        """weight += alpha · δ in place (float32 weight), without materialising δ twice."""
        if self.kind == "dense":
            return weight.add_(self._reader.get_temp(tensor, slot="gene"), alpha=alpha)
        a, b = self.factors(tensor)
        return weight.addmm_(b, a, alpha=alpha)

    def linear_deltas(self) -> list[LinearDelta]:
        """The δ of every decoder-layer Linear weight, in memory, sorted by (layer, module path);
        embeddings, norms and biases are left out (they are not a Linear's output)."""
        deltas = []
        for tensor, m in self.modules.items():
            if m.layer is None or not tensor.endswith(".weight") or len(m.shape) != 2:
                continue
            a, b = self.factors(tensor) if self.kind == "lora" else (self.delta(tensor), None)
            if not all_finite(a) or (b is not None and not all_finite(b)):
                raise SafeGeneError(f"gene {self.path}: NaN/Inf in {tensor}")
            deltas.append(LinearDelta(m, a, b))
        if not deltas:
            raise SafeGeneError(f"gene {self.path} holds no per-layer Linear deltas")
        return sorted(deltas, key=lambda d: (d.layer, d.name))

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Gene:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_meta(file: Path) -> dict:
    """safegene.json, validated: SafeGeneError naming the file and the field otherwise."""
    meta = read_json(file)
    if (
        not isinstance(meta, dict)
        or meta.get("format") != FORMAT
        or meta.get("format_version") not in READABLE_VERSIONS
    ):
        versions = " or ".join(map(str, READABLE_VERSIONS))
        raise SafeGeneError(f"{file} is not a SafeGene gene (format version {versions})")
    try:
        _check_fields(meta)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SafeGeneError(f"malformed {file}: missing or invalid field {exc}") from None
    except SafeGeneError as exc:
        raise SafeGeneError(f"malformed {file}: {exc}") from None
    return meta


def _check_fields(meta: dict) -> None:
    _modules(meta["modules"])
    if meta["fingerprint"] is not None:
        int(meta["fingerprint"]["num_layers"])
    normalize_selection(meta.get("selection"))
    normalize_coefficients(meta.get("coefficients"))
    if meta["kind"] not in ("lora", "dense"):
        raise SafeGeneError(f"kind {meta['kind']!r} is neither lora nor dense")
    for key in RECORDS:
        if not isinstance(meta.get(key), (dict, type(None))):
            raise SafeGeneError(f"{key} must be an object or null")


def _modules(entries: dict) -> dict[str, GeneModule]:
    return {
        name: GeneModule(
            name,
            None if m["layer"] is None else int(m["layer"]),
            m["module"],
            m["kind"],
            tuple(int(d) for d in m["shape"]),
            m.get("rank"),
            m.get("rel_error", 0.0),
        )
        for name, m in entries.items()
    }


def _adapter_meta(adapter: LoraAdapter) -> dict:
    """The metadata of a plain PEFT LoRA directory: its modules, nothing recorded."""
    modules = {}
    for path in adapter.modules:
        (rank, inp), (out, _) = adapter.shape(path)
        p = parse_name(path + ".weight")
        modules[p.name] = _module_meta(p, (out, inp), rank, 0.0, None)
    return _new_meta("lora", None, None, None, modules)


def _new_meta(kind: str, fp: dict | None, sources, compression, modules: dict) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "fingerprint": fp,
        "sources": sources,
        "compression": compression,
        "modules": modules,
        **dict.fromkeys(("scores", "selection", "coefficients", *RECORDS)),
    }


def write_meta(directory: Path, meta: dict, base_model: str | None = None) -> None:
    """safegene.json and the gene's model card (README.md) into a directory being written."""
    (directory / GENE_FILE).write_text(_meta_text(meta))
    write_card(directory, gene_card(meta, base_model))


def _meta_text(meta: dict) -> str:
    return json.dumps(meta, indent=1, allow_nan=False) + "\n"


def load_gene(path: str | os.PathLike) -> Gene:
    """Open a gene directory (LoRA, dense, or a plain PEFT LoRA adapter); SafeGeneError
    otherwise."""
    return Gene(path)


@contextlib.contextmanager
def opened(gene: Gene | str | os.PathLike) -> Iterator[Gene]:
    """The gene as a `Gene`: the one given, or one opened here (and closed after the block)."""
    if isinstance(gene, Gene):
        yield gene
        return
    with load_gene(gene) as g:
        yield g


KEEP = "keep"


def save_gene(
    gene: Gene | str | os.PathLike,
    out: str | os.PathLike | None,
    *,
    selection=KEEP,
    coefficients=KEEP,
    scores=KEEP,
    selection_info=KEEP,
    calibration=KEEP,
    force: bool = False,
) -> Path:
    """Write `gene` with updated fields: a copy at `out` (atomically; factors copied byte for
    byte), or, with `out` None, the gene's own safegene.json replaced atomically (factors kept).

    Pass the value to set (None clears it); KEEP keeps the gene's own. The copy is written in the
    current format version. Returns the path written.
    """
    gene = gene if isinstance(gene, Gene) else load_gene(gene)
    meta = {**dict.fromkeys(RECORDS), **gene.meta, "format_version": FORMAT_VERSION}
    if selection != KEEP:
        meta["selection"] = normalize_selection(selection)
    if coefficients != KEEP:
        meta["coefficients"] = normalize_coefficients(coefficients, gene.num_layers)
    for key, value in (
        ("scores", scores),
        ("selection_info", selection_info),
        ("calibration", calibration),
    ):
        if value != KEEP:
            meta[key] = value
    if out is None:
        write_text_atomic(gene.path / GENE_FILE, _meta_text(meta))
        write_text_atomic(gene.path / CARD_FILE, render(gene_card(meta, gene.base_model)))
        return gene.path
    check_output_path(out, force, inputs=(gene.path,))
    with atomic_output_dir(out, force) as tmp:
        for f in gene.path.iterdir():
            if f.is_file() and f.name not in (GENE_FILE, CARD_FILE):
                shutil.copy2(f, tmp / f.name)
        write_meta(tmp, meta, gene.base_model)
    return Path(out)


# --- compression -----------------------------------------------------------------------------


@dataclass
class Compressed:
    a: torch.Tensor  # r × in
    b: torch.Tensor  # out × r
    rel_error: float
    method: str


def choose_rank(s: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """Fixed rank (capped), or the smallest rank keeping `energy` of Σσ²."""
    if energy is None:
        return max(1, min(rank, s.numel()))
    e = s.double() ** 2
    total = float(e.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(e, 0) / total
    return max(1, min(int((kept < energy - 1e-12).sum()) + 1, s.numel()))


def compress(
    delta: torch.Tensor,
    rank: int | None = DEFAULT_RANK,
    energy: float | None = None,
    seed: int = 0,
    norm: float | None = None,
) -> Compressed:
    """Truncated SVD of a float32 δ into LoRA factors (B = U√S, A = √S Vᵀ, so δ ≈ B @ A).

    Exact SVD (torch.linalg.svd) for small matrices, for `energy` (it needs the full spectrum)
    and for ranks above a quarter of the smaller side; otherwise randomized SVD
    (torch.svd_lowrank: oversampled by max(10, r/2), 2 power iterations, seeded).

    rel_error = ‖δ − B·A‖_F / ‖δ‖_F. Both SVDs make B·A an orthogonal projection of δ, so
    ‖δ − B·A‖² = ‖δ‖² − Σ_{i≤r} σᵢ² — computed that way (float64) when the error is large, and
    from the explicit residual when it is small (< 3 %, where the subtraction would cancel).
    """
    m, n = delta.shape
    k = min(m, n)
    norm = float(torch.linalg.matrix_norm(delta)) if norm is None else norm
    if norm == 0.0:
        z = delta.new_zeros
        return Compressed(z((1, n)), z((m, 1)), 0.0, "zero")
    exact = energy is not None or k <= EXACT_SVD_MAX_DIM or rank >= RANDOMIZED_MAX_RANK_SHARE * k
    if exact:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        method = "svd"
    else:
        devices = [delta.device] if delta.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seeded, without touching global RNG state
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(delta, q=min(k, rank + max(10, rank // 2)), niter=2)
        vh, method = v.T, "randomized_svd"
    r = choose_rank(s, rank, energy)
    root = s[:r].sqrt()
    b = (u[:, :r] * root).contiguous()
    a = (root[:, None] * vh[:r]).contiguous()
    kept = float(s[:r].double().square().sum())
    rel2 = max(0.0, 1.0 - kept / norm**2)
    if rel2 < 1e-3:
        rel = float(torch.linalg.matrix_norm(torch.addmm(delta, b, a, alpha=-1.0))) / norm
    else:
        rel = rel2**0.5
    return Compressed(a, b, rel, method)


# --- extraction ------------------------------------------------------------------------------


def gene_tensors(
    names: list[str], shapes: dict, model_type: str | None, modules: list[str] | None, dense: bool
) -> list[TensorName]:
    """Which tensors the gene covers: by kind ("attn", "mlp", "norm", "embed", "lm_head") or
    short module name ("q_proj"); default attention and MLP projections. The LoRA form takes
    2-D weights only; norms and biases need --dense."""
    wanted = set(modules or DEFAULT_KINDS)
    parsed = [parse_name(n, model_type) for n in names]
    known = {p.kind for p in parsed} | {p.module for p in parsed} | set(KINDS)
    unknown = sorted(wanted - known)
    if unknown:
        raise SafeGeneError(
            f"unknown module or kind {unknown[0]!r}; choose kinds "
            f"{', '.join(KINDS)} or module names such as q_proj"
        )
    chosen = [p for p in parsed if p.kind in wanted or p.module in wanted]
    if not dense:
        not_lora = [p.name for p in chosen if len(shapes[p.name]) != 2 and p.param == "weight"]
        if any(p.kind == "norm" for p in chosen) or not_lora:
            raise SafeGeneError(
                "norm and other non-matrix deltas cannot be LoRA factors; "
                "drop 'norm' from --modules or pass --dense"
            )
        if any(p.kind == "embed" for p in chosen):
            raise SafeGeneError("embedding deltas are only stored with --dense")
        chosen = [p for p in chosen if p.param == "weight"]
    if not chosen:
        raise SafeGeneError(f"no tensors match --modules {sorted(wanted)}")
    empty = [p.name for p in chosen if 0 in tuple(shapes[p.name])]
    if empty:  # its delta is nothing, but its factors would be as large as its other side
        raise SafeGeneError(
            f"tensor {empty[0]!r} has no elements (shape {list(shapes[empty[0]])}): not a weight"
        )
    return chosen


def _delta(
    tensor: str, aligned: ModelReader, degraded: list[ModelReader], device
) -> tuple[torch.Tensor, float]:
    """(δ, ‖δ‖_F) with δ = aligned − mean(degraded) in float32; SafeGeneError on NaN/Inf.

    On CPU δ lives in the aligned reader's scratch slot: valid until the next call. The degraded
    operand is cast to float32 first (measured faster than the mixed-dtype in-place op).
    """
    delta = _f32(aligned, tensor, "aligned", device)
    if len(degraded) == 1:
        delta.sub_(_f32(degraded[0], tensor, "degraded", device))
    else:
        first = _f32(degraded[0], tensor, "degraded", device)
        acc = (
            degraded[0].workspace.tensor("acc", first.shape, torch.float32)
            if first.is_cpu
            else torch.empty_like(first)
        ).copy_(first)
        for r in degraded[1:]:
            acc.add_(_f32(r, tensor, "degraded", device))
        delta.sub_(acc.div_(len(degraded)))
        del acc
    norm = float(torch.linalg.vector_norm(delta))
    if not math.isfinite(norm) and not all_finite(delta):
        raise SafeGeneError(f"NaN or Inf in {tensor!r} of the aligned or degraded models")
    return delta, norm


def _f32(reader: ModelReader, tensor: str, slot: str, device) -> torch.Tensor:
    """A float32 tensor on `device`; on CPU it lives in the reader's scratch slot `slot`."""
    if str(device) == "cpu":
        return reader.get_temp(tensor, torch.float32, slot=slot)
    return reader.get_temp(tensor, slot=slot).to(device, torch.float32)


def _open_family(
    aligned: str, degraded: list[str], allow_pickle: bool = False
) -> tuple[ModelReader, list[ModelReader], dict]:
    a = ModelReader(aligned, allow_pickle=allow_pickle)
    fp = fingerprint(a.config(), a.shapes())
    ds = []
    for path in degraded:
        d = ModelReader(path, workspace=ds[0].workspace if ds else None, allow_pickle=allow_pickle)
        check_compatible(fp, d.config(), d.shapes(), what=f"degraded model {path}")
        ds.append(d)
    return a, ds, fp


def extract(
    aligned: str | os.PathLike,
    degraded: list[str | os.PathLike] | str,
    out: str | os.PathLike,
    *,
    rank: int | None = None,
    energy: float | None = None,
    modules: list[str] | None = None,
    dense: bool = False,
    force: bool = False,
    device: str = "cpu",
    seed: int = 0,
    progress: bool | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Extract the gene δ = aligned − mean(degraded) and write it at `out` (see module doc).

    rank/energy: truncated SVD (rank DEFAULT_RANK when neither is given); dense: no compression.
    Streams one tensor at a time; nothing is written if any check fails. allow_pickle: read
    pickle-only inputs with torch.load(weights_only=True) instead of refusing them.
    """
    degraded = [degraded] if isinstance(degraded, (str, os.PathLike)) else list(degraded)
    rank = _check_size(degraded, rank, energy)
    check_output_path(out, force, inputs=(aligned, *degraded))
    a, ds, fp = _open_family(str(aligned), [str(d) for d in degraded], allow_pickle)
    try:
        targets = gene_tensors(a.names(), a.shapes(), fp["model_type"], modules, dense)
        compression = {
            "method": "none" if dense else None,
            "rank": rank if not dense else None,
            "energy": energy,
            "seed": seed,
        }
        meta = _new_meta(
            "dense" if dense else "lora", fp, _sources(aligned, degraded), compression, {}
        )
        with atomic_output_dir(out, force) as tmp:
            write = _write_dense if dense else _write_lora
            write(
                tmp,
                targets,
                a,
                ds,
                meta,
                rank=rank,
                energy=energy,
                seed=seed,
                device=device,
                progress=progress,
                base_model=model_name(aligned),
            )
            write_meta(tmp, meta, model_name(aligned))
    finally:
        a.close()
        for d in ds:
            d.close()
    return Path(out)


def _check_size(degraded: list, rank: int | None, energy: float | None) -> int | None:
    """The rank to extract at (DEFAULT_RANK when neither rank nor energy is given)."""
    if not degraded:
        raise SafeGeneError("at least one --degraded model is needed")
    if rank is not None and energy is not None:
        raise SafeGeneError("give --rank or --energy, not both")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise SafeGeneError(f"--energy must lie in (0, 1], got {energy}")
    if rank is not None and rank < 1:
        raise SafeGeneError(f"--rank must be at least 1, got {rank}")
    return DEFAULT_RANK if rank is None and energy is None else rank


def _sources(aligned, degraded: list) -> dict:
    """The models a gene came from, by path and content hash."""

    def source(path) -> dict:
        out = {"path": str(Path(path).absolute()), "hash": hash_model_dir(path)}
        hub = hub_source(path)
        if hub:
            out["hub_id"], out["revision"] = hub
        return out

    return {"aligned": source(aligned), "degraded": [source(d) for d in degraded]}


def _module_meta(p: TensorName, shape, rank, rel_error, norm) -> dict:
    return {
        "layer": p.layer,
        "module": p.module,
        "kind": p.kind,
        "shape": list(shape),
        "rank": rank,
        "rel_error": rel_error,
        "delta_norm": norm,
    }


def _write_dense(tmp: Path, targets, a, ds, meta, *, device, progress, **_) -> None:
    items = [(p.name, torch.float32, a.entry(p.name).shape) for p in targets]
    writer = ShardWriter(tmp, items, prefix=DENSE_PREFIX, check_finite=False)  # _delta checked
    for p in tqdm(targets, desc="extract (dense)", unit="tensor", disable=_quiet(progress)):
        delta, norm = _delta(p.name, a, ds, device)
        meta["modules"][p.name] = _module_meta(p, delta.shape, None, 0.0, norm)
        writer.write(p.name, delta.cpu())
        del delta
    writer.close()


def _write_lora(
    tmp: Path, targets, a, ds, meta, *, rank, energy, seed, device, progress, base_model
) -> None:
    methods = Counter()
    revision = (meta["sources"]["aligned"] or {}).get("revision")
    with AdapterWriter(tmp, base_model, meta["fingerprint"]["num_layers"], revision) as writer:
        for i, p in enumerate(
            tqdm(targets, desc="extract (svd)", unit="tensor", disable=_quiet(progress))
        ):
            delta, norm = _delta(p.name, a, ds, device)
            c = compress(delta, rank, energy, seed=seed + i, norm=norm)
            writer.write(p.module_path, c.a.cpu(), c.b.cpu())
            methods[c.method] += 1
            meta["modules"][p.name] = _module_meta(p, delta.shape, c.a.shape[0], c.rel_error, norm)
            del delta, c
    real = [m for m in methods if m != "zero"]
    meta["compression"]["method"] = real[0] if len(real) == 1 else ("mixed" if real else "svd")


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's `disable`: None = only on a terminal."""
    return None if progress is None else not progress
