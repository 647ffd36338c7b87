"""Step by step against ONNX Runtime, and against PyTorch's recorded outputs (the two oracles)."""
import numpy as np
import pytest

from minitransformer.cache import KVCache
from minitransformer.generate import resolve_settings
from minitransformer.reference import OnnxReference, reference_generate
from minitransformer.verify import LOGITS_TOLERANCE, PRESENT_TOLERANCE, compare

from conftest import MODEL_FIXTURES, record_worst

N_STEPS = 40


@pytest.mark.parametrize("layout", ["split", "merged"])
@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_every_step_matches_onnxruntime_logits_and_present(load_fixture, name, layout):
    model, path, torch_out = load_fixture(name)
    input_ids, attention_mask = torch_out["input_ids"], torch_out["attention_mask"]
    assert input_ids.shape[0] >= 3 and len(set(attention_mask.sum(1).tolist())) == input_ids.shape[0]
    encoder_delta, reports = compare(model, str(path), input_ids, attention_mask, N_STEPS, (layout,))
    assert len(reports) == N_STEPS
    record_worst(name, "encoder output vs ORT", encoder_delta)
    assert encoder_delta <= LOGITS_TOLERANCE
    for r in reports:
        record_worst(name, f"logits vs ORT ({layout})", r.max_abs_logits)
        record_worst(name, f"present vs ORT ({layout})", r.max_abs_present)
        assert r.max_abs_logits <= LOGITS_TOLERANCE, r
        assert r.max_abs_present <= PRESENT_TOLERANCE, r
        assert r.tokens_agree, r


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_teacher_forced_logits_match_pytorch(load_fixture, name):
    model, _, torch_out = load_fixture(name)
    logits = model.forward(torch_out["input_ids"], torch_out["attention_mask"], torch_out["decoder_input_ids"])
    assert logits.shape == torch_out["logits"].shape
    delta = np.abs(logits - torch_out["logits"]).max()
    record_worst(name, "teacher-forced logits vs PyTorch", delta)
    assert delta <= LOGITS_TOLERANCE


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_numba_kernel_and_numpy_reference_give_the_same_model(load_fixture, name):
    model, _, torch_out = load_fixture(name)
    inputs = torch_out["input_ids"], torch_out["attention_mask"], torch_out["decoder_input_ids"]
    with_numba = model.forward(*inputs)
    with_numpy, maps = model.forward(*inputs, output_attentions=True)
    # the two differ only in float32 summation order; held to the tolerance both oracles are held to
    delta = np.abs(with_numba - with_numpy).max()
    record_worst(name, "logits numba kernel vs numpy", delta)
    assert delta <= LOGITS_TOLERANCE
    assert len(maps["encoder"]) == model.spec.n_layer_encoder
    assert len(maps["decoder_self"]) == len(maps["decoder_cross"]) == model.spec.n_layer_decoder
    cross = maps["decoder_cross"][0]  # [n_batch, n_head, n_tgt, n_src]: padded source positions get no weight
    np.testing.assert_allclose(cross.sum(-1), 1.0, atol=1e-5)
    for row, mask in enumerate(torch_out["attention_mask"]):
        assert (cross[row][..., mask == 0] == 0).all()


@pytest.mark.parametrize("num_beams,recorded", [(1, "greedy_ids"), (4, "beam_ids")])
@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_generated_ids_match_pytorch_generate_and_the_onnxruntime_loop(load_fixture, name, num_beams, recorded):
    model, path, torch_out = load_fixture(name)
    input_ids, attention_mask = torch_out["input_ids"], torch_out["attention_mask"]
    max_new = torch_out["decoder_input_ids"].shape[1]
    ours = model.generate(input_ids, attention_mask, max_new_tokens=max_new, num_beams=num_beams)
    np.testing.assert_array_equal(ours, torch_out[recorded])
    settings = resolve_settings(model, {"max_new_tokens": max_new, "num_beams": num_beams})
    for layout in ("split", "merged"):
        reference = reference_generate(OnnxReference(str(path)), settings, input_ids, attention_mask, layout)
        np.testing.assert_array_equal(reference, ours)


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_the_fixture_decodes_long_and_varied_outputs(load_fixture, name):
    """A fixture that repeats one token checks little: one row runs 32 steps or more, every row is half distinct."""
    model, _, torch_out = load_fixture(name)
    pad = model.generation_config["pad_token_id"]
    generated = [row[1:][row[1:] != pad] for row in torch_out["greedy_ids"]]
    assert max(len(tokens) for tokens in generated) >= 32
    for tokens in generated:
        assert len(set(tokens.tolist())) >= len(tokens) / 2


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_skipping_the_cache_update_gives_different_ids(load_fixture, name, monkeypatch):
    """The old engine's bug: nothing carried between steps. The parity tests must be able to fail."""
    model, _, torch_out = load_fixture(name)
    max_new = torch_out["decoder_input_ids"].shape[1]
    # the old engine's bug: the step's K/V never carried over, so every step decodes as if it were the first
    monkeypatch.setattr(KVCache, "commit", lambda self, n_tgt: None)
    broken = model.generate(torch_out["input_ids"], torch_out["attention_mask"], max_new_tokens=max_new, num_beams=1)
    assert broken.shape != torch_out["greedy_ids"].shape or (broken != torch_out["greedy_ids"]).any()
