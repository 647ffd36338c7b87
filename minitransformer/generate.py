"""Greedy and beam search over Model.decode_step, with HF generate()'s logits processors and stopping.

No model math here. Settings come from generation_config.json, overridden by keyword arguments, and
are resolved as HF GenerationMixin does (max_new_tokens + 1 = max_length for an encoder-decoder).
The beam search follows HF's vectorized `_beam_search` (transformers 4.57) step for step.
"""
from dataclasses import dataclass, field

import numpy as np

from .errors import ModelError
from .ops import log_softmax

SETTINGS = ("max_length", "max_new_tokens", "min_length", "min_new_tokens", "num_beams", "decoder_start_token_id",
            "eos_token_id", "pad_token_id", "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id",
            "repetition_penalty", "no_repeat_ngram_size", "suppress_tokens", "begin_suppress_tokens",
            "length_penalty", "early_stopping", "num_return_sequences", "do_sample")
# generation_config.json keys that do not change greedy or beam search here
_IGNORED = {"_from_model_config", "transformers_version", "renormalize_logits", "use_cache", "return_dict_in_generate",
            "output_scores", "output_attentions", "output_hidden_states", "temperature", "top_k", "top_p"}
_NEG_INF = np.float32(-np.inf)


@dataclass
class Settings:
    """One generate() call's settings, resolved from generation_config.json and keyword arguments."""
    max_length: int
    num_beams: int
    decoder_start_token_id: int
    eos_token_ids: list
    pad_token_id: int
    min_length: int = 0
    min_new_tokens: int = 0
    bad_words_ids: list = field(default_factory=list)
    forced_bos_token_id: int | None = None
    forced_eos_token_id: list | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    suppress_tokens: list = field(default_factory=list)
    begin_suppress_tokens: list = field(default_factory=list)
    length_penalty: float = 1.0
    early_stopping: bool | str = False


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
    """One scalar setting checked by kind: 'count' (int >= 0), 'positive' (int >= 1), 'id', 'number'."""
    if value is None:
        return None
    ok = {"count": _is_int(value) and value >= 0, "positive": _is_int(value) and value >= 1, "id": _is_int(value),
          "number": isinstance(value, (int, float, np.number)) and not isinstance(value, bool)}[kind]
    if not ok:
        raise ModelError(f"generate: {key} must be {'a positive integer' if kind == 'positive' else 'a ' + kind}, "
                         f"got {value!r}")
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

    if setting("do_sample"):
        raise ModelError("generate: do_sample=True is not supported (greedy and beam search only)")
    if setting("num_return_sequences", "positive", 1) != 1:
        raise ModelError("generate: num_return_sequences must be 1")
    max_new_tokens = _check(given.get("max_new_tokens", merged.get("max_new_tokens") if "max_length" not in given
                                      else None), "max_new_tokens", "positive")
    max_length = max_new_tokens + 1 if max_new_tokens is not None else setting("max_length", "positive", 20)
    if max_length < 2:
        raise ModelError(f"generate: max_length {max_length} leaves no room for a new token")
    eos_token_ids = _ids_list(setting("eos_token_id"), "eos_token_id")
    pad_token_id = setting("pad_token_id", "id")
    start = setting("decoder_start_token_id", "id", setting("bos_token_id", "id"))
    if start is None:
        raise ModelError("generate: no decoder_start_token_id in generation_config.json or config.json")
    forced_eos = setting("forced_eos_token_id")
    early_stopping = setting("early_stopping", default=False)
    if early_stopping not in (True, False, "never"):
        raise ModelError(f"generate: early_stopping must be true, false or \"never\", got {early_stopping!r}")
    settings = Settings(
        max_length=int(max_length), num_beams=int(setting("num_beams", "positive", 1)),
        decoder_start_token_id=int(start), eos_token_ids=eos_token_ids,
        pad_token_id=int(pad_token_id if pad_token_id is not None else (eos_token_ids or [0])[0]),
        min_length=setting("min_length", "count", 0) or 0, min_new_tokens=setting("min_new_tokens", "count", 0) or 0,
        bad_words_ids=[seq for seq in _ids_list(setting("bad_words_ids"), "bad_words_ids", nested=True)
                       if seq not in [[e] for e in eos_token_ids]],
        forced_bos_token_id=setting("forced_bos_token_id", "id"),
        forced_eos_token_id=_ids_list(forced_eos, "forced_eos_token_id") if forced_eos is not None else None,
        repetition_penalty=float(setting("repetition_penalty", "number", 1.0) or 1.0),
        no_repeat_ngram_size=setting("no_repeat_ngram_size", "count", 0) or 0,
        suppress_tokens=_ids_list(setting("suppress_tokens"), "suppress_tokens"),
        begin_suppress_tokens=_ids_list(setting("begin_suppress_tokens"), "begin_suppress_tokens"),
        length_penalty=float(setting("length_penalty", "number", 1.0)), early_stopping=early_stopping)
    n_vocab = model.spec.n_vocab
    token_ids = ([settings.decoder_start_token_id, settings.pad_token_id] + settings.eos_token_ids
                 + [t for seq in settings.bad_words_ids for t in seq] + settings.suppress_tokens
                 + settings.begin_suppress_tokens + (settings.forced_eos_token_id or [])
                 + ([settings.forced_bos_token_id] if settings.forced_bos_token_id is not None else []))
    bad = [t for t in token_ids if not 0 <= t < n_vocab]
    if bad:
        raise ModelError(f"generate: token id {bad[0]} in the generation settings is outside [0, {n_vocab})")
    return settings


