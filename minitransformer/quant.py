"""Int8 arithmetic exactly as a quantized ONNX graph does it (ORTQuantizer / quantize_dynamic, IntegerOps).

A quantized linear in the graph is
    x_q, x_scale, x_zero = DynamicQuantizeLinear(x)                 # uint8, per tensor
    acc = MatMulInteger(x_q, W_q, x_zero, W_zero)                   # int32, exact
    y = Cast(acc, float32) * (x_scale * W_scale) + bias             # W_scale a scalar or one per output
and an attention product is the same with both operands quantized on the fly. Embedding tables are
read through Gather then DequantizeLinear, (q - zero) * scale, which commutes with the Gather.

`QuantizedWeight` is the value a linear slot holds in an int8 model; `ops.linear` applies it.
"""
from dataclasses import dataclass

import numba
import numpy as np


def dynamic_quantize(x):  # float [...] -> (uint8 [...], scale, uint8 zero point)
    """DynamicQuantizeLinear (ONNX): the range [min, max] widened to include 0, scale = (max - min) / 255,
    zero point = round(-min / scale) clamped to [0, 255], q = saturate(round(x / scale) + zero point);
    every rounding half to even. In float32 as the graph does (float64 for the arbiter: x's dtype decides)."""
    x = np.asarray(x)
    if x.dtype != np.float64:
        x = np.ascontiguousarray(x, dtype=np.float32)
        q = np.empty(x.shape, dtype=np.uint8)
        scale, zero_point = _dynamic_quantize_f32(x.reshape(-1), q.reshape(-1))
        return q, np.float32(scale), np.uint8(zero_point)
    low, high = min(x.min(), 0.0), max(x.max(), 0.0)
    scale = 1.0 if high == low else (high - low) / 255.0
    zero_point = np.rint(np.clip(0.0 - low / scale, 0.0, 255.0))
    q = np.clip(np.rint(x / scale) + zero_point, 0.0, 255.0)
    return q.astype(np.uint8), np.float64(scale), np.uint8(zero_point)


@numba.njit(cache=True)
def _dynamic_quantize_f32(x, q):  # x float32 [n], q uint8 [n] (written) -> (float32 scale, uint8 zero point)
    """One pass for the range, one to quantize; float32 throughout, true division (no fastmath), np.rint."""
    low, high = np.float32(0.0), np.float32(0.0)
    for v in x:
        low = min(low, v)
        high = max(high, v)
    scale = np.float32(1.0) if high == low else np.float32((high - low) / np.float32(255.0))
    zero = np.rint(min(max(np.float32(0.0) - low / scale, np.float32(0.0)), np.float32(255.0)))
    for i in range(x.size):
        # clamping to [-zero, 255 - zero] before rounding equals saturating after: the bounds are integers
        v = min(max(x[i] / scale, -zero), np.float32(255.0) - zero)
        q[i] = np.uint8(np.rint(v) + zero)
    return scale, np.uint8(zero)


def dequantize(q, scale, zero_point):  # [...] integer -> float32 [...]: DequantizeLinear, (q - zero) * scale
    return (q.astype(np.int32) - np.int32(zero_point)).astype(np.float32) * np.float32(scale)


@numba.njit(cache=True)
def _matmul_integer_rows(a, a_zero, a_sums, b_t, b_zero, b_row_sums, out, j_start, j_stop):
    # a [n, d_in] uint8, a_sums [n], b_t [d_out, d_in] int8/uint8 (each output's row streams), b_zero, b_row_sums
    # [d_out] int32 -> out[:, j_start:j_stop] int32 = (a - a_zero)(b - b_zero), expanded so the inner loop is a plain
    # u8 x i8 dot product. Eight rows of `a` share each load of b's row. numba widens int32 arithmetic to int64;
    # casting each sum back to int32 lets LLVM keep 16 lanes per vector (exact: no partial sum reaches 2^31)
    n, d_in = a.shape
    n8 = n - n % 8
    for j in range(j_start, j_stop):
        fold = np.int32(d_in) * a_zero * b_zero[j] - a_zero * b_row_sums[j]
        for i in range(0, n8, 8):
            c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = np.int32(0)
            for k in range(d_in):
                w = np.int32(b_t[j, k])
                c0 = np.int32(c0 + np.int32(a[i, k]) * w)
                c1 = np.int32(c1 + np.int32(a[i + 1, k]) * w)
                c2 = np.int32(c2 + np.int32(a[i + 2, k]) * w)
                c3 = np.int32(c3 + np.int32(a[i + 3, k]) * w)
                c4 = np.int32(c4 + np.int32(a[i + 4, k]) * w)
                c5 = np.int32(c5 + np.int32(a[i + 5, k]) * w)
                c6 = np.int32(c6 + np.int32(a[i + 6, k]) * w)
                c7 = np.int32(c7 + np.int32(a[i + 7, k]) * w)
            for r, c in enumerate((c0, c1, c2, c3, c4, c5, c6, c7)):
                out[i + r, j] = c + fold - b_zero[j] * a_sums[i + r]
        for i in range(n8, n):
            c = np.int32(0)
            for k in range(d_in):
                c = np.int32(c + np.int32(a[i, k]) * np.int32(b_t[j, k]))
            out[i, j] = c + fold - b_zero[j] * a_sums[i]


@numba.njit(cache=True, parallel=True)
def _matmul_integer_threaded(a, a_zero, a_sums, b_t, b_zero, b_row_sums, out, n_chunks):
    """`_matmul_integer_rows` over n_chunks runs of outputs, shared among numba's threads."""
    d_out = b_t.shape[0]
    size = (d_out + n_chunks - 1) // n_chunks
    for chunk in numba.prange(n_chunks):
        _matmul_integer_rows(a, a_zero, a_sums, b_t, b_zero, b_row_sums, out, chunk * size,
                             min(d_out, (chunk + 1) * size))


