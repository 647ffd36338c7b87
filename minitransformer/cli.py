"""minitransformer extract | generate | verify | translate | attention.

Exit status: 0 done (verify: every output within the verdict rule), 1 verify found a mismatch, 2 bad input (one
line on stderr, `minitransformer: error: ...`, naming the file, tensor or argument).

--json prints one JSON object per call, the same envelope for every command (see `envelope`).
Only argparse and the standard library are imported at start; numpy, numba and onnx load with the command.
"""
import argparse
import json
import os
import sys

from .errors import ModelError

PROG = "minitransformer"
DEMO_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "numbers-en-de")


def envelope(command, model, results, **fields):  # -> the --json object of every command
    """{"command", "model": {"dir", "loaded"}, ...command-specific fields..., "results": [one entry per input]}.

    generate and translate: one result per source, in input order, `output_ids` as generate() returns the row
    (decoder start first) up to and including the first eos, never padded. verify: one result per decode step."""
    return {"command": command, "model": {"dir": model.path, "loaded": model.loaded}, **fields, "results": results}


def print_json(obj):
    print(json.dumps(obj, ensure_ascii=False))


class Parser(argparse.ArgumentParser):
    """Every usage error, of the main command or a subcommand, as `minitransformer: error: ...` with exit 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {message}\n")


def _ids(text, flag="--input-ids"):
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ModelError(f"{flag} {text!r}: expected whitespace-separated integer token ids") from None
    if not ids:
        raise ModelError(f"{flag}: empty token id list")
    return ids


def padded_batch(rows, pad_token_id):  # list of id lists -> input_ids, attention_mask [n_batch, max_len], right-padded
    from .tokenizer import pad_rows
    if not rows:
        raise ModelError("empty batch: give at least one input")
    return pad_rows(rows, pad_token_id)


def _integer(text, least, what):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def _positive(text):
    return _integer(text, 1, "a positive integer")


def _factor(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 1, got {text}")
    return value


def load_model(path, note=True, quantized=None):
    """mt.load; with `note`, a line on stderr when the directory holds both model.safetensors and ONNX graphs
    (translate says it in --json only: the shipped demo holds both)."""
    from .model import load
    model = load(path, quantized=quantized)
    if note and model.loaded == "model.safetensors" and any(name.endswith(".onnx") for name in os.listdir(path)):
        print(f"{PROG}: note: {path} holds model.safetensors and ONNX graphs; loaded model.safetensors",
              file=sys.stderr)
    return model


def cmd_extract(args):
    from .extract import write_extracted
    manifest = write_extracted(args.onnx_dir, args.out_dir, args.quantized)
    print(f"extracted {len(manifest['tensors'])} tensors from {args.onnx_dir} to {args.out_dir} "
          f"({len(manifest['tied'])} tied names)")
    return 0


def _number(text, low, high, what):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not low(value) or value > high:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def _fraction(text):
    return _number(text, lambda v: v >= 0, 1.0, "a number in [0, 1]")


def _above_zero(text):
    return _number(text, lambda v: v > 0, float("inf"), "a number above 0")


def _count(text):
    return _integer(text, 0, "a non-negative integer")


def add_generation_options(parser, generation):
    """The generate() settings the command line passes on; unset ones come from generation_config.json."""
    parser.add_argument("--max-new-tokens", **generation["max_new_tokens"])
    parser.add_argument("--num-beams", **generation["num_beams"])
    parser.add_argument("--do-sample", action="store_true",
                        help="sample instead of searching (num beams 1 unless --num-beams says otherwise)")
    parser.add_argument("--temperature", type=_above_zero, help="sampling: divide the scores by this")
    parser.add_argument("--top-k", type=_count, help="sampling: keep the k best tokens (0: all; default 50)")
    parser.add_argument("--top-p", type=_fraction, help="sampling: keep the smallest set with this probability")
    parser.add_argument("--seed", type=_count, help="sampling: the numpy random seed (the same seed, the same ids)")
    parser.add_argument("--num-return-sequences", type=_positive, metavar="K",
                        help="K hypotheses per source (beam search: K <= num beams; sampling: K draws)")
    parser.add_argument("--output-scores", action="store_true",
                        help="each chosen token's score, and beam search's sequence score")


def generation_settings(args):  # -> generate() keyword arguments; None means "from generation_config.json"
    num_beams = args.num_beams or (1 if args.do_sample else None)
    return dict(max_new_tokens=args.max_new_tokens, num_beams=num_beams, do_sample=args.do_sample or None,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                num_return_sequences=args.num_return_sequences, return_dict_in_generate=True,
                output_scores=args.output_scores)


def _result(fields, rows, args):
    """One --json result: the first hypothesis's output_ids; with --output-scores or K > 1, every hypothesis."""
    fields = {**fields, "output_ids": rows[0]["output_ids"]}
    if args.output_scores or (args.num_return_sequences or 1) > 1:
        fields["hypotheses"] = rows
    return fields


