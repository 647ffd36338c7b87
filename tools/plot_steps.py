"""Plot ms per decode step against decoded length 1..N, ours and ONNX Runtime, on tools/bench.py's workload.

Both engines decode the same forced tokens from the same encoder output, interleaved: every repetition runs
each engine once, the order alternating. The median over repetitions is taken at every length (thin lines),
and a running median over 9 lengths drawn over it (thick). A step's cost should stay flat apart from the
attention term, which grows linearly with the length. The dashed line is the bandwidth floor: the bytes a step
reads (weights, cross and self K/V) at the rate a 256 MB read streams memory in this run (bench.StreamRead).

Usage (needs `pip install -e '.[plot]'` for matplotlib; the model is tools/bench.py's, built once):
  python tools/plot_steps.py                      # docs/decode_steps.png, 256 steps, 2 threads
  python tools/plot_steps.py --steps 128 --reps 3 --out /tmp/steps.png
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--work-dir", default="/tmp/minitransformer-bench", help="where bench.py caches its model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), os.pardir, "docs", "decode_steps.png"))
    args = parser.parse_args()
    import bench  # imports numpy only inside its functions
    bench.set_thread_environment(args.threads)
    model_dir = bench.build_export(args.work_dir, 0)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import minitransformer as mt
    from minitransformer.reference import OnnxReference

    model = mt.load(model_dir)
    rng = np.random.default_rng(0)
    src = rng.integers(1, model.spec.n_vocab - 1, size=(1, args.src_len), dtype=np.int64)
    src[0, -1] = model.config.get("eos_token_id", 0)
    mask = np.ones_like(src)
    start_id = model.config.get("decoder_start_token_id", model.spec.pad_token_id)
    forced = np.concatenate([[start_id], rng.integers(1, model.spec.n_vocab - 1, size=args.steps - 1)])
    step_ids = [np.array([[t]], dtype=np.int64) for t in forced]
    ref = OnnxReference(model_dir, optimize=True, threads=args.threads)
    engines = [bench.Ours(model, src, mask), bench.OrtRaw(ref, "split", src, mask)]
    stream = bench.StreamRead(args.threads)
    load_start = os.getloadavg()[0]
    times = {e.name: [] for e in engines}
    stream_seconds = []
    for e in engines:  # warm-up
        e.decode(e.encode(), step_ids[:4])
    for rep in range(args.reps):
        stream_seconds.append(stream.seconds())
        for e in engines[rep % 2:] + engines[:rep % 2]:
            hidden = np.asarray(e.encode(), np.float32)
            times[e.name].append(e.decode(hidden, step_ids)[1])
        print(f"  rep {rep + 1}/{args.reps}", file=sys.stderr)
    load_end = os.getloadavg()[0]
    medians = {name: [1e3 * statistics.median(rep[i] for rep in runs) for i in range(args.steps)]
               for name, runs in times.items()}

    lengths = np.arange(1, args.steps + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    labels = {"ours": "minitransformer", "ort-split-raw": "ONNX Runtime (decoder_with_past)"}
    for name, ms in medians.items():  # thin: the median at each length; thick: its running median over 9 lengths
        line, = ax.plot(lengths, ms, linewidth=0.6, alpha=0.5)
        running = [statistics.median(ms[max(0, i - 4):i + 5]) for i in range(len(ms))]
        ax.plot(lengths, running, color=line.get_color(), linewidth=2.0, label=labels.get(name, name))
    bandwidth = bench.STREAM_BYTES / statistics.median(stream_seconds)  # bytes per second, in this run
    floor_ms = [1e3 * bench.step_read_bytes(model, args.src_len, n) / bandwidth for n in lengths]  # n keys read
    ax.plot(lengths, floor_ms, color="gray", linestyle="--", linewidth=1.2,
            label=f"bandwidth floor: the bytes a step reads at {bandwidth / 1e9:.0f} GB/s")
    ax.set_xlabel("decoded length (target positions in the cache)")
    ax.set_ylabel("ms per decode step (median)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(1, args.steps)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(f"OPUS-MT-size Marian, batch 1, {args.src_len}-token source, {args.threads} threads; "
                 f"median of {args.reps}; load average {load_start:.1f}-{load_end:.1f}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out)
    summary = {name: {"first_16": statistics.median(ms[:16]), "last_16": statistics.median(ms[-16:])}
               for name, ms in medians.items()}
    summary["bandwidth_floor"] = {"first_16": statistics.median(floor_ms[:16]),
                                  "last_16": statistics.median(floor_ms[-16:])}
    print(json.dumps({"out": os.path.abspath(args.out), "load_average": [load_start, load_end],
                      "bandwidth_gb_s": bandwidth / 1e9,
                      "median_ms": summary, "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))


if __name__ == "__main__":
    main()
