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
import dataclasses
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
from safetensors.numpy import save_file

from .errors import ModelError
from .families import canonical_names, encoder_root, spec_from_config, tie_groups
from .kernels import c_order, c_order_block, same_bits
from .onnxfile import ParsedInitializer, read_model
from .weights import (QUANTIZED_PARTS, WEIGHTS_FILE, expected_shapes, quantized_base, read_json, resolve_ties,
                      same_tensor, to_canonical, validate)

ENCODER_FILE = "encoder_model.onnx"
DECODER_FILES = ("decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx")
TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json", "special_tokens_map.json",
                   "spiece.model", "sentencepiece.bpe.model", "tokenizer.json", "merges.txt", "input_domain.json")
_MERGED_SUFFIX = re.compile(r"_merged_\d+$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_ALIASING_OPS = ("Identity", "Transpose")
_GLOBAL_NAMES = {"model.shared.weight", "shared.weight", "lm_head.weight", "final_logits_bias"}
_GLOBAL_NAMES |= {name + suffix for name in tuple(_GLOBAL_NAMES) for suffix in ("_scale", "_zero_point")}
_QUANTIZED_OPS = ("MatMulInteger", "DequantizeLinear", "DynamicQuantizeLinear")
_SCALES_MUL = "_quant_scales_mul"  # the quantizer's Mul of the activation scale and the weight scale
QUANTIZED_SUFFIX = "_quantized"    # optimum and onnxruntime name a quantized graph <stem>_quantized.onnx


@dataclass
class Found:
    """One place a weight was read: the canonical name, its HF-layout value, and where it came from."""
    name: str
    value: np.ndarray
    file: str
    initializer: str
    node: str
    transform: str  # "none" or "transpose"


def load_graph(path):
    """-> (onnx.ModelProto without its top-level initializers, {name: initializer}): the file is read once and
    memory-mapped, the weights stay in it (onnxfile.read_model)."""
    try:
        model, initializers = read_model(path)
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except Exception as e:  # onnx raises DecodeError, ValueError, OSError... for a damaged file
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:200]})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: the ONNX graph has no nodes")
    return model, initializers


