"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory) -> Path:
    """The micro zoo (safegene.zoo, size "micro", seed 0), built once per session; returns its root
    (read zoo.json there, or use safegene.zoo.load_zoo). Set SAFEGENE_MICRO_ZOO=DIR to keep one
    across sessions: the build resumes there and skips every finished stage."""
    from safegene.zoo import build_zoo

    cached = os.environ.get("SAFEGENE_MICRO_ZOO")
    out = Path(cached) if cached else tmp_path_factory.mktemp("zoo") / "micro"
    return build_zoo(out, size="micro", seed=0, progress=False)
