"""Train and export the shipped demo model: English number words -> German number words (0 to 999,999).

A real (tiny) OPUS-MT-shaped Marian model, trained from scratch so the project ships a model whose
translations can be checked by eye and by exact match:

    python tools/train_demo.py            # corpus, sentencepiece, training, evaluation, ONNX export

Stages: build the corpus (number -> English words, number -> German words), train the source and target
sentencepiece models in the OPUS-MT layout (source.spm, target.spm, joint vocab.json with </s>=0, <unk>=1,
<pad>=last), train a MarianMTModel (6+6 layers, swish, sinusoidal positions, scaled and tied embeddings,
decoding starts at <pad>), save it with save_pretrained, export it with
`optimum-cli export onnx --task text2text-generation-with-past`, and record the held-out set with
MarianTokenizer's ids and PyTorch's greedy generate() outputs, so the numpy runtime and tokenizer can be
tested against them without torch or transformers.

Training checkpoints (safetensors) go to build/numbers-en-de/ (git-ignored); a rerun resumes from the last one.
Seeds are fixed: the number split, the sentencepiece models, the initial weights and every batch are
reproducible (batch b is drawn from random.Random(SEED + b)).

As measured (2 CPU cores shared with other jobs, torch 2.13.0, transformers 4.57.6, one torch thread):
training 52.0 min (6,000 steps of 128 pairs, 0.4-0.6 s a step under load), 52.8 min in all with evaluation
and export; 717,440 parameters, 7.3 MB on disk; greedy exact match 1200/1200 on the held-out set and
10000/10000 on a further sample of unseen numbers; the dev set is first perfect at step 1,500. ONNX Runtime
greedy ids equal PyTorch's generate() ids for 1200/1200 held-out numbers. Generation is greedy
(num_beams 1; OPUS-MT ships 4).
"""

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import safetensors.torch
import sentencepiece as spm
import torch
from safetensors import safe_open
from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

SEED = 20240601
ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "weights" / "numbers-en-de"
WORK_DIR = ROOT / "build" / "numbers-en-de"
TOKENIZER_FIXTURE = ROOT / "tests" / "fixtures" / "tokenizer_edge_cases.json"

# ---------------------------------------------------------------------------------------------------------
# Number words

EN_SMALL = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen sixteen seventeen eighteen nineteen").split()
EN_TENS = "- - twenty thirty forty fifty sixty seventy eighty ninety".split()
DE_SMALL = ("null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn "
            "fünfzehn sechzehn siebzehn achtzehn neunzehn").split()
DE_TENS = "- - zwanzig dreißig vierzig fünfzig sechzig siebzig achtzig neunzig".split()


def english_below_1000(n):  # 1..999 -> words, e.g. ["three", "hundred", "forty-two"]
    """English words of 1..999: "<count> hundred" then tens-units joined by a hyphen; no "and"."""
    hundreds, rest = divmod(n, 100)
    words = [EN_SMALL[hundreds], "hundred"] if hundreds else []
    if rest >= 20:
        tens, unit = divmod(rest, 10)
        words.append(EN_TENS[tens] + (f"-{EN_SMALL[unit]}" if unit else ""))
    elif rest:
        words.append(EN_SMALL[rest])
    return words


def english(n):  # 0..999999 -> "forty-two thousand seven"
    """Canonical English number words: lower case, no "and", no commas."""
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = english_below_1000(thousands) + ["thousand"] if thousands else []
    return " ".join(words + english_below_1000(rest))


def german_unit(n, final):  # 1..19 -> "eins" / "ein" / "zwei" ...
    """A 1 is "eins" at the end of the number and "ein" before hundert, tausend or und."""
    if n == 1:
        return "eins" if final else "ein"
    return DE_SMALL[n]


def german_below_1000(n, final):  # 1..999 -> "dreihundertzweiundvierzig"
    """German words of 1..999 as one word: hundreds with their count, units before tens with "und"."""
    hundreds, rest = divmod(n, 100)
    word = german_unit(hundreds, final=False) + "hundert" if hundreds else ""
    if rest >= 20:
        tens, unit = divmod(rest, 10)
        word += (german_unit(unit, final=False) + "und" if unit else "") + DE_TENS[tens]
    elif rest:
        word += german_unit(rest, final)
    return word


