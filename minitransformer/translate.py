"""Text in, text out: tokenizer, generate(), decode, for lists of sentences; a model's stated input domain.

A model directory may state the input it was trained on in `input_domain.json` (the shipped demo does):
{"description": ..., "lowercase": bool, "words": [...]}. Sentences are then normalised as the training data
was written (case; spaces trimmed and collapsed, none around hyphens) and a word outside `words` is refused
with the description, instead of being translated into something arbitrary.
"""
import json
import os
import re

from .errors import ModelError

INPUT_DOMAIN_FILE = "input_domain.json"


class InputDomain:
    """The words a model was trained on, and how its training sentences were written."""

    def __init__(self, description, words, lowercase):
        self.description, self.words, self.lowercase = description, frozenset(words), lowercase

    @classmethod
    def from_dir(cls, path):  # -> InputDomain or None when the directory states none
        file = os.path.join(path, INPUT_DOMAIN_FILE)
        if not os.path.exists(file):
            return None
        try:
            with open(file, encoding="utf-8") as f:
                data = json.load(f)
            return cls(str(data["description"]), [str(w) for w in data["words"]], bool(data.get("lowercase")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelError(f"{file}: not a valid input domain ({error})") from None

    def normalise(self, text):  # str -> str as the training data writes it
        text = re.sub(r"\s*-\s*", "-", " ".join(text.split()))
        return text.lower() if self.lowercase else text

    def check(self, text):
        """text is normalised; each word between spaces and hyphens must be known."""
        unknown = [w for w in re.split(r"[ -]", text) if w not in self.words]
        if unknown:
            where = "" if unknown[0] == text else f" (in {text!r})"
            raise ModelError(f"{unknown[0]!r}{where} is outside this model's input domain: {self.description}")


def language_settings(model, tokenizer, src_lang, tgt_lang):  # -> generate() keyword arguments
    """tgt_lang's code becomes forced_bos_token_id; a model with language codes needs one (or a forced_bos_token_id
    in its generation_config.json); src_lang is checked against the known codes."""
    if src_lang is not None:
        tokenizer.check_language(src_lang, "--src-lang")
    if tgt_lang is not None:
        tokenizer.check_language(tgt_lang, "--tgt-lang")
        return {"forced_bos_token_id": tokenizer.language_id(tgt_lang, "--tgt-lang")}
    configured = model.generation_config.get("forced_bos_token_id", model.config.get("forced_bos_token_id"))
    if tokenizer.language_codes and configured is None:
        raise ModelError(f"--tgt-lang missing: this model needs a target language; known: "
                         f"{', '.join(tokenizer.language_codes)}")
    return {}


def trim(row, eos_ids):  # [1 + n_new] ints -> list: decoder start, new tokens up to and including the first eos
    """One generate() row without the padding that depends on the rest of the batch."""
    tokens = [int(t) for t in row]
    ends = [i for i, t in enumerate(tokens[1:], 1) if t in eos_ids]
    return tokens[:ends[0] + 1] if ends else tokens


def hypotheses(result, eos_ids, n_sources):
    """An HF-style generate() result -> per source, its returned sequences as dicts: output_ids (trimmed) and, with
    scores, token_scores (each chosen token's score, up to and including eos, as HF compute_transition_scores) and,
    for beam search, sequence_score."""
    from .generate import transition_scores
    token_scores = transition_scores(result) if result.scores is not None else None
    sequence_scores = getattr(result, "sequences_scores", None)
    rows = []
    for i, row in enumerate(result.sequences):
        hypothesis = {"output_ids": trim(row, eos_ids)}
        if token_scores is not None:
            n_new = len(hypothesis["output_ids"]) - 1
            hypothesis["token_scores"] = [round(float(x), 6) for x in token_scores[i, :n_new]]
            if sequence_scores is not None:
                hypothesis["sequence_score"] = round(float(sequence_scores[i]), 6)
        rows.append(hypothesis)
    per_source = len(rows) // n_sources
    return [rows[n * per_source:(n + 1) * per_source] for n in range(n_sources)]


def translate_hypotheses(model, tokenizer, texts, batch_size=32, progress=None, src_lang=None, tgt_lang=None,
                         **generation):
    """-> per text, its hypotheses in input order: [{"translation", "output_ids"} and the scores when asked], one
    per returned sequence (num_return_sequences). Similar lengths are batched together; a blank line gets one empty
    hypothesis (no ids). Output ids are trimmed after eos, so they do not depend on the batch."""
    from .generate import resolve_settings
    if isinstance(texts, str):
        raise TypeError("translate takes a list of sentences, got one str")
    generation = {**generation, **language_settings(model, tokenizer, src_lang, tgt_lang)}
    eos_ids = resolve_settings(model, generation).eos_token_ids
    domain = InputDomain.from_dir(model.path) if model.path else None
    if domain:
        texts = [domain.normalise(text) for text in texts]
        for text in texts:
            if text:
                domain.check(text)
    found = [[{"translation": "", "output_ids": []}] for _ in texts]
    todo = sorted((i for i, text in enumerate(texts) if text.strip()), key=lambda i: len(texts[i]))
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        input_ids, attention_mask = tokenizer.encode_batch([texts[i] for i in batch], src_lang)
        result = model.generate(input_ids, attention_mask, **{**generation, "return_dict_in_generate": True})
        for i, rows in zip(batch, hypotheses(result, eos_ids, len(batch))):
            found[i] = [{"translation": tokenizer.decode(row["output_ids"]), **row} for row in rows]
        if progress:
            progress(min(start + batch_size, len(todo)), len(todo))
    return found


def translate_texts(model, tokenizer, texts, batch_size=32, progress=None, src_lang=None, tgt_lang=None,
                    **generation):
    """-> (translations, output ids) in input order: each text's first hypothesis (see translate_hypotheses)."""
    found = translate_hypotheses(model, tokenizer, texts, batch_size, progress, src_lang, tgt_lang, **generation)
    return [rows[0]["translation"] for rows in found], [rows[0]["output_ids"] for rows in found]
