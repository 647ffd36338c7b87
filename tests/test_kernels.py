"""The fast paths against their plain definitions (the few-row linear, cache reorder, the memory-mapped reader) and
the thread policy: products shared on numba's pool, the spare-core test, launches from several threads and forks."""
import io
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from minitransformer import kernels
from minitransformer.cache import KVCache
from minitransformer.errors import ModelError
from minitransformer.model import load
from minitransformer.ops import layer_norm, linear
from minitransformer.weights import read_safetensors

from conftest import FIXTURES


def _dot_bound(x, weight, dtype):
    """The worst-case rounding error of a length-n dot product summed in `dtype` (Higham's γ_n Σ|x_i w_i|),
    n + 1 terms with the bias: a bound, not an estimate, so it needs no margin."""
    n = x.shape[-1] + 1
    unit = np.finfo(dtype).eps / 2
    return n * unit / (1 - n * unit) * (np.abs(x.astype(np.float64)) @ np.abs(weight.astype(np.float64)).T + 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_rows", [1, 4, 6, kernels.MATVEC_MAX_ROWS + 1, 2 * kernels.GEMM_ROW_BLOCK + 7])
def test_linear_is_x_wt_plus_b_in_the_inputs_dtype(dtype, n_rows):
    # 45 outputs: 11 whole tiles (or blocks) of 4 and one left over; 6 rows: a tile of 4 rows and 2 rows alone;
    # 2 row blocks + 7 rows: whole tiles of 4 and 3 left over
    rng = np.random.default_rng(n_rows)
    x = rng.standard_normal((n_rows, 1, 67)).astype(dtype)
    weight, bias = rng.standard_normal((45, 67)).astype(dtype), rng.standard_normal(45).astype(dtype)
    exact = x.astype(np.float64) @ weight.astype(np.float64).T + bias  # [n_rows, 1, 45]
    for b in (bias, None):
        got = linear(x, weight, b)
        assert got.dtype == dtype and got.shape == (n_rows, 1, 45)
        want = exact if b is not None else exact - bias
        assert (np.abs(got - want) <= _dot_bound(x, weight, dtype)).all()


@pytest.mark.parametrize("n_rows", [4, 6, 40])
def test_products_shared_between_threads_write_every_output_once(monkeypatch, n_rows):
    """The public product forced onto the threads, and its driver with 2 to 16 chunks (of 62 to 500 outputs,
    boundaries inside the matvec's 4-output blocks' quarters), against the serial kernel."""
    rng = np.random.default_rng(3)
    x, weight = rng.standard_normal((n_rows, 64), dtype=np.float32), rng.standard_normal((1001, 64), dtype=np.float32)
    bias = rng.standard_normal(1001, dtype=np.float32)
    product = kernels.matvec if n_rows <= kernels.MATVEC_MAX_ROWS else kernels.gemm
    driver = kernels._matvec_shared if product is kernels.matvec else kernels._gemm_shared
    monkeypatch.setattr(kernels, "THREADS_ASKED", 1)
    alone = product(x, weight, bias)
    monkeypatch.setattr(kernels, "SHARE_CHUNK_BYTES", 1)
    monkeypatch.setattr(kernels, "THREADS_ASKED", 3)
    n_pool = min(3, numba.config.NUMBA_NUM_THREADS)
    assert kernels.share(weight.nbytes) == ((24, n_pool) if n_pool > 1 else (1, 1))
    exact = x.astype(np.float64) @ weight.T + bias
    for n_chunks in (None, 2, 3, 16):
        if n_chunks is None:
            shared = product(x, weight, bias)
        else:
            shared = np.full((n_rows, 1001), np.nan, dtype=np.float32)
            driver(x, weight, bias, shared, n_chunks, n_pool)
        assert (np.abs(shared - exact) <= _dot_bound(x[:, None], weight, np.float32)[:, 0]).all()
        np.testing.assert_array_equal(shared, alone)  # the same kernel per output, so the same bits


def test_products_are_shared_only_while_a_core_is_spare_in_chunks_of_enough_bytes(monkeypatch):
    monkeypatch.setattr(kernels, "THREADS_ASKED", None)
    monkeypatch.setattr(kernels, "_usable_cores", lambda: 2)
    n_pool = min(2, numba.config.NUMBA_NUM_THREADS)
    chunk = kernels.SHARE_CHUNK_BYTES
    monkeypatch.setattr(kernels, "spare_core", lambda: False)
    assert kernels.share(2 ** 30) == (1, 1)
    monkeypatch.setattr(kernels, "THREADS_ASKED", 2)  # the count set: shared whatever the load
    assert kernels.share(2 ** 30) == ((16, 2) if n_pool > 1 else (1, 1))
    monkeypatch.setattr(kernels, "THREADS_ASKED", 1)
    assert kernels.share(2 ** 30) == (1, 1)
    monkeypatch.setattr(kernels, "THREADS_ASKED", None)
    monkeypatch.setattr(kernels, "spare_core", lambda: True)
    assert kernels.share(2 ** 30) == ((2 * kernels.CHUNKS_PER_THREAD, 2) if n_pool > 1 else (1, 1))
    assert kernels.share(4 * chunk - 1) == (1, 1)  # two chunks per thread at least
    assert kernels.share(4 * chunk) == ((4, 2) if n_pool > 1 else (1, 1))
    assert kernels.share(7 * chunk + chunk // 2) == ((7, 2) if n_pool > 1 else (1, 1))


def test_the_thread_count_asked_is_read_from_the_environment_when_the_package_is_imported(monkeypatch):
    for value, asked in (("3", 3), ("1", 1), ("0", None), ("-2", None), ("two", None), ("", None)):
        monkeypatch.setenv("MINITRANSFORMER_THREADS", value)
        assert kernels._threads_from_environment() == asked
    env = {**os.environ, "MINITRANSFORMER_THREADS": "3"}
    code = "from minitransformer import kernels; print(kernels.THREADS_ASKED, kernels.thread_count())"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split() == ["3", "3"]


def test_a_spare_core_is_judged_by_the_other_processes_cpu_time(monkeypatch):
    """2 cores: spare while other processes take less than half a core since the last look; this process's own
    time does not count; the first look, and a machine without /proc/stat, go by the load average."""
    monkeypatch.setattr(kernels, "THREADS_ASKED", None)
    monkeypatch.setattr(kernels, "_usable_cores", lambda: 2)
    now = {"clock": 100.0, "busy": 1000.0, "own": 10.0, "load": 5.0}
    monkeypatch.setattr(kernels.time, "monotonic", lambda: now["clock"])
    monkeypatch.setattr(kernels, "_busy_seconds", lambda cores: now["busy"])
    monkeypatch.setattr(kernels.os, "times", lambda: (now["own"], 0.0, 0.0, 0.0, 0.0))
    monkeypatch.setattr(kernels.os, "getloadavg", lambda: (now["load"],) * 3)
    spare_core = kernels._SpareCore()
    assert not spare_core()                                      # first look: load average 5
    now.update(clock=101.0, busy=1002.4, own=12.0, load=9.0)     # 2 cores' worth ours, 0.4 others'
    assert spare_core()
    now.update(clock=101.2, busy=1100.0)                         # within SAMPLE_SECONDS: no new look
    assert spare_core()
    now.update(clock=102.0, busy=1004.0, own=13.0)               # since 101.0: 1 ours, 0.6 others'
    assert not spare_core()
    now.update(clock=103.0, busy=1005.49, own=14.0)              # 0.49 others'
    assert spare_core()

    def unreadable(cores):
        raise OSError("no /proc/stat")
    monkeypatch.setattr(kernels, "_busy_seconds", unreadable)
    for load, spare in ((1.4, True), (1.6, False)):
        now.update(clock=now["clock"] + 1.0, load=load)
        assert spare_core() == spare


def test_busy_seconds_reads_the_cores_asked_for(tmp_path, monkeypatch):
    stat = "cpu  50 0 50 900 0 0 0 0 0 0\ncpu0 10 1 2 300 4 5 6 7 8 9\ncpu1 40 0 48 600 0 0 0 0 0 0\nintr 5\n"
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: io.StringIO(stat) if path == "/proc/stat"
                        else real_open(path, *a, **k))
    tick = os.sysconf("SC_CLK_TCK")
    assert kernels._busy_seconds({0}) == (10 + 1 + 2 + 5 + 6 + 7) / tick  # not idle (300) nor iowait (4), nor guest
    assert kernels._busy_seconds({0, 1}) == (31 + 88) / tick


def test_attention_reads_a_cache_view_without_copying_it():
    cache = np.arange(2 * 3 * 10 * 4, dtype=np.float32).reshape(2, 3, 10, 4)  # [n_batch, n_head, max_len, d_head]
    dense = kernels._dense_rows(cache[:, :, :7])
    assert np.shares_memory(dense, cache) and dense.flags.c_contiguous and dense.shape == cache.shape
    np.testing.assert_array_equal(dense[:, :, :7], cache[:, :, :7])
    copied = kernels._dense_rows(cache[:, :, :7, :2])  # not rows of a C-order array: copied
    assert not np.shares_memory(copied, cache) and copied.shape == (2, 3, 7, 2)
    # rows 3 to 9: the last head's 10 rows from row 3 would run past the cache, so these are copied
    late = kernels._dense_rows(cache[:, :, 3:9])
    assert not np.shares_memory(late, cache)
    np.testing.assert_array_equal(late, cache[:, :, 3:9])
    layers = np.arange(2 * 2 * 3 * 10 * 4, dtype=np.float32).reshape(2, 2, 3, 10, 4)  # layer 0's rows run on in layer 1
    late = kernels._dense_rows(layers[0, :, :, 3:9])
    assert np.shares_memory(late, layers) and late.flags.c_contiguous
    np.testing.assert_array_equal(late[:, :, :6], layers[0, :, :, 3:9])


def test_a_decode_step_reads_the_cross_attention_keys_and_values_in_place():
    model = load(os.path.join(FIXTURES, "marian-opus"))
    rng = np.random.default_rng(2)
    ids = rng.integers(3, model.spec.n_vocab, (2, 5))
    state = model.start(model.encode(ids), np.ones_like(ids), 4)
    for layer in range(model.spec.n_layer_decoder):
        for keys_or_values in state.cross.view(layer):  # [n_batch, n_head, n_src, d_head]
            assert kernels._dense_rows(keys_or_values) is keys_or_values


def test_cache_reorder_in_place_equals_gathering_the_rows():
    rng = np.random.default_rng(5)
    cache = KVCache(n_layer=2, n_batch=4, n_head=3, capacity=9, d_head=5)
    for layer in range(2):
        cache.append(layer, *rng.standard_normal((2, 4, 3, 6, 5), dtype=np.float32))
    cache.commit(6)
    for batch_index in ([1, 0, 0, 3], [0, 1, 2, 3], [3, 3, 3, 3], [2, 0, 3, 1]):
        key, value, buffer = cache.key.copy(), cache.value.copy(), cache.key
        cache.reorder(np.array(batch_index))
        assert cache.key is buffer
        np.testing.assert_array_equal(cache.key[:, :, :, :6], key[:, batch_index, :, :6])
        np.testing.assert_array_equal(cache.value[:, :, :, :6], value[:, batch_index, :, :6])
        np.testing.assert_array_equal(cache.key[:, :, :, 6:], key[:, :, :, 6:])  # empty slots untouched


def test_safetensors_are_memory_mapped_and_equal_to_the_reference_reader(tmp_path):
    path = str(tmp_path / "w.safetensors")
    rng = np.random.default_rng(0)
    save_file({"a": rng.standard_normal((3, 5), dtype=np.float32), "b": np.arange(4, dtype=np.float16),
               "c": np.zeros((0, 2), np.float32)}, path)
    got, want = read_safetensors(path), load_file(path)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and not got[name].flags.writeable
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("damage", ["header past the end", "offsets past the end", "wrong length", "dtype", "short"])
def test_damaged_safetensors_are_refused_by_file_name(tmp_path, damage):
    path = tmp_path / "w.safetensors"
    save_file({"a": np.ones((3, 5), np.float32)}, str(path))
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = bytes(data[8:8 + header_len])
    edits = {"header past the end": lambda: (10 ** 9).to_bytes(8, "little") + data[8:],
             "offsets past the end": lambda: data[:8] + header.replace(b"[0,60]", b"[0,99]") + data[8 + header_len:],
             "wrong length": lambda: data[:8] + header.replace(b"[0,60]", b"[4,60]") + data[8 + header_len:],
             "dtype": lambda: data[:8] + header.replace(b'"F32"', b'"I32"') + data[8 + header_len:],
             "short": lambda: data[:5]}
    damaged = bytes(edits[damage]())
    assert damaged != bytes(data)
    path.write_bytes(damaged)
    with pytest.raises(ModelError, match=r"w\.safetensors: cannot read safetensors"):
        read_safetensors(str(path))



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_kernel_is_the_formula_in_the_inputs_dtype(dtype):
    rng = np.random.default_rng(4)
    h = rng.standard_normal((3, 2, 512)).astype(dtype) * 7 + 3  # an offset mean: the centring matters
    w, b = rng.standard_normal(512).astype(dtype), rng.standard_normal(512).astype(dtype)
    h64 = h.astype(np.float64)
    normalized = (h64 - h64.mean(-1, keepdims=True)) / np.sqrt(h64.var(-1, keepdims=True) + np.float32(1e-5))
    got = kernels.layer_norm(h, w, b, 1e-5)
    assert got.dtype == dtype and got.shape == h.shape
    # sums of 512 terms (mean, variance), then a few elementwise steps, as for ops.layer_norm
    bound = 10 * 8 * np.finfo(dtype).eps / 2 * 512 * (np.abs(normalized * w) + np.abs(b))
    assert (np.abs(got - (normalized * w + b)) <= bound).all()
    np.testing.assert_allclose(got, layer_norm(h, w, b, 1e-5), rtol=0, atol=bound.max())


def test_same_bits_in_every_memory_order():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((70, 130), dtype=np.float32)
    for b in (a.copy(), np.asfortranarray(a), np.ascontiguousarray(a.T).T):
        assert kernels.same_bits(a, b) and kernels.same_bits(b, a) and kernels.same_bits(a.T, b.T)
        changed = b.copy(order="K")
        changed[69, 129] = np.nextafter(changed[69, 129], np.float32(1))  # one ulp, in the last element
        assert not kernels.same_bits(a, changed) and not kernels.same_bits(changed.T, a.T)
    negative_zero, nan = np.array([0.0, np.nan], np.float32), np.array([-0.0, np.nan], np.float32)
    assert kernels.same_bits(nan, nan.copy()) and not kernels.same_bits(negative_zero, nan)
    assert not kernels.same_bits(a, a[:, :129]) and not kernels.same_bits(a, a.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int8])
