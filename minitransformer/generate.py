"""Greedy search, sampling and beam search over Model.decode_step, with HF generate()'s processors, warpers,
stopping and result objects.

No model math here. Settings come from generation_config.json, overridden by keyword arguments, and are resolved as
HF GenerationMixin does (transformers 4.57): max_new_tokens + 1 = max_length for an encoder-decoder, a default
max_length of 20 becomes 21, min_new_tokens + 1 replaces min_length. Greedy search and sampling follow `_sample`,
beam search the vectorized `_beam_search`, step for step; the processors and warpers run in
`_get_logits_processor`'s order. Sampling draws from a numpy Generator seeded by `seed`, so a run repeats exactly
(torch draws differently: sampled ids are ours, the distributions they are drawn from are HF's).
"""
from dataclasses import dataclass, field

import numpy as np

from .errors import ModelError
from .kernels import top_k
from .model import attention_maps
from .observe import Recorder
from .ops import log_softmax

SETTINGS = ("max_length", "max_new_tokens", "min_length", "min_new_tokens", "num_beams", "decoder_start_token_id",
            "eos_token_id", "pad_token_id", "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id",
            "repetition_penalty", "no_repeat_ngram_size", "suppress_tokens", "begin_suppress_tokens",
            "length_penalty", "early_stopping", "num_return_sequences", "do_sample", "temperature", "top_k", "top_p",
            "renormalize_logits", "return_dict_in_generate", "output_scores", "output_logits", "output_attentions",
            "output_hidden_states", "seed")
# generation_config.json keys that change nothing here
_IGNORED = {"_from_model_config", "transformers_version", "use_cache"}
_NEG_INF = np.float32(-np.inf)
_HF_DEFAULT_MAX_LENGTH = 20  # GenerationConfig().max_length: HF adds the decoder prompt's length (1) to it


@dataclass
class Settings:
    """One generate() call's settings, resolved from generation_config.json and keyword arguments."""
    max_length: int
    num_beams: int
    decoder_start_token_id: int
    eos_token_ids: list
    pad_token_id: int
    min_length: int = 0               # min_new_tokens + 1 when min_new_tokens is given (HF: it takes precedence)
    bad_words_ids: list = field(default_factory=list)
    forced_bos_token_id: int | None = None
    forced_eos_token_id: list | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    suppress_tokens: list = field(default_factory=list)
    begin_suppress_tokens: list = field(default_factory=list)
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    do_sample: bool = False
    temperature: float = 1.0          # the warpers act only when do_sample
    top_k: int = 50                   # GenerationConfig's default; 0 turns it off
    top_p: float = 1.0
    renormalize_logits: bool = False
    return_dict_in_generate: bool = False
    output_scores: bool = False
    output_logits: bool = False
    output_attentions: bool = False
    seed: int | None = None


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _ids_list(value, key, nested=False):
    """An int or a list of ints (a list of non-empty lists of ints if nested) -> list; else ModelError."""
    if value is None:
        return []
    if not nested and _is_int(value):
        return [int(value)]
    items = value if isinstance(value, (list, tuple)) else None
    ok = items is not None and all(
        (isinstance(item, (list, tuple)) and item and all(_is_int(t) for t in item)) if nested else _is_int(item)
        for item in items)
    if not ok:
        shape = "a list of non-empty lists of token ids" if nested else "a token id or a list of token ids"
        raise ModelError(f"generate: {key} must be {shape}, got {value!r}")
    return [list(map(int, item)) for item in items] if nested else [int(item) for item in items]


def _check(value, key, kind):
    """One scalar setting checked by kind: 'count' (int >= 0), 'positive' (int >= 1), 'id', 'number', 'flag',
    'above 0' (a number > 0), 'fraction' (a number in [0, 1])."""
    if value is None:
        return None
    number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    ok = {"count": _is_int(value) and value >= 0, "positive": _is_int(value) and value >= 1, "id": _is_int(value),
          "number": number, "flag": isinstance(value, bool), "above 0": number and value > 0,
          "fraction": number and 0 <= value <= 1}[kind]
    if not ok:
        shape = {"positive": "a positive integer", "count": "a non-negative integer", "flag": "true or false",
                 "above 0": "a number above 0", "fraction": "a number in [0, 1]"}.get(kind, "a " + kind)
        raise ModelError(f"generate: {key} must be {shape}, got {value!r}")
    return value


