"""Make the shared test builders in tests/ (engine_models) importable from tests/io/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