# threads only pay on a large weight: a parallel region costs tens of microseconds, and much more when a sibling
# thread is descheduled on a busy machine (the many small products of an encoder pass suffer most)
PARALLEL_MIN_WEIGHT = 1 << 23  # int8 elements: an OPUS-MT-size lm_head (33 M), not its 1 M ffn weights


def matmul_integer(a, a_zero, b_t, b_zero, b_row_sums=None):  # a [..., d_in], b_t [d_out, d_in] -> int32 [..., d_out]
    """MatMulInteger: sum over k of (a - a_zero)(b - b_zero), exact in int32: every term and partial sum stays
    below 255 * 255 * d_in < 2^31 for d_in up to 33,000. b_zero is one zero point or one per output."""
    d_out = b_t.shape[0]
    if np.ndim(b_zero) == 0 or b_zero.dtype != np.int32:
        b_zero = np.ascontiguousarray(np.broadcast_to(np.asarray(b_zero, dtype=np.int32), (d_out,)))
    if b_row_sums is None:
        b_row_sums = b_t.sum(axis=1, dtype=np.int32)
    rows = np.ascontiguousarray(a.reshape(-1, a.shape[-1]))                 # [n, d_in]
    a_sums = rows.sum(axis=1, dtype=np.int32)
    out = np.empty((rows.shape[0], d_out), dtype=np.int32)
    if b_t.size >= PARALLEL_MIN_WEIGHT:
        _matmul_integer_threaded(rows, np.int32(a_zero), a_sums, b_t, b_zero, b_row_sums, out,
                                 8 * numba.get_num_threads())
    else:
        _matmul_integer_rows(rows, np.int32(a_zero), a_sums, b_t, b_zero, b_row_sums, out, 0, d_out)
    return out.reshape(*a.shape[:-1], d_out)


@dataclass(frozen=True)
class QuantizedWeight:
    """A linear layer's weight as the graph stores it: integers, a scale and a zero point (per tensor, or
    one per output for per-channel quantization)."""
    weight: np.ndarray      # int8 or uint8 [d_out, d_in], HF's layout: each output's row streams in a matvec
    scale: np.ndarray       # float32 [] or [d_out]
    zero_point: np.ndarray  # same dtype as weight, [] or [d_out]

    def __post_init__(self):  # what the integer kernel reads besides the weight, computed once, each [d_out]
        d_out = self.weight.shape[0]
        object.__setattr__(self, "row_sums", self.weight.sum(axis=1, dtype=np.int32))
        object.__setattr__(self, "zero_points", np.ascontiguousarray(
            np.broadcast_to(self.zero_point.astype(np.int32), (d_out,))))
        object.__setattr__(self, "scales", np.ascontiguousarray(np.broadcast_to(self.scale, (d_out,))))  # float

    @property
    def shape(self):
        return self.weight.shape

    @property
    def dtype(self):  # the arithmetic it dequantizes in: float32, or float64 for the arbiter
        return self.scale.dtype

    def astype(self, dtype):
        return QuantizedWeight(self.weight, self.scale.astype(dtype), self.zero_point)

    def matmul(self, x):  # float [..., d_in] -> [..., d_out]
        """Cast(MatMulInteger(DynamicQuantizeLinear(x), W)) * (x_scale * W_scale), in the graph's order."""
        x_q, x_scale, x_zero = dynamic_quantize(x)
        accumulated = matmul_integer(x_q, x_zero, self.weight, self.zero_points, self.row_sums)
        return accumulated.astype(self.dtype) * (x_scale * self.scales)


@numba.njit(cache=True)
def _integer_products(a, a_zero, b, b_zero, out):
    # a [n_mat, n, d], b [n_mat, d, m] uint8 -> out [n_mat, n, m] int32; for each k a row of b is scaled and added
    # (the vector runs over m), sums cast back to int32 so LLVM keeps 32-bit lanes (exact: below 2^31)
    for g in range(a.shape[0]):
        for i in range(a.shape[1]):
            row = out[g, i]
            row[:] = 0
            for k in range(a.shape[2]):
                weight = np.int32(np.int32(a[g, i, k]) - a_zero)
                for j in range(b.shape[2]):
                    row[j] = np.int32(row[j] + weight * (np.int32(b[g, k, j]) - b_zero))


def integer_product(a_q, a_zero, b_q, b_zero):  # a_q [..., n, d], b_q [..., d, m] uint8 -> int32 [..., n, m]
    """MatMulInteger of two on-the-fly quantized operands, each with one zero point; exact in int32."""
    lead = np.broadcast_shapes(a_q.shape[:-2], b_q.shape[:-2])
    a = np.ascontiguousarray(np.broadcast_to(a_q, lead + a_q.shape[-2:])).reshape(-1, *a_q.shape[-2:])
    b = np.ascontiguousarray(np.broadcast_to(b_q, lead + b_q.shape[-2:])).reshape(-1, *b_q.shape[-2:])
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=np.int32)
    _integer_products(a, np.int32(a_zero), b, np.int32(b_zero), out)
    return out.reshape(*lead, a.shape[1], b.shape[2])


def quantized_product(a, b):  # a [..., n, d], b [..., d, m] float -> [..., n, m]
    """An attention product whose operands the graph quantizes on the fly, each as one whole tensor."""
    a_q, a_scale, a_zero = dynamic_quantize(a)
    b_q, b_scale, b_zero = dynamic_quantize(b)
    return integer_product(a_q, a_zero, b_q, b_zero).astype(a_scale.dtype) * (a_scale * b_scale)