def resolve_settings(model, kwargs):
    """generation_config.json, then config.json fallbacks, overridden by kwargs (None means "not given")."""
    unknown = sorted(set(kwargs) - set(SETTINGS))
    if unknown:
        raise ModelError(f"generate: unknown setting(s) {', '.join(unknown)} (known: {', '.join(SETTINGS)})")
    given = {key: value for key, value in kwargs.items() if value is not None}
    merged = {**{k: v for k, v in model.generation_config.items() if k not in _IGNORED}, **given}

    def setting(key, kind=None, default=None):
        value = merged.get(key)
        value = model.config.get(key, default) if value is None else value
        return _check(value, key, kind) if kind else value

    if setting("output_hidden_states", "flag", False):
        raise ModelError("generate: output_hidden_states is not supported (scores, logits and attentions are)")
    num_beams = setting("num_beams", "positive", 1)
    do_sample = setting("do_sample", "flag", False)
    if do_sample and num_beams > 1:
        raise ModelError("generate: do_sample with num_beams > 1 (beam sampling) is not supported")
    num_return_sequences = setting("num_return_sequences", "positive", 1)
    if num_beams > 1 and num_return_sequences > num_beams:
        raise ModelError(f"generate: num_return_sequences {num_return_sequences} exceeds num_beams {num_beams}")
    if num_beams == 1 and not do_sample and num_return_sequences != 1:
        raise ModelError("generate: greedy search returns one sequence per source; num_return_sequences > 1 needs "
                         "num_beams > 1 or do_sample")
    max_length = _max_length(model, given, merged)
    eos_token_ids = _ids_list(setting("eos_token_id"), "eos_token_id")
    pad_token_id = setting("pad_token_id", "id")
    start = setting("decoder_start_token_id", "id", setting("bos_token_id", "id"))
    if start is None:
        raise ModelError("generate: no decoder_start_token_id in generation_config.json or config.json")
    forced_eos = setting("forced_eos_token_id")
    early_stopping = setting("early_stopping", default=False)
    if early_stopping not in (True, False, "never"):
        raise ModelError(f"generate: early_stopping must be true, false or \"never\", got {early_stopping!r}")
    min_new_tokens = setting("min_new_tokens", "count")
    seed = setting("seed", "count")
    settings = Settings(
        max_length=max_length, num_beams=num_beams, decoder_start_token_id=int(start), eos_token_ids=eos_token_ids,
        pad_token_id=int(pad_token_id if pad_token_id is not None else (eos_token_ids or [0])[0]),
        min_length=min_new_tokens + 1 if min_new_tokens is not None else setting("min_length", "count", 0) or 0,
        bad_words_ids=[seq for seq in _ids_list(setting("bad_words_ids"), "bad_words_ids", nested=True)
                       if seq not in [[e] for e in eos_token_ids]],
        forced_bos_token_id=setting("forced_bos_token_id", "id"),
        forced_eos_token_id=_ids_list(forced_eos, "forced_eos_token_id") if forced_eos is not None else None,
        repetition_penalty=float(setting("repetition_penalty", "above 0", 1.0)),
        no_repeat_ngram_size=setting("no_repeat_ngram_size", "count", 0) or 0,
        suppress_tokens=_ids_list(setting("suppress_tokens"), "suppress_tokens"),
        begin_suppress_tokens=_ids_list(setting("begin_suppress_tokens"), "begin_suppress_tokens"),
        length_penalty=float(setting("length_penalty", "number", 1.0)), early_stopping=early_stopping,
        num_return_sequences=num_return_sequences, do_sample=do_sample,
        temperature=float(setting("temperature", "above 0", 1.0)), top_k=int(setting("top_k", "count", 50)),
        top_p=float(setting("top_p", "fraction", 1.0)),
        renormalize_logits=setting("renormalize_logits", "flag", False),
        return_dict_in_generate=setting("return_dict_in_generate", "flag", False),
        output_scores=setting("output_scores", "flag", False), output_logits=setting("output_logits", "flag", False),
        output_attentions=setting("output_attentions", "flag", False), seed=None if seed is None else int(seed))
    n_vocab = model.spec.n_vocab
    token_ids = ([settings.decoder_start_token_id, settings.pad_token_id] + settings.eos_token_ids
                 + [t for seq in settings.bad_words_ids for t in seq] + settings.suppress_tokens
                 + settings.begin_suppress_tokens + (settings.forced_eos_token_id or [])
                 + ([settings.forced_bos_token_id] if settings.forced_bos_token_id is not None else []))
    bad = [t for t in token_ids if not 0 <= t < n_vocab]
    if bad:
        raise ModelError(f"generate: token id {bad[0]} in the generation settings is outside [0, {n_vocab})")
    return settings


