"""Record Hugging Face generate() on every fixture, for every generation setting the engine accepts.

For each fixture in tests/fixtures/ the recorder rebuilds the exact PyTorch model from config.json and
torch_state_dict.safetensors (no retraining; it checks the rebuilt model reproduces torch_outputs.safetensors'
logits), then runs `generate(..., return_dict_in_generate=True, output_scores=True)` once per case below and writes
  hf_generate.json         the cases: generate() keyword arguments, what each result holds, HF's module names
  hf_generate.safetensors  per case: sequences, scores [n_steps, n_rows, n_vocab], sequences_scores, beam_indices,
                           and for the attention cases encoder_attentions [n_layer, ...], cross_attentions
                           [n_steps, n_layer, ...] and decoder_attentions.{step} [n_layer, ...] (keys grow per step)
Each setting's value is chosen on the fixture so that it changes the generated ids (or, for the score-only
settings, the scores) against the plain run, and the recorder asserts that it does: a test built on a setting that
changes nothing could not fail.

The sampling warpers are also recorded on their own, on scores built to sit on their edges (ties, cumulative
probabilities exactly at the cut): tests/fixtures/hf_warpers.json and hf_warpers.safetensors.

Usage: python tools/record_generate.py [--only NAME] [--warpers-only]   (needs pip install -e '.[tools]')
"""
import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import transformers

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MAX_NEW = 40          # as the fixture factory's greedy and beam records
BEAM_MAX_NEW = 12     # beam cases with attentions: 12 steps keep the recorded maps small
OUTPUT = dict(return_dict_in_generate=True, output_scores=True)


