"""minitransformer: encoder-decoder transformers in numpy, read from Hugging Face optimum ONNX exports.

The heavy modules (numba, onnx) are imported on first use, so `minitransformer --help` starts fast.
"""
from .errors import ModelError

__all__ = ["Model", "ModelError", "Tokenizer", "load"]
__version__ = "0.1.0"
_LAZY = {"Model": "model", "load": "model", "Tokenizer": "tokenizer"}


def __getattr__(name):  # mt.load, mt.Model, mt.Tokenizer: imported when first asked for
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
