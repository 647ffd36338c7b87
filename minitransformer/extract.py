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
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save_file

from .errors import ModelError
from .families import canonical_names, encoder_root, spec_from_config, tie_groups
from .weights import WEIGHTS_FILE, expected_shapes, resolve_ties, to_canonical, validate

ENCODER_FILE = "encoder_model.onnx"
DECODER_FILES = ("decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx")
TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json", "special_tokens_map.json",
                   "spiece.model", "sentencepiece.bpe.model", "tokenizer.json", "merges.txt", "input_domain.json")
_MERGED_SUFFIX = re.compile(r"_merged_\d+$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_ALIASING_OPS = ("Identity", "Transpose")
_GLOBAL_NAMES = {"model.shared.weight", "shared.weight", "lm_head.weight", "final_logits_bias"}


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


def _to_array(initializer, file_name):
    try:
        return numpy_helper.to_array(initializer)
    except Exception as e:  # a damaged tensor: its bytes do not fit its declared shape or type
        raise ModelError(f"{file_name}: initializer {initializer.name!r} is damaged ({type(e).__name__}: "
                         f"{str(e)[:120]})") from None


def _scope(node_name):
    """'/model/decoder/layers.0/fc1/MatMul' -> 'model.decoder.layers.0.fc1'."""
    return node_name.strip("/").rsplit("/", 1)[0].replace("/", ".") if "/" in node_name.strip("/") else ""


def _adds_to_lm_head(node, slot, producers):
    """Is this Add's other operand the output of the lm_head MatMul (then the added tensor is the logits bias)?"""
    other = node.input[1 - slot] if len(node.input) == 2 else None
    producer = producers.get(other)
    return producer is not None and producer.op_type == "MatMul" and _scope(producer.name) == "lm_head"


def _is_transpose_2d(node):
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
    return perm == [1, 0]


def graph_weights(model, file_name, root=""):
    """-> (list of Found, names of float initializers no weight rule claimed).

    `root` is the prefix this graph's names leave out (the encoder graph's); global names keep theirs.
    """
    initializers = _all_initializers(model.graph)
    all_producers = {out: node for node in _all_nodes(model.graph) for out in node.output}
    producers = {out: node for out, node in all_producers.items() if node.op_type in _ALIASING_OPS}
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
                values[init_name] = _to_array(initializers[init_name], file_name)
            value = values[init_name]
            if value.dtype.kind != "f" or value.ndim == 0:
                continue  # shape and scalar constants, not weights
            if n_transposes % 2:
                value = value.T
            if node.op_type == "MatMul" and slot == 1 and _scope(node.name):
                name, value, transform = _scope(node.name) + ".weight", value.T, "transpose"
            elif node.op_type == "Add" and _adds_to_lm_head(node, slot, all_producers):
                name, transform = "final_logits_bias", "none"  # BART's, traced as an anonymous constant
            else:
                name, transform = _MERGED_SUFFIX.sub("", seen_name), "transpose" if n_transposes % 2 else "none"
                if not _PARAM_NAME.match(name) or name.startswith("onnx::"):
                    continue
            if root and not name.startswith(root) and name not in _GLOBAL_NAMES:
                name = root + name
            claimed.add(init_name)
            found.append(Found(name, value, file_name, init_name, node.name, transform))
    unclaimed = [name for name, init in initializers.items()
                 if name not in claimed and init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
                 and len(init.dims) > 0]
    return found, unclaimed


def _check_graph_heads(outputs, file_name, spec):
    """The head count and size live only in the graph's present.* shapes: check them against config.json."""
    for output in outputs:
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
    known = (ENCODER_FILE,) + DECODER_FILES
    unknown = sorted(f for f in os.listdir(onnx_dir) if f.endswith(".onnx") and f not in known)
    if unknown:
        raise ModelError(f"{os.path.join(onnx_dir, unknown[0])}: unexpected graph file (an optimum seq2seq export "
                         f"has {', '.join(known)})")
    present = [f for f in known if os.path.exists(os.path.join(onnx_dir, f))]
    if ENCODER_FILE not in present:
        raise ModelError(f"{os.path.join(onnx_dir, ENCODER_FILE)}: file not found")
    if len(present) == 1:
        raise ModelError(f"{onnx_dir}: no decoder graph found (expected one of {', '.join(DECODER_FILES)})")
    return present


def extract(onnx_dir):
    """An optimum export dir -> (config, generation_config, tensors by common slot name, manifest)."""
    config = read_json(os.path.join(onnx_dir, "config.json"))
    generation_config = read_json(os.path.join(onnx_dir, "generation_config.json"), required=False)
    spec = spec_from_config(config)
    found, unclaimed, decoder_outputs = [], {}, {}
    for file_name in graph_files(onnx_dir):
        model = load_graph(os.path.join(onnx_dir, file_name))
        if file_name != ENCODER_FILE:
            decoder_outputs[file_name] = model.graph.output
        root = encoder_root(spec) if file_name == ENCODER_FILE else ""
        places, unclaimed[file_name] = graph_weights(model, file_name, root)
        found += places
    by_name = collect(found)
    expected = set(canonical_names(spec, expected_shapes(spec)).values())
    groups = tie_groups(config)
    aliases = {name for group in groups for name in group}
    resolved = resolve_ties({name: places[0].value for name, places in by_name.items()}, groups)
    tensors = validate(resolved, spec, source=onnx_dir,
                       hint=f" (is this an optimum export of the {spec.model_type} model config.json describes?)")
    unexpected = sorted(name for name in by_name if name not in expected and name not in aliases)
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        raise ModelError(f"{onnx_dir}: the graphs hold weight(s) that config.json's {spec.model_type} model "
                         f"does not use: {shown}")
    for file_name, outputs in decoder_outputs.items():
        _check_graph_heads(outputs, file_name, spec)
    manifest = {
        "source": os.path.basename(os.path.abspath(onnx_dir)),  # the directory's name, not this machine's path
        "tensors": {name: {"shape": list(places[0].value.shape), "dtype": str(places[0].value.dtype),
                           "sources": [{"file": p.file, "initializer": p.initializer, "node": p.node,
                                        "transform": p.transform} for p in places]}
                    for name, places in sorted(by_name.items())},
        "tied": {name: group[0] for group in groups for name in group[1:] if name in resolved},
        "unclaimed_initializers": {f: names for f, names in unclaimed.items() if names},
    }
    return config, generation_config, tensors, manifest


def storage_form(tensors, groups):
    """One entry per tie group, under its primary name, as HF save_pretrained keeps tied weights."""
    stored = dict(tensors)
    for group in groups:
        value = next((stored[name] for name in group if name in stored), None)
        if value is None:
            continue
        for name in group:
            stored.pop(name, None)
        stored[group[0]] = value
    return stored


def write_extracted(onnx_dir, out_dir):
    """Extract to out_dir: model.safetensors, config.json, generation_config.json, manifest.json and the
    tokenizer files. Everything is written beside the target first and renamed in at the end."""
    if os.path.isdir(out_dir) and os.path.samefile(onnx_dir, out_dir):
        raise ModelError(f"{out_dir}: the output directory is the export itself; extract into another directory")
    config, generation_config, tensors, manifest = extract(onnx_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ModelError(f"{out_dir}: cannot create the output directory ({e.strerror})") from None
    stored = storage_form(to_canonical(tensors, spec_from_config(config)), tie_groups(config))
    json_files = {"config.json": config, "generation_config.json": generation_config, "manifest.json": manifest}
    copies = [name for name in TOKENIZER_FILES if os.path.exists(os.path.join(onnx_dir, name))]
    try:
        staging = tempfile.mkdtemp(dir=out_dir, prefix=".extract-")
    except OSError as e:
        raise ModelError(f"{out_dir}: cannot write there ({e.strerror})") from None
    try:
        save_file(stored, os.path.join(staging, WEIGHTS_FILE), metadata={"format": "np", "source": "minitransformer"})
        for name, value in json_files.items():
            with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                json.dump(value, f, indent=2)
        for name in copies:
            shutil.copyfile(os.path.join(onnx_dir, name), os.path.join(staging, name))
        # safetensors creates its file owner-only; give it the mode every other written file has
        os.chmod(os.path.join(staging, WEIGHTS_FILE), os.stat(os.path.join(staging, "config.json")).st_mode)
        for name in [WEIGHTS_FILE, *json_files, *copies]:
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    except OSError as e:
        raise ModelError(f"{out_dir}: cannot write ({e.strerror})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
