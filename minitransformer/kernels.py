"""numba kernels and the thread policy: `attention.attend` with the same signature and math, the few-row linear
of a decode step, the many-row linear of the encoder, and the sharing of both between threads.

The loops are the shape llama2.c gives them: for each (batch, head), the scores over the keys, a safe softmax
per query, and the weighted sum of values. The bias is broadcast (zero strides, no copy).
fastmath leaves out nnan/ninf so the finite MASKED value keeps its meaning.
"""
import functools
import math
import os
import threading
import time

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_FASTMATH = {"nsz", "arcp", "contract", "reassoc"}


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _attend_heads(q, k, v, n_k, bias, scale, out, start, stop):
    # k, v [n_batch, n_head, >= n_k, d_head]: only the first n_k key rows are read. bias [1 or n_batch, 1 or n_head,
    # 1 or n_tgt, n_k], broadcast here. Heads [start, stop) of the n_batch * n_head, in order (b, h), are computed.
    # Per head: the scores q kᵀ as a product in register tiles (_gemm_tiles, the keys as its weight rows), a safe
    # softmax per query, then the weighted sum of values. With 4 queries or more (the encoder, teacher forcing)
    # that sum is a tiled product too, over v transposed; a decode step's query adds p v row by row.
    # The arithmetic is in the inputs' dtype: float32 for a float32 model, float64 for its float64 arbiter.
    n_batch, n_head, n_tgt, d_head = q.shape
    zero = q.dtype.type(0)
    scores = np.empty((n_tgt, n_k), dtype=q.dtype)         # one head's, then its probabilities
    values_t = np.empty((d_head, n_k), dtype=q.dtype)      # one head's v transposed
    for head in range(start, stop):
        b, h = head // n_head, head % n_head
        head_bias = bias[b if bias.shape[0] > 1 else 0, h if bias.shape[1] > 1 else 0]  # [1 or n_tgt, n_k]
        _gemm_tiles(q[b, h], k[b, h], None, scores, 0, n_k)  # [n_tgt, n_k]
        for i in range(n_tgt):
            query_bias = head_bias[i if head_bias.shape[0] > 1 else 0]  # [n_k]
            row_max = scores[i, 0] * scale + query_bias[0]
            for j in range(n_k):
                scores[i, j] = scores[i, j] * scale + query_bias[j]
                row_max = max(row_max, scores[i, j])
            total = zero
            for j in range(n_k):
                scores[i, j] = np.exp(scores[i, j] - row_max)
                total += scores[i, j]
            for j in range(n_k):
                scores[i, j] /= total
        if n_tgt >= 4:
            for j in range(n_k):
                for e in range(d_head):
                    values_t[e, j] = v[b, h, j, e]
            _gemm_tiles(scores, values_t, None, out[b, h], 0, d_head)  # [n_tgt, d_head]
            continue
        for i in range(n_tgt):
            for e in range(d_head):
                out[b, h, i, e] = zero
            for j in range(n_k):
                p = scores[i, j]
                for e in range(d_head):
                    out[b, h, i, e] += p * v[b, h, j, e]


