"""Our engine and the ONNX Runtime loop side by side, step by step: where and by how much they differ.

Both engines encode the same sources independently and then decode the same tokens: at every step
each is fed the token ONNX Runtime chose, so a divergence cannot hide behind diverged inputs.
"""
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ModelError
from .model import check_ids, check_mask
from .reference import OnnxReference

LOGITS_TOLERANCE = 1e-4
PRESENT_TOLERANCE = 1e-5


@dataclass
class StepReport:
    layout: str
    step: int
    max_abs_logits: float
    max_abs_present: float       # over every present.N.{decoder,encoder}.{key,value}
    worst_present: str           # the present.* output where that maximum is
    tokens_agree: bool           # our argmax equals ONNX Runtime's in every row

    def within(self, logits_tolerance, present_tolerance):
        return (self.max_abs_logits <= logits_tolerance and self.max_abs_present <= present_tolerance
                and self.tokens_agree)


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


def _ours(state, name):
    """Our array for an ONNX Runtime output name present.N.{decoder,encoder}.{key,value}."""
    _, layer, side, kind = name.split(".")
    store = state.cache if side == "decoder" else state.cross
    key, value = store.view(int(layer))
    return key if kind == "key" else value


def _max_abs_delta(ours, theirs):
    """max |ours - theirs|; arrays of different shapes are infinitely far apart."""
    return float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else float("inf")


def compare(model, onnx_dir, input_ids, attention_mask, n_steps, layouts=("split", "merged"), threads=None):
    """-> (max |Δ| of the encoder output, [StepReport per layout and step])."""
    input_ids = check_ids(input_ids, "input_ids", model.spec)
    attention_mask = check_mask(attention_mask, input_ids)
    if n_steps < 1:
        raise ModelError(f"--steps must be at least 1, got {n_steps}")
    reference = OnnxReference(onnx_dir, threads=threads)
    ours_hidden = model.encode(input_ids, attention_mask)
    ref_hidden = reference.encode(input_ids, attention_mask)
    encoder_delta = float(np.abs(ours_hidden - ref_hidden).max())
    start = model.generation_config.get("decoder_start_token_id", model.config.get("decoder_start_token_id"))
    reports = []
    for layout in layouts:
        loop = reference.decoder(layout, ref_hidden, attention_mask)
        state = model.start(ours_hidden, attention_mask, n_steps)
        tokens = np.full((input_ids.shape[0], 1), start, dtype=np.int64)
        for step in range(n_steps):
            ref_logits, presents = loop.step(tokens)
            our_logits = model.decode_step(state, tokens)
            deltas = {name: _max_abs_delta(_ours(state, name), array) for name, array in presents.items()}
            worst = max(deltas, key=deltas.get)
            ref_next = ref_logits[:, -1].argmax(axis=-1)
            reports.append(StepReport(layout, step, float(np.abs(our_logits - ref_logits).max()), deltas[worst], worst,
                                      bool((our_logits[:, -1].argmax(axis=-1) == ref_next).all())))
            tokens = ref_next[:, None]
    return encoder_delta, reports


def summary(encoder_delta, reports, logits_tolerance=LOGITS_TOLERANCE, present_tolerance=PRESENT_TOLERANCE):
    """A dict for --json: the worst figures and every step's (the encoder output is held to the logits tolerance)."""
    return {
        "ok": all(r.within(logits_tolerance, present_tolerance) for r in reports) and encoder_delta <= logits_tolerance,
        "encoder_max_abs": encoder_delta,
        "max_abs_logits": max(r.max_abs_logits for r in reports),
        "max_abs_present": max(r.max_abs_present for r in reports),
        "tokens_agree": all(r.tokens_agree for r in reports),
        "tolerances": {"logits": logits_tolerance, "present": present_tolerance},
        "steps": [asdict(r) for r in reports],
    }