def _max_length(model, given, merged):
    """HF _prepare_generated_length: max_new_tokens + 1 wins; a max_length not passed as an argument that equals
    HF's default 20 becomes 21 (capped by max_position_embeddings); any other max_length stays."""
    max_new_tokens = _check(given.get("max_new_tokens", merged.get("max_new_tokens") if "max_length" not in given
                                      else None), "max_new_tokens", "positive")
    if max_new_tokens is not None:
        return max_new_tokens + 1
    max_length = _check(merged.get("max_length", _HF_DEFAULT_MAX_LENGTH), "max_length", "positive")
    if "max_length" not in given and max_length == _HF_DEFAULT_MAX_LENGTH:
        max_length = min(max_length + 1, model.config.get("max_position_embeddings") or max_length + 1)
    if max_length < 2:
        raise ModelError(f"generate: max_length {max_length} leaves no room for a new token")
    return max_length


def process_logits(sequences, scores, s):
    # sequences [n_rows, cur_len] (decoder start first), scores [n_rows, n_vocab] -> processed copy
    """HF's logits processors, then (do_sample) its warpers, in HF's order (GenerationMixin._get_logits_processor)."""
    scores = scores.copy()
    cur_len = sequences.shape[1]
    rows = np.arange(scores.shape[0])[:, None]
    if s.repetition_penalty != 1.0:
        seen = scores[rows, sequences]
        scores[rows, sequences] = np.where(seen < 0, seen * s.repetition_penalty, seen / s.repetition_penalty)
    if s.no_repeat_ngram_size > 0 and cur_len + 1 >= s.no_repeat_ngram_size:
        n = s.no_repeat_ngram_size
        for row, seq in enumerate(sequences.tolist()):
            prefix = tuple(seq[cur_len - n + 1:])
            banned = [seq[i + n - 1] for i in range(cur_len - n + 1) if tuple(seq[i:i + n - 1]) == prefix]
            scores[row, banned] = _NEG_INF
    for bad in s.bad_words_ids:
        if len(bad) == 1:
            scores[:, bad[0]] = _NEG_INF
        elif len(bad) - 1 <= cur_len:
            matching = (sequences[:, cur_len - len(bad) + 1:] == np.array(bad[:-1])).all(axis=1)
            scores[matching, bad[-1]] = _NEG_INF
    if s.eos_token_ids and cur_len < s.min_length:
        scores[:, s.eos_token_ids] = _NEG_INF
    if s.forced_bos_token_id is not None and cur_len == 1:
        scores[:] = _NEG_INF
        scores[:, s.forced_bos_token_id] = 0
    if s.forced_eos_token_id is not None and cur_len == s.max_length - 1:
        scores[:] = _NEG_INF
        scores[:, s.forced_eos_token_id] = 0
    if s.suppress_tokens:
        scores[:, s.suppress_tokens] = _NEG_INF
    begin_index = 1 if s.forced_bos_token_id is None else 2
    if s.begin_suppress_tokens and cur_len == begin_index:
        scores[:, s.begin_suppress_tokens] = _NEG_INF
    if s.do_sample:
        scores = warp(scores, s)
    if s.renormalize_logits:
        scores = log_softmax(scores)
    return scores


def warp(scores, s):  # [n_rows, n_vocab] -> same
    """HF's sampling warpers in its order: temperature, top-k, top-p (removed tokens get -inf). HF's
    min_tokens_to_keep is 1 here: it is larger only in beam sampling, which is refused."""
    if s.temperature != 1.0:
        scores = scores / np.float32(s.temperature)
    if s.top_k != 0:  # TopKLogitsWarper: every token below the k-th largest score goes (ties at the k-th stay)
        k = min(s.top_k, scores.shape[1])
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]  # [n_rows, 1]
        scores = np.where(scores < kth, _NEG_INF, scores)
    if s.top_p < 1.0:  # TopPLogitsWarper: drop the least likely tokens whose cumulative probability <= 1 - top_p
        ascending = np.argsort(scores, axis=1, kind="stable")            # [n_rows, n_vocab]
        sorted_scores = np.take_along_axis(scores, ascending, axis=1)
        cumulative = np.cumsum(np.exp(log_softmax(sorted_scores)), axis=1)
        remove_sorted = cumulative <= np.float32(1 - s.top_p)
        remove_sorted[:, -1] = False                                  # the most likely token always stays
        remove = np.empty_like(remove_sorted)
        np.put_along_axis(remove, ascending, remove_sorted, axis=1)
        scores = np.where(remove, _NEG_INF, scores)
    return scores


