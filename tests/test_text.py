"""Text in, text out for every family: our tokenizer and engine against HF's recorded text.

tests/fixtures/<name>/hf_text.json was written by tools/make_fixtures.py (`--tokenizers-only`): HF's tokenizer
class loaded from the fixture's tokenizer files, `tokenizer(sources, padding=True)`, the fixture's trained
PyTorch model's generate() (greedy and beam, as recorded for the ids), then `batch_decode(...,
skip_special_tokens=True)`; for mBART-50 and NLLB also with src_lang set on the tokenizer and forced_bos_token_id
the target language's id.
"""
import json
import shutil

import pytest

import minitransformer as mt
from minitransformer.cli import main
from minitransformer.tokenizer_json import clean_up_tokenization
from minitransformer.translate import translate_texts

from conftest import FIXTURES

TEXT_FIXTURES = sorted(p.parent.name for p in FIXTURES.glob("*/hf_text.json"))
LANGUAGE_FIXTURES = ["m2m100-tiny", "mbart-tiny"]


def _records(name):
    return json.loads((FIXTURES / name / "hf_text.json").read_text(encoding="utf-8"))["records"]


def _cases():
    return [(name, i, kind) for name in TEXT_FIXTURES for i, _ in enumerate(_records(name))
            for kind in ("greedy", "beam")]


def test_every_family_but_marian_has_recorded_text():
    assert TEXT_FIXTURES == ["bart-tiny", "flan-t5-tiny", "m2m100-tiny", "mbart-tiny", "t5-v1"]
    assert not (FIXTURES / "t5-v1" / "spiece.model").exists()  # a T5 with tokenizer.json only


def _tokenizer(name, record, model, tmp_path):
    """The fixture's tokenizer; for a record made with another HF class reading the same files (mBART-cc25's) or
    with legacy_behaviour (NLLB), a copy whose tokenizer_config.json says so."""
    if "config_overrides" not in record:
        return model.tokenizer
    for path in (FIXTURES / name).glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, **record["config_overrides"]}))
    return mt.Tokenizer.from_dir(tmp_path, model.spec.n_vocab)


@pytest.mark.parametrize("name, index, kind", _cases())
def test_text_out_equals_hf(name, index, kind, load_fixture, tmp_path):
    model = load_fixture(name)[0]
    record = _records(name)[index]
    tokenizer = _tokenizer(name, record, model, tmp_path)
    assert tokenizer.encode(record["sources"], record["src_lang"]) == record["input_ids"]
    kwargs = record[kind]["generate_kwargs"]
    texts, _ = translate_texts(model, tokenizer, record["sources"], src_lang=record["src_lang"],
                               tgt_lang=record["tgt_lang"], max_new_tokens=kwargs["max_new_tokens"],
                               num_beams=kwargs["num_beams"])
    assert texts == record[kind]["texts"]
    if "config_overrides" not in record:  # the one-call API gives the same
        assert model.translate(record["sources"], src_lang=record["src_lang"], tgt_lang=record["tgt_lang"],
                               max_new_tokens=kwargs["max_new_tokens"], num_beams=kwargs["num_beams"]) == texts


@pytest.mark.parametrize("name", TEXT_FIXTURES)
def test_decode_equals_hf_on_the_recorded_ids(name, load_fixture):
    """Decoding alone, on HF's own output rows (decoder start, language codes and padding included), on spaces
    before punctuation and special tokens amid text, and on every id of the vocabulary in a row."""
    tokenizer = load_fixture(name)[0].tokenizer
    for record in _records(name):
        for kind in ("greedy", "beam"):
            assert [tokenizer.decode(row) for row in record[kind]["output_ids"]] == record[kind]["texts"]
    decodes = json.loads((FIXTURES / name / "hf_text.json").read_text(encoding="utf-8"))["decodes"]
    assert [tokenizer.decode(case["ids"]) for case in decodes] == [case["text"] for case in decodes]


def test_the_records_exercise_what_they_should():
    """Unknown characters, clean-up of spaces before punctuation, a T5 prompt kept as text, languages that change
    the output: otherwise the text tests above would pass without testing those."""
    bart = _records("bart-tiny")[0]
    assert any(3 in ids for ids in bart["input_ids"])  # <unk> for a character outside the trained alphabet
    for name in ("bart-tiny", "t5-v1"):  # clean_up_tokenization_spaces true: HF's text is the cleaned-up decode
        tokenizer = mt.Tokenizer.from_dir(FIXTURES / name)
        decodes = json.loads((FIXTURES / name / "hf_text.json").read_text(encoding="utf-8"))["decodes"]
        raw = tokenizer.backend.decode(decodes[0]["ids"], skip_special_tokens=True)
        assert raw != decodes[0]["text"] == clean_up_tokenization(raw)
    flan = _records("flan-t5-tiny")[0]
    assert all(ids[0] == 65 for ids in flan["input_ids"])  # "summarize:" is the prompt token the model was trained on
    for name in LANGUAGE_FIXTURES:
        records = _records(name)
        default, *pairs = [r for r in records if "config_overrides" not in r]
        assert len(pairs) == 2 and all(p["greedy"]["texts"] != default["greedy"]["texts"] for p in pairs)
        assert len({tuple(p["input_ids"][0]) for p in [default] + pairs}) == 3  # the source code differs
        suffixed = [r for r in records if "config_overrides" in r]
        assert len(suffixed) == 2 and all(r["input_ids"][0][-2:] == [2, default["input_ids"][0][0]]
                                          for r in suffixed[:1])  # text </s> [code]: the code after eos


