"""The only file that names model families: config.json -> Spec, and each family's weight names.

Family differences are data (CTranslate2's lesson):
- Marian is BART with post-norm, sinusoids stored as a position table, no layernorm_embedding, and
  decoding started at the pad token;
- mBART is BART with pre-norm and a final LayerNorm on each stack;
- M2M100 (and NLLB) is mBART without layernorm_embedding or final_logits_bias, with sinusoidal
  positions counted from padding_idx + 1 over the non-pad tokens;
- T5 is pre-norm with RMS norms, no biases, relative position buckets, no attention scaling, and
  its own weight names, translated here to the common slots the compute path reads.
"""
import math
from dataclasses import replace

from .errors import ModelError
from .ops import ACTIVATIONS
from .spec import Spec

UNLIMITED_POSITIONS = 1 << 20  # families whose positions are computed, not looked up in a table


def _require(config, key):
    if key not in config:
        raise ModelError(f"config.json: missing key {key!r} (needed for model_type {config.get('model_type')!r})")
    return config[key]


def _positive_int(config, key, default=None):
    value = _require(config, key) if default is None else config.get(key, default)
    value = default if value is None else value
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelError(f"config.json: {key} must be a positive integer, got {value!r}")
    return value


def _number(config, key, default):
    value = config.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ModelError(f"config.json: {key} must be a positive number, got {value!r}")
    return float(value)


def _flag(config, key, default):
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ModelError(f"config.json: {key} must be true or false, got {value!r}")
    return value


def _choice(config, key, default, choices):
    value = config.get(key, default)
    if not isinstance(value, str) or value not in choices:
        raise ModelError(f"config.json: {key} {value!r} is not supported (supported: {', '.join(sorted(choices))})")
    return value


def _token_id(config, key):
    value = _require(config, key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelError(f"config.json: {key} must be a token id, got {value!r}")
    return value


def _same(config, key_a, key_b):
    a, b = _positive_int(config, key_a), _positive_int(config, key_b)
    if a != b:
        raise ModelError(f"config.json: {key_a} {a} != {key_b} {b} is not supported")
    return a


def _bart_like(config, **family):
    """Marian, BART, mBART, M2M100: one config layout; `family` holds what differs."""
    d_model = _positive_int(config, "d_model")
    n_head = _same(config, "encoder_attention_heads", "decoder_attention_heads")
    if d_model % n_head:
        raise ModelError(f"config.json: d_model {d_model} is not divisible by encoder_attention_heads {n_head}")
    n_vocab = _positive_int(config, "vocab_size")
    if config.get("decoder_vocab_size") not in (None, n_vocab):
        raise ModelError(f"config.json: decoder_vocab_size {config['decoder_vocab_size']} != vocab_size {n_vocab} "
                         f"is not supported")
    return Spec(
        model_type=config["model_type"], d_model=d_model, d_ff=_same(config, "encoder_ffn_dim", "decoder_ffn_dim"),
        n_vocab=n_vocab, n_layer_encoder=_positive_int(config, "encoder_layers"),
        n_layer_decoder=_positive_int(config, "decoder_layers"), n_head_encoder=n_head, n_head_decoder=n_head,
        d_head=d_model // n_head, max_positions=_positive_int(config, "max_position_embeddings"),
        norm_kind="layer", norm_eps=1e-5,
        embed_scale=math.sqrt(d_model) if _flag(config, "scale_embedding", False) else 1.0,
        activation=_choice(config, "activation_function", "gelu", ACTIVATIONS), gated_ffn=False, linear_bias=True,
        attention_scale=None, logits_scale=1.0, pad_token_id=_token_id(config, "pad_token_id"), **family)


def _marian(config):
    return _bart_like(config, norm_position="post", positions="table", position_offset=0,
                      layernorm_embedding=False, final_layer_norm=False, final_logits_bias=True)


def _bart(config):
    return _bart_like(config, norm_position="post", positions="table", position_offset=2,
                      layernorm_embedding=True, final_layer_norm=False, final_logits_bias=True)


def _mbart(config):
    return _bart_like(config, norm_position="pre", positions="table", position_offset=2,
                      layernorm_embedding=True, final_layer_norm=True, final_logits_bias=True)


def _m2m100(config):
    spec = _bart_like(config, norm_position="pre", positions="sinusoid_padded", position_offset=0,
                      layernorm_embedding=False, final_layer_norm=True, final_logits_bias=False)
    return replace(spec, max_positions=UNLIMITED_POSITIONS)


def _t5(config):
    d_model, n_head = _positive_int(config, "d_model"), _positive_int(config, "num_heads")
    n_layer = _positive_int(config, "num_layers")
    feed_forward = _choice(config, "feed_forward_proj", "relu", {"relu", "gelu", "gated-gelu", "gated-silu"})
    gated = feed_forward.startswith("gated-")
    activation = "gelu_new" if feed_forward == "gated-gelu" else feed_forward.split("-")[-1]
    tied_head = _flag(config, "tie_word_embeddings", True)
    return Spec(
        model_type="t5", d_model=d_model, d_ff=_positive_int(config, "d_ff"), n_vocab=_positive_int(config, "vocab_size"),
        n_layer_encoder=n_layer, n_layer_decoder=_positive_int(config, "num_decoder_layers", default=n_layer),
        n_head_encoder=n_head, n_head_decoder=n_head, d_head=_positive_int(config, "d_kv"),
        max_positions=UNLIMITED_POSITIONS, norm_position="pre", norm_kind="rms",
        norm_eps=_number(config, "layer_norm_epsilon", 1e-6), positions="relative", position_offset=0,
        embed_scale=1.0, layernorm_embedding=False, final_layer_norm=True, activation=activation, gated_ffn=gated,
        linear_bias=False, attention_scale=1.0, logits_scale=d_model ** -0.5 if tied_head else 1.0,
        final_logits_bias=False, pad_token_id=_token_id(config, "pad_token_id"),
        relative_buckets=_positive_int(config, "relative_attention_num_buckets", default=32),
        relative_max_distance=_positive_int(config, "relative_attention_max_distance", default=128))


SPEC_BUILDERS = {"marian": _marian, "bart": _bart, "mbart": _mbart, "m2m_100": _m2m100, "t5": _t5}


def spec_from_config(config):
    """config.json (as a dict) -> Spec; an unknown family is refused by name."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in SPEC_BUILDERS:
        raise ModelError(f"config.json: model_type {model_type!r} is not supported "
                         f"(supported: {', '.join(sorted(SPEC_BUILDERS))})")
    _flag(config, "tie_word_embeddings", True)
    _flag(config, "share_encoder_decoder_embeddings", True)
    spec = SPEC_BUILDERS[model_type](config)
    if not 0 <= spec.pad_token_id < spec.n_vocab:
        raise ModelError(f"config.json: pad_token_id {spec.pad_token_id} is outside the vocabulary [0, {spec.n_vocab})")
    return spec


def encoder_root(spec):
    """The prefix the encoder graph's names leave out."""
    return "encoder." if spec.model_type == "t5" else "model.encoder."


def tie_groups(config):
    """Canonical names that hold one tensor, primary first: how config.json ties embeddings and lm_head."""
    tied_head = config.get("tie_word_embeddings", True)
    if config.get("model_type") == "t5":
        group = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    elif config.get("model_type") != "marian" or config.get("share_encoder_decoder_embeddings", True):
        group = ["model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"]
    else:  # Marian with separate source and target embeddings
        return [["model.decoder.embed_tokens.weight", "lm_head.weight"]] if tied_head else []
    return [group + ["lm_head.weight"] if tied_head else group]


_T5_ATTENTION = {"self_attn": (0, "SelfAttention"), "encoder_attn": (1, "EncDecAttention")}
_T5_PROJECTIONS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "o"}


