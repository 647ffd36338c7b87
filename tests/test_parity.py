"""Step by step against ONNX Runtime, and against PyTorch's recorded outputs, each judged by the verdict rule
against a float64 evaluation of the same weights (minitransformer.verdict)."""
import numpy as np
import pytest

from minitransformer.cache import KVCache
from minitransformer.generate import resolve_settings
from minitransformer.reference import OnnxReference, reference_generate
from minitransformer.verdict import UNIT_ROUNDOFF, judge
from minitransformer.verify import compare, default_sources

from conftest import MODEL_FIXTURES, record_judgement

N_STEPS = 40


def assert_judged_right(judgement, where):
    """The candidate within the rule, and our engine within the rule judged the other way round."""
    assert judgement.ok, f"{where}: {judgement}"
    assert judgement.swapped().ok, f"{where}, our engine judged against the other one's rounding: {judgement}"


@pytest.mark.parametrize("layout", ["split", "merged"])
@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_every_step_matches_onnxruntime_logits_and_present(load_fixture, name, layout):
    """ONNX Runtime (the export's accuracy) and our float32 engine (the engine's own accuracy) both within the
    float32 rounding of the float64 evaluation, at every step, for the logits and every present.*."""
    model, path, torch_out = load_fixture(name)
    input_ids, attention_mask = torch_out["input_ids"], torch_out["attention_mask"]
    assert input_ids.shape[0] >= 3 and len(set(attention_mask.sum(1).tolist())) == input_ids.shape[0]
    comparison = compare(model, str(path), input_ids, attention_mask, N_STEPS, (layout,))
    assert len(comparison.steps) == N_STEPS
    n_present = 4 * model.spec.n_layer_decoder
    for _, step, judgement in comparison.judgements():
        record_judgement(name, "encoder" if step is None else f"{judgement.name.split('.')[0]} ({layout})",
                         judgement)
        assert_judged_right(judgement, f"{layout} step {step}")
    for r in comparison.steps:
        assert len(r.outputs) == 1 + n_present
        assert "differ" not in r.tokens and "differ" not in r.our_tokens, r


@pytest.mark.parametrize("name", [n for n in MODEL_FIXTURES if n.startswith(("marian", "bart", "mbart"))])
def test_a_source_near_max_position_embeddings_passes_the_rule(load_fixture, name):
    """A source as long as the position table allows, and enough steps to reach deep positions in the decoder."""
    model, path, _ = load_fixture(name)
    n_src = model.spec.max_positions
    input_ids, attention_mask = default_sources(model.spec, n_batch=1)
    rng = np.random.default_rng(1)
    input_ids = np.concatenate([rng.integers(2, model.spec.n_vocab - 1, (1, n_src - 1)), input_ids[:, -1:] * 0 +
                                model.generation_config.get("eos_token_id", 0)], axis=1)
    comparison = compare(model, str(path), input_ids, np.ones_like(input_ids), 12, ("split",))
    for _, step, judgement in comparison.judgements():
        record_judgement(name, "long source", judgement)
        assert_judged_right(judgement, f"long source, step {step}")


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_teacher_forced_logits_match_pytorch(load_fixture, load_exact, name):
    model, _, torch_out = load_fixture(name)
    inputs = torch_out["input_ids"], torch_out["attention_mask"], torch_out["decoder_input_ids"]
    judgement = judge("teacher-forced logits", torch_out["logits"], load_exact(name).forward(*inputs),
                      model.forward(*inputs))
    record_judgement(name, "PyTorch logits", judgement)
    assert_judged_right(judgement, "PyTorch's recorded logits")


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_numba_kernel_and_numpy_reference_give_the_same_model(load_fixture, load_exact, name):
    model, _, torch_out = load_fixture(name)
    inputs = torch_out["input_ids"], torch_out["attention_mask"], torch_out["decoder_input_ids"]
    with_numba = model.forward(*inputs)
    with_numpy, maps = model.forward(*inputs, output_attentions=True)
    # the two differ only in float32 summation order: each is judged with the other as the rounding yardstick
    assert_judged_right(judge("logits", with_numba, load_exact(name).forward(*inputs), with_numpy), "numba kernel")
    assert len(maps["encoder"]) == model.spec.n_layer_encoder
    assert len(maps["decoder_self"]) == len(maps["decoder_cross"]) == model.spec.n_layer_decoder
    cross = maps["decoder_cross"][0]  # [n_batch, n_head, n_tgt, n_src]: padded source positions get no weight
    # probabilities summed over at most n_src terms in [0, 1]: n_src roundings of at most 1, times a 10x margin
    assert np.abs(cross.sum(-1) - 1.0).max() <= 10 * cross.shape[-1] * UNIT_ROUNDOFF
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
