"""Benchmark minitransformer against ONNX Runtime on the ANCHORS workload, then profile our decode step.

Workload (/work/shared/ANCHORS.md): a MarianMTModel with OPUS-MT en-zh dimensions (vocab 65001, d_model 512,
6+6 layers, 8 heads, ffn 2048, swish, scaled embeddings, tied lm_head), seeded random weights, exported by
`optimum-cli export onnx --task text2text-generation-with-past`; batch 1, a 32-token source, 64 forced
decode steps (a fixed seeded token sequence, not argmax, so every engine does identical work).

Built once into --work-dir (default /tmp/minitransformer-bench); --model-dir benchmarks an existing export.

Engines, measured in one process and interleaved: every repetition runs each engine once, the order
rotated from repetition to repetition (ABAB..., BABA...), so a burst of load from other jobs lands on all of them;
each engine's turn starts with an untimed encode of its own, so no engine is timed in another's wake:
  ours            Model.encode, Model.start, Model.decode_step (numba attention kernel)
  ort-split       OnnxReference(optimize=True).decoder("split"): decoder_model, then decoder_with_past_model
  ort-merged      the same loop over decoder_model_merged.onnx
  ort-split-raw   session.run over pre-built feeds (no name filtering, no dict rebuilding): ORT's own floor
  ort-merged-raw  the same for the merged graph
  PKG             with --also PKG: PKG.load() from another importable copy of the package (a patched copy on
                  PYTHONPATH), so a proposed change (or an older commit) is timed against the current code in
                  the same run, in the decode loop and in greedy and beam-4 generate()
  ct2             CTranslate2 float32 (ct2-int8 in the int8 section), when ctranslate2 imports: the HF model this
                  export was made from, converted into WORK_DIR/ct2-float32 and ct2-int8; its own greedy tokens,
                  a step timed between the per-token callbacks of one translate_batch (tools/bench_ct2.py says
                  exactly what is timed, and checks its logits against our float64 evaluation first)
Before each repetition, a read of STREAM_BYTES of memory on the same threads gives the run's bandwidth floor for a
decode step (the bytes of weight a step reads, at that rate), and each engine's step over it.
Then greedy and beam-4 generate() (min_new_tokens forces 64 tokens) for ours, for reference_generate and for
CTranslate2's translate_batch (min = max decoding length 64), and a
profile of our decode step: each component timed by wrapping the module's functions in this process only, the same
matvecs on bare BLAS (package layout and pre-transposed), and cProfile's top functions.

Load from other jobs: the machine is shared, so numbers are medians, every ratio comes from one run, and the load
average at start and end is printed. With 2 threads and a busy machine, OpenBLAS's per-call thread hand-off can
make a decode step several times slower; compare with --threads 1 before reading much into 2-thread numbers.

Threads: --threads N sets OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS and NUMBA_NUM_THREADS in
os.environ before numpy is first imported (this file imports numpy only inside main()), and gives ONNX Runtime
intra_op_num_threads=N. A value already present in the environment wins over --threads for numpy. When N is
not the number of usable cores it sets MINITRANSFORMER_THREADS=N too; at the default (2 on a 2-core machine)
minitransformer runs its own policy: BLAS off its float32 path, products shared on numba's pool (threads
claiming chunks) only while other processes leave a core spare (minitransformer/kernels.py).

Usage:
  python tools/bench.py                       # build once (~2 min), then benchmark + profile (~3-5 min)
  python tools/bench.py --threads 1 --json out.json
  python tools/bench.py --model-dir path/to/optimum/export --reps 10 --no-profile
  PYTHONPATH=/tmp/scratch python tools/bench.py --also mtx_patched --profile-engine mtx_patched
"""
import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

MODEL_CONFIG = dict(  # OPUS-MT en-zh dimensions (Helsinki-NLP/opus-mt-en-zh config.json)
    model_type="marian", vocab_size=65001, decoder_vocab_size=65001, d_model=512,
    encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8,
    encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512, activation_function="swish",
    scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
    pad_token_id=65000, eos_token_id=0, forced_eos_token_id=0, decoder_start_token_id=65000,
)
GENERATION_CONFIG = dict(bad_words_ids=[[65000]], decoder_start_token_id=65000, eos_token_id=0,
                         forced_eos_token_id=0, pad_token_id=65000, max_length=512, num_beams=4)
ONNX_GRAPHS = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx",
               "decoder_model_merged.onnx")


# ---------------------------------------------------------------------------------------------- building

def built_from(seed):
    """What the benchmark model is made of; the stamp beside the export and the CTranslate2 conversions."""
    return {"config": MODEL_CONFIG, "generation": GENERATION_CONFIG, "seed": seed}


