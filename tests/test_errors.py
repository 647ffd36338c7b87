"""Bad input gets one clear line naming the file, tensor or argument, exit status 2; nothing half-written."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minitransformer as mt
from minitransformer.cache import KVCache
from minitransformer.cli import main

from conftest import FIXTURES, MARIAN_FIXTURES

NAME = MARIAN_FIXTURES[0]


def run_cli(capsys, *args):
    """-> (exit status, the one stderr line)."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def expect_error(capsys, pattern, *args):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, *args)
    assert exit_info.value.code == 2
    assert re.search(pattern, capsys.readouterr().err)


def assert_refused(capsys, pattern, *args):
    code, line = run_cli(capsys, *args)
    assert code == 2, line
    assert line.startswith("minitransformer: error: ") and re.search(pattern, line), line


def generate_args(model_dir, *ids):
    return ["generate", model_dir, *[a for row in ids for a in ("--input-ids", row)], "--max-new-tokens", "3"]


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


# --- the export directory -------------------------------------------------------------------------------------------

def test_missing_encoder_graph(fixture_copy, capsys):
    target = fixture_copy(NAME)
    os.remove(target / "encoder_model.onnx")
    assert_refused(capsys, r"encoder_model\.onnx: file not found", *generate_args(target, "5 0"))


def test_no_decoder_graph(fixture_copy, capsys):
    target = fixture_copy(NAME)
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx"):
        os.remove(target / name)
    assert_refused(capsys, r"no decoder graph found", *generate_args(target, "5 0"))


def test_extra_graph_file(fixture_copy, capsys):
    target = fixture_copy(NAME)
    (target / "model.onnx").write_bytes((target / "decoder_model.onnx").read_bytes())
    assert_refused(capsys, r"model\.onnx: unexpected graph file", *generate_args(target, "5 0"))


def test_not_a_model_directory(tmp_path, capsys):
    assert_refused(capsys, r"neither model\.safetensors nor an ONNX export", *generate_args(tmp_path, "5 0"))
    assert_refused(capsys, r"not a directory", *generate_args(tmp_path / "absent", "5 0"))


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_damaged_onnx_file(fixture_copy, capsys, damage):
    target = fixture_copy(NAME)
    path = target / "decoder_with_past_model.onnx"
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "random bytes": np.random.default_rng(0).bytes(5000),
               "empty": b""}[damage]
    path.write_bytes(damaged)
    assert_refused(capsys, r"decoder_with_past_model\.onnx: ", *generate_args(target, "5 0"))


def test_unknown_model_family(fixture_copy, capsys):
    target = fixture_copy(NAME)
    edit_config(target, model_type="whisper")
    assert_refused(capsys, r"config\.json: model_type 'whisper' is not supported", *generate_args(target, "5 0"))


def test_graph_of_another_family_than_config_says(fixture_copy, capsys):
    """A Marian export whose config.json claims BART: BART's layernorm_embedding is nowhere in the graphs."""
    target = fixture_copy(NAME)
    edit_config(target, model_type="bart")
    assert_refused(capsys, r"missing tensor\(s\) .*layernorm_embedding.*is this an optimum export of the bart model",
                   *generate_args(target, "5 0"))


def test_graph_from_another_exporter(fixture_copy, capsys):
    """Node names without optimum's module scopes: the anonymous weights cannot be named, and we say so."""
    import onnx
    target = fixture_copy(NAME)
    for path in target.glob("*.onnx"):
        model = onnx.load(str(path))
        for i, node in enumerate(model.graph.node):
            node.name = f"node_{i}"
        onnx.save(model, str(path))
    assert_refused(capsys, r"missing tensor\(s\) .*q_proj\.weight.*is this an optimum export",
                   *generate_args(target, "5 0"))


