"""Int8 arithmetic exactly as a quantized ONNX graph does it (ORTQuantizer / quantize_dynamic, IntegerOps).

A quantized linear in the graph is
    x_q, x_scale, x_zero = DynamicQuantizeLinear(x)                 # uint8, per tensor
    acc = MatMulInteger(x_q, W_q, x_zero, W_zero)                   # int32, exact
    y = Cast(acc, float32) * (x_scale * W_scale) + bias             # W_scale a scalar or one per output
and an attention product is the same with both operands quantized on the fly. Embedding tables are
read through Gather then DequantizeLinear, (q - zero) * scale, which commutes with the Gather.

`QuantizedWeight` is the value a linear slot holds in an int8 model; `ops.linear` applies it.
"""
import functools
from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import kernels

_follower = None  # while `following(f)` runs, every quantization's result is f.quantize's (rounding.py)


@contextmanager
def following(follower):
    """Hand every dynamic_quantize result to `follower.quantize(x, q, scale, zero)` and use what it returns:
    `verify` on an int8 export feeds ONNX Runtime's rounding decisions to our engines (rounding.py)."""
    global _follower
    previous, _follower = _follower, follower
    try:
        yield follower
    finally:
        _follower = previous


def dynamic_quantize(x):  # float [...] -> (uint8 [...], scale, uint8 zero point)
    """DynamicQuantizeLinear (ONNX): the range [min, max] widened to include 0, scale = (max - min) / 255,
    zero point = round(-min / scale) clamped to [0, 255], q = saturate(round(x / scale) + zero point);
    every rounding half to even. In float32 as the graph does (float64 for the arbiter: x's dtype decides)."""
    x = np.asarray(x)
    if x.dtype != np.float64:
        x = np.ascontiguousarray(x, dtype=np.float32)
        q = np.empty(x.shape, dtype=np.uint8)
        if x.size >= NUMPY_RANGE_MIN:  # numpy's min and max are vectorized, numba's loop is not (4x at 64 Ki)
            low, high = min(x.min(), np.float32(0.0)), max(x.max(), np.float32(0.0))
        else:
            low, high = _range_f32(x.reshape(-1))
        scale, zero_point = _quantize_f32(x.reshape(-1), low, high, q.reshape(-1))
        scale, zero_point = np.float32(scale), np.uint8(zero_point)
    else:
        low, high = min(x.min(), 0.0), max(x.max(), 0.0)
        scale = 1.0 if high == low else (high - low) / 255.0
        zero_point = np.rint(np.clip(0.0 - low / scale, 0.0, 255.0))
        q = np.clip(np.rint(x / scale) + zero_point, 0.0, 255.0).astype(np.uint8)
        scale, zero_point = np.float64(scale), np.uint8(zero_point)
    return (q, scale, zero_point) if _follower is None else _follower.quantize(x, q, scale, zero_point)


NUMPY_RANGE_MIN = 4096  # activations this large get their range from numpy (the same exact min and max)


@numba.njit(cache=True)
def _range_f32(x):  # x float32 [n] -> (min(x, 0), max(x, 0))
    low, high = np.float32(0.0), np.float32(0.0)
    for v in x:
        low = min(low, v)
        high = max(high, v)
    return low, high


@numba.njit(cache=True)
def _quantize_f32(x, low, high, q):  # x float32 [n], its range -> (float32 scale, uint8 zero point), q uint8 [n]
    """float32 throughout, true division (no fastmath), np.rint."""
    low, high = np.float32(low), np.float32(high)  # float32 values that Python may have passed as floats
    scale = np.float32(1.0) if high == low else np.float32((high - low) / np.float32(255.0))
    zero = np.rint(min(max(np.float32(0.0) - low / scale, np.float32(0.0)), np.float32(255.0)))
    for i in range(x.size):
        # clamping to [-zero, 255 - zero] before rounding equals saturating after: the bounds are integers
        v = min(max(x[i] / scale, -zero), np.float32(255.0) - zero)
        q[i] = np.uint8(np.rint(v) + zero)
    return scale, np.uint8(zero)


