"""Weights by canonical Hugging Face name: what a Spec expects, validation, safetensors in and out.

Every tensor is looked up by name and refused with "got [..], expected [..]" (whisper.cpp's habit).
"""
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from .errors import ModelError
from .families import canonical_names

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


def validate(tensors, spec, source, hint=""):
    """Check canonical names, shapes and dtypes against the Spec -> float32 tensors by common slot name."""
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
        if tensor.dtype not in (np.float32, np.float16):
            raise ModelError(f"{source}: tensor {name}: got dtype {tensor.dtype}, expected float32")
        checked[common] = np.ascontiguousarray(tensor, dtype=np.float32)
    return checked


def to_canonical(tensors, spec):
    """Common slot names -> the family's canonical HF names."""
    names = canonical_names(spec, tensors)
    return {names[common]: tensor for common, tensor in tensors.items()}


LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc1_up", "fc2", "lm_head")


def compute_layout(tensors):
    """HF layout -> the layout the math reads: every linear weight [d_out, d_in] becomes a contiguous
    `weight_t` [d_in, d_out], so `x @ weight_t` streams rows (a matvec per step reads it once, in order)."""
    laid_out = {}
    for name, tensor in tensors.items():
        parts = name.split(".")
        if parts[-1] == "weight" and len(parts) > 1 and parts[-2] in LINEAR_MODULES:
            laid_out[name + "_t"] = np.ascontiguousarray(tensor.T)
        else:
            laid_out[name] = tensor
    return laid_out


def hf_layout(laid_out):
    """The inverse of compute_layout, as views: no copy is made."""
    return {name.removesuffix("_t") if name.endswith(".weight_t") else name:
            tensor.T if name.endswith(".weight_t") else tensor for name, tensor in laid_out.items()}


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
    """-> {name: array}; a missing or corrupt file is a ModelError naming it."""
    try:
        return load_file(path)
    except (OSError, SafetensorError, ValueError) as e:
        raise ModelError(f"{path}: cannot read safetensors ({e})") from None
