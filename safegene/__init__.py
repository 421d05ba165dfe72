"""SafeGene: extract a model family's safety alignment once, re-express it in every fine-tune."""

from safegene.errors import SafeGeneError

__version__ = "0.1.0"
__all__ = ["SafeGeneError", "__version__"]
