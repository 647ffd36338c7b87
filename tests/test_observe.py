"""The one observer: every module boundary, in execution order, under the family's names, at no cost to the numbers."""
import json

import numpy as np
import pytest

from minitransformer.observe import Observer, Recorder

from conftest import FIXTURES, MODEL_FIXTURES


def _boundaries_per_layer(stack):
    """Outputs one layer shows: each attention sublayer and its norm, the feed-forward and its norm."""
    return 2 * (2 if stack == "decoder" else 1) + 2


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_observer_sees_every_boundary_once_and_changes_no_number(load_fixture, name):
    model, _, torch_out = load_fixture(name)
    inputs = torch_out["input_ids"], torch_out["attention_mask"], torch_out["decoder_input_ids"]
    spec = model.spec
    recorder = Recorder(probs=False)
    observed = model.forward(*inputs, observer=recorder)
    np.testing.assert_array_equal(observed, model.forward(*inputs))  # the kernel and every number unchanged
    assert all(len(values) == 1 for values in recorder.outputs.values())  # one call, each name once
    per_stack = {stack: 1 + spec.layernorm_embedding + spec.final_layer_norm
                 + n_layer * _boundaries_per_layer(stack)
                 for stack, n_layer in (("encoder", spec.n_layer_encoder), ("decoder", spec.n_layer_decoder))}
    assert len(recorder.order) == per_stack["encoder"] + per_stack["decoder"] + 1  # + lm_head
    assert recorder.order[-1] == ("output", "lm_head")
    np.testing.assert_array_equal(recorder.outputs["lm_head"][0], observed)
    assert not recorder.attentions


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_attention_probabilities_are_observed_per_module_and_make_the_same_model(load_fixture, name):
    model, _, torch_out = load_fixture(name)
    inputs = torch_out["input_ids"], torch_out["attention_mask"], torch_out["decoder_input_ids"]
    recorder = Recorder(probs=True, keep_outputs=False)
    logits, maps = model.forward(*inputs, output_attentions=True, observer=recorder)
    spec = model.spec
    assert len(recorder.attentions) == spec.n_layer_encoder + 2 * spec.n_layer_decoder
    for probs in recorder.attentions.values():
        np.testing.assert_allclose(probs[0].sum(-1), 1.0, rtol=1e-6)  # float32 sums of <= 64 terms in [0, 1]
    n_src, n_tgt = inputs[0].shape[1], inputs[2].shape[1]
    assert maps["encoder"][0].shape == (3, spec.n_head_encoder, n_src, n_src)
    assert maps["decoder_self"][-1].shape == (3, spec.n_head_decoder, n_tgt, n_tgt)
    assert maps["decoder_cross"][-1].shape == (3, spec.n_head_decoder, n_tgt, n_src)
    assert np.triu(maps["decoder_self"][0][0, 0], k=1).max() == 0.0  # causal: no later key is seen


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_every_observed_name_is_a_module_of_the_hugging_face_model(load_fixture, name):
    """The names come from HF's own model: named_modules() of the fixture, recorded by tools/record_generate.py."""
    model, _, torch_out = load_fixture(name)
    hf_modules = set(json.loads((FIXTURES / name / "hf_generate.json").read_text())["hf_modules"])
    names = []

    class Names(Observer):
        wants_probs = True

        def output(self, module, value):
            names.append(module)

        def probs(self, module, probs):
            names.append(module)

    model.forward(torch_out["input_ids"], torch_out["attention_mask"], torch_out["decoder_input_ids"],
                  observer=Names())
    assert set(names) <= hf_modules, sorted(set(names) - hf_modules)
