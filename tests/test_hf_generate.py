"""generate() against Hugging Face generate(), recorded per fixture and setting by tools/record_generate.py.

Ids and beam indices must be identical. Scores and sequences_scores are judged by the verdict rule: HF's float32
values and ours each against a float64 evaluation of the same weights, each with the other as the rounding
yardstick; a token barred (-inf) must be barred in both. Attention probabilities are bounded by 1, so an absolute
1e-5 is a relative bound: float32 softmax rows over <= 64 keys carry ~1e-7 rounding, 100x below it.
Sampled ids cannot match HF's (torch draws differently): the warpers are checked on HF's own draws instead, by
replaying HF's sampled sequences through our processors and warpers and comparing the scores.
"""
import dataclasses
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from minitransformer.generate import (GenerateBeamEncoderDecoderOutput, GenerateEncoderDecoderOutput, replay_scores,
                                      transition_scores)
from minitransformer.verdict import judge

from conftest import FIXTURES, MODEL_FIXTURES, record_judgement, record_worst

ATTENTION_TOLERANCE = 1e-5
OURS = {"GenerateEncoderDecoderOutput": GenerateEncoderDecoderOutput,
        "GenerateBeamEncoderDecoderOutput": GenerateBeamEncoderDecoderOutput}


def recorded(name):
    path = FIXTURES / name
    return json.loads((path / "hf_generate.json").read_text()), load_file(str(path / "hf_generate.safetensors"))


def cases(name):
    return list(json.loads((FIXTURES / name / "hf_generate.json").read_text())["cases"])


CASES = [(name, case) for name in MODEL_FIXTURES for case in cases(name)]


def assert_scores_match(theirs, ours, exact, where):
    """The same tokens barred; the finite scores judged by the verdict rule both ways round."""
    assert theirs.shape == ours.shape == exact.shape, f"{where}: {theirs.shape} {ours.shape} {exact.shape}"
    barred = np.isneginf(theirs)
    np.testing.assert_array_equal(np.isneginf(ours), barred, err_msg=f"{where}: barred tokens differ")
    np.testing.assert_array_equal(np.isneginf(exact), barred, err_msg=f"{where}: float64 bars other tokens")
    judgement = judge(where, theirs[~barred], exact[~barred], ours[~barred])
    assert judgement.ok and judgement.swapped().ok, f"{where}: {judgement}"
    return judgement


