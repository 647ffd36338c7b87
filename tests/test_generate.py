"""Search helpers: top-k selection and the logits processors, against their plain definitions."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from minitransformer.generate import Settings, process_logits, warp
from minitransformer.kernels import top_k

from conftest import FIXTURES


def test_top_k_equals_a_stable_full_sort_ties_infinities_and_nan_included():
    rng = np.random.default_rng(0)
    for case in range(60):
        n = int(rng.integers(1, 300))  # whole blocks of kernels.TOP_K_BLOCK and a remainder
        k = min(n, 8) if case % 2 else int(rng.integers(1, n + 1))
        scores = rng.integers(-5, 5, size=(3, n)).astype(np.float32)  # many ties
        scores[0, :50] = -np.inf
        for value, share in ((np.nan, 0.2 * (case % 3 == 0)), (np.inf, 0.05 * (case % 4 == 0))):
            scores[rng.random(scores.shape) < share] = value
        values, index = top_k(scores, k)
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # NaN last, ties in index order
        np.testing.assert_array_equal(index, expected)
        np.testing.assert_array_equal(values, np.take_along_axis(scores, expected, axis=1))


def test_processors_ban_repeat_ngrams_bad_words_and_force_bos_then_eos():
    s = Settings(max_length=6, num_beams=1, decoder_start_token_id=0, eos_token_ids=[2], pad_token_id=1,
                 bad_words_ids=[[7], [3, 4]], no_repeat_ngram_size=2, forced_bos_token_id=5, forced_eos_token_id=[2],
                 min_length=4)
    scores = np.zeros((1, 10), dtype=np.float32)
    first = process_logits(np.array([[0]]), scores, s)
    assert first.argmax() == 5 and np.isinf(first).sum() == 9                  # forced bos at step 1
    later = process_logits(np.array([[0, 5, 3]]), scores, s)
    assert np.isneginf(later[0, [7, 4, 2]]).all() and np.isfinite(later[0, [3, 6]]).all()  # bad words, min length
    repeat = process_logits(np.array([[0, 5, 6, 5]]), scores, s)
    assert np.isneginf(repeat[0, 6]) and np.isfinite(repeat[0, 8])           # "5 6" was seen: no second 6 after 5
    last = process_logits(np.array([[0, 5, 6, 8, 9]]), scores, s)
    assert last.argmax() == 2 and np.isinf(last).sum() == 9                  # forced eos at max_length - 1


WARPERS = json.loads((FIXTURES / "hf_warpers.json").read_text())["cases"]


@pytest.mark.parametrize("case", sorted(WARPERS))
def test_warpers_equal_hugging_face_on_their_edges(case):
    """HF's TemperatureLogitsWarper, TopKLogitsWarper and TopPLogitsWarper, recorded on ties at the k-th score,
    cumulative probabilities exactly at 1 - top_p, top_p 0 and barred tokens (tools/record_generate.py)."""
    recorded = load_file(str(FIXTURES / "hf_warpers.safetensors"))
    settings = Settings(max_length=2, num_beams=1, decoder_start_token_id=0, eos_token_ids=[], pad_token_id=0,
                        do_sample=True, **{"top_k": 0, **WARPERS[case]})
    ours = warp(recorded[f"{case}.input"], settings)
    np.testing.assert_array_equal(ours, recorded[f"{case}.output"])  # a mask and one float32 division: exact


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_stops_at_whichever_of_several_eos_ids_comes(load_fixture, num_beams):
    """eos_token_id as a list: a hypothesis ends at the first token that is any of its ids. The oracle is the run
    that never stops (its only eos id never produced): greedy search ends right after its first token in the list,
    in either order of the list; beam search stops there early too, the same whatever the order."""
    model = load_fixture("marian-opus")[0]
    ids = np.array([[5, 9, 14, 3, 0]])
    free = model.generate(ids, max_new_tokens=12, num_beams=num_beams, eos_token_id=[1])[0]  # 1: the pad, never made
    assert 1 not in free[1:]
    stop = int(free[5])
    ends = [model.generate(ids, max_new_tokens=12, num_beams=num_beams, eos_token_id=eos)[0]
            for eos in ([1, stop], [stop, 1])]
    np.testing.assert_array_equal(ends[0], ends[1])
    if num_beams == 1:
        np.testing.assert_array_equal(ends[0], free[:list(free[1:]).index(stop) + 2])
    else:
        assert len(ends[0]) < len(free) and ends[0][-1] == stop and stop not in ends[0][1:-1]
