"""The shipped demo model (weights/numbers-en-de): text in, text out, through the numpy engine.

The held-out numbers were never seen in training; their references, MarianTokenizer's ids and
PyTorch's greedy generate() outputs were recorded at training time (tools/train_demo.py).
"""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minitransformer as mt
from minitransformer.cache import KVCache
from minitransformer.cli import DEMO_MODEL, main
from minitransformer.translate import translate_texts
from minitransformer.generate import resolve_settings
from minitransformer.reference import OnnxReference, reference_generate
from minitransformer.tokenizer import Tokenizer

DEMO = Path(DEMO_MODEL)


def _tsv(name):
    with open(DEMO / name, encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def demo():
    heldout, torch_greedy = _tsv("heldout.tsv"), _tsv("heldout_torch_greedy.tsv")
    assert len(heldout) >= 1000 and [r["number"] for r in heldout] == [r["number"] for r in torch_greedy]
    model, tokenizer = mt.load(str(DEMO)), Tokenizer.from_dir(DEMO)
    english = [r["english"] for r in heldout]
    translations, outputs = translate_texts(model, tokenizer, english, batch_size=100, num_beams=1)
    return model, tokenizer, heldout, torch_greedy, translations, outputs


def test_heldout_exact_match_is_at_least_99_percent(demo):
    _, _, heldout, _, translations, _ = demo
    correct = sum(t == r["german"] for t, r in zip(translations, heldout))
    print(f"demo held-out exact match: {correct}/{len(heldout)}")
    assert correct / len(heldout) >= 0.99


def test_outputs_equal_pytorch_generate_recorded_at_training_time(demo):
    _, _, _, torch_greedy, translations, outputs = demo
    assert [list(map(int, r["ids"].split())) for r in torch_greedy] == [row[:len(r["ids"].split())]
                                                                         for row, r in zip(outputs, torch_greedy)]
    assert translations == [r["text"] for r in torch_greedy]


def test_outputs_equal_the_onnxruntime_reference_loop(demo):
    model, tokenizer, heldout, _, _, outputs = demo
    reference = OnnxReference(str(DEMO))
    settings = resolve_settings(model, {"num_beams": 1})
    english = [r["english"] for r in heldout]
    order = sorted(range(len(english)), key=lambda i: len(english[i]))  # the same batches translate_texts makes
    for start in range(0, len(order), 100):
        batch = order[start:start + 100]
        input_ids, attention_mask = tokenizer.encode_batch([english[i] for i in batch])
        for i, row in zip(batch, reference_generate(reference, settings, input_ids, attention_mask)):
            unpadded = np.trim_zeros(row - model.spec.pad_token_id, "b") + model.spec.pad_token_id
            assert unpadded.tolist() == outputs[i], heldout[i]["number"]


def test_skipping_the_cache_update_drops_accuracy_far_below_99_percent(demo, monkeypatch):
    model, tokenizer, heldout, _, _, _ = demo

    # the old engine's bug: the step's K/V never carried over, so every step decodes as if it were the first
    monkeypatch.setattr(KVCache, "commit", lambda self, n_tgt: None)
    sample = heldout[:300]
    translations, _ = translate_texts(model, tokenizer, [r["english"] for r in sample], batch_size=100, num_beams=1)
    correct = sum(t == r["german"] for t, r in zip(translations, sample))
    print(f"demo exact match with the cache update skipped: {correct}/{len(sample)}")
    assert correct / len(sample) < 0.5


def test_translate_command_arguments_file_stdin_and_json(tmp_path, capsys):
    assert main(["translate", "three hundred forty-two", "twenty-one"]) == 0
    assert capsys.readouterr().out.splitlines() == ["dreihundertzweiundvierzig", "einundzwanzig"]
    source = tmp_path / "in.txt"
    source.write_text("forty-two thousand seven\n\none\n", encoding="utf-8")
    assert main(["translate", "--model", str(DEMO), "-i", str(source), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["translation"] for r in rows] == ["zweiundvierzigtausendsieben", "", "eins"]
    assert rows[1]["output_ids"] == [] and rows[0]["output_ids"][-1] == 0  # eos ends the generated ids
    result = subprocess.run([sys.executable, "-m", "minitransformer.cli", "translate", "-i", "-"],
                            input="nine hundred ninety-nine thousand nine hundred ninety-nine\n",
                            capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ["neunhundertneunundneunzigtausendneunhundertneunundneunzig"]


def test_translate_refuses_nothing_to_do_and_unreadable_input(tmp_path, capsys):
    assert main(["translate"]) == 2
    assert "nothing to translate" in capsys.readouterr().err
    assert main(["translate", "-i", str(tmp_path / "absent.txt")]) == 2
    assert "absent.txt: cannot read input" in capsys.readouterr().err
