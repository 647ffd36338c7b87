"""Elementwise and row-wise building blocks, in float32 numpy. No weights are looked up here."""
import math

import numba
import numpy as np


def linear(x, weight, bias=None):  # [..., d_in] -> [..., d_out]; weight [d_out, d_in] as HF stores it
    y = x @ weight.T
    return y if bias is None else y + bias


def layer_norm(x, weight, bias, eps):  # [..., d] -> [..., d]
    """(x - mean) / sqrt(var + eps) * weight + bias, as torch.nn.LayerNorm."""
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    return centered / np.sqrt(variance + np.float32(eps)) * weight + bias


def rms_norm(x, weight, eps):  # [..., d] -> [..., d]
    """x / sqrt(mean(x^2) + eps) * weight: T5LayerNorm, no mean subtraction, no bias."""
    variance = (x * x).mean(axis=-1, keepdims=True)
    return x / np.sqrt(variance + np.float32(eps)) * weight


def silu(x):  # swish: x * sigmoid(x); sigmoid written with tanh so large |x| cannot overflow
    return x * (np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * x)))


def relu(x):
    return np.maximum(x, np.float32(0.0))


@numba.vectorize(["float32(float32)"], cache=True)
def gelu(x):  # exact gelu, 0.5 x (1 + erf(x / sqrt 2)); numpy has no erf, so numba supplies it
    return np.float32(0.5 * x * (1.0 + math.erf(x * 0.7071067811865476)))


def gelu_tanh(x):  # "gelu_new": the tanh approximation, as HF NewGELUActivation (T5 gated-gelu)
    inner = np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x)
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))


ACTIVATIONS = {"swish": silu, "silu": silu, "relu": relu, "gelu": gelu, "gelu_new": gelu_tanh}


def softmax(x, axis=-1):  # numerically safe: the row max is subtracted first
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def sinusoid_table(n_pos, dim):  # -> [n_pos, dim]
    """Marian's sinusoids: sin in the first half of the features, cos in the second, not interleaved.

    Computed in float64 and cast, as HF MarianSinusoidalPositionalEmbedding._init_weight does.
    """
    j = np.arange(dim)
    angles = np.arange(n_pos)[:, None] / np.power(10000.0, 2 * (j // 2) / dim)[None, :]  # [n_pos, dim]
    sentinel = (dim + 1) // 2
    table = np.empty((n_pos, dim), dtype=np.float64)
    table[:, :sentinel] = np.sin(angles[:, 0::2])
    table[:, sentinel:] = np.cos(angles[:, 1::2])
    return table.astype(np.float32)