def draw(scores, rng):  # [n_rows, n_vocab] warped scores -> [n_rows] token ids
    """One token per row from softmax(scores), by inverting the cumulative distribution at a uniform draw."""
    probs = np.exp(log_softmax(scores.astype(np.float64)))              # [n_rows, n_vocab]
    cumulative = np.cumsum(probs, axis=1)
    u = rng.random(scores.shape[0])[:, None] * cumulative[:, -1:]      # [n_rows, 1], in [0, total)
    tokens = (cumulative <= u).sum(axis=1)                              # first index whose cumulative exceeds u
    last_possible = scores.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
    return np.minimum(tokens, last_possible)                            # u rounding up to the total


@dataclass
class GenerateEncoderDecoderOutput:
    """HF's result of greedy search and sampling: the same fields in the same order; numpy arrays for tensors."""
    sequences: np.ndarray                      # [n_batch * num_return_sequences, 1 + n_new]
    scores: tuple | None = None                # per step [n_rows, n_vocab]: processed (and warped) scores
    logits: tuple | None = None                # per step [n_rows, n_vocab]: raw logits
    encoder_attentions: tuple | None = None    # per encoder layer [n_batch, n_head, n_src, n_src]
    encoder_hidden_states: tuple | None = None  # not recorded here (output_hidden_states is refused)
    decoder_attentions: tuple | None = None    # per step, per layer [n_rows, n_head, 1, n_k]
    cross_attentions: tuple | None = None      # per step, per layer [n_rows, n_head, 1, n_src]
    decoder_hidden_states: tuple | None = None  # not recorded here
    past_key_values: object = None             # not returned: the cache lives in the decoder state


@dataclass
class GenerateBeamEncoderDecoderOutput:
    """HF's result of beam search: the same fields in the same order; numpy arrays for tensors."""
    sequences: np.ndarray                      # [n_batch * num_return_sequences, 1 + n_new]
    sequences_scores: np.ndarray | None = None  # [n_batch * num_return_sequences]: length-penalized beam scores
    scores: tuple | None = None                # per step [n_batch * num_beams, n_vocab]: processed log-probabilities
    logits: tuple | None = None                # per step [n_batch * num_beams, n_vocab]: raw logits
    beam_indices: np.ndarray | None = None     # [n_batch * num_return_sequences, n_new]: row of each step's token
    encoder_attentions: tuple | None = None    # per encoder layer [n_batch, n_head, n_src, n_src]
    encoder_hidden_states: tuple | None = None  # not recorded here
    decoder_attentions: tuple | None = None    # per step, per layer [n_batch * num_beams, n_head, 1, n_k]
    cross_attentions: tuple | None = None      # per step, per layer [n_batch * num_beams, n_head, 1, n_src]
    decoder_hidden_states: tuple | None = None  # not recorded here
    past_key_values: object = None             # not returned


class Trace:
    """What a search keeps per step when asked: scores, raw logits, decoder and cross attentions."""

    def __init__(self, s):
        wanted = s.return_dict_in_generate
        self.scores = [] if wanted and s.output_scores else None
        self.logits = [] if wanted and s.output_logits else None
        self.attentions = [] if wanted and s.output_attentions else None  # per step (self, cross) per layer

    def step(self, stepper, logits, scores):
        if self.scores is not None:
            self.scores.append(scores.copy())
        if self.logits is not None:
            self.logits.append(logits.copy())
        if self.attentions is not None:
            self.attentions.append(stepper.attentions())

    def fields(self):  # -> the result object's per-step fields, None where not asked for
        def steps(items):
            return None if items is None else tuple(items)

        attentions = self.attentions
        return dict(scores=steps(self.scores), logits=steps(self.logits),
                    decoder_attentions=None if attentions is None else tuple(step[0] for step in attentions),
                    cross_attentions=None if attentions is None else tuple(step[1] for step in attentions))


