"""Sampling repeats exactly for a seed (in this process and in a new one), top_k=1 is greedy, and batching changes
no result: a batch generates what its sources generate one at a time."""
import json
import subprocess
import sys

import numpy as np
import pytest

import minitransformer as mt
from minitransformer import ModelError

from conftest import FIXTURES, MODEL_FIXTURES

SAMPLE = dict(do_sample=True, num_beams=1, max_new_tokens=40, temperature=1.5, top_k=0)  # flat enough that draws vary


def _source(load_fixture, name):
    model, _, torch_out = load_fixture(name)
    return model, torch_out["input_ids"], torch_out["attention_mask"]


@pytest.mark.parametrize("name", ["marian-opus", "t5-v1"])
def test_a_seed_repeats_exactly_in_process_and_in_a_new_process(load_fixture, name):
    model, input_ids, attention_mask = _source(load_fixture, name)
    first = model.generate(input_ids, attention_mask, seed=7, num_return_sequences=2, **SAMPLE)
    again = model.generate(input_ids, attention_mask, seed=7, num_return_sequences=2, **SAMPLE)
    other = model.generate(input_ids, attention_mask, seed=8, num_return_sequences=2, **SAMPLE)
    np.testing.assert_array_equal(first, again)
    assert first.shape != other.shape or (first != other).any()  # the seed matters: this is sampling
    assert (first[0::2] != first[1::2]).any()  # two samples of one source differ
    script = (f"import json, numpy as np, minitransformer as mt\n"
              f"model = mt.load({str(FIXTURES / name)!r})\n"
              f"ids = model.generate(np.array({input_ids.tolist()}), np.array({attention_mask.tolist()}), seed=7, "
              f"num_return_sequences=2, **{SAMPLE!r})\n"
              f"print(json.dumps(ids.tolist()))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    np.testing.assert_array_equal(np.array(json.loads(result.stdout)), first)


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_sampling_with_top_k_1_is_greedy(load_fixture, name):
    model, input_ids, attention_mask = _source(load_fixture, name)
    greedy = model.generate(input_ids, attention_mask, max_new_tokens=40, num_beams=1)
    sampled = model.generate(input_ids, attention_mask, max_new_tokens=40, num_beams=1, do_sample=True, top_k=1,
                             temperature=2.0, seed=3)
    np.testing.assert_array_equal(sampled, greedy)


@pytest.mark.parametrize("num_beams", [1, 4])
@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_a_batch_generates_what_its_sources_generate_one_at_a_time(load_fixture, name, num_beams):
    model, input_ids, attention_mask = _source(load_fixture, name)
    batched = model.generate(input_ids, attention_mask, max_new_tokens=40, num_beams=num_beams)
    pad = model.generation_config.get("pad_token_id", model.spec.pad_token_id)
    if num_beams > 1 and not pad:  # HF's beam search fills with `pad_token_id or eos_token_id` (T5: pad 0 -> eos)
        pad = model.generation_config["eos_token_id"]
    for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
        alone = model.generate(ids[mask == 1][None], None, max_new_tokens=40, num_beams=num_beams)[0]
        width = min(len(alone), batched.shape[1])
        np.testing.assert_array_equal(batched[row, :width], alone[:width], err_msg=f"row {row}")
        assert (batched[row, width:] == pad).all() and len(alone) <= batched.shape[1]


@pytest.mark.parametrize("settings,message", [
    (dict(do_sample=True, num_beams=2), "beam sampling"),
    (dict(num_beams=2, num_return_sequences=3), "exceeds num_beams"),
    (dict(num_return_sequences=2), "greedy search returns one sequence"),
    (dict(do_sample=True, temperature=0.0), "temperature must be a number above 0"),
    (dict(do_sample=True, top_p=1.5), "top_p must be a number in [0, 1]"),
    (dict(do_sample=True, top_k=-1), "top_k must be a non-negative integer"),
    (dict(do_sample=True, seed="x"), "seed must be a non-negative integer"),
    (dict(output_hidden_states=True), "output_hidden_states is not supported"),
])
def test_unsupported_or_bad_settings_are_refused_by_name(load_fixture, settings, message):
    model, input_ids, attention_mask = _source(load_fixture, "marian-untied")
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model.generate(input_ids, attention_mask, **{"max_new_tokens": 4, "num_beams": 1, **settings})


def test_without_return_dict_the_result_stays_the_ids_array(load_fixture):
    model, input_ids, attention_mask = _source(load_fixture, "marian-untied")
    ids = model.generate(input_ids, attention_mask, max_new_tokens=8, output_scores=True)
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int64
    result = model.generate(input_ids, attention_mask, max_new_tokens=8, return_dict_in_generate=True)
    np.testing.assert_array_equal(result.sequences, ids)
    assert result.scores is None and result.decoder_attentions is None


def test_mt_namespace_exports_the_model_loader():
    assert mt.load is not None
