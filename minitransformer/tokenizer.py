"""Text to ids and back. `Tokenizer.from_dir` picks the kind from the files: a `tokenizer.json` (BART, mBART,
M2M100/NLLB, T5: HF's `tokenizers` library, see tokenizer_json.py) or OPUS-MT's sentencepiece files (Marian, here).

Marian (OPUS-MT) tokenization with sentencepiece alone: spm pieces mapped through the joint vocab.json.

Mirrors HF `MarianTokenizer` (transformers 4.57, `tokenization_marian.py` and the slow-tokenizer base)
for the shared-vocabulary layout of OPUS-MT exports:

- encode: the text is split around the literal special tokens (`</s>`, `<unk>`, `<pad>`, kept as their
  ids); from each remaining chunk a leading `>>lang<<` code is taken off as one piece; the chunk goes
  through the source spm (whose normalizer drops leading, trailing and repeated whitespace); every
  piece is looked up in vocab.json, unknown pieces become `<unk>`; `</s>` is appended.
- decode: special ids and ids outside the vocabulary are dropped (HF turns the latter into `<unk>`,
  then skips it); the pieces are joined by the target spm, `▁` becomes a space, the ends are stripped.

Not supported: `separate_vocabs` (a second target vocabulary, used by a few multilingual exports).
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from .errors import ModelError

SPIECE_UNDERLINE = "▁"
SLOW_TOKENIZER_FILES = ("spiece.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt")  # read by HF alone
DEFAULT_SPECIAL = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def load_json(path):  # Path -> parsed JSON
    """JSON file contents; a missing or malformed file is a ModelError naming it."""
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{path}: not valid JSON ({error})") from error


def load_vocab(path):  # Path -> {piece: id}
    """vocab.json as piece -> id; it must be a JSON object of distinct non-negative integer ids."""
    vocab = load_json(path)
    if not isinstance(vocab, dict) or not vocab:
        raise ModelError(f"{path}: expected a non-empty JSON object mapping pieces to ids")
    bad = [piece for piece, i in vocab.items() if not isinstance(i, int) or isinstance(i, bool) or i < 0]
    if bad:
        raise ModelError(f"{path}: ids must be non-negative integers, got {vocab[bad[0]]!r} for {bad[0]!r}")
    if len(set(vocab.values())) != len(vocab):
        raise ModelError(f"{path}: ids are not distinct")
    return vocab


def load_spm(path):  # Path -> SentencePieceProcessor
    """A sentencepiece model file (OPUS-MT's source.spm / target.spm)."""
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as error:
        raise ModelError(f"{path}: not a sentencepiece model ({error})") from error
    return processor


def special_token_names(config, path):  # tokenizer_config.json -> {"eos_token": "</s>", ...}
    """The eos, unk and pad token strings, as named in tokenizer_config.json (OPUS-MT defaults otherwise)."""
    if config.get("separate_vocabs"):
        raise ModelError(f"{path}: separate_vocabs (a second target vocabulary) is not supported")
    names = {}
    for key, default in DEFAULT_SPECIAL.items():
        value = config.get(key, default)
        names[key] = value["content"] if isinstance(value, dict) else value
    return names


def pad_rows(rows, pad_id, left=False):  # n_batch id lists -> input_ids, attention_mask int64 [n_batch, max_len]
    """Right-pad (or left-pad) rows of token ids with pad_id, as an HF tokenizer(..., padding=True) does."""
    width = max((len(row) for row in rows), default=0)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        place = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[i, place] = row
        attention_mask[i, place] = 1
    return input_ids, attention_mask


class Tokenizer:
    """What every tokenizer kind offers: encode, encode_batch, decode, pad_id, language_codes."""

    @staticmethod
    def from_dir(path, n_vocab=None):  # directory -> FastTokenizer (tokenizer.json) or MarianTokenizer (source.spm..)
        """The tokenizer a model directory ships; a missing or broken file is a ModelError naming it. With n_vocab
        (the model's), language codes past the model's vocabulary are not offered."""
        path = Path(path)
        if not path.is_dir():
            raise ModelError(f"{path}: not a directory")
        if (path / "tokenizer.json").exists():
            from .tokenizer_json import FastTokenizer
            return FastTokenizer.from_dir(path, n_vocab)
        if not (path / "source.spm").exists() and not (path / "target.spm").exists():
            found = [name for name in SLOW_TOKENIZER_FILES if (path / name).exists()]
            hint = (f" ({', '.join(found)} found: write a tokenizer.json with transformers, "
                    f"AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))") if found else ""
            raise ModelError(f"{path}: no tokenizer found (expected tokenizer.json, or OPUS-MT's source.spm, "
                             f"target.spm and vocab.json){hint}")
        return MarianTokenizer.from_dir(path)

    language_codes = ()  # Marian: a target language is a >>xx<< prefix in the text itself

    def encode_batch(self, texts, src_lang=None):  # list[str] -> (int64 [n_batch, n_src], int64 [n_batch, n_src])
        """Right-padded input_ids and attention_mask, as HF's tokenizer(texts, padding=True)."""
        return pad_rows(self.encode(texts, src_lang), self.pad_id)

    def check_language(self, code, flag):
        """code is one of language_codes, or a ModelError that lists them."""
        if not self.language_codes:
            raise ModelError(f"{flag} {code}: this model's tokenizer has no language codes")
        if code not in self.language_codes:
            raise ModelError(f"{flag} {code!r}: unknown language code; known: {', '.join(self.language_codes)}")


@dataclass(frozen=True)
class MarianTokenizer(Tokenizer):
    """Source-side encoding and target-side decoding of one OPUS-MT tokenizer directory."""

    source: spm.SentencePieceProcessor  # source.spm: text -> pieces
    target: spm.SentencePieceProcessor  # target.spm: pieces -> text
    vocab: dict                         # piece -> id, shared by source and target
    pieces: dict                        # id -> piece, the reverse of vocab
    eos_token: str
    unk_token: str
    pad_token: str

    @classmethod
    def from_dir(cls, path):  # directory with source.spm, target.spm, vocab.json[, tokenizer_config.json]
        """Load the files HF MarianTokenizer.from_pretrained reads; problems raise ModelError naming the file."""
        path = Path(path)
        if not path.is_dir():
            raise ModelError(f"{path}: not a directory")
        config_path = path / "tokenizer_config.json"
        config = load_json(config_path) if config_path.exists() else {}
        names = special_token_names(config, config_path)
        vocab_path = path / "vocab.json"
        vocab = load_vocab(vocab_path)
        missing = [name for name in names.values() if name not in vocab]
        if missing:
            raise ModelError(f"{vocab_path}: special tokens {missing} are missing")
        return cls(source=load_spm(path / "source.spm"), target=load_spm(path / "target.spm"), vocab=vocab,
                   pieces={i: piece for piece, i in vocab.items()}, **names)

    @property
    def eos_id(self):
        return self.vocab[self.eos_token]

    @property
    def unk_id(self):
        return self.vocab[self.unk_token]

    @property
    def pad_id(self):
        return self.vocab[self.pad_token]

    @property
    def special_ids(self):
        return {self.eos_id, self.unk_id, self.pad_id}

    def piece_ids(self, pieces):  # list[str] -> list[int]
        """Vocabulary ids of pieces; a piece outside vocab.json is <unk> (MarianTokenizer._convert_token_to_id)."""
        return [self.vocab.get(piece, self.unk_id) for piece in pieces]

    def encode_chunk(self, text):  # str without special tokens -> list[int]
        """A leading >>lang<< code as one piece, then the source spm pieces (MarianTokenizer._tokenize)."""
        code = []
        end = text.find("<<")
        if text.startswith(">>") and end != -1:
            code, text = [text[:end + 2]], text[end + 2:]
        return self.piece_ids(code + self.source.encode(text, out_type=str))

    def encode_one(self, text):  # str -> list[int]
        """Ids of one sentence followed by </s>; literal special-token text keeps its own id."""
        specials = sorted({self.eos_token, self.unk_token, self.pad_token}, key=len, reverse=True)
        ids = []
        for chunk in re.split("(" + "|".join(map(re.escape, specials)) + ")", text):
            if chunk in specials:
                ids.append(self.vocab[chunk])
            elif chunk:
                ids += self.encode_chunk(chunk)
        return ids + [self.eos_id]

    def encode(self, texts, src_lang=None):  # list[str] -> list[list[int]]
        """Source ids of each sentence, as MarianTokenizer(texts)["input_ids"]."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of sentences, got one str")
        if src_lang is not None:
            self.check_language(src_lang, "src_lang")
        return [self.encode_one(text) for text in texts]

    def decode(self, ids):  # [n_tgt] ints -> str
        """Target text of generated ids, as MarianTokenizer.decode(ids, skip_special_tokens=True)."""
        pieces = [self.pieces[i] for i in map(int, ids) if i in self.pieces and i not in self.special_ids]
        return self.target.decode_pieces(pieces).replace(SPIECE_UNDERLINE, " ").strip()
