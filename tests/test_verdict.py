"""The verdict rule itself: what it accepts, and altered exports it must flag by a wide margin."""
import numpy as np
import pytest

import alter
from minitransformer.verdict import FACTOR, UNIT_ROUNDOFF, judge, token_verdict
from minitransformer.verify import compare

from conftest import record_worst


def test_the_threshold_scales_with_our_rounding_and_never_drops_below_storing_the_values():
    rng = np.random.default_rng(0)
    exact = rng.normal(0, 30, 1000)                                     # loud values
    ours = exact + rng.normal(0, 1e-5, exact.shape)                      # our float32 rounding
    theirs = exact + rng.normal(0, 3e-5, exact.shape)                    # 3x ours: still rounding
    j = judge("logits", theirs.astype(np.float32), exact, ours.astype(np.float32))
    assert j.ok and j.threshold == pytest.approx(FACTOR * j.yardstick) and j.margin == pytest.approx(FACTOR / 3, 0.1)
    exact_copy = judge("logits", exact.astype(np.float32), exact, exact)  # ours exact: the floor holds
    assert exact_copy.threshold == pytest.approx(FACTOR * UNIT_ROUNDOFF * 30, rel=0.05) and exact_copy.ok


def test_a_systematic_error_fails_and_a_wrong_shape_is_infinitely_far():
    rng = np.random.default_rng(1)
    exact = rng.normal(0, 1, (3, 96))
    ours = exact + rng.normal(0, 1e-7, exact.shape)
    assert not judge("logits", exact * (1 + 1e-4), exact, ours).ok    # a 1e-4 scale error: 1000x the rounding
    wrong = judge("present.0.decoder.key", exact[:, :95], exact, ours)
    assert not wrong.ok and wrong.deviation == float("inf")


def test_a_token_differing_within_the_rounding_band_is_a_near_tie():
    exact = np.array([[0.0, 5.0, 5.0 - 1e-6, 1.0], [0.0, 5.0, 4.0, 1.0]])
    assert token_verdict(np.array([1, 1]), exact, band=1e-5) == ["same", "same"]
    assert token_verdict(np.array([2, 2]), exact, band=1e-5) == ["near-tie", "differ"]


ALTERED = {  # fixture, alteration, the least factor by which the worst output must exceed the threshold
    "epsilon 1e-5 -> 1e-3 in one layer of decoder_with_past_model.onnx": (
        "marian-opus", lambda d: alter.set_epsilon(
            d / "decoder_with_past_model.onnx", "/model/decoder/layers.3/final_layer_norm/LayerNormalization", 1e-3),
        10),
    "encoder attention scale x 1.02": (
        "marian-opus", lambda d: alter.scale_constant_operand(d / "encoder_model.onnx", "/layers.2/self_attn/Mul", 1.02),
        10),
    "a constant in the merged decoder's with-past branch only": (
        "marian-opus", lambda d: alter.scale_constant_operand(
            d / "decoder_model_merged.onnx", "/model/decoder/layers.1/self_attn/Mul", 1.02, branch="with_past"),
        10),
    "T5 RMS-norm epsilon 1e-6 -> 1e-3 in one layer of decoder_with_past_model.onnx": (
        "t5-v1", lambda d: alter.scale_constant_operand(
            d / "decoder_with_past_model.onnx", "/decoder/block.1/layer.2/layer_norm/Add", 1000), 1),
    "pre-norm (mBART) epsilon 1e-5 -> 1e-3 in one layer of decoder_with_past_model.onnx": (
        "mbart-tiny", lambda d: alter.set_epsilon(
            d / "decoder_with_past_model.onnx", "/model/decoder/layers.1/final_layer_norm/LayerNormalization", 1e-3),
        1),
    "BART encoder attention scale x 1.02": (
        "bart-tiny", lambda d: alter.scale_constant_operand(d / "encoder_model.onnx", "/layers.1/self_attn/Mul", 1.02),
        10),
}


@pytest.mark.parametrize("what", ALTERED)
def test_every_altered_export_fails_the_rule(load_fixture, fixture_copy, what):
    name, change, least_excess = ALTERED[what]
    model, _, torch_out = load_fixture(name)
    target = fixture_copy(name)
    change(target)
    comparison = compare(model, str(target), torch_out["input_ids"], torch_out["attention_mask"], 40)
    _, _, worst = comparison.worst()
    excess = worst.deviation / worst.threshold
    record_worst(name, f"altered, worst dev / threshold: {what[:30]}", excess)
    assert not comparison.ok
    assert excess >= least_excess, f"{what}: exceeds the threshold only {excess:.1f}x ({worst})"


def test_the_loud_fixture_breaks_fixed_absolute_tolerances(load_fixture):
    """marian-loud: logits beyond 30 and large keys and values. The old fixed limit (1e-5 on the cache) fails on
    this clean export, while the rule passes it (test_parity runs it like every fixture)."""
    model, path, torch_out = load_fixture("marian-loud")
    assert np.abs(torch_out["logits"]).max() >= 30
    from minitransformer.reference import OnnxReference
    input_ids, attention_mask = torch_out["input_ids"], torch_out["attention_mask"]
    reference = OnnxReference(str(path))
    loop = reference.decoder("split", reference.encode(input_ids, attention_mask), attention_mask)
    state = model.start(model.encode(input_ids, attention_mask), attention_mask, 40)
    tokens = torch_out["greedy_ids"][:, :1]
    worst_present = 0.0
    for step in range(40):
        _, presents = loop.step(tokens)
        model.decode_step(state, tokens)
        keys = [(int(name.split(".")[1]), array) for name, array in presents.items() if name.endswith("decoder.key")]
        worst_present = max([worst_present] + [float(np.abs(state.cache.view(i)[0] - a).max()) for i, a in keys])
        tokens = torch_out["greedy_ids"][:, step + 1:step + 2]
    record_worst("marian-loud", "max |Δ present.*.decoder.key| vs ORT", worst_present)
    assert worst_present > 1e-5