def _all_nodes(graph):
    """Every node, including those inside If/Loop subgraphs (the merged decoder's branches)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)


def _all_initializers(graph):
    found = {init.name: ParsedInitializer(init, "") for init in graph.initializer}
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found.update(_all_initializers(attribute.g))
    return found


def _to_array(initializer, file_name):
    try:
        return initializer.to_array()
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
    # a quantized head's product ends in the Mul that dequantizes MatMulInteger's output
    return producer is not None and producer.op_type in ("MatMul", "Mul") and _scope(producer.name) == "lm_head"


def _is_transpose_2d(node):
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
    return perm == [1, 0]


def graph_weights(model, file_name, root="", initializers=None):
    """-> (list of Found, names of float initializers no weight rule claimed).

    `root` is the prefix this graph's names leave out (the encoder graph's); global names keep theirs.
    `initializers` are the top-level ones load_graph kept out of the parsed model.
    """
    initializers = {**(initializers or {}), **_all_initializers(model.graph)}
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
    consumers = {}
    for node in _all_nodes(model.graph):
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def value_of(init_name):
        if init_name not in values:
            values[init_name] = _to_array(initializers[init_name], file_name)
        return values[init_name]

    def add(name, init_name, value, node, transform):
        if root and not name.startswith(root) and name not in _GLOBAL_NAMES:
            name = root + name
        claimed.add(init_name)
        found.append(Found(name, value, file_name, init_name, node.name, transform))

    for node in _all_nodes(model.graph):
        if node.op_type in _QUANTIZED_OPS:
            for name, init_name, value, transform in _quantized_weights(node, trace, value_of, all_producers,
                                                                        consumers, file_name):
                add(name, init_name, value, node, transform)
            continue
        if node.op_type in _ALIASING_OPS or node.name.endswith(_SCALES_MUL):
            continue
        for slot, seen_name in enumerate(node.input):
            init_name, n_transposes = trace(seen_name)
            if init_name is None:
                continue
            value = value_of(init_name)
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
            add(name, init_name, value, node, transform)
    unclaimed = [name for name, init in initializers.items()
                 if name not in claimed and init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
                 and len(init.dims) > 0]
    return found, unclaimed


def _quantized_weights(node, trace, value_of, producers, consumers, file_name):
    """A MatMulInteger's or a DequantizeLinear's integer weight -> [(name, initializer, value, transform)] for
    the weight (int8/uint8, HF layout), its `_scale` and its `_zero_point`; [] for on-the-fly operands."""
    def initializer(name, what):
        init_name, n_transposes = trace(name)
        if init_name is None:
            raise ModelError(f"{file_name}: node {node.name!r}: its {what} is not a constant")
        return init_name, value_of(init_name), n_transposes

    if node.op_type == "MatMulInteger":
        weight_init, _ = trace(node.input[1])
        if weight_init is None:
            return []  # both operands quantized on the fly: an attention product
        weight_init, value, n_transposes = initializer(node.input[1], "weight")
        value = value.T if n_transposes % 2 else value     # MatMul's B, [d_in, d_out]
        zero_init, zero_point, _ = initializer(node.input[3] if len(node.input) > 3 else "", "weight zero point")
        scale_init, scale = _weight_scale(node, trace, value_of, producers, consumers, file_name)
        name = _scope(node.name) + ".weight"
        return [(name, weight_init, value.T, "transpose"), (name + "_scale", scale_init, scale, "none"),
                (name + "_zero_point", zero_init, zero_point, "none")]
    if node.op_type == "DequantizeLinear":
        table_name = node.input[0]   # Gather of an integer table, maybe Transposed after (T5's relative bias)
        while table_name in producers and producers[table_name].op_type in ("Transpose", "Identity", "Gather"):
            gathered = producers[table_name].op_type == "Gather"
            table_name = producers[table_name].input[0]
            if gathered:
                break
        else:
            return _dequantized_weight(node, initializer, consumers, file_name)
        table_init, table, _ = initializer(table_name, "table")
        scale_init, scale, _ = initializer(node.input[1], "scale")
        zero_init, zero_point, _ = initializer(node.input[2] if len(node.input) > 2 else "", "zero point")
        name = _MERGED_SUFFIX.sub("", _MERGED_SUFFIX.sub("", table_init).removesuffix(QUANTIZED_SUFFIX))
        return [(name, table_init, table, "none"), (name + "_scale", scale_init, scale, "none"),
                (name + "_zero_point", zero_init, zero_point, "none")]
    return []


def _dequantized_weight(node, initializer, consumers, file_name):
    """quantize_dynamic's tied head: a float MatMul reads DequantizeLinear(Transpose(the integer embedding)).
    -> [(name, initializer, float32 weight in HF layout, transform)]: the dequantized values the MatMul sees."""
    matmuls = [c for c in consumers.get(node.output[0], []) if c.op_type == "MatMul" and c.input[1] == node.output[0]]
    if len(matmuls) != 1 or not _scope(matmuls[0].name):
        raise ModelError(f"{file_name}: node {node.name!r} dequantizes a constant that no named MatMul reads")
    weight_init, value, n_transposes = initializer(node.input[0], "weight")
    _, scale, _ = initializer(node.input[1], "scale")
    _, zero_point, _ = initializer(node.input[2] if len(node.input) > 2 else "", "zero point")
    if scale.ndim or zero_point.ndim:
        raise ModelError(f"{file_name}: node {node.name!r}: a per-axis DequantizeLinear of a weight is not supported")
    dequantized = (value.astype(np.int32) - np.int32(zero_point)).astype(np.float32) * np.float32(scale)
    # MatMul's B is [d_in, d_out]; HF's weight its transpose
    hf = dequantized if n_transposes % 2 else dequantized.T
    return [(_scope(matmuls[0].name) + ".weight", weight_init, np.ascontiguousarray(hf),
             "dequantize" if n_transposes % 2 else "dequantize, transpose")]


def _weight_scale(node, trace, value_of, producers, consumers, file_name):
    """MatMulInteger -> Cast -> Mul(., x_scale * w_scale): the weight's scale is the constant factor."""
    for cast in consumers.get(node.output[0], []):
        for mul in consumers.get(cast.output[0], []) if cast.op_type == "Cast" else []:
            factor = next((i for i in mul.input if i != cast.output[0]), None)
            scales_mul = producers.get(factor)
            if mul.op_type != "Mul" or scales_mul is None or scales_mul.op_type != "Mul":
                continue
            for name in scales_mul.input:
                init_name, _ = trace(name)
                if init_name is not None:
                    return init_name, value_of(init_name)
    raise ModelError(f"{file_name}: node {node.name!r}: no weight scale found after it (expected "
                     f"Cast then Mul by activation scale x weight scale)")


def integer_attention(model):
    """Does the graph quantize attention products (a MatMulInteger with no constant operand)?"""
    producers = {out: node for node in _all_nodes(model.graph) for out in node.output}
    return any(node.op_type == "MatMulInteger" and all(
        getattr(producers.get(i), "op_type", None) == "DynamicQuantizeLinear" for i in node.input[:2])
        for node in _all_nodes(model.graph))


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