@numba.njit(cache=True, nogil=True, parallel=True)
def _attend_shared(q, k, v, n_k, bias, scale, out, n_chunks, n_threads):  # _attend_heads, chunks claimed by threads
    n_heads = q.shape[0] * q.shape[1]
    claimed = np.zeros(1, dtype=np.int64)
    for _ in numba.prange(n_threads):
        chunk = claim(claimed)
        while chunk < n_chunks:
            _attend_heads(q, k, v, n_k, bias, scale, out, n_heads * chunk // n_chunks,
                          n_heads * (chunk + 1) // n_chunks)
            chunk = claim(claimed)


def attend(q, k, v, bias, scale):
    # q [n_batch, n_head, n_tgt, d_head], k, v [n_batch, n_head, n_k, d_head] -> [n_batch, n_head, n_tgt, d_head]
    n_batch, n_head, n_tgt, d_head = q.shape
    n_k = k.shape[2]
    bias = np.asarray(bias, dtype=q.dtype)  # masks are [1 or n_batch, 1 or n_head, 1 or n_tgt, n_k]: used as they are
    # one compiled kernel: a bias of another shape or memory order is broadcast (copied) to C order first
    if (bias.ndim != 4 or bias.shape[3] != n_k or bias.shape[0] not in (1, n_batch) or bias.shape[1] not in (1, n_head)
            or bias.shape[2] not in (1, n_tgt) or not bias.flags.c_contiguous):
        bias = np.ascontiguousarray(np.broadcast_to(bias, (n_batch, n_head, n_tgt, n_k)))
    # C-order arrays let LLVM vectorize the loops: head-split projections are copied, cache views are not
    q, k, v = np.ascontiguousarray(q), _dense_rows(k), _dense_rows(v)
    out = np.empty(q.shape, dtype=q.dtype)
    # shared by heads, its cost counted as the bytes of k and v read plus the multiply-adds (each as a byte)
    cost = n_batch * n_head * n_k * d_head * (2 * q.itemsize + 2 * n_tgt)
    n_chunks, n_threads = share(cost)
    if n_chunks == 1:
        _attend_heads(q, k, v, n_k, bias, q.dtype.type(scale), out, 0, n_batch * n_head)
    else:
        n_chunks = min(n_chunks, n_batch * n_head)
        on_pool(_attend_shared, q, k, v, n_k, bias, q.dtype.type(scale), out, n_chunks, min(n_threads, n_chunks))
    return out


def _dense_rows(a):  # [n_batch, n_head, n, d_head] -> C-order [n_batch, n_head, m >= n, d_head]
    """A cache view (the first n of the cache's m rows per head) as the C-order array of all m rows over the same
    memory, so attention reads the cache without copying it; the kernel reads only the first n rows. Any other
    layout is copied. Built by ndarray's constructor over the view's base, which checks the bounds: a decode step
    calls this between weights streamed through the caches, where numpy's Python-level as_strided took 45 us."""
    n_batch, n_head, n, d_head = a.shape
    item, base = a.itemsize, a.base
    if (a.flags.c_contiguous or not isinstance(base, np.ndarray) or not base.flags.c_contiguous
            or a.strides[3] != item or a.strides[2] != d_head * item or a.strides[1] % a.strides[2]):
        return np.ascontiguousarray(a)
    m = a.strides[1] // a.strides[2]  # rows per head in the array this view was cut from
    if m < n or a.strides[0] != n_head * m * d_head * item:
        return np.ascontiguousarray(a)
    offset = a.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    try:
        return np.ndarray((n_batch, n_head, m, d_head), a.dtype, base, offset, a.strides)
    except ValueError:  # the m rows of the last head run past the base: the view starts after a head's first row
        return np.ascontiguousarray(a)


# ---------------------------------------------------------------------------------------------- threads
# The thread policy: minitransformer owns its threads. Its float32 products are numba kernels (the few-row
# matvec, the many-row gemm, attention, the int8 products); BLAS is not on that path (OpenBLAS's own threads
# hand work over per call and spin while they wait: on a loaded machine a descheduled one stalled the encoder 12x,
# load average 8 on 2 cores). A product big enough to share runs on numba's pool (`prange`; the omp layer where
# libgomp is installed hands work over in about 2 us on a quiet machine, where Python helper threads took 20 us,
# so a decode step's 1 MB matvecs pay for it too): each thread claims chunks of SHARE_CHUNK_BYTES of weight or
# more, one at a time, until none is left, so a thread the OS runs late costs the chunk it holds, not half the
# product (the encoder's products beside a busy loop on the other core: 48.6 ms split in halves, 15.8 ms claimed
# in 8 chunks). Work is shared only while a core is spare (spare_core): the end of each product still waits for
# every thread, and a whole model loses when another process holds the other core (2 cores, one busy loop beside:
# encoder 91.7 ms shared against 22.7 ms on one thread, decode step 16.0 against 9.5 ms; quiet: 9.7 against
# 16.4 ms, and 7.8 against 9.4 ms).

@functools.cache
def _usable_cores():  # the affinity is read once: a syscall, asked per shared product
    return len(os.sched_getaffinity(0))


def _threads_from_environment():  # MINITRANSFORMER_THREADS, a count > 0, or None
    value = os.environ.get("MINITRANSFORMER_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


# Read once, at import, as numba reads NUMBA_NUM_THREADS and OpenBLAS its own: share() is asked about 50 times a
# decode step, and os.environ.get of a name that is not set took 2.2 us of each ask there (1.5% of the step).
THREADS_ASKED = _threads_from_environment()
POOL_SIZE = numba.config.NUMBA_NUM_THREADS  # numba's pool, fixed when numba is imported


def thread_count():
    """MINITRANSFORMER_THREADS, else the cores this process may run on."""
    return THREADS_ASKED or _usable_cores()


def _busy_seconds(cores):
    """CPU seconds spent so far, by anything but idle and I/O wait, on these cores (/proc/stat)."""
    busy = 0
    with open("/proc/stat") as stat:
        for line in stat:
            name, *jiffies = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                busy += sum(int(j) for j in jiffies[:8]) - int(jiffies[3]) - int(jiffies[4])  # idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


class _SpareCore:
    """Is a core idle for one more thread of ours? It is while other processes' CPU time on the cores this process
    may run on leaves 1.5 of thread_count() cores free, averaged since the last look (a look every SAMPLE_SECONDS
    at most). This process's own time is not counted, so its sharing does not turn itself off (the 1-minute load
    average counts it: a 2-thread decode on 2 cores raised that past the limit). At the first look, and where
    /proc/stat cannot be read, the load average (this process's running thread included) must leave half a core
    free."""
    SAMPLE_SECONDS = 0.25

    def __init__(self):
        self.looked_at, self.sample, self.spare = -math.inf, None, True  # sample: (time, busy, own) seconds

    def __call__(self):
        now = time.monotonic()
        if now - self.looked_at < self.SAMPLE_SECONDS:
            return self.spare
        try:
            sample = now, _busy_seconds(os.sched_getaffinity(0)), sum(os.times()[:2])
        except (OSError, ValueError, IndexError):
            sample = None
        if sample is None or self.sample is None:
            self.spare = os.getloadavg()[0] < thread_count() - 0.5
        else:
            (then, busy_then, own_then), (_, busy, own) = self.sample, sample
            others = ((busy - busy_then) - (own - own_then)) / (now - then)  # cores' worth
            self.spare = others < thread_count() - 1.5
        self.looked_at, self.sample = now, sample
        return self.spare


spare_core = _SpareCore()


SHARE_CHUNK_BYTES = 2 ** 17  # of weight, at least, per chunk: 128 KB stream in about 5 us, 2.5x a quiet hand-off
CHUNKS_PER_THREAD = 8        # at most: a late thread's last chunk is at most 1/8 of its share
_numba_threads = threading.local()  # .n_threads: the numba thread count this thread last set


def share(weight_bytes):
    """(chunks, threads) for a product streaming weight_bytes: chunks of SHARE_CHUNK_BYTES or more, at most
    CHUNKS_PER_THREAD per thread, two per thread at least; no more threads than thread_count() or numba's pool;
    (1, 1) unless MINITRANSFORMER_THREADS was set or a core is spare, and in a fork of a process that used the pool.
    numba's thread count for the calling thread is set to the threads (a 1 us call, made only on a change; inside a
    kernel it would stop numba caching it)."""
    if _POOL.inherited or weight_bytes < 4 * SHARE_CHUNK_BYTES:  # too small for 2 threads of 2 chunks each
        return 1, 1
    n_cores = THREADS_ASKED or _usable_cores()
    n_chunks = min(CHUNKS_PER_THREAD * n_cores, weight_bytes // SHARE_CHUNK_BYTES)
    n_threads = min(n_cores, POOL_SIZE, n_chunks // 2)
    if n_threads <= 1 or (THREADS_ASKED is None and not spare_core()):
        return 1, 1
    if getattr(_numba_threads, "n_threads", None) != n_threads:
        numba.set_num_threads(n_threads)
        _numba_threads.n_threads = n_threads
    return n_chunks, n_threads


class _Pool:
    """numba's thread pool as this process may use it. The omp and tbb layers take launches from several threads
    at once; the workqueue layer (numba's fallback where neither libgomp nor TBB is installed) aborts the process
    then, so there launches from different threads (two generate calls in a server) take turns. GNU OpenMP's
    threads do not survive a fork: numba terminates a forked child that launches work on a pool its parent used,
    so such a child computes on its own thread (share says 1)."""

    def __init__(self):
        self.used = False              # this process has launched work on the pool
        self.inherited = False         # this process is a fork of one that had
        self.launch_lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self):
        self.inherited = self.inherited or self.used

    def launch(self, kernel, *args):
        self.used = True
        try:
            concurrent_launches = numba.threading_layer() in ("omp", "tbb")
        except ValueError:  # no prange kernel has run yet: the layer is chosen at the first
            concurrent_launches = False
        if concurrent_launches:
            return kernel(*args)
        with self.launch_lock:
            return kernel(*args)


_POOL = _Pool()


def on_pool(kernel, *args):
    """kernel(*args), a prange kernel that share() gave more than one thread, on numba's pool (_Pool)."""
    return _POOL.launch(kernel, *args)


@intrinsic
def claim(typingctx, counter):
    """counter[0] += 1, atomically; returns the value before: the next chunk of a shared product is this
    thread's."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.atomic_rmw("add", data, ir.Constant(ir.IntType(64), 1), "monotonic")
    return types.int64(counter), codegen


# ---------------------------------------------------------------------------------------------- linear

MATVEC_MAX_ROWS = 8   # up to this many rows (a decode step, its beams) a linear streams its weight once
GEMM_ROW_BLOCK = 64   # rows per pass over the weight in a product: 64 rows of inputs stay in cache


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _matvec_blocks(x, weight, bias, out, start, stop, with_tail):
    # x [n_rows, d_in], weight [d_out, d_in] C order, bias [d_out] or None -> out[:, block outputs]
    # Block k holds the outputs k, k + q, k + 2q, k + 3q (q = d_out // 4), one from each quarter of W; blocks
    # [start, stop) are computed, then (with_tail) the d_out % 4 outputs past the quarters. Each block's 4 weight
    # rows are read once, from memory, as 4 sequential streams (rows of one quarter follow each other, so the
    # hardware prefetcher runs ahead in each; 4 adjacent rows instead, one page, were 2x slower to stream), and
    # from cache for every 4 input rows (a beam): tiles of 4 rows x 4 outputs summed in registers, so each
    # element loaded feeds 4 multiply-adds (a lone dot product loads 2 elements per multiply-add and waits on
    # the loads). Rows past a multiple of 4 (greedy search's one) take 1 x 4 tiles. An output's sum does not
    # depend on how the blocks are shared between threads. The dtype is the inputs'.
    n_rows, d_in = x.shape
    q = weight.shape[0] // 4
    zero = x.dtype.type(0)
    for j0 in range(start, stop):
        j1, j2, j3 = j0 + q, j0 + 2 * q, j0 + 3 * q
        r = 0
        while r + 4 <= n_rows:
            t00 = t01 = t02 = t03 = t10 = t11 = t12 = t13 = zero
            t20 = t21 = t22 = t23 = t30 = t31 = t32 = t33 = zero
            for i in range(d_in):
                x0, x1, x2, x3 = x[r, i], x[r + 1, i], x[r + 2, i], x[r + 3, i]
                w0, w1, w2, w3 = weight[j0, i], weight[j1, i], weight[j2, i], weight[j3, i]
                t00, t01, t02, t03 = t00 + x0 * w0, t01 + x0 * w1, t02 + x0 * w2, t03 + x0 * w3
                t10, t11, t12, t13 = t10 + x1 * w0, t11 + x1 * w1, t12 + x1 * w2, t13 + x1 * w3
                t20, t21, t22, t23 = t20 + x2 * w0, t21 + x2 * w1, t22 + x2 * w2, t23 + x2 * w3
                t30, t31, t32, t33 = t30 + x3 * w0, t31 + x3 * w1, t32 + x3 * w2, t33 + x3 * w3
            if bias is not None:
                b0, b1, b2, b3 = bias[j0], bias[j1], bias[j2], bias[j3]
                t00, t01, t02, t03 = t00 + b0, t01 + b1, t02 + b2, t03 + b3
                t10, t11, t12, t13 = t10 + b0, t11 + b1, t12 + b2, t13 + b3
                t20, t21, t22, t23 = t20 + b0, t21 + b1, t22 + b2, t23 + b3
                t30, t31, t32, t33 = t30 + b0, t31 + b1, t32 + b2, t33 + b3
            out[r, j0], out[r, j1], out[r, j2], out[r, j3] = t00, t01, t02, t03
            out[r + 1, j0], out[r + 1, j1], out[r + 1, j2], out[r + 1, j3] = t10, t11, t12, t13
            out[r + 2, j0], out[r + 2, j1], out[r + 2, j2], out[r + 2, j3] = t20, t21, t22, t23
            out[r + 3, j0], out[r + 3, j1], out[r + 3, j2], out[r + 3, j3] = t30, t31, t32, t33
            r += 4
        for r in range(r, n_rows):
            t0 = t1 = t2 = t3 = zero
            for i in range(d_in):
                xi = x[r, i]
                t0, t1 = t0 + xi * weight[j0, i], t1 + xi * weight[j1, i]
                t2, t3 = t2 + xi * weight[j2, i], t3 + xi * weight[j3, i]
            if bias is not None:
                t0, t1, t2, t3 = t0 + bias[j0], t1 + bias[j1], t2 + bias[j2], t3 + bias[j3]
            out[r, j0], out[r, j1], out[r, j2], out[r, j3] = t0, t1, t2, t3
    if with_tail:
        for r in range(n_rows):
            _dots(x, weight, bias, out, r, 4 * q, weight.shape[0])


def matvec(x, weight, bias=None):  # x [n_rows, d_in], weight [d_out, d_in], bias [d_out] -> [n_rows, d_out]
    """x Wᵀ + b for a few rows, reading W once; W in HF's [d_out, d_in] layout, in blocks of 4 outputs
    (_matvec_blocks), shared between threads while a core is spare."""
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    out = np.empty((x.shape[0], weight.shape[0]), dtype=np.result_type(x, weight))
    n_chunks, n_threads = share(weight.nbytes)
    if n_chunks == 1:
        _matvec_blocks(x, weight, bias, out, 0, weight.shape[0] // 4, True)
    else:
        on_pool(_matvec_shared, x, weight, bias, out, n_chunks, n_threads)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _matvec_shared(x, weight, bias, out, n_chunks, n_threads):  # _matvec_blocks, chunks of blocks claimed by threads
    n_blocks = weight.shape[0] // 4
    claimed = np.zeros(1, dtype=np.int64)
    for _ in numba.prange(n_threads):
        chunk = claim(claimed)
        while chunk < n_chunks:
            _matvec_blocks(x, weight, bias, out, n_blocks * chunk // n_chunks, n_blocks * (chunk + 1) // n_chunks,
                           chunk == n_chunks - 1)
            chunk = claim(claimed)


@intrinsic
def _prefetch(typingctx, array, index):
    """A hint that the cache line holding array.flat[index] (C order) will be read soon: llvm.prefetch (read,
    locality 2: into L2, not L1, which the tile being computed needs: 4 weight rows of 2048 inputs fill a 32 KB
    L1 alone; measured 10% faster there than locality 3). Reads nothing and cannot fault."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        signature_ir = ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32])
        hint = cgutils.get_or_insert_function(builder.module, signature_ir, "llvm.prefetch.p0i8")
        builder.call(hint, [builder.bitcast(builder.gep(data, [args[1]]), byte_pointer), i32(0), i32(2), i32(1)])
        return context.get_dummy_value()
    return types.void(array, types.intp), codegen


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _gemm_tiles(x, weight, bias, out, start, stop):
    # x [n_rows, d_in], weight [d_out, d_in] C order, bias [d_out] or None -> out[:, start:stop]
    # Tiles of 4 rows x 4 outputs: 16 dot products summed in registers, so every element loaded (of x or of W)
    # feeds 4 multiply-adds, where a lone dot product loads 2 elements per multiply-add and waits on the loads.
    # LLVM vectorizes the loop over d_in (reassoc). Rows are taken GEMM_ROW_BLOCK at a time, so their inputs stay
    # in cache; the 4 weight rows of a tile come from memory once per block and from cache for its other row
    # tiles, and each row tile prefetches its share of the next weight tile, so memory is read while the tiles
    # compute (a weight read from memory took 1.5x as long without). Rows past a multiple of 4 and outputs past
    # the last whole tile are single dot products. The dtype is the inputs'.
    n_rows, d_in = x.shape
    zero = x.dtype.type(0)
    line = 64 // weight.itemsize  # elements per cache line
    tiled = start + (stop - start) // 4 * 4
    for r0 in range(0, n_rows, GEMM_ROW_BLOCK):
        r1 = min(r0 + GEMM_ROW_BLOCK, n_rows)
        share = -(-4 * d_in // max(1, (r1 - r0) // 4))  # of the next tile's elements, per row tile
        for j in range(start, tiled, 4):
            r = r0
            while r + 4 <= r1:
                if j + 8 <= stop:  # the next tile is flat [(j + 4) d_in, (j + 8) d_in)
                    ahead = (j + 4) * d_in + (r - r0) // 4 * share
                    for e in range(ahead, min(ahead + share, (j + 8) * d_in), line):
                        _prefetch(weight, e)
                t00 = t01 = t02 = t03 = t10 = t11 = t12 = t13 = zero
                t20 = t21 = t22 = t23 = t30 = t31 = t32 = t33 = zero
                for i in range(d_in):
                    x0, x1, x2, x3 = x[r, i], x[r + 1, i], x[r + 2, i], x[r + 3, i]
                    w0, w1, w2, w3 = weight[j, i], weight[j + 1, i], weight[j + 2, i], weight[j + 3, i]
                    t00, t01, t02, t03 = t00 + x0 * w0, t01 + x0 * w1, t02 + x0 * w2, t03 + x0 * w3
                    t10, t11, t12, t13 = t10 + x1 * w0, t11 + x1 * w1, t12 + x1 * w2, t13 + x1 * w3
                    t20, t21, t22, t23 = t20 + x2 * w0, t21 + x2 * w1, t22 + x2 * w2, t23 + x2 * w3
                    t30, t31, t32, t33 = t30 + x3 * w0, t31 + x3 * w1, t32 + x3 * w2, t33 + x3 * w3
                if bias is not None:
                    b0, b1, b2, b3 = bias[j], bias[j + 1], bias[j + 2], bias[j + 3]
                    t00, t01, t02, t03 = t00 + b0, t01 + b1, t02 + b2, t03 + b3
                    t10, t11, t12, t13 = t10 + b0, t11 + b1, t12 + b2, t13 + b3
                    t20, t21, t22, t23 = t20 + b0, t21 + b1, t22 + b2, t23 + b3
                    t30, t31, t32, t33 = t30 + b0, t31 + b1, t32 + b2, t33 + b3
                out[r, j], out[r, j + 1], out[r, j + 2], out[r, j + 3] = t00, t01, t02, t03
                out[r + 1, j], out[r + 1, j + 1], out[r + 1, j + 2], out[r + 1, j + 3] = t10, t11, t12, t13
                out[r + 2, j], out[r + 2, j + 1], out[r + 2, j + 2], out[r + 2, j + 3] = t20, t21, t22, t23
                out[r + 3, j], out[r + 3, j + 1], out[r + 3, j + 2], out[r + 3, j + 3] = t30, t31, t32, t33
                r += 4
            for r in range(r, r1):
                _dots(x, weight, bias, out, r, j, j + 4)
        for r in range(r0, r1):
            _dots(x, weight, bias, out, r, tiled, stop)


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, inline="always")
def _dots(x, weight, bias, out, r, start, stop):  # out[r, start:stop] = x[r] W[start:stop]ᵀ (+ b), one at a time
    zero = x.dtype.type(0)
    for j in range(start, stop):
        total = zero
        for i in range(x.shape[1]):
            total += x[r, i] * weight[j, i]
        out[r, j] = total if bias is None else total + bias[j]


def gemm(x, weight, bias=None):  # x [n_rows, d_in], weight [d_out, d_in], bias [d_out] -> [n_rows, d_out]
    """x Wᵀ + b for many rows (the encoder, teacher forcing) in register tiles (_gemm_tiles: about 1.7x
    OpenBLAS's sgemm on the encoder's 32-row products here), W in HF's [d_out, d_in] layout as it is stored;
    shared between threads, by output features, while a core is spare."""
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    out = np.empty((x.shape[0], weight.shape[0]), dtype=np.result_type(x, weight))
    n_chunks, n_threads = share(weight.nbytes)
    if n_chunks == 1:
        _gemm_tiles(x, weight, bias, out, 0, weight.shape[0])
    else:
        on_pool(_gemm_shared, x, weight, bias, out, n_chunks, n_threads)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _gemm_shared(x, weight, bias, out, n_chunks, n_threads):  # _gemm_tiles, chunks of whole tiles claimed by threads
    d_out = weight.shape[0]
    n_tiles = -(-d_out // 4)
    claimed = np.zeros(1, dtype=np.int64)
    for _ in numba.prange(n_threads):
        chunk = claim(claimed)
        while chunk < n_chunks:
            _gemm_tiles(x, weight, bias, out, 4 * (n_tiles * chunk // n_chunks),
                        min(4 * (n_tiles * (chunk + 1) // n_chunks), d_out))
            chunk = claim(claimed)


# ---------------------------------------------------------------------------------------------- norms

@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _layer_norm_rows(x, weight, bias, eps, out):  # x, out [n_rows, d]: one pass for the mean, one for the variance
    n_rows, d = x.shape
    for r in range(n_rows):
        total = x[r, 0]
        for i in range(1, d):
            total += x[r, i]
        mean = total / d
        squares = (x[r, 0] - mean) * (x[r, 0] - mean)
        for i in range(1, d):
            squares += (x[r, i] - mean) * (x[r, i] - mean)
        inverse = 1 / np.sqrt(squares / d + eps)
        for i in range(d):
            out[r, i] = (x[r, i] - mean) * inverse * weight[i] + bias[i]


def layer_norm(x, weight, bias, eps):  # [..., d] -> [..., d]
    """ops.layer_norm in one call: (x - mean) / sqrt(var + eps) * weight + bias, in x's dtype."""
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])  # [n_rows, d]
    out = np.empty_like(rows)
    _layer_norm_rows(rows, weight, bias, x.dtype.type(np.float32(eps)), out)  # eps as the graph stores it
    return out.reshape(x.shape)


# ---------------------------------------------------------------------------------------------- layout

@numba.njit(cache=True, nogil=True)
def _transpose_into(a, out):  # a [n, m] C order -> out [m, n] C order
    # bands of 8 rows of `a`: each output row gets 8 consecutive elements, and the band's 8 input rows stream
    # along their length: 2x faster than 64 x 64 tiles on an export's linear weights (power-of-two strides)
    n, m = a.shape
    band = 8
    for i0 in range(0, n, band):
        i1 = min(i0 + band, n)
        for j in range(m):
            for i in range(i0, i1):
                out[j, i] = a[i, j]


EQUAL_BLOCK = 16384  # elements OR-ed together before each early exit


@numba.njit(cache=True, nogil=True)
def _equal_flat(a, b):  # a, b [n] -> all equal?
    # differences OR-ed over blocks of a fixed length, so LLVM vectorizes the loop (4x faster than a block whose
    # end is computed with min()); the remainder after the last whole block is compared element by element
    n = a.shape[0]
    whole = n - n % EQUAL_BLOCK
    for start in range(0, whole, EQUAL_BLOCK):
        diff = a[0] ^ a[0]
        for i in range(EQUAL_BLOCK):
            diff |= a[start + i] ^ b[start + i]
        if diff:
            return False
    for i in range(whole, n):
        if a[i] != b[i]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _equal_tiles(a, b):  # a, b [n, m] in different memory orders: tile by tile, so both stay in cache
    n, m = a.shape
    tile = 64
    for i0 in range(0, n, tile):
        for j0 in range(0, m, tile):
            for i in range(i0, min(i0 + tile, n)):
                for j in range(j0, min(j0 + tile, m)):
                    if a[i, j] != b[i, j]:
                        return False
    return True


def same_bits(a, b):
    """Equal shape, dtype and bits (NaN equals NaN, -0.0 differs from 0.0), without copying either array."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    bits = np.dtype(f"u{a.dtype.itemsize}")
    a, b = a.view(bits), b.view(bits)
    for order in ("C", "F"):  # the same memory order: one flat pass over both
        if a.flags[f"{order}_CONTIGUOUS"] and b.flags[f"{order}_CONTIGUOUS"]:
            return a.size == 0 or bool(_equal_flat(a.reshape(-1, order=order), b.reshape(-1, order=order)))
    if a.ndim == 2:
        return bool(_equal_tiles(a, b))
    return bool(np.array_equal(a, b))


def _is_transposed(a):  # a C-order matrix read transposed (an ONNX [in, out] linear weight read as HF's [out, in])
    return a.ndim == 2 and a.T.flags.c_contiguous and not a.flags.c_contiguous


def _copy_into(a, out):  # out[...] = a; out C order, of a's dtype and shape
    if _is_transposed(a):  # banded: numpy's strided copy of a transposed matrix is 10x slower
        bits = np.dtype(f"u{a.itemsize}")  # moved as bits: numba has no float16
        _transpose_into(a.T.view(bits), out.view(bits))
    else:
        np.copyto(out, a)


def c_order(a, dtype, copy=False):  # any array -> C-order array of `dtype`, the same values
    """np.ascontiguousarray (np.array with copy), with a banded copy for a transposed matrix."""
    if a.dtype == dtype and _is_transposed(a):
        out = np.empty(a.shape, dtype=dtype)
        _copy_into(a, out)
        return out
    return np.array(a, dtype=dtype, order="C") if copy else np.ascontiguousarray(a, dtype=dtype)


BLOCK_ALIGN = 4096  # bytes: every array of a block starts on a page, as one allocated alone does


def c_order_block(arrays):
    """C-order copies of `arrays` (the same dtypes, shapes and values), one after another in one allocation, in
    the order given, each starting on a page. numpy asks the kernel for huge pages for an allocation of 4 MB or
    more (MADV_HUGEPAGE), so weights of 1 MB each are read through 2 MB pages instead of their own 4 KB ones."""
    sizes = [-(-a.nbytes // BLOCK_ALIGN) * BLOCK_ALIGN for a in arrays]
    block = np.empty(sum(sizes) + BLOCK_ALIGN, dtype=np.uint8)
    start = -block.ctypes.data % BLOCK_ALIGN
    copies = []
    for a, size in zip(arrays, sizes):
        copy = block[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
        _copy_into(a, copy)
        copies.append(copy)
        start += size
    return copies


# ---------------------------------------------------------------------------------------------- search

TOP_K_BLOCK = 16  # scores compared with the k-th kept one at a time, to skip a block with none above it


@numba.njit(cache=True, nogil=True)
def _top_k_rows(scores, values, index):  # scores [n_rows, n] -> values, index [n_rows, k], k = values.shape[1] <= n
    # One pass per row, keeping the k best so far in order: a score enters when it ranks above the k-th kept one
    # (strictly: of equal scores the lower index stays first), and moves up past every kept score it ranks above.
    # NaN ranks below every number, as in a stable sort of -scores. Once k are kept, a block of scores none of which
    # is above the k-th is skipped after one vectorized count. No fastmath: NaN must keep its meaning.
    n, k = scores.shape[1], values.shape[1]
    for row in range(scores.shape[0]):
        kept = 0
        kth = scores[row, 0]  # the k-th kept score, once k are kept
        for start in range(0, n, TOP_K_BLOCK):
            stop = min(start + TOP_K_BLOCK, n)
            if kept == k and kth == kth and stop - start == TOP_K_BLOCK:
                above = 0
                for j in range(start, start + TOP_K_BLOCK):
                    above += scores[row, j] > kth
                if above == 0:
                    continue
            for j in range(start, stop):
                v = scores[row, j]
                if kept == k:
                    if not (v > kth or (kth != kth and v == v)):
                        continue
                    p = k - 1
                else:
                    p = kept
                    kept += 1
                while p > 0 and (v > values[row, p - 1] or (values[row, p - 1] != values[row, p - 1] and v == v)):
                    values[row, p], index[row, p] = values[row, p - 1], index[row, p - 1]
                    p -= 1
                values[row, p], index[row, p] = v, j
                kth = values[row, k - 1]


def top_k(scores, k):  # [n_rows, n] -> values [n_rows, k] (scores' dtype), int64 indices [n_rows, k]
    """The k largest scores of each row, largest first, ties in index order (NaN last): a stable sort's first k,
    in one pass over the scores."""
    scores = np.ascontiguousarray(scores)
    if not 0 < k <= scores.shape[1]:
        raise ValueError(f"top_k: k = {k} outside [1, {scores.shape[1]}]")
    values = np.empty((scores.shape[0], k), dtype=scores.dtype)
    index = np.empty((scores.shape[0], k), dtype=np.int64)
    _top_k_rows(scores, values, index)
    return values, index
