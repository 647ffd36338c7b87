"""numba versions of `attention.attend`, with the same signature and the same float32 math.

The loops are the shape llama2.c gives them: for each (batch, head, query), scores over the keys,
a safe softmax, and the weighted sum of values. The bias is broadcast (zero strides, no copy).
fastmath leaves out nnan/ninf so the finite MASKED value keeps its meaning.
"""
import numba
import numpy as np

_FASTMATH = {"nsz", "arcp", "contract", "reassoc"}


@numba.njit(cache=True, fastmath=_FASTMATH)
def _attend_loops(q, k, v, bias, scale, out):
    n_batch, n_head, n_tgt, d_head = q.shape
    n_k = k.shape[2]
    scores = np.empty(n_k, dtype=np.float32)
    for b in range(n_batch):
        for h in range(n_head):
            for i in range(n_tgt):
                row_max = np.float32(-np.inf)
                for j in range(n_k):
                    dot = np.float32(0.0)
                    for e in range(d_head):
                        dot += q[b, h, i, e] * k[b, h, j, e]
                    s = dot * scale + bias[b, h, i, j]
                    scores[j] = s
                    row_max = max(row_max, s)
                total = np.float32(0.0)
                for j in range(n_k):
                    scores[j] = np.exp(scores[j] - row_max)
                    total += scores[j]
                for e in range(d_head):
                    out[b, h, i, e] = 0.0
                for j in range(n_k):
                    p = scores[j] / total
                    for e in range(d_head):
                        out[b, h, i, e] += p * v[b, h, j, e]


def attend(q, k, v, bias, scale):
    # q [n_batch, n_head, n_tgt, d_head], k, v [n_batch, n_head, n_k, d_head] -> [n_batch, n_head, n_tgt, d_head]
    n_batch, n_head, n_tgt, _ = q.shape
    bias = np.broadcast_to(bias, (n_batch, n_head, n_tgt, k.shape[2]))
    # head-split projections and cache slices are strided views; contiguous copies let LLVM vectorize the loops
    q, k, v = np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v)
    out = np.empty(q.shape, dtype=np.float32)
    _attend_loops(q, k, v, bias, np.float32(scale), out)
    return out