def german(n):  # 0..999999 -> "zweihunderteintausendeinhundertelf"
    """Canonical German number word: lower case, one word, thousands always with their count."""
    if n == 0:
        return "null"
    thousands, rest = divmod(n, 1000)
    word = german_below_1000(thousands, final=False) + "tausend" if thousands else ""
    return word + (german_below_1000(rest, final=True) if rest else "")


def check_number_words():
    """The examples of issue 3, asserted."""
    examples = {
        0: ("zero", "null"), 1: ("one", "eins"), 12: ("twelve", "zwölf"), 13: ("thirteen", "dreizehn"),
        16: ("sixteen", "sechzehn"), 17: ("seventeen", "siebzehn"), 19: ("nineteen", "neunzehn"),
        20: ("twenty", "zwanzig"), 21: ("twenty-one", "einundzwanzig"), 26: ("twenty-six", "sechsundzwanzig"),
        27: ("twenty-seven", "siebenundzwanzig"), 30: ("thirty", "dreißig"), 90: ("ninety", "neunzig"),
        100: ("one hundred", "einhundert"), 101: ("one hundred one", "einhunderteins"),
        342: ("three hundred forty-two", "dreihundertzweiundvierzig"),
        1000: ("one thousand", "eintausend"), 1001: ("one thousand one", "eintausendeins"),
        21001: ("twenty-one thousand one", "einundzwanzigtausendeins"),
        42007: ("forty-two thousand seven", "zweiundvierzigtausendsieben"),
        201111: ("two hundred one thousand one hundred eleven", "zweihunderteintausendeinhundertelf"),
        999999: ("nine hundred ninety-nine thousand nine hundred ninety-nine",
                 "neunhundertneunundneunzigtausendneunhundertneunundneunzig"),
    }
    for n, (en, de) in examples.items():
        assert english(n) == en, (n, english(n), en)
        assert german(n) == de, (n, german(n), de)


# ---------------------------------------------------------------------------------------------------------
# Number split: held-out test, dev, training bands

BANDS = [(0, 1_000), (1_000, 10_000), (10_000, 100_000), (100_000, 1_000_000)]
HELDOUT_PER_BAND = [100, 300, 400, 400]     # 1,200 test numbers
DEV_PER_BAND = [40, 120, 120, 120]          # 400 dev numbers
TRAIN_BAND_WEIGHTS = [0.15, 0.25, 0.25, 0.35]
N_TRAIN_LARGE = 200_000                     # random training numbers drawn from the two top bands


def split_numbers():  # -> (heldout, dev, bands of training numbers)
    """Held-out and dev numbers drawn per band; training = all of 0..9999 left, plus 200k random larger ones."""
    rng = random.Random(SEED)
    heldout, dev = [], []
    for (lo, hi), n_test, n_dev in zip(BANDS, HELDOUT_PER_BAND, DEV_PER_BAND):
        picked = rng.sample(range(lo, hi), n_test + n_dev)
        heldout += sorted(picked[:n_test])
        dev += sorted(picked[n_test:])
    unseen = set(heldout) | set(dev)
    large = rng.sample(range(10_000, 1_000_000), N_TRAIN_LARGE)
    bands = [[n for n in range(lo, hi) if n not in unseen] for lo, hi in BANDS[:2]]
    bands += [sorted(n for n in large if lo <= n < hi and n not in unseen) for lo, hi in BANDS[2:]]
    assert not unseen & {n for band in bands for n in band}
    return heldout, dev, bands


def unseen_sample(heldout, dev, bands, size=10_000):  # -> list of numbers
    """A wider check than the held-out set: random numbers >= 10,000 in none of the three sets."""
    seen = set(heldout) | set(dev) | {n for band in bands for n in band}
    rng = random.Random(SEED - 1)
    numbers = []
    while len(numbers) < size:
        n = rng.randrange(10_000, 1_000_000)
        if n not in seen:
            numbers.append(n)
    return numbers


