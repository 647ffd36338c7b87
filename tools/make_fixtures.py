"""Build the test fixtures: tiny seeded seq2seq models, their optimum ONNX export and PyTorch's own outputs.

Each fixture is one row of FIXTURES. For a row the factory
  1. builds the model from its config with every parameter randomized (biases, norm gains and biases included),
  2. trains it briefly on a learnable toy mapping, so that greedy decoding emits varied tokens,
  3. randomizes `final_logits_bias` after training, so a dropped bias shows up in every logit,
  4. exports it with `optimum-cli export onnx --task text2text-generation-with-past` into tests/fixtures/<name>/,
  5. records PyTorch's logits, greedy and beam outputs and its full state_dict there as safetensors,
  6. checks the exported encoder_model.onnx + decoder_model.onnx against the recorded logits with ONNX Runtime.

Families are rows too: `opus_mt` (Marian), `fairseq_mt` and its `bart`, `mbart`, `m2m100` (the BART layout with
<s> 0, <pad> 1, </s> 2, <unk> 3), and `t5` (v1 and flan). A new family needs a row helper, not new steps.

Tokenizers for the BART, mBART, M2M100 and T5 fixtures, and HF's text outputs through them (hf_text.json), come from
`make_tokenizer`, which rebuilds each trained model from its fixture files: `--tokenizers-only` runs just that.

Usage: python tools/make_fixtures.py [--only NAME] [--tokenizers-only]
"""

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import safetensors.torch
import torch
import transformers

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
ONNX_GRAPHS = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx")


@dataclasses.dataclass(frozen=True)
class FixtureSpec:
    model_class: str  # transformers class name, e.g. "MarianMTModel"
    config: dict  # HF config kwargs; "model_type" picks the config class
    generation: dict  # generation_config.json fields
    content_ids: tuple  # (first, stop): the token ids that are not special; toy sources and targets use only these
    seed: int
    src_lengths: tuple = (21, 9, 4)  # recorded sources, eos included; the longest yields >= 32 greedy tokens
    n_tgt: int = 40  # teacher-forced decoder length, and max_new_tokens for generate()
    train_steps: int = 400
    warmup_steps: int = 50
    train_batch: int = 32
    train_lengths: tuple = (3, 20)  # toy source lengths (prefix and eos excluded), inclusive
    stride: int = 7  # toy target chains' step; coprime with the number of content ids, so no short cycles
    random_buffers: tuple = ("final_logits_bias",)  # buffers drawn ~ 0.5 N after training (none in M2M100, T5)
    source_prefix: tuple = ()  # ids every source starts with (a T5 task prompt), outside content_ids
    loudness: float = 0.0  # > 0: after training, rescale to large weights, norm gains and values (make_loud)

    def __post_init__(self):
        first, stop = self.content_ids
        assert math.gcd(self.stride, stop - first) == 1, f"stride {self.stride} shares a factor with {stop - first} ids"

    @property
    def target_prefix(self):  # -> [] or [forced_bos_token_id]
        """What every toy target starts with: the forced first token (BART's <s>, a language code), if any."""
        forced_bos = self.config.get("forced_bos_token_id")
        return [] if forced_bos is None else [forced_bos]


def bart_layers(vocab_size, d_model, n_head, d_ff, encoder_layers, decoder_layers, max_positions, activation):
    """The config keys Marian, BART, mBART and M2M100 share: sizes, layer counts, positions, activation."""
    return dict(
        vocab_size=vocab_size,
        d_model=d_model,
        encoder_attention_heads=n_head,
        decoder_attention_heads=n_head,
        encoder_ffn_dim=d_ff,
        decoder_ffn_dim=d_ff,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        max_position_embeddings=max_positions,
        activation_function=activation,
    )


def opus_mt(vocab_size, d_model, n_head, d_ff, encoder_layers, decoder_layers, tied, seed):
    """A MarianMTModel row laid out as Helsinki-NLP OPUS-MT ships it: eos 0, unk 1, pad last, decoding starts at pad."""
    pad = vocab_size - 1
    config = dict(
        model_type="marian",
        **bart_layers(vocab_size, d_model, n_head, d_ff, encoder_layers, decoder_layers, 128, "swish"),
        decoder_vocab_size=vocab_size,  # optimum's export fails when these differ
        scale_embedding=True,
        share_encoder_decoder_embeddings=tied,
        tie_word_embeddings=tied,
        pad_token_id=pad,
        eos_token_id=0,
        forced_eos_token_id=0,
        decoder_start_token_id=pad,
    )
    generation = dict(
        bad_words_ids=[[pad]],
        decoder_start_token_id=pad,
        eos_token_id=0,
        forced_eos_token_id=0,
        pad_token_id=pad,
        max_length=64,
        num_beams=4,
    )
    return FixtureSpec("MarianMTModel", config, generation, content_ids=(2, pad), seed=seed)


FAIRSEQ_SPECIALS = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2)  # and <unk> 3: content ids start at 4


