"""ONNX Runtime's loop, our float32 engine and its float64 evaluation side by side, step by step: every output
judged by the verdict rule (verdict.py).

The three engines encode the same sources independently and then decode the same tokens: at every step each
is fed the token ONNX Runtime chose, so a divergence cannot hide behind diverged inputs. On an int8 export they
are fed ONNX Runtime's rounding decisions the same way, and every decision is judged (rounding.py).
"""
from dataclasses import dataclass, field

import numpy as np

from .errors import ModelError
from .model import check_ids, check_mask
from .quant import following
from .reference import OnnxReference
from .rounding import Follower, RoundingReference, judge_quantizers
from .verdict import FACTOR, judge, token_verdict


@dataclass
class StepReport:
    """One decode step of one layout: every output judged by the rule, and the chosen tokens."""
    layout: str
    step: int
    outputs: list              # [Judgement]: logits first, then every present.N.{decoder,encoder}.{key,value}
    tokens: list               # per row, ONNX Runtime's chosen token against float64's: same / near-tie / differ
    our_tokens: list           # per row, our float32 engine's chosen token against float64's
    quantizers: list = field(default_factory=list)  # int8: [Judgement] of each quantizer input ONNX Runtime decided
    followed: int = 0          # int8: elements ONNX Runtime rounded to another integer than float64 did

    @property
    def logits(self):
        return self.outputs[0]

    @property
    def worst_present(self):
        return min(self.outputs[1:], key=lambda j: j.margin)

    @property
    def ok(self):
        return all(j.ok for j in self.outputs + self.quantizers) and "differ" not in self.tokens


@dataclass
class Comparison:
    encoder: object            # Judgement of the encoder output (last_hidden_state)
    steps: list = field(default_factory=list)  # [StepReport] per layout and step
    fed: dict = field(default_factory=dict)    # {layout: [tokens [n_batch, 1] fed at each step]}
    encoder_quantizers: list = field(default_factory=list)  # int8: the encoder's quantizer inputs, judged
    encoder_followed: int = 0

    @property
    def ok(self):
        return all(j.ok for j in [self.encoder] + self.encoder_quantizers) and all(r.ok for r in self.steps)

    def judgements(self):  # -> [(layout, step, Judgement)], the encoder's first (layout and step None)
        return ([(None, None, j) for j in [self.encoder] + self.encoder_quantizers]
                + [(r.layout, r.step, j) for r in self.steps for j in r.outputs + r.quantizers])

    def quantizer_judgements(self):  # -> [(layout, step, Judgement)] of the quantizer inputs, in execution order
        return ([(None, None, j) for j in self.encoder_quantizers]
                + [(r.layout, r.step, j) for r in self.steps for j in r.quantizers])

    def worst(self):  # -> (layout, step, Judgement) with the smallest margin
        return min(self.judgements(), key=lambda item: item[2].margin)


def default_sources(spec, n_batch=3, seed=0):
    """A padded batch of sources of different lengths, ordinary tokens then eos 0... as the tokenizer would."""
    rng = np.random.default_rng(seed)
    lengths = [min(12, spec.max_positions), min(7, spec.max_positions), min(3, spec.max_positions)][:n_batch]
    ordinary = np.setdiff1d(np.arange(spec.n_vocab), [0, 1, spec.pad_token_id])
    input_ids = np.full((len(lengths), max(lengths)), spec.pad_token_id, dtype=np.int64)
    attention_mask = np.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, :length - 1] = rng.choice(ordinary, length - 1)
        input_ids[row, length - 1] = 0
        attention_mask[row, :length] = 1
    return input_ids, attention_mask


def cache_array(state, name):
    """Our array for an ONNX Runtime output name present.N.{decoder,encoder}.{key,value}."""
    _, layer, side, kind = name.split(".")
    store = state.cache if side == "decoder" else state.cross
    key, value = store.view(int(layer))
    return key if kind == "key" else value