def process_logits(sequences, scores, s):
    # sequences [n_rows, cur_len] (decoder start first), scores [n_rows, n_vocab] -> processed copy
    """HF's logits processors, in HF's order (GenerationMixin._get_logits_processor)."""
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
    if s.eos_token_ids and (cur_len < s.min_length or cur_len - 1 < s.min_new_tokens):
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
    return scores


class ModelStepper:
    """Our engine as a search sees it: one decoder state, stepped and reordered."""

    def __init__(self, model, state):
        self.model, self.state = model, state

    def step(self, input_ids):  # [n_rows, 1] -> logits [n_rows, n_vocab]
        return self.model.decode_step(self.state, input_ids)[:, -1]

    def reorder(self, row_index):
        # the cross-attention K/V need no reordering: a source's beams all hold the same rows
        self.state.cache.reorder(row_index)


def generate(model, input_ids, attention_mask=None, *, max_new_tokens=None, num_beams=None, **kwargs):
    """-> int64 [n_batch, 1 + n_new]: decoder start first, pad after eos, as HF generate() returns."""
    settings = resolve_settings(model, {"max_new_tokens": max_new_tokens, "num_beams": num_beams, **kwargs})
    encoder_hidden = model.encode(input_ids, attention_mask)  # [n_batch, n_src, d_model]
    attention_mask = np.ones(encoder_hidden.shape[:2], np.int64) if attention_mask is None else np.asarray(
        attention_mask, dtype=np.int64)

    def start(rows_per_source):  # one decoder row per (source, beam), source major
        state = model.start(np.repeat(encoder_hidden, rows_per_source, axis=0),
                            np.repeat(attention_mask, rows_per_source, axis=0), settings.max_length - 1)
        return ModelStepper(model, state)

    return search(start, encoder_hidden.shape[0], settings)


def search(start, n_batch, settings):
    """Greedy or beam search over any engine: start(rows_per_source) gives a stepper with step/reorder."""
    if settings.num_beams == 1:
        return _greedy(start(1), n_batch, settings)
    return _beam_search(start(settings.num_beams), n_batch, settings)


def _greedy(stepper, n_batch, s):
    sequences = np.full((n_batch, 1), s.decoder_start_token_id, dtype=np.int64)  # [n_batch, cur_len]
    unfinished = np.ones(n_batch, dtype=bool)
    while sequences.shape[1] < s.max_length and unfinished.any():
        step_logits = stepper.step(sequences[:, -1:])  # [n_batch, n_vocab]
        next_tokens = process_logits(sequences, step_logits, s).argmax(axis=-1)
        next_tokens = np.where(unfinished, next_tokens, s.pad_token_id)
        sequences = np.concatenate([sequences, next_tokens[:, None]], axis=1)
        unfinished &= ~np.isin(next_tokens, s.eos_token_ids)
    return sequences