def build_export(work_dir, seed):
    """The seeded random MarianMTModel, saved and exported once; -> the export dir."""
    onnx_dir = os.path.join(work_dir, "onnx")
    stamp = os.path.join(onnx_dir, "bench-build.json")
    if os.path.exists(stamp) and all(os.path.exists(os.path.join(onnx_dir, g)) for g in ONNX_GRAPHS):
        with open(stamp) as f:
            if json.load(f) == built_from(seed):
                return onnx_dir
    print(f"building the benchmark model in {work_dir} (one time, a few minutes)", file=sys.stderr)
    hf_dir = save_hf_model(work_dir, seed)
    t0 = time.perf_counter()
    subprocess.run([tool_path("optimum-cli"), "export", "onnx", "--model", hf_dir,
                    "--task", "text2text-generation-with-past", onnx_dir], check=True, stdout=subprocess.DEVNULL)
    print(f"exported in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    with open(stamp, "w") as f:
        json.dump(built_from(seed), f)
    return onnx_dir


def hf_model_dir(work_dir, seed):
    """WORK_DIR/hf, the HF model the export was made from (saved again when missing). -> that directory."""
    hf_dir = os.path.join(work_dir, "hf")
    if all(os.path.exists(os.path.join(hf_dir, f)) for f in ("config.json", "model.safetensors")):
        return hf_dir
    return save_hf_model(work_dir, seed)


def save_hf_model(work_dir, seed):
    """The seeded random MarianMTModel, written by save_pretrained into WORK_DIR/hf. -> that directory."""
    import torch
    import transformers

    hf_dir = os.path.join(work_dir, "hf")
    torch.manual_seed(seed)
    config = transformers.MarianConfig(**{k: v for k, v in MODEL_CONFIG.items() if k != "model_type"})
    model = transformers.MarianMTModel(config).eval()
    with torch.no_grad():  # HF init leaves biases at 0 and norms at 1; a trained model has neither
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue  # Marian's sinusoid table is fixed, not learned
            if name.endswith("bias"):
                p.normal_(0.0, 0.02)
            elif "layer_norm" in name:
                p.normal_(1.0, 0.02)
        model.final_logits_bias.normal_(0.0, 0.02)
    model.generation_config = transformers.GenerationConfig(**GENERATION_CONFIG)
    model.save_pretrained(hf_dir)
    return hf_dir


def set_thread_environment(threads):
    """BLAS and numba thread counts for this process and its children; minitransformer's own count too when it
    differs from the usable cores (at the default, the package's load-aware policy runs as users get it)."""
    names = ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"]
    if threads != len(os.sched_getaffinity(0)):
        names.append("MINITRANSFORMER_THREADS")
    for name in names:
        os.environ.setdefault(name, str(threads))


def tool_path(name):
    """A console script of this interpreter's environment (the venv need not be activated), else from PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.exists(beside) else name


def extracted_dir(work_dir, onnx_dir):
    """The export written by `minitransformer extract` once, beside it: -> that directory."""
    out = os.path.join(work_dir, "extracted")
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        from minitransformer.extract import write_extracted
        write_extracted(onnx_dir, out)
    return out


# ---------------------------------------------------------------------------------------------- fresh processes

# Run in a fresh interpreter: load a model dir, then optionally generate. Prints one JSON line:
# import_s (import minitransformer), load_s (load), first_token_s (load + encode + one decode step),
# generate_s, peak_rss_bytes (VmHWM: ru_maxrss would include the benchmark's own RSS, inherited through fork).
_PROBE = """
import json, os, sys, time
t0 = time.perf_counter()
import numpy as np
import minitransformer as mt
t1 = time.perf_counter()
path, n_src, n_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = mt.load(path)
t2 = time.perf_counter()
src = np.random.default_rng(0).integers(1, model.spec.n_vocab - 1, size=(1, n_src))
result = {"import_s": t1 - t0, "load_s": t2 - t1}
if n_new:
    model.generate(src, max_new_tokens=1)
    result["first_token_s"] = time.perf_counter() - t1
    t3 = time.perf_counter()
    model.generate(src, max_new_tokens=n_new, min_new_tokens=n_new)
    result["generate_s"] = time.perf_counter() - t3
peak_kb = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
result["peak_rss_bytes"] = int(peak_kb) * 1024
print(json.dumps(result))
"""


def probe(path, n_src, n_new, threads):
    """One fresh-process measurement (see _PROBE) -> dict."""
    env = {**os.environ, **{v: str(threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                      "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}}
    out = subprocess.run([sys.executable, "-c", _PROBE, path, str(n_src), str(n_new)], env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"the fresh-process probe on {path} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fresh_process_figures(onnx_dir, work_dir, n_src, n_new, threads, reps=3):
    """first token and peak RSS from an extracted dir, load time and peak RSS from the export dir; medians."""
    extracted = extracted_dir(work_dir, onnx_dir)
    probe(extracted, n_src, 1, threads)  # fills numba's on-disk cache, so the figures are a warm start
    runs = {"extracted": [], "export": []}
    for _ in range(reps):
        runs["extracted"].append(probe(extracted, n_src, n_new, threads))
        runs["export"].append(probe(onnx_dir, n_src, 0, threads))
    med = lambda kind, key: statistics.median(r[key] for r in runs[kind])  # noqa: E731
    weight_bytes = os.path.getsize(os.path.join(extracted, "model.safetensors"))
    return {"first_token_s": med("extracted", "first_token_s"), "load_s_extracted_dir": med("extracted", "load_s"),
            "import_s": med("extracted", "import_s"), "load_s_export_dir": med("export", "load_s"),
            "peak_rss_bytes_generate_extracted": med("extracted", "peak_rss_bytes"),
            "peak_rss_bytes_load_export_dir": med("export", "peak_rss_bytes"), "weight_bytes": weight_bytes,
            "peak_rss_over_weight_bytes": med("extracted", "peak_rss_bytes") / weight_bytes,
            "peak_rss_over_weight_bytes_export_dir": med("export", "peak_rss_bytes") / weight_bytes, "reps": reps}


# ---------------------------------------------------------------------------------------------- environment

def openblas():
    """numpy's bundled OpenBLAS through ctypes: (threads, core kernel name), or None when not found."""
    import ctypes
    import glob

    import numpy as np
    for path in glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*.so*")):
        lib = ctypes.CDLL(path)
        for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "")):
            if hasattr(lib, f"{prefix}get_num_threads{suffix}"):
                getattr(lib, f"{prefix}get_corename{suffix}").restype = ctypes.c_char_p
                return (getattr(lib, f"{prefix}get_num_threads{suffix}")(),
                        getattr(lib, f"{prefix}get_corename{suffix}")().decode())
    return None


def environment(threads):
    import numba
    import numpy as np
    import onnxruntime as ort
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    blas = openblas()
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "onnxruntime": ort.__version__, "threads": threads,
            "openblas_threads": blas[0] if blas else None, "openblas_core": blas[1] if blas else None,
            "load_average_start": os.getloadavg()}


# ---------------------------------------------------------------------------------------------- engines
# Each engine: encode() -> hidden; decode(hidden, ids) -> (start seconds, [seconds per step], last logits).

class Ours:
    def __init__(self, model, src, mask, name="ours"):
        self.model, self.src, self.mask, self.name = model, src, mask, name

    def encode(self):
        return self.model.encode(self.src, self.mask)

    def decode(self, hidden, step_ids):
        clock = time.perf_counter
        t0 = clock()
        state = self.model.start(hidden, self.mask, len(step_ids))
        start = clock() - t0
        times = []
        for ids in step_ids:
            t0 = clock()
            logits = self.model.decode_step(state, ids)
            times.append(clock() - t0)
        return start, times, logits


class OrtLoop:
    """The package's ONNX Runtime loop (OnnxReference.decoder(layout).step), as a user of it pays."""

    def __init__(self, ref, layout, src, mask):
        self.ref, self.layout, self.src, self.mask = ref, layout, src, mask
        self.name = f"ort-{layout}"

    def encode(self):
        return self.ref.encode(self.src, self.mask)

    def decode(self, hidden, step_ids):
        clock = time.perf_counter
        t0 = clock()
        loop = self.ref.decoder(self.layout, hidden, self.mask)
        start = clock() - t0
        times = []
        for ids in step_ids:
            t0 = clock()
            logits, _ = loop.step(ids)
            times.append(clock() - t0)
        return start, times, logits


