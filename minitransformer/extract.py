"""ONNX graphs as optimum writes them -> canonical Hugging Face weight names, plus a manifest.

Pure rules over the graph:
- a linear weight is an anonymous initializer (`onnx::MatMul_1573`) stored [in, out]; the consuming
  MatMul's name carries the module path (`/model/decoder/layers.0/fc1/MatMul` -> `...fc1.weight`) and
  the weight is transposed back to HF's [out, in];
- every other weight keeps its name where it is consumed; `Identity` nodes (the exporter's
  de-duplication by value) and a tied head's `Transpose` are followed back to the initializer, and the
  name the consumer sees is the real one;
- the merged decoder hoists its weights as `<name>_merged_N` and reads them inside an `If` node;
- the encoder graph names have no `model.encoder.` prefix;
- a tensor found in several graphs must be bit-identical everywhere.
"""
import json
import os
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ModelError
from .families import ENCODER_ROOT, spec_from_config, tie_groups
from .weights import expected_shapes, resolve_ties, validate

ENCODER_FILE = "encoder_model.onnx"
DECODER_FILES = ("decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx")
TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json", "special_tokens_map.json",
                   "spiece.model", "sentencepiece.bpe.model", "tokenizer.json")
_MERGED_SUFFIX = re.compile(r"_merged_\d+$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_ALIASING_OPS = ("Identity", "Transpose")


@dataclass
class Found:
    """One place a weight was read: the canonical name, its HF-layout value, and where it came from."""
    name: str
    value: np.ndarray
    file: str
    initializer: str
    node: str
    transform: str  # "none" or "transpose"


def read_json(path, required=True):
    if not os.path.exists(path):
        if required:
            raise ModelError(f"{path}: file not found")
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def load_graph(path):
    try:
        model = onnx.load(path, load_external_data=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except Exception as e:  # onnx raises DecodeError, ValueError, OSError... for a damaged file
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:200]})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: the ONNX graph has no nodes")
    return model


def _all_nodes(graph):
    """Every node, including those inside If/Loop subgraphs (the merged decoder's branches)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)


def _all_initializers(graph):
    found = {init.name: init for init in graph.initializer}
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found.update(_all_initializers(attribute.g))
    return found


def _scope(node_name):
    """'/model/decoder/layers.0/fc1/MatMul' -> 'model.decoder.layers.0.fc1'."""
    return node_name.strip("/").rsplit("/", 1)[0].replace("/", ".") if "/" in node_name.strip("/") else ""


def _is_transpose_2d(node):
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
    return perm == [1, 0]


def graph_weights(model, file_name, is_encoder):
    """-> (list of Found, names of float initializers no weight rule claimed)."""
    initializers = _all_initializers(model.graph)
    producers = {out: node for node in _all_nodes(model.graph) if node.op_type in _ALIASING_OPS
                 for out in node.output}
    values = {}

    def trace(name):  # follow Identity / Transpose back to an initializer -> (initializer, n_transposes)
        n_transposes = 0
        while name not in initializers:
            node = producers.get(name)
            if node is None or (node.op_type == "Transpose" and not _is_transpose_2d(node)):
                return None, 0
            n_transposes += node.op_type == "Transpose"
            name = node.input[0]
        return name, n_transposes

    found, claimed = [], set()
    for node in _all_nodes(model.graph):
        if node.op_type in _ALIASING_OPS:
            continue
        for slot, seen_name in enumerate(node.input):
            init_name, n_transposes = trace(seen_name)
            if init_name is None:
                continue
            if init_name not in values:
                values[init_name] = numpy_helper.to_array(initializers[init_name])
            value = values[init_name]
            if value.dtype.kind != "f" or value.ndim == 0:
                continue  # shape and scalar constants, not weights
            if n_transposes % 2:
                value = value.T
            if node.op_type == "MatMul" and slot == 1 and _scope(node.name):
                name, value, transform = _scope(node.name) + ".weight", value.T, "transpose"
            else:
                name, transform = _MERGED_SUFFIX.sub("", seen_name), "transpose" if n_transposes % 2 else "none"
                if not _PARAM_NAME.match(name) or name.startswith("onnx::"):
                    continue
            if is_encoder and not name.startswith(("model.", "lm_head", "final_logits_bias")):
                name = ENCODER_ROOT + name
            claimed.add(init_name)
            found.append(Found(name, value, file_name, init_name, node.name, transform))
    unclaimed = [name for name, init in initializers.items()
                 if name not in claimed and init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
                 and len(init.dims) > 0]
    return found, unclaimed


def _check_graph_heads(model, file_name, spec):
    """The head count and size live only in the graph's present.* shapes: check them against config.json."""
    for output in model.graph.output:
        match = re.fullmatch(r"present\.(\d+)\.(decoder|encoder)\.(key|value)", output.name)
        if not match:
            continue
        if int(match.group(1)) >= spec.n_layer_decoder:
            raise ModelError(f"{file_name}: output {output.name} but config.json says decoder_layers="
                             f"{spec.n_layer_decoder}")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in output.type.tensor_type.shape.dim]
        expected = [None, spec.n_head_decoder, None, spec.d_head]
        if len(dims) != 4 or any(e is not None and g is not None and g != e for g, e in zip(dims, expected)):
            raise ModelError(f"{file_name}: output {output.name} has shape {dims}, expected "
                             f"[batch, {spec.n_head_decoder} heads, length, {spec.d_head}] from config.json")


