"""What a new user meets in the first hour: help, errors, limits, JSON, the demo model's input domain."""
import json

import numpy as np
import pytest

import minitransformer.generate
import minitransformer.model
from minitransformer.cli import main

from conftest import FIXTURES


def _recorded_rows(torch_out, kind, eos, rows):
    """The recorded generate() rows `rows`, cut after their first eos (HF pads the batch beyond it)."""
    result = []
    for row in torch_out[f"{kind}_ids"][rows]:
        result.append(row[:1 + list(row[1:]).index(eos) + 1].tolist())
    return result


@pytest.mark.parametrize("name, rows", [("t5-v1", [1, 2]), ("m2m100-tiny", [0, 1, 2]), ("marian-opus", [1, 2])])
@pytest.mark.parametrize("kind, beams", [("greedy", "1"), ("beam", "4")])
def test_a_huge_max_new_tokens_stops_at_eos(name, rows, kind, beams, load_fixture, capsys):
    """10^9 new tokens allowed, with no position table (T5, M2M100) or with one (Marian, 128 positions): the rows
    that end in eos within PyTorch's 40 recorded tokens end there, as in HF."""
    model, path, torch_out = load_fixture(name)
    flags = []
    for row in rows:
        ids, mask = torch_out["input_ids"][row], torch_out["attention_mask"][row]
        flags += ["--input-ids", " ".join(map(str, ids[mask == 1]))]
    assert main(["generate", str(path), *flags, "--max-new-tokens", "1000000000", "--num-beams", beams, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["output_ids"] for r in results] == _recorded_rows(torch_out, kind, model.config["eos_token_id"], rows)


@pytest.mark.parametrize("name", ["marian-opus", "t5-v1", "mbart-tiny"])
def test_growing_the_cache_from_one_slot_changes_no_token(name, load_fixture, monkeypatch):
    """The cache and the beam buffers start at one slot and double 6 times within 40 tokens: PyTorch's ids."""
    monkeypatch.setattr(minitransformer.model, "INITIAL_CACHE_LEN", 1)
    monkeypatch.setattr(minitransformer.generate, "INITIAL_WIDTH", 1)
    model, _, torch_out = load_fixture(name)
    for kind, beams in (("greedy", 1), ("beam", 4)):
        ids = model.generate(torch_out["input_ids"], torch_out["attention_mask"], max_new_tokens=40, num_beams=beams)
        np.testing.assert_array_equal(ids, torch_out[f"{kind}_ids"])