def test_c_order_lays_out_a_transposed_view_of_any_dtype(dtype):
    stored = np.arange(130 * 70).reshape(130, 70).astype(dtype)  # an ONNX [in, out] weight
    laid_out = kernels.c_order(stored.T, dtype)
    assert laid_out.flags.c_contiguous and laid_out.dtype == dtype
    np.testing.assert_array_equal(laid_out, stored.T)
    copied = kernels.c_order(stored, dtype, copy=True)
    assert not np.shares_memory(copied, stored) and kernels.same_bits(copied, stored)


def test_c_order_block_copies_arrays_one_after_another_on_pages():
    """The copies hold the arrays' values, dtypes and shapes (a transposed view laid out in C order), each starting
    on a page after the one before, in one allocation none of the arrays came from."""
    rng = np.random.default_rng(5)
    stored = rng.standard_normal((130, 70)).astype(np.float32)  # an ONNX [in, out] weight
    arrays = [stored.T, rng.standard_normal(7).astype(np.float32), np.arange(9, dtype=np.int8).reshape(3, 3),
              np.zeros((0, 4), np.float16), rng.standard_normal((3, 5)).astype(np.float64)]
    copies = kernels.c_order_block(arrays)
    for a, copy in zip(arrays, copies):
        assert copy.flags.c_contiguous and copy.dtype == a.dtype and copy.shape == a.shape
        np.testing.assert_array_equal(copy, a)
        assert not np.shares_memory(copy, stored)
    starts = [copy.ctypes.data for copy, a in zip(copies, arrays) if a.size]  # an empty array's address: none
    assert all(start % kernels.BLOCK_ALIGN == 0 for start in starts) and kernels.BLOCK_ALIGN == 4096
    assert starts == sorted(starts) and starts[1] - starts[0] == 36864  # 36400 bytes, to the next page
    assert copies[0].base is copies[-1].base                             # one allocation


