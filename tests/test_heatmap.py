"""`minitransformer attention`: the heatmap PNG and its matrix, for the demo model and a T5 fixture."""
import json
import struct
import sys

import numpy as np
import pytest

import minitransformer as mt
from minitransformer.cli import DEMO_MODEL, main
from minitransformer.heatmap import piece_labeller

from conftest import FIXTURES

ATTENTION_TOLERANCE = 1e-5  # probabilities are bounded by 1: a relative bound, 100x the float32 softmax rounding


def png_size(path):  # -> (width, height) from the PNG signature and IHDR chunk
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG file"
    return struct.unpack(">II", data[16:24])


def run_json(capsys, *args):  # -> the envelope's fields with its one result's
    assert main(["attention", *args, "--json"]) == 0
    envelope = json.loads(capsys.readouterr().out)
    assert envelope["command"] == "attention" and len(envelope["results"]) == 1
    return {**envelope, **envelope["results"][0]}


def assert_the_models_own_attention(model, found, kind="cross", layer=-1, head="mean"):
    """Rows sum to 1, and the matrix is the model's attention during generate(), step by step."""
    matrix = np.array(found["matrix"])
    assert matrix.shape == (len(found["rows"]), len(found["columns"]))
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=ATTENTION_TOLERANCE)
    result = model.generate(np.array([found["input_ids"]]), None, return_dict_in_generate=True,
                            output_attentions=True)
    np.testing.assert_array_equal(result.sequences[0], found["output_ids"])
    steps = result.cross_attentions if kind == "cross" else result.decoder_attentions
    per_step = [step[layer][0, :, 0] for step in steps]   # each [n_head, n_k]: the query of that step
    for t, probs in enumerate(per_step):
        expected = probs.mean(axis=0) if head == "mean" else probs[head]
        np.testing.assert_allclose(matrix[t, :len(expected)], expected, atol=ATTENTION_TOLERANCE, rtol=0)
        assert (matrix[t, len(expected):] == 0).all()  # self-attention: no later key


def test_demo_heatmap_renders_and_shows_the_models_cross_attention(tmp_path, capsys):
    png = tmp_path / "demo.png"
    text = "three hundred forty-two thousand seven hundred"
    assert main(["attention", text, "--png", str(png)]) == 0
    assert "cross attention, layer 5, mean of 4 heads" in capsys.readouterr().out
    width, height = png_size(png)
    assert width >= 300 and height >= 200
    found = run_json(capsys, text)
    assert found["kind"] == "cross" and found["layer"] == 5 and found["head"] == "mean"
    assert found["columns"][0] == "▁three" and found["rows"][-1] == "</s>"
    assert_the_models_own_attention(mt.load(DEMO_MODEL), found)


@pytest.mark.parametrize("source,kind,head", [(["the house is big"], "cross", "mean"),
                                              (["--input-ids", "5 17 9 33 1"], "self", 1)])
def test_t5_heatmap_from_text_or_token_ids(tmp_path, capsys, source, kind, head):
    fixture = str(FIXTURES / "t5-v1")
    png = tmp_path / "t5.png"
    args = [*source, "--model", fixture, "--kind", kind, "--head", str(head), "--layer", "1"]
    assert main(["attention", *args, "--png", str(png)]) == 0
    assert f"t5-v1: {kind} attention, layer 1" in capsys.readouterr().out
    assert min(png_size(png)) > 0
    found = run_json(capsys, *args)
    model = mt.load(fixture)
    piece = piece_labeller(model.tokenizer)
    keys = found["input_ids"] if kind == "cross" else found["output_ids"][:-1]
    assert found["columns"] == [piece(t) for t in keys] and found["rows"] == [piece(t) for t in found["output_ids"][1:]]
    assert_the_models_own_attention(model, found, kind, layer=1, head=head)


def test_encoder_attention_is_square_over_the_source(capsys):
    found = run_json(capsys, "seven", "--kind", "encoder", "--layer", "0", "--head", "2")
    matrix = np.array(found["matrix"])
    assert found["rows"] == found["columns"] and matrix.shape == (len(found["rows"]),) * 2
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=ATTENTION_TOLERANCE)
    model = mt.load(DEMO_MODEL)
    source = np.array([found["input_ids"]])
    _, maps = model.forward(source, None, np.array([found["output_ids"][:-1]]), output_attentions=True)
    np.testing.assert_allclose(matrix, maps["encoder"][0][0, 2], atol=ATTENTION_TOLERANCE, rtol=0)


@pytest.mark.parametrize("args,message", [
    (["seven", "--layer", "6", "--json"], "--layer 6: the decoder has 6 layers"),
    (["seven", "--head", "4", "--json"], "--head 4: expected mean or a head index 0 to 3"),
    (["seven"], "give --png FILE"),
    (["--json"], "as text or as --input-ids (one of them)"),
    (["--model", str(FIXTURES / "marian-opus"), "seven", "--json"], "give the source as --input-ids"),
    (["seven", "--input-ids", "5 0", "--json"], "as text or as --input-ids (one of them)"),
])
def test_bad_requests_are_one_line_errors(capsys, args, message):
    assert main(["attention", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_matplotlib_is_a_one_line_error_saying_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["attention", "seven", "--png", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'minitransformer[plot]'" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing half-written