def _t5_name(common, gated):
    """A common slot name -> T5's own name (HF T5ForConditionalGeneration)."""
    parts = common.split(".")
    if parts[0] == "lm_head" or parts[2] == "embed_tokens":
        return common.removeprefix("model.")
    stack = parts[1]
    if parts[2] == "relative_attention_bias":  # computed once, by layer 0's attention, for the whole stack
        return f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    if parts[2] == "layer_norm":
        return f"{stack}.final_layer_norm.weight"
    i, slot = parts[3], parts[4]
    ffn_sublayer = 1 if stack == "encoder" else 2
    if slot in _T5_ATTENTION:
        sublayer, module = _T5_ATTENTION[slot]
        return f"{stack}.block.{i}.layer.{sublayer}.{module}.{_T5_PROJECTIONS[parts[5]]}.weight"
    if slot.endswith("_layer_norm") and slot != "final_layer_norm":
        return f"{stack}.block.{i}.layer.{_T5_ATTENTION[slot.removesuffix('_layer_norm')][0]}.layer_norm.weight"
    if slot == "final_layer_norm":
        return f"{stack}.block.{i}.layer.{ffn_sublayer}.layer_norm.weight"
    dense = {"fc1": "wi_0" if gated else "wi", "fc1_up": "wi_1", "fc2": "wo"}[slot]
    return f"{stack}.block.{i}.layer.{ffn_sublayer}.DenseReluDense.{dense}.weight"


def canonical_names(spec, common_names):
    """{common slot name: the family's canonical HF name} for the names the compute path reads."""
    if spec.model_type != "t5":
        return {name: name for name in common_names}
    return {name: _t5_name(name, spec.gated_ffn) for name in common_names}


_T5_SUBLAYER = {"self_attn": "0.SelfAttention", "encoder_attn": "1.EncDecAttention"}


def module_name(spec, common):
    """A module boundary's common name (`model.decoder.layers.3.self_attn`) -> the family's HF module name.

    T5: `decoder.block.3.layer.0.SelfAttention`; a sublayer's norm is `layer.K.layer_norm`; the feed-forward
    output (`fc2`) is `layer.K.DenseReluDense`; the stack's final norm is `final_layer_norm`."""
    if spec.model_type != "t5" or common == "lm_head":
        return common
    parts = common.removeprefix("model.").split(".")
    stack = parts[0]
    if parts[1] != "layers":  # embed_tokens, layer_norm
        return f"{stack}.final_layer_norm" if parts[1] == "layer_norm" else f"{stack}.{parts[1]}"
    i, slot = parts[2], parts[3]
    ffn_sublayer = 1 if stack == "encoder" else 2
    if slot in _T5_SUBLAYER:
        return f"{stack}.block.{i}.layer.{_T5_SUBLAYER[slot]}"
    if slot == "fc2":
        return f"{stack}.block.{i}.layer.{ffn_sublayer}.DenseReluDense"
    if slot == "final_layer_norm":
        return f"{stack}.block.{i}.layer.{ffn_sublayer}.layer_norm"
    return f"{stack}.block.{i}.layer.{_T5_SUBLAYER[slot.removesuffix('_layer_norm')].split('.')[0]}.layer_norm"