def test_same_bits_sees_one_difference_anywhere_in_long_arrays():
    """Past one block of _equal_flat: a single changed element is found in the first and the last whole block,
    at their edges and in the remainder; in two memory orders, in every row of a matrix of partial tiles."""
    n = 2 * kernels.EQUAL_BLOCK + 5
    a = np.random.default_rng(7).standard_normal(n, dtype=np.float32)
    for index in (0, kernels.EQUAL_BLOCK - 1, kernels.EQUAL_BLOCK, 2 * kernels.EQUAL_BLOCK - 1,
                  2 * kernels.EQUAL_BLOCK, n - 1):
        changed = a.copy()
        changed[index] = np.nextafter(changed[index], np.float32(np.inf))
        assert kernels.same_bits(a, a.copy()) and not kernels.same_bits(a, changed), index
    matrix = np.random.default_rng(8).standard_normal((19, 37), dtype=np.float32)
    transposed = np.ascontiguousarray(matrix.T).T                                   # F order
    assert kernels.same_bits(matrix, transposed) and kernels.same_bits(transposed, matrix)
    for row in range(19):
        for column in (0, 36):
            changed = transposed.copy(order="F")
            changed[row, column] = np.nextafter(changed[row, column], np.float32(np.inf))
            assert not kernels.same_bits(matrix, changed) and not kernels.same_bits(changed, matrix), (row, column)