def _gather(array, index):  # array [n_batch, k, ...], index [n_batch, m] -> [n_batch, m, ...]
    return np.take_along_axis(array, index.reshape(index.shape + (1,) * (array.ndim - 2)), axis=1)


def _top_k(scores, k):  # [n_batch, n] -> values, indices [n_batch, k], largest first (ties: lower index first)
    """Partition first, then sort only the candidates: the same result as a stable full sort, ~100x faster
    over num_beams * n_vocab scores."""
    threshold = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]  # [n_batch, 1]: the k-th largest score
    index = np.empty((scores.shape[0], k), dtype=np.int64)
    for row, (row_scores, bound) in enumerate(zip(scores, threshold)):
        candidates = np.flatnonzero(row_scores >= bound)  # ascending index: ties keep index order
        index[row] = candidates[np.argsort(-row_scores[candidates], kind="stable")[:k]]
    return np.take_along_axis(scores, index, axis=1), index


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
    running = np.full((n_batch, n_beams, min(max_length, INITIAL_WIDTH)), fill, dtype=np.int64)  # widened later
    running[:, :, 0] = s.decoder_start_token_id
    finished = running.copy()
    running_scores = np.zeros((n_batch, n_beams), dtype=np.float32)
    running_scores[:, 1:] = -1e9
    finished_scores = np.full((n_batch, n_beams), -1e9, dtype=np.float32)
    is_finished = np.zeros((n_batch, n_beams), dtype=bool)
    finished_lengths = np.zeros((n_batch, n_beams), dtype=np.int64)
    improvable = np.ones((n_batch, 1), dtype=bool)
    cur_len = 1
    while True:
        if cur_len == running.shape[2]:  # [n_batch, k, width] -> [n_batch, k, 2 * width], as the KV cache grows
            running, finished = _widen(running, fill, max_length), _widen(finished, fill, max_length)
        flat = running[:, :, :cur_len].reshape(n_batch * n_beams, cur_len)
        step_logits = stepper.step(flat[:, -1:])                                # [n_batch * n_beams, n_vocab]
        log_probs = process_logits(flat, log_softmax(step_logits), s)
        n_vocab = log_probs.shape[1]
        log_probs = log_probs.reshape(n_batch, n_beams, n_vocab) + running_scores[:, :, None]
        top_scores, top_index = _top_k(log_probs.reshape(n_batch, n_beams * n_vocab), keep)  # [n_batch, keep]
        top_beam = top_index // n_vocab
        top_sequences = _gather(running, top_beam)                              # [n_batch, keep, width]
        top_sequences[:, :, cur_len] = top_index % n_vocab
        hits_stop = np.isin(top_sequences[:, :, cur_len], s.eos_token_ids) | (cur_len + 1 >= max_length)
        # the best num_beams continuations that did not stop run on
        running_candidates = top_scores + hits_stop * np.float32(-1e9)
        next_running = _top_k(running_candidates, n_beams)[1]
        running = _gather(top_sequences, next_running)
        running_scores = _gather(running_candidates, next_running)
        beam_origin = _gather(top_beam, next_running)                           # [n_batch, n_beams]
        # stopped continuations among the top num_beams join the finished ones if they score higher
        just_finished = hits_stop & top_beam_mask[None, :]
        candidate_scores = top_scores / np.float32((cur_len + 1 - 1) ** s.length_penalty)
        batch_full = is_finished.all(axis=1, keepdims=True) & (s.early_stopping is True)
        candidate_scores = (candidate_scores + batch_full * np.float32(-1e9) + (~improvable) * np.float32(-1e9)
                            + (~just_finished) * np.float32(-1e9))
        merged_scores = np.concatenate([finished_scores, candidate_scores], axis=1)
        best = _top_k(merged_scores, n_beams)[1]
        finished = _gather(np.concatenate([finished, top_sequences], axis=1), best)
        finished_scores = _gather(merged_scores, best)
        finished_lengths = _gather(np.concatenate([finished_lengths, np.full((n_batch, keep), cur_len)], axis=1), best)
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
    best_sequences = finished[:, 0]                                             # [n_batch, width]
    return best_sequences[:, :1 + int(finished_lengths[:, 0].max())]
