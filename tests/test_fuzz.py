"""Mutated exports (initializers and nodes dropped, duplicated, reshaped, retyped, renamed; bytes corrupted;
config.json and generation_config.json values broken) are refused with ModelError or run correctly; no other exception escapes.

The normal run tries a short seeded sample; `pytest -m slow tests/test_fuzz.py` runs 10,000 cases.
"""
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

import minitransformer as mt

from conftest import FIXTURES, MARIAN_FIXTURES

NAME = MARIAN_FIXTURES[0]
GRAPHS = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx")
GRAPH_MUTATIONS = ("drop_initializer", "duplicate_initializer", "reshape_initializer", "retype_initializer",
                   "rename_initializer", "rename_node", "drop_node", "corrupt_bytes", "truncate")
CONFIG_MUTATIONS = ("drop_key", "retype_value", "shift_value")


@lru_cache(maxsize=None)
def _original(file_name):
    return (FIXTURES / NAME / file_name).read_bytes()


def mutate_graph(data, kind, rng):
    """One mutation of a serialized graph -> bytes."""
    if kind == "corrupt_bytes":
        damaged = bytearray(data)
        for at in rng.integers(0, len(damaged), size=int(rng.integers(1, 16))):
            damaged[at] = int(rng.integers(0, 256))
        return bytes(damaged)
    if kind == "truncate":
        return data[: int(rng.integers(0, len(data)))]
    model = onnx.load_from_string(data)
    inits, nodes = model.graph.initializer, model.graph.node
    init = inits[int(rng.integers(len(inits)))]
    node = nodes[int(rng.integers(len(nodes)))]
    if kind == "drop_initializer":
        inits.remove(init)
    elif kind == "duplicate_initializer":
        inits.append(init)
    elif kind == "reshape_initializer":
        value = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(value.reshape(-1)[: max(1, value.size - 1)].copy(), init.name))
    elif kind == "retype_initializer":
        value = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(value.astype(rng.choice([np.float64, np.int32, np.float16])), init.name))
    elif kind == "rename_initializer":
        init.name = init.name + "_renamed"
    elif kind == "rename_node":
        node.name = node.name.replace("/", "|")[::-1] if rng.integers(2) else "/other" + node.name
    elif kind == "drop_node":
        nodes.remove(node)
    return model.SerializeToString()


def mutate_config(config, kind, rng):
    keys = sorted(config)
    key = keys[int(rng.integers(len(keys)))]
    if kind == "drop_key":
        del config[key]
    elif kind == "retype_value":
        config[key] = [None, "x", -1, 0.5, [], {}, True][int(rng.integers(7))]
    elif kind == "shift_value" and isinstance(config[key], int) and not isinstance(config[key], bool):
        config[key] += int(rng.choice([-2, -1, 1, 3]))
    return json.dumps(config).encode()


def check_case(target_file, kind, seed):
    """Load the mutated export and decode two tokens: only ModelError may escape."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        for name in GRAPHS + ("config.json", "generation_config.json"):
            os.symlink(FIXTURES / NAME / name, Path(tmp) / name)
        os.remove(Path(tmp) / target_file)
        if target_file.endswith(".json"):
            mutated = mutate_config(json.loads(_original(target_file)), kind, rng)
        else:
            mutated = mutate_graph(_original(target_file), kind, rng)
        (Path(tmp) / target_file).write_bytes(mutated)
        try:
            model = mt.load(tmp)
            model.generate(np.array([[5, 6, 0]]), max_new_tokens=2, num_beams=1)
        except mt.ModelError as e:
            assert str(e)


case = st.one_of(
    st.tuples(st.sampled_from(GRAPHS), st.sampled_from(GRAPH_MUTATIONS), st.integers(0, 2**32 - 1)),
    st.tuples(st.sampled_from(["config.json", "generation_config.json"]), st.sampled_from(CONFIG_MUTATIONS),
              st.integers(0, 2**32 - 1)),
)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(case)
def test_fuzz_short(args):
    check_case(*args)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(case)
def test_fuzz_long(args):
    check_case(*args)
