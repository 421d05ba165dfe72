"""Evaluation data: JSONL, CSV, plain text, the zoo's splits by name, Hugging Face `datasets` ids.

Every loader returns an `EvalSet`: the prompts (and the reference answers of a task split) plus
where they came from and the sha256 of the bytes read, so a report names its exact inputs.
Every problem with a file is one SafeGeneError that names the file (and the line, where there is
one).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from safegene.errors import SafeGeneError

SPLITS = ("harmful", "benign", "task")
MATCH_METHODS = ("auto", "exact", "normalised", "numeric")
_ANSWER_KEYS = ("answer", "response")
CATEGORY = "category"  # a column that, where present, breaks the report down per category


@dataclass
class EvalSet:
    """One data set of one split: `harmful` and `benign` are judged, `task` is scored against its
    answers."""

    split: str
    name: str
    source: str
    prompts: list[str]
    answers: list[str] | None = None
    sha256: str | None = None
    match: str | None = None  # task splits: exact | normalised | numeric (auto is resolved on load)
    meta: dict = field(default_factory=dict)
    categories: list[str | None] | None = None  # each row's "category", where the data has one

    def __len__(self) -> int:
        return len(self.prompts)

    def describe(self) -> dict:
        """What the report records about this input (everything but the rows themselves)."""
        d = {
            "split": self.split,
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "n": len(self.prompts),
        }
        if self.split == "task":
            d["match"] = self.match
        d.update(self.meta)
        return d


# --- files ---------------------------------------------------------------------------------------


MAX_PROMPT_CHARS = 200_000  # a prompt longer than any model's context is bad input


def lines(text: str) -> list[str]:
    """The lines of a data file, split at line feeds only (CRLF too). `str.splitlines` also
    splits at U+2028, U+0085 and others, which may stand raw inside a JSON string or a prompt."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _read_text(path: Path) -> tuple[str, str]:
    """(text, sha256 of the bytes) of a UTF-8 file, or one clear error."""
    if not os.path.lexists(path):
        raise SafeGeneError(f"data file not found: {path}")
    if path.is_dir():
        raise SafeGeneError(f"data file is a directory: {path}")
    from safegene.io.untrusted import MAX_DATA_BYTES, read_bytes

    raw = read_bytes(path, MAX_DATA_BYTES)
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SafeGeneError(
            f"{path} is not UTF-8 text (undecodable byte at offset {exc.start}); "
            "re-encode it as UTF-8"
        ) from None
    if not text.strip():
        raise SafeGeneError(f"data file is empty: {path}")
    return text, digest


def _pick_answer(row: dict, answer_column: str | None, where: str):
    if answer_column is not None:
        if answer_column not in row:
            raise SafeGeneError(f"{where}: no column {answer_column!r}")
        return row[answer_column]
    for key in _ANSWER_KEYS:
        if key in row and row[key] not in (None, ""):
            return row[key]
    return None


def _rows_to_set(
    rows,
    path: Path,
    split: str,
    prompt_column: str,
    answer_column: str | None,
    digest: str,
    name: str | None,
    match: str,
    kind: str,
) -> EvalSet:
    prompts, answers, categories = [], [], []
    for where, row in rows:
        if prompt_column not in row:
            cols = ", ".join(map(repr, list(row)[:8]))
            raise SafeGeneError(
                f"{where}: no {prompt_column!r} column (found {cols}); "
                "name the prompt column with --prompt-column"
            )
        prompt = row[prompt_column]
        if not isinstance(prompt, str) or not prompt.strip():
            raise SafeGeneError(f"{where}: the {prompt_column!r} value is empty or not text")
        prompts.append(prompt)
        ans = _pick_answer(row, answer_column, where)
        answers.append(None if ans is None else str(ans))
        category = row.get(CATEGORY)
        categories.append(None if category in (None, "") else str(category))
    if not prompts:
        raise SafeGeneError(f"data file has no rows: {path}")
    out = _finish(
        split, name or path.stem, str(path), prompts, answers, digest, match, {"format": kind}
    )
    if any(c is not None for c in categories):
        out.categories = categories
    return out


