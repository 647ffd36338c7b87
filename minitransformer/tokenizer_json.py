"""HF fast tokenizers (`tokenizer.json`, read by the `tokenizers` library) as transformers 4.57's
PreTrainedTokenizerFast drives them, for BART, mBART, M2M100/NLLB and T5 exports:

- encode: `tokenizers.Tokenizer.encode_batch(texts, add_special_tokens=True)`, no truncation; the special tokens
  come from the file's post-processor. For mBART-50, mBART, NLLB and M2M100 the source language (given, else
  tokenizer_config.json's src_lang, else the class's default) rewrites that post-processor as the HF class's
  `set_src_lang_special_tokens` does: `[code] text </s>` (MBart50Tokenizer, M2M100Tokenizer, NllbTokenizer) or
  `text </s> [code]` (MBartTokenizer, NllbTokenizer with legacy_behaviour).
- decode: `decode(ids, skip_special_tokens=True)`, then `clean_up_tokenization` when tokenizer_config.json's
  `clean_up_tokenization_spaces` is true (PreTrainedTokenizerFast._decode).
- padding: tokenizer_config.json's `padding_side` (right unless it says left), with the pad token's id.
T5 task prefixes ("summarize: ...") are plain text and pass through untouched.
"""
from pathlib import Path

from .errors import ModelError
from .tokenizer import Tokenizer, load_json, pad_rows

# where each tokenizer class puts the source language's code, and the code it uses when tokenizer_config.json
# names none (transformers 4.57: set_src_lang_special_tokens, and `src_lang if src_lang is not None else ...`)
SOURCE_LANGUAGE_PLACE = {"MBart50Tokenizer": "prefix", "M2M100Tokenizer": "prefix", "NllbTokenizer": "prefix",
                         "MBartTokenizer": "suffix"}
DEFAULT_SOURCE_LANGUAGE = {"MBart50Tokenizer": "en_XX", "M2M100Tokenizer": "__en__", "NllbTokenizer": "eng_Latn",
                           "MBartTokenizer": "en_XX"}
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))  # PreTrainedTokenizerBase.clean_up_tokenization


def clean_up_tokenization(text):
    for before, after in CLEAN_UP:
        text = text.replace(before, after)
    return text


def _token(value):  # "</s>" or {"content": "</s>", ...} (an AddedToken as save_pretrained writes it) -> str
    return value["content"] if isinstance(value, dict) else value


class FastTokenizer(Tokenizer):
    """One tokenizer.json with its tokenizer_config.json."""

    def __init__(self, backend, config, path, n_vocab=None):
        self.backend = backend
        self.saved_post_processor = backend.post_processor
        self.path = path
        self.clean_up = bool(config.get("clean_up_tokenization_spaces", False))
        self.padding_left = config.get("padding_side", "right") == "left"
        self.tokenizer_class = str(config.get("tokenizer_class", "")).removesuffix("Fast")
        self.language_place = SOURCE_LANGUAGE_PLACE.get(self.tokenizer_class)
        if self.language_place == "prefix" and config.get("legacy_behaviour"):  # NLLB's old layout
            self.language_place = "suffix"
        self.src_lang = config.get("src_lang") or DEFAULT_SOURCE_LANGUAGE.get(self.tokenizer_class)
        self.eos_token = _token(config.get("eos_token", "</s>"))
        self.pad_id = self._id(_token(config.get("pad_token", "<pad>")), "pad_token")
        self.eos_id = self._id(self.eos_token, "eos_token")
        codes = [_token(t) for t in config.get("additional_special_tokens", [])] if self.language_place else []
        # codes past the model's vocabulary (mBART-50's tokenizer lists all 52) are not offered
        self.language_codes = tuple(c for c in codes if backend.token_to_id(c) is not None
                                    and (n_vocab is None or backend.token_to_id(c) < n_vocab))

    @classmethod
    def from_dir(cls, path, n_vocab=None):
        """tokenizer.json and tokenizer_config.json (optional) of `path`; n_vocab limits the language codes offered
        to those the model can emit."""
        from tokenizers import Tokenizer as Backend
        path = Path(path)
        file = path / "tokenizer.json"
        try:
            backend = Backend.from_file(str(file))
        except Exception as error:  # the library raises a bare Exception for a malformed file
            raise ModelError(f"{file}: not a tokenizers file ({str(error).splitlines()[0]})") from None
        backend.no_padding()
        backend.no_truncation()
        config_path = path / "tokenizer_config.json"
        config = load_json(config_path) if config_path.exists() else {}
        return cls(backend, config, path, n_vocab)

    def _id(self, token, what):
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ModelError(f"{self.path / 'tokenizer.json'}: {what} {token!r} is not in the vocabulary")
        return token_id

    def language_id(self, code, flag="tgt_lang"):  # -> the code's token id, e.g. forced_bos_token_id
        self.check_language(code, flag)
        return self.backend.token_to_id(code)

    def _post_processor(self, src_lang):
        """The template placing the source language's code as the HF class does (src_lang, else the configured or
        the class's default one, as HF's from_pretrained re-applies it); the saved one for other families."""
        from tokenizers.processors import TemplateProcessing
        src_lang = src_lang or (self.src_lang if self.language_place else None)
        if src_lang is None:
            return self.saved_post_processor
        code = (src_lang, self.language_id(src_lang, "src_lang"))
        eos = (self.eos_token, self.eos_id)
        prefix, suffix = ([code], [eos]) if self.language_place == "prefix" else ([], [eos, code])
        single = [t for t, _ in prefix] + ["$A"] + [t for t, _ in suffix]
        pair = [t for t, _ in prefix] + ["$A", "$B"] + [t for t, _ in suffix]
        return TemplateProcessing(single=single, pair=pair, special_tokens=prefix + suffix)

    def encode(self, texts, src_lang=None):  # list[str] -> list[list[int]]
        """Source ids of each sentence, as the HF tokenizer's (texts)["input_ids"], src_lang set on it if given."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of sentences, got one str")
        self.backend.post_processor = self._post_processor(src_lang)
        try:
            return [encoding.ids for encoding in self.backend.encode_batch(list(texts), add_special_tokens=True)]
        finally:
            self.backend.post_processor = self.saved_post_processor

    def encode_batch(self, texts, src_lang=None):  # list[str] -> (int64 [n_batch, n_src], int64 [n_batch, n_src])
        """Padded input_ids and attention_mask, as the HF tokenizer(texts, padding=True)."""
        return pad_rows(self.encode(texts, src_lang), self.pad_id, left=self.padding_left)

    def decode(self, ids):  # [n_tgt] ints -> str
        """As HF tokenizer.decode(ids, skip_special_tokens=True)."""
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=True)
        return clean_up_tokenization(text) if self.clean_up else text
