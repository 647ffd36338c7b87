"""The encoder-decoder transformer: embed, residual blocks, encoder, one decoder step, logits.

One compute path for every family; a family difference appears only in the helpers `positions_of`,
`embed`, `position_bias`, `norm`, `residual`, `ffn` and `logits`, driven by the Spec. Shapes use n_batch,
n_src, n_tgt (new target positions in this call), n_past, n_k = n_past + n_tgt, d_model, n_head, d_head, n_vocab.
"""
import os
from dataclasses import dataclass

import numpy as np

from . import attention, kernels
from .cache import CrossKV, KVCache
from .errors import ModelError
from .families import module_name, spec_from_config, tie_groups
from .observe import Recorder, named
from .ops import ACTIVATIONS, linear, padded_positions, padded_sinusoids, relative_buckets, rms_norm
from .quant import QuantizedWeight
from .weights import (WEIGHTS_FILE, compute_layout, read_json, read_metadata, read_safetensors, resolve_ties,
                      unflatten, validate)

INITIAL_CACHE_LEN = 256  # target positions allocated up front; the cache doubles past them


def norm(x, weight, bias=None, *, spec):  # [..., d_model] -> [..., d_model]
    if spec.norm_kind == "rms":  # T5
        return rms_norm(x, weight, spec.norm_eps)
    return kernels.layer_norm(x, weight, bias, spec.norm_eps)  # ops.layer_norm in one numba call


def seen(observe, name, value):  # -> value, shown to the observer (if any) under the module name `name`
    if observe is not None:
        observe.output(name, value)
    return value


def residual(x, sublayer, norm_params, spec, observe=None, norm_name=None):  # [n_batch, n, d_model] -> same
    if spec.norm_position == "pre":  # mBART, M2M100, T5
        return x + sublayer(seen(observe, norm_name, norm(x, **norm_params, spec=spec)))
    return seen(observe, norm_name, norm(x + sublayer(x), **norm_params, spec=spec))  # Marian, BART


def positions_of(ids, n_past, spec):  # [n_batch, n] -> [n_batch, n] absolute positions
    if spec.positions == "sinusoid_padded":  # M2M100: counted over the non-pad tokens
        return padded_positions(ids, n_past, spec.pad_token_id)
    return np.broadcast_to(n_past + np.arange(ids.shape[1]), ids.shape)


def embed(ids, positions, stack, spec, observe=None, root=""):  # ids, positions [n_batch, n] -> [n_batch, n, d_model]
    """Token embedding times embed_scale, plus position vectors, then layernorm_embedding (BART, mBART)."""
    x = stack["embed_tokens"]["weight"][ids] * np.float32(spec.embed_scale)
    if spec.positions == "table":  # Marian (sinusoids stored as a table), BART, mBART (learned, offset 2)
        x = x + stack["embed_positions"]["weight"][positions + spec.position_offset]
    elif spec.positions == "sinusoid_padded":  # M2M100, NLLB
        x = x + padded_sinusoids(positions, spec.d_model, spec.pad_token_id)
    seen(observe, f"{root}.embed_tokens", x)
    if spec.layernorm_embedding:
        x = seen(observe, f"{root}.layernorm_embedding", norm(x, **stack["layernorm_embedding"], spec=spec))
    return x


def position_bias(stack, spec, query_positions, n_k, bidirectional):  # -> [1, n_head, n_q, n_k]
    """T5: a learned bias per head and distance bucket, computed once per stack (layer 0's table)."""
    if spec.positions != "relative":
        return np.float32(0.0)
    relative = np.arange(n_k)[None, :] - query_positions[:, None]  # [n_q, n_k]: key minus query position
    buckets = relative_buckets(relative, bidirectional, spec.relative_buckets, spec.relative_max_distance)
    return stack["relative_attention_bias"]["weight"][buckets].transpose(2, 0, 1)[None]


def ffn(x, layer, spec):  # [n_batch, n, d_model] -> [n_batch, n, d_model]
    hidden = ACTIVATIONS[spec.activation](linear(x, **layer["fc1"]))   # [n_batch, n, d_ff]
    if spec.gated_ffn:  # T5 gated-gelu: act(x W_gate) * (x W_up)
        hidden = hidden * linear(x, **layer["fc1_up"])
    return linear(hidden, **layer["fc2"])