def _scores_text(hypothesis):  # -> "" or "\t-0.41 | -0.02 -0.3 ..." (the sequence score first, for beam search)
    if "token_scores" not in hypothesis:
        return ""
    first = f"{hypothesis['sequence_score'] + 0.0:.4g} | " if "sequence_score" in hypothesis else ""
    return "\t" + first + " ".join(f"{x + 0.0:.4g}" for x in hypothesis["token_scores"])  # + 0.0: no "-0"


def cmd_generate(args):
    from .generate import resolve_settings
    from .translate import hypotheses
    model = load_model(args.model_dir, quantized=args.quantized)
    sources = [_ids(t) for t in args.input_ids]
    input_ids, attention_mask = padded_batch(sources, model.spec.pad_token_id)
    generation = generation_settings(args)
    result = model.generate(input_ids, attention_mask, **generation)
    found = hypotheses(result, resolve_settings(model, generation).eos_token_ids, len(sources))
    if args.json:
        print_json(envelope("generate", model, [_result({"input_ids": source}, rows, args)
                                                for source, rows in zip(sources, found)]))
    else:
        for row in (row for rows in found for row in rows):
            print(" ".join(str(t) for t in row["output_ids"]) + _scores_text(row))
    return 0


def _judged(j):  # Judgement -> "ORT 1.2e-06, ours 9.8e-07, threshold 4.9e-05, margin 41"
    return f"ORT {j.deviation:.2g}, ours {j.yardstick:.2g}, threshold {j.threshold:.2g}, margin {j.margin:.3g}"


def _tokens(verdicts):  # per-row token verdicts -> "same", "near-tie" or "DIFFER"
    return "DIFFER" if "differ" in verdicts else "near-tie" if "near-tie" in verdicts else "same"


def cmd_lint(args):
    """verify --lint: the graphs' constants against config.json (lint.py), no ONNX Runtime; exit 1 on a finding."""
    from types import SimpleNamespace

    from .extract import read_json
    from .lint import lint_report
    onnx_dir = args.onnx or args.model_dir
    report = lint_report(onnx_dir, read_json(os.path.join(args.model_dir, "config.json")), args.quantized)
    ok = not report.findings
    if args.json:
        model = SimpleNamespace(path=args.model_dir, loaded="config.json")
        print_json(envelope("verify", model, [f.to_json() for f in report.findings], onnx_dir=onnx_dir, lint=True,
                            files=report.files, ok=ok))
    else:
        print("\n".join(f.message for f in report.findings) or f"lint: no findings in {len(report.files)} graph files")
    return 0 if ok else 1