def compare(model, onnx_dir, input_ids, attention_mask, n_steps, layouts=("split", "merged"), threads=None,
            factor=FACTOR):
    """Three engines on the same sources: ONNX Runtime running the export, our float32 engine and its float64
    evaluation (the arbiter). Each encodes independently; at every step all three are fed the token ONNX Runtime
    chose, so a divergence cannot hide behind diverged inputs. -> Comparison, every output judged by the rule."""
    input_ids = check_ids(input_ids, "input_ids", model.spec)
    attention_mask = check_mask(attention_mask, input_ids)
    if n_steps < 1:
        raise ModelError(f"--steps must be at least 1, got {n_steps}")
    reference = RoundingReference(onnx_dir, threads) if model.quantized else OnnxReference(onnx_dir, threads=threads)
    exact_model = model.astype(np.float64)

    def ours_and_exact(run_ours, run_exact, ort_outputs):
        """-> (ours, exact, [quantizer Judgement], followed): on an int8 export both quantize as ONNX Runtime did
        in the run that gave `ort_outputs`, and its quantizer inputs are judged."""
        if not model.quantized:
            return run_ours(), run_exact(), [], 0
        quantizers = reference.quantizers(ort_outputs)
        with following(Follower(quantizers)) as ours_follower:
            ours = run_ours()
        with following(Follower(quantizers)) as exact_follower:
            exact = run_exact()
        return ours, exact, judge_quantizers(quantizers, exact_follower, ours_follower, factor), exact_follower.followed

    ort_hidden = reference.encode(input_ids, attention_mask)
    our_hidden, exact_hidden, quantizers, followed = ours_and_exact(
        lambda: model.encode(input_ids, attention_mask), lambda: exact_model.encode(input_ids, attention_mask),
        reference.last_outputs)
    comparison = Comparison(judge("encoder last_hidden_state", ort_hidden, exact_hidden, our_hidden, factor),
                            encoder_quantizers=quantizers, encoder_followed=followed)
    start = model.generation_config.get("decoder_start_token_id", model.config.get("decoder_start_token_id"))
    for layout in layouts:
        loop = reference.decoder(layout, ort_hidden, attention_mask)
        state = model.start(our_hidden, attention_mask, n_steps)
        exact_state = exact_model.start(exact_hidden, attention_mask, n_steps)
        tokens = np.full((input_ids.shape[0], 1), start, dtype=np.int64)
        for step in range(n_steps):
            comparison.fed.setdefault(layout, []).append(tokens)
            ort_logits, presents = loop.step(tokens)
            ours, exact, quantizers, followed = ours_and_exact(
                lambda: model.decode_step(state, tokens), lambda: exact_model.decode_step(exact_state, tokens),
                loop.last_outputs)
            outputs = [judge("logits", ort_logits, exact, ours, factor)]
            outputs += [judge(name, array, cache_array(exact_state, name), cache_array(state, name), factor)
                        for name, array in presents.items()]
            chosen = ort_logits[:, -1].argmax(axis=-1)
            band = outputs[0].threshold  # the logits' rounding band: two tokens closer than this may swap
            comparison.steps.append(StepReport(
                layout, step, outputs, token_verdict(chosen, exact[:, -1], band),
                token_verdict(ours[:, -1].argmax(axis=-1), exact[:, -1], band), quantizers, followed))
            tokens = chosen[:, None]
    return comparison


def summary(comparison):
    """A dict for --json: the verdict, the worst output, the encoder and every step's judgements (int8: and a
    summary of its quantizer inputs)."""
    layout, step, worst = comparison.worst()
    result = {
        "ok": comparison.ok,
        "rule": {"factor": comparison.encoder.factor,
                 "threshold": "factor * max(rms(ours - float64), 2**-24 * rms(float64))"},
        "worst": {"layout": layout, "step": step, **worst.as_dict()},
        "encoder": comparison.encoder.as_dict(),
        "near_ties": sum(r.tokens.count("near-tie") for r in comparison.steps),
        "tokens_differ": sum(r.tokens.count("differ") for r in comparison.steps),
        "steps": [{"layout": r.layout, "step": r.step, "ok": r.ok, "tokens": r.tokens, "our_tokens": r.our_tokens,
                   "outputs": [j.as_dict() for j in r.outputs]} for r in comparison.steps],
    }
    if comparison.encoder_quantizers:
        result["encoder_quantizers"] = _quantizers(comparison.encoder_quantizers, comparison.encoder_followed)
        for entry, report in zip(result["steps"], comparison.steps):
            entry["quantizers"] = _quantizers(report.quantizers, report.followed)
    return result


def _quantizers(judgements, followed):  # int8: how many quantizer inputs were judged, the worst, the flips taken
    return {"judged": len(judgements), "failing": sum(not j.ok for j in judgements),
            "worst": min(judgements, key=lambda j: j.margin).as_dict(), "flips": followed}