def dequantize(q, scale, zero_point):  # [...] integer -> float32 [...]: DequantizeLinear, (q - zero) * scale
    return (q.astype(np.int32) - np.int32(zero_point)).astype(np.float32) * np.float32(scale)


# ---------------------------------------------------------------------------------------------- integer kernel
# MatMulInteger's u8 x i8 products run on a packed copy of the weight: blocks of 16 outputs, inside a block 4
# consecutive inputs of one output in one 32-bit lane ([n_block, d_in4, 16, 4], zero padded), the layout of
# AVX-512 VNNI's vpdpbusd, which adds four u8 x s8 products into each of 16 int32 lanes exactly (no
# saturation: each u8 x s8 product fits 16 bits, and a lane's sum stays below 255 * 128 * d_in < 2^31). One
# instruction takes 4 inputs of one activation row (broadcast) times 64 weight bytes. CPUs without it get the
# same sums from portable vector code (LLVM lowers it to whatever the CPU has; the sums are the same integers).

def _int8_dot_instruction():
    """"vnni" when the code numba generates may use vpdpbusd on 512-bit vectors, else "portable"."""
    from numba.core import config
    if config.CPU_NAME:  # numba compiles for a named CPU (NUMBA_CPU_NAME), with NUMBA_CPU_FEATURES
        return "vnni" if "+avx512vnni" in (config.CPU_FEATURES or "") else "portable"
    return "vnni" if llvm.get_host_cpu_features().get("avx512vnni") else "portable"


INT8_DOT = _int8_dot_instruction()
_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_LANES, _BYTES = ir.VectorType(_I32, 16), ir.VectorType(_I8, 64)


def _dot_accumulate(builder, sums, activations, weights, instruction):  # <16 x i32>, <64 x i8> x 2 -> <16 x i32>
    """sums + in each lane l, sum over t < 4 of activations[4l + t] (u8) * weights[4l + t] (s8): vpdpbusd."""
    if instruction == "vnni":
        vpdpbusd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_LANES, [_LANES, _BYTES, _BYTES]),
                                                  "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(vpdpbusd, [sums, activations, weights])
    wide = ir.VectorType(_I32, 64)
    products = builder.mul(builder.zext(activations, wide), builder.sext(weights, wide))  # exact in int32
    parts = [builder.shuffle_vector(products, products, ir.Constant(_LANES, [4 * lane + t for lane in range(16)]))
             for t in range(4)]
    return builder.add(sums, builder.add(builder.add(parts[0], parts[1]), builder.add(parts[2], parts[3])))