# The encoder graph's weights of BLOCK_MIN_BYTES to BLOCK_MAX_BYTES are copied into one block, in the order the
# graph reads them, on huge pages (kernels.c_order_block): its products read each weight tile by tile, and took
# 4-5% less time so (the bench's model, 2 threads: encoder 8.97-9.10 against 9.32-9.52 ms in three in-process
# A/Bs, 10.99 against 11.53 in the bench; 1 thread 15.33 against 16.13). The decoder's weights stay one allocation
# each: its step read them no faster from such a block, and 0-11% slower with the embedding inside it, so a
# weight of BLOCK_MAX_BYTES or more (an embedding, which the lm_head reads) keeps its own allocation too.
BLOCK_MIN_BYTES = 2 ** 16
BLOCK_MAX_BYTES = 2 ** 25


def _copy_out_new(places, by_name, groups, in_block=False):
    """The weights first read from this graph leave its mapped file, laid out as the math reads them (C order,
    HF's [out, in]); with `in_block`, those of BLOCK_MIN_BYTES to BLOCK_MAX_BYTES in one block of memory, in the
    order the graph reads them. Its repeats of earlier weights were compared by collect, so nothing else keeps the
    file mapped. Names read from one initializer the same way (a tied embedding and head), and tied names whose
    bits an earlier graph already gave, share one copy."""
    copies, blocked = {}, {}  # key -> its copy; key -> a value to copy into the block
    partners = {name: group for group in groups for name in group}
    first_places = [(place, (place.initializer, place.value.shape, place.value.strides))  # (place, its key)
                    for place in places if by_name[place.name][0] is place]
    for place, key in first_places:
        tied = [by_name[other][0].value for other in partners.get(place.name, ())
                if other in by_name and by_name[other][0].file != place.file]
        if key in copies or key in blocked:
            continue
        equal = next((value for value in tied if same_bits(value, place.value)), None)
        if equal is not None:
            copies[key] = equal
        elif in_block and BLOCK_MIN_BYTES <= place.value.nbytes < BLOCK_MAX_BYTES:
            blocked[key] = place.value
        else:
            copies[key] = c_order(place.value, place.value.dtype, copy=True)
    copies.update(zip(blocked, c_order_block(list(blocked.values()))))
    for place, key in first_places:
        place.value = copies[key]


def collect(found, by_name=None):
    """Group the places by name into by_name; one name must have the same bits everywhere it is read. A repeated
    place keeps the first one's array, so the file its own came from can be unmapped.

    The same bytes read the same way are compared with the same first array once: the merged decoder's two
    branches read one initializer, and a tied embedding and head read one initializer and share one array."""
    by_name = {} if by_name is None else by_name
    compared = set()  # (first array, the place's memory and layout) pairs already found equal
    for place in found:
        first = by_name.setdefault(place.name, [place])[0]
        if place is first:
            continue
        value = place.value
        key = (id(first.value), value.__array_interface__["data"][0], value.shape, value.strides, value.dtype.str)
        if key not in compared and not same_bits(first.value, value):
            raise ModelError(f"tensor {place.name} differs between {first.file} (initializer {first.initializer}) "
                             f"and {place.file} (initializer {place.initializer})")
        compared.add(key)
        by_name[place.name].append(dataclasses.replace(place, value=first.value))
    return by_name


def graph_file_name(file_name, quantized):
    """'encoder_model.onnx' -> 'encoder_model_quantized.onnx' when quantized."""
    return file_name.replace(".onnx", QUANTIZED_SUFFIX + ".onnx") if quantized else file_name


def choose_quantized(onnx_dir, quantized=None):
    """Which graphs to read: the quantized ones (True) or the fp32 ones (False). A directory holding only one
    kind needs no choice; one holding both needs an explicit `quantized`."""
    has = {kind: os.path.exists(os.path.join(onnx_dir, graph_file_name(ENCODER_FILE, kind))) for kind in (False, True)}
    if quantized is None:
        if has[False] and has[True]:
            raise ModelError(f"{onnx_dir}: holds both fp32 and quantized graphs; choose one with quantized=True or "
                             f"False (--quantized or --no-quantized)")
        return has[True]
    if not has[quantized] and has[not quantized]:
        raise ModelError(f"{onnx_dir}: no {'quantized' if quantized else 'fp32'} graphs "
                         f"({graph_file_name(ENCODER_FILE, quantized)} not found)")
    return quantized


def graph_files(onnx_dir, quantized=False):
    """The graph files present; the encoder and at least one decoder layout are required."""
    known = tuple(graph_file_name(f, kind) for kind in (False, True) for f in (ENCODER_FILE,) + DECODER_FILES)
    unknown = sorted(f for f in os.listdir(onnx_dir) if f.endswith(".onnx") and f not in known)
    if unknown:
        raise ModelError(f"{os.path.join(onnx_dir, unknown[0])}: unexpected graph file (an optimum seq2seq export "
                         f"has {', '.join(known[:4])}, or the same names ending {QUANTIZED_SUFFIX}.onnx)")
    encoder = graph_file_name(ENCODER_FILE, quantized)
    decoders = [graph_file_name(f, quantized) for f in DECODER_FILES]
    present = [f for f in [encoder] + decoders if os.path.exists(os.path.join(onnx_dir, f))]
    if encoder not in present:
        raise ModelError(f"{os.path.join(onnx_dir, encoder)}: file not found")
    if len(present) == 1:
        raise ModelError(f"{onnx_dir}: no decoder graph found (expected one of {', '.join(decoders)})")
    return present


