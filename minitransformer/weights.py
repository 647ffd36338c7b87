"""Weights by canonical Hugging Face name: what a Spec expects, validation, safetensors in and out, and the
JSON files beside them. No onnx here: loading an extracted directory does not import it.

Every tensor is looked up by name and refused with "got [..], expected [..]" (whisper.cpp's habit).
"""
import json
import math
import mmap
import os
import struct

import numpy as np
from safetensors import SafetensorError, safe_open

from .errors import ModelError
from .families import canonical_names
from .kernels import c_order
from .quant import QuantizedWeight, dequantize

WEIGHTS_FILE = "model.safetensors"


def _linear_shapes(prefix, spec, d_out, d_in):
    shapes = {f"{prefix}.weight": (d_out, d_in)}
    if spec.linear_bias:
        shapes[f"{prefix}.bias"] = (d_out,)
    return shapes


def _attention_shapes(prefix, spec, n_head):
    inner = n_head * spec.d_head
    shapes = {}
    for projection in ("q_proj", "k_proj", "v_proj"):
        shapes.update(_linear_shapes(f"{prefix}.{projection}", spec, inner, spec.d_model))
    shapes.update(_linear_shapes(f"{prefix}.out_proj", spec, spec.d_model, inner))
    return shapes


def _norm_shapes(prefix, spec):
    shapes = {f"{prefix}.weight": (spec.d_model,)}
    if spec.norm_kind == "layer":
        shapes[f"{prefix}.bias"] = (spec.d_model,)
    return shapes


def expected_shapes(spec):
    """Every tensor the compute path reads, by common slot name (BART's names) -> shape."""
    d_model, d_ff, n_vocab = spec.d_model, spec.d_ff, spec.n_vocab
    shapes = {"lm_head.weight": (n_vocab, d_model)}
    if spec.final_logits_bias:
        shapes["final_logits_bias"] = (1, n_vocab)
    for stack, n_layer, n_head in (("encoder", spec.n_layer_encoder, spec.n_head_encoder),
                                   ("decoder", spec.n_layer_decoder, spec.n_head_decoder)):
        root = f"model.{stack}"
        shapes[f"{root}.embed_tokens.weight"] = (n_vocab, d_model)
        if spec.positions == "table":
            shapes[f"{root}.embed_positions.weight"] = (spec.max_positions + spec.position_offset, d_model)
        if spec.positions == "relative":
            shapes[f"{root}.relative_attention_bias.weight"] = (spec.relative_buckets, n_head)
        if spec.layernorm_embedding:
            shapes.update(_norm_shapes(f"{root}.layernorm_embedding", spec))
        if spec.final_layer_norm:
            shapes.update(_norm_shapes(f"{root}.layer_norm", spec))
        for i in range(n_layer):
            layer = f"{root}.layers.{i}"
            attentions = ["self_attn", "encoder_attn"] if stack == "decoder" else ["self_attn"]
            for attn in attentions:
                shapes.update(_attention_shapes(f"{layer}.{attn}", spec, n_head))
                shapes.update(_norm_shapes(f"{layer}.{attn}_layer_norm", spec))
            shapes.update(_linear_shapes(f"{layer}.fc1", spec, d_ff, d_model))
            if spec.gated_ffn:
                shapes.update(_linear_shapes(f"{layer}.fc1_up", spec, d_ff, d_model))
            shapes.update(_linear_shapes(f"{layer}.fc2", spec, d_model, d_ff))
            shapes.update(_norm_shapes(f"{layer}.final_layer_norm", spec))
    return shapes


QUANTIZED_PARTS = ("_scale", "_zero_point")  # a quantized <name> (int8/uint8) comes with <name>_scale, <name>_zero_point


