"""Few-shot data: records loaded through the evaluation data loader, drawn with a seed, hashed.

A record is {"prompt": str, "answer"?: str} (the loader's reference text, when the data has one).
`take` draws k of them without replacement; `data_hash` and `data_record` identify the records a
run used (the gene's selection and calibration records keep them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safegene.errors import SafeGeneError

ANSWER_KEYS = ("response", "answer", "completion", "output")


def load_records(
    path: str | Path,
    *,
    split: str = "harmful",
    name: str | None = None,
    zoo: str | Path | None = None,
) -> list[dict]:
    """Records {"prompt", "answer"?} through the project's data loader (JSONL, CSV, text, zoo
    splits)."""
    from safegene.evaluate.data import load_data

    ds = load_data(path, split, zoo=zoo, name=name)
    answers = ds.answers or [None] * len(ds.prompts)
    return [
        {"prompt": p, **({"answer": a} if a is not None else {})}
        for p, a in zip(ds.prompts, answers, strict=True)
    ]


def take(records: list[dict], k: int | None, *, seed: int, name: str) -> list[dict]:
    """k records drawn without replacement with `seed`, in their order (all of them when k is
    None)."""
    import torch

    if not records:
        raise SafeGeneError(f"no {name} examples given (the {name} data is empty)")
    if k is None:
        return list(records)
    if k < 1:
        raise SafeGeneError(f"--shots must be at least 1 (got {k})")
    if k > len(records):
        raise SafeGeneError(
            f"asked for {k} {name} examples but the {name} data has only {len(records)}"
        )
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(records), generator=g)[:k].tolist()
    return [records[i] for i in sorted(idx)]


def answer_of(record: dict) -> str | None:
    """A record's reference text: its first non-empty response, answer, completion or output."""
    for key in ANSWER_KEYS:
        v = record.get(key)
        if isinstance(v, str) and v.strip():
            return v
        if v is not None and not isinstance(v, (dict, list)) and str(v).strip():
            return str(v)
    return None


def data_hash(records: list[dict]) -> str:
    """sha256 of the records (canonical JSON, one a line)."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def data_record(path, records: list[dict], **extra) -> dict | None:
    """{"path", "n", "sha256", **extra} of the records a run used; None when there are none."""
    if not records:
        return None
    return {"path": str(path), "n": len(records), "sha256": data_hash(records), **extra}