def _read_jsonl(path: Path, text: str):
    from safegene.io.untrusted import parse_json

    for lineno, line in enumerate(lines(text), 1):
        if not line.strip():
            continue
        row = parse_json(line, f"{path}:{lineno}")
        if not isinstance(row, dict):
            raise SafeGeneError(
                f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
            )
        yield f"{path}:{lineno}", row


def _read_json(path: Path, text: str):
    from safegene.io.untrusted import parse_json

    data = parse_json(text, str(path))
    if not isinstance(data, list):
        raise SafeGeneError(f"{path}: expected a JSON list of objects (or use JSONL)")
    for i, row in enumerate(data):
        if isinstance(row, str):
            row = {"prompt": row}
        if not isinstance(row, dict):
            raise SafeGeneError(f"{path}: item {i} is not an object")
        yield f"{path}: item {i}", row


def _read_csv(path: Path, text: str, delimiter: str):
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if not reader.fieldnames:
        raise SafeGeneError(f"data file has no header row: {path}")
    try:
        for row in reader:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            yield f"{path}:{reader.line_num}", row
    except csv.Error as exc:
        raise SafeGeneError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None


def load_file(
    path: str | Path,
    split: str,
    *,
    name: str | None = None,
    prompt_column: str = "prompt",
    answer_column: str | None = None,
    match: str = "auto",
) -> EvalSet:
    """Load a JSONL / JSON / CSV / TSV / plain-text file (by suffix; anything else is plain
    text)."""
    _check_split(split)
    path = Path(path)
    text, digest = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows, kind = _read_jsonl(path, text), "jsonl"
    elif suffix == ".json":
        rows, kind = _read_json(path, text), "json"
    elif suffix in (".csv", ".tsv"):
        rows, kind = _read_csv(path, text, "\t" if suffix == ".tsv" else ","), suffix[1:]
    else:
        prompts = [line.strip() for line in lines(text) if line.strip()]
        if split == "task":
            raise SafeGeneError(
                f"{path}: task data needs answers; a plain-text file has only prompts "
                '(use JSONL with "prompt" and "answer")'
            )
        return _finish(
            split, name or path.stem, str(path), prompts, None, digest, match, {"format": "text"}
        )
    return _rows_to_set(rows, path, split, prompt_column, answer_column, digest, name, match, kind)


# --- the zoo -------------------------------------------------------------------------------------


def zoo_index(zoo_dir: str | Path) -> dict:
    """zoo.json as it is stored (paths relative to the zoo; `safegene.zoo.load_zoo` makes them
    absolute), or a SafeGeneError naming the directory."""
    zoo_dir = Path(zoo_dir)
    index = zoo_dir / "zoo.json"
    if not index.is_file():
        raise SafeGeneError(f"not a zoo directory (no zoo.json): {zoo_dir}")
    from safegene.io.untrusted import read_json

    try:
        return read_json(index)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SafeGeneError(f"{index}: malformed zoo index ({exc})") from None


def zoo_split_names(zoo: dict) -> list[str]:
    data = zoo.get("data", {})
    names = [k for k, v in data.items() if isinstance(v, str)]
    names += [f"task:{t}" for t in data.get("tasks", {})]
    return names


def zoo_split_path(zoo_dir: str | Path, key: str) -> Path:
    """`harmful_test`, `benign_test`, `task:<name>` (that task's test split) → the file's path."""
    zoo_dir = Path(zoo_dir)
    zoo = zoo_index(zoo_dir)
    data = zoo.get("data", {})
    if key.startswith("task:"):
        task = key[len("task:") :]
        tasks = data.get("tasks", {})
        if task not in tasks:
            raise SafeGeneError(
                f"the zoo in {zoo_dir} has no task {task!r} (tasks: {', '.join(tasks) or 'none'})"
            )
        rel = tasks[task].get("test")
    elif isinstance(data.get(key), str):
        rel = data[key]
    else:
        raise SafeGeneError(
            f"the zoo in {zoo_dir} has no split {key!r} (splits: {', '.join(zoo_split_names(zoo))})"
        )
    return zoo_dir / rel


