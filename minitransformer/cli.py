"""minitransformer extract | generate | verify | translate.

Exit status: 0 done (verify: every output within the verdict rule), 1 verify found a mismatch, 2 bad input (one line on
stderr naming the file, tensor or argument).
"""
import argparse
import json
import os
import sys

from .errors import ModelError
from .tokenizer import pad_rows
from .verdict import FACTOR


def _ids(text, flag="--input-ids"):
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ModelError(f"{flag} {text!r}: expected whitespace-separated integer token ids") from None
    if not ids:
        raise ModelError(f"{flag}: empty token id list")
    return ids


def padded_batch(rows, pad_token_id):  # list of id lists -> input_ids, attention_mask [n_batch, max_len], right-padded
    if not rows:
        raise ModelError("empty batch: give at least one input")
    return pad_rows(rows, pad_token_id)


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _factor(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 1, got {text}")
    return value


def cmd_extract(args):
    from .extract import write_extracted
    manifest = write_extracted(args.onnx_dir, args.out_dir)
    print(f"extracted {len(manifest['tensors'])} tensors from {args.onnx_dir} to {args.out_dir} "
          f"({len(manifest['tied'])} tied names)")
    return 0


def cmd_generate(args):
    from .model import load
    model = load(args.model_dir)
    input_ids, attention_mask = padded_batch([_ids(t) for t in args.input_ids], model.spec.pad_token_id)
    output = model.generate(input_ids, attention_mask, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    if args.json:
        print(json.dumps({"input_ids": input_ids.tolist(), "output_ids": output.tolist()}))
    else:
        for row in output:
            print(" ".join(str(t) for t in row))
    return 0


def _judged(j):  # Judgement -> "ORT 1.2e-06, ours 9.8e-07, threshold 4.9e-05, margin 41"
    return f"ORT {j.deviation:.2g}, ours {j.yardstick:.2g}, threshold {j.threshold:.2g}, margin {j.margin:.3g}"


def _tokens(verdicts):  # per-row token verdicts -> "same", "near-tie" or "DIFFER"
    return "DIFFER" if "differ" in verdicts else "near-tie" if "near-tie" in verdicts else "same"


def cmd_verify(args):
    from .model import load
    from .reference import LAYOUTS
    from .verify import compare, default_sources, summary
    model = load(args.model_dir)
    onnx_dir = args.onnx or args.model_dir
    if args.input_ids:
        input_ids, attention_mask = padded_batch([_ids(t) for t in args.input_ids], model.spec.pad_token_id)
    else:
        input_ids, attention_mask = default_sources(model.spec)
    layouts = LAYOUTS if args.layout == "both" else (args.layout,)
    comparison = compare(model, onnx_dir, input_ids, attention_mask, args.steps, layouts, factor=args.factor)
    result = summary(comparison)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0 if result["ok"] else 1
    print(f"deviations are rms distances from the float64 evaluation; threshold = {args.factor:g} x ours "
          f"(at least {args.factor:g} x 2^-24 x rms of the values); margin = threshold / ONNX Runtime's deviation")
    print(f"encoder last_hidden_state: {_judged(comparison.encoder)}")
    print(f"{'layout':8} {'step':>4}  {'logits: ORT':>11} {'ours':>8} {'thresh':>8} {'margin':>7}  "
          f"{'worst present':24} {'ORT':>8} {'ours':>8} {'thresh':>8} {'margin':>7}  tokens")
    for r in comparison.steps:
        lg, pr = r.logits, r.worst_present
        flag = "" if r.ok else "  <-- fails the rule"
        print(f"{r.layout:8} {r.step:4d}  {lg.deviation:11.2g} {lg.yardstick:8.2g} {lg.threshold:8.2g} {lg.margin:7.3g}  "
              f"{pr.name:24} {pr.deviation:8.2g} {pr.yardstick:8.2g} {pr.threshold:8.2g} {pr.margin:7.3g}  "
              f"{_tokens(r.tokens)}{flag}")
    layout, step, worst = comparison.worst()
    where = "" if layout is None else f" ({layout}, step {step})"
    ties = f", {result['near_ties']} near-tie(s)" if result["near_ties"] else ""
    tokens = f"{result['tokens_differ']} token(s) differ" if result["tokens_differ"] else "tokens agree"
    print(f"{'OK' if result['ok'] else 'MISMATCH'}: worst output {worst.name}{where}: {_judged(worst)}; "
          f"{tokens}{ties}")
    return 0 if result["ok"] else 1


DEMO_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "numbers-en-de")


def _read_sentences(source):
    """-i FILE or - (stdin): one sentence per line, line ends stripped."""
    try:
        if source == "-":
            return sys.stdin.read().splitlines()
        with open(source, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{source}: cannot read input ({e})") from None


def _progress(done, total):
    width = 30
    filled = width * done // total
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} sentences", end="", file=sys.stderr,
          flush=True)
    if done == total:
        print(file=sys.stderr)


