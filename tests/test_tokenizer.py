"""minitransformer.tokenizer against HF MarianTokenizer's recorded ids (no torch or transformers needed).

The records come from tools/train_demo.py: weights/numbers-en-de/heldout.tsv (MarianTokenizer's source and
target ids of the held-out sentences), heldout_torch_greedy.tsv (PyTorch generate() ids and decoded text)
and tests/fixtures/tokenizer_edge_cases.json (awkward inputs).
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from minitransformer.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "weights" / "numbers-en-de"
EDGE_CASES = json.loads((ROOT / "tests" / "fixtures" / "tokenizer_edge_cases.json").read_text(encoding="utf-8"))


def read_tsv(name):  # -> list of row dicts
    with open(MODEL_DIR / name, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def ids(field):  # "12 3 0" -> [12, 3, 0]
    return [int(i) for i in field.split()]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_dir(MODEL_DIR)


@pytest.fixture(scope="module")
def heldout():
    return read_tsv("heldout.tsv")


def test_heldout_source_ids_match_marian_tokenizer(tokenizer, heldout):
    assert len(heldout) >= 1000
    assert tokenizer.encode([row["english"] for row in heldout]) == [ids(row["source_ids"]) for row in heldout]


def test_decode_of_reference_target_ids_is_the_reference(tokenizer, heldout):
    assert [tokenizer.decode(ids(row["target_ids"])) for row in heldout] == [row["german"] for row in heldout]


def test_decode_of_torch_greedy_ids_is_its_text(tokenizer):
    rows = read_tsv("heldout_torch_greedy.tsv")
    assert [tokenizer.decode(ids(row["ids"])) for row in rows] == [row["text"] for row in rows]


@pytest.mark.parametrize("case", [c for c in EDGE_CASES if "text" in c], ids=lambda c: repr(c["text"]))
def test_encode_edge_cases_match_marian_tokenizer(tokenizer, case):
    assert tokenizer.encode([case["text"]]) == [case["ids"]]


@pytest.mark.parametrize("case", [c for c in EDGE_CASES if "decoded" in c], ids=lambda c: str(c["ids"]))
def test_decode_edge_cases_match_marian_tokenizer(tokenizer, case):
    assert tokenizer.decode(case["ids"]) == case["decoded"]


def test_special_ids_follow_the_opus_mt_layout(tokenizer):
    assert (tokenizer.eos_id, tokenizer.unk_id, tokenizer.pad_id) == (0, 1, len(tokenizer.vocab) - 1)


def test_encode_batch_pads_right_with_pad_id(tokenizer):
    texts = ["seven", "nine hundred ninety-nine thousand nine hundred ninety-nine", ""]
    input_ids, attention_mask = tokenizer.encode_batch(texts)
    rows = tokenizer.encode(texts)
    assert input_ids.dtype == np.int64 and attention_mask.dtype == np.int64
    assert input_ids.shape == attention_mask.shape == (3, max(map(len, rows)))
    for row, ids_row, mask_row in zip(rows, input_ids, attention_mask):
        assert ids_row[:len(row)].tolist() == row
        assert (ids_row[len(row):] == tokenizer.pad_id).all()
        assert mask_row.tolist() == [1] * len(row) + [0] * (len(ids_row) - len(row))


def test_decode_accepts_numpy_ids(tokenizer):
    row = tokenizer.encode(["zero"])[0]
    assert tokenizer.decode(np.array(row, dtype=np.int64)) == tokenizer.decode(row)


def test_encode_refuses_a_bare_string(tokenizer):
    with pytest.raises(TypeError):
        tokenizer.encode("seven")


def copy_tokenizer(tmp_path):  # -> directory holding a copy of the tokenizer files
    for name in ["source.spm", "target.spm", "vocab.json", "tokenizer_config.json"]:
        shutil.copy(MODEL_DIR / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("name", ["source.spm", "target.spm", "vocab.json"])
def test_missing_file_is_named(tmp_path, name):
    (copy_tokenizer(tmp_path) / name).unlink()
    with pytest.raises(ValueError, match=name):
        Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "{}", '{"</s>": 0, "<unk>": "one"}',
                                     '{"</s>": 0, "<unk>": 1}', '{"</s>": 0, "<unk>": 0, "<pad>": 2}'])
def test_bad_vocab_is_named(tmp_path, content):
    (copy_tokenizer(tmp_path) / "vocab.json").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.json"):
        Tokenizer.from_dir(tmp_path)


def test_corrupt_spm_is_named(tmp_path):
    (copy_tokenizer(tmp_path) / "target.spm").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="target.spm"):
        Tokenizer.from_dir(tmp_path)


def test_separate_vocabs_are_refused(tmp_path):
    config_path = copy_tokenizer(tmp_path) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps({**config, "separate_vocabs": True}), encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        Tokenizer.from_dir(tmp_path)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        Tokenizer.from_dir(tmp_path / "nowhere")