@pytest.mark.parametrize("name", LANGUAGE_FIXTURES)
def test_src_and_tgt_lang_on_the_command_line(name, load_fixture, capsys):
    record = _records(name)[2]
    kwargs = record["greedy"]["generate_kwargs"]
    assert main(["translate", "--model", str(FIXTURES / name), *record["sources"], "--src-lang", record["src_lang"],
                 "--tgt-lang", record["tgt_lang"], "--num-beams", "1", "--max-new-tokens",
                 str(kwargs["max_new_tokens"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["translation"] for r in result["results"]] == record["greedy"]["texts"]
    assert all(r["output_ids"][1] == record["forced_bos_token_id"] for r in result["results"])


@pytest.mark.parametrize("name", LANGUAGE_FIXTURES)
def test_an_unknown_language_lists_the_known_ones(name, capsys):
    codes = load_codes(name)
    for flag in ("--src-lang", "--tgt-lang"):
        assert main(["translate", "--model", str(FIXTURES / name), "hello", flag, "xx_YY"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"minitransformer: error: {flag} 'xx_YY': unknown language code; known: {', '.join(codes)}"


def load_codes(name):  # the codes the fixture's model knows: the last five ids (tools/make_fixtures.py)
    config = json.loads((FIXTURES / name / "config.json").read_text())
    vocab = json.loads((FIXTURES / name / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {t["id"]: t["content"] for t in vocab["added_tokens"]}
    return [by_id[i] for i in range(config["vocab_size"] - 5, config["vocab_size"])]


def test_a_missing_target_language_is_refused_when_nothing_sets_one(fixture_copy, capsys):
    target = fixture_copy("m2m100-tiny")
    generation = json.loads((target / "generation_config.json").read_text())
    del generation["forced_bos_token_id"]
    (target / "generation_config.json").write_text(json.dumps(generation))
    config = json.loads((target / "config.json").read_text())
    config["forced_bos_token_id"] = None
    (target / "config.json").write_text(json.dumps(config))
    assert main(["translate", "--model", str(target), "hello"]) == 2
    assert "--tgt-lang missing: this model needs a target language; known: deu_Latn" in capsys.readouterr().err


def test_languages_on_a_model_without_codes_are_refused(capsys):
    assert main(["translate", "--model", str(FIXTURES / "t5-v1"), "hello", "--tgt-lang", "de_DE"]) == 2
    assert "--tgt-lang de_DE: this model's tokenizer has no language codes" in capsys.readouterr().err
    assert main(["translate", "twelve", "--src-lang", "en"]) == 2  # the demo (Marian)
    assert "--src-lang en: this model's tokenizer has no language codes" in capsys.readouterr().err


def test_tokenizer_beside_the_model_and_from_the_dir_agree():
    model = mt.load(str(FIXTURES / "t5-v1"))
    sources = _records("t5-v1")[0]["sources"]
    assert model.tokenizer.encode(sources) == mt.Tokenizer.from_dir(FIXTURES / "t5-v1").encode(sources)


def test_a_broken_tokenizer_json_is_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(mt.ModelError, match="tokenizer.json: not a tokenizers file"):
        mt.Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(mt.ModelError, match=r"no tokenizer found \(expected tokenizer.json, or OPUS-MT's"):
        mt.Tokenizer.from_dir(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"")  # a T5 saved without its fast tokenizer
    with pytest.raises(mt.ModelError, match=r"spiece.model found: write a tokenizer.json with transformers"):
        mt.Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("name", LANGUAGE_FIXTURES)
def test_without_a_configured_source_language_the_class_default_is_placed(name, tmp_path):
    """HF's classes fall back to en_XX (mBART-50) and eng_Latn (NLLB), the fixtures' configured ones: the same ids."""
    for path in (FIXTURES / name).glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config.pop("src_lang") in ("en_XX", "eng_Latn")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    record = _records(name)[0]
    assert mt.Tokenizer.from_dir(tmp_path).encode(record["sources"]) == record["input_ids"]