def quantized_base(name):
    """'x.weight_scale' -> 'x.weight'; other names unchanged."""
    for suffix in QUANTIZED_PARTS:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def same_tensor(tensors, name, other):
    """Same values (and, for a quantized tensor, the same scale and zero point)? One array is equal to itself
    (tied names extracted from an export share one array): not compared again."""
    return all((name + part in tensors) == (other + part in tensors) and (
        name + part not in tensors or tensors[name + part] is tensors[other + part]
        or (tensors[name + part].dtype == tensors[other + part].dtype
            and tensors[name + part].shape == tensors[other + part].shape
            and np.array_equal(tensors[name + part], tensors[other + part])))
               for part in ("",) + QUANTIZED_PARTS)


def resolve_ties(tensors, groups):
    """Fill every name of a tie group from the first one present; refuse tied names that differ.

    A quantizer may quantize tied copies separately (the embedding as a uint8 table, the head's transposed
    copy as an int8 weight): integer members that differ each keep their own values.
    """
    tensors = dict(tensors)
    for group in groups:
        present = [name for name in group if name in tensors]
        if not present:
            continue
        first = present[0]
        for name in present[1:]:
            quantized = tensors[name].dtype.kind in "iu" or tensors[first].dtype.kind in "iu"
            if quantized:
                continue
            if not same_tensor(tensors, name, first):
                raise ModelError(f"tensor {name} should be tied to {first} (config.json ties them) "
                                 f"but its values differ")
            tensors[name] = tensors[first]  # equal copies (an export's encoder and decoder graphs): one array
        for name in group:
            if name not in tensors:
                tensors.update({name + part: tensors[first + part]
                                for part in ("",) + QUANTIZED_PARTS if first + part in tensors})
    return tensors


def validate(tensors, spec, source, hint=""):
    """Check canonical names, shapes and dtypes against the Spec -> tensors by common slot name: float32, or
    int8/uint8 with float32 `_scale` and integer `_zero_point` companions (one value, or one per row)."""
    names = canonical_names(spec, expected_shapes(spec))
    missing = [canonical for canonical in names.values() if canonical not in tensors]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelError(f"{source}: missing tensor(s) {shown}{hint}")
    checked = {}
    for common, shape in expected_shapes(spec).items():
        name = names[common]
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise ModelError(f"{source}: tensor {name}: got {list(tensor.shape)}, expected {list(shape)}")
        if tensor.dtype in (np.int8, np.uint8):
            checked.update(_quantized_parts(tensors, name, common, source))
        elif tensor.dtype not in (np.float32, np.float16):
            raise ModelError(f"{source}: tensor {name}: got dtype {tensor.dtype}, expected float32 (or int8/uint8 "
                             f"with {name}_scale and {name}_zero_point)")
        # no copy for a mapped file in HF layout; a transposed view (an ONNX [in, out] weight) is laid out once
        checked[common] = c_order(tensor, tensor.dtype if tensor.dtype.kind in "iu" else np.float32)
    return checked


def _quantized_parts(tensors, name, common, source):
    """The scale (float32) and zero point (the weight's dtype) of a quantized tensor, checked."""
    weight, parts = tensors[name], {}
    for suffix, dtypes in (("_scale", (np.float32,)), ("_zero_point", (weight.dtype,))):
        part = tensors.get(name + suffix)
        if part is None:
            raise ModelError(f"{source}: tensor {name} is {weight.dtype} but {name}{suffix} is missing")
        if part.dtype not in dtypes or part.shape not in ((), (1,), (weight.shape[0],)):
            raise ModelError(f"{source}: tensor {name}{suffix}: got {part.dtype} {list(part.shape)}, expected "
                             f"{np.dtype(dtypes[0])} [] or [{weight.shape[0]}]")
        # safetensors stores a scalar as [1]: per tensor either way
        parts[common + suffix] = np.ascontiguousarray(part.reshape(()) if part.shape == (1,) else part)
    return parts


def to_canonical(tensors, spec):
    """Common slot names -> the family's canonical HF names (a quantized tensor's companions follow it)."""
    names = canonical_names(spec, {quantized_base(common) for common in tensors})
    return {names[quantized_base(common)] + common[len(quantized_base(common)):]: tensor
            for common, tensor in tensors.items()}


LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc1_up", "fc2", "lm_head")


