"""Extraction: canonical HF names, bit for bit equal to PyTorch's state_dict, whatever the graph's aliasing."""
import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from safetensors.numpy import load_file

import minitransformer as mt
import minitransformer.extract as extract_module
from minitransformer.extract import DECODER_FILES, TOKENIZER_FILES, extract, write_extracted
from minitransformer.families import spec_from_config, tie_groups
from minitransformer.ops import sinusoid_table
from minitransformer.weights import resolve_ties, to_canonical

from conftest import FIXTURES, MARIAN_FIXTURES, MODEL_FIXTURES


def _canonical(onnx_dir):
    """-> ({the family's canonical HF name: tensor}, tied names filled in as PyTorch's state_dict has them; manifest)"""
    config, _, tensors, manifest = extract(str(onnx_dir))
    return resolve_ties(to_canonical(tensors, spec_from_config(config)), tie_groups(config)), manifest


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_extraction_equals_pytorch_state_dict_bit_for_bit(name):
    tensors, manifest = _canonical(FIXTURES / name)
    state_dict = load_file(str(FIXTURES / name / "torch_state_dict.safetensors"))
    assert sorted(tensors) == sorted(state_dict)
    for key, expected in state_dict.items():
        got = tensors[key]
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        assert got.tobytes() == expected.tobytes(), key
    for entry in manifest["tensors"].values():
        assert entry["sources"] and all(s["file"] and s["initializer"] and s["node"] for s in entry["sources"])


@pytest.mark.parametrize("name", MARIAN_FIXTURES)
def test_marian_position_tables_are_the_sinusoids(name):
    tensors, _ = _canonical(FIXTURES / name)
    table = tensors["model.decoder.embed_positions.weight"]
    np.testing.assert_array_equal(table, sinusoid_table(*table.shape))


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_extracted_dir_loads_to_the_same_model(name, tmp_path):
    manifest = write_extracted(str(FIXTURES / name), str(tmp_path / "out"))
    tokenizer_files = [f for f in TOKENIZER_FILES if (FIXTURES / name / f).exists()]  # copied beside the weights
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["config.json", "generation_config.json", "manifest.json", "model.safetensors"] + tokenizer_files)
    assert manifest["source"] == name  # the directory's name, not this machine's path
    stored = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert not set(manifest["tied"]) & set(stored)  # a tied tensor is stored once, under its primary name
    from_onnx, from_dir = mt.load(str(FIXTURES / name)), mt.load(str(tmp_path / "out"))
    assert sorted(from_onnx.tensors) == sorted(from_dir.tensors)
    for key, value in from_onnx.tensors.items():
        assert value.tobytes() == from_dir.tensors[key].tobytes(), key
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["tensors"].keys() == manifest["tensors"].keys()


def _allocation(a):  # the array that owns a's memory
    while a.base is not None:
        a = a.base
    return a


@pytest.mark.parametrize("name", ["marian-opus", "bart-tiny", "flan-t5-tiny", "marian-opus-int8-channel"])
def test_encoder_weights_copied_into_one_block_are_the_same_model(name, monkeypatch):
    """With the block's bounds moved to the fixtures' sizes (BLOCK_MIN_BYTES 1 byte, where the fixtures' weights
    are below 64 KB; BLOCK_MAX_BYTES the largest encoder layer array's size), the encoder layers' arrays below the
    bound come from one allocation and those at it each from their own, the decoder's each from their own; the
    model holds the same bits and computes the same logits as without the block."""
    plain_model = mt.load(str(FIXTURES / name))
    block_max = max(a.nbytes for a in _arrays(plain_model.params["encoder"]["layers"]))
    _, _, plain, _ = extract(str(FIXTURES / name))
    monkeypatch.setattr(extract_module, "BLOCK_MIN_BYTES", 1)
    monkeypatch.setattr(extract_module, "BLOCK_MAX_BYTES", block_max)
    _, _, blocked, _ = extract(str(FIXTURES / name))
    assert sorted(plain) == sorted(blocked)
    for key, value in plain.items():
        assert value.tobytes() == blocked[key].tobytes() and value.dtype == blocked[key].dtype, key
    model = mt.load(str(FIXTURES / name))
    rng = np.random.default_rng(0)
    ids = rng.integers(3, model.spec.n_vocab - 1, size=(2, 7))
    target = rng.integers(3, model.spec.n_vocab - 1, size=(2, 5))
    assert np.array_equal(model.forward(ids, np.ones_like(ids), target),
                          plain_model.forward(ids, np.ones_like(ids), target))
    encoder = {id(a): a for a in _arrays(model.params["encoder"]["layers"]) if a.size}.values()
    in_block = {id(_allocation(a)) for a in encoder if a.nbytes < block_max}
    alone = [id(_allocation(a)) for a in encoder if a.nbytes >= block_max]
    decoder = [id(_allocation(a)) for a in {id(a): a for a in _arrays(model.params["decoder"]["layers"])}.values()]
    assert len(in_block) == 1 and alone and len(set(alone)) == len(alone) and not in_block & set(alone)
    assert len(set(decoder)) == len(decoder) > 1


