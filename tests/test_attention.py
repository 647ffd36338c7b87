"""The numba kernel agrees with the readable numpy attention, and the ops match their definitions."""
import math

import numpy as np
import pytest

from minitransformer import attention, kernels
from minitransformer.ops import gelu, gelu_tanh, layer_norm, rms_norm, silu, sinusoid_table, softmax
from minitransformer.verdict import UNIT_ROUNDOFF, judge

ROUNDINGS = 8  # an elementwise op is a handful of float32 roundings; the bounds below allow 8, times a 10x margin


def assert_within_rounding(got, exact, scale):
    """Elementwise: |got - exact| <= 10 * ROUNDINGS * u * scale, scale the magnitude the op's roundings act on."""
    bound = 10 * ROUNDINGS * UNIT_ROUNDOFF * np.asarray(scale, np.float64)
    excess = np.abs(got.astype(np.float64) - exact) - bound
    assert excess.max() <= 0, f"worst element off by {np.abs(got - exact).max():.3g}, bound there {bound.max():.3g}"


def assert_kernel_agrees(q, k, v, bias, scale):
    """The numba kernel and the numpy reference, each judged by the verdict rule against the float64 attention
    with the other as the rounding yardstick."""
    exact = attention.attend(*(a.astype(np.float64) for a in (q, k, v)), bias, scale)
    got, reference = kernels.attend(q, k, v, bias, scale), attention.attend(q, k, v, bias, scale)
    assert got.shape == reference.shape == exact.shape
    judgement = judge("attention", got, exact, reference)
    assert judgement.ok and judgement.swapped().ok, judgement


def _random_qkv(rng, n_batch, n_head, n_tgt, n_k, d_head):
    q = rng.standard_normal((n_batch, n_head, n_tgt, d_head), dtype=np.float32)
    k = rng.standard_normal((n_batch, n_head, n_k, d_head), dtype=np.float32)
    v = rng.standard_normal((n_batch, n_head, n_k, d_head), dtype=np.float32)
    return q, k, v


@pytest.mark.parametrize("n_batch,n_head,n_tgt,n_past,d_head", [(1, 1, 1, 0, 4), (3, 5, 1, 17, 12), (2, 4, 9, 0, 16),
                                                                 (2, 3, 4, 6, 20)])