class OrtRaw:
    """ONNX Runtime's floor: session.run over feeds built before the clock starts, presents fed back by index."""

    def __init__(self, ref, layout, src, mask):
        import numpy as np
        self.layout, self.name, self.mask = layout, f"ort-{layout}-raw", mask
        self.encoder = ref.session("encoder_model.onnx")
        self.encoder_feeds = {"input_ids": src, "attention_mask": mask}
        if layout == "split":
            self.first, self.rest = ref.session("decoder_model.onnx"), ref.session("decoder_with_past_model.onnx")
        else:
            self.first = self.rest = ref.session("decoder_model_merged.onnx")
        self.rest_inputs = {i.name for i in self.rest.get_inputs()}
        outputs = [o.name for o in self.first.get_outputs()]
        rest_outputs = [o.name for o in self.rest.get_outputs()]
        past = lambda name: name.replace("present", "past_key_values")  # noqa: E731
        # step 0 supplies every past input; later steps renew only the self-attention (decoder.*) ones
        self.from_first = [(i, past(n)) for i, n in enumerate(outputs) if past(n) in self.rest_inputs]
        self.from_rest = [(i, past(n)) for i, n in enumerate(rest_outputs) if ".decoder." in n]
        self.empty_past = {}
        if layout == "merged":
            for graph_input in self.first.get_inputs():
                if graph_input.name.startswith("past_key_values."):
                    _, n_head, _, d_head = graph_input.shape
                    length = mask.shape[1] if ".encoder." in graph_input.name else 0
                    self.empty_past[graph_input.name] = np.zeros((1, n_head, length, d_head), np.float32)
        self.true, self.false = np.array([True]), np.array([False])

    def encode(self):
        return self.encoder.run(["last_hidden_state"], self.encoder_feeds)[0]

    def decode(self, hidden, step_ids):
        clock = time.perf_counter
        t0 = clock()
        feeds = {"encoder_attention_mask": self.mask, "encoder_hidden_states": hidden, **self.empty_past}
        if self.layout == "merged":
            feeds["use_cache_branch"] = self.false
        start = clock() - t0
        times = []
        t0 = clock()
        feeds["input_ids"] = step_ids[0]
        out = self.first.run(None, feeds)
        if self.layout == "merged":
            feeds["use_cache_branch"] = self.true
        else:
            feeds = {name: value for name, value in feeds.items() if name in self.rest_inputs}
        for i, name in self.from_first:
            feeds[name] = out[i]
        times.append(clock() - t0)
        for ids in step_ids[1:]:
            t0 = clock()
            feeds["input_ids"] = ids
            out = self.rest.run(None, feeds)
            for i, name in self.from_rest:
                feeds[name] = out[i]
            times.append(clock() - t0)
        return start, times, out[0]


# ---------------------------------------------------------------------------------------------- measuring

def median_ms(values):
    return 1e3 * statistics.median(values) if values else float("nan")


# ONNX Runtime's pool threads spin on for tens of milliseconds after a run and take the second core from whatever
# runs next in the process (our 2-thread encoder right after an ORT encoder run: 21.2 ms; 20 ms later 20.8 ms;
# 200 ms later 10.4 ms; on one thread 17.2-17.3 ms throughout): each engine's turn starts after this pause, as for a
# user who runs one engine
SETTLE_S = 0.3


# The memory-bandwidth floor of a decode step: the bytes it must read, at the rate the machine streams
# memory in this run. The rate is measured between the repetitions, as the engines are, by a kernel that reads a
# STREAM_BYTES array once, cut into contiguous parts, one per thread (LLVM vectorizes its sum): a read and nothing
# else. The machine's rate moves with its neighbours (27-53 GB/s on the same VM within an hour), so a floor from
# another run or hour does not compare.
STREAM_BYTES = 2 ** 28  # 256 MB: 8x the L3 of these machines, so every line comes from memory


