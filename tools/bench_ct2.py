"""CTranslate2 in tools/bench.py: the bench's seeded HF Marian converted to CTranslate2 float32 and int8, timed
beside the other engines, and checked to compute the same model.

Conversion: `ctranslate2.converters.TransformersConverter` on the HF model bench.py saved before exporting
(WORK_DIR/hf), once per quantization ("float32", "int8"), into WORK_DIR/ct2-float32 and WORK_DIR/ct2-int8 with a
stamp (`ct2_from.json`: the bench's config and seed, the quantization, the ctranslate2 version). The bench model
has no tokenizer, so the converter is handed a vocabulary that names each id ("t17"; "</s>", "<unk>", "<pad>" at
their ids). CTranslate2's Marian drops the last (pad) row of the embedding and of the lm_head and starts the
decoder from a zero embedding, which is what HF's zeroed pad row gives; its ids are ours minus the pad id.

What is timed (a Translator has no public encoder-only or single-step call):
- decode step, `Ct2Steps`: translate_batch on the bench's 32-token source, beam_size=1, min_decoding_length =
  max_decoding_length = the bench's step count, with a per-token callback. A step is the interval between two
  consecutive callbacks (steps 1..63, each one decoder step with argmax and the callback's own ~10 us); the call's
  start to the first callback (encoder, cross-attention K/V, step 0) is the engine's "start". CTranslate2 decodes
  its own greedy tokens, not the bench's forced ones (eos held back by the minimum length): a step costs the same
  whatever the token.
- beam 4, `generate_jobs`: translate_batch(beam_size=4, min = max = 64) timed whole and divided by 64, the
  definition of ours' and ONNX Runtime's generate rows (encoder included); the same call with
  max_decoding_length=1 gives T1, and (T64 - T1) / 63 is the step without the encoder.

Check, `agreement`: CTranslate2's logits at every one of the bench's forced steps (target_prefix = the forced
tokens, return_logits_vocab) against a float64 evaluation of our model on the same tokens, judged by the verdict
rule with our float32 logits as the yardstick (float32); int8 gives its distance from float64 and how often its
argmax is float64's.
"""
import json
import os
import shutil
import sys
import time

import numpy as np

QUANTIZATIONS = ("float32", "int8")


def import_ctranslate2():
    """-> (the ctranslate2 module, None) or (None, the one-line reason it cannot be used)."""
    try:
        import ctranslate2
        import ctranslate2.converters  # noqa: F401  (needs torch and transformers: the tools extra)
    except ImportError as e:
        return None, f"CTranslate2 not measured: {e} (pip install -e '.[tools]' installs ctranslate2==4.8.5)"
    return ctranslate2, None


class _IdVocabulary:
    """What TransformersConverter's Marian loader reads from a tokenizer: the vocabulary and eos/unk tokens."""

    def __init__(self, n_vocab, eos_id, unk_id, pad_id):
        self.tokens = [f"t{i}" for i in range(n_vocab)]
        self.tokens[eos_id], self.tokens[unk_id], self.tokens[pad_id] = "</s>", "<unk>", "<pad>"
        self.eos_token, self.unk_token = "</s>", "<unk>"

    def get_vocab(self):
        return {token: i for i, token in enumerate(self.tokens)}


def convert(ctranslate2, hf_dir, work_dir, quantization, built_from):
    """WORK_DIR/ct2-<quantization>, converted from hf_dir unless its stamp says it already is. -> that directory.
    built_from: the bench's model description (config, seed); a different one converts again."""
    out = os.path.join(work_dir, f"ct2-{quantization}")
    stamp = os.path.join(out, "ct2_from.json")
    wanted = {**built_from, "quantization": quantization, "ctranslate2": ctranslate2.__version__}
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == wanted:
                return out
    from ctranslate2.converters import TransformersConverter
    config = built_from["config"]

    class IdVocabularyConverter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):  # unk at 1, as in OPUS-MT's
            return _IdVocabulary(config["vocab_size"], config["eos_token_id"], 1, config["pad_token_id"])

    staged = f"{out}.staged-{os.getpid()}"
    t0 = time.perf_counter()
    IdVocabularyConverter(hf_dir).convert(staged, quantization=quantization, force=True)
    with open(os.path.join(staged, "ct2_from.json"), "w") as f:
        json.dump(wanted, f)
    if os.path.exists(out):
        shutil.rmtree(out)  # a stale conversion of our own
    os.replace(staged, out)
    print(f"converted the HF model to CTranslate2 {quantization} in {time.perf_counter() - t0:.0f} s: {out}",
          file=sys.stderr)
    return out