def zoo_model(zoo_dir: str | Path, name: str) -> dict:
    """A zoo model's entry with absolute paths: {"path", "adapter", "task"}."""
    zoo_dir = Path(zoo_dir)
    models = zoo_index(zoo_dir).get("models", {})
    if name not in models:
        raise SafeGeneError(
            f"the zoo in {zoo_dir} has no model {name!r} (models: {', '.join(models)})"
        )
    entry = dict(models[name])
    entry["path"] = str(zoo_dir / entry["path"])
    if entry.get("adapter"):
        entry["adapter"] = str(zoo_dir / entry["adapter"])
    return entry


# --- Hugging Face datasets -----------------------------------------------------------------------


def parse_hf_source(source: str) -> tuple[str, str | None, str | None]:
    """`NAME[:config][:split]` -> (name, config, split); one suffix is the split."""
    parts = source.split(":")
    if not parts[0] or len(parts) > 3 or any(not p for p in parts[1:]):
        raise SafeGeneError(f"a Hugging Face dataset is hf:NAME[:config][:split], not hf:{source}")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return parts[0], None, parts[1] if len(parts) == 2 else None


def _pick_split(where: str, available: list[str], wanted: str | None) -> str:
    """The split asked for, else "test", else the only one; SafeGeneError naming what exists."""
    if wanted is None:
        wanted = "test" if "test" in available or len(available) != 1 else available[0]
    if wanted not in available:
        raise SafeGeneError(f"{where} has no split {wanted!r} (it has {', '.join(available)})")
    return wanted


def _open_hf(dataset_id: str, config: str | None, hf_split: str | None):
    """(rows, split) through `datasets`: a directory written by `save_to_disk`, else
    `load_dataset` (the Hub, its local cache when offline, or a local data directory)."""
    try:
        import datasets
    except ImportError:
        raise SafeGeneError(
            f"hf:{dataset_id} needs the `datasets` package: pip install 'safegene[hf]' "
            "(or pass a local JSONL/CSV/text file)"
        ) from None
    where = f"hf:{dataset_id}" + (f":{config}" if config else "")
    local = Path(dataset_id)
    try:
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.Dataset):  # one split, saved alone
                split = _pick_split(where, [str(ds.split or "train")], hf_split)
                return ds, split
            split = _pick_split(where, list(ds), hf_split)
            return ds[split], split
        builder = datasets.load_dataset_builder(dataset_id, config)
        known = list((builder.info.splits or {}).keys())
        if known:
            split = _pick_split(where, known, hf_split)
            return datasets.load_dataset(dataset_id, config, split=split), split
        every = datasets.load_dataset(dataset_id, config)  # splits known only once loaded
        split = _pick_split(where, list(every), hf_split)
        return every[split], split
    except SafeGeneError:
        raise
    except Exception as exc:  # network errors, a missing dataset or config, a broken cache
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SafeGeneError(
            f"cannot load {where}: {type(exc).__name__}: {first} "
            "(offline and not cached? use a local file)"
        ) from None


def load_hf(
    source: str,
    split: str,
    *,
    name: str | None = None,
    prompt_column: str = "prompt",
    answer_column: str | None = None,
    match: str = "auto",
) -> EvalSet:
    """`NAME[:config][:split]` through `datasets` (the `[hf]` extra): a Hub id (online, or from
    the datasets cache offline) or a local directory (`save_to_disk`'s, or data files)."""
    _check_split(split)
    dataset_id, config, hf_split = parse_hf_source(source)
    ds, hf_split = _open_hf(dataset_id, config, hf_split)
    rows = ((f"hf:{dataset_id}[{i}]", dict(r)) for i, r in enumerate(ds))
    fingerprint = getattr(ds, "_fingerprint", None)
    out = _rows_to_set(
        rows,
        Path(dataset_id),
        split,
        prompt_column,
        answer_column,
        fingerprint,
        name or (Path(dataset_id).name if Path(dataset_id).is_dir() else dataset_id),
        match,
        "hf",
    )
    out.meta.update({"hf_config": config, "hf_split": hf_split})
    return out