_CONCURRENT_GENERATES = """
import sys, threading
import numpy as np
import minitransformer as mt
from minitransformer import kernels
kernels.SHARE_CHUNK_BYTES = 1  # every product on the pool, split into chunks
model = mt.load(sys.argv[1])
src = np.random.default_rng(0).integers(4, model.spec.n_vocab - 1, size=(2, 9))
alone = model.generate(src, max_new_tokens=6, min_new_tokens=6, num_beams=2)
results = []
def work():
    results.append(model.generate(src, max_new_tokens=6, min_new_tokens=6, num_beams=2))
threads = [threading.Thread(target=work) for _ in range(3)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
assert len(results) == 3 and all(np.array_equal(r, alone) for r in results), results
import numba
print(numba.threading_layer())
"""


@pytest.mark.parametrize("layer, name", [("default", "marian-opus"), ("workqueue", "marian-opus"),
                                         ("workqueue", "marian-opus-int8-tensor")])
def test_generates_from_several_threads_at_once(layer, name):
    """Three threads generate at once with every product shared on a pool of 2 (however the suite is run); each gets
    the one-thread tokens. On numba's default layer (omp here) launches run side by side; the workqueue layer (no
    libgomp, no TBB) aborts the process when two threads launch prange kernels at once, and kernels.on_pool makes
    them take turns there."""
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer, "NUMBA_NUM_THREADS": "2", "MINITRANSFORMER_THREADS": "2"}
    run = subprocess.run([sys.executable, "-c", _CONCURRENT_GENERATES, str(FIXTURES / name)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    chosen = run.stdout.split()[-1]
    assert chosen == layer if layer != "default" else chosen in ("omp", "tbb", "workqueue")


_FORKED_GENERATES = """
import os, sys
import numpy as np
import minitransformer as mt
from minitransformer import kernels
kernels.SHARE_CHUNK_BYTES = 1  # every product on the pool, split into chunks
models = [mt.load(path) for path in sys.argv[1:]]
src = np.random.default_rng(0).integers(4, 60, size=(2, 9))
before = [model.generate(src, max_new_tokens=6, min_new_tokens=6) for model in models]
pid = os.fork()
if pid == 0:
    shared = kernels.share(2 ** 30)
    after = [model.generate(src, max_new_tokens=6, min_new_tokens=6) for model in models]
    os._exit(0 if shared == (1, 1) and all(np.array_equal(a, b) for a, b in zip(after, before)) else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), "parent shares", kernels.share(2 ** 30))
"""


def test_a_forked_child_generates_on_its_own_thread():
    """GNU OpenMP's threads do not survive a fork: numba terminates a child that launches work on a pool its parent
    used. A fork of a process that shared its products computes on one thread, float and int8, and gets the same
    tokens; the parent goes on sharing."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "MINITRANSFORMER_THREADS": "2"}  # a pool of 2, however run
    paths = [str(FIXTURES / name) for name in ("marian-opus", "marian-opus-int8-tensor")]
    run = subprocess.run([sys.executable, "-c", _FORKED_GENERATES, *paths], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["child", "0", "parent", "shares", "(16,", "2)"]