def training_batch(bands, batch, batch_size):  # -> list of numbers
    """Batch `batch` of the training stream: each number from a band chosen by TRAIN_BAND_WEIGHTS."""
    rng = random.Random(SEED + batch)
    picked = rng.choices(bands, weights=TRAIN_BAND_WEIGHTS, k=batch_size)
    return [rng.choice(band) for band in picked]


# ---------------------------------------------------------------------------------------------------------
# Tokenizer in the OPUS-MT layout

SPM_OPTIONS = {  # side -> (file, number words, sentencepiece model type, vocabulary size)
    # Unigram keeps English words whole. On the German compounds unigram learns whole numbers
    # (siebenundsiebzig) and spells the rest letter by letter, up to 32 pieces; BPE stays within 12,
    # with pieces such as "dreihundert", "zweiund", "vierzig", "tausend", "ei n s".
    "source": ("source.spm", english, "unigram", 64),
    "target": ("target.spm", german, "bpe", 96),
}
SPM_CONTROL = {"<unk>", "<s>", "</s>"}


def train_sentencepiece(tok_dir, numbers):
    """source.spm and target.spm on the training numbers' words; full character coverage keeps ß and ö.

    The vocabulary size is a soft limit: English has fewer distinct unigram pieces than 64.
    """
    for file_name, words, model_type, vocab_size in SPM_OPTIONS.values():
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([words(n) for n in numbers]), model_prefix=str(tok_dir / file_name),
            model_type=model_type, vocab_size=vocab_size, character_coverage=1.0, hard_vocab_limit=False,
            num_threads=1, minloglevel=2)
        (tok_dir / f"{file_name}.model").rename(tok_dir / file_name)
        (tok_dir / f"{file_name}.vocab").unlink()


def build_vocab(tok_dir):  # -> {piece: id}
    """Joint vocabulary as in OPUS-MT: </s>=0, <unk>=1, source then new target pieces, <pad> last."""
    pieces = ["</s>", "<unk>"]
    for file_name, *_ in SPM_OPTIONS.values():
        sp = spm.SentencePieceProcessor(model_file=str(tok_dir / file_name))
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if piece not in SPM_CONTROL and piece not in pieces:
                pieces.append(piece)
    pieces.append("<pad>")
    return {piece: i for i, piece in enumerate(pieces)}


def write_tokenizer(tok_dir, numbers):  # -> MarianTokenizer
    """source.spm, target.spm, vocab.json, then save_pretrained writes tokenizer_config.json and the rest."""
    tok_dir.mkdir(parents=True, exist_ok=True)
    train_sentencepiece(tok_dir, numbers)
    vocab = build_vocab(tok_dir)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=2))
    tokenizer = MarianTokenizer(source_spm=str(tok_dir / "source.spm"), target_spm=str(tok_dir / "target.spm"),
                                vocab=str(tok_dir / "vocab.json"), source_lang="en", target_lang="de",
                                model_max_length=64)
    tokenizer.save_pretrained(tok_dir)
    return MarianTokenizer.from_pretrained(tok_dir)


# ---------------------------------------------------------------------------------------------------------
# Model

D_MODEL, N_HEAD, D_FF, N_LAYER, MAX_POSITIONS = 64, 4, 256, 6, 64


def model_config(tokenizer):  # -> MarianConfig
    """OPUS-MT's Marian architecture at a small width; dropout off (the training stream never repeats)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    return MarianConfig(
        vocab_size=len(tokenizer.encoder), decoder_vocab_size=len(tokenizer.encoder),
        d_model=D_MODEL, encoder_layers=N_LAYER, decoder_layers=N_LAYER,
        encoder_attention_heads=N_HEAD, decoder_attention_heads=N_HEAD,
        encoder_ffn_dim=D_FF, decoder_ffn_dim=D_FF, activation_function="swish",
        max_position_embeddings=MAX_POSITIONS, scale_embedding=True, static_position_embeddings=True,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=eos, bos_token_id=eos,
        forced_eos_token_id=eos, architectures=["MarianMTModel"])


def generation_config(tokenizer):  # -> GenerationConfig
    """As OPUS-MT's generation_config.json, with greedy search (num_beams 1) and max_length 64."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    return GenerationConfig(bad_words_ids=[[pad]], bos_token_id=eos, decoder_start_token_id=pad,
                            eos_token_id=eos, forced_eos_token_id=eos, pad_token_id=pad,
                            max_length=MAX_POSITIONS, num_beams=1)