def cmd_verify(args):
    if args.lint:
        return cmd_lint(args)
    from .reference import LAYOUTS
    from .verdict import FACTOR
    from .verify import compare, default_sources, summary
    factor = FACTOR if args.factor is None else args.factor
    onnx_dir = args.onnx or args.model_dir
    encoders = ("encoder_model.onnx", "encoder_model_quantized.onnx")
    if not any(os.path.exists(os.path.join(onnx_dir, name)) for name in encoders) and os.path.isdir(onnx_dir):
        hint = " (an extracted directory: name the export to compare with, --onnx ONNX_DIR)" if not args.onnx else ""
        raise ModelError(f"{os.path.join(onnx_dir, 'encoder_model.onnx')}: file not found{hint}")
    model = load_model(args.model_dir, quantized=args.quantized)
    if args.input_ids:
        input_ids, attention_mask = padded_batch([_ids(t) for t in args.input_ids], model.spec.pad_token_id)
    else:
        input_ids, attention_mask = default_sources(model.spec)
    layouts = LAYOUTS if args.layout == "both" else (args.layout,)
    comparison = compare(model, onnx_dir, input_ids, attention_mask, args.steps, layouts, factor=factor)
    result = summary(comparison)
    localization = _localization(model, args, onnx_dir, input_ids, attention_mask, comparison, factor)
    result.update(localization.get("json", {}))
    if args.report:
        _write_report(args.report, model, args, onnx_dir, comparison, result, localization.get("lines"))
    if args.json:
        steps = result.pop("steps")
        print_json(envelope("verify", model, steps, onnx_dir=onnx_dir, **result))
        return 0 if result["ok"] else 1
    print(f"deviations are rms distances from the float64 evaluation; threshold = {factor:g} x ours "
          f"(at least {factor:g} x 2^-24 x rms of the values); margin = threshold / ONNX Runtime's deviation")
    quantized = bool(comparison.encoder_quantizers)
    if quantized:
        print("int8: our engines take ONNX Runtime's rounding decisions, and every quantizer input is judged (floor "
              "6 x 2^-24 x rms); flips = elements ONNX Runtime rounded to another integer than float64 did")
    print(f"encoder last_hidden_state: {_judged(comparison.encoder)}")
    if quantized:
        print(f"encoder quantizer inputs: {len(comparison.encoder_quantizers)}, least margin "
              f"{min(j.margin for j in comparison.encoder_quantizers):.3g}, flips {comparison.encoder_followed}")
    quantizer_head = f"  {'quant':>7} {'flips':>5}" if quantized else ""
    print(f"{'layout':8} {'step':>4}  {'logits: ORT':>11} {'ours':>8} {'thresh':>8} {'margin':>7}  "
          f"{'worst present':24} {'ORT':>8} {'ours':>8} {'thresh':>8} {'margin':>7}{quantizer_head}  tokens")
    for r in comparison.steps:
        lg, pr = r.logits, r.worst_present
        flag = "" if r.ok else "  <-- fails the rule"
        quantizer_columns = (f"  {min(j.margin for j in r.quantizers):7.3g} {r.followed:5d}" if quantized else "")
        print(f"{r.layout:8} {r.step:4d}  {lg.deviation:11.2g} {lg.yardstick:8.2g} {lg.threshold:8.2g} "
              f"{lg.margin:7.3g}  {pr.name:24} {pr.deviation:8.2g} {pr.yardstick:8.2g} {pr.threshold:8.2g} "
              f"{pr.margin:7.3g}{quantizer_columns}  {_tokens(r.tokens)}{flag}")
    layout, step, worst = comparison.worst()
    where = "" if layout is None else f" ({layout}, step {step})"
    ties = f", {result['near_ties']} near-tie(s)" if result["near_ties"] else ""
    tokens = f"{result['tokens_differ']} token(s) differ" if result["tokens_differ"] else "tokens agree"
    for line in localization.get("lines", []):
        print(line)
    print(f"{'OK' if result['ok'] else 'MISMATCH'}: worst output {worst.name}{where}: {_judged(worst)}; "
          f"{tokens}{ties}")
    return 0 if result["ok"] else 1


def _localization(model, args, onnx_dir, input_ids, attention_mask, comparison, factor):
    """When the verdict fails, or with --localize: {"lines": report lines, "json": {"first_divergence": ...}}."""
    if comparison.ok and not args.localize:
        return {}
    if model.quantized:
        return _quantizer_localization(comparison)
    from .localize import first_divergence, has_scopes, lint_causes, localize, report_lines, weight_differences
    if not has_scopes(onnx_dir):
        return {"lines": [f"localization: {onnx_dir}'s node names carry no module scopes (not an optimum export?); "
                          f"only the step-level report above"], "json": {"first_divergence": None}}
    divergences = localize(model, onnx_dir, input_ids, attention_mask, comparison.fed, factor)
    same_dir = os.path.abspath(onnx_dir) == os.path.abspath(args.model_dir)
    causes = lint_causes(onnx_dir, model.spec) + ([] if same_dir else weight_differences(model, onnx_dir))
    lines = ["localization: each graph file on its own (the same encoder output, tokens and cache fed to each); "
             "the first module whose output fails the rule:"] + report_lines(divergences, causes)
    return {"lines": lines, "json": {"first_divergence": first_divergence(divergences)}}