def _make_dot_block(n_rows, n_blocks):
    @intrinsic
    def dot_block(typingctx, a, a_start, a_stride, packed, block_start, n_k4, sums, instruction):
        """sums[16 (n_blocks r + b) + l] = sum over k < 4 n_k4 of a[a_start + r a_stride + k] * the weight of output l,
        input k in the b-th block from block_start, for r < n_rows, b < n_blocks: one pass over n_blocks blocks of 16
        outputs, each 64-byte weight load shared by the n_rows rows, each broadcast of 4 inputs by the n_blocks."""
        if not isinstance(instruction, types.StringLiteral):
            return None
        signature = types.void(a, a_start, a_stride, packed, block_start, n_k4, sums, instruction)

        def codegen(context, builder, sig, args):
            a_data = context.make_array(sig.args[0])(context, builder, args[0]).data
            packed_data = context.make_array(sig.args[3])(context, builder, args[3]).data
            sums_data = context.make_array(sig.args[6])(context, builder, args[6]).data
            a_start, a_stride, block_start, n_k4 = (context.cast(builder, args[i], sig.args[i], types.int64)
                                                    for i in (1, 2, 4, 5))
            block_bytes = builder.mul(n_k4, ir.Constant(_I64, 64))
            entry = builder.block
            test, body, done = (builder.append_basic_block(name) for name in ("test", "body", "done"))
            builder.branch(test)
            builder.position_at_end(test)
            k4 = builder.phi(_I64)
            k4.add_incoming(ir.Constant(_I64, 0), entry)
            accumulators = []  # [n_rows * n_blocks], row-major
            for _ in range(n_rows * n_blocks):
                phi = builder.phi(_LANES)
                phi.add_incoming(ir.Constant(_LANES, None), entry)
                accumulators.append(phi)
            builder.cbranch(builder.icmp_signed("<", k4, n_k4), body, done)
            builder.position_at_end(body)
            weights = []
            for b in range(n_blocks):
                at = builder.add(builder.add(block_start, builder.mul(block_bytes, ir.Constant(_I64, b))),
                                 builder.mul(k4, ir.Constant(_I64, 64)))
                weights.append(builder.load(builder.bitcast(builder.gep(packed_data, [at]), _BYTES.as_pointer()),
                                            align=1))
            updated = []
            for r in range(n_rows):
                at = builder.add(builder.add(a_start, builder.mul(a_stride, ir.Constant(_I64, r))),
                                 builder.mul(k4, ir.Constant(_I64, 4)))
                four = builder.load(builder.bitcast(builder.gep(a_data, [at]), _I32.as_pointer()), align=1)
                splat = builder.bitcast(builder.shuffle_vector(
                    builder.insert_element(ir.Constant(_LANES, None), four, ir.Constant(_I32, 0)),
                    ir.Constant(_LANES, None), ir.Constant(_LANES, [0] * 16)), _BYTES)
                for b in range(n_blocks):
                    updated.append(_dot_accumulate(builder, accumulators[r * n_blocks + b], splat, weights[b],
                                                   instruction.literal_value))
            k4.add_incoming(builder.add(k4, ir.Constant(_I64, 1)), builder.block)
            for phi, value in zip(accumulators, updated):
                phi.add_incoming(value, builder.block)
            builder.branch(test)
            builder.position_at_end(done)
            for index, accumulator in enumerate(accumulators):
                target = builder.gep(sums_data, [ir.Constant(_I64, 16 * index)])
                builder.store(accumulator, builder.bitcast(target, _LANES.as_pointer()), align=4)
            return context.get_dummy_value()
        return signature, codegen
    return dot_block


# passes of 8, 4, 2, 1 rows over two blocks (32 outputs: 16 accumulators at most of the 32 vector registers), and
# over the one block left when the number of blocks is odd
_dot8x2, _dot4x2, _dot2x2, _dot1x2 = (_make_dot_block(n, 2) for n in (8, 4, 2, 1))
_dot8x1, _dot4x1, _dot2x1, _dot1x1 = (_make_dot_block(n, 1) for n in (8, 4, 2, 1))