def encode_pairs(tokenizer, numbers):  # -> dict of input_ids, attention_mask, labels
    """Source and target ids of the numbers' words; label padding is -100 (ignored by the loss)."""
    batch = tokenizer([english(n) for n in numbers], text_target=[german(n) for n in numbers],
                      padding=True, return_tensors="pt")
    batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
    return batch


@torch.no_grad()
def translate(model, tokenizer, numbers, batch_size=400):  # -> (texts, ids without trailing pads)
    """Greedy generate() on the English words of the numbers."""
    model.eval()
    texts, ids = [], []
    for start in range(0, len(numbers), batch_size):
        inputs = tokenizer([english(n) for n in numbers[start:start + batch_size]],
                           padding=True, return_tensors="pt")
        for row in model.generate(**inputs, num_beams=1).tolist():
            while row[-1] == tokenizer.pad_token_id:  # batch padding after </s>
                row.pop()
            ids.append(row)
            texts.append(tokenizer.decode(row, skip_special_tokens=True))
    model.train()
    return texts, ids


def accuracy(numbers, texts):  # -> fraction of exact matches
    """Exact-match rate of the translations against the German words."""
    return sum(text == german(n) for n, text in zip(numbers, texts)) / len(numbers)


def learning_rate(step, peak, warmup, total):  # -> float
    """Linear warm-up to `peak`, then linear decay to peak / 20 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (1 - 0.95 * (step - warmup) / max(1, total - warmup))


def save_checkpoint(path, model, optimizer, step):
    """Model weights, AdamW moments and the step as safetensors (no pickle): resuming continues the same run."""
    tensors = {f"model.{name}": p.detach().contiguous() for name, p in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        tensors.update({f"optimizer.{index}.{key}": value.contiguous() for key, value in state.items()})
    safetensors.torch.save_file(tensors, str(path), metadata={"step": str(step)})


def load_checkpoint(path, model, optimizer):  # -> step
    tensors = safetensors.torch.load_file(str(path))
    model.load_state_dict({name[len("model."):]: t for name, t in tensors.items() if name.startswith("model.")})
    state = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".")
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    with safe_open(str(path), "pt") as f:
        return int(f.metadata()["step"])


def train(model, tokenizer, bands, dev, args):  # -> model, trained in place
    """AdamW with warm-up and linear decay; dev accuracy and a resumable checkpoint every `eval_every` steps."""
    checkpoint_path = WORK_DIR / "checkpoint.safetensors"
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    step = load_checkpoint(checkpoint_path, model, optimizer) if checkpoint_path.exists() else 0
    if step:
        log(f"resumed at step {step}")
    model.train()
    started, loss_sum = time.time(), 0.0
    while step < args.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.lr, args.warmup, args.steps)
        batch = encode_pairs(tokenizer, training_batch(bands, step, args.batch_size))
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        loss_sum += loss.item()
        if step % args.eval_every == 0 or step == args.steps:
            texts, _ = translate(model, tokenizer, dev)
            log(f"step {step} loss {loss_sum / args.eval_every:.4f} dev {accuracy(dev, texts):.4f} "
                f"({time.time() - started:.0f}s)")
            loss_sum = 0.0
            save_checkpoint(checkpoint_path, model, optimizer, step)
    return model


def evaluate(model, tokenizer, heldout, unseen):  # -> held-out (texts, ids)
    """Greedy exact match on the held-out set and on a wider unseen sample; every miss is logged."""
    texts, ids = translate(model, tokenizer, heldout)
    unseen_texts, _ = translate(model, tokenizer, unseen)
    for name, numbers, outputs in [("held-out", heldout, texts), ("unseen-sample", unseen, unseen_texts)]:
        hits = sum(text == german(n) for n, text in zip(numbers, outputs))
        log(f"{name} greedy exact match {hits / len(numbers):.4f} ({hits}/{len(numbers)})")
    for n, text in zip(heldout + unseen, texts + unseen_texts):
        if text != german(n):
            log(f"miss {n}: {text!r} != {german(n)!r}")
    return texts, ids


def log(message):
    """Timestamped progress line on stdout."""
    print(time.strftime("%H:%M:%S"), message, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Export and records


def export_onnx(hf_dir):
    """optimum-cli export of the four graphs (encoder, decoder, decoder with past, merged) into OUT_DIR."""
    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    subprocess.run(["optimum-cli", "export", "onnx", "--model", str(hf_dir),
                    "--task", "text2text-generation-with-past", str(OUT_DIR)], check=True)
    for name in ["source.spm", "target.spm", "vocab.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json"]:
        if not (OUT_DIR / name).exists():
            shutil.copy(hf_dir / name, OUT_DIR / name)


def onnx_greedy(tokenizer, numbers, max_length=MAX_POSITIONS):  # -> list of id lists, as translate()
    """Greedy decoding with the exported encoder and decoder_model.onnx (whole prefix each step, no cache).

    The logits processors of the generation config: <pad> never chosen, </s> forced at max_length.
    """
    import numpy as np
    import onnxruntime

    encoder = onnxruntime.InferenceSession(str(OUT_DIR / "encoder_model.onnx"))
    decoder = onnxruntime.InferenceSession(str(OUT_DIR / "decoder_model.onnx"))
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    inputs = tokenizer([english(n) for n in numbers], padding=True, return_tensors="np")
    mask = inputs["attention_mask"].astype(np.int64)
    (memory,) = encoder.run(["last_hidden_state"], {"input_ids": inputs["input_ids"].astype(np.int64),
                                                     "attention_mask": mask})
    ids = np.full((len(numbers), 1), pad, dtype=np.int64)
    done = np.zeros(len(numbers), dtype=bool)
    while not done.all() and ids.shape[1] < max_length:
        (logits,) = decoder.run(["logits"], {"input_ids": ids, "encoder_attention_mask": mask,
                                             "encoder_hidden_states": memory})
        logits = logits[:, -1]  # [n_batch, n_vocab]
        logits[:, pad] = -np.inf
        if ids.shape[1] == max_length - 1:
            logits[:, np.arange(logits.shape[1]) != eos] = -np.inf
        next_ids = np.where(done, pad, logits.argmax(-1))
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
        done |= next_ids == eos
    return [[i for i in row if i != pad] for row in ids.tolist()]


def check_onnx(tokenizer, heldout, ids):
    """Log how many held-out numbers ONNX Runtime decodes to exactly PyTorch's generate() ids."""
    pad = tokenizer.pad_token_id
    onnx_ids = onnx_greedy(tokenizer, heldout)
    agree = sum(a == [i for i in b if i != pad] for a, b in zip(onnx_ids, ids))
    log(f"ONNX Runtime greedy ids equal PyTorch generate() ids for {agree}/{len(heldout)} held-out numbers")