class StreamRead:
    """Seconds to read STREAM_BYTES of float32 once, on `threads` numba threads: the median of READS reads."""
    READS = 5

    def __init__(self, threads):
        import numba
        import numpy as np

        @numba.njit(nogil=True, fastmath=True)
        def read_part(a, start, stop):  # the sum of a[start:stop], so the reads cannot be left out
            part = a[start:stop]
            total = np.float32(0)
            for i in range(part.size):
                total += part[i]
            return total

        @numba.njit(parallel=True)
        def read_all(a, n_threads):
            totals = np.zeros(n_threads, np.float32)
            for t in numba.prange(n_threads):
                totals[t] = read_part(a, a.size * t // n_threads, a.size * (t + 1) // n_threads)
            return totals

        self.array = np.random.default_rng(0).random(STREAM_BYTES // 4, dtype=np.float32)
        self.threads, self.read_all = threads, read_all
        self.seconds(reps=1)  # compiled, and every page touched

    def seconds(self, reps=READS):  # numba's thread count is left as it was found
        import numba
        threads_before = numba.get_num_threads()
        numba.set_num_threads(self.threads)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            self.read_all(self.array, self.threads)
            times.append(time.perf_counter() - t0)
        numba.set_num_threads(threads_before)
        return statistics.median(times)


def step_read_bytes(model, n_src, n_cached):
    """Bytes a decode step must read: the decoder layers' weights but cross-attention keys and values (projected
    once by Model.start), the final layer norm, the lm_head and its bias; the cross-attention K/V of n_src positions
    and the self-attention K/V of n_cached. Embeddings: one row each, left out."""
    import numpy as np

    def nbytes(node):
        if isinstance(node, dict):
            return sum(nbytes(v) for v in node.values())
        if isinstance(node, list):
            return sum(nbytes(v) for v in node)
        return node.nbytes if isinstance(node, np.ndarray) else 0

    spec, decoder = model.spec, model.params["decoder"]
    cross_kv = sum(nbytes(layer["encoder_attn"][p]) for layer in decoder["layers"] for p in ("k_proj", "v_proj"))
    weights = (nbytes(decoder["layers"]) - cross_kv + nbytes(decoder.get("layer_norm", {}))
               + nbytes(model.params["lm_head"]) + nbytes(model.params.get("final_logits_bias")))
    per_position = 2 * spec.n_layer_decoder * spec.n_head_decoder * spec.d_head * np.dtype(model.dtype).itemsize
    return weights + per_position * (n_src + n_cached)


def bench_decode(engines, step_ids, reps, budget, stream=None):
    """Interleaved repetitions: rep r runs the engines in an order rotated by r, after a read of memory by `stream`
    (a StreamRead). -> (per-engine raw times, last logits per engine, seconds per STREAM_BYTES read, one per rep)."""
    import numpy as np
    raw = {e.name: {"encoder": [], "start": [], "steps": [], "step0": [], "total": []} for e in engines}
    raw_stream = []
    logits = {}
    for e in engines:  # warm-up: numba compilation, ORT's first-run allocations
        e.decode(e.encode(), step_ids[:4])
    began = time.perf_counter()
    for rep in range(reps):
        if stream:
            time.sleep(SETTLE_S)
            raw_stream.append(stream.seconds())
        for e in engines[rep % len(engines):] + engines[:rep % len(engines)]:
            time.sleep(SETTLE_S)
            e.encode()  # untimed, so that what ran just before the clock starts is this engine
            t0 = time.perf_counter()
            hidden = e.encode()
            r = raw[e.name]
            if hidden is not None:  # None: no separate encoder call; decode's start includes the encoder
                r["encoder"].append(time.perf_counter() - t0)
                hidden = np.asarray(hidden, np.float32)
            start, times, last = e.decode(hidden, step_ids)
            r["start"].append(start)
            r["steps"].extend(times)
            if hidden is not None:  # else step 0 is in start too
                r["step0"].append(times[0])
            r["total"].append(start + sum(times))
            if last is not None:
                logits[e.name] = np.asarray(last)
        print(f"  rep {rep + 1}/{reps}: {time.perf_counter() - began:.0f} s", file=sys.stderr)
        # a repetition that would end past the budget is not started (3 at least, for a median)
        per_rep = (time.perf_counter() - began) / (rep + 1)
        if rep + 1 < reps and rep >= 2 and time.perf_counter() - began + per_rep > budget:
            print(f"  time budget of {budget:.0f} s reached after {rep + 1} reps", file=sys.stderr)
            break
    return raw, logits, raw_stream


def bench_generate(model, ref, src, mask, n_new, reps, budget, extra_jobs=(), also=()):
    """Greedy and beam-4 generate(), ours, the --also packages' (name, model) and reference_generate (split), and
    extra (name, run) jobs, interleaved.
    -> (raw seconds per token, ours = ORT per search, tokens per job, every job's last output)."""
    from minitransformer.generate import resolve_settings
    from minitransformer.reference import reference_generate
    raw, tokens = {}, {}
    # min_new_tokens keeps eos out until the end, so random weights still generate n_new tokens
    jobs = list(extra_jobs)
    for beams in (1, 4):
        settings = {"max_new_tokens": n_new, "num_beams": beams, "min_new_tokens": n_new}
        resolved = resolve_settings(model, settings)
        label = "greedy" if beams == 1 else f"beam{beams}"
        jobs.append((f"ours {label}", lambda s=settings: model.generate(src, mask, **s)))
        jobs += [(f"{name} {label}", lambda m=m, s=settings: m.generate(src, mask, **s)) for name, m in also]
        jobs.append((f"ort-split {label}", lambda s=resolved: reference_generate(ref, s, src, mask, "split")))
    began = time.perf_counter()
    for rep in range(reps):
        for name, run in jobs[rep % len(jobs):] + jobs[:rep % len(jobs)]:
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            out = run()
            raw.setdefault(name, []).append((time.perf_counter() - t0) / (out.shape[1] - 1))
            tokens[name] = out
        per_rep = (time.perf_counter() - began) / (rep + 1)
        if rep + 1 < reps and time.perf_counter() - began + per_rep > budget:
            print(f"  time budget of {budget:.0f} s reached after {rep + 1} reps", file=sys.stderr)
            break
    same = {label: bool((tokens[f"ours {label}"] == tokens[f"ort-split {label}"]).all())
            if tokens[f"ours {label}"].shape == tokens[f"ort-split {label}"].shape else False
            for label in ("greedy", "beam4")}
    lengths = {name: int(out.shape[1] - 1) for name, out in tokens.items()}
    return raw, same, lengths, tokens


# ---------------------------------------------------------------------------------------------- profiling

def profile_decode(model, hidden, mask, step_ids, reps):
    """Where our decode step spends its time: instrumented components, bare-BLAS floor and cProfile's top."""
    import cProfile
    import pstats

    import numpy as np

    mm = sys.modules[type(model).__module__]  # the module whose globals decode_step looks up
    spec, n_vocab, d_ff = model.spec, model.spec.n_vocab, model.spec.d_ff
    buckets = {}

    def timed(bucket_of, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            bucket = bucket_of(*args, **kwargs) if callable(bucket_of) else bucket_of
            buckets[bucket] = buckets.get(bucket, 0.0) + time.perf_counter() - t0
            return result
        return wrapper

    def linear_bucket(x, *args, **kwargs):  # by shape, so any weight layout or argument name is classified
        weight = args[0] if args else next(v for k, v in kwargs.items() if k.startswith("weight"))
        if n_vocab in weight.shape:
            return "lm_head matvec"
        if x.shape[-1] == d_ff:
            return "fc2 matvec (+ bias)"
        if d_ff in weight.shape:
            return "fc1 matvec (+ bias)"
        return "attention projections q,k,v,out + cross q,out (+ bias)"

    def run_steps(attend=None):
        state = model.start(hidden, mask, len(step_ids))
        buckets.clear()  # start() runs linear too (cross-attention K/V): not part of a step
        t0 = time.perf_counter()
        for ids in step_ids:
            model.decode_step(state, ids, attend=attend) if attend else model.decode_step(state, ids)
        return (time.perf_counter() - t0) / len(step_ids)

    plain = [run_steps() for _ in range(reps)]
    patches = {"linear": timed(linear_bucket, mm.linear), "norm": timed("norm (layer or RMS)", mm.norm),
               "embed": timed("embed (+ positions)", mm.embed), "check_ids": timed("check_ids", mm.check_ids),
               "split_heads": timed("split/merge heads", mm.split_heads),
               "merge_heads": timed("split/merge heads", mm.merge_heads)}
    originals = {name: getattr(mm, name) for name in patches}
    activation = mm.ACTIVATIONS[spec.activation]
    append = mm.KVCache.append
    instrumented = []
    try:
        for name, fn in patches.items():
            setattr(mm, name, fn)
        mm.ACTIVATIONS[spec.activation] = timed(f"activation ({spec.activation})", activation)
        mm.KVCache.append = timed("KV cache append", append)
        attend = timed("attention kernel (numba, incl. dispatch)", model.attend)
        for _ in range(reps):
            instrumented.append((run_steps(attend), dict(buckets)))
    finally:
        for name, fn in originals.items():
            setattr(mm, name, fn)
        mm.ACTIVATIONS[spec.activation] = activation
        mm.KVCache.append = append
    # the rep with the median total, so the components add up to a consistent step
    total, parts = sorted(instrumented, key=lambda t: t[0])[len(instrumented) // 2]
    parts = {k: v / len(step_ids) for k, v in parts.items()}
    # the linear calls inside attention/ffn are nested in no other bucket; everything left is Python glue
    parts["rest: Python glue, residual adds, logits bias, closures"] = total - sum(parts.values())

    # bare BLAS: the same matvecs and nothing else, in the package's layout (HF [d_out, d_in], used as x @ W.T)
    # and pre-transposed to contiguous [d_in, d_out] (the ONNX export's own layout, used as x @ W)
    dec = model.params["decoder"]["layers"]
    names = [("self_attn", p) for p in ("q_proj", "k_proj", "v_proj", "out_proj")] + \
            [("encoder_attn", p) for p in ("q_proj", "out_proj")] + [("fc1",), ("fc2",)]

    def weight(layer, path):
        node = layer
        for key in path:
            node = node[key]
        return node["weight"] if "weight" in node else node["weight_t"].T  # weight_t: an older [d_in, d_out] layout

    hf_layout = weight(dec[0], ("fc1",)).flags.c_contiguous  # False for a package that stores [d_in, d_out]
    as_hf = [[w if hf_layout else np.ascontiguousarray(w.T) for w in (weight(layer, path) for path in names)]
             for layer in dec]
    pre_t = [[np.ascontiguousarray(w.T) for w in ws] for ws in as_hf]
    lm = weight(model.params, ("lm_head",))
    lm_hf = np.ascontiguousarray(lm)
    lm_t = np.ascontiguousarray(lm_hf.T)
    inputs = {spec.d_model: np.ones((1, 1, spec.d_model), np.float32), d_ff: np.ones((1, 1, d_ff), np.float32)}

    def bare_layers(layers, transposed):
        for ws in layers:
            for w in ws:
                if transposed:
                    inputs[w.shape[0]] @ w
                else:
                    inputs[w.shape[1]] @ w.T

    def median_of(fn, n=10):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    x = inputs[spec.d_model]
    kernels = sys.modules[mm.__name__.rsplit(".", 1)[0] + ".kernels"]
    bare = {}
    variants = [("decoder layers' matvecs, W [d_out, d_in] as HF stores it, x @ W.T",
                 lambda: bare_layers(as_hf, False)),
                ("decoder layers' matvecs, Wt [d_in, d_out] pre-transposed, x @ Wt", lambda: bare_layers(pre_t, True)),
                ("lm_head matvec, W [n_vocab, d_model], x @ W.T", lambda: x @ lm_hf.T),
                ("lm_head matvec, Wt [d_model, n_vocab] pre-transposed, x @ Wt", lambda: x @ lm_t)]
    if hasattr(kernels, "matvec"):  # the package's own few-row linear, on the same weights
        variants += [("decoder layers' matvecs, W [d_out, d_in], the package's kernels.matvec",
                      lambda: [kernels.matvec(inputs[w.shape[1]][0], w) for ws in as_hf for w in ws]),
                     ("lm_head matvec, W [n_vocab, d_model], the package's kernels.matvec",
                      lambda: kernels.matvec(x[0], lm_hf))]
    for _ in range(3):  # interleaved, medians of the medians
        for key, fn in variants:
            bare.setdefault(key, []).append(median_of(fn))
    bare = {k: statistics.median(v) for k, v in bare.items()}
    del pre_t, lm_t, lm_hf
    layer_bytes = sum(w.nbytes for ws in as_hf for w in ws)

    profiler = cProfile.Profile()
    profiler.enable()
    run_steps()
    profiler.disable()
    stats = pstats.Stats(profiler)
    top = []
    for (file, line, func), (cc, nc, tt, ct, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:14]:
        top.append({"function": f"{os.path.basename(file)}:{line}({func})", "calls_per_step": nc / len(step_ids),
                    "tottime_ms_per_step": 1e3 * tt / len(step_ids), "cumtime_ms_per_step": 1e3 * ct / len(step_ids)})
    n_calls = sum(nc for (_, _, _), (_, nc, _, _, _) in stats.stats.items()) / len(step_ids)
    return {"step_ms_uninstrumented": 1e3 * statistics.median(plain), "step_ms_instrumented": 1e3 * total,
            "components_ms": {k: 1e3 * v for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
            "bare_blas_ms": {k: 1e3 * v for k, v in bare.items()},
            "weights_mb_per_step": {"decoder layers": layer_bytes / 1e6, "lm_head": lm.nbytes / 1e6},
            "layout": "HF [d_out, d_in]" if hf_layout else "pre-transposed [d_in, d_out]",
            "python_calls_per_step": n_calls, "cprofile_top": top}


# ---------------------------------------------------------------------------------------------- report

def summarize(raw, ours="ours"):
    rows = {}
    for name, r in raw.items():
        rows[name] = {"encoder_ms": median_ms(r["encoder"]), "start_ms": median_ms(r["start"]),
                      "step_ms": median_ms(r["steps"]), "step0_ms": median_ms(r["step0"]),
                      "decode64_ms": median_ms(r["total"]), "reps": len(r["total"])}
    for name, r in raw.items():  # paired: per repetition, ours / this engine, then the median
        ours_total = raw[ours]["total"]
        if not r["encoder"]:  # its total includes its encoder (CTranslate2): against ours' encoder + total
            ours_total = [a + b for a, b in zip(raw[ours]["encoder"], ours_total)]
        rows[name]["ours_over_this"] = {
            "encoder": rows[ours]["encoder_ms"] / rows[name]["encoder_ms"],
            "step": rows[ours]["step_ms"] / rows[name]["step_ms"],
            "decode64_paired": statistics.median(a / b for a, b in zip(ours_total, r["total"]))}
    return rows


def bandwidth_floor(raw_stream, step_bytes, rows):
    """The decode step's floor in this run: the bytes it reads at the median streaming rate; each engine's step over
    it."""
    bandwidth = STREAM_BYTES / statistics.median(raw_stream)
    floor_ms = 1e3 * step_bytes / bandwidth
    return {"bandwidth_gb_s": bandwidth / 1e9, "step_read_mb": step_bytes / 1e6, "decode_floor_ms": floor_ms,
            "reads": len(raw_stream), "step_over_floor": {name: r["step_ms"] / floor_ms for name, r in rows.items()}}


def headline(rows, generate, fresh, env, floor):
    """The issue's figures: ours / the fastest ONNX Runtime loop at the same thread count, and raw ms."""
    ort = [name for name in rows if name.startswith("ort-")]
    best_step = min(ort, key=lambda name: rows[name]["step_ms"])
    best_encoder = min(ort, key=lambda name: rows[name]["encoder_ms"])
    figures = {"decode_step_ratio_vs_ort": rows["ours"]["step_ms"] / rows[best_step]["step_ms"],
               "encoder_ratio_vs_ort": rows["ours"]["encoder_ms"] / rows[best_encoder]["encoder_ms"],
               "decode_step_ms": rows["ours"]["step_ms"], "decode_step_ms_ort": rows[best_step]["step_ms"],
               "decode_step_ort_engine": best_step, "encoder_ms": rows["ours"]["encoder_ms"],
               "encoder_ms_ort": rows[best_encoder]["encoder_ms"], "encoder_ort_engine": best_encoder,
               "decode_floor_ms": floor["decode_floor_ms"], "bandwidth_gb_s": floor["bandwidth_gb_s"],
               "decode_step_over_floor": floor["step_over_floor"]["ours"],
               "decode_step_over_floor_ort": floor["step_over_floor"][best_step],
               "threads": env["threads"], "load_average_start": env["load_average_start"][0],
               "load_average_end": env["load_average_end"][0]}
    if generate:
        ms = generate["ms_per_token"]
        figures.update(beam4_step_ratio_vs_ort=ms["ours beam4"] / ms["ort-split beam4"],
                       beam4_step_ms=ms["ours beam4"], beam4_step_ms_ort=ms["ort-split beam4"],
                       greedy_step_ms=ms["ours greedy"], greedy_step_ms_ort=ms["ort-split greedy"])
    if fresh:
        figures.update({key: fresh[key] for key in ("first_token_s", "peak_rss_over_weight_bytes", "load_s_export_dir",
                                                    "peak_rss_over_weight_bytes_export_dir", "weight_bytes")})
    return figures


def print_ct2(bench_ct2, agreement, generate, not_measured, n_steps):
    """CTranslate2's generate rows and its check against our float64 evaluation, or the one line saying why it
    was not measured."""
    if not_measured:
        print(f"\n{not_measured}")
        return
    print("\nCTranslate2:")
    if generate and "ct2" in generate:
        bench_ct2.print_generate(generate["ct2"], n_steps)
    if agreement:
        bench_ct2.print_agreement(agreement)


def print_report(env, rows, generate, profile, logits_diff, floor, fresh=None):
    print(f"\nenvironment: {env['cpu']}, {env['cores_usable']}/{env['cores']} cores usable, Python {env['python']}, "
          f"numpy {env['numpy']} (OpenBLAS {env['openblas_threads']} threads, {env['openblas_core']} kernels), "
          f"numba {env['numba']}, onnxruntime {env['onnxruntime']}; threads={env['threads']}; "
          f"load average {env['load_average_start'][0]:.1f} at start, {env['load_average_end'][0]:.1f} at end")
    print(f"workload: batch 1, {env['n_src']}-token source, {env['n_steps']} forced decode steps; medians in ms; "
          "ratio = ours / engine (< 1: ours faster)\n")
    head = ("engine", "encoder", "start", "step", "step 0", f"{env['n_steps']} steps", "reps", "enc ratio", "step ratio",
            f"{env['n_steps']}-step ratio")
    print("{:<16}{:>9}{:>8}{:>8}{:>8}{:>10}{:>6}{:>11}{:>12}{:>15}".format(*head))
    for name, r in rows.items():
        q = r["ours_over_this"]
        print("{:<16}{:>9.2f}{:>8.2f}{:>8.2f}{:>8.2f}{:>10.1f}{:>6}{:>11.2f}{:>12.2f}{:>15.2f}".format(
            name, r["encoder_ms"], r["start_ms"], r["step_ms"], r["step0_ms"], r["decode64_ms"], r["reps"],
            q["encoder"], q["step"], q["decode64_paired"]))
    print("  start: ours = Model.start (cross-attention K/V for 6 layers + cache allocation); ORT computes those in "
          "step 0.\n  64 steps = start + all 64 steps; its ratio is the median of per-repetition ratios.")
    print(f"  max |logits ours - ORT| at the last step: {logits_diff:.2e}")
    f = floor
    threads = f"{env['threads']} thread{'s' if env['threads'] != 1 else ''}"
    print(f"  bandwidth floor: a step reads {f['step_read_mb']:.1f} MB (weights, cross and self K/V); memory "
          f"streamed at {f['bandwidth_gb_s']:.1f} GB/s in this run ({threads}, median of "
          f"{f['reads']} x {StreamRead.READS} reads of {STREAM_BYTES >> 20} MB between the repetitions), so the floor "
          f"is {f['decode_floor_ms']:.2f} ms; step / floor: "
          + ", ".join(f"{name} {ratio:.2f}" for name, ratio in f["step_over_floor"].items()))
    if "ct2" in rows:
        print("  ct2: CTranslate2 float32, its own greedy tokens; start = the call to its first token (encoder, "
              "cross K/V, step 0),\n  steps = the intervals between its tokens; its 64-step ratio is ours' encoder + "
              "64 steps over the whole call")
    if generate:
        print("\ngenerate(), ms per generated token (median):")
        for label in ("greedy", "beam4"):
            a, b = generate["ms_per_token"][f"ours {label}"], generate["ms_per_token"][f"ort-split {label}"]
            print(f"  {label:<7} ours {a:7.2f}   ort-split (reference_generate) {b:7.2f}   ratio {a / b:.2f}   "
                  f"tokens {generate['tokens'][f'ours {label}']}, identical outputs: {generate['identical'][label]}")
            for name in generate.get("also", ()):  # the --also packages: ours / this, and this / ORT
                c = generate["ms_per_token"][f"{name} {label}"]
                print(f"  {label:<7} {name} {c:7.2f}   ours / {name} {a / c:.2f}   {name} / ort-split {c / b:.2f}")
    if fresh:
        f = fresh
        print(f"\nfresh processes (warm numba cache, medians of {f['reps']}): import {f['import_s']:.2f} s; from an "
              f"extracted dir load {f['load_s_extracted_dir']:.2f} s, load to first token {f['first_token_s']:.2f} s, "
              f"peak RSS of a {env['n_steps']}-token generate {f['peak_rss_bytes_generate_extracted'] / 1e6:.0f} MB = "
              f"{f['peak_rss_over_weight_bytes']:.2f}x model.safetensors ({f['weight_bytes'] / 1e6:.0f} MB); "
              f"from the export dir load {f['load_s_export_dir']:.2f} s, peak RSS "
              f"{f['peak_rss_bytes_load_export_dir'] / 1e6:.0f} MB ({f['peak_rss_over_weight_bytes_export_dir']:.2f}x)")
    if profile:
        p = profile
        print(f"\nprofile of {p['engine']}'s decode step: {p['step_ms_uninstrumented']:.2f} ms uninstrumented, "
              f"{p['step_ms_instrumented']:.2f} ms with timers; {p['python_calls_per_step']:.0f} Python-level calls "
              "per step (cProfile)")
        for k, v in p["components_ms"].items():
            print(f"  {v:7.3f} ms  {100 * v / p['step_ms_instrumented']:5.1f}%  {k}")
        print(f"  bare matvecs, the same weights and nothing else (the package stores {p['layout']}):")
        for k, v in p["bare_blas_ms"].items():
            print(f"  {v:7.3f} ms  {k}")
        w = p["weights_mb_per_step"]
        print(f"  weights read per step: {w['decoder layers']:.1f} MB decoder layers + {w['lm_head']:.1f} MB lm_head")
        print("  cProfile top by own time (per step):")
        for t in p["cprofile_top"][:10]:
            print(f"    {t['tottime_ms_per_step']:7.3f} ms own {t['cumtime_ms_per_step']:7.3f} ms cum "
                  f"{t['calls_per_step']:6.1f} calls  {t['function']}")


# ---------------------------------------------------------------------------------------------- int8

def build_int8(model_dir, work_dir):
    """The export quantized as ANCHORS.md's int8 row: ORTQuantizer, avx512_vnni, dynamic, per tensor."""
    int8_dir = os.path.join(work_dir, "int8")
    stamp = os.path.join(int8_dir, "quantized_from.json")
    if os.path.exists(stamp) and os.path.getmtime(stamp) > os.path.getmtime(os.path.join(model_dir, ONNX_GRAPHS[0])):
        return int8_dir
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_quantized import quantize_export
    print(f"quantizing the benchmark model into {int8_dir} (one time)", file=sys.stderr)
    quantize_export(model_dir, int8_dir, "ortq", False, "int8")
    return int8_dir


def bench_int8(int8_dir, threads, src, mask, step_ids, reps, budget, extra_engines=()):
    """Our int8 engine against ONNX Runtime's on the same quantized graphs (and extra engines: CTranslate2 int8),
    interleaved in one run. -> (rows as summarize gives them, max |logits ours - ORT| at the last step)."""
    import numpy as np

    import minitransformer as mt
    from minitransformer.reference import OnnxReference
    model = mt.load(int8_dir, quantized=True)
    ref = OnnxReference(int8_dir, optimize=True, threads=threads, quantized=True)
    engines = [Ours(model, src, mask, "ours-int8"), OrtLoop(ref, "split", src, mask), OrtRaw(ref, "split", src, mask)]
    for engine in engines[1:]:
        engine.name = engine.name.replace("ort-", "ort-int8-")
    raw, logits, _ = bench_decode(engines + list(extra_engines), step_ids, reps, budget)
    return summarize(raw, ours="ours-int8"), float(np.abs(logits["ours-int8"] - logits["ort-int8-split"]).max())


def print_int8(rows, logits_diff, env):
    print(f"\nint8 (ORTQuantizer avx512_vnni, dynamic, per tensor; ONNX Runtime runs the same *_quantized.onnx graphs); "
          f"load average {os.getloadavg()[0]:.1f}; ratio = ours-int8 / engine")
    print("{:<20}{:>9}{:>8}{:>10}{:>6}{:>11}{:>12}{:>15}".format(
        "engine", "encoder", "step", f"{env['n_steps']} steps", "reps", "enc ratio", "step ratio",
        f"{env['n_steps']}-step ratio"))
    for name, r in rows.items():
        q = r["ours_over_this"]
        print("{:<20}{:>9.2f}{:>8.2f}{:>10.1f}{:>6}{:>11.2f}{:>12.2f}{:>15.2f}".format(
            name, r["encoder_ms"], r["step_ms"], r["decode64_ms"], r["reps"], q["encoder"], q["step"],
            q["decode64_paired"]))
    print(f"  max |logits ours-int8 - ORT int8| at the last step: {logits_diff:.2e}")


def ct2_engines_for(args, src):
    """CTranslate2 float32 and int8 engines on the bench's own HF model, converted once into the work dir.
    -> (the bench_ct2 module, {quantization: engine}, None), or (bench_ct2, {}, the one-line reason why not)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_ct2
    if args.no_ct2:
        return bench_ct2, {}, "CTranslate2 not measured: --no-ct2"
    if args.model_dir:
        return bench_ct2, {}, "CTranslate2 not measured: --model-dir gives no HF model to convert (the built one has)"
    ctranslate2, reason = bench_ct2.import_ctranslate2()
    if ctranslate2 is None:
        return bench_ct2, {}, reason
    hf_dir = hf_model_dir(args.work_dir, args.seed)
    engines = {}
    for quantization in bench_ct2.QUANTIZATIONS:
        ct2_dir = bench_ct2.convert(ctranslate2, hf_dir, args.work_dir, quantization, built_from(args.seed))
        name = "ct2" if quantization == "float32" else f"ct2-{quantization}"
        engines[quantization] = bench_ct2.Ct2Steps(ctranslate2, ct2_dir, quantization, args.threads, src, name)
    return bench_ct2, engines, None


def write_json(path, result):
    text = json.dumps(result)  # one line: `--json -` makes it the last line of stdout
    if path == "-":
        print(text)
    else:
        with open(path, "w") as f:
            f.write(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--work-dir", default="/tmp/minitransformer-bench", help="where the built model is cached")
    parser.add_argument("--model-dir", help="benchmark this existing optimum export instead of building one")
    parser.add_argument("--threads", type=int, default=2, help="numpy/OpenBLAS and ONNX Runtime threads (default 2)")
    parser.add_argument("--reps", type=int, default=8, help="decode repetitions per engine (default 8)")
    parser.add_argument("--gen-reps", type=int, default=3, help="generate() repetitions (default 3)")
    parser.add_argument("--budget", type=float, default=200,
                        help="seconds for the timed phases (default 200): decode gets 55%%, generate 30%%; repetitions "
                             "that would overrun are skipped (decode runs 3 at least, generate 1)")
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--also", metavar="PKG[,PKG]", default="",
                        help="also time PKG.load() from these importable copies of the package (e.g. a patched copy "
                             "on PYTHONPATH), interleaved with the rest")
    parser.add_argument("--profile-engine", default="ours", help="which of ours / the --also packages to profile")
    parser.add_argument("--no-raw", action="store_true", help="skip the hand-written session.run loops")
    parser.add_argument("--no-generate", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-fresh", action="store_true", help="skip the fresh-process figures (first token, RSS, load)")
    parser.add_argument("--build-only", action="store_true", help="build the model and stop")
    parser.add_argument("--json", metavar="PATH", help="also write every result as JSON here ('-' for stdout)")
    parser.add_argument("--int8", action="store_true", help="also time the int8 model (the export quantized by "
                        "ORTQuantizer, avx512_vnni, dynamic, per tensor, into WORK_DIR/int8) against ONNX Runtime int8")
    parser.add_argument("--int8-only", action="store_true", help="the int8 section alone")
    parser.add_argument("--no-ct2", action="store_true", help="skip CTranslate2 (measured when ctranslate2 imports)")
    args = parser.parse_args()
    also = [pkg for pkg in args.also.split(",") if pkg]
    for pkg in also:  # found now, not after minutes of building and timing; not imported yet (numpy's threads)
        if importlib.util.find_spec(pkg) is None:
            parser.error(f"--also {pkg}: no such importable package (put the directory holding it on PYTHONPATH)")
    if args.profile_engine not in ("ours", *also):
        parser.error(f"--profile-engine {args.profile_engine}: expected ours or one of the --also packages")

    set_thread_environment(args.threads)  # before numpy's first import, which happens below
    if "numpy" in sys.modules:
        print("warning: numpy was imported before the thread settings", file=sys.stderr)
    model_dir = args.model_dir or build_export(args.work_dir, args.seed)
    if args.build_only:
        print(model_dir)
        return
    import numpy as np

    import minitransformer as mt
    from minitransformer.reference import OnnxReference

    env = environment(args.threads)
    t0 = time.perf_counter()
    model = mt.load(model_dir)
    env["load_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    spec = model.spec
    src = rng.integers(1, spec.n_vocab - 1, size=(1, args.src_len), dtype=np.int64)
    src[0, -1] = model.config.get("eos_token_id", 0)
    mask = np.ones_like(src)
    start_id = model.config.get("decoder_start_token_id", spec.pad_token_id)
    forced = np.concatenate([[start_id], rng.integers(1, spec.n_vocab - 1, size=args.steps - 1)])
    step_ids = [np.array([[t]], dtype=np.int64) for t in forced]  # built once, before any clock runs
    env.update(n_src=args.src_len, n_steps=args.steps, model_dir=model_dir)
    bench_ct2, ct2_engines, ct2_not_measured = ct2_engines_for(args, src)
    ct2_agreement = None
    if ct2_engines:
        env["ctranslate2"] = sys.modules["ctranslate2"].__version__
        print("ct2: CTranslate2's logits along the forced steps against our float64 evaluation", file=sys.stderr)
        ct2_agreement = bench_ct2.agreement(model, list(ct2_engines.values()), src, mask, step_ids)
    int8_rows = None
    if args.int8 or args.int8_only:
        int8_rows, int8_diff = bench_int8(build_int8(model_dir, args.work_dir), args.threads, src, mask, step_ids,
                                          args.reps, 0.5 * args.budget, [ct2_engines["int8"]] if ct2_engines else [])
        print_int8(int8_rows, int8_diff, env)
        env["int8"] = {"decode": int8_rows, "max_abs_logits_diff": int8_diff, "load_average": os.getloadavg()}
        if ct2_engines:
            env["int8"]["int8_decode_step_ratio_vs_ct2_int8"] = int8_rows["ct2-int8"]["ours_over_this"]["step"]
        if args.int8_only:
            print_ct2(bench_ct2, ct2_agreement, None, ct2_not_measured, args.steps)
            if args.json:
                write_json(args.json, {**bench_ct2.headline(None, None, int8_rows, ct2_not_measured),
                                       "environment": env, "ct2_agreement": ct2_agreement})
            return

    ref = OnnxReference(model_dir, optimize=True, threads=args.threads)
    extra = [Ours(importlib.import_module(pkg).load(model_dir), src, mask, pkg) for pkg in also]
    engines = [Ours(model, src, mask), *extra, OrtLoop(ref, "split", src, mask), OrtLoop(ref, "merged", src, mask)]
    if ct2_engines:
        engines.append(ct2_engines["float32"])
    if not args.no_raw:
        engines += [OrtRaw(ref, "split", src, mask), OrtRaw(ref, "merged", src, mask)]
    print(f"decode: {len(engines)} engines x {args.reps} reps x {args.steps} steps", file=sys.stderr)
    raw, logits, raw_stream = bench_decode(engines, step_ids, args.reps, 0.55 * args.budget,
                                           StreamRead(args.threads))
    rows = summarize(raw)
    # the self-attention keys a step reads, 1 to args.steps, on average
    floor = bandwidth_floor(raw_stream, step_read_bytes(model, args.src_len, (args.steps + 1) / 2), rows)
    logits_diff = max(float(np.abs(logits["ours"] - logits[e.name]).max()) for e in engines if isinstance(e, OrtLoop))

    generate = None
    if not args.no_generate:
        print("generate: greedy and beam 4, ours, ORT and CTranslate2", file=sys.stderr)
        jobs = bench_ct2.generate_jobs(ct2_engines["float32"], args.steps, start_id) if ct2_engines else ()
        graw, same, lengths, outputs = bench_generate(model, ref, src, mask, args.steps, args.gen_reps,
                                                      0.3 * args.budget, jobs, [(e.name, e.model) for e in extra])
        generate = {"ms_per_token": {k: median_ms(v) for k, v in graw.items()}, "identical": same,
                    "tokens": lengths, "reps": {k: len(v) for k, v in graw.items()}, "also": [e.name for e in extra]}
        if ct2_engines:
            generate["ct2"] = bench_ct2.generate_figures(generate["ms_per_token"], outputs, "ct2", args.steps)
    profile = None
    if not args.no_profile:
        print("profile: our decode step", file=sys.stderr)
        target = next(e.model for e in engines if e.name == args.profile_engine)
        profile = profile_decode(target, target.encode(src, mask), mask, step_ids, reps=2)
        profile["engine"] = args.profile_engine
    fresh = None
    if not args.no_fresh:
        print("fresh processes: first token, peak RSS, load from the export dir", file=sys.stderr)
        try:
            fresh = fresh_process_figures(model_dir, args.work_dir, args.src_len, args.steps, args.threads)
        except RuntimeError as e:  # reported, and the in-process figures are still printed
            print(f"bench: {e}", file=sys.stderr)
    env["load_average_end"] = os.getloadavg()
    print_report(env, rows, generate, profile, logits_diff, floor, fresh)
    print_ct2(bench_ct2, ct2_agreement, generate, ct2_not_measured, args.steps)
    if args.json:
        result = {**headline(rows, generate, fresh, env, floor),
                  **bench_ct2.headline(rows, generate, int8_rows, ct2_not_measured),
                  "environment": env, "decode": rows, "bandwidth_floor": floor, "max_abs_logits_diff": logits_diff,
                  "generate": generate,
                  "ct2_agreement": ct2_agreement, "fresh_process": fresh, "profile": profile,
                  "raw_seconds": {k: {m: v for m, v in r.items() if m != "steps"} for k, r in raw.items()}}
        write_json(args.json, result)


if __name__ == "__main__":
    main()