class ModelStepper:
    """Our engine as a search sees it: one decoder state, stepped and reordered; attentions recorded on request."""

    def __init__(self, model, state, record_attentions=False):
        self.model, self.state = model, state
        self.record_attentions = record_attentions
        self.recorder = None

    def step(self, input_ids):  # [n_rows, 1] -> logits [n_rows, n_vocab]
        self.recorder = Recorder(probs=True, keep_outputs=False) if self.record_attentions else None
        return self.model.decode_step(self.state, input_ids, observer=self.recorder)[:, -1]

    def attentions(self):  # -> (self, cross): per decoder layer [n_rows, n_head, 1, n_k] of the last step
        maps = attention_maps(self.recorder, self.model.spec)
        return tuple(maps["decoder_self"]), tuple(maps["decoder_cross"])

    def reorder(self, row_index):
        # the cross-attention K/V need no reordering: a source's beams all hold the same rows
        self.state.cache.reorder(row_index)


def generate(model, input_ids, attention_mask=None, *, max_new_tokens=None, num_beams=None, **kwargs):
    """-> int64 [n_batch * num_return_sequences, 1 + n_new] (decoder start first, pad after eos), or with
    return_dict_in_generate HF's GenerateEncoderDecoderOutput / GenerateBeamEncoderDecoderOutput."""
    settings = resolve_settings(model, {"max_new_tokens": max_new_tokens, "num_beams": num_beams, **kwargs})
    recorder = None
    if settings.return_dict_in_generate and settings.output_attentions:
        recorder = Recorder(probs=True, keep_outputs=False)
    encoder_hidden = model.encode(input_ids, attention_mask, observer=recorder)  # [n_batch, n_src, d_model]
    attention_mask = np.ones(encoder_hidden.shape[:2], np.int64) if attention_mask is None else np.asarray(
        attention_mask, dtype=np.int64)

    def start(rows_per_source):  # one decoder row per (source, beam or returned sample), source major
        state = model.start(np.repeat(encoder_hidden, rows_per_source, axis=0),
                            np.repeat(attention_mask, rows_per_source, axis=0), settings.max_length - 1)
        return ModelStepper(model, state, record_attentions=recorder is not None)

    result = search(start, encoder_hidden.shape[0], settings)
    if not settings.return_dict_in_generate:
        return result.sequences
    if recorder is not None:
        result.encoder_attentions = tuple(attention_maps(recorder, model.spec)["encoder"])
    return result


def search(start, n_batch, settings):
    """Greedy search, sampling or beam search over any engine: start(rows_per_source) gives a stepper with
    step/reorder (and attentions, when recorded). -> an HF result object (sequences always filled)."""
    if settings.num_beams == 1:
        return _sample(start(settings.num_return_sequences), n_batch * settings.num_return_sequences, settings)
    return _beam_search(start(settings.num_beams), n_batch, settings)


def _sample(stepper, n_rows, s):
    """HF `_sample`: greedy (argmax) or, with do_sample, a draw from the warped distribution."""
    rng = np.random.default_rng(s.seed) if s.do_sample else None
    trace = Trace(s)
    sequences = np.full((n_rows, 1), s.decoder_start_token_id, dtype=np.int64)  # [n_rows, cur_len]
    unfinished = np.ones(n_rows, dtype=bool)
    while sequences.shape[1] < s.max_length and unfinished.any():
        step_logits = stepper.step(sequences[:, -1:])  # [n_rows, n_vocab]
        scores = process_logits(sequences, step_logits, s)
        trace.step(stepper, step_logits, scores)
        next_tokens = draw(scores, rng) if s.do_sample else scores.argmax(axis=-1)
        next_tokens = np.where(unfinished, next_tokens, s.pad_token_id)
        sequences = np.concatenate([sequences, next_tokens[:, None]], axis=1)
        unfinished &= ~_is_one_of(next_tokens, s.eos_token_ids)
    return GenerateEncoderDecoderOutput(sequences, **trace.fields())