@numba.njit(cache=True, nogil=True)
def _packed_products(a, a_zero, a_sums, packed, d_in, weight_offset, zero_points, row_sums, x_scale, scales, bias,
                     out, block_start, block_stop, instruction):
    # a [n, 4 d_in4] uint8 (zero padded), a_sums [n] its row sums, packed int8 [n_block * d_in4 * 64] (`_pack`),
    # zero_points, row_sums [d_out] int32 -> out[:, 16 block_start:16 block_stop] = (a - a_zero)(w - zero_points),
    # the zero points folded out: sum a w' - (zero - offset) sum a - a_zero sum w + d_in a_zero zero, w' = w - offset
    # the packed integers (offset 128 for uint8 weights, 0 for int8). Passes of 8, 4, 2, 1 rows over two blocks of
    # 16 outputs (one at the end). out int32 (x_scale, scales and bias None): MatMulInteger. out float: the graph's
    # Cast, Mul by x_scale * scales [d_out] (W's) and Add of bias [d_out] (or None), each rounded to out's dtype as
    # the graph's ops round.
    # `instruction` is a string constant of the callers below, so each instruction compiles on its own.
    n, width = a.shape
    d_out = out.shape[1]
    n_k4 = width // 4
    flat = a.reshape(-1)
    j_start, j_stop = 16 * block_start, min(16 * block_stop, d_out)  # the outputs computed here
    zero_shifts = np.empty(j_stop - j_start, dtype=np.int32)    # [outputs] zero - offset
    column_terms = np.empty(j_stop - j_start, dtype=np.int32)   # [outputs] d_in a_zero zero - a_zero sum w
    for j in range(j_start, j_stop):
        zero_shifts[j - j_start] = zero_points[j] - weight_offset
        column_terms[j - j_start] = d_in * a_zero * zero_points[j] - a_zero * row_sums[j]
    sums = np.empty(8 * 32, dtype=np.int32)          # [rows of a pass, 32 outputs]
    values = np.empty(32, dtype=out.dtype)           # one row of a pass's outputs
    for block in range(block_start, block_stop, 2):
        at, j0 = block * n_k4 * 64, 16 * block
        pair = block + 1 < block_stop
        n_j = min(32 if pair else 16, d_out - j0)
        i = 0
        while i < n:
            rows = 8 if n - i >= 8 else 4 if n - i >= 4 else 2 if n - i >= 2 else 1
            start = i * width
            if pair:
                if rows == 8:
                    _dot8x2(flat, start, width, packed, at, n_k4, sums, instruction)
                elif rows == 4:
                    _dot4x2(flat, start, width, packed, at, n_k4, sums, instruction)
                elif rows == 2:
                    _dot2x2(flat, start, width, packed, at, n_k4, sums, instruction)
                else:
                    _dot1x2(flat, start, width, packed, at, n_k4, sums, instruction)
            elif rows == 8:
                _dot8x1(flat, start, width, packed, at, n_k4, sums, instruction)
            elif rows == 4:
                _dot4x1(flat, start, width, packed, at, n_k4, sums, instruction)
            elif rows == 2:
                _dot2x1(flat, start, width, packed, at, n_k4, sums, instruction)
            else:
                _dot1x1(flat, start, width, packed, at, n_k4, sums, instruction)
            # the fold, the Cast into out's dtype, the Mul and the Add, over slices so that the loops vectorize
            here = j0 - j_start
            shifts, terms = zero_shifts[here:here + n_j], column_terms[here:here + n_j]
            row_width = 32 if pair else 16
            for r in range(rows):
                row, a_sum = out[i + r, j0:j0 + n_j], a_sums[i + r]
                block_sums = sums[row_width * r:row_width * r + n_j]
                if scales is None:
                    for lane in range(n_j):
                        row[lane] = block_sums[lane] - shifts[lane] * a_sum + terms[lane]
                    continue
                for lane in range(n_j):  # MatMulInteger's int32
                    values[lane] = np.int32(block_sums[lane] - shifts[lane] * a_sum + terms[lane])
                w_scales = scales[j0:j0 + n_j]
                if bias is None:
                    for lane in range(n_j):
                        row[lane] = values[lane] * (x_scale * w_scales[lane])
                else:
                    biases = bias[j0:j0 + n_j]
                    for lane in range(n_j):
                        row[lane] = values[lane] * (x_scale * w_scales[lane]) + biases[lane]
            i += rows