def extract(onnx_dir, quantized=None):
    """An optimum export dir -> (config, generation_config, tensors by common slot name, manifest).

    `quantized` picks the `*_quantized.onnx` graphs (True) or the fp32 ones (False); None means whichever
    kind the directory holds. A quantized linear or table comes as three tensors: `<name>` (int8 or uint8),
    `<name>_scale` and `<name>_zero_point`.
    """
    config = read_json(os.path.join(onnx_dir, "config.json"))
    generation_config = read_json(os.path.join(onnx_dir, "generation_config.json"), required=False)
    spec = spec_from_config(config)
    quantized = choose_quantized(onnx_dir, quantized)
    groups = tie_groups(config)
    by_name, unclaimed, decoder_outputs, attention_kinds = {}, {}, {}, {}
    for file_name in graph_files(onnx_dir, quantized):  # each graph read once; repeats of earlier weights dropped
        model, initializers = load_graph(os.path.join(onnx_dir, file_name))
        is_encoder = file_name == graph_file_name(ENCODER_FILE, quantized)
        if not is_encoder:
            decoder_outputs[file_name] = model.graph.output
        root = encoder_root(spec) if is_encoder else ""
        places, unclaimed[file_name] = graph_weights(model, file_name, root, initializers)
        attention_kinds[file_name] = integer_attention(model)
        try:
            collect(places, by_name)
        except ModelError as e:
            if not quantized:
                raise
            raise ModelError(f"{e}; quantize_dynamic leaves the merged decoder's embeddings in float, so that graph "
                             f"computes differently: leave {graph_file_name(DECODER_FILES[2], True)} out of the "
                             f"directory") from None
        _copy_out_new(places, by_name, groups, in_block=is_encoder)
        del model, initializers, places  # the file is unmapped here, before the next one is mapped
    if len(set(attention_kinds.values())) > 1:
        raise ModelError(f"{onnx_dir}: some graphs quantize the attention products and some do not "
                         f"({', '.join(f for f, kind in attention_kinds.items() if kind)} do)")
    expected = set(canonical_names(spec, expected_shapes(spec)).values())
    aliases = {name for group in groups for name in group}
    resolved = resolve_ties({name: places[0].value for name, places in by_name.items()}, groups)
    tensors = validate(resolved, spec, source=onnx_dir,
                       hint=f" (is this an optimum export of the {spec.model_type} model config.json describes?)")
    unexpected = sorted(name for name in by_name if name not in expected and name not in aliases
                        and not (name.endswith(("_scale", "_zero_point")) and quantized_base(name) in by_name))
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
        "tied": {name: group[0] for group in groups for name in group[1:]
                 if name in resolved and same_tensor(resolved, name, group[0])},
        "unclaimed_initializers": {f: names for f, names in unclaimed.items() if names},
        "quantized": {"graphs": quantized, "attention_products": "integer" if any(attention_kinds.values())
                      else "float"},
    }
    return config, generation_config, tensors, manifest


def storage_form(tensors, groups):
    """One entry per tie group, under its primary name, as HF save_pretrained keeps tied weights; a member
    quantized separately (with values of its own) is kept too."""
    stored = dict(tensors)
    for group in groups:
        present = [name for name in group if name in stored]
        if not present:
            continue
        kept = [present[0]]
        for name in present[1:]:
            if not any(same_tensor(stored, name, other) for other in kept):
                kept.append(name)
        for name in present:
            parts = {part: stored.pop(name + part) for part in ("",) + QUANTIZED_PARTS if name + part in stored}
            if name in kept:
                primary = group[0] if name == present[0] else name
                stored.update({primary + part: value for part, value in parts.items()})
    return stored


def write_extracted(onnx_dir, out_dir, quantized=None):
    """Extract to out_dir: model.safetensors, config.json, generation_config.json, manifest.json and the
    tokenizer files. Everything is written beside the target first and renamed in at the end."""
    if os.path.isdir(out_dir) and os.path.samefile(onnx_dir, out_dir):
        raise ModelError(f"{out_dir}: the output directory is the export itself; extract into another directory")
    config, generation_config, tensors, manifest = extract(onnx_dir, quantized)
    metadata = {"format": "np", "source": "minitransformer", "quantized": str(manifest["quantized"]["graphs"]).lower(),
                "attention_products": manifest["quantized"]["attention_products"]}
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
        save_file(stored, os.path.join(staging, WEIGHTS_FILE), metadata=metadata)
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