def replay_scores(model, input_ids, attention_mask, sequences, **kwargs):
    """The processed (and, with do_sample, warped) scores generate() computes at each step of given `sequences`
    [n_rows, 1 + n_new] (rows source major, num_return_sequences per source): what HF returns as `scores` for
    its own sampled ids. -> [n_new, n_rows, n_vocab]."""
    s = resolve_settings(model, kwargs)
    sequences = np.asarray(sequences, dtype=np.int64)
    encoder_hidden = model.encode(input_ids, attention_mask)  # [n_batch, n_src, d_model]
    per_source = sequences.shape[0] // encoder_hidden.shape[0]
    mask = np.ones(encoder_hidden.shape[:2], np.int64) if attention_mask is None else np.asarray(attention_mask)
    state = model.start(np.repeat(encoder_hidden, per_source, axis=0), np.repeat(mask, per_source, axis=0),
                        sequences.shape[1] - 1)
    scores = []
    for cur_len in range(1, sequences.shape[1]):
        step_logits = model.decode_step(state, sequences[:, cur_len - 1:cur_len])[:, -1]  # [n_rows, n_vocab]
        scores.append(process_logits(sequences[:, :cur_len], step_logits, s))
    return np.stack(scores)


def transition_scores(result):  # -> [n_rows, n_new]
    """Each returned sequence's score for the token it chose at each step, as HF compute_transition_scores(
    sequences, scores, beam_indices) (normalize_logits=False): beam search reads the row the token came from;
    steps after a beam hypothesis ended score 0. Needs output_scores."""
    if result.scores is None:
        raise ModelError("transition_scores: the result holds no scores (generate with output_scores=True)")
    scores = np.stack(result.scores)                                   # [n_steps, n_rows_searched, n_vocab]
    beam_indices = getattr(result, "beam_indices", None)
    if beam_indices is None:  # greedy search and sampling: row i is its own beam at every step
        beam_indices = np.broadcast_to(np.arange(scores.shape[1])[:, None], (scores.shape[1], scores.shape[0]))
    ended = beam_indices < 0
    n_new = int((~ended).sum(axis=1).max())
    rows, ended = np.where(ended, 0, beam_indices)[:, :n_new], ended[:, :n_new]
    tokens = result.sequences[:, result.sequences.shape[1] - n_new:]  # [n_rows, n_new]
    chosen = scores[np.arange(n_new)[None, :], rows, tokens]
    return np.where(ended, np.float32(0.0), chosen)


def _is_one_of(tokens, token_ids):  # int [...], a list of ids -> bool [...]
    """np.isin(tokens, token_ids) for a few ids, without its sort (2 us a call where np.isin took 11-14)."""
    return (tokens[..., None] == np.asarray(token_ids, dtype=np.int64)).any(axis=-1)


def _gather(array, index):  # array [n_batch, k, ...], index [n_batch, m] -> [n_batch, m, ...]
    return np.take_along_axis(array, index.reshape(index.shape + (1,) * (array.ndim - 2)), axis=1)


INITIAL_WIDTH = 64  # beam search's token buffers: positions allocated up front, doubled as needed


def _widen(sequences, fill, max_length):  # [n_batch, k, width] -> [n_batch, k, min(2 * width, max_length)]
    width = min(2 * sequences.shape[2], max_length)
    wider = np.full(sequences.shape[:2] + (width,), fill, dtype=sequences.dtype)
    wider[:, :, :sequences.shape[2]] = sequences
    return wider