@pytest.mark.parametrize("key,delta,pattern", [
    ("d_model", "heads", r"got \[\d+(, \d+)?\], expected \[\d+(, \d+)?\]"),
    ("vocab_size", 1, r"got \[\d+, \d+\], expected \[\d+, \d+\]"),
    ("decoder_layers", -1, r"(present\.\d+\.decoder\.key but config\.json says decoder_layers|does not use)"),
    ("encoder_layers", 1, r"missing tensor\(s\) model\.encoder\.layers\.\d+\."),
])
def test_config_that_disagrees_with_the_graph(fixture_copy, capsys, key, delta, pattern):
    target = fixture_copy(NAME)
    config = json.loads((target / "config.json").read_text())
    delta = config["encoder_attention_heads"] if delta == "heads" else delta  # keeps d_model divisible
    changes = {key: config[key] + delta}
    if key == "vocab_size":
        changes["decoder_vocab_size"] = config[key] + delta
    edit_config(target, **changes)
    assert_refused(capsys, pattern, *generate_args(target, "5 0"))


def test_config_with_other_head_count_than_the_graph(fixture_copy, capsys):
    target = fixture_copy(NAME)
    config = json.loads((target / "config.json").read_text())
    other = next(h for h in range(config["decoder_attention_heads"] + 1, config["d_model"] + 1)
                 if config["d_model"] % h == 0)
    edit_config(target, encoder_attention_heads=other, decoder_attention_heads=other)
    assert_refused(capsys, r"present\.0\.decoder\.key has shape .* expected \[batch, \d+ heads",
                   *generate_args(target, "5 0"))


def test_tensor_with_the_wrong_shape_in_an_extracted_dir(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["extract", str(FIXTURES / NAME), str(out)]) == 0
    tensors = load_file(str(out / "model.safetensors"))
    tensors["model.decoder.layers.1.fc1.bias"] = tensors["model.decoder.layers.1.fc1.bias"][:-1].copy()
    save_file(tensors, str(out / "model.safetensors"))
    assert_refused(capsys, r"model\.safetensors: tensor model\.decoder\.layers\.1\.fc1\.bias: got \[\d+\], "
                           r"expected \[\d+\]", *generate_args(out, "5 0"))


def test_corrupt_safetensors_and_config(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["extract", str(FIXTURES / NAME), str(out)]) == 0
    (out / "config.json").write_text("{not json")
    assert_refused(capsys, r"config\.json: not valid JSON", *generate_args(out, "5 0"))
    assert main(["extract", str(FIXTURES / NAME), str(out)]) == 0
    (out / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}")
    assert_refused(capsys, r"model\.safetensors: cannot read safetensors", *generate_args(out, "5 0"))


# --- inputs ---------------------------------------------------------------------------------------------------------

def test_input_ids_outside_the_vocabulary(capsys):
    vocab = json.loads((FIXTURES / NAME / "config.json").read_text())["vocab_size"]
    assert_refused(capsys, rf"input_ids: token id {vocab} is outside the vocabulary \[0, {vocab}\)",
                   *generate_args(FIXTURES / NAME, f"5 {vocab} 0"))
    assert_refused(capsys, r"input_ids: token id -3 is outside the vocabulary",
                   *generate_args(FIXTURES / NAME, "5 -3 0"))
    assert_refused(capsys, r"--input-ids 'five': expected whitespace-separated integer token ids",
                   *generate_args(FIXTURES / NAME, "five"))


def test_a_source_beyond_the_positions(capsys):
    """(A generation limit beyond them is fine: it stops at eos, tests/test_first_hour.py.)"""
    max_pos = json.loads((FIXTURES / NAME / "config.json").read_text())["max_position_embeddings"]
    assert_refused(capsys, rf"input_ids: {max_pos + 1} positions exceed the model's max_position_embeddings {max_pos}",
                   *generate_args(FIXTURES / NAME, " ".join(["5"] * (max_pos + 1))))


def test_empty_input_and_empty_batch(capsys, load_fixture):
    assert_refused(capsys, r"--input-ids: empty token id list", *generate_args(FIXTURES / NAME, "  "))
    model = load_fixture(NAME)[0]
    with pytest.raises(mt.ModelError, match=r"input_ids: expected a non-empty \[batch, length\] array"):
        model.generate(np.zeros((0, 4), dtype=np.int64))
    with pytest.raises(mt.ModelError, match=r"input_ids: expected a non-empty"):
        model.encode(np.zeros((2, 0), dtype=np.int64))
    with pytest.raises(mt.ModelError, match=r"attention_mask: row 1 masks every source token"):
        model.encode(np.array([[5, 0], [5, 0]]), np.array([[1, 1], [0, 0]]))
    with pytest.raises(mt.ModelError, match=r"attention_mask: expected only 0 and 1"):
        model.encode(np.array([[5, 0]]), np.array([[1, 2]]))