def fairseq_mt(model_class, model_type, layers, scale_embedding, forced_bos, n_language_codes, generation, seed,
               train_steps, random_buffers=("final_logits_bias",)):
    """A BART-layout row (BART, mBART, M2M100): <s> 0, <pad> 1, </s> 2, <unk> 3, decoding starts at </s>, the first
    token forced to `forced_bos`, the last `n_language_codes` ids kept out of the toy task (they are language codes)."""
    config = dict(
        model_type=model_type,
        **layers,
        scale_embedding=scale_embedding,
        **FAIRSEQ_SPECIALS,
        decoder_start_token_id=2,
        forced_bos_token_id=forced_bos,
        forced_eos_token_id=2,
    )
    generation = dict(**FAIRSEQ_SPECIALS, decoder_start_token_id=2, forced_eos_token_id=2, **generation)
    content_ids = (4, layers["vocab_size"] - n_language_codes)
    return FixtureSpec(model_class, config, generation, content_ids, seed=seed, train_steps=train_steps,
                       random_buffers=random_buffers)


def bart(layers, seed, train_steps=400):
    """A BartForConditionalGeneration row; generation_config as facebook/bart-large ships it (forced <s>, beam 4,
    no repeated trigrams, early stopping), with bart-large-cnn's length_penalty 2.0 and a max_length of 64."""
    generation = dict(forced_bos_token_id=0, num_beams=4, no_repeat_ngram_size=3, early_stopping=True,
                      length_penalty=2.0, max_length=64)
    return fairseq_mt("BartForConditionalGeneration", "bart", layers, scale_embedding=False, forced_bos=0,
                      n_language_codes=0, generation=generation, seed=seed, train_steps=train_steps)


def mbart(layers, n_language_codes, seed, train_steps=400):
    """An MBartForConditionalGeneration row in mBART-50's layout: language codes at the end of the vocabulary, the
    target language's code forced first (here the first code); generation_config as mbart-large-50 ships it."""
    target_language = layers["vocab_size"] - n_language_codes
    generation = dict(forced_bos_token_id=target_language, num_beams=4, early_stopping=True, max_length=64)
    return fairseq_mt("MBartForConditionalGeneration", "mbart", layers, scale_embedding=True,
                      forced_bos=target_language, n_language_codes=n_language_codes, generation=generation, seed=seed,
                      train_steps=train_steps)


def m2m100(layers, n_language_codes, seed, train_steps=400):
    """An M2M100ForConditionalGeneration row: language codes at the end, the target's forced first; sinusoidal
    positions (a buffer, not in the state_dict) and no final_logits_bias."""
    target_language = layers["vocab_size"] - n_language_codes
    generation = dict(forced_bos_token_id=target_language, num_beams=4, early_stopping=True, max_length=64)
    return fairseq_mt("M2M100ForConditionalGeneration", "m2m_100", layers, scale_embedding=True,
                      forced_bos=target_language, n_language_codes=n_language_codes, generation=generation, seed=seed,
                      train_steps=train_steps, random_buffers=())


