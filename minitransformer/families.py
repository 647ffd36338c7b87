"""The only file that names model families: config.json -> Spec, and each family's weight names.

Family differences are data (CTranslate2's lesson): Marian is BART with post-norm, sinusoidal
positions stored as a table, no layernorm_embedding and decoding started at the pad token.
"""
import math

from .errors import ModelError
from .spec import Spec

ENCODER_ROOT = "model.encoder."  # where the encoder graph's un-prefixed names belong


def _require(config, key, source="config.json"):
    if key not in config:
        raise ModelError(f"{source}: missing key {key!r} (needed for model_type {config.get('model_type')!r})")
    return config[key]


def _positive_int(config, key):
    value = _require(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelError(f"config.json: {key} must be a positive integer, got {value!r}")
    return value


def _marian(config):
    d_model = _positive_int(config, "d_model")
    n_head_enc = _positive_int(config, "encoder_attention_heads")
    n_head_dec = _positive_int(config, "decoder_attention_heads")
    for key, n_head in (("encoder_attention_heads", n_head_enc), ("decoder_attention_heads", n_head_dec)):
        if d_model % n_head:
            raise ModelError(f"config.json: d_model {d_model} is not divisible by {key} {n_head}")
    if n_head_enc != n_head_dec:
        raise ModelError(f"config.json: encoder_attention_heads {n_head_enc} != decoder_attention_heads "
                         f"{n_head_dec}; a shared head size is expected")
    d_ff_enc, d_ff_dec = _positive_int(config, "encoder_ffn_dim"), _positive_int(config, "decoder_ffn_dim")
    n_vocab = _positive_int(config, "vocab_size")
    decoder_vocab = config.get("decoder_vocab_size") or n_vocab
    if decoder_vocab != n_vocab:
        raise ModelError(f"config.json: decoder_vocab_size {decoder_vocab} != vocab_size {n_vocab} is not supported")
    if d_ff_enc != d_ff_dec:
        raise ModelError(f"config.json: encoder_ffn_dim {d_ff_enc} != decoder_ffn_dim {d_ff_dec} is not supported")
    activation = config.get("activation_function", "gelu")
    return Spec(
        model_type="marian", d_model=d_model, d_ff=d_ff_enc, n_vocab=n_vocab,
        n_layer_encoder=_positive_int(config, "encoder_layers"),
        n_layer_decoder=_positive_int(config, "decoder_layers"),
        n_head_encoder=n_head_enc, n_head_decoder=n_head_dec, d_head=d_model // n_head_enc,
        max_positions=_positive_int(config, "max_position_embeddings"),
        norm_position="post", norm_kind="layer", norm_eps=1e-5,
        positions="table", position_offset=0,
        embed_scale=math.sqrt(d_model) if config.get("scale_embedding", False) else 1.0,
        layernorm_embedding=False, final_layer_norm=False,
        activation=activation, gated_ffn=False, attention_scale=None, logits_scale=1.0,
        final_logits_bias=True, pad_token_id=_require(config, "pad_token_id"),
    )


SPEC_BUILDERS = {"marian": _marian}


def spec_from_config(config):
    """config.json (as a dict) -> Spec; an unknown family is refused by name."""
    from .ops import ACTIVATIONS

    model_type = config.get("model_type")
    if model_type not in SPEC_BUILDERS:
        raise ModelError(f"config.json: model_type {model_type!r} is not supported "
                         f"(supported: {', '.join(sorted(SPEC_BUILDERS))})")
    spec = SPEC_BUILDERS[model_type](config)
    if spec.activation not in ACTIVATIONS:
        raise ModelError(f"config.json: activation {spec.activation!r} is not supported "
                         f"(supported: {', '.join(sorted(ACTIVATIONS))})")
    return spec


def tie_groups(config):
    """Names that hold one tensor, first name primary: how config.json ties embeddings and lm_head."""
    tied_head = config.get("tie_word_embeddings", True)
    if config.get("share_encoder_decoder_embeddings", True):
        group = ["model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"]
        return [group + ["lm_head.weight"] if tied_head else group]
    return [["model.decoder.embed_tokens.weight", "lm_head.weight"]] if tied_head else []