class Ct2Steps:
    """A CTranslate2 Translator as a bench engine: encode() has no separate call (None), decode() times steps."""

    def __init__(self, ctranslate2, model_dir, compute_type, threads, src, name):
        self.name, self.compute_type = name, compute_type
        self.translator = ctranslate2.Translator(model_dir, device="cpu", compute_type=compute_type,
                                                 intra_threads=threads, inter_threads=1)
        with open(os.path.join(model_dir, "shared_vocabulary.json")) as f:
            self.vocabulary = json.load(f)  # CTranslate2 id -> token; the same ids as ours, pad removed
        self.index = {token: i for i, token in enumerate(self.vocabulary)}
        self.source = [[self.vocabulary[i] for i in src[0]]]  # batch 1; src ends with eos, as a tokenizer's would

    def encode(self):
        return None  # the encoder runs inside translate_batch: its time is in decode's start

    def decode(self, hidden, step_ids):
        """-> (call start to first token, [seconds between consecutive tokens], None)."""
        clock = time.perf_counter
        stamps = []
        t0 = clock()
        self.translator.translate_batch(self.source, beam_size=1, min_decoding_length=len(step_ids),
                                        max_decoding_length=len(step_ids), callback=lambda _: stamps.append(clock()))
        if len(stamps) != len(step_ids):
            raise RuntimeError(f"{self.name}: {len(stamps)} callbacks for {len(step_ids)} steps")
        return stamps[0] - t0, [b - a for a, b in zip(stamps, stamps[1:])], None

    def generate(self, n_new, beams, start_id):
        """translate_batch with exactly n_new tokens -> [1, 1 + n_new] ids, start id first (as ours returns them)."""
        result = self.translator.translate_batch(self.source, beam_size=beams, min_decoding_length=n_new,
                                                 max_decoding_length=n_new)
        return np.array([[start_id, *(self.index[t] for t in result[0].hypotheses[0])]])

    def logits_along(self, forced_ids):
        """Teacher-forced logits: forced_ids[0] is the start token (a zero embedding here), the rest the prefix.
        -> [len(forced_ids), n_vocab - 1] float32, ids as ours without the pad."""
        prefix = [[self.vocabulary[int(i)] for i in forced_ids[1:]]]
        result = self.translator.translate_batch(self.source, prefix, beam_size=1, min_decoding_length=0,
                                                 max_decoding_length=len(forced_ids), return_logits_vocab=True)
        return np.stack([np.asarray(step) for step in result[0].logits[0]])


def generate_jobs(engine, n_new, start_id):
    """(name, run) pairs for bench.py's interleaved generate phase: greedy and beam 4 with n_new tokens, and
    beam 4 with one token (T1, for the step without the encoder)."""
    return [(f"{engine.name} greedy", lambda: engine.generate(n_new, 1, start_id)),
            (f"{engine.name} beam4", lambda: engine.generate(n_new, 4, start_id)),
            (f"{engine.name} beam4 first", lambda: engine.generate(1, 4, start_id))]


def agreement(model, engines, src, mask, step_ids):
    """Each CTranslate2 engine's logits along the bench's forced tokens against our model's, evaluated in float64
    and float32. -> {engine name: figures}; float32 engines are judged by the verdict rule at every step."""
    from minitransformer import verdict
    forced = [int(ids[0, 0]) for ids in step_ids]
    n_ct2 = model.spec.n_vocab - 1  # CTranslate2's Marian vocabulary: ours without the pad (the last id)

    def along(m):  # ours teacher-forced on the same tokens -> [n_steps, n_ct2]
        state = m.start(m.encode(src, mask), mask, len(step_ids))
        return np.concatenate([m.decode_step(state, ids)[0, -1:, :n_ct2] for ids in step_ids])

    exact, ours = along(model.astype(np.float64)), along(model)
    figures = {}
    for engine in engines:
        theirs = engine.logits_along(forced)
        figures[engine.name] = {
            "compute_type": engine.compute_type, "steps": len(forced),
            "max_abs_logits_diff_vs_float64": float(np.abs(theirs - exact).max()),
            "max_abs_logits_diff_vs_ours": float(np.abs(theirs - ours).max()),
            "argmax_equal_to_float64": int((theirs.argmax(1) == exact.argmax(1)).sum()),
            "ours_max_abs_logits_diff_vs_float64": float(np.abs(ours - exact).max()),
            "logits_rms": verdict.rms(exact)}
        if engine.compute_type == "float32":  # int8 computes another function: no rounding rule applies
            judged = [verdict.judge(f"step {i}", theirs[i], exact[i], ours[i]) for i in range(len(forced))]
            figures[engine.name].update(steps_within_rule=sum(j.ok for j in judged),
                                        worst_margin=min(j.margin for j in judged))
    return figures


