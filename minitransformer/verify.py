"""ONNX Runtime's loop, our float32 engine and its float64 evaluation side by side, step by step: every output
judged by the verdict rule (verdict.py).

The three engines encode the same sources independently and then decode the same tokens: at every step each
is fed the token ONNX Runtime chose, so a divergence cannot hide behind diverged inputs.
"""
from dataclasses import dataclass, field

import numpy as np

from .errors import ModelError
from .model import check_ids, check_mask
from .reference import OnnxReference
from .verdict import FACTOR, judge, token_verdict


@dataclass
class StepReport:
    """One decode step of one layout: every output judged by the rule, and the chosen tokens."""
    layout: str
    step: int
    outputs: list              # [Judgement]: logits first, then every present.N.{decoder,encoder}.{key,value}
    tokens: list               # per row, ONNX Runtime's chosen token against float64's: same / near-tie / differ
    our_tokens: list           # per row, our float32 engine's chosen token against float64's

    @property
    def logits(self):
        return self.outputs[0]

    @property
    def worst_present(self):
        return min(self.outputs[1:], key=lambda j: j.margin)

    @property
    def ok(self):
        return all(j.ok for j in self.outputs) and "differ" not in self.tokens


@dataclass
class Comparison:
    encoder: object            # Judgement of the encoder output (last_hidden_state)
    steps: list = field(default_factory=list)  # [StepReport] per layout and step
    fed: dict = field(default_factory=dict)    # {layout: [tokens [n_batch, 1] fed at each step]}

    @property
    def ok(self):
        return self.encoder.ok and all(r.ok for r in self.steps)

    def judgements(self):  # -> [(layout, step, Judgement)], the encoder's first (layout and step None)
        return [(None, None, self.encoder)] + [(r.layout, r.step, j) for r in self.steps for j in r.outputs]

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
    reference = OnnxReference(onnx_dir, threads=threads, quantized=model.quantized)
    exact_model = model.astype(np.float64)
    hidden = {"ort": reference.encode(input_ids, attention_mask), "ours": model.encode(input_ids, attention_mask),
              "exact": exact_model.encode(input_ids, attention_mask)}
    comparison = Comparison(judge("encoder last_hidden_state", hidden["ort"], hidden["exact"], hidden["ours"], factor))
    start = model.generation_config.get("decoder_start_token_id", model.config.get("decoder_start_token_id"))
    for layout in layouts:
        loop = reference.decoder(layout, hidden["ort"], attention_mask)
        state = model.start(hidden["ours"], attention_mask, n_steps)
        exact_state = exact_model.start(hidden["exact"], attention_mask, n_steps)
        tokens = np.full((input_ids.shape[0], 1), start, dtype=np.int64)
        for step in range(n_steps):
            comparison.fed.setdefault(layout, []).append(tokens)
            ort_logits, presents = loop.step(tokens)
            ours, exact = model.decode_step(state, tokens), exact_model.decode_step(exact_state, tokens)
            outputs = [judge("logits", ort_logits, exact, ours, factor)]
            outputs += [judge(name, array, cache_array(exact_state, name), cache_array(state, name), factor)
                        for name, array in presents.items()]
            chosen = ort_logits[:, -1].argmax(axis=-1)
            band = outputs[0].threshold  # the logits' rounding band: two tokens closer than this may swap
            comparison.steps.append(StepReport(
                layout, step, outputs, token_verdict(chosen, exact[:, -1], band),
                token_verdict(ours[:, -1].argmax(axis=-1), exact[:, -1], band)))
            tokens = chosen[:, None]
    return comparison


def summary(comparison):
    """A dict for --json: the verdict, the worst output, the encoder and every step's judgements."""
    layout, step, worst = comparison.worst()
    return {
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
