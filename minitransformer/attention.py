"""THE attention math, in plain numpy: softmax(q kᵀ · scale + bias) v.

Every mask is an additive bias (0 where a key may be seen, MASKED where not); no weights, no cache.
`kernels.py` has numba versions with the same signatures, and the tests prove they agree.
"""
import math

import numpy as np

from .quant import quantized_product

# The additive mask value: HF adds torch.finfo(float32).min, and so do the exported graphs.
# Masks are built from boolean "may attend" arrays, so two of them are never added together.
MASKED = np.finfo(np.float32).min


def attention_probs(q, k, bias, scale):
    # q [n_batch, n_head, n_tgt, d_head], k [n_batch, n_head, n_k, d_head],
    # bias broadcastable to [n_batch, n_head, n_tgt, n_k] -> probs [n_batch, n_head, n_tgt, n_k]
    scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(scale) + bias
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    return weights / weights.sum(axis=-1, keepdims=True)


def attend(q, k, v, bias, scale):
    # q [n_batch, n_head, n_tgt, d_head], k, v [n_batch, n_head, n_k, d_head] -> [n_batch, n_head, n_tgt, d_head]
    return attention_probs(q, k, bias, scale) @ v


def attend_integer(q, k, v, bias, scale):
    # q [n_batch, n_head, n_tgt, d_head], k, v [n_batch, n_head, n_k, d_head] -> [n_batch, n_head, n_tgt, d_head]
    """`attend` as a graph quantized with its attention products does it (ORTQuantizer): q and k each scaled
    by sqrt(scale) (torch's SDPA export), both products MatMulInteger over whole-tensor DynamicQuantizeLinear."""
    root = q.dtype.type(math.sqrt(scale))  # float32 in the graph (float64 for the arbiter)
    scores = quantized_product(q * root, (k * root).transpose(0, 1, 3, 2)) + bias  # [n_batch, n_head, n_tgt, n_k]
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    return quantized_product(weights / weights.sum(axis=-1, keepdims=True), v)


def padding_bias(attention_mask):  # [n_batch, n_k] of 1/0 -> [n_batch, 1, 1, n_k]
    """Keys at padded positions are hidden from every query."""
    return np.where(attention_mask[:, None, None, :] != 0, np.float32(0.0), MASKED).astype(np.float32)


def causal_bias(n_past, n_tgt):  # -> [1, 1, n_tgt, n_past + n_tgt]
    """Query i (at absolute position n_past + i) sees keys 0 .. n_past + i."""
    key_pos = np.arange(n_past + n_tgt)[None, :]
    query_pos = n_past + np.arange(n_tgt)[:, None]
    return np.where(key_pos <= query_pos, np.float32(0.0), MASKED).astype(np.float32)[None, None]