def test_bad_generation_settings(load_fixture):
    model = load_fixture(NAME)[0]
    with pytest.raises(mt.ModelError, match=r"generate: unknown setting\(s\) temprature"):
        model.generate(np.array([[5, 0]]), temprature=0.5)
    with pytest.raises(mt.ModelError, match=r"num_beams must be a positive integer"):
        model.generate(np.array([[5, 0]]), num_beams=0)
    with pytest.raises(mt.ModelError, match=r"do_sample with num_beams > 1 \(beam sampling\) is not supported"):
        model.generate(np.array([[5, 0]]), do_sample=True, num_beams=4)


@pytest.mark.parametrize("flags,pattern", [
    (["generate"], r"the following arguments are required"),
    (["generate", "DIR", "--input-ids", "5 0", "--max-new-tokens", "-2"], r"--max-new-tokens: expected a positive"),
    (["generate", "DIR", "--input-ids", "5 0", "--num-beams", "x"], r"--num-beams: expected a positive integer"),
    (["verify", "DIR", "--layout", "sideways"], r"--layout: invalid choice"),
    (["verify", "DIR", "--factor", "nan"], r"--factor: expected a finite number >= 1"),
    (["verify", "DIR", "--factor", "0.5"], r"--factor: expected a finite number >= 1"),
    (["frobnicate"], r"invalid choice: 'frobnicate'"),
])
def test_bad_cli_flags(capsys, flags, pattern):
    expect_error(capsys, pattern, *[str(FIXTURES / NAME) if f == "DIR" else f for f in flags])


# --- outputs and the cache ------------------------------------------------------------------------------------------

def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_refused(capsys, r"file/out: cannot create the output directory", "extract", FIXTURES / NAME, blocker / "out")


def test_a_failed_extract_leaves_the_previous_output_intact(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["extract", str(FIXTURES / NAME), str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("minitransformer.extract.json.dump", disk_full)
    assert_refused(capsys, r"out: cannot write \(No space left on device\)", "extract", FIXTURES / NAME, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging dir, no half-written file


def test_the_cache_grows_append_only_and_keeps_every_slot():
    cache = KVCache(n_layer=2, n_batch=1, n_head=2, capacity=3, d_head=4)
    rng = np.random.default_rng(0)
    written = []
    for n_tgt in (2, 1, 3, 1):  # 2 fits, 3 fills, 6 grows to 12, 7 fits
        k, v = rng.standard_normal((2, 1, 2, n_tgt, 4), dtype=np.float32)
        for layer in range(2):
            cache.append(layer, k, v)
        cache.commit(n_tgt)
        written.append((k, v))
    assert cache.n_past == 7 and cache.capacity == 12
    key, value = cache.view(1)
    np.testing.assert_array_equal(key, np.concatenate([k for k, _ in written], axis=2))
    np.testing.assert_array_equal(value, np.concatenate([v for _, v in written], axis=2))
    assert not cache.key[:, :, :, 7:].any()  # nothing written past what was committed


def test_a_table_position_limit_is_one_line(load_fixture):
    model = load_fixture(NAME)[0]
    n = model.spec.max_positions
    state = model.start(model.encode(np.array([[5, 0]])), None, 1)
    model.decode_step(state, np.full((1, n), 5))  # every position of the table
    with pytest.raises(mt.ModelError, match=rf"target positions: {n + 1} positions exceed the model's "
                                            rf"max_position_embeddings {n}"):
        model.decode_step(state, np.array([[6]]))


def test_no_pickle_anywhere():
    package = Path(mt.__file__).parent
    for path in list(package.glob("*.py")) + list((package.parent / "tools").glob("*.py")):
        text = path.read_text()
        assert not re.search(r"import pickle|allow_pickle=True|(?<![\w.])torch\.load\(", text), path
