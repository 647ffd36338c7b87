"""Elementwise and row-wise building blocks in numpy. No weights are looked up here.

The arrays' dtype decides the arithmetic (float32 normally, float64 for the arbiter); constants are float32
values, as the exported graphs hold them, so a float64 pass evaluates the same function more exactly.
"""
import functools
import math

import numba
import numpy as np

from . import kernels
from .quant import QuantizedWeight


def linear(x, weight, bias=None):  # [..., d_in] -> [..., d_out]; weight [d_out, d_in] as HF stores it
    """x Wᵀ + b. A float weight: a few rows (a decode step, its beams) go to the numba matvec, which streams each
    weight row once (a decode step is memory-bound), more rows (the encoder, teacher forcing) to the numba gemm,
    which holds tiles of 4 rows x 4 outputs in registers (compute-bound). In an int8
    model the weight is a QuantizedWeight, applied exactly as the quantized graph does."""
    if isinstance(weight, QuantizedWeight):
        return weight.matmul(x, bias)
    rows = x.reshape(-1, x.shape[-1])                                   # [n_rows, d_in]
    product = kernels.matvec if rows.shape[0] <= kernels.MATVEC_MAX_ROWS else kernels.gemm
    return product(rows, weight, bias).reshape(x.shape[:-1] + (weight.shape[0],))  # [..., d_out]


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
    """x (0.5 (1 + tanh(0.5 x))), computed in place in one new array (the encoder's [32, 2048]: 44 us, 53 with a
    temporary per operation); the same bits as the expression."""
    gate = np.float32(0.5) * x
    np.tanh(gate, out=gate)
    gate += np.float32(1.0)
    gate *= np.float32(0.5)
    gate *= x
    return gate


def relu(x):
    return np.maximum(x, np.float32(0.0))


def _gelu_scalar(x):  # exact gelu, 0.5 x (1 + erf(x / sqrt 2)); numpy has no erf, so numba supplies it (in float64)
    return 0.5 * x * (1.0 + math.erf(x * 0.7071067811865476))


@functools.cache
def _gelu_ufunc():  # built (or read from numba's cache) when a gelu model first needs it, not at import
    return numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)(_gelu_scalar)


def gelu(x):  # [...] -> [...], x's dtype (float32 or float64)
    return _gelu_ufunc()(x)


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


def padded_positions(ids, n_past, padding_idx):  # [n_batch, n] -> [n_batch, n]
    """M2M100 positions: padding_idx + 1, + 2, ... over the non-pad tokens; a pad token sits at padding_idx.

    As HF create_position_ids_from_input_ids: (cumsum(mask) + n_past) * mask + padding_idx.
    """
    not_pad = (ids != padding_idx).astype(np.int64)
    return (np.cumsum(not_pad, axis=1) + n_past) * not_pad + padding_idx


def padded_sinusoids(positions, dim, padding_idx):  # [n_batch, n] -> [n_batch, n, dim]
    """M2M100's sinusoids (tensor2tensor layout: all sin, then all cos), row padding_idx zero.

    Computed in float32 step by step as HF M2M100SinusoidalPositionalEmbedding.get_embedding does.
    """
    half = dim // 2
    frequencies = np.exp(np.arange(half, dtype=np.float32) * np.float32(-math.log(10000) / (half - 1)))
    angles = positions.astype(np.float32)[..., None] * frequencies  # [n_batch, n, half]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
    if dim % 2:
        table = np.concatenate([table, np.zeros(table.shape[:-1] + (1,), np.float32)], axis=-1)
    return np.where((positions == padding_idx)[..., None], np.float32(0.0), table)


def relative_buckets(relative_position, bidirectional, n_buckets, max_distance):  # int [n_q, n_k] -> same
    """T5's bucket of each key-minus-query distance, as HF T5Attention._relative_position_bucket."""
    buckets = np.zeros_like(relative_position)
    if bidirectional:
        n_buckets //= 2
        buckets += (relative_position > 0) * n_buckets
        distance = np.abs(relative_position)
    else:
        distance = -np.minimum(relative_position, 0)
    max_exact = n_buckets // 2
    # distances below max_exact take the exact branch; max(., 1) keeps log away from 0 for them
    log_ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact)) / np.float32(
        math.log(max_distance / max_exact))
    large = max_exact + (log_ratio * np.float32(n_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, n_buckets - 1)
    return buckets + np.where(distance < max_exact, distance, large)
