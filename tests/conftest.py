"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One intra-op thread for the whole test session. The hardening tests fork this process to run the
# CLI cheaply, and a child forked from a parent whose OpenMP pool already ran with several threads
# can block forever on the pool's futex; with one thread no pool is ever started. (Tests measure
# behaviour, not speed; the zoo trains with one thread by default anyway.)
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402  (after the environment variable, so the pool starts with one thread)

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory) -> Path:
    """The micro zoo (safegene.zoo, size "micro", seed 0), built once per session; returns its root
    (read zoo.json there, or use safegene.zoo.load_zoo). Set SAFEGENE_MICRO_ZOO=DIR to keep one
    across sessions: the build resumes there and skips every finished stage."""
    from safegene.zoo import build_zoo

    cached = os.environ.get("SAFEGENE_MICRO_ZOO")
    out = Path(cached) if cached else tmp_path_factory.mktemp("zoo") / "micro"
    return build_zoo(out, size="micro", seed=0, progress=False)


@pytest.fixture(scope="session", autouse=True)
def response_cache(tmp_path_factory) -> Path:
    """Generated responses (refusal targets, the target's answers to its shots) are cached under the
    session's temporary directory, not the user's ~/.cache/safegene."""
    path = tmp_path_factory.mktemp("response-cache")
    os.environ["SAFEGENE_CACHE"] = str(path)
    return path