def collect(found):
    """Group the places by name; one name must have the same bits everywhere it is read."""
    by_name = {}
    for place in found:
        first = by_name.setdefault(place.name, [place])[0]
        if place is first:
            continue
        same = (first.value.shape == place.value.shape and first.value.dtype == place.value.dtype
                and first.value.tobytes() == place.value.tobytes())
        if not same:
            raise ModelError(f"tensor {place.name} differs between {first.file} (initializer {first.initializer}) "
                             f"and {place.file} (initializer {place.initializer})")
        by_name[place.name].append(place)
    return by_name


def graph_files(onnx_dir):
    """The graph files present; the encoder and at least one decoder layout are required."""
    present = [f for f in (ENCODER_FILE,) + DECODER_FILES if os.path.exists(os.path.join(onnx_dir, f))]
    if ENCODER_FILE not in present:
        raise ModelError(f"{os.path.join(onnx_dir, ENCODER_FILE)}: file not found")
    if len(present) == 1:
        raise ModelError(f"{onnx_dir}: no decoder graph found (expected one of {', '.join(DECODER_FILES)})")
    return present


def extract(onnx_dir):
    """An optimum export dir -> (config, generation_config, tensors, manifest), tensors validated."""
    config = read_json(os.path.join(onnx_dir, "config.json"))
    generation_config = read_json(os.path.join(onnx_dir, "generation_config.json"), required=False)
    spec = spec_from_config(config)
    found, unclaimed = [], {}
    for file_name in graph_files(onnx_dir):
        model = load_graph(os.path.join(onnx_dir, file_name))
        if file_name != ENCODER_FILE:
            _check_graph_heads(model, file_name, spec)
        places, unclaimed[file_name] = graph_weights(model, file_name, is_encoder=file_name == ENCODER_FILE)
        found += places
    by_name = collect(found)
    expected = expected_shapes(spec)
    groups = tie_groups(config)
    aliases = {name for group in groups for name in group}
    unexpected = sorted(name for name in by_name if name not in expected and name not in aliases)
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        raise ModelError(f"{onnx_dir}: the graphs hold weight(s) that config.json's {spec.model_type} model "
                         f"does not use: {shown}")
    tensors = resolve_ties({name: places[0].value for name, places in by_name.items()}, groups)
    tensors = validate(tensors, spec, source=onnx_dir)
    manifest = {
        "source": os.path.abspath(onnx_dir),
        "tensors": {name: {"shape": list(places[0].value.shape), "dtype": str(places[0].value.dtype),
                           "sources": [{"file": p.file, "initializer": p.initializer, "node": p.node,
                                        "transform": p.transform} for p in places]}
                    for name, places in sorted(by_name.items())},
        "tied": {name: group[0] for group in groups for name in group[1:] if name in tensors},
        "unclaimed_initializers": {f: names for f, names in unclaimed.items() if names},
    }
    return config, generation_config, tensors, manifest
