"""Weights by canonical Hugging Face name: what a Spec expects, validation, safetensors in and out.

Every tensor is looked up by name and refused with "got [..], expected [..]" (whisper.cpp's habit).
"""
import json
import os
import tempfile

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .errors import ModelError

WEIGHTS_FILE = "model.safetensors"


def _attention_shapes(prefix, spec, n_head):
    inner = n_head * spec.d_head
    shapes = {f"{prefix}.q_proj.weight": (inner, spec.d_model), f"{prefix}.k_proj.weight": (inner, spec.d_model),
              f"{prefix}.v_proj.weight": (inner, spec.d_model), f"{prefix}.out_proj.weight": (spec.d_model, inner)}
    shapes.update({f"{prefix}.{p}_proj.bias": (inner,) for p in "qkv"})
    shapes[f"{prefix}.out_proj.bias"] = (spec.d_model,)
    return shapes


def _norm_shapes(prefix, spec):
    shapes = {f"{prefix}.weight": (spec.d_model,)}
    if spec.norm_kind == "layer":
        shapes[f"{prefix}.bias"] = (spec.d_model,)
    return shapes


def expected_shapes(spec):
    """Every tensor the compute path reads, by canonical name -> shape."""
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
            shapes.update({f"{layer}.fc1.weight": (d_ff, d_model), f"{layer}.fc1.bias": (d_ff,),
                           f"{layer}.fc2.weight": (d_model, d_ff), f"{layer}.fc2.bias": (d_model,)})
            shapes.update(_norm_shapes(f"{layer}.final_layer_norm", spec))
    return shapes


def resolve_ties(tensors, groups):
    """Fill every name of a tie group from the one that is present; refuse tied names that differ."""
    tensors = dict(tensors)
    for group in groups:
        present = [name for name in group if name in tensors]
        if not present:
            continue
        first = tensors[present[0]]
        for name in present[1:]:
            if tensors[name].shape != first.shape or not np.array_equal(tensors[name], first):
                raise ModelError(f"tensor {name} should be tied to {present[0]} (config.json ties them) "
                                 f"but its values differ")
        for name in group:
            tensors[name] = first
    return tensors


def validate(tensors, spec, source):
    """Check names, shapes and dtypes against the Spec; returns the float32 tensors the model reads."""
    shapes = expected_shapes(spec)
    missing = [name for name in shapes if name not in tensors]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelError(f"{source}: missing tensor(s) {shown}")
    checked = {}
    for name, shape in shapes.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise ModelError(f"{source}: tensor {name}: got {list(tensor.shape)}, expected {list(shape)}")
        if tensor.dtype not in (np.float32, np.float16):
            raise ModelError(f"{source}: tensor {name}: got dtype {tensor.dtype}, expected float32")
        checked[name] = np.ascontiguousarray(tensor, dtype=np.float32)
    return checked


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


def read_safetensors(path):
    """-> (tensors, metadata); a missing or corrupt file is a ModelError naming it."""
    try:
        tensors = load_file(path)
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            metadata = json.loads(f.read(header_len)).get("__metadata__", {}) or {}
    except (OSError, SafetensorError, ValueError) as e:
        raise ModelError(f"{path}: cannot read safetensors ({e})") from None
    return tensors, metadata


def write_atomically(path, write):
    """Call write(tmp_path) beside `path`, then rename: a failure leaves nothing half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
        os.close(fd)
    except OSError as e:
        raise ModelError(f"{directory}: cannot write there ({e.strerror})") from None
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except OSError as e:
        raise ModelError(f"{path}: cannot write ({e.strerror})") from None
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def write_safetensors(path, tensors, metadata):
    tensors = {name: np.ascontiguousarray(t) for name, t in tensors.items()}
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