def load_hf(path):
    """The fixture's PyTorch model, rebuilt from config.json and its recorded state_dict, in eval mode."""
    config = transformers.AutoConfig.from_pretrained(path)
    model = getattr(transformers, config.architectures[0])(config)
    state = safetensors.torch.load_file(str(path / "torch_state_dict.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("embed_positions" in k for k in missing), (missing, unexpected)
    model.generation_config = transformers.GenerationConfig.from_pretrained(path)
    model.config._attn_implementation = "eager"  # attention probabilities are returned only by eager attention
    return model.eval()


def new_tokens(row, eos):  # [1 + n_new] -> the tokens up to and including the first eos
    tokens = row[1:].tolist()
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def differs(a, b):
    return a.shape != b.shape or bool((a != b).any())


class Recorder:
    """Runs generate() cases on one fixture and keeps their tensors and keyword arguments."""

    def __init__(self, model, inputs):
        self.model, self.inputs = model, inputs
        self.tensors, self.cases = {}, {}
        self.result_fields = {}  # result class name -> its dataclass fields, in order

    @torch.no_grad()
    def run(self, kwargs, seed=None):
        if seed is not None:
            torch.manual_seed(seed)
        return self.model.generate(self.inputs["input_ids"], attention_mask=self.inputs["attention_mask"],
                                   **kwargs, **OUTPUT)

    def record(self, name, kwargs, out, note, seed=None, scores=True):
        """Keep one case: its generate() kwargs and every returned tensor HF filled (the per-step scores only
        with `scores`: the 40-step beam cases would otherwise dominate the fixture's size)."""
        prefix = f"{name}."
        self.tensors[prefix + "sequences"] = out.sequences
        kept = ["sequences"]
        if scores:
            self.tensors[prefix + "scores"] = torch.stack(out.scores)  # [n_steps, n_rows, n_vocab]
            kept.append("scores")
        for field in ("sequences_scores", "beam_indices"):
            if getattr(out, field, None) is not None:
                self.tensors[prefix + field] = getattr(out, field)
                kept.append(field)
        if scores and not kwargs.get("do_sample"):  # each chosen token's score, as HF compute_transition_scores
            self.tensors[prefix + "transition_scores"] = self.model.compute_transition_scores(
                out.sequences, out.scores, getattr(out, "beam_indices", None))
            kept.append("transition_scores")
        if kwargs.get("output_logits"):
            self.tensors[prefix + "logits"] = torch.stack(out.logits)  # [n_steps, n_rows, n_vocab]
            kept.append("logits")
        if kwargs.get("output_attentions"):
            self.tensors[prefix + "encoder_attentions"] = torch.stack(out.encoder_attentions)
            self.tensors[prefix + "cross_attentions"] = torch.stack([torch.stack(layers)
                                                                     for layers in out.cross_attentions])
            for step, layers in enumerate(out.decoder_attentions):
                self.tensors[f"{prefix}decoder_attentions.{step}"] = torch.stack(layers)
            kept += ["encoder_attentions", "cross_attentions", "decoder_attentions"]
        self.cases[name] = dict(kwargs=kwargs, seed=seed, fields=kept, note=note, class_name=type(out).__name__)
        self.result_fields[type(out).__name__] = [f.name for f in dataclasses.fields(out)]


def pick(candidates, changes, what, scores_change=None):
    """The first candidate value for which `changes(value)` holds (it changes the ids); failing that, the first for
    which `scores_change(value)` holds (on a fixture whose greedy output never repeats a token, a repetition penalty
    can only move scores); the recorder fails if none does."""
    for test in (changes, scores_change):
        for value in candidates if test else ():
            if test(value):
                return value
    raise AssertionError(f"no {what} among {candidates} changes the output on this fixture")


def record_fixture(path):
    model = load_hf(path)
    recorded = safetensors.torch.load_file(str(path / "torch_outputs.safetensors"))
    inputs = {k: recorded[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        logits = model(**inputs, decoder_input_ids=recorded["decoder_input_ids"]).logits
    # the fixture was recorded on another CPU (and with sdpa attention): float32 rounding differs, nothing more
    drift = float((logits - recorded["logits"]).abs().max())
    bound = 1e-5 * float(recorded["logits"].abs().max())  # ~100x float32 rounding at the logits' magnitude
    assert drift < bound, f"{path.name}: the rebuilt model is {drift} from its recorded logits (bound {bound})"
    config = json.loads((path / "config.json").read_text())
    eos, vocab = config["eos_token_id"], config["vocab_size"]
    rec = Recorder(model, inputs)
    greedy_kwargs = dict(num_beams=1, do_sample=False, max_new_tokens=MAX_NEW)
    plain = rec.run(greedy_kwargs)
    ids = plain.sequences
    assert torch.equal(ids, recorded["greedy_ids"]), f"{path.name}: greedy ids differ from the fixture's record"
    rows = [new_tokens(row, eos) for row in ids]

    def greedy_case(name, note, **settings):
        kwargs = {**greedy_kwargs, **settings}
        out = rec.run(kwargs)
        if differs(out.sequences, ids):
            note += "; changes the ids"
        else:  # the scores oracle still catches an inverted or ignored setting
            assert differs(torch.stack(out.scores), torch.stack(plain.scores)), f"{path.name}: {name} {settings} " \
                f"changes neither the greedy ids nor the scores"
            note += "; changes the scores only (this fixture's greedy output repeats no token)"
        rec.record(name, kwargs, out, note)
        return out

    def greedy_ids(**settings):
        return rec.run({**greedy_kwargs, **settings}).sequences

    def greedy_scores_differ(**settings):
        return differs(torch.stack(rec.run({**greedy_kwargs, **settings}).scores), torch.stack(plain.scores))

    # the plain runs, with raw logits and attentions: greedy over 40 steps, beam 4 returning 3 hypotheses over 12
    kwargs = {**greedy_kwargs, "output_attentions": True, "output_logits": True}
    rec.record("greedy", kwargs, rec.run(kwargs), "greedy search as generation_config.json sets it")
    kwargs = dict(num_beams=4, do_sample=False, max_new_tokens=BEAM_MAX_NEW, num_return_sequences=3,
                  output_attentions=True, output_logits=True)
    rec.record("beam", kwargs, rec.run(kwargs),
               "beam 4, 3 returned, with generation_config.json's length_penalty and early_stopping")
    full_beam = dict(num_beams=4, do_sample=False, max_new_tokens=MAX_NEW, num_return_sequences=4)
    plain_beam = rec.run(full_beam)
    rec.record("beam_40", full_beam, plain_beam, "beam 4 over 40 steps, all 4 returned")

    # logits processors, each at a value that changes this fixture's greedy ids
    content = sorted({t for r in rows for t in r if t != eos})
    longest = max(range(len(rows)), key=lambda i: len(rows[i]))
    penalty = pick([1.5, 2.0, 3.0], lambda p: differs(greedy_ids(repetition_penalty=p), ids), "repetition_penalty",
                   lambda p: greedy_scores_differ(repetition_penalty=p))
    greedy_case("repetition_penalty", "penalized tokens: scores divided (> 0) or multiplied (< 0)",
                repetition_penalty=penalty)
    reward = pick([0.5, 0.1, 0.03], lambda p: differs(greedy_ids(repetition_penalty=p), ids),
                  "repetition_penalty below 1", lambda p: greedy_scores_differ(repetition_penalty=p))
    greedy_case("repetition_penalty_below_1", "a penalty below 1 rewards repeats", repetition_penalty=reward)
    first_tokens = sorted({r[0] for r in rows})
    forced_first = model.generation_config.forced_bos_token_id is not None  # then begin_suppress acts one step later
    begin_tokens = sorted({r[1 if forced_first else 0] for r in rows})
    greedy_case("suppress_tokens", "two tokens of the plain output never emitted",
                suppress_tokens=[rows[longest][1], rows[longest][3]])
    greedy_case("begin_suppress_tokens", "each row's plain first free token barred at that step only",
                begin_suppress_tokens=begin_tokens)
    ended = [len(r) for r in rows if r[-1] == eos]
    shortest = min(ended)
    greedy_case("min_new_tokens", "eos barred until the shortest row's eos step, inclusive",
                min_new_tokens=shortest)
    greedy_case("min_length", "min_length counts the decoder start token", min_length=shortest + 1)
    greedy_case("min_new_tokens_over_min_length", "min_new_tokens takes precedence over min_length",
                min_new_tokens=shortest, min_length=MAX_NEW)
    ngram = pick([2, 3, 4, 1], lambda n: differs(greedy_ids(no_repeat_ngram_size=n), ids), "no_repeat_ngram_size",
                 lambda n: greedy_scores_differ(no_repeat_ngram_size=n))
    greedy_case("no_repeat_ngram_size", "no n-gram twice in a row's output", no_repeat_ngram_size=ngram)
    forced = pick([t for t in content if t not in first_tokens] + list(range(vocab)),
                  lambda t: t not in first_tokens and t != eos, "forced_bos_token_id")
    greedy_case("forced_bos_token_id", "the first new token forced", forced_bos_token_id=forced)
    bigram = rows[longest][2:4]
    greedy_case("bad_words_ids", "a two-token bad word from the plain output, and a single one",
                bad_words_ids=[bigram, [rows[longest][6]]])
    greedy_case("forced_eos_token_id", "eos forced at max_length - 1 (10 new tokens)", forced_eos_token_id=eos,
                max_new_tokens=10)
    default_max = {k: v for k, v in greedy_kwargs.items() if k != "max_new_tokens"}
    rec.record("max_length_from_config", default_max, rec.run(default_max),
               "no max_new_tokens: generation_config.json's max_length (HF adds 1 to the default 20)")
    out = rec.run({**greedy_kwargs, "renormalize_logits": True})
    assert not torch.equal(torch.stack(out.scores), torch.stack(plain.scores))
    rec.record("renormalize_logits", {**greedy_kwargs, "renormalize_logits": True}, out,
               "scores log-softmaxed after the processors")

    # beam search settings
    def changes(lp, what):
        """The best hypotheses (or, failing that, the sequence scores) differ, and every returned one finished: a
        score at the -1e9 placeholder would leave the order to how top-k breaks ties (torch's is unspecified)."""
        out = rec.run({**full_beam, "length_penalty": lp})
        changed = (differs(out.sequences[::4], plain_beam.sequences[::4]) if what == "winner"
                   else differs(out.sequences_scores, plain_beam.sequences_scores))
        return changed and bool((out.sequences_scores > -1e8).all())

    candidates = [0.0, -2.0, 3.0, 6.0, -6.0, 12.0, -1.0, 1.5, -0.5]
    length_penalty = pick(candidates, lambda lp: changes(lp, "winner"), "length_penalty",
                          lambda lp: changes(lp, "scores"))
    winner = changes(length_penalty, "winner")
    rec.record("length_penalty", {**full_beam, "length_penalty": length_penalty},
               rec.run({**full_beam, "length_penalty": length_penalty}),
               "a length penalty that changes the winner" if winner else
               "a length penalty that changes the sequence scores (none changes this confident fixture's winner)",
               scores=False)
    for early_stopping in (True, False, "never"):
        kwargs = {**full_beam, "early_stopping": early_stopping, "length_penalty": 2.0}
        rec.record(f"early_stopping_{str(early_stopping).lower()}", kwargs, rec.run(kwargs),
                   "early stopping variants at length_penalty 2", scores=False)
    kwargs = {**full_beam, "repetition_penalty": penalty, "min_new_tokens": shortest, "no_repeat_ngram_size": ngram}
    out = rec.run(kwargs)
    assert differs(out.sequences, plain_beam.sequences)
    rec.record("beam_processors", kwargs, out, "repetition penalty, min_new_tokens and no_repeat_ngram in beam search")

    # sampling: the warpers' processed scores along HF's own draws (torch draws differently from numpy)
    sample = dict(do_sample=True, num_beams=1, max_new_tokens=MAX_NEW)
    samples = {
        "sample_default": dict(),  # GenerationConfig's top_k 50
        "sample_temperature": dict(temperature=0.6, top_k=0),
        "sample_top_k": dict(top_k=3),
        "sample_top_p": dict(top_p=0.7, top_k=0),
        "sample_all": dict(temperature=1.4, top_k=7, top_p=0.8, repetition_penalty=1.3),
        "sample_return_3": dict(num_return_sequences=3, top_p=0.9),
    }
    for i, (name, settings) in enumerate(samples.items()):
        kwargs = {**sample, **settings}
        rec.record(name, kwargs, rec.run(kwargs, seed=i), "warpers after the processors, in HF's order", seed=i)

    modules = sorted(name for name, _ in model.named_modules(remove_duplicate=False) if name)  # tied ones too
    return rec, modules


def write(path, rec, modules):
    """hf_generate.json and hf_generate.safetensors, staged in the fixture dir and renamed into place."""
    meta = dict(transformers_version=transformers.__version__, torch_version=torch.__version__,
                input="torch_outputs.safetensors input_ids and attention_mask", cases=rec.cases,
                result_fields=rec.result_fields, hf_modules=modules)
    tensors = {k: v.contiguous() for k, v in rec.tensors.items()}
    with tempfile.TemporaryDirectory(dir=path, prefix=".hf_generate-") as stage:
        staged = Path(stage)
        safetensors.torch.save_file(tensors, str(staged / "hf_generate.safetensors"))
        (staged / "hf_generate.json").write_text(json.dumps(meta, indent=1) + "\n")
        for name in ("hf_generate.safetensors", "hf_generate.json"):
            (staged / name).replace(path / name)


def warper_cases():
    """Scores built to sit on the warpers' edges (HF's, applied in its order: temperature, top-k, top-p): exact
    ties at the k-th score, cumulative probabilities exactly at 1 - top_p (uniform rows), top_p 0 and 1, barred
    (-inf) tokens, and seeded random rows. -> {name: (scores [n_rows, n_vocab] float32, settings)}"""
    rng = np.random.default_rng(11)
    uniform = np.zeros((2, 4), np.float32)                           # probabilities 1/4 each: cumulative exact
    ties = np.array([[1, 2, 2, 2, 3, 0], [5, 5, 5, 5, 5, 5]], np.float32)
    barred = rng.normal(0, 3, (3, 20)).astype(np.float32)
    barred[:, ::3] = -np.inf
    random = rng.normal(0, 3, (6, 50)).astype(np.float32)
    cases = {f"uniform_top_p_{p}": (uniform, dict(top_p=p)) for p in (0.75, 0.5, 0.25, 0.0, 1.0)}
    cases.update({f"ties_top_k_{k}": (ties, dict(top_k=k)) for k in (1, 2, 4, 6, 9)})
    cases.update({"barred_top_k_4": (barred, dict(top_k=4)), "barred_top_p_0.6": (barred, dict(top_p=0.6))})
    for temperature, top_k, top_p in ((0.7, 0, 0.9), (1.3, 5, 1.0), (1.0, 10, 0.5), (2.0, 3, 0.3), (0.5, 50, 0.95),
                                      (1.0, 0, 0.0), (0.25, 0, 0.99)):
        cases[f"random_t{temperature}_k{top_k}_p{top_p}"] = (random, dict(temperature=temperature, top_k=top_k,
                                                                          top_p=top_p))
    return cases


def record_warpers(path):
    """hf_warpers.json (each case's settings) and hf_warpers.safetensors (its input and HF's output)."""
    from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
    tensors, settings = {}, {}
    for name, (scores, setting) in warper_cases().items():
        out = torch.from_numpy(scores.copy())
        if setting.get("temperature", 1.0) != 1.0:
            out = TemperatureLogitsWarper(setting["temperature"])(None, out)
        if setting.get("top_k", 0) != 0:
            out = TopKLogitsWarper(setting["top_k"])(None, out)
        if setting.get("top_p", 1.0) < 1.0:
            out = TopPLogitsWarper(setting["top_p"])(None, out)
        tensors[f"{name}.input"], tensors[f"{name}.output"] = torch.tensor(scores), out.clone().contiguous()
        settings[name] = setting
    with tempfile.TemporaryDirectory(dir=path, prefix=".hf_warpers-") as stage:
        staged = Path(stage)
        safetensors.torch.save_file(tensors, str(staged / "hf_warpers.safetensors"))
        (staged / "hf_warpers.json").write_text(json.dumps(dict(transformers_version=transformers.__version__,
                                                                cases=settings), indent=1) + "\n")
        for name in ("hf_warpers.safetensors", "hf_warpers.json"):
            (staged / name).replace(path / name)


def main():
    names = sorted(p.name for p in FIXTURES_DIR.iterdir() if (p / "torch_state_dict.safetensors").exists())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=names)
    parser.add_argument("--warpers-only", action="store_true", help="only the warper edge cases (hf_warpers.*)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    record_warpers(FIXTURES_DIR)
    if args.warpers_only:
        return
    for name in [args.only] if args.only else names:
        rec, modules = record_fixture(FIXTURES_DIR / name)
        write(FIXTURES_DIR / name, rec, modules)
        size = (FIXTURES_DIR / name / "hf_generate.safetensors").stat().st_size
        print(f"{name}: {len(rec.cases)} cases, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