def test_kernel_matches_reference_with_causal_and_padding_masks(n_batch, n_head, n_tgt, n_past, d_head):
    rng = np.random.default_rng(n_batch * 100 + n_tgt)
    n_k = n_past + n_tgt
    q, k, v = _random_qkv(rng, n_batch, n_head, n_tgt, n_k, d_head)
    mask = np.ones((n_batch, n_k), dtype=np.int64)
    mask[0, : n_k // 3] = 0  # hide some keys of row 0 (never all of them: the query's own slot stays)
    bias = np.minimum(attention.causal_bias(n_past, n_tgt), attention.padding_bias(mask))
    scale = d_head ** -0.5
    assert kernels.attend(q, k, v, bias, scale).shape == (n_batch, n_head, n_tgt, d_head)
    assert_kernel_agrees(q, k, v, bias, scale)


def test_kernel_reads_strided_cache_views_and_per_head_bias():
    rng = np.random.default_rng(7)
    cache_k = rng.standard_normal((2, 3, 4, 32, 8), dtype=np.float32)  # [n_layer, n_batch, n_head, max_len, d_head]
    cache_v = rng.standard_normal((2, 3, 4, 32, 8), dtype=np.float32)
    q = rng.standard_normal((3, 4, 1, 8), dtype=np.float32)
    k, v = cache_k[1, :, :, :11], cache_v[1, :, :, :11]               # non-contiguous views, as the model passes
    position_bias = rng.standard_normal((1, 4, 1, 11), dtype=np.float32)  # a T5-style bias that differs by head
    assert_kernel_agrees(q, k, v, position_bias, 1.0)


@pytest.mark.parametrize("bias_shape", [(1, 1, 1, 7), (2, 1, 1, 7), (1, 3, 1, 7), (1, 1, 4, 7), (2, 3, 4, 7),
                                        (1, 3, 4, 7), (2, 1, 4, 7), (4, 7), (), "transposed"])
def test_kernel_broadcasts_every_size_1_leading_axis_of_the_bias(bias_shape):
    """The kernel reads a mask with size-1 batch, head or query axes as it is, each axis on its own, and broadcasts
    any other bias (fewer axes, a scalar, a transposed array) first: a bias that differs along every axis it has,
    against the numpy reference, which broadcasts as numpy does."""
    rng = np.random.default_rng(len(bias_shape))
    q, k, v = _random_qkv(rng, 2, 3, 4, 7, 8)
    if bias_shape == "transposed":  # as T5's position bias is gathered: [n_head, n_q, n_k] seen through a transpose
        bias = rng.standard_normal((4, 7, 3), dtype=np.float32).transpose(2, 0, 1)[None]
    else:
        bias = 3 * rng.standard_normal(bias_shape).astype(np.float32)
    assert_kernel_agrees(q, k, v, bias, 0.4)


def test_masked_keys_get_exactly_zero_weight():
    rng = np.random.default_rng(1)
    q, k, v = _random_qkv(rng, 1, 2, 3, 3, 4)
    probs = attention.attention_probs(q, k, attention.causal_bias(0, 3), 0.5)
    assert probs[0, :, 0, 1:].max() == 0.0 and probs[0, :, 1, 2].max() == 0.0
    assert_within_rounding(probs.sum(-1), 1.0, 1.0)
    # the kernel gives masked values no weight either: changing them changes nothing
    v2 = v.copy()
    v2[:, :, 2] = 1e6
    np.testing.assert_array_equal(kernels.attend(q, k, v, attention.causal_bias(0, 3), 0.5)[:, :, :2],
                                  kernels.attend(q, k, v2, attention.causal_bias(0, 3), 0.5)[:, :, :2])


def test_activations_and_norms_match_their_formulas():
    x = np.linspace(-30, 30, 601, dtype=np.float32)
    exact_gelu = np.array([0.5 * t * (1 + math.erf(t / math.sqrt(2))) for t in x.astype(np.float64)])
    x64 = x.astype(np.float64)  # x * (a factor in [0, 1]): every rounding acts on at most |x|
    assert_within_rounding(gelu(x), exact_gelu, np.abs(x64))
    tanh_gelu = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
    assert_within_rounding(gelu_tanh(x), tanh_gelu, np.abs(x64))
    assert_within_rounding(silu(x), x64 / (1 + np.exp(-x64)), np.abs(x64))
    for f in (gelu, gelu_tanh, silu):  # float64 in, float64 arithmetic out: the arbiter's path
        assert f(x64).dtype == np.float64
    rng = np.random.default_rng(3)
    h = rng.standard_normal((2, 5, 12)).astype(np.float32)
    w, b = rng.standard_normal(12).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    h64 = h.astype(np.float64)
    normalized = (h64 - h64.mean(-1, keepdims=True)) / np.sqrt(h64.var(-1, keepdims=True) + np.float32(1e-5))
    # a mean and a variance over 12 terms, then a few elementwise steps: roundings act on |w * x| and |b|
    assert_within_rounding(layer_norm(h, w, b, 1e-5), normalized * w + b, 12 * (np.abs(normalized * w) + np.abs(b)))
    assert layer_norm(h64, w, b, 1e-5).dtype == np.float64
    rms_normalized = h64 / np.sqrt((h64 ** 2).mean(-1, keepdims=True) + np.float32(1e-6))
    assert_within_rounding(rms_norm(h, w, 1e-6), rms_normalized * w, 12 * np.abs(rms_normalized * w))
    np.testing.assert_allclose(softmax(np.array([[1e4, 0.0]], np.float32)), [[1.0, 0.0]])


def test_sinusoid_table_halves_sin_then_cos():
    table = sinusoid_table(5, 6)
    assert table.dtype == np.float32 and table.shape == (5, 6)
    angles = [3 / 10000 ** (0 / 6), 3 / 10000 ** (2 / 6), 3 / 10000 ** (4 / 6)]
    assert_within_rounding(table[3, :3], np.sin(angles), 1.0)  # computed in float64, rounded once to float32
    assert_within_rounding(table[3, 3:], np.cos(angles), 1.0)


@pytest.mark.parametrize("n_tgt", [1, 5])
def test_heads_shared_between_threads_give_the_serial_bits(monkeypatch, n_tgt):
    """The kernel forced onto the threads (heads in chunks across batch rows: 3 x 5 heads in 2, 4 or 15 chunks),
    the same per-head arithmetic as one thread, so the same bits; the serial result agrees with the reference."""
    rng = np.random.default_rng(n_tgt)
    q, k, v = _random_qkv(rng, 3, 5, n_tgt, 11, 8)
    bias = attention.causal_bias(11 - n_tgt, n_tgt)
    monkeypatch.setattr(kernels, "THREADS_ASKED", 1)
    alone = kernels.attend(q, k, v, bias, 0.3)
    assert_kernel_agrees(q, k, v, bias, 0.3)
    monkeypatch.setattr(kernels, "SHARE_CHUNK_BYTES", 1)
    monkeypatch.setattr(kernels, "THREADS_ASKED", 2)
    np.testing.assert_array_equal(kernels.attend(q, k, v, bias, 0.3), alone)
    full_bias = np.broadcast_to(np.asarray(bias, np.float32), (3, 5, n_tgt, 11))
    for n_chunks in (2, 4, 15):
        shared = np.full_like(alone, np.nan)
        kernels._attend_shared(q, k, v, 11, full_bias, np.float32(0.3), shared, n_chunks, 2)
        np.testing.assert_array_equal(shared, alone)
