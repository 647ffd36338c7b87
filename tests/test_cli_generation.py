"""The generation flags of `generate` and `translate`: every returned sequence and its scores, as the API gives them."""
import json

import numpy as np

import minitransformer as mt
from minitransformer.cli import main
from minitransformer.generate import transition_scores

from conftest import FIXTURES

SOURCES = ["5 17 9 33 1", "7 21 1"]


def run(capsys, *args):
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_generate_json_carries_every_hypothesis_and_its_scores(capsys):
    fixture = str(FIXTURES / "t5-v1")
    flags = [a for s in SOURCES for a in ("--input-ids", s)]
    report = json.loads(run(capsys, "generate", fixture, *flags, "--num-beams", "4", "--num-return-sequences", "3",
                            "--output-scores", "--max-new-tokens", "12", "--json"))
    model = mt.load(fixture)
    result = model.generate(*model_inputs(model), num_beams=4, num_return_sequences=3, max_new_tokens=12,
                            return_dict_in_generate=True, output_scores=True)
    expected_scores = transition_scores(result)
    for n, entry in enumerate(report["results"]):
        assert len(entry["hypotheses"]) == 3 and entry["output_ids"] == entry["hypotheses"][0]["output_ids"]
        for k, hypothesis in enumerate(entry["hypotheses"]):
            row = 3 * n + k
            ids = hypothesis["output_ids"]
            assert ids == result.sequences[row, :len(ids)].tolist()
            # the JSON carries scores rounded to 6 decimals (translate.py): at most 5e-7 from the engine's value
            np.testing.assert_allclose(hypothesis["token_scores"], expected_scores[row, :len(ids) - 1], atol=1e-6)
            np.testing.assert_allclose(hypothesis["sequence_score"], result.sequences_scores[row], atol=1e-6)
    lines = run(capsys, "generate", fixture, *flags, "--num-beams", "4", "--num-return-sequences", "3",
                "--output-scores", "--max-new-tokens", "12").splitlines()
    assert len(lines) == 6 and all("\t" in line and " | " in line for line in lines)


def model_inputs(model):
    from minitransformer.tokenizer import pad_rows
    return pad_rows([[int(t) for t in s.split()] for s in SOURCES], model.spec.pad_token_id)


def test_generate_samples_repeat_with_a_seed_and_differ_without(capsys):
    fixture = str(FIXTURES / "marian-opus")
    args = ["generate", fixture, "--input-ids", "5 17 9 33 0", "--do-sample", "--temperature", "2", "--top-k", "0",
            "--num-return-sequences", "4", "--max-new-tokens", "20"]
    first = run(capsys, *args, "--seed", "3")
    assert run(capsys, *args, "--seed", "3") == first and len(first.splitlines()) == 4
    assert run(capsys, *args, "--seed", "4") != first
    model = mt.load(fixture)
    ids = model.generate(np.array([[5, 17, 9, 33, 0]]), None, do_sample=True, num_beams=1, temperature=2.0, top_k=0,
                         num_return_sequences=4, max_new_tokens=20, seed=3)
    eos = model.generation_config["eos_token_id"]
    lines = [[int(t) for t in line.split()] for line in first.splitlines()]
    for line, row in zip(lines, ids.tolist()):
        assert line == row[:len(line)] and (line[-1] == eos or len(line) == len(row))


def test_translate_prints_each_hypothesis_and_json_lists_them(capsys):
    text = "three hundred forty-two"
    lines = run(capsys, "translate", text, "--num-beams", "4", "--num-return-sequences", "2").splitlines()
    assert len(lines) == 2 and lines[0] == "dreihundertzweiundvierzig" and lines[1] != lines[0]
    report = json.loads(run(capsys, "translate", text, "--num-beams", "4", "--num-return-sequences", "2",
                            "--output-scores", "--json"))
    entry = report["results"][0]
    assert [h["translation"] for h in entry["hypotheses"]] == lines and entry["translation"] == lines[0]
    first, second = entry["hypotheses"]
    assert first["sequence_score"] >= second["sequence_score"]
    assert len(first["token_scores"]) == len(first["output_ids"]) - 1