def compute_layout(tensors):
    """Validated tensors -> the values the math reads. Float weights stay as they are, in HF's [d_out, d_in]
    layout, which the few-row matvec streams row by row and the gemm reads in tiles of 4 rows (no copy).

    In an int8 model a quantized linear weight becomes a `QuantizedWeight` (also [d_out, d_in]), and a quantized
    table (embeddings, positions, T5's relative bias) is dequantized once here: DequantizeLinear after a Gather
    gives the same float32 values row by row.
    """
    laid_out = {}
    for name, tensor in tensors.items():
        if name.endswith(QUANTIZED_PARTS):
            continue
        parts = name.split(".")
        linear = parts[-1] == "weight" and len(parts) > 1 and parts[-2] in LINEAR_MODULES
        if isinstance(tensor, QuantizedWeight):  # already laid out (Model.astype passes a model's own tensors)
            laid_out[name] = tensor
        elif tensor.dtype.kind in "iu":
            scale, zero_point = tensors[name + "_scale"], tensors[name + "_zero_point"]
            if linear:
                laid_out[name] = QuantizedWeight(tensor, scale, zero_point)
            else:
                rows = (-1, 1) if scale.ndim else ()
                laid_out[name] = dequantize(tensor, scale.reshape(rows), zero_point.reshape(rows))
        else:
            laid_out[name] = tensor
    return laid_out


def unflatten(tensors):
    """{"model.encoder.layers.0.fc1.weight": a} -> {"model": {"encoder": {"layers": [{"fc1": {"weight": a}}]}}}."""
    tree = {}
    for name, tensor in tensors.items():
        node = tree
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = tensor
    return _lists_from_digit_keys(tree)


def _lists_from_digit_keys(node):
    if not isinstance(node, dict):
        return node
    node = {key: _lists_from_digit_keys(child) for key, child in node.items()}
    if node and all(key.isdigit() for key in node):
        return [node[str(i)] for i in range(len(node))]
    return node


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


_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "U8": np.uint8}


def read_safetensors(path):
    """-> {name: array}, read-only views of the file memory-mapped: no copy, pages read as the math first needs
    them and shared with every process that maps the same file. A missing, corrupt or truncated file, or a dtype
    other than float16/32/64 or int8/uint8, is a ModelError naming it.

    The format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then
    the data, offsets relative to its start."""
    try:
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
        raise ModelError(f"{path}: cannot read safetensors ({e})") from None
    try:
        (header_len,) = struct.unpack("<Q", mapped[:8]) if len(mapped) >= 8 else (None,)
        if header_len is None or 8 + header_len > len(mapped):
            raise ValueError("the header length runs past the end of the file")
        header = json.loads(mapped[8:8 + header_len])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        data_start, tensors = 8 + header_len, {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype")) if isinstance(entry, dict) else None
            if dtype is None:
                raise ValueError(f"tensor {name}: dtype {entry.get('dtype') if isinstance(entry, dict) else entry!r} "
                                 f"(expected one of {', '.join(_SAFETENSORS_DTYPES)})")
            shape, (begin, end) = tuple(entry["shape"]), entry["data_offsets"]
            count = math.prod(shape)
            if not 0 <= begin <= end <= len(mapped) - data_start or end - begin != count * np.dtype(dtype).itemsize:
                raise ValueError(f"tensor {name}: data_offsets {[begin, end]} do not fit shape {list(shape)} "
                                 f"and the file's size")
            tensors[name] = np.frombuffer(mapped, dtype=dtype, count=count, offset=data_start + begin).reshape(shape)
        return tensors
    except (ValueError, KeyError, TypeError, struct.error) as e:  # json.JSONDecodeError is a ValueError
        raise ModelError(f"{path}: cannot read safetensors ({e})") from None


def read_metadata(path):
    """The safetensors header's metadata: {"quantized": "true", "attention_products": "integer"} for int8."""
    try:
        with safe_open(path, "np") as f:
            return f.metadata() or {}
    except (OSError, SafetensorError, ValueError) as e:
        raise ModelError(f"{path}: cannot read safetensors ({e})") from None