def _quantizer_localization(comparison):
    """An int8 export is localized by its quantizer inputs, judged in execution order by the verdict pass."""
    judged = comparison.quantizer_judgements()
    failing = [(layout, step, j) for layout, step, j in judged if not j.ok]
    lines = ["localization: the quantizer inputs in execution order, each judged by the rule; the first outside it:"]
    if not failing:
        return {"lines": lines + [f"none: all {len(judged)} are within the rule"], "json": {"first_divergence": None}}
    layout, step, first = failing[0]
    where = "encoder" if layout is None else f"{layout}, step {step}"
    lines.append(f"{first.name.removeprefix('quantizer input ')} ({where}) diverges ({_judged(first)}); everything "
                 f"before it agrees")
    return {"lines": lines, "json": {"first_divergence": {"layout": layout, "step": step, **first.as_dict()}}}


def _write_report(path, model, args, onnx_dir, comparison, result, localization_lines):
    """verify --report: the model and its graph files with their sha256, the rule, the steps, the localization."""
    from .localize import sha256
    files = sorted(f for f in os.listdir(onnx_dir) if f.endswith(".onnx"))
    layout, step, worst = comparison.worst()
    rows = [f"| {r.layout} | {r.step} | {r.logits.deviation:.2g} | {r.logits.yardstick:.2g} | "
            f"{r.logits.threshold:.2g} | {r.logits.margin:.3g} | {r.worst_present.name} | "
            f"{r.worst_present.deviation:.2g} | {r.worst_present.yardstick:.2g} | {r.worst_present.threshold:.2g} | "
            f"{r.worst_present.margin:.3g} | {_tokens(r.tokens)} |" for r in comparison.steps]
    text = "\n".join([
        f"# minitransformer verify: {'OK' if result['ok'] else 'MISMATCH'}", "",
        f"- model: `{args.model_dir}` ({model.spec.model_type}); graphs compared: `{onnx_dir}`",
        f"- worst output: {worst.name}" + ("" if layout is None else f" ({layout}, step {step})") + f": {_judged(worst)}",
        "", "| graph file | sha256 |", "|---|---|",
        *[f"| `{f}` | `{sha256(os.path.join(onnx_dir, f))}` |" for f in files], "",
        "## The rule", "",
        f"threshold = {worst.factor:g} × max(rms(ours − float64), 2⁻²⁴ · rms(float64)); an output is right when "
        "ONNX Runtime's rms deviation from float64 is at most the threshold; margin = threshold / deviation.", "",
        f"Encoder output: {_judged(comparison.encoder)}", "",
        "## Steps", "",
        "| layout | step | logits: ORT | ours | threshold | margin | worst present | ORT | ours | threshold | margin "
        "| tokens |", "|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        "## Localization", "",
        *([f"- {line}" for line in localization_lines[1:]] if localization_lines else
          ["Not run: every output passed (run with --localize to localize anyway)."]), ""])
    staging = f"{path}.partial"
    try:
        with open(staging, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(staging, path)
    except OSError as e:
        raise ModelError(f"{path}: cannot write the report ({e.strerror})") from None


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


def _check_not_a_path(text):
    """A sentence that names a file or directory, or a slash-separated word, is a mistyped --model."""
    looks_like_path = not any(c.isspace() for c in text) and ("/" in text or os.sep in text)
    if text and (os.path.exists(text) or looks_like_path):
        raise ModelError(f"{text}: looks like a path, not a sentence; name the model with --model DIR "
                         f"(a sentence with a slash: give it with -i FILE)")


def cmd_translate(args):
    for text in args.texts:
        _check_not_a_path(text)
    texts = list(args.texts) + (_read_sentences(args.input) if args.input else [])
    if not texts:
        raise ModelError("nothing to translate: give sentences as arguments or with -i FILE (- for stdin)")
    from .translate import translate_hypotheses
    model = load_model(args.model, note=False, quantized=args.quantized)
    progress = _progress if not args.no_progress and len(texts) > args.batch_size and sys.stderr.isatty() else None
    found = translate_hypotheses(model, model.tokenizer, texts, args.batch_size, progress, src_lang=args.src_lang,
                                 tgt_lang=args.tgt_lang, **generation_settings(args))
    if args.json:
        print_json(envelope("translate", model, [_result({"source": s, "translation": rows[0]["translation"]}, rows,
                                                         args) for s, rows in zip(texts, found)],
                            src_lang=args.src_lang, tgt_lang=args.tgt_lang))
    else:
        print("\n".join(row["translation"] + _scores_text(row) for rows in found for row in rows))
    return 0


def _head(text):
    if text == "mean":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected mean or a head index, got {text!r}") from None


def cmd_attention(args):
    import numpy as np

    from .heatmap import attention_map, draw, piece_labeller
    if not (args.png or args.json):
        raise ModelError("attention: give --png FILE (the heatmap) and/or --json (the matrix and the pieces)")
    if (args.text is None) == (args.input_ids is None):
        raise ModelError("attention: give the source as text or as --input-ids (one of them)")
    model = load_model(args.model, note=False)
    tokenizer = None
    if args.text is not None:
        try:
            tokenizer = model.tokenizer
        except ModelError as e:
            raise ModelError(f"{e} (give the source as --input-ids)") from None
        source = tokenizer.encode([args.text])[0]
    else:
        source = _ids(args.input_ids)
        try:
            tokenizer = model.tokenizer  # for the labels only
        except ModelError:
            pass
    output = model.generate(np.array([source]), None, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)[0]
    found = attention_map(model, source, output, piece_labeller(tokenizer), args.kind, args.layer, args.head)
    heads = model.spec.n_head_encoder if args.kind == "encoder" else model.spec.n_head_decoder
    title = (f"{os.path.basename(os.path.abspath(args.model))}: {args.kind} attention, layer {found.layer}, "
             + (f"mean of {heads} heads" if found.head == "mean" else f"head {found.head}"))
    if args.png:
        draw(found, title, args.png)
    if args.json:
        print_json(envelope("attention", model, [{"input_ids": [int(t) for t in source],
                                                  "output_ids": output.tolist(), "rows": found.rows,
                                                  "columns": found.columns, "matrix": found.matrix.tolist()}],
                            kind=found.kind, layer=found.layer, head=found.head))
    else:
        print(f"{title} -> {args.png}")
    return 0


def build_parser():
    parser = Parser(prog=PROG, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generation = dict(
        max_new_tokens=dict(type=_positive, metavar="N",
                            help="new tokens at most (default: generation_config.json's max_new_tokens, or its "
                                 "max_length - 1; 20 when neither is set or max_length is 20, as in HF)"),
        num_beams=dict(type=_positive, metavar="N", help="beam width, 1 is greedy (default: generation_config.json's, "
                                                         "else 1)"),
    )
    json_help = "print one JSON object (the envelope the README describes) instead of text"
    quantized = dict(action=argparse.BooleanOptionalAction, default=None,
                     help="read the *_quantized.onnx graphs (int8), or with --no-quantized the fp32 ones; needed "
                          "only when the directory holds both")

    extract = commands.add_parser("extract", help="ONNX export dir -> model.safetensors with canonical HF names",
                                  description="Prints one line: how many tensors were extracted, to where.")
    extract.add_argument("onnx_dir", help="an optimum ONNX export (encoder_model.onnx, decoder graphs, config.json)")
    extract.add_argument("out_dir", help="where model.safetensors, the configs, manifest.json and the tokenizer "
                                         "files go; not the export itself")
    extract.add_argument("--quantized", **quantized)
    extract.set_defaults(run=cmd_extract)

    generate = commands.add_parser("generate", help="token ids in, generated token ids out",
                                   description="Prints one line of ids per source: decoder start, new tokens, eos.")
    generate.add_argument("model_dir", help="an optimum ONNX export dir or an extracted dir")
    generate.add_argument("--input-ids", action="append", required=True, metavar="IDS",
                          help='one source as token ids, e.g. "5 17 0"; repeat for a batch (required)')
    add_generation_options(generate, generation)
    generate.add_argument("--quantized", **quantized)
    generate.add_argument("--json", action="store_true", help=json_help)
    generate.set_defaults(run=cmd_generate)

    verify = commands.add_parser("verify", help="step-by-step comparison with ONNX Runtime; exit 1 on mismatch",
                                 description="Prints each decode step's deviations from float64 (ONNX Runtime's "
                                             "and ours) and the rule's threshold, then an OK or MISMATCH line; "
                                             "exit 0, 1 on mismatch, 2 on bad input.")
    verify.add_argument("model_dir", help="an optimum ONNX export dir or an extracted dir")
    verify.add_argument("--onnx", metavar="ONNX_DIR", help="the export to compare with (default: MODEL_DIR; "
                                                          "required for an extracted dir)")
    verify.add_argument("--steps", type=_positive, default=32, metavar="N",
                        help="decode steps compared (default: %(default)s)")
    verify.add_argument("--layout", choices=["split", "merged", "both"], default="both",
                        help="decoder graphs: decoder_model + decoder_with_past, or decoder_model_merged "
                             "(default: %(default)s)")
    verify.add_argument("--input-ids", action="append", metavar="IDS",
                        help="sources as token ids, repeat for a batch (default: a seeded batch of 3)")
    verify.add_argument("--factor", type=_factor, metavar="X",
                        help="the verdict rule's factor: an output fails when ONNX Runtime's rms deviation from "
                             "float64 exceeds factor x ours (default: verdict.FACTOR, 50, calibrated in the README)")
    verify.add_argument("--quantized", **quantized)
    verify.add_argument("--localize", action="store_true",
                        help="find the first module whose output diverges in every graph file and step, even "
                             "when the verdict passes (a failing verdict always localizes)")
    verify.add_argument("--report", metavar="FILE.md",
                        help="also write a Markdown report: graph files and sha256, the rule, steps, localization")
    verify.add_argument("--lint", action="store_true",
                        help="only check the graphs' constants (epsilons, attention scales, activations, position "
                             "offsets) against config.json, in seconds, without ONNX Runtime; exit 1 on a finding")
    verify.add_argument("--json", action="store_true", help=json_help)
    verify.set_defaults(run=cmd_verify)

    translate = commands.add_parser("translate", help="text in, text out (default model: the shipped demo)",
                                    description="Prints one translation per line, in input order (blank lines "
                                                "stay blank).")
    translate.add_argument("texts", nargs="*", metavar="TEXT", help="sentences to translate")
    translate.add_argument("--model", metavar="DIR", default=DEMO_MODEL,
                           help="the model directory (default: the shipped demo, English number words 0 to "
                                "999,999 -> German: weights/numbers-en-de)")
    translate.add_argument("-i", "--input", metavar="FILE", help="sentences, one per line (- for stdin)")
    translate.add_argument("--src-lang", metavar="CODE",
                           help="source language code, e.g. en_XX or eng_Latn (mBART-50, M2M100, NLLB; "
                                "default: tokenizer_config.json's src_lang)")
    translate.add_argument("--tgt-lang", metavar="CODE",
                           help="target language code, forced as the first token (default: "
                                "generation_config.json's forced_bos_token_id)")
    add_generation_options(translate, generation)
    translate.add_argument("--batch-size", type=_positive, default=32, metavar="N",
                           help="sentences per generate() call (default: %(default)s)")
    translate.add_argument("--no-progress", action="store_true", help="no progress bar on long inputs")
    translate.add_argument("--quantized", **quantized)
    translate.add_argument("--json", action="store_true", help=json_help)
    translate.set_defaults(run=cmd_translate)
    attention = commands.add_parser("attention", help="one layer's attention over a translation, as a heatmap")
    attention.add_argument("text", nargs="?", help="the source sentence (needs the model's tokenizer)")
    attention.add_argument("--model", metavar="DIR", default=DEMO_MODEL,
                           help="the model directory (default: the shipped demo, weights/numbers-en-de)")
    attention.add_argument("--input-ids", metavar="IDS", help="the source as token ids instead of text")
    attention.add_argument("--png", metavar="FILE", help="write the heatmap here (needs the plot extra)")
    attention.add_argument("--kind", choices=["cross", "self", "encoder"], default="cross",
                           help="decoder cross-attention, decoder self-attention, or the encoder's "
                                "(default: %(default)s)")
    attention.add_argument("--layer", type=int, help="layer index (default: the last; negative counts from the end)")
    attention.add_argument("--head", type=_head, default="mean",
                           help="a head index, or the mean over the heads (default: %(default)s)")
    attention.add_argument("--max-new-tokens", **generation["max_new_tokens"])
    attention.add_argument("--num-beams", **generation["num_beams"])
    attention.add_argument("--json", action="store_true", help="print the matrix and the pieces (the envelope)")
    attention.set_defaults(run=cmd_attention)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ModelError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