def _beam_search(stepper, n_batch, s):
    """HF's vectorized beam search: running beams, finished beams, early-stop heuristic."""
    n_beams, max_length = s.num_beams, s.max_length
    keep = max(2, 1 + len(s.eos_token_ids)) * n_beams
    top_beam_mask = np.arange(keep) < n_beams
    fill = s.pad_token_id if s.pad_token_id else (s.eos_token_ids[0] if s.eos_token_ids else -1)
    trace = Trace(s)
    running = np.full((n_batch, n_beams, min(max_length, INITIAL_WIDTH)), fill, dtype=np.int64)  # widened later
    running[:, :, 0] = s.decoder_start_token_id
    finished = running.copy()
    running_indices = np.full(running.shape, -1, dtype=np.int64)  # the row each position's token came from
    finished_indices = running_indices.copy()
    running_scores = np.zeros((n_batch, n_beams), dtype=np.float32)
    running_scores[:, 1:] = -1e9
    finished_scores = np.full((n_batch, n_beams), -1e9, dtype=np.float32)
    is_finished = np.zeros((n_batch, n_beams), dtype=bool)
    improvable = np.ones((n_batch, 1), dtype=bool)
    cur_len = 1
    while True:
        if cur_len == running.shape[2]:  # [n_batch, k, width] -> [n_batch, k, 2 * width], as the KV cache grows
            running, finished = _widen(running, fill, max_length), _widen(finished, fill, max_length)
            running_indices, finished_indices = _widen(running_indices, -1, max_length), _widen(finished_indices, -1,
                                                                                                max_length)
        flat = running[:, :, :cur_len].reshape(n_batch * n_beams, cur_len)
        step_logits = stepper.step(flat[:, -1:])                                # [n_batch * n_beams, n_vocab]
        log_probs = process_logits(flat, log_softmax(step_logits), s)
        trace.step(stepper, step_logits, log_probs)
        n_vocab = log_probs.shape[1]
        log_probs = log_probs.reshape(n_batch, n_beams, n_vocab) + running_scores[:, :, None]
        top_scores, top_index = top_k(log_probs.reshape(n_batch, n_beams * n_vocab), keep)  # [n_batch, keep]
        top_beam = top_index // n_vocab
        top_sequences = _gather(running, top_beam)                              # [n_batch, keep, width]
        top_sequences[:, :, cur_len] = top_index % n_vocab
        top_indices = _gather(running_indices, top_beam)                        # [n_batch, keep, width]
        top_indices[:, :, cur_len] = top_beam + np.arange(n_batch)[:, None] * n_beams
        hits_stop = _is_one_of(top_sequences[:, :, cur_len], s.eos_token_ids) | (cur_len + 1 >= max_length)
        # the best num_beams continuations that did not stop run on
        running_candidates = top_scores + hits_stop * np.float32(-1e9)
        next_running = top_k(running_candidates, n_beams)[1]
        running = _gather(top_sequences, next_running)
        running_scores = _gather(running_candidates, next_running)
        running_indices = _gather(top_indices, next_running)
        beam_origin = _gather(top_beam, next_running)                           # [n_batch, n_beams]
        # stopped continuations among the top num_beams join the finished ones if they score higher
        just_finished = hits_stop & top_beam_mask[None, :]
        candidate_scores = top_scores / np.float32((cur_len + 1 - 1) ** s.length_penalty)
        batch_full = is_finished.all(axis=1, keepdims=True) & (s.early_stopping is True)
        candidate_scores = (candidate_scores + batch_full * np.float32(-1e9) + (~improvable) * np.float32(-1e9)
                            + (~just_finished) * np.float32(-1e9))
        merged_scores = np.concatenate([finished_scores, candidate_scores], axis=1)
        best = top_k(merged_scores, n_beams)[1]
        finished = _gather(np.concatenate([finished, top_sequences], axis=1), best)
        finished_scores = _gather(merged_scores, best)
        finished_indices = _gather(np.concatenate([finished_indices, top_indices], axis=1), best)
        is_finished = _gather(np.concatenate([is_finished, just_finished], axis=1), best)
        stepper.reorder((beam_origin + np.arange(n_batch)[:, None] * n_beams).reshape(-1))
        cur_len += 1
        # early-stop heuristic, as HF _check_early_stop_heuristic
        if s.early_stopping == "never" and s.length_penalty > 0.0:
            best_length = max_length - 1
        else:
            best_length = cur_len - 1
        best_running = running_scores[:, :1] / np.float32(best_length ** s.length_penalty)
        worst_finished = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), np.float32(-1e9))
        improvable = improvable & (best_running > worst_finished).any(axis=1, keepdims=True)
        open_beams = not (is_finished.all() and s.early_stopping is True)
        if not (improvable.any() and open_beams and not hits_stop.all()):
            break
    n_return, width = s.num_return_sequences, finished.shape[2]
    beam_indices = finished_indices[:, :n_return, 1:].reshape(n_batch * n_return, width - 1)
    n_new = int((beam_indices >= 0).sum(axis=1).max())  # HF crops to the longest returned hypothesis
    return GenerateBeamEncoderDecoderOutput(
        sequences=finished[:, :n_return].reshape(n_batch * n_return, width)[:, :1 + n_new],
        sequences_scores=finished_scores[:, :n_return].reshape(-1) if trace.scores is not None else None,
        beam_indices=beam_indices[:, :n_new], **trace.fields())
