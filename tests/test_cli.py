"""The command line: extract, generate and verify, with their exit statuses."""
import json

import numpy as np
import onnx
import pytest

from minitransformer.cli import main

from conftest import FIXTURES, MARIAN_FIXTURES, MODEL_FIXTURES


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_verify_exits_0_on_the_fixture(name, capsys):
    """The default batch, 40 steps, both layouts: the verdict rule passes every output of a clean export."""
    assert main(["verify", str(FIXTURES / name), "--steps", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.endswith("same") for line in lines) == 80 and lines[-1].startswith("OK: worst output ")
    assert main(["verify", str(FIXTURES / name), "--steps", "40", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and len(report["results"]) == 80 and report["worst"]["margin"] >= 1


def test_verify_exits_1_when_the_graph_computes_something_else(fixture_copy, capsys):
    """An export whose decoder graphs use another LayerNorm epsilon: same weights, different math."""
    target = fixture_copy(MARIAN_FIXTURES[0])
    for file_name in ("decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx"):
        model = onnx.load(str(target / file_name))
        graphs = [model.graph] + [a.g for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
        for graph in graphs:
            for node in graph.node:
                if node.op_type == "LayerNormalization" and "layers.0/final_layer_norm" in node.name:
                    next(a for a in node.attribute if a.name == "epsilon").f = 0.5
        onnx.save(model, str(target / file_name))
    assert main(["verify", str(target), "--steps", "4", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["worst"]["margin"] < 0.1


def test_extract_then_generate_from_the_extracted_dir(tmp_path, capsys, load_fixture):
    name = MARIAN_FIXTURES[0]
    assert main(["extract", str(FIXTURES / name), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()
    capsys.readouterr()
    model, _, torch_out = load_fixture(name)
    rows = [ids[mask == 1] for ids, mask in zip(torch_out["input_ids"], torch_out["attention_mask"])]
    flags = [arg for row in rows for arg in ("--input-ids", " ".join(map(str, row)))]
    assert main(["generate", str(tmp_path / "out"), *flags, "--max-new-tokens", "40", "--num-beams", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    pad = model.spec.pad_token_id  # HF pads finished rows after eos; generate prints each row without that padding
    expected = [np.trim_zeros(row - pad, "b") + pad for row in torch_out["greedy_ids"]]
    assert [r["output_ids"] for r in result["results"]] == [row.tolist() for row in expected]
    assert [r["input_ids"] for r in result["results"]] == [row.tolist() for row in rows]
    assert main(["generate", str(tmp_path / "out"), *flags, "--max-new-tokens", "40", "--num-beams", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [list(map(int, line.split())) for line in lines] == [row.tolist() for row in expected]
