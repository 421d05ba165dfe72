"""What the losses aim at: refusals for harmful prompts, a model's own responses to keep.

- `refusal_targets(records, gene, aligned)`: a harmful record's refusal is its reference text when
  that is a refusal, else the aligned model's own greedy response;
- `given_or_own(records, model)`: each record's reference text, else the model's own response;
- `compliance_targets(records, model)`: a harmful record's compliant answer (Antidote's
  re-alignment set): its reference text unless that is a refusal, else the model's own response;
- `own_responses(model, prompts)`: a model's own greedy responses, generated once and cached on
  disk under SAFEGENE_CACHE (default ~/.cache/safegene), keyed by the model's content identity;
- `aligned_model(gene, aligned)`: the aligned model: given, else the gene's provenance (checked
  against its recorded content hash).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safegene.errors import SafeGeneError
from safegene.gene import Gene
from safegene.io import hash_model_dir, matches_hash, write_text_atomic
from safegene.io.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from safegene.settings import ComputeSettings
from safegene.shots import answer_of

COMPUTE = ComputeSettings()


def _cache_dir() -> Path:
    root = os.environ.get("SAFEGENE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "safegene"
    )
    return Path(root) / "responses"


def model_id(path: str | Path, adapter: str | Path | None = None) -> str:
    """A content identity of a model (and adapter): the project's sampled content hash."""
    h = hash_model_dir(path)
    if adapter is not None:
        a = Path(adapter)
        files = (a / f for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if (a / f).is_file())
        h += "|" + hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    return h


def _cached(path: Path, n: int) -> list[str] | None:
    try:
        got = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return got if isinstance(got, list) and len(got) == n else None


def own_responses(
    model: str | Path,
    prompts: list[str],
    *,
    adapter=None,
    loaded=None,
    compute: ComputeSettings = COMPUTE,
    progress: bool = False,
    cache: bool = True,
) -> list[str]:
    """The model's (plus adapter's) own greedy responses to `prompts`, generated once and cached.

    The cache key is the model's content identity (`model_id`), the generation length and the
    prompts. `loaded`: the (model, tokenizer) already in memory; else it is loaded on `compute`.
    """
    from safegene.evaluate.generate import generate

    text = model_id(model, adapter) + f"|{compute.max_new_tokens}|" + "\x00".join(prompts)
    path = _cache_dir() / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"
    got = _cached(path, len(prompts)) if cache and path.is_file() else None
    if got is not None:
        return got
    if loaded is None:
        from safegene.models import load_model

        loaded = load_model(model, adapter, device=compute.device, dtype=compute.dtype)
    net, tokenizer = loaded
    out = generate(
        net,
        tokenizer,
        prompts,
        max_new_tokens=compute.max_new_tokens,
        progress=progress,
        desc="reference responses",
    )
    out = [o if o.strip() else (tokenizer.eos_token or ".") for o in out]
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(out))
        except OSError:
            pass
    return out


def aligned_model(gene: Gene | None, aligned: str | Path | None) -> Path | None:
    """The aligned model: given explicitly, else the gene's recorded source (`sources.aligned`,
    checked against its content hash), else the base its adapter_config names."""
    if aligned is not None or gene is None:
        return Path(aligned) if aligned is not None else None
    src = gene.aligned_source
    recorded = src.get("hash")
    for c in (src.get("path"), gene.base_model):
        if isinstance(c, str) and c and (Path(c) / "config.json").is_file():
            if isinstance(recorded, str) and not matches_hash(c, recorded):
                raise SafeGeneError(
                    f"the gene's aligned model {c} is not the one it was extracted "
                    "from (content hash differs): pass --aligned DIR"
                )
            return Path(c)
    return None


def _fill(targets: list, records: list[dict], respond) -> list[str]:
    """`targets` with each None replaced by `respond(prompts of those records)`'s answer."""
    missing = [i for i, t in enumerate(targets) if t is None]
    if missing:
        for i, t in zip(missing, respond([records[i]["prompt"] for i in missing]), strict=True):
            targets[i] = t
    return targets


def refusal_targets(
    records: list[dict],
    *,
    gene: Gene | None = None,
    aligned=None,
    compute: ComputeSettings = COMPUTE,
    progress: bool = False,
) -> list[str]:
    """Each harmful record's refusal: its reference text when that is a refusal (harmful data
    often carries compliances), else the aligned model's own response (cached)."""
    from safegene.evaluate.judges import is_refusal_keyword

    have = [a if a is not None and is_refusal_keyword(a) else None for a in map(answer_of, records)]

    def respond(prompts: list[str]) -> list[str]:
        path = aligned_model(gene, aligned)
        if path is None:
            raise SafeGeneError(
                'the harmful data has no "response" refusals and the aligned model is '
                "unknown (not in the gene's provenance): pass --aligned DIR"
            )
        return own_responses(path, prompts, compute=compute, progress=progress)

    return _fill(have, records, respond)


def given_or_own(
    records: list[dict],
    model: str | Path,
    *,
    adapter=None,
    loaded=None,
    compute: ComputeSettings = COMPUTE,
    progress: bool = False,
) -> list[str]:
    """Each record's reference text, else the model's own response (cached)."""
    return _fill(
        [answer_of(r) for r in records],
        records,
        lambda prompts: own_responses(
            model, prompts, adapter=adapter, loaded=loaded, compute=compute, progress=progress
        ),
    )


def compliance_targets(
    records: list[dict],
    model: str | Path,
    *,
    adapter=None,
    loaded=None,
    compute: ComputeSettings = COMPUTE,
    progress: bool = False,
) -> list[str]:
    """Each harmful record's compliant answer: its reference text unless that is a refusal
    (harmful data often carries refusals for SafeGene's targets), else the model's own response
    (cached): a degraded model's answer to a harmful prompt is the harmful answer it learned."""
    from safegene.evaluate.judges import is_refusal_keyword

    have = [
        a if a is not None and not is_refusal_keyword(a) else None for a in map(answer_of, records)
    ]
    return _fill(
        have,
        records,
        lambda prompts: own_responses(
            model, prompts, adapter=adapter, loaded=loaded, compute=compute, progress=progress
        ),
    )
