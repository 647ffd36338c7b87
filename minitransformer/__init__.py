"""minitransformer: encoder-decoder transformers in numpy, read from Hugging Face optimum ONNX exports."""
from .errors import ModelError
from .model import Model, load

__all__ = ["Model", "ModelError", "load"]
__version__ = "0.1.0"