@pytest.mark.parametrize("name,case", CASES)
def test_generate_matches_hugging_face(load_fixture, load_exact, name, case):
    model = load_fixture(name)[0]
    meta, hf = recorded(name)
    spec = meta["cases"][case]
    kwargs, prefix = dict(spec["kwargs"]), f"{case}."
    inputs = load_file(str(FIXTURES / name / "torch_outputs.safetensors"))
    source = inputs["input_ids"], inputs["attention_mask"]
    output = dict(return_dict_in_generate=True, output_scores=True)
    if kwargs.get("do_sample"):
        # HF's own draws, replayed through our processors and warpers, in float32 and float64
        sequences = hf[prefix + "sequences"]
        ours = replay_scores(model, *source, sequences, **kwargs)
        exact = replay_scores(load_exact(name), *source, sequences, **kwargs)
        judgement = assert_scores_match(hf[prefix + "scores"], ours, exact, f"{name} {case} scores")
        record_judgement(name, "sampling scores vs HF", judgement)
        sampled = model.generate(*source, **kwargs, **output, seed=0)
        assert sampled.sequences.shape[0] == sequences.shape[0]  # num_return_sequences rows per source
        new = sampled.sequences[:, 1:]                                   # [n_rows, n_new]
        eos = model.generation_config["eos_token_id"]
        alive = np.cumsum(new == eos, axis=1) - (new == eos) == 0        # up to and including each row's eos
        for step, (scores, tokens) in enumerate(zip(sampled.scores, new.T)):
            drawn = scores[np.arange(len(tokens)), tokens]               # every draw is a token the warpers kept
            assert np.isfinite(drawn[alive[:, step]]).all(), f"step {step}: a barred token was drawn"
        return
    result = model.generate(*source, **kwargs, **output)
    assert type(result).__name__ == spec["class_name"]
    np.testing.assert_array_equal(result.sequences, hf[prefix + "sequences"], err_msg=f"{name} {case} ids")
    if "beam_indices" in spec["fields"]:
        np.testing.assert_array_equal(result.beam_indices, hf[prefix + "beam_indices"])
    exact = load_exact(name).generate(*source, **kwargs, **output)
    np.testing.assert_array_equal(exact.sequences, result.sequences, err_msg="float64 takes another path")
    if "scores" in spec["fields"]:
        judgement = assert_scores_match(hf[prefix + "scores"], np.stack(result.scores), np.stack(exact.scores),
                                        f"{name} {case} scores")
        record_judgement(name, "scores vs HF", judgement)
    if "logits" in spec["fields"]:
        judgement = assert_scores_match(hf[prefix + "logits"], np.stack(result.logits), np.stack(exact.logits),
                                        f"{name} {case} logits")
        record_judgement(name, "raw logits vs HF", judgement)
    if "transition_scores" in spec["fields"]:
        judgement = assert_scores_match(hf[prefix + "transition_scores"], transition_scores(result),
                                        transition_scores(exact), f"{name} {case} transition scores")
        record_judgement(name, "transition scores vs HF", judgement)
    if "sequences_scores" in spec["fields"]:
        judgement = judge(f"{name} {case} sequences_scores", hf[prefix + "sequences_scores"], exact.sequences_scores,
                          result.sequences_scores)
        assert judgement.ok and judgement.swapped().ok, judgement
        record_judgement(name, "sequences_scores vs HF", judgement)
    if "encoder_attentions" in spec["fields"]:
        assert_attentions_match(result, hf, prefix, name)


def assert_attentions_match(result, hf, prefix, name):
    """Encoder [n_layer] and per step [n_layer] decoder and cross attentions, shapes and values."""
    attentions = {"encoder_attentions": np.stack(result.encoder_attentions),
                  "cross_attentions": np.stack([np.stack(step) for step in result.cross_attentions])}
    n_steps = len(result.decoder_attentions)
    assert f"{prefix}decoder_attentions.{n_steps}" not in hf and n_steps == len(hf[prefix + "scores"])
    for step, layers in enumerate(result.decoder_attentions):
        attentions[f"decoder_attentions.{step}"] = np.stack(layers)
    for key, ours in attentions.items():
        theirs = hf[prefix + key]
        assert ours.shape == theirs.shape, f"{key}: {ours.shape} != HF {theirs.shape}"
        delta = float(np.abs(ours - theirs).max())
        record_worst(name, "attention probabilities vs HF", delta)
        assert delta <= ATTENTION_TOLERANCE, f"{key}: max |Δ| {delta}"


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_result_objects_have_hf_fields_in_hf_order(name):
    meta, _ = recorded(name)
    for class_name, fields in meta["result_fields"].items():
        assert [f.name for f in dataclasses.fields(OURS[class_name])] == fields


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_settings_that_change_nothing_are_not_recorded(name):
    """Each recorded greedy setting changed HF's ids or, where the fixture gives it nothing to act on (no repeated
    token for a repetition penalty), its scores: the recorder asserts it, and so does this test."""
    meta, hf = recorded(name)
    plain_ids, plain_scores = hf["greedy.sequences"], hf["greedy.scores"]
    for case, spec in meta["cases"].items():
        settings = set(spec["kwargs"]) - {"num_beams", "do_sample", "max_new_tokens", "output_attentions",
                                          "output_logits"}
        if spec["kwargs"].get("num_beams", 1) == 1 and not spec["kwargs"].get("do_sample") and settings:
            ids, scores = hf[f"{case}.sequences"], hf[f"{case}.scores"]
            same_ids = ids.shape == plain_ids.shape and (ids == plain_ids).all()
            assert not same_ids or not np.array_equal(scores, plain_scores), case