def split_heads(x, n_head):  # [n_batch, n, n_head * d_head] -> [n_batch, n_head, n, d_head]
    n_batch, n, inner = x.shape
    return x.reshape(n_batch, n, n_head, inner // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):  # [n_batch, n_head, n, d_head] -> [n_batch, n, n_head * d_head]
    n_batch, n_head, n, d_head = x.shape
    return x.transpose(0, 2, 1, 3).reshape(n_batch, n, n_head * d_head)


def project_kv(x, attn, n_head):  # [n_batch, n, d_model] -> 2 x [n_batch, n_head, n, d_head]
    return split_heads(linear(x, **attn["k_proj"]), n_head), split_heads(linear(x, **attn["v_proj"]), n_head)


def logits(x, model, spec, observe=None):  # [n_batch, n_tgt, d_model] -> [n_batch, n_tgt, n_vocab]
    """lm_head, times d_model^-0.5 when T5 ties its head, plus final_logits_bias (Marian, BART, mBART)."""
    if spec.logits_scale != 1.0:
        x = x * np.float32(spec.logits_scale)
    # final_logits_bias [1, n_vocab] is added by the product, the same one rounding as a separate Add
    bias = model["final_logits_bias"].reshape(-1) if spec.final_logits_bias else None
    return seen(observe, "lm_head", linear(x, model["lm_head"]["weight"], bias))


def attend_seen(attend, observe, name, q, k, v, bias, scale):
    # q [n_batch, n_head, n_tgt, d_head], k, v [n_batch, n_head, n_k, d_head] -> [n_batch, n_head, n_tgt, d_head]
    """`attend`, or, when the observer wants the probabilities, the numpy reference that shows them."""
    if observe is None or not observe.wants_probs:
        return attend(q, k, v, bias, scale)
    probs = attention.attention_probs(q, k, bias, scale)  # [n_batch, n_head, n_tgt, n_k]
    observe.probs(name, probs)
    return probs @ v


def encoder_layer(x, layer, bias, spec, attend, observe=None, prefix=""):  # [n_batch, n_src, d_model] -> same
    def self_attention(h):
        attn = layer["self_attn"]
        q = split_heads(linear(h, **attn["q_proj"]), spec.n_head_encoder)   # [n_batch, n_head, n_src, d_head]
        k, v = project_kv(h, attn, spec.n_head_encoder)
        y = attend_seen(attend, observe, f"{prefix}.self_attn", q, k, v, bias, spec.scale_for_attention())
        return seen(observe, f"{prefix}.self_attn", linear(merge_heads(y), **attn["out_proj"]))

    x = residual(x, self_attention, layer["self_attn_layer_norm"], spec, observe, f"{prefix}.self_attn_layer_norm")
    return residual(x, lambda h: seen(observe, f"{prefix}.fc2", ffn(h, layer, spec)), layer["final_layer_norm"], spec,
                    observe, f"{prefix}.final_layer_norm")


def decoder_layer(x, i, layer, state, self_bias, spec, attend, observe=None):  # [n_batch, n_tgt, d_model] -> same
    n_head, scale = spec.n_head_decoder, spec.scale_for_attention()
    prefix = f"model.decoder.layers.{i}"

    def self_attention(h):
        attn = layer["self_attn"]
        q = split_heads(linear(h, **attn["q_proj"]), n_head)                # [n_batch, n_head, n_tgt, d_head]
        k_all, v_all = state.cache.append(i, *project_kv(h, attn, n_head))  # [n_batch, n_head, n_k, d_head]
        y = attend_seen(attend, observe, f"{prefix}.self_attn", q, k_all, v_all, self_bias, scale)
        return seen(observe, f"{prefix}.self_attn", linear(merge_heads(y), **attn["out_proj"]))

    def cross_attention(h):
        attn = layer["encoder_attn"]
        q = split_heads(linear(h, **attn["q_proj"]), n_head)                # [n_batch, n_head, n_tgt, d_head]
        k, v = state.cross.view(i)                                          # [n_batch, n_head, n_src, d_head]
        y = attend_seen(attend, observe, f"{prefix}.encoder_attn", q, k, v, state.cross_bias, scale)
        return seen(observe, f"{prefix}.encoder_attn", linear(merge_heads(y), **attn["out_proj"]))

    x = residual(x, self_attention, layer["self_attn_layer_norm"], spec, observe, f"{prefix}.self_attn_layer_norm")
    x = residual(x, cross_attention, layer["encoder_attn_layer_norm"], spec, observe,
                 f"{prefix}.encoder_attn_layer_norm")
    return residual(x, lambda h: seen(observe, f"{prefix}.fc2", ffn(h, layer, spec)), layer["final_layer_norm"], spec,
                    observe, f"{prefix}.final_layer_norm")


@dataclass
class DecoderState:
    """What one source batch's decoding carries from step to step."""
    cache: KVCache
    cross: CrossKV
    cross_bias: np.ndarray  # [n_batch, 1, 1, n_src]: the source padding, hidden from every query


def check_ids(ids, name, spec):  # -> int64 [n_batch, n]
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ModelError(f"{name}: expected a non-empty [batch, length] array of token ids, got shape {list(ids.shape)}")
    if ids.dtype.kind not in "iu":
        raise ModelError(f"{name}: expected integer token ids, got dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= spec.n_vocab:
        bad = ids.min() if ids.min() < 0 else ids.max()
        raise ModelError(f"{name}: token id {bad} is outside the vocabulary [0, {spec.n_vocab})")
    return ids.astype(np.int64)


def check_mask(attention_mask, input_ids, name="attention_mask"):  # -> int64, same shape as input_ids
    if attention_mask is None:
        return np.ones_like(input_ids)
    mask = np.asarray(attention_mask)
    if mask.shape != input_ids.shape:
        raise ModelError(f"{name}: got shape {list(mask.shape)}, expected {list(input_ids.shape)} like input_ids")
    if not ((mask == 0) | (mask == 1)).all():
        raise ModelError(f"{name}: expected only 0 and 1")
    if not mask.any(axis=1).all():
        raise ModelError(f"{name}: row {int(np.flatnonzero(~mask.any(axis=1))[0])} masks every source token")
    return mask.astype(np.int64)


class Model:
    """A loaded encoder-decoder: weights by canonical name, the Spec, and the generation defaults."""

    def __init__(self, spec, tensors, config, generation_config, manifest=None, kernel="numba",
                 integer_attention=False):
        self.spec = spec
        self.config = config
        self.generation_config = generation_config
        self.manifest = manifest
        # by common slot name, in HF's layout (the matvec reads W [d_out, d_in] row by row); int8 linears as
        # QuantizedWeights, int8 tables dequantized
        self.tensors = compute_layout(tensors)
        params = unflatten(self.tensors)
        self.params = {"encoder": params["model"]["encoder"], "decoder": params["model"]["decoder"],
                       "lm_head": params["lm_head"], "final_logits_bias": params.get("final_logits_bias")}
        self.kernel = kernel
        # the numba kernel is float32 only; another dtype (the float64 arbiter) takes the readable numpy reference
        self.attend = kernels.attend if kernel == "numba" and self.dtype == np.float32 else attention.attend
        self.path = None    # the directory `load` read, where the tokenizer files are
        self.loaded = None  # what `load` read the weights from: model.safetensors or the ONNX graphs
        self._tokenizer = None
        # int8: the linears hold QuantizedWeights; a graph that also quantizes its attention products
        # (ORTQuantizer) is followed by attend_integer
        self.quantized = any(isinstance(t, QuantizedWeight) for t in self.tensors.values())
        self.integer_attention = integer_attention
        if integer_attention:
            self.attend = attention.attend_integer

    @property
    def dtype(self):
        return self.params["lm_head"]["weight"].dtype

    def astype(self, dtype):
        """The same model computing in `dtype`: float64 is the arbiter, the graph's function without float32 rounding.

        One compute path: the weights' dtype decides the arithmetic of every op; constants stay float32 values."""
        # an int8 model keeps its integers; its scales, tables and activations take `dtype`
        cast = {}  # tied names share one array, so they share its copy
        tensors = {name: cast.setdefault(id(t), t.astype(dtype)) for name, t in self.tensors.items()}
        model = Model(self.spec, tensors, self.config, self.generation_config, self.manifest, self.kernel,
                      self.integer_attention)
        model.path, model.loaded = self.path, self.loaded
        return model

    @property
    def tokenizer(self):
        """The tokenizer shipped beside the model (tokenizer.json, or OPUS-MT's sentencepiece files)."""
        if self._tokenizer is None:
            if self.path is None:
                raise ModelError("this model was not loaded from a directory: it has no tokenizer")
            from .tokenizer import Tokenizer
            self._tokenizer = Tokenizer.from_dir(self.path, self.spec.n_vocab)
        return self._tokenizer

    def translate(self, texts, src_lang=None, tgt_lang=None, batch_size=32, **generation):
        """list of sentences -> list of translations, through self.tokenizer and generate()."""
        from .translate import translate_texts
        return translate_texts(self, self.tokenizer, texts, batch_size, src_lang=src_lang, tgt_lang=tgt_lang,
                               **generation)[0]

    def _check_length(self, n, what):
        if self.spec.positions == "table" and n > self.spec.max_positions:
            raise ModelError(f"{what}: {n} positions exceed the model's max_position_embeddings "
                             f"{self.spec.max_positions}")

    def encode(self, input_ids, attention_mask=None, attend=None, observer=None):
        # input_ids, attention_mask [n_batch, n_src] -> [n_batch, n_src, d_model]
        spec, stack = self.spec, self.params["encoder"]
        observe = named(observer, spec)
        input_ids = check_ids(input_ids, "input_ids", spec)
        attention_mask = check_mask(attention_mask, input_ids)
        self._check_length(input_ids.shape[1], "input_ids")
        n_src = input_ids.shape[1]
        x = embed(input_ids, positions_of(input_ids, 0, spec), stack, spec, observe, "model.encoder")
        bias = (attention.padding_bias(attention_mask)                     # [n_batch, 1 or n_head, n_src, n_src]
                + position_bias(stack, spec, np.arange(n_src), n_src, True))
        for i, layer in enumerate(stack["layers"]):
            x = encoder_layer(x, layer, bias, spec, attend or self.attend, observe, f"model.encoder.layers.{i}")
        if spec.final_layer_norm:
            x = seen(observe, "model.encoder.layer_norm", norm(x, **stack["layer_norm"], spec=spec))
        return x

    def start(self, encoder_hidden, attention_mask, max_len):
        """A fresh decoder state; cross-attention K/V computed once here. The self-attention cache starts with
        room for min(max_len, INITIAL_CACHE_LEN) target positions and grows as steps append."""
        spec = self.spec
        n_batch = encoder_hidden.shape[0]
        mask = check_mask(attention_mask, np.ones(encoder_hidden.shape[:2], dtype=np.int64))
        cross = [project_kv(encoder_hidden, layer["encoder_attn"], spec.n_head_decoder)
                 for layer in self.params["decoder"]["layers"]]
        # C order, as the kernel reads them (np.stack keeps the heads' transposed layout)
        cross_kv = CrossKV(np.ascontiguousarray(np.stack([k for k, _ in cross])),
                           np.ascontiguousarray(np.stack([v for _, v in cross])))
        capacity = min(max_len, INITIAL_CACHE_LEN)
        cache = KVCache(spec.n_layer_decoder, n_batch, spec.n_head_decoder, capacity, spec.d_head, self.dtype)
        return DecoderState(cache, cross_kv, attention.padding_bias(mask))

    def decode_step(self, state, decoder_input_ids, attend=None, observer=None):
        # decoder_input_ids [n_batch, n_tgt] -> logits [n_batch, n_tgt, n_vocab]; appends n_tgt cache slots
        spec, stack = self.spec, self.params["decoder"]
        observe = named(observer, spec)
        ids = check_ids(decoder_input_ids, "decoder_input_ids", spec)
        n_past, n_tgt = state.cache.n_past, ids.shape[1]
        self._check_length(n_past + n_tgt, "decoder_input_ids: target positions")
        x = embed(ids, positions_of(ids, n_past, spec), stack, spec, observe, "model.decoder")
        query_positions = n_past + np.arange(n_tgt)
        self_bias = (attention.causal_bias(n_past, n_tgt)                  # [1, 1 or n_head, n_tgt, n_k]
                     + position_bias(stack, spec, query_positions, n_past + n_tgt, False))
        for i, layer in enumerate(stack["layers"]):
            x = decoder_layer(x, i, layer, state, self_bias, spec, attend or self.attend, observe)
        state.cache.commit(n_tgt)
        if spec.final_layer_norm:
            x = seen(observe, "model.decoder.layer_norm", norm(x, **stack["layer_norm"], spec=spec))
        return logits(x, self.params, spec, observe)

    def forward(self, input_ids, attention_mask, decoder_input_ids, output_attentions=False, observer=None):
        """Teacher-forced logits [n_batch, n_tgt, n_vocab], all target positions in one call.

        With output_attentions, also returns {"encoder"|"decoder_self"|"decoder_cross": [probs per layer]},
        each [n_batch, n_head, n_query, n_key], computed by the readable numpy reference.
        """
        if output_attentions:
            observer = observer or Recorder(probs=True, keep_outputs=False)
            if not (isinstance(observer, Recorder) and observer.wants_probs):
                raise ModelError("forward: output_attentions=True records with a Recorder(probs=True); "
                                 f"got observer {type(observer).__name__}")
        encoder_hidden = self.encode(input_ids, attention_mask, observer=observer)
        decoder_input_ids = check_ids(decoder_input_ids, "decoder_input_ids", self.spec)
        state = self.start(encoder_hidden, attention_mask, decoder_input_ids.shape[1])
        result = self.decode_step(state, decoder_input_ids, observer=observer)
        if not output_attentions:
            return result
        return result, attention_maps(observer, self.spec)

    def generate(self, input_ids, attention_mask=None, max_new_tokens=None, num_beams=None, **generation_kwargs):
        """int64 [n_batch * num_return_sequences, 1 + n_new] as HF generate() lays it out (decoder start first, pad
        after eos); with return_dict_in_generate, HF's result object (see generate.py)."""
        from .generate import generate
        return generate(self, input_ids, attention_mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
                        **generation_kwargs)


def attention_maps(recorder, spec, call=-1):
    """A Recorder's attention probabilities of one call (the last by default), grouped as `forward` returns them:
    {"encoder"|"decoder_self"|"decoder_cross": [probs per layer, each [n_batch, n_head, n_query, n_key]]};
    a group the recorder did not see (the encoder during decode steps) is left out."""
    groups = {"encoder": ("encoder", spec.n_layer_encoder, "self_attn"),
              "decoder_self": ("decoder", spec.n_layer_decoder, "self_attn"),
              "decoder_cross": ("decoder", spec.n_layer_decoder, "encoder_attn")}
    maps = {}
    for group, (stack, n_layer, module) in groups.items():
        names = [module_name(spec, f"model.{stack}.layers.{i}.{module}") for i in range(n_layer)]
        if names[0] in recorder.attentions:
            maps[group] = [recorder.attentions[name][call] for name in names]
    return maps


def load(path, kernel="numba", dtype="float32", quantized=None):
    """An optimum export dir (weights extracted in memory) or a dir written by `minitransformer extract`;
    model.safetensors is read when present (model.loaded says which).

    dtype "float64" gives the float64 evaluation of the same weights (`Model.astype`). `quantized` chooses
    between the fp32 graphs and the `*_quantized.onnx` ones when a dir holds both; a dir holding one kind
    loads as that kind.
    """
    model = _load(path, kernel, quantized)
    return model if np.dtype(dtype) == model.dtype else model.astype(dtype)


def _load(path, kernel, quantized):
    if not os.path.isdir(path):
        raise ModelError(f"{path}: not a directory")
    weights_path = os.path.join(path, WEIGHTS_FILE)
    has_graphs = any(name.endswith(".onnx") for name in os.listdir(path))
    if os.path.exists(weights_path):
        metadata = read_metadata(weights_path)
        stored_quantized = metadata.get("quantized") == "true"
        if quantized is None or quantized == stored_quantized or not has_graphs:
            if quantized is not None and quantized != stored_quantized:
                raise ModelError(f"{weights_path}: holds {'quantized' if stored_quantized else 'fp32'} weights, "
                                 f"not the {'quantized' if quantized else 'fp32'} ones asked for")
            config = read_json(os.path.join(path, "config.json"))
            spec = spec_from_config(config)
            tensors = read_safetensors(weights_path)
            tensors = validate(resolve_ties(tensors, tie_groups(config)), spec, source=weights_path)
            generation_config = read_json(os.path.join(path, "generation_config.json"), required=False)
            manifest = read_json(os.path.join(path, "manifest.json"), required=False)
            model = Model(spec, tensors, config, generation_config, manifest, kernel,
                          integer_attention=metadata.get("attention_products") == "integer")
            model.loaded, model.path = WEIGHTS_FILE, path
            return model
    if not has_graphs:
        raise ModelError(f"{path}: neither {WEIGHTS_FILE} nor an ONNX export found (not a model directory)")
    from .extract import extract
    config, generation_config, tensors, manifest = extract(path, quantized)
    model = Model(spec_from_config(config), tensors, config, generation_config, manifest, kernel,
                  integer_attention=manifest["quantized"]["attention_products"] == "integer")
    model.loaded, model.path = "ONNX graphs", path
    return model
