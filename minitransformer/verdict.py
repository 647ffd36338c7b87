"""The verdict rule: is a float32 result right? Judged against a float64 evaluation of the same weights.

A float32 engine computing a correct graph differs from the float64 evaluation only by rounding. That rounding
is not a fixed number: it grows with the values' magnitude, with the reduction lengths, and with how much the
network amplifies an error on the way (the conditioning). Our own float32 engine computes the same function
from the same weights, so its deviation from float64 on the same inputs measures exactly that rounding, with
all three effects included. The rule therefore compares two deviations from the float64 evaluation:

    deviation = rms(candidate - exact)          the engine under test (ONNX Runtime running the export)
    yardstick = rms(ours - exact)               our float32 engine, a known-correct computation of the graph
    threshold = FACTOR * max(yardstick, UNIT_ROUNDOFF * rms(exact))
    right    <=>  deviation <= threshold,       margin = threshold / deviation

The RMS over the whole tensor, not the largest element: rounding errors are many small, nearly independent
terms, so their RMS is stable from run to run, while the largest element is one draw from a heavy tail. A
systematic error (a wrong constant, a wrong weight) moves most elements coherently and shows up in the RMS.
The floor UNIT_ROUNDOFF * rms(exact) is the error of merely storing the exact values in float32: no float32
engine can do better, so a yardstick that happens to be smaller than it does not make the rule stricter.

FACTOR is calibrated on the fixtures (README, "The verdict rule"): on clean exports ONNX Runtime's deviation
over ours stayed below FACTOR / 10 at every step, output and layout, and every altered export in the tests
exceeds FACTOR times our deviation by another 10x.
"""
from dataclasses import asdict, dataclass

import numpy as np

UNIT_ROUNDOFF = 2.0 ** -24  # float32: half the distance from 1 to the next float
FACTOR = 50.0


def rms(x):  # any array -> float, computed in float64
    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def threshold(rounding, scale, factor=FACTOR, roundings=1):
    """factor * max(rounding, roundings * UNIT_ROUNDOFF * scale): the rounding measured, never below storing the
    values (`roundings` > 1: a value whose every element shares that many roundings, such as a dequantized
    product's scale, which one evaluation may happen to get almost exact)."""
    return factor * max(rounding, roundings * UNIT_ROUNDOFF * scale)


@dataclass
class Judgement:
    """One output judged by the rule; the figures are RMS over the output's elements."""
    name: str
    deviation: float   # the candidate's rms distance from the float64 evaluation
    yardstick: float   # our float32 engine's rms distance from it: the rounding any engine has here
    threshold: float   # factor * max(yardstick, UNIT_ROUNDOFF * scale)
    scale: float       # rms of the float64 values themselves
    factor: float = FACTOR
    roundings: int = 1  # the floor: roundings * UNIT_ROUNDOFF * scale

    @property
    def margin(self):  # threshold / deviation: >= 1 passes, >= 10 is the calibrated safety
        return self.threshold / self.deviation if self.deviation > 0 else float("inf")

    @property
    def ok(self):
        return self.deviation <= self.threshold

    def swapped(self):
        """Our engine judged with the candidate as the yardstick: is ours within the rounding the other one has?"""
        return Judgement(self.name, self.yardstick, self.deviation,
                         threshold(self.deviation, self.scale, self.factor, self.roundings), self.scale, self.factor,
                         self.roundings)

    def as_dict(self):  # for JSON, which has no infinity: an infinite figure (a shape mismatch) becomes None
        figures = {**asdict(self), "margin": self.margin}
        return {**{k: v if np.isfinite(v) else None for k, v in figures.items() if k != "name"},
                "name": self.name, "ok": self.ok}


def judge(name, candidate, exact, yardstick, factor=FACTOR, roundings=1):
    """Judge `candidate` (float32) against `exact` (float64), with `yardstick` (another float32 computation of the
    same values) measuring the rounding. Arrays of different shapes are infinitely far apart."""
    exact = np.asarray(exact, dtype=np.float64)
    if np.shape(candidate) != exact.shape or np.shape(yardstick) != exact.shape:
        return Judgement(name, float("inf"), float("inf"), 0.0, float("nan"), factor, roundings)
    rounding, scale = rms(np.asarray(yardstick, np.float64) - exact), rms(exact)
    return Judgement(name, rms(np.asarray(candidate, np.float64) - exact), rounding,
                     threshold(rounding, scale, factor, roundings), scale, factor, roundings)


def token_verdict(chosen, exact_logits, band):
    """Per row: "same" when `chosen` is the float64 argmax, "near-tie" when it differs but its float64 logit is
    within `band` of the best one (rounding may swap such tokens), else "differ".

    chosen [n_batch] token ids; exact_logits [n_batch, n_vocab] float64; band: an absolute logit difference."""
    best = exact_logits.argmax(axis=-1)
    rows = np.arange(len(chosen))
    gap = exact_logits[rows, best] - exact_logits[rows, chosen]
    return ["same" if c == b else "near-tie" if g <= band else "differ" for c, b, g in zip(chosen, best, gap)]