def translate_texts(model, tokenizer, texts, batch_size, show_progress=False, **generation):
    """-> (translations, output ids) in input order; similar lengths are batched together, empty lines stay empty."""
    translations, outputs = [""] * len(texts), [[] for _ in texts]
    todo = sorted((i for i, text in enumerate(texts) if text.strip()), key=lambda i: len(texts[i]))
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        input_ids, attention_mask = tokenizer.encode_batch([texts[i] for i in batch])
        for i, row in zip(batch, model.generate(input_ids, attention_mask, **generation)):
            outputs[i] = row.tolist()
            translations[i] = tokenizer.decode(row)
        if show_progress:
            _progress(min(start + batch_size, len(todo)), len(todo))
    return translations, outputs


def cmd_translate(args):
    from .model import load
    from .tokenizer import Tokenizer
    words = list(args.words)
    model_dir = words.pop(0) if words and os.path.isdir(words[0]) else DEMO_MODEL
    texts = words + (_read_sentences(args.input) if args.input else [])
    if not texts:
        raise ModelError("nothing to translate: give sentences as arguments or with -i FILE (- for stdin)")
    model = load(model_dir)
    tokenizer = Tokenizer.from_dir(model_dir)
    show_progress = not args.no_progress and len(texts) > args.batch_size and sys.stderr.isatty()
    translations, outputs = translate_texts(model, tokenizer, texts, args.batch_size, show_progress,
                                            max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    if args.json:
        print(json.dumps([{"source": s, "translation": t, "output_ids": ids}
                          for s, t, ids in zip(texts, translations, outputs)], ensure_ascii=False))
    else:
        print("\n".join(translations))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="minitransformer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    extract = commands.add_parser("extract", help="ONNX export dir -> model.safetensors with canonical HF names")
    extract.add_argument("onnx_dir")
    extract.add_argument("out_dir")
    extract.set_defaults(run=cmd_extract)

    generate = commands.add_parser("generate", help="token ids in, generated token ids out")
    generate.add_argument("model_dir", help="an optimum ONNX export dir or an extracted dir")
    generate.add_argument("--input-ids", action="append", required=True, metavar="IDS",
                          help='one source as token ids, e.g. "5 17 0"; repeat for a batch')
    generate.add_argument("--max-new-tokens", type=_positive)
    generate.add_argument("--num-beams", type=_positive)
    generate.add_argument("--json", action="store_true")
    generate.set_defaults(run=cmd_generate)

    verify = commands.add_parser("verify", help="step-by-step comparison with ONNX Runtime; exit 1 on mismatch")
    verify.add_argument("model_dir", help="an optimum ONNX export dir or an extracted dir")
    verify.add_argument("--onnx", metavar="ONNX_DIR", help="the export to compare with (default: MODEL_DIR)")
    verify.add_argument("--steps", type=_positive, default=32)
    verify.add_argument("--layout", choices=["split", "merged", "both"], default="both",
                        help="decoder graphs: decoder_model + decoder_with_past, or decoder_model_merged")
    verify.add_argument("--input-ids", action="append", metavar="IDS", help="sources (default: a seeded batch of 3)")
    verify.add_argument("--factor", type=_factor, default=FACTOR,
                        help="the verdict rule's factor: an output fails when ONNX Runtime's rms deviation from "
                             "float64 exceeds factor x ours (default: %(default)g, calibrated in the README)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=cmd_verify)

    translate = commands.add_parser("translate", help="text in, text out (default model: the shipped demo)")
    translate.add_argument("words", nargs="*", metavar="[MODEL_DIR] TEXT",
                           help="sentences to translate; a first argument that is a directory names the model")
    translate.add_argument("-i", "--input", metavar="FILE", help="sentences, one per line (- for stdin)")
    translate.add_argument("--num-beams", type=_positive)
    translate.add_argument("--max-new-tokens", type=_positive)
    translate.add_argument("--batch-size", type=_positive, default=32)
    translate.add_argument("--no-progress", action="store_true", help="no progress bar on long inputs")
    translate.add_argument("--json", action="store_true")
    translate.set_defaults(run=cmd_translate)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ModelError as e:
        print(f"minitransformer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