def write_records(tokenizer, heldout, texts, ids):
    """heldout.tsv and heldout_torch_greedy.tsv, tab-separated with a header, ids space-separated.

    heldout.tsv: number, English, German, MarianTokenizer's source ids (pieces then </s>) and target ids.
    heldout_torch_greedy.tsv: number, decoded text, ids as generate() returns them (decoder start <pad>,
    pieces, </s>; batch padding removed).
    """
    joined = " ".join
    with open(OUT_DIR / "heldout.tsv", "w", encoding="utf-8") as f:
        f.write("number\tenglish\tgerman\tsource_ids\ttarget_ids\n")
        for n in heldout:
            source = tokenizer(english(n))["input_ids"]
            target = tokenizer(text_target=german(n))["input_ids"]
            f.write(f"{n}\t{english(n)}\t{german(n)}\t{joined(map(str, source))}\t{joined(map(str, target))}\n")
    with open(OUT_DIR / "heldout_torch_greedy.tsv", "w", encoding="utf-8") as f:
        f.write("number\ttext\tids\n")
        for n, text, row in zip(heldout, texts, ids):
            f.write(f"{n}\t{text}\t{joined(map(str, row))}\n")


EDGE_TEXTS = ["", " ", "  one  hundred ", "One Hundred", "twenty-one</s>two", "<unk>", "seven <pad> eight",
              ">>deu<< five", ">>five", "€ 5", "fünf", "dreißig", "one\ttwo\nthree", "ｏｎｅ", "x</s>",
              "</s></s>", "forty -two"]