def print_agreement(figures):
    for name, f in figures.items():
        line = (f"  {name}: logits at the {f['steps']} forced steps, max |d| from our float64 evaluation "
                f"{f['max_abs_logits_diff_vs_float64']:.2e} (ours float32 {f['ours_max_abs_logits_diff_vs_float64']:.2e}, "
                f"logits rms {f['logits_rms']:.2f}); argmax = float64's at {f['argmax_equal_to_float64']}/{f['steps']}")
        if "steps_within_rule" in f:
            line += f"; verdict rule {f['steps_within_rule']}/{f['steps']} steps, worst margin {f['worst_margin']:.3g}"
        print(line)


def leading_equal(a, b):
    """How many leading ids two id rows share."""
    n = min(len(a), len(b))
    unequal = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(unequal[0]) if unequal.size else n


def generate_figures(ms_per_token, outputs, name, n_new):
    """CTranslate2's generate rows beside ours: ms per token, the beam step without the encoder, and how many
    leading tokens equal ours (ours forces eos at the last position, CTranslate2 does not: n_new - 1 compared)."""
    whole, first = ms_per_token[f"{name} beam4"] * n_new, ms_per_token[f"{name} beam4 first"]
    return {"greedy_token_ms": ms_per_token[f"{name} greedy"], "beam4_token_ms": ms_per_token[f"{name} beam4"],
            "beam4_step_only_ms": (whole - first) / (n_new - 1), "beam4_first_token_ms": first,
            "tokens_compared": n_new - 1,
            **{f"{label}_leading_tokens_equal_to_ours": leading_equal(outputs[f"{name} {label}"][0, 1:n_new],
                                                                      outputs[f"ours {label}"][0, 1:n_new])
               for label in ("greedy", "beam4")}}


def headline(rows, generate, int8_rows, not_measured):
    """The issue's CTranslate2 keys (None when not measured; not_measured says why)."""
    figures = dict.fromkeys(("ct2_decode_step_ms", "decode_step_ratio_vs_ct2", "ct2_beam4_step_ms",
                             "beam4_step_ratio_vs_ct2", "ct2_int8_decode_step_ms",
                             "int8_decode_step_ratio_vs_ct2_int8"))
    figures["ct2_not_measured"] = not_measured
    if rows and "ct2" in rows:
        figures.update(ct2_decode_step_ms=rows["ct2"]["step_ms"], decode_step_ratio_vs_ct2=rows["ct2"]["ours_over_this"]["step"])
    if generate and "ct2" in generate:
        ms = generate["ms_per_token"]
        figures.update(ct2_beam4_step_ms=ms["ct2 beam4"], beam4_step_ratio_vs_ct2=ms["ours beam4"] / ms["ct2 beam4"])
    if int8_rows and "ct2-int8" in int8_rows:
        figures.update(ct2_int8_decode_step_ms=int8_rows["ct2-int8"]["step_ms"],
                       int8_decode_step_ratio_vs_ct2_int8=int8_rows["ct2-int8"]["ours_over_this"]["step"])
    return figures


def print_generate(figures, n_new):
    f = figures
    print(f"  ct2 (CTranslate2 float32 translate_batch, exactly {n_new} tokens): greedy {f['greedy_token_ms']:.2f}, "
          f"beam4 {f['beam4_token_ms']:.2f} ms per token (the whole call / {n_new}); beam-4 step without the encoder "
          f"(T{n_new} - T1) / {n_new - 1} = {f['beam4_step_only_ms']:.2f} ms; leading tokens equal to ours: greedy "
          f"{f['greedy_leading_tokens_equal_to_ours']}/{f['tokens_compared']}, beam4 "
          f"{f['beam4_leading_tokens_equal_to_ours']}/{f['tokens_compared']}")
