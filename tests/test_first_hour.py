"""What a new user meets in the first hour: help, errors, limits, JSON, the demo model's input domain."""
import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minitransformer.generate
import minitransformer.model
from minitransformer.cli import DEMO_MODEL, build_parser, main

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


def test_help_imports_nothing_heavy():
    """`minitransformer --help` imports the CLI and argparse only: numba, onnx, numpy and the tokenizer libraries
    load with a command (measured: --help 0.2 s against 1.1-1.5 s before; the timing itself is no unit test)."""
    code = ("import sys; from minitransformer.cli import build_parser; build_parser().format_help(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'numba', 'onnx', 'onnxruntime', "
            "'sentencepiece', 'tokenizers', 'safetensors'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    result = subprocess.run([sys.executable, "-m", "minitransformer.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "translate" in result.stdout


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_has_help_that_shows_its_default():
    from minitransformer.verdict import FACTOR
    for command, parser in _subparsers().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{command} {action.dest}: no help"
            help_text = parser.format_help()
            if action.option_strings and action.default not in (None, False):
                shown = action.help % {"default": action.default}
                value = "/".join(Path(action.default).parts[-2:]) if action.dest == "model" else str(action.default)
                assert "default: " in shown and value in shown, f"{command} {action.dest}: {shown}"
                assert " ".join(shown.split()) in " ".join(help_text.split())
    factor_help = next(a.help for a in _subparsers()["verify"]._actions if a.dest == "factor")
    assert f"verdict.FACTOR, {FACTOR:g}" in factor_help  # the default spelled out agrees with the code


@pytest.mark.parametrize("argv", [["translate", "--num-beams", "0", "twelve"], ["verify"], ["nope"],
                                  ["generate", "x", "--input-ids", "1", "--bogus"]])
def test_every_usage_error_has_the_same_prefix(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("minitransformer: error: ")


def test_generate_translate_and_verify_print_one_envelope(load_fixture, capsys):
    path = str(FIXTURES / "t5-v1")
    runs = {"generate": ["generate", path, "--input-ids", "5 6 1", "--max-new-tokens", "3", "--json"],
            "translate": ["translate", "--model", path, "Hello", "--max-new-tokens", "3", "--json"],
            "verify": ["verify", path, "--steps", "2", "--layout", "split", "--json"]}
    for command, argv in runs.items():
        assert main(argv) == 0
        result = json.loads(capsys.readouterr().out)
        assert list(result)[:2] == ["command", "model"] and list(result)[-1] == "results", command
        assert result["command"] == command and result["model"] == {"dir": path, "loaded": "ONNX graphs"}
        assert isinstance(result["results"], list) and result["results"]


def test_translate_output_ids_do_not_depend_on_the_batch(capsys):
    """Each row's ids are PyTorch's recorded generate() ids for that number (train_demo.py), alone or in a batch
    with longer sentences, unpadded."""
    with open(Path(DEMO_MODEL) / "heldout_torch_greedy.tsv", encoding="utf-8") as f:
        by_length = {len(r["ids"].split()): r for r in csv.DictReader(f, delimiter="\t")}
    records = [by_length[n] for n in sorted(by_length)][:6]
    with open(Path(DEMO_MODEL) / "heldout.tsv", encoding="utf-8") as f:
        english = {r["number"]: r["english"] for r in csv.DictReader(f, delimiter="\t")}
    expected = [list(map(int, r["ids"].split())) for r in records]
    sources = [english[r["number"]] for r in records]
    assert len({len(ids) for ids in expected}) > 1  # rows of different lengths: a batch pads the shorter ones
    assert main(["translate", *sources, "--json"]) == 0
    assert [r["output_ids"] for r in json.loads(capsys.readouterr().out)["results"]] == expected
    for source, ids in zip(sources, expected):
        assert main(["translate", source, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["results"][0]["output_ids"] == ids


def test_demo_input_is_normalised_as_its_training_data_was_written(capsys):
    with open(Path(DEMO_MODEL) / "heldout.tsv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if "-" in r["english"] and " " in r["english"]][:3]
    messy = ["  " + r["english"].upper().replace(" ", "   ").replace("-", " - ") + " " for r in rows]
    assert main(["translate", *messy]) == 0
    assert capsys.readouterr().out.splitlines() == [r["german"] for r in rows]


@pytest.mark.parametrize("text, word", [("342", "342"), ("three hundred and two", "and"),
                                        ("forty-two, please", "two,"), ("zwölf", "zwölf")])
def test_demo_input_outside_its_vocabulary_is_refused(text, word, capsys):
    assert main(["translate", "twelve", text]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"minitransformer: error: {word!r}") and "English number words from 0 to 999,999" in err
    assert "\n" not in err


@pytest.mark.parametrize("argument", ["weights/nope", "tests/fixtures/t5-v1", "./twelve"])
def test_a_path_like_argument_is_an_error_not_a_sentence(argument, capsys):
    assert main(["translate", argument, "twelve"]) == 2
    assert capsys.readouterr().err.startswith(f"minitransformer: error: {argument}: looks like a path, not a "
                                              f"sentence; name the model with --model DIR")


def test_a_missing_model_dir_is_named(capsys):
    assert main(["translate", "--model", "weights/nope", "twelve"]) == 2
    assert capsys.readouterr().err.strip() == "minitransformer: error: weights/nope: not a directory"


def test_verify_on_an_extracted_dir_asks_for_the_export(tmp_path, capsys):
    assert main(["extract", str(FIXTURES / "t5-v1"), str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "encoder_model.onnx: file not found (an extracted directory: name the export to compare with, " \
           "--onnx ONNX_DIR)" in err
    assert main(["verify", str(tmp_path / "out"), "--onnx", str(FIXTURES / "t5-v1"), "--steps", "2"]) == 0


def test_extract_into_the_export_itself_is_refused(fixture_copy, capsys):
    source = fixture_copy("t5-v1")
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    for out in (source, source / "." / ".." / source.name):
        assert main(["extract", str(source), str(out)]) == 2
        assert "the output directory is the export itself" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_a_dir_with_weights_and_graphs_says_which_it_loaded(fixture_copy, capsys):
    both = fixture_copy("t5-v1")
    assert main(["extract", str(both), str(both / "x")]) == 0
    for path in (both / "x").iterdir():
        path.rename(both / path.name)  # model.safetensors beside the ONNX graphs
    capsys.readouterr()
    assert main(["generate", str(both), "--input-ids", "5 1", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().err == (f"minitransformer: note: {both} holds model.safetensors and ONNX graphs; "
                                       f"loaded model.safetensors\n")


def test_the_shipped_manifest_names_no_machine_path():
    manifest = json.loads((Path(DEMO_MODEL) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["source"] == "numbers-en-de"


def test_the_readme_states_python_versions_domain_and_outputs():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    lowest = re.search(r'requires-python = ">=(3\.\d+)"', pyproject).group(1)
    assert f"Python {lowest} or newer" in readme
    domain = json.loads((Path(DEMO_MODEL) / "input_domain.json").read_text(encoding="utf-8"))
    assert "0 to 999,999" in domain["description"] and "0 to 999,999" in readme and 'no "and"' in readme
    prints = readme[readme.index("## What each command prints"):]
    for command in _subparsers():
        assert f"`{command}`" in prints, command
    assert '"command"' in readme and '"results"' in readme  # the --json envelope
    assert "input_ids, attention_mask = model.tokenizer.encode_batch(" in readme  # where input_ids come from
