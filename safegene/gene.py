"""The safety gene: extract δ = aligned − mean(degraded), compress it to LoRA factors, load/save it.

A gene is a directory. The compressed (default) form is a stock PEFT LoRA adapter:

    adapter_config.json         peft_type LORA, task_type CAUSAL_LM, target_modules, r == lora_alpha
                                (rank_pattern == alpha_pattern where ranks differ): scaling is 1
    adapter_model.safetensors   base_model.model.<module>.lora_A.weight (r×in, float32)
                                base_model.model.<module>.lora_B.weight (out×r, float32)
                                so that δ[module] = lora_B @ lora_A exactly
    safegene.json               the metadata below

so `PeftModel.from_pretrained(degraded_model, GENE)` adds δ to the model. The `--dense` form has
no adapter files; it holds `deltas.safetensors` (or shards + `deltas.safetensors.index.json`)
with the uncompressed float32 δ under the original tensor names (weights, and biases/norms when
they were asked for), plus the same safegene.json.

safegene.json schema (format_version 1)
---------------------------------------
    format            "safegene-gene"
    format_version    1
    kind              "lora" | "dense"
    fingerprint       {model_type, num_layers, hidden_size, layer_tensors_sha256} (family.fingerprint)
    sources           {"aligned": {"path", "hash"}, "degraded": [{"path", "hash"}, ...]}
                      hash: safegene.io.hash_model_dir (sampled sha256 unless stated "sha256:")
    compression       {"method": "svd"|"randomized_svd"|"mixed"|"none", "rank", "energy", "seed"}
    modules           {tensor name: {"layer", "module", "kind", "shape", "rank", "rel_error",
                       "delta_norm"}}; tensor name e.g. "model.layers.3.self_attn.q_proj.weight",
                      rel_error = ‖δ − B·A‖_F / ‖δ‖_F measured on the stored factors (0 for dense)
    scores            null, or whatever issue-5's selection writes (per-layer scores), free-form
    selection         null (all layers) | [layer, ...] | {"attn": [layer, ...], "mlp": [...]}
    coefficients      null (1.0 everywhere) | number | {"<layer>": number, ...}
                      | {"attn": number | {"<layer>": number}, "mlp": ...}
                      A layer (or kind) missing from a dict gets 0 (not applied). Tensors outside
                      the decoder layers use the key "global".

Python API: `extract(...)`, `load_gene(path) -> Gene`, `save_gene(gene, out, selection=...,
coefficients=..., scores=...)`, `normalize_coefficients(value)`, `normalize_selection(value)`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

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
    SpooledWriter,
    all_finite,
    atomic_output_dir,
    check_output_path,
    hash_model_dir,
)

FORMAT = "safegene-gene"
FORMAT_VERSION = 1
GENE_FILE = "safegene.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DENSE_PREFIX = "deltas"
PEFT_PREFIX = "base_model.model."
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


class Gene:
    """A loaded gene: metadata in memory, δ/factors read lazily one module at a time.

    gene.modules            {tensor name: GeneModule}, in file order
    gene.factors(tensor)    (A, B) float32 with δ = B @ A  (LoRA genes)
    gene.delta(tensor)      δ float32 (B @ A, or the stored dense δ)
    gene.selection / gene.coefficients / gene.scores / gene.fingerprint / gene.meta
    gene.coefficient(layer, kind), gene.is_selected(layer, kind)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / GENE_FILE
        if not meta_path.is_file():
            raise SafeGeneError(f"not a SafeGene gene (no {GENE_FILE}): {self.path}")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise SafeGeneError(f"unreadable {meta_path}: {exc}") from exc
        if (
            not isinstance(self.meta, dict)
            or self.meta.get("format") != FORMAT
            or self.meta.get("format_version") != FORMAT_VERSION
        ):
            raise SafeGeneError(f"{meta_path} is not a version-{FORMAT_VERSION} SafeGene gene")
        try:
            self.kind = self.meta["kind"]
            self.modules = {
                name: GeneModule(
                    name,
                    None if m["layer"] is None else int(m["layer"]),
                    m["module"],
                    m["kind"],
                    tuple(int(d) for d in m["shape"]),
                    m.get("rank"),
                    m.get("rel_error", 0.0),
                )
                for name, m in self.meta["modules"].items()
            }
            int(self.meta["fingerprint"]["num_layers"])
            normalize_selection(self.meta.get("selection"))  # SafeGeneError when malformed
            normalize_coefficients(self.meta.get("coefficients"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SafeGeneError(f"malformed {meta_path}: missing or invalid field {exc}") from None
        except SafeGeneError as exc:
            raise SafeGeneError(f"malformed {meta_path}: {exc}") from None
        if self.kind not in ("lora", "dense"):
            raise SafeGeneError(
                f"malformed {meta_path}: kind {self.kind!r} is neither lora nor dense"
            )
        prefix = "adapter_model" if self.kind == "lora" else DENSE_PREFIX
        self._reader = ModelReader(self.path, prefix=prefix, need_config=False)

    # metadata ---------------------------------------------------------------------------------
    fingerprint = property(lambda self: self.meta["fingerprint"])
    selection = property(lambda self: self.meta.get("selection"))
    coefficients = property(lambda self: self.meta.get("coefficients"))
    scores = property(lambda self: self.meta.get("scores"))

    @property
    def num_layers(self) -> int:
        return int(self.fingerprint["num_layers"])

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
        """(lora_A, lora_B) in float32 for one module, δ = lora_B @ lora_A."""
        if self.kind != "lora":
            raise SafeGeneError(
                f"the gene {self.path} is dense and has no LoRA factors; "
                "extract it with --rank or --energy for adapter outputs"
            )
        key = PEFT_PREFIX + self.modules[tensor].module_path
        a = self._reader.get(key + ".lora_A.weight", torch.float32)
        b = self._reader.get(key + ".lora_B.weight", torch.float32)
        shape = self.modules[tensor].shape
        if (
            a.dim() != 2
            or b.dim() != 2
            or (b.shape[0], a.shape[1]) != tuple(shape)
            or a.shape[0] != b.shape[1]
        ):
            raise SafeGeneError(
                f"the gene's factors for {tensor!r} ({tuple(b.shape)} @ {tuple(a.shape)}) "
                f"do not make its recorded shape {tuple(shape)}: {self.path} is corrupt"
            )
        return a, b

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

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "Gene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_gene(path: str | os.PathLike) -> Gene:
    """Open a gene directory (LoRA or dense); raises SafeGeneError if it is not one."""
    return Gene(path)


def save_gene(
    gene: Gene | str | os.PathLike,
    out: str | os.PathLike,
    *,
    selection="keep",
    coefficients="keep",
    scores="keep",
    force: bool = False,
    **extra,
) -> Path:
    """Write a copy of `gene` at `out` (atomically) with updated selection/coefficients/scores.

    Pass the value to set (None clears it); "keep" keeps the gene's own. `extra` sets further
    top-level safegene.json keys (e.g. calibration provenance). Factors are copied byte for byte.
    """
    gene = gene if isinstance(gene, Gene) else load_gene(gene)
    meta = dict(gene.meta)
    if selection != "keep":
        meta["selection"] = normalize_selection(selection)
    if coefficients != "keep":
        meta["coefficients"] = normalize_coefficients(coefficients, gene.num_layers)
    if scores != "keep":
        meta["scores"] = scores
    meta.update(extra)
    check_output_path(out, force, inputs=(gene.path,))
    with atomic_output_dir(out, force) as tmp:
        for f in gene.path.iterdir():
            if f.is_file() and f.name != GENE_FILE:
                shutil.copy2(f, tmp / f.name)
        write_gene_meta(tmp, meta)
    return Path(out)


def write_gene_meta(directory: str | os.PathLike, meta: dict) -> None:
    text = json.dumps(meta, indent=1, allow_nan=False)
    (Path(directory) / GENE_FILE).write_text(text + "\n")


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
    if not degraded:
        raise SafeGeneError("at least one --degraded model is needed")
    if rank is not None and energy is not None:
        raise SafeGeneError("give --rank or --energy, not both")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise SafeGeneError(f"--energy must lie in (0, 1], got {energy}")
    if rank is not None and rank < 1:
        raise SafeGeneError(f"--rank must be at least 1, got {rank}")
    rank = DEFAULT_RANK if rank is None and energy is None else rank
    check_output_path(out, force, inputs=(aligned, *degraded))
    a, ds, fp = _open_family(str(aligned), [str(d) for d in degraded], allow_pickle)
    try:
        targets = gene_tensors(a.names(), a.shapes(), fp["model_type"], modules, dense)
        sources = {
            "aligned": {"path": str(Path(aligned).absolute()), "hash": hash_model_dir(aligned)},
            "degraded": [
                {"path": str(Path(d).absolute()), "hash": hash_model_dir(d)} for d in degraded
            ],
        }
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": "dense" if dense else "lora",
            "fingerprint": fp,
            "sources": sources,
            "compression": {
                "method": "none" if dense else None,
                "rank": rank if not dense else None,
                "energy": energy,
                "seed": seed,
            },
            "modules": {},
            "scores": None,
            "selection": None,
            "coefficients": None,
        }
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
                base_model=str(Path(aligned).absolute()),
            )
            write_gene_meta(tmp, meta)
    finally:
        a.close()
        for d in ds:
            d.close()
    return Path(out)


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
    writer = SpooledWriter(tmp / ADAPTER_WEIGHTS)
    ranks, methods = {}, Counter()
    try:
        for i, p in enumerate(
            tqdm(targets, desc="extract (svd)", unit="tensor", disable=_quiet(progress))
        ):
            delta, norm = _delta(p.name, a, ds, device)
            c = compress(delta, rank, energy, seed=seed + i, norm=norm)
            key = PEFT_PREFIX + p.module_path
            writer.write(key + ".lora_A.weight", c.a.cpu())
            writer.write(key + ".lora_B.weight", c.b.cpu())
            ranks[p.module_path] = c.a.shape[0]
            methods[c.method] += 1
            meta["modules"][p.name] = _module_meta(p, delta.shape, c.a.shape[0], c.rel_error, norm)
            del delta, c
        writer.close()
    except BaseException:
        writer.abort()
        raise
    real = [m for m in methods if m != "zero"]
    meta["compression"]["method"] = real[0] if len(real) == 1 else ("mixed" if real else "svd")
    config = adapter_config(ranks, base_model, meta["fingerprint"]["num_layers"])
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's `disable`: None = only on a terminal."""
    return None if progress is None else not progress


# --- PEFT adapter config ---------------------------------------------------------------------


def adapter_config(ranks: dict[str, int], base_model: str, num_layers: int) -> dict:
    """A PEFT LoRA config for modules {module path: rank} with scaling exactly 1 everywhere.

    target_modules is the list of short module names when the modules cover every listed layer
    uniformly (all `num_layers` layers, every name), else a regex that matches exactly the given module paths. r is the most common
    rank; other ranks go to rank_pattern with an equal alpha_pattern (alpha/r = 1).
    """
    if not ranks:
        raise SafeGeneError("nothing to put in the adapter (every coefficient is 0 or unselected)")
    r = Counter(ranks.values()).most_common(1)[0][0]
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
        "revision": None,
    }


def _target_modules(paths: list[str], num_layers: int) -> list[str] | str:
    """Short names when `paths` are exactly every layer × every short name, else an exact regex
    (PEFT full-matches a string target_modules against each module path)."""
    short = sorted({p.rsplit(".", 1)[-1] for p in paths})
    layers = {parse_name(p + ".weight").layer for p in paths}
    if layers == set(range(num_layers)) and len(set(paths)) == num_layers * len(short):
        return short
    return "^(?:" + "|".join(re.escape(p) for p in sorted(paths)) + ")$"