def edge_ids(tokenizer):  # -> list of id lists
    """Ids to decode: special ids inside, a source-only piece, an id past the vocabulary, bare ö and ß."""
    v, pad, eos, unk = tokenizer.encoder, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id
    return [[pad, v["neunhundert"], eos], [pad, v["▁hundred"], v["hundert"], eos],
            [unk, v["hundert"], pad, len(v) + 100, eos, v["tausend"]], [v["▁"], v["hundert"]], [v["ö"], v["ß"]], []]


def write_tokenizer_fixture(tok_dir, path):
    """MarianTokenizer's ids and decodes of awkward inputs: whitespace, special-token text, unknown characters."""
    tokenizer = MarianTokenizer.from_pretrained(tok_dir)
    cases = [{"text": text, "ids": tokenizer(text)["input_ids"]} for text in EDGE_TEXTS]
    cases += [{"ids": ids, "decoded": tokenizer.decode(ids, skip_special_tokens=True)} for ids in edge_ids(tokenizer)]
    lines = ",\n".join(json.dumps(case, ensure_ascii=False) for case in cases)
    path.write_text(f"[\n{lines}\n]\n", encoding="utf-8")


def write_input_domain(path):
    """input_domain.json: the words english() writes and how it writes them, for minitransformer's translate to
    normalise input and refuse words the model never saw."""
    words = sorted(set(EN_SMALL) | set(EN_TENS[2:]) | {"hundred", "thousand"})
    domain = dict(description="English number words from 0 to 999,999, e.g. 'three hundred forty-two': lower case, "
                              "tens and units joined by a hyphen, no 'and', no digits or commas",
                  lowercase=True, words=words)
    assert all(w in words for n in range(0, 1_000_000, 997) for w in english(n).replace("-", " ").split())
    path.write_text(json.dumps(domain, indent=1) + "\n", encoding="utf-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=800)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--tokenizer-fixture-only", action="store_true",
                        help=f"only rewrite {TOKENIZER_FIXTURE.relative_to(ROOT)} from {OUT_DIR.relative_to(ROOT)}")
    parser.add_argument("--input-domain-only", action="store_true",
                        help=f"only write {OUT_DIR.relative_to(ROOT)}/input_domain.json")
    args = parser.parse_args()
    if args.tokenizer_fixture_only:
        return write_tokenizer_fixture(OUT_DIR, TOKENIZER_FIXTURE)
    if args.input_domain_only:
        return write_input_domain(OUT_DIR / "input_domain.json")

    check_number_words()
    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # measured faster than 2 for this width, and robust to sharing the cores
    started = time.time()
    heldout, dev, bands = split_numbers()
    log(f"held-out {len(heldout)}, dev {len(dev)}, training bands {[len(b) for b in bands]}")

    hf_dir = WORK_DIR / "hf"
    tokenizer = write_tokenizer(hf_dir, [n for band in bands for n in band])
    model = MarianMTModel(model_config(tokenizer))
    model.generation_config = generation_config(tokenizer)
    log(f"vocab {len(tokenizer.encoder)}, parameters {model.num_parameters()}")
    train(model, tokenizer, bands, dev, args)
    log(f"training took {(time.time() - started) / 60:.1f} min")

    model.save_pretrained(hf_dir)
    texts, ids = evaluate(model, tokenizer, heldout, unseen_sample(heldout, dev, bands))
    export_onnx(hf_dir)
    check_onnx(tokenizer, heldout, ids)
    write_records(tokenizer, heldout, texts, ids)
    write_tokenizer_fixture(OUT_DIR, TOKENIZER_FIXTURE)
    write_input_domain(OUT_DIR / "input_domain.json")
    log(f"done in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
