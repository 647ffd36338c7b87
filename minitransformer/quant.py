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
    real = x.dtype.type if x.dtype == np.float64 else np.float32
    x = x.astype(real, copy=False)
    low, high = min(real(x.min()), real(0.0)), max(real(x.max()), real(0.0))
    scale = real(1.0) if high == low else real((high - low) / real(255.0))
    zero_point = np.rint(np.clip(real(0.0) - low / scale, real(0.0), real(255.0)))
    q = np.clip(np.rint(x / scale) + zero_point, real(0.0), real(255.0))
    return q.astype(np.uint8), scale, np.uint8(zero_point)


def dequantize(q, scale, zero_point):  # [...] integer -> float32 [...]: DequantizeLinear, (q - zero) * scale
    return (q.astype(np.int32) - np.int32(zero_point)).astype(np.float32) * np.float32(scale)


@numba.njit(cache=True)
def _matmul_integer(a, a_zero, b_t, b_zero, out):
    # a [n, d_in] uint8, b_t [d_out, d_in] int8/uint8 (rows stream), b_zero [d_out] -> out [n, d_out] int32
    n, d_in = a.shape
    d_out = b_t.shape[0]
    for i in range(n):
        for j in range(d_out):
            acc = np.int32(0)
            for k in range(d_in):
                acc += (np.int32(a[i, k]) - a_zero) * (np.int32(b_t[j, k]) - b_zero[j])
            out[i, j] = acc


def matmul_integer(a, a_zero, b_t, b_zero):  # a [..., d_in], b_t [d_out, d_in] -> int32 [..., d_out]
    """MatMulInteger: sum over k of (a - a_zero)(b - b_zero), exact in int32 (|terms| <= 255 * 255)."""
    lead = a.shape[:-1]
    out = np.empty((int(np.prod(lead, dtype=np.int64)), b_t.shape[0]), dtype=np.int32)
    b_zero = np.broadcast_to(np.asarray(b_zero, dtype=np.int32), (b_t.shape[0],))
    _matmul_integer(np.ascontiguousarray(a.reshape(-1, a.shape[-1])), np.int32(a_zero), b_t,
                    np.ascontiguousarray(b_zero), out)
    return out.reshape(*lead, b_t.shape[0])


@dataclass(frozen=True)
class QuantizedWeight:
    """A linear layer's weight as the graph stores it: integers, a scale and a zero point (per tensor, or
    one per output for per-channel quantization)."""
    weight: np.ndarray      # int8 or uint8 [d_out, d_in], HF's layout: each output's row streams in a matvec
    scale: np.ndarray       # float32 [] or [d_out]
    zero_point: np.ndarray  # same dtype as weight, [] or [d_out]

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
        accumulated = matmul_integer(x_q, x_zero, self.weight, self.zero_point)
        return accumulated.astype(self.dtype) * (x_scale * self.scale)

    def dequantized(self):  # -> float32 [d_out, d_in]
        return dequantize(self.weight, self.scale.reshape(-1, 1) if self.scale.ndim else self.scale,
                          self.zero_point.reshape(-1, 1) if self.zero_point.ndim else self.zero_point)


def integer_product(a_q, a_zero, b_q, b_zero):  # a_q [..., n, d], b_q [..., d, m] uint8 -> int32 [..., n, m]
    """MatMulInteger of two on-the-fly quantized operands, each with one zero point; exact in int32."""
    return (a_q.astype(np.int32) - np.int32(a_zero)) @ (b_q.astype(np.int32) - np.int32(b_zero))


def quantized_product(a, b):  # a [..., n, d], b [..., d, m] float -> [..., n, m]
    """An attention product whose operands the graph quantizes on the fly, each as one whole tensor."""
    a_q, a_scale, a_zero = dynamic_quantize(a)
    b_q, b_scale, b_zero = dynamic_quantize(b)
    return integer_product(a_q, a_zero, b_q, b_zero).astype(a_scale.dtype) * (a_scale * b_scale)
