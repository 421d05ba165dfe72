"""Output paths (checked before any work, built atomically), copying of a model's non-weight
files, and content hashes.

An output is built in a hidden sibling directory (same filesystem, `safegene.io.atomic`), fsynced,
then renamed into place, so an interrupted run never leaves a half-written output at the final
path. An existing output is refused unless `force`; with `force` it is replaced only once the new
one is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from safegene.errors import SafeGeneError
from safegene.io.atomic import atomic_dir, claim_output, remove_stale_temps

# Files a model directory carries besides its weights: config, tokenizer, chat template, ...
MODEL_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
)


_MAX_WALK = 200_000  # entries looked at under one input or an existing output


def _walk(root: Path) -> Iterator[Path]:
    """Every entry under the directory `root` (symlinks not followed), at most _MAX_WALK."""
    n = 0
    for parent, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            n += 1
            if n > _MAX_WALK:
                raise SafeGeneError(f"{root} holds more than {_MAX_WALK} files; cannot check it")
            yield Path(parent) / name


def _real(p: Path) -> Path:
    """`p` with every symlink resolved (a symlink loop resolves as far as it goes)."""
    return Path(os.path.realpath(p))


def _inode(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()  # through a symlink: what it points to
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if not os.path.isdir(p) else None


def input_footprint(inputs) -> tuple[set[Path], set[tuple[int, int]]]:
    """What an input is made of, for the overlap check: every path it occupies (as given,
    resolved, and where each symlink inside it points) and the inode of every file in it (to
    find hard links). `inputs` are paths (files or directories) or None; a string that is not an
    existing path (a Hub id, a zoo split, `hf:...`) counts as given."""
    paths: set[Path] = set()
    inodes: set[tuple[int, int]] = set()
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        paths |= {src.absolute(), _real(src)}
        if (ino := _inode(src)) is not None:
            inodes.add(ino)
        if src.is_dir():
            for p in _walk(_real(src)):
                if p.is_symlink():
                    paths.add(_real(p))
                if (ino := _inode(p)) is not None:
                    inodes.add(ino)
    return paths, inodes


def _overlap(out: Path, paths: set[Path], inodes: set[tuple[int, int]]) -> str | None:
    """The input `out` would touch (be, contain, lie inside, or hold a hard link of), if any."""
    for o in (out, _real(out)):
        for i in paths:
            if o == i or i in o.parents or o in i.parents:
                return str(i)
    if out.is_dir():
        for p in _walk(out):
            if not p.is_symlink() and _inode(p) in inodes:
                return f"{p} (a hard link of an input file)"
    elif _inode(out) in inodes:
        return f"{out} (a hard link of an input file)"
    return None


def check_output_path(
    out: str | os.PathLike, force: bool = False, inputs: tuple = (), *, claim: bool = True
) -> Path:
    """Validate and claim an output path before any work: refuses any path that is, contains,
    lies inside (as given or through symlinks) or holds a hard link of an input (models, genes,
    adapters, data files, recipes: inputs are never modified, `--force` or not), an existing one
    without force, and a path that cannot be a directory. Claims `out` for this process
    (`atomic.claim`: a second run writing the same output is refused) and removes the
    temporaries dead processes left beside it. `claim=False`: checked only (the ranks of a
    data-parallel run, whose launching process holds the claim or whose rank 0 writes)."""
    out = Path(out).absolute()
    paths, inodes = input_footprint(inputs)
    hit = _overlap(out, paths, inodes)
    if hit is not None:
        raise SafeGeneError(f"output {out} overlaps the input {hit}; choose another --out")
    if out.is_symlink() and not out.exists():
        raise SafeGeneError(f"output is a dangling symlink: {out}")
    if out.exists() and not out.is_dir():
        raise SafeGeneError(f"output exists and is not a directory: {out}")
    if not out.parent.is_dir():
        raise SafeGeneError(f"parent directory of the output does not exist: {out.parent}")
    if claim:
        claim_output(out)
    if out.exists() and not force:
        raise SafeGeneError(f"output already exists: {out} (pass --force to replace it)")
    remove_stale_temps(out)
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """`check_output_path(out, force)`, then `atomic_dir(out)`: a fresh hidden sibling directory
    that becomes `out` when the block succeeds (with `force`, replacing the old `out` only then;
    without it, refusing an `out` that appeared meanwhile).

    On any exception the temporary directory is removed and `out` is left as it was.
    """
    with atomic_dir(check_output_path(out, force), replace=force) as tmp:
        yield tmp


def copy_side_files(
    src: str | os.PathLike, dst: str | os.PathLike, names: tuple[str, ...] = MODEL_SIDE_FILES
) -> list[str]:
    """Copy config/tokenizer/generation files that exist in src; returns the names copied."""
    src, dst = Path(src), Path(dst)
    copied = []
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def hash_model_dir(
    path: str | os.PathLike, full: bool = False, samples: int = 16, sample_bytes: int = 65536
) -> str:
    """A content hash of a model directory's safetensors weights and config, for provenance.

    `full=True`: sha256 over every byte of every weight file (exact, costs one read of the model).
    Default (cheap): sha256 over config.json, each weight file's name, size and header, and
    `samples` evenly spaced `sample_bytes` windows of its data — two different fine-tunes differ
    in practically every window, so this identifies a model for a few MB of reading. Prefixed
    `sha256:` or `sample-sha256:` so the two are never confused.
    """
    from safegene.io.reader import find_pickle_files, find_weight_files

    path = Path(path)
    h = hashlib.sha256()
    for config in ("config.json", "adapter_config.json"):
        if (path / config).is_file():
            h.update((path / config).read_bytes())
    for f in find_weight_files(path) or find_pickle_files(path):
        size = f.stat().st_size
        h.update(f.name.encode() + b"\0" + str(size).encode() + b"\0")
        with open(f, "rb") as fh:
            if full:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
                continue
            start = 0
            if f.suffix == ".safetensors":  # the header whole, then samples of the data
                hlen = int.from_bytes(fh.read(8), "little")
                h.update(fh.read(min(hlen, size)))
                start = min(8 + hlen, size)
            for i in range(samples):  # (pickle files: samples of the whole file)
                fh.seek(start + (size - start) * i // samples)
                h.update(fh.read(sample_bytes))
    return ("sha256:" if full else "sample-sha256:") + h.hexdigest()


def matches_hash(path: str | os.PathLike, recorded: str) -> bool:
    """Does the model directory still hash to `recorded` (computed the same way: full or
    sampled)?"""
    return hash_model_dir(path, full=recorded.startswith("sha256:")) == recorded