def t5(vocab_size, d_model, d_kv, n_head, d_ff, n_layer, feed_forward_proj, tied, buckets, max_distance, seed,
       train_steps=400, task_prompt=False):
    """A T5ForConditionalGeneration row: pad 0 (also the decoder start), eos 1, unk 2; v1 ("relu", tied head scaled
    by d_model**-0.5) or flan ("gated-gelu", untied). Equal encoder and decoder depth: generate() fails otherwise.

    T5 has no absolute positions, so its encoder finds the first two source tokens (which start the toy chains) only
    through relative attention; with `task_prompt` every source starts with a prompt token (the last id), as FLAN
    inputs do, an anchor next to the first content token."""
    config = dict(
        model_type="t5",
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_kv,
        num_heads=n_head,
        d_ff=d_ff,
        num_layers=n_layer,
        num_decoder_layers=n_layer,
        feed_forward_proj=feed_forward_proj,
        tie_word_embeddings=tied,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=max_distance,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    generation = dict(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)  # as t5-small and flan-t5-small ship it
    prompt = (vocab_size - 1,) if task_prompt else ()
    return FixtureSpec("T5ForConditionalGeneration", config, generation, content_ids=(3, vocab_size - len(prompt)),
                       seed=seed, train_steps=train_steps, random_buffers=(), source_prefix=prompt)


FIXTURES = {
    "marian-opus": opus_mt(
        vocab_size=96, d_model=64, n_head=4, d_ff=128, encoder_layers=6, decoder_layers=6, tied=True, seed=1
    ),
    "marian-loud": dataclasses.replace(  # marian-opus, trained alike, then rescaled: logits beyond 30, large values
        opus_mt(vocab_size=96, d_model=64, n_head=4, d_ff=128, encoder_layers=6, decoder_layers=6, tied=True, seed=1),
        loudness=12.0,
    ),
    "marian-odd": opus_mt(  # d_model not a power of two, odd head count (d_head 12), encoder shallower than decoder
        vocab_size=83, d_model=60, n_head=5, d_ff=100, encoder_layers=3, decoder_layers=6, tied=True, seed=2
    ),
    "marian-untied": opus_mt(  # separate encoder embedding, decoder embedding and lm_head
        vocab_size=71, d_model=32, n_head=2, d_ff=64, encoder_layers=2, decoder_layers=6, tied=False, seed=3
    ),
    "bart-tiny": bart(  # d_head 8, decoder deeper than encoder, learned positions, no embedding scale
        bart_layers(vocab_size=70, d_model=40, n_head=5, d_ff=72, encoder_layers=2, decoder_layers=3,
                    max_positions=64, activation="gelu"),
        seed=4,
    ),
    "mbart-tiny": mbart(  # pre-norm, d_head 16, language codes 70..74, the target's (70) forced first
        bart_layers(vocab_size=75, d_model=48, n_head=3, d_ff=80, encoder_layers=2, decoder_layers=3,
                    max_positions=64, activation="gelu"),
        n_language_codes=5,
        seed=5,
        train_steps=600,  # at 400 steps one greedy row merges the two chains
    ),
    "m2m100-tiny": m2m100(  # d_head 12, relu, language codes 75..79, the target's (75) forced first
        bart_layers(vocab_size=80, d_model=36, n_head=3, d_ff=64, encoder_layers=2, decoder_layers=3,
                    max_positions=64, activation="relu"),
        n_language_codes=5,
        seed=16,
        train_steps=600,  # at 400 steps greedy repeats tokens; seed 6 at 800 steps gives beam == greedy on every row
    ),
    "t5-v1": t5(  # n_head * d_kv = 36 != d_model 40
        vocab_size=64, d_model=40, d_kv=12, n_head=3, d_ff=72, n_layer=3, feed_forward_proj="relu", tied=True,
        buckets=8, max_distance=24, seed=17, train_steps=1000,  # seed 7 records a source whose chains coincide
    ),
    "flan-t5-tiny": t5(  # gated-gelu, untied head, n_head * d_kv = 50 != d_model 44; sources start with prompt id 65
        vocab_size=66, d_model=44, d_kv=10, n_head=5, d_ff=60, n_layer=3, feed_forward_proj="gated-gelu", tied=False,
        buckets=8, max_distance=20, seed=18, train_steps=1200, task_prompt=True,  # slow learner: collapses the chains
    ),
}


def build_model(spec):
    """Instantiate the spec's model with every trainable parameter drawn at random."""
    config = transformers.AutoConfig.for_model(**spec.config)
    model = getattr(transformers, spec.model_class)(config)
    model.generation_config = transformers.GenerationConfig(**spec.generation)
    randomize_parameters(model)
    return model


@torch.no_grad()
def randomize_parameters(model):
    """Draw matrices ~ N(0, 1/fan_in), norm gains ~ 1 + 0.2 N, other vectors (biases) ~ 0.2 N.

    Frozen parameters are left alone: they are the fixed sinusoid tables (Marian's embed_positions) that HF recomputes
    on load; M2M100's table is a buffer and T5 has none. Learned tables (BART's and mBART's embed_positions, T5's
    relative_attention_bias) are matrices like any other. A zero bias or a unit gain would hide a kernel that reads
    the wrong weight.
    """
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() == 2:
            p.normal_(0.0, p.shape[1] ** -0.5)
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
        else:
            p.copy_(0.2 * torch.randn_like(p))


def toy_target(src, spec):
    """The toy mapping: two interleaved chains of content ids, started by the first two source tokens, each step
    `stride` ids further: t[j] = t[j - 2] + stride. Predicting t[j] needs the token two steps back, so greedy output
    depends on the KV cache, and its length (2 * len(src)) on the source."""
    first, stop = spec.content_ids
    n_content = stop - first
    return [first + (src[j % 2] - first + spec.stride * (j // 2 + 1)) % n_content for j in range(2 * len(src))]


def random_content(n, spec, generator):  # -> [n] content token ids
    """`n` random tokens drawn from the spec's content ids."""
    first, stop = spec.content_ids
    return torch.randint(first, stop, (n,), generator=generator).tolist()


def pad_rows(rows, pad):  # list of n_batch lists -> [n_batch, max_len], [n_batch, max_len]
    """Right-pad token rows with `pad`; return the ids and the 0/1 attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def toy_batch(spec, generator):  # -> input_ids, attention_mask [n_batch, n_src]; labels [n_batch, n_lab]
    """A training batch of random sources and their toy targets, both ending in eos; padded labels are -100."""
    eos, pad = spec.config["eos_token_id"], spec.config["pad_token_id"]
    lo, hi = spec.train_lengths
    lengths = torch.randint(lo, hi + 1, (spec.train_batch,), generator=generator).tolist()
    sources = [random_content(n, spec, generator) for n in lengths]
    input_ids, attention_mask = pad_rows([list(spec.source_prefix) + s + [eos] for s in sources], pad)
    labels, label_mask = pad_rows([spec.target_prefix + toy_target(s, spec) + [eos] for s in sources], pad)
    return input_ids, attention_mask, labels.masked_fill(label_mask == 0, -100)


def train(model, spec):
    """Fit the toy mapping with Adam (lr 1e-3 after a linear warmup); HF shifts the labels right behind the decoder
    start token. The model stays in eval mode: no dropout, so a few hundred steps suffice. Returns the last loss."""
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / spec.warmup_steps))
    model.eval()
    for _ in range(spec.train_steps):
        input_ids, attention_mask, labels = toy_batch(spec, generator)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        warmup.step()
    return loss.item()


@torch.no_grad()
def make_loud(model, loudness, generator):
    """Rescale a trained post-norm Marian into a loud one: norm gains and biases, output projections, keys, values
    and logits `loudness` times larger or more, the same function in real arithmetic (up to the norms' epsilon)
    except that the logits are scaled too.

    LayerNorm is invariant to scaling its input, so each norm's output may grow by c if every consumer of it
    divides its input weights by c and the sublayer's output projection grows by c (the residual then carries
    c * (h + sublayer(h)), which the next norm undoes). Inside attention, q grows by 1/a while k grows by a, and
    v grows by b while out_proj's weight shrinks by b. The decoder's last norm is left uncompensated: the tied
    lm_head reads it, so the logits grow by its factor."""
    assert model.config.model_type == "marian", "make_loud rescales the post-norm Marian layout"

    def factor():  # a factor in [loudness, 2 * loudness): no power of two, so rounding is not just shifted
        return loudness * (1.0 + torch.rand((), generator=generator).item())

    base = model.model
    out_scale = {}  # norm module -> the factor its output carries
    def attention(attn, q_in, kv_in, residual_in):
        a, b = factor(), factor()
        for p in (attn.q_proj.weight, attn.q_proj.bias):
            p.mul_(1.0 / a)
        attn.q_proj.weight.mul_(1.0 / q_in)
        attn.k_proj.weight.mul_(a / kv_in)
        attn.k_proj.bias.mul_(a)
        attn.v_proj.weight.mul_(b / kv_in)
        attn.v_proj.bias.mul_(b)
        attn.out_proj.weight.mul_(residual_in / b)
        attn.out_proj.bias.mul_(residual_in)

    def feed_forward(layer, c_in):
        layer.fc1.weight.mul_(1.0 / c_in)
        layer.fc2.weight.mul_(c_in)
        layer.fc2.bias.mul_(c_in)

    def scale_norm(norm):
        c = factor()
        norm.weight.mul_(c)
        norm.bias.mul_(c)
        return c

    c_in = 1.0  # the embeddings enter unscaled
    for layer in base.encoder.layers:
        attention(layer.self_attn, c_in, c_in, c_in)
        c_sa = scale_norm(layer.self_attn_layer_norm)
        feed_forward(layer, c_sa)
        c_in = scale_norm(layer.final_layer_norm)
    c_encoder = c_in
    c_in = 1.0
    for layer in base.decoder.layers:
        attention(layer.self_attn, c_in, c_in, c_in)
        c_sa = scale_norm(layer.self_attn_layer_norm)
        attention(layer.encoder_attn, c_sa, c_encoder, c_sa)
        c_ca = scale_norm(layer.encoder_attn_layer_norm)
        feed_forward(layer, c_ca)
        c_in = scale_norm(layer.final_layer_norm)  # the last one scales the logits


@torch.no_grad()
def randomize_buffers(model, names):
    """Draw the named buffers (final_logits_bias of Marian, BART, mBART) ~ 0.5 N after training, so they are never
    zero."""
    buffers = dict(model.named_buffers())
    for name in names:
        buffers[name].copy_(0.5 * torch.randn_like(buffers[name]))


def recorded_batch(spec):  # -> input_ids, attention_mask [3, n_src]; decoder_input_ids [3, n_tgt]
    """The recorded inputs: sources of different lengths (prefix and eos included), right-padded; teacher-forced
    decoder ids that start with the decoder start token and go on with random non-pad tokens."""
    generator = torch.Generator().manual_seed(spec.seed + 1000)
    eos, pad = spec.config["eos_token_id"], spec.config["pad_token_id"]
    start = spec.config["decoder_start_token_id"]
    prefix = list(spec.source_prefix)
    sources = [prefix + random_content(n - 1 - len(prefix), spec, generator) + [eos] for n in spec.src_lengths]
    input_ids, attention_mask = pad_rows(sources, pad)
    non_pad = torch.tensor([i for i in range(spec.config["vocab_size"]) if i != pad])
    picks = torch.randint(0, len(non_pad), (len(sources), spec.n_tgt - 1), generator=generator)
    decoder_input_ids = torch.cat([torch.full((len(sources), 1), start), non_pad[picks]], dim=1)
    return input_ids, attention_mask, decoder_input_ids


def generate_kwargs(spec):
    """The exact generate() arguments recorded for greedy and beam search; the rest comes from generation_config.
    Beam search records generation_config's length_penalty and early_stopping, which an engine reading
    generation_config.json uses too."""
    generation = transformers.GenerationConfig(**spec.generation)
    greedy = dict(num_beams=1, do_sample=False, max_new_tokens=spec.n_tgt)
    beam = dict(
        num_beams=4,
        num_return_sequences=1,
        do_sample=False,
        max_new_tokens=spec.n_tgt,
        length_penalty=generation.length_penalty,
        early_stopping=generation.early_stopping,
    )
    return {"greedy": greedy, "beam": beam}


@torch.no_grad()
def record_outputs(model, spec):
    """PyTorch's own float32 outputs on the test batch: teacher-forced logits, greedy ids and beam ids."""
    input_ids, attention_mask, decoder_input_ids = recorded_batch(spec)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    kwargs = generate_kwargs(spec)
    greedy_ids = model.generate(input_ids, attention_mask=attention_mask, **kwargs["greedy"])
    beam_ids = model.generate(input_ids, attention_mask=attention_mask, **kwargs["beam"])
    outputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
        logits=logits.float(),
        greedy_ids=greedy_ids,
        beam_ids=beam_ids,
    )
    return {k: v.contiguous() for k, v in outputs.items()}


def new_tokens(row, spec):  # [1 + n_new] -> list of n_new token ids, eos included, decoder start and padding removed
    """The tokens generate() emitted for one row, up to and including the first eos."""
    tokens = row[1:].tolist()
    eos = spec.config["eos_token_id"]
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def check_greedy(greedy_ids, spec):
    """Assert the greedy outputs exercise something: each row at least half distinct tokens, one row of >= 32 tokens,
    one row ending early in eos and padding. Returns each row's distinct fraction."""
    rows = [new_tokens(row, spec) for row in greedy_ids]
    fractions = [len(set(r)) / len(r) for r in rows]
    assert min(fractions) >= 0.5, f"greedy rows too repetitive: distinct fractions {fractions}, rows {rows}"
    assert max(len(r) for r in rows) >= 32, f"no greedy row reaches 32 tokens: {[len(r) for r in rows]}"
    assert min(len(r) for r in rows) < greedy_ids.shape[1] - 1, "no greedy row ends early (no pad after eos)"
    return fractions


def state_dict_tensors(model):
    """Each state_dict key as its own contiguous float32 tensor; tied keys cloned (safetensors refuses shared data)."""
    return {k: v.detach().clone().float().contiguous() for k, v in model.state_dict().items()}


def export_onnx(model, out_dir):
    """save_pretrained to a temp dir, then optimum-cli's text2text-generation-with-past export into `out_dir`."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        task = "text2text-generation-with-past"
        command = ["optimum-cli", "export", "onnx", "--model", tmp, "--task", task, str(out_dir)]
        # optimum's decoder merge names shared weights in set order: a fixed hash seed makes the export reproducible
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"optimum-cli failed:\n{result.stderr}")
    missing = [g for g in ONNX_GRAPHS if not (out_dir / g).is_file()]
    assert not missing, f"optimum-cli wrote no {missing}"


def onnx_logits(out_dir, outputs):  # -> [n_batch, n_tgt, n_vocab]
    """Teacher-forced logits from ONNX Runtime: encoder_model.onnx, then decoder_model.onnx (no cache), no fusions."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    encoder = ort.InferenceSession(str(out_dir / "encoder_model.onnx"), options, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(out_dir / "decoder_model.onnx"), options, providers=["CPUExecutionProvider"])
    attention_mask = outputs["attention_mask"].numpy()
    (hidden,) = encoder.run(None, {"input_ids": outputs["input_ids"].numpy(), "attention_mask": attention_mask})
    feeds = {
        "input_ids": outputs["decoder_input_ids"].numpy(),
        "encoder_hidden_states": hidden,
        "encoder_attention_mask": attention_mask,
    }
    return decoder.run(["logits"], feeds)[0]


def dir_size(path):
    """Total bytes of the files in `path`."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def write_fixture(model, outputs, meta, out_dir):
    """The ONNX export plus PyTorch's outputs, full state_dict and generate() record, all in `out_dir`."""
    state = state_dict_tensors(model)
    export_onnx(model, out_dir)
    safetensors.torch.save_file(outputs, str(out_dir / "torch_outputs.safetensors"))
    safetensors.torch.save_file(state, str(out_dir / "torch_state_dict.safetensors"))
    (out_dir / "torch_outputs.json").write_text(json.dumps(meta, indent=2) + "\n")


def make_fixture(name, spec):
    """Build, record, export and check one fixture; returns a summary dict for the log.

    The fixture is written to a staging dir next to tests/fixtures/<name>/ and swapped in only once it passes the
    ONNX Runtime check, so a failed run never leaves a half-written fixture behind."""
    torch.manual_seed(spec.seed)
    model = build_model(spec)
    loss = train(model, spec)
    if spec.loudness:
        make_loud(model, spec.loudness, torch.Generator().manual_seed(spec.seed + 2000))
    randomize_buffers(model, spec.random_buffers)
    outputs = record_outputs(model, spec)
    fractions = check_greedy(outputs["greedy_ids"], spec)
    meta = dict(
        generate_kwargs=generate_kwargs(spec),
        torch_version=torch.__version__,
        transformers_version=transformers.__version__,
        seed=spec.seed,
        train_steps=spec.train_steps,
        final_train_loss=round(loss, 4),
        greedy_distinct_fractions=[round(f, 3) for f in fractions],
    )
    out_dir = FIXTURES_DIR / name
    with tempfile.TemporaryDirectory(dir=FIXTURES_DIR, prefix=f".{name}-") as stage:
        staged = Path(stage) / name
        write_fixture(model, outputs, meta, staged)
        diff = float(np.abs(onnx_logits(staged, outputs) - outputs["logits"].numpy()).max())
        # a build-time sanity bound, scaled to the logits (float32 rounding stays near 1e-6 of them); the tests
        # judge every output by the verdict rule
        limit = 1e-5 * float(outputs["logits"].abs().max())
        assert diff < limit, f"{name}: ONNX Runtime logits differ from PyTorch's by {diff} (limit {limit:.2g})"
        shutil.rmtree(out_dir, ignore_errors=True)
        staged.rename(out_dir)
    return dict(loss=loss, fractions=fractions, logits_max_abs_diff=diff, bytes=dir_size(out_dir))


# Tokenizers: tiny ones trained here whose ids line up with each fixture's vocabulary, and HF's text outputs

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
WORDS = ("the a an of to in and or but not is was are be have has had do says said make made go went see saw know "
         "time year people way day man woman child world life hand part place case week company system program "
         "question work government number night point home water room mother area money story fact month lot right "
         "study book eye job word business issue side kind head house service friend father power hour game line "
         "end member law car city name team minute idea kid body information back parent face others level office "
         "door health person art war history party result change morning reason research girl guy moment air "
         "teacher force education good new first last long great little own other old big high different small "
         "large next early young important few public bad same able translate model token cafe naive").split()
PUNCTUATION = (".", ",", "!", "?", ";", ":", "'s", "n't", "-", "(", ")", "\"")
HF_TEXT_SOURCES = (  # odd spacing, capitals, punctuation, a character outside the training alphabet
    "Hello, world!",
    "  the  house   is big .  ",
    "WHAT a DAY, Said the Teacher?",
    "isn't it (really) the same - or not ; yes: no!",
    "Café naïve, 12 345 and 6.",
    "a",
)
DECODE_SOURCES = ("hello . world , is n't it ? yes ! they 're here , I 'm sure", "<unk> a </s> b <pad> <s> c")
FLAN_PROMPT = "summarize:"  # flan-t5-tiny's prompt id (the last one) as one added token: its sources start with it
MBART50_CODES = ("de_DE", "en_XX", "fr_XX", "ro_RO", "zh_CN")  # mbart-tiny's ids 70..74; de_DE (70) forced first
NLLB_CODES = ("deu_Latn", "eng_Latn", "fra_Latn", "ron_Latn", "zho_Hans")  # m2m100-tiny's ids 75..79; deu_Latn forced
LANGUAGE_VARIANTS = {"MBart50TokenizerFast": ("MBartTokenizerFast", {}),
                     "NllbTokenizerFast": ("NllbTokenizerFast", {"legacy_behaviour": True})}
# tokenizer rows: the HF tokenizer class, how the backend is built, language codes, clean_up_tokenization_spaces
TOKENIZERS = {
    "bart-tiny": dict(hf_class="BartTokenizerFast", backend="byte_bpe", codes=(), clean_up=True),
    "mbart-tiny": dict(hf_class="MBart50TokenizerFast", backend="metaspace_bpe", codes=MBART50_CODES, clean_up=False),
    "m2m100-tiny": dict(hf_class="NllbTokenizerFast", backend="metaspace_bpe", codes=NLLB_CODES, clean_up=False),
    "t5-v1": dict(hf_class="T5TokenizerFast", backend="unigram", codes=(), clean_up=True),
    "flan-t5-tiny": dict(hf_class="T5TokenizerFast", backend="unigram", codes=(), clean_up=False, prompt=FLAN_PROMPT),
}


def tokenizer_corpus(n_sentences=4000, seed=0):  # -> list of str
    """Seeded English-like sentences: the word list, some capitalized, with punctuation between words."""
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(n_sentences):
        words = [str(w) for w in rng.choice(WORDS, rng.integers(3, 12))]
        words[0] = words[0].capitalize()
        words = [w.upper() if rng.random() < 0.05 else w for w in words]
        text = " ".join(w + (str(rng.choice(PUNCTUATION)) if rng.random() < 0.15 else "") for w in words)
        sentences.append(text + str(rng.choice([".", "?", "!"])))
    return sentences


def train_backend(row, spec):  # -> tokenizers.Tokenizer with exactly the fixture's vocab_size ids
    """A tokenizers backend in the family's style: byte-level BPE (BART), metaspace BPE with the language codes last
    (mBART-50, NLLB), unigram with metaspace (T5, with an added prompt token last for flan). Specials first, in the
    fixture's order: <s> <pad> </s> <unk> (fairseq) or <pad> </s> <unk> (T5)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: the unigram trainer is reproducible then
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    n_vocab = spec.config["vocab_size"]
    if row["backend"] == "unigram":
        specials = ["<pad>", "</s>", "<unk>"]
        backend = Tokenizer(models.Unigram())
        backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                               special_tokens=[("</s>", 1)])  # as t5-small's
        n_pieces = n_vocab - (1 if "prompt" in row else 0)
        trainer = trainers.UnigramTrainer(vocab_size=n_pieces, special_tokens=specials, unk_token="<unk>",
                                          shrinking_factor=0.9)
    else:
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        backend = Tokenizer(models.BPE(unk_token="<unk>"))
        if row["backend"] == "byte_bpe":
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        else:
            backend.normalizer = normalizers.NFKC()
            backend.pre_tokenizer = pre_tokenizers.Metaspace()
            backend.decoder = decoders.Metaspace()
        n_pieces = n_vocab - len(row["codes"])
        trainer = trainers.BpeTrainer(vocab_size=n_pieces, special_tokens=specials, limit_alphabet=40)
    corpus = tokenizer_corpus()
    if row["backend"] == "unigram":  # unigram keeps every character it sees: lower case and . , only, the rest <unk>
        corpus = [re.sub(r"[^a-z ., ]", "", text.lower()) for text in corpus]
    backend.train_from_iterator(corpus, trainer)
    assert backend.get_vocab_size() == n_pieces, f"trained {backend.get_vocab_size()} ids, wanted {n_pieces}"
    assert [backend.token_to_id(t) for t in specials] == list(range(len(specials)))
    backend.add_special_tokens(list(row["codes"]))
    if "prompt" in row:
        backend.add_tokens([row["prompt"]])
    assert backend.get_vocab_size() == n_vocab
    return backend


def hf_tokenizer(row, spec, backend):  # -> a transformers fast tokenizer around the backend
    """The family's HF tokenizer class, as its hub checkpoints configure it (no <mask>, no T5 extra ids: they would
    take ids past the fixture's vocabulary)."""
    kwargs = dict(tokenizer_object=backend, clean_up_tokenization_spaces=row["clean_up"])
    if row["codes"]:
        kwargs.update(src_lang=row["codes"][1], tgt_lang=row["codes"][0], mask_token=None,
                      additional_special_tokens=list(row["codes"]))
    elif row["hf_class"] == "BartTokenizerFast":
        kwargs.update(mask_token=None)
    else:
        kwargs.update(extra_ids=0)
    return getattr(transformers, row["hf_class"])(**kwargs)


def rebuild_model(name, spec):
    """The fixture's trained PyTorch model from config.json and torch_state_dict.safetensors, checked to give the
    recorded greedy ids again."""
    out_dir = FIXTURES_DIR / name
    config = transformers.AutoConfig.from_pretrained(out_dir)
    model = getattr(transformers, spec.model_class)(config).eval()
    state = safetensors.torch.load_file(str(out_dir / "torch_state_dict.safetensors"))
    model.load_state_dict(state, strict=False)
    model.generation_config = transformers.GenerationConfig.from_pretrained(out_dir)
    recorded = safetensors.torch.load_file(str(out_dir / "torch_outputs.safetensors"))
    with torch.no_grad():
        greedy = model.generate(recorded["input_ids"], attention_mask=recorded["attention_mask"],
                                **generate_kwargs(spec)["greedy"])
    assert torch.equal(greedy, recorded["greedy_ids"]), f"{name}: the rebuilt model does not reproduce its greedy ids"
    return model


@torch.no_grad()
def record_texts(model, tokenizer, spec, sources, src_lang=None, tgt_lang=None):
    """HF's text out for `sources`: tokenizer(sources, padding=True) -> generate() greedy and beam -> batch_decode
    with skip_special_tokens; with src_lang/tgt_lang set on the tokenizer and forced_bos_token_id = tgt_lang's id."""
    extra = {}
    if src_lang is not None:
        tokenizer.src_lang = src_lang
        extra["forced_bos_token_id"] = tokenizer.convert_tokens_to_ids(tgt_lang)
    inputs = tokenizer(list(sources), return_tensors="pt", padding=True)
    unpadded = [row[mask == 1].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    record = dict(src_lang=src_lang, tgt_lang=tgt_lang, sources=list(sources), input_ids=unpadded, **extra)
    for kind, kwargs in generate_kwargs(spec).items():
        output = model.generate(**inputs, **kwargs, **extra)
        record[kind] = dict(generate_kwargs=kwargs, output_ids=output.tolist(),
                            texts=tokenizer.batch_decode(output, skip_special_tokens=True))
    return record


def make_tokenizer(name):
    """Train the fixture's tokenizer, save it as HF save_pretrained writes it, load it back through AutoTokenizer
    and record HF's text outputs into hf_text.json; the new files are staged, then renamed into the fixture dir."""
    spec, row = FIXTURES[name], TOKENIZERS[name]
    model = rebuild_model(name, spec)
    out_dir = FIXTURES_DIR / name
    with tempfile.TemporaryDirectory(dir=FIXTURES_DIR, prefix=f".{name}-tok-") as stage:
        stage = Path(stage)
        hf_tokenizer(row, spec, train_backend(row, spec)).save_pretrained(stage)
        written = {p.name for p in stage.iterdir()}  # BART adds vocab.json and merges.txt, as facebook/bart-* ship
        assert set(TOKENIZER_FILES) <= written and not written & {"config.json", "generation_config.json"}, written
        tokenizer = transformers.AutoTokenizer.from_pretrained(stage)
        assert type(tokenizer).__name__ == row["hf_class"], type(tokenizer).__name__
        sources = [f"{row['prompt']} {s}" for s in HF_TEXT_SOURCES] if "prompt" in row else list(HF_TEXT_SOURCES)
        records = [record_texts(model, tokenizer, spec, sources)]
        if row["codes"]:
            codes = row["codes"]
            for src_lang, tgt_lang in ((codes[2], codes[3]), (codes[4], codes[1])):
                tokenizer = transformers.AutoTokenizer.from_pretrained(stage)
                records.append(record_texts(model, tokenizer, spec, sources, src_lang, tgt_lang))
            # the other placement of the source code, `text </s> [code]`: the same files read as mBART-cc25's class
            # reads them, or with NLLB's legacy_behaviour; `config_overrides` is what tokenizer_config.json then says
            hf_class, overrides = LANGUAGE_VARIANTS[row["hf_class"]]
            for src_lang, tgt_lang in ((None, None), (codes[2], codes[3])):
                tokenizer = getattr(transformers, hf_class).from_pretrained(stage, **overrides)
                records.append(dict(record_texts(model, tokenizer, spec, sources, src_lang, tgt_lang),
                                    config_overrides=dict(overrides, tokenizer_class=hf_class)))
        n_vocab = spec.config["vocab_size"]
        decode_ids = [tokenizer(text)["input_ids"] for text in DECODE_SOURCES]  # spaces before punctuation, specials
        decode_ids += [list(range(n_vocab)), list(range(n_vocab))[::-1]]  # every id, next to every kind of neighbour
        decodes = [dict(ids=ids, text=tokenizer.decode(ids, skip_special_tokens=True)) for ids in decode_ids]
        meta = dict(tokenizer_class=row["hf_class"], transformers_version=transformers.__version__,
                    tokenizers_version=__import__("tokenizers").__version__, records=records, decodes=decodes)
        (stage / "hf_text.json").write_text(json.dumps(meta, ensure_ascii=False) + "\n", encoding="utf-8")
        for path in stage.iterdir():
            os.replace(path, out_dir / path.name)
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(FIXTURES), help="build just this fixture (default: all)")
    parser.add_argument("--tokenizers-only", action="store_true",
                        help="only train the tokenizers and record HF's text outputs, into the existing fixtures")
    args = parser.parse_args()
    torch.set_num_threads(1)  # deterministic reductions, and the machine is shared
    names = [args.only] if args.only else list(FIXTURES)
    start = time.perf_counter()
    if args.tokenizers_only:
        for name in [n for n in names if n in TOKENIZERS]:
            records = make_tokenizer(name)
            texts = [t for r in records for kind in ("greedy", "beam") for t in r[kind]["texts"]]
            print(f"{name}: {len(records)} records, {sum(map(bool, texts))}/{len(texts)} non-empty texts, "
                  f"e.g. {texts[0]!r}")
        print(f"total {time.perf_counter() - start:.0f} s")
        return
    for name in names:
        t0 = time.perf_counter()
        summary = make_fixture(name, FIXTURES[name])
        fractions = ", ".join(f"{f:.2f}" for f in summary["fractions"])
        print(
            f"{name}: train loss {summary['loss']:.3f}, greedy distinct [{fractions}], "
            f"ORT logits max|diff| {summary['logits_max_abs_diff']:.2e}, "
            f"{summary['bytes'] / 1e6:.2f} MB, {time.perf_counter() - t0:.0f} s"
        )
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