# --- one entry point -----------------------------------------------------------------------------


def load_data(
    source: str | Path,
    split: str,
    *,
    zoo: str | Path | None = None,
    name: str | None = None,
    prompt_column: str | None = None,
    answer_column: str | None = None,
    match: str = "auto",
    limit: int | None = None,
) -> EvalSet:
    """A file path, a zoo split name (with `zoo`), or a Hugging Face dataset id
    (`hf:NAME[:config][:split]`, or a bare `owner/name` that is not a local path)."""
    _check_split(split)
    if match not in MATCH_METHODS:
        raise SafeGeneError(
            f"unknown match method {match!r}; choose one of {', '.join(MATCH_METHODS)}"
        )
    source = str(source)
    prompt_column = prompt_column or "prompt"
    kw = dict(name=name, prompt_column=prompt_column, answer_column=answer_column, match=match)
    if (
        zoo is not None
        and not Path(source).exists()
        and (source.startswith("task:") or source in zoo_split_names(zoo_index(zoo)))
    ):
        path = zoo_split_path(zoo, source)
        kw["name"] = name or source
        ds = load_file(path, split, **kw)
        ds.meta["zoo_split"] = source
    elif source.startswith("hf:"):
        ds = load_hf(source[3:], split, **kw)
    elif Path(source).exists() or _looks_like_path(source):
        ds = load_file(source, split, **kw)
    else:
        ds = load_hf(source, split, **kw)
    if limit is not None:
        if limit < 1:
            raise SafeGeneError(f"--limit must be at least 1, got {limit}")
        ds.prompts = ds.prompts[:limit]
        if ds.categories is not None:
            ds.categories = ds.categories[:limit]
        if ds.answers is not None:
            ds.answers = ds.answers[:limit]
        ds.meta["limit"] = limit
    return ds


def _looks_like_path(source: str) -> bool:
    p = Path(source)
    return (
        source.startswith((".", "/", "~"))
        or p.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv", ".txt")
        or source.count("/") != 1
    )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise SafeGeneError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def _check_text(text: str, what: str) -> None:
    """A prompt or answer the tokenizer and the report writer can take: valid Unicode (no lone
    surrogate) and at most MAX_PROMPT_CHARS characters."""
    if len(text) > MAX_PROMPT_CHARS:
        raise SafeGeneError(
            f"{what} is {len(text)} characters long (at most {MAX_PROMPT_CHARS}); shorten it"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SafeGeneError(
            f"{what} holds a lone surrogate (U+{ord(text[exc.start]):04X}) at character "
            f"{exc.start}: not valid Unicode"
        ) from None


def _finish(split, name, source, prompts, answers, digest, match, meta) -> EvalSet:
    if not prompts:
        raise SafeGeneError(f"no prompts in {source}")
    for i, p in enumerate(prompts):
        _check_text(p, f"{source}: prompt {i + 1}")
    for i, a in enumerate(answers or []):
        if isinstance(a, str):
            _check_text(a, f"{source}: answer {i + 1}")
    if split == "task":
        missing = [i for i, a in enumerate(answers or []) if a is None or not str(a).strip()]
        if answers is None or missing:
            first = missing[0] + 1 if missing else 1
            raise SafeGeneError(
                f'{source}: task data needs an "answer" for every prompt (row {first} has none)'
            )
        from safegene.evaluate.metrics import resolve_match

        match = resolve_match(match, answers)
        return EvalSet(split, name, source, prompts, answers, digest, match, meta)
    has = answers is not None and any(a is not None for a in answers)
    return EvalSet(split, name, source, prompts, answers if has else None, digest, None, meta)
