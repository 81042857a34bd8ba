"""compress: distil, prune, quantize and ship BERT-family encoders."""

from compress.errors import CompressError

__version__ = "0.1.0"
__all__ = ["CompressError", "__version__"]