@numba.njit(cache=True, nogil=True)
def _claimed_products(a, a_zero, a_sums, packed, d_in, weight_offset, zero_points, row_sums, x_scale, scales, bias,
                      out, claimed, n_chunks, instruction):
    # _packed_products over chunks of output blocks, claimed one at a time until none is left (kernels.claim)
    n_blocks = -(-out.shape[1] // 16)
    chunk = kernels.claim(claimed)
    while chunk < n_chunks:
        _packed_products(a, a_zero, a_sums, packed, d_in, weight_offset, zero_points, row_sums, x_scale, scales, bias,
                         out, n_blocks * chunk // n_chunks, n_blocks * (chunk + 1) // n_chunks, instruction)
        chunk = kernels.claim(claimed)


@numba.njit(cache=True, nogil=True, parallel=True)
def _products_vnni(a, a_zero, a_sums, packed, d_in, weight_offset, zero_points, row_sums, x_scale, scales, bias, out,
                   n_chunks, n_threads):  # compiled only where INT8_DOT is "vnni": other CPUs lack vpdpbusd
    claimed = np.zeros(1, dtype=np.int64)
    for _ in numba.prange(n_threads):  # the threads of kernels.share
        _claimed_products(a, a_zero, a_sums, packed, d_in, weight_offset, zero_points, row_sums, x_scale, scales,
                          bias, out, claimed, n_chunks, "vnni")


@numba.njit(cache=True, nogil=True, parallel=True)
def _products_portable(a, a_zero, a_sums, packed, d_in, weight_offset, zero_points, row_sums, x_scale, scales, bias,
                       out, n_chunks, n_threads):
    claimed = np.zeros(1, dtype=np.int64)
    for _ in numba.prange(n_threads):
        _claimed_products(a, a_zero, a_sums, packed, d_in, weight_offset, zero_points, row_sums, x_scale, scales,
                          bias, out, claimed, n_chunks, "portable")


@numba.njit(cache=True, nogil=True)
def _products_vnni_alone(a, a_zero, a_sums, packed, d_in, weight_offset, zero_points, row_sums, x_scale, scales,
                         bias, out):
    _packed_products(a, a_zero, a_sums, packed, d_in, weight_offset, zero_points, row_sums, x_scale, scales, bias,
                     out, 0, -(-out.shape[1] // 16), "vnni")


@numba.njit(cache=True, nogil=True)
def _products_portable_alone(a, a_zero, a_sums, packed, d_in, weight_offset, zero_points, row_sums, x_scale, scales,
                             bias, out):
    _packed_products(a, a_zero, a_sums, packed, d_in, weight_offset, zero_points, row_sums, x_scale, scales, bias,
                     out, 0, -(-out.shape[1] // 16), "portable")


_PRODUCTS = {"vnni": (_products_vnni_alone, _products_vnni),  # (on the calling thread, on numba's pool)
             "portable": (_products_portable_alone, _products_portable)}


def _pack(weight):  # int8 or uint8 [d_out, d_in] -> int8 [n_block * d_in4 * 64], n_block = ceil(d_out / 16)
    """The weight in vpdpbusd's layout [n_block, d_in4, 16 outputs, 4 inputs], zero padded; uint8 as w - 128."""
    d_out, d_in = weight.shape
    n_block, d_in4 = -(-d_out // 16), -(-d_in // 4)
    padded = np.zeros((16 * n_block, 4 * d_in4), dtype=np.int8)
    padded[:d_out, :d_in] = weight.view(np.int8) if weight.dtype == np.int8 else (weight ^ np.uint8(128)).view(np.int8)
    return np.ascontiguousarray(padded.reshape(n_block, 16, d_in4, 4).transpose(0, 2, 1, 3)).reshape(-1)


def matmul_integer(a, a_zero, b_t, b_zero):  # a [..., d_in] uint8, b_t [d_out, d_in] -> int32 [..., d_out]
    """MatMulInteger: sum over k of (a - a_zero)(b - b_zero), exact in int32: every term and partial sum stays
    below 255 * 255 * d_in < 2^31 for d_in up to 33,000. b_zero is one zero point or one per output."""
    weight = QuantizedWeight(b_t, np.ones(np.shape(b_zero), dtype=np.float32), np.asarray(b_zero, dtype=b_t.dtype))
    return weight.integer_product(a, a_zero)


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

    @functools.cached_property
    def packed(self):  # int8 [n_block * d_in4 * 64]: the kernel's copy of the weight (`_pack`), made on first use
        return _pack(self.weight)

    @property
    def shape(self):
        return self.weight.shape

    @property
    def dtype(self):  # the arithmetic it dequantizes in: float32, or float64 for the arbiter
        return self.scale.dtype

    def astype(self, dtype):
        return QuantizedWeight(self.weight, self.scale.astype(dtype), self.zero_point)

    def matmul(self, x, bias=None):  # float [..., d_in] -> [..., d_out]
        """Cast(MatMulInteger(DynamicQuantizeLinear(x), W)) * (x_scale * W_scale) + bias, in the graph's order."""
        x_q, x_scale, x_zero = dynamic_quantize(x)
        out = np.empty(x.shape[:-1] + self.weight.shape[:1], dtype=self.dtype)
        self._products(x_q, x_zero, out, x_scale, self.scales, bias)
        return out

    def integer_product(self, a, a_zero):  # a [..., d_in] uint8 -> int32 [..., d_out]: MatMulInteger(a, W)
        out = np.empty(a.shape[:-1] + self.weight.shape[:1], dtype=np.int32)
        self._products(a, a_zero, out, None, None, None)
        return out

    def _products(self, a, a_zero, out, x_scale, scales, bias):  # a [..., d_in] uint8 -> out [..., d_out] written
        d_out, d_in = self.weight.shape
        rows = a.reshape(-1, d_in)                                          # [n, d_in]
        if d_in % 4:  # the kernel reads four inputs at a time: zero padding adds nothing
            rows = np.concatenate([rows, np.zeros((rows.shape[0], 4 - d_in % 4), dtype=np.uint8)], axis=1)
        rows, out_rows = np.ascontiguousarray(rows), out.reshape(-1, d_out)  # [n, 4 d_in4], [n, d_out]
        offset = 128 if self.weight.dtype == np.uint8 else 0
        n_chunks, n_threads = kernels.share(rows.shape[0] * self.weight.size)  # a multiply-add counted as a byte
        alone, shared = _PRODUCTS[INT8_DOT]
        a_sums = rows.sum(axis=1, dtype=np.int32)                          # [n], once for every chunk
        arguments = (rows, np.int64(a_zero), a_sums, self.packed, d_in, offset, self.zero_points, self.row_sums,
                     x_scale, scales, bias, out_rows)
        if n_chunks == 1:
            alone(*arguments)
        else:
            kernels.on_pool(shared, *arguments, n_chunks, n_threads)


@numba.njit(cache=True)
def _integer_products(a, a_zero, b, b_zero, multiplier, out):
    # a [n_mat, n, d], b [n_mat, d, m] uint8 -> out [n_mat, n, m] int32 (multiplier None), or float: the graph's Cast
    # and Mul by multiplier (a_scale * b_scale, out's dtype). For each k a row of b is scaled and added (the vector
    # runs over m), sums cast back to int32 so LLVM keeps 32-bit lanes (exact: below 2^31)
    row = np.empty(b.shape[2], dtype=np.int32)
    for g in range(a.shape[0]):
        for i in range(a.shape[1]):
            row[:] = 0
            for k in range(a.shape[2]):
                weight = np.int32(np.int32(a[g, i, k]) - a_zero)
                for j in range(b.shape[2]):
                    row[j] = np.int32(row[j] + weight * (np.int32(b[g, k, j]) - b_zero))
            target = out[g, i]
            if multiplier is None:
                target[:] = row
            else:
                for j in range(b.shape[2]):
                    target[j] = row[j]                 # Cast into out's dtype, then the Mul in it
                    target[j] = target[j] * multiplier


def integer_product(a_q, a_zero, b_q, b_zero, multiplier=None):  # a_q [..., n, d], b_q [..., d, m] uint8
    """MatMulInteger of two on-the-fly quantized operands, each with one zero point, exact in int32 -> int32
    [..., n, m]; with a multiplier (float32, or float64 for the arbiter) that product Cast to its dtype times it."""
    lead = a_q.shape[:-2]
    if b_q.shape[:-2] != lead:
        lead = np.broadcast_shapes(lead, b_q.shape[:-2])
        a_q, b_q = (np.ascontiguousarray(np.broadcast_to(x, lead + x.shape[-2:])) for x in (a_q, b_q))
    a, b = a_q.reshape(-1, *a_q.shape[-2:]), b_q.reshape(-1, *b_q.shape[-2:])
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=np.int32 if multiplier is None else multiplier.dtype)
    _integer_products(a, np.int32(a_zero), b, np.int32(b_zero), multiplier, out)
    return out.reshape(*lead, a.shape[1], b.shape[2])


def quantized_product(a, b):  # a [..., n, d], b [..., d, m] float -> [..., n, m]
    """An attention product whose operands the graph quantizes on the fly, each as one whole tensor."""
    a_q, a_scale, a_zero = dynamic_quantize(a)
    b_q, b_scale, b_zero = dynamic_quantize(b)
    return integer_product(a_q, a_zero, b_q, b_zero, a_scale * b_scale)
