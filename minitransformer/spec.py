"""The blueprint of a model: every per-family knob, read once from config.json by `families.py`."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    model_type: str                 # config.json's model_type, kept for messages only
    d_model: int
    d_ff: int
    n_vocab: int
    n_layer_encoder: int
    n_layer_decoder: int
    n_head_encoder: int
    n_head_decoder: int
    d_head: int                     # d_model // n_head in all but T5 (d_kv)
    max_positions: int              # longest source or target the positions allow
    norm_position: str              # "post": Marian, BART; "pre": mBART, M2M100, T5
    norm_kind: str                  # "layer": LayerNorm with bias; "rms": T5's RMS norm, no bias, no mean
    norm_eps: float
    positions: str                  # "table": a [n_pos, d] table indexed by position + offset (Marian, BART, mBART)
                                    # "sinusoid_padded": M2M100's sinusoids at padding_idx + 1 + cumsum(mask)
                                    # "relative": T5 buckets, a bias on the attention scores
    position_offset: int            # table rows skipped: 0 Marian, 2 BART/mBART
    embed_scale: float              # sqrt(d_model) if scale_embedding, else 1
    layernorm_embedding: bool       # LayerNorm right after embed + positions: BART, mBART
    final_layer_norm: bool          # a LayerNorm after the last layer of each stack: mBART, M2M100, T5
    activation: str                 # key of ops.ACTIVATIONS
    gated_ffn: bool                 # T5 gated-gelu: act(x W_gate) * (x W_up)
    linear_bias: bool               # every linear layer has a bias: all but T5
    attention_scale: float | None   # None: 1/sqrt(d_head) (all but T5); T5: 1.0
    logits_scale: float             # T5 with a tied head: d_model ** -0.5; else 1
    final_logits_bias: bool         # Marian, BART, mBART add `final_logits_bias` to the logits
    pad_token_id: int
    relative_buckets: int = 0       # T5 only
    relative_max_distance: int = 0  # T5 only

    def scale_for_attention(self):
        return self.d_head ** -0.5 if self.attention_scale is None else self.attention_scale