def _arrays(node):  # the arrays in nested dicts and lists
    if isinstance(node, dict):
        return [a for value in node.values() for a in _arrays(value)]
    if isinstance(node, list):
        return [a for value in node for a in _arrays(value)]
    return [node] if isinstance(node, np.ndarray) else []


def _initializer_owner(model, name):
    return next(init for init in model.graph.initializer if init.name == name)


def _save(model, path):
    onnx.save(model, str(path))


def test_a_tensor_altered_in_one_decoder_file_is_refused_by_name(fixture_copy):
    target = fixture_copy(MARIAN_FIXTURES[0])
    path = target / "decoder_with_past_model.onnx"
    model = onnx.load(str(path))
    init = _initializer_owner(model, "model.decoder.layers.2.fc1.bias")
    value = numpy_helper.to_array(init).copy()
    value[3] += 1e-3
    init.CopyFrom(numpy_helper.from_array(value, init.name))
    _save(model, path)
    with pytest.raises(mt.ModelError, match=r"model\.decoder\.layers\.2\.fc1\.bias differs between "
                                            r"decoder_model\.onnx .* and decoder_with_past_model\.onnx"):
        extract(str(target))


def _alias_in_all_decoders(target, source_name, alias_name):
    """Make `alias_name` an Identity of `source_name` in every decoder graph, as value de-duplication does."""
    for file_name in DECODER_FILES:
        model = onnx.load(str(target / file_name))
        suffix = "_merged_0" if "merged" in file_name else ""
        inits = {i.name: i for i in model.graph.initializer}
        source, alias = inits[source_name + suffix], inits.pop(alias_name + suffix)
        source.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(alias), source.name))  # equal values
        model.graph.initializer.remove(alias)
        model.graph.node.insert(0, helper.make_node("Identity", [source.name], [alias.name], name="dedup"))
        _save(model, target / file_name)


def test_identity_aliases_from_value_deduplication_keep_the_consumers_names(fixture_copy):
    name = MARIAN_FIXTURES[0]
    target = fixture_copy(name)
    before, _ = _canonical(FIXTURES / name)
    _alias_in_all_decoders(target, "model.decoder.layers.0.fc2.bias", "model.decoder.layers.1.fc2.bias")
    after, manifest = _canonical(target)
    np.testing.assert_array_equal(after["model.decoder.layers.0.fc2.bias"], before["model.decoder.layers.1.fc2.bias"])
    np.testing.assert_array_equal(after["model.decoder.layers.1.fc2.bias"], before["model.decoder.layers.1.fc2.bias"])
    sources = manifest["tensors"]["model.decoder.layers.1.fc2.bias"]["sources"]
    assert {s["initializer"] for s in sources} == {"model.decoder.layers.0.fc2.bias",
                                                   "model.decoder.layers.0.fc2.bias_merged_0"}
    assert {s["node"] for s in sources} == {"/model/decoder/layers.1/fc2/Add"}


def test_tied_head_read_through_transpose_or_as_a_transposed_copy_extracts_the_same(fixture_copy):
    """optimum writes the tied lm_head either as Transpose(model.shared.weight) or as an anonymous copy."""
    name = next(n for n in MARIAN_FIXTURES if tie_groups(json.loads((FIXTURES / n / "config.json").read_text()))
                and "lm_head.weight" in tie_groups(json.loads((FIXTURES / n / "config.json").read_text()))[0])
    target = fixture_copy(name)
    before, _ = _canonical(FIXTURES / name)
    for file_name in DECODER_FILES:
        model = onnx.load(str(target / file_name))
        nodes = [n for n in model.graph.node if n.op_type == "Transpose"]
        inits = {i.name: i for i in model.graph.initializer}
        for node in nodes:  # Transpose(init) -> a precomputed transposed initializer under the node's output name
            if node.input[0] in inits:
                value = numpy_helper.to_array(inits[node.input[0]]).T.copy()
                model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                model.graph.node.remove(node)
        _save(model, target / file_name)
    after, manifest = _canonical(target)
    assert after["lm_head.weight"].tobytes() == before["lm_head.weight"].tobytes()
    assert manifest["tensors"]["lm_head.weight"]["sources"][0]["node"] == "/lm_head/MatMul"
