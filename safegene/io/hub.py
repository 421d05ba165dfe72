"""Models by Hugging Face Hub id, resolved through the local HF cache (huggingface_hub's own).

A model argument is a local directory or a Hub id (`owner/name`, optionally `owner/name@rev`
or with `--revision`). An id is resolved with `huggingface_hub.snapshot_download(...,
local_files_only=True)`: the cached snapshot directory, offline, nothing downloaded. The cache
is huggingface_hub's (`HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache/huggingface/hub).

- `resolve_model(ref, revision=None) -> Path`: the directory to read (SafeGeneError when an id
  is not cached, or the revision is not);
- `hub_source(path) -> (repo_id, commit) | None`: what a cache snapshot directory is a snapshot
  of (from the cache layout `models--owner--name/snapshots/<commit>`);
- `model_name(path)`: the name an output records as its base model: the Hub id for a snapshot,
  else the absolute path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from safegene.errors import SafeGeneError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_SNAPSHOT = re.compile(r"^models--(?P<owner>[^/]+?)--(?P<name>[^/]+)$")


def hub_cache_dir() -> Path:
    """huggingface_hub's cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def split_ref(ref: str, revision: str | None = None) -> tuple[str, str | None]:
    """ "owner/name@rev" -> ("owner/name", "rev"); an explicit `revision` wins over none."""
    if "@" in ref:
        ref, inline = ref.rsplit("@", 1)
        if revision is not None and revision != inline:
            raise SafeGeneError(f"two revisions for {ref}: @{inline} and --revision {revision}")
        revision = inline
    return ref, revision


def is_hub_id(ref: str | os.PathLike) -> bool:
    """A string that names a Hub repo and no existing local path."""
    ref = str(ref)
    return not Path(ref).exists() and bool(HUB_ID.match(ref.split("@", 1)[0]))


def resolve_model(ref: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory as given; a Hub id as its cached snapshot directory (offline)."""
    if not is_hub_id(ref):
        if revision is not None and not Path(ref).exists():
            raise SafeGeneError(f"--revision needs a Hub id (owner/name), not {ref!r}")
        return Path(ref)
    repo_id, revision = split_ref(str(ref), revision)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True)
    except LocalEntryNotFoundError:
        if not repo_dir.is_dir():
            raise SafeGeneError(
                f"{repo_id} is neither a local directory nor in the Hugging Face cache "
                f"({cache}); download it where the Hub is reachable (`hf download {repo_id}`) "
                "or pass the model's directory"
            ) from None
        refs = sorted(p.name for p in (repo_dir / "refs").glob("*")) if repo_dir.is_dir() else []
        snaps = sorted(p.name[:12] for p in (repo_dir / "snapshots").glob("*"))
        raise SafeGeneError(
            f"revision {revision!r} of {repo_id} is not in the Hugging Face cache (cached: "
            f"{', '.join(refs + snaps) or 'nothing'})"
        ) from None
    return Path(path)


def hub_source(path: str | os.PathLike) -> tuple[str, str] | None:
    """(repo_id, commit) when `path` is a snapshot directory of the HF cache, else None."""
    p = Path(path).absolute()
    if p.parent.name != "snapshots":
        return None
    m = _SNAPSHOT.match(p.parent.parent.name)
    return (f"{m['owner']}/{m['name']}", p.name) if m else None


def model_name(path: str | os.PathLike) -> str:
    """What an output names as its base model: the Hub id of a cache snapshot, else the
    absolute local path."""
    src = hub_source(path)
    return src[0] if src else str(Path(path).absolute())
