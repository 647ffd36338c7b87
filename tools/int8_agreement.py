"""The README's int8 table: each quantized fixture against ONNX Runtime running the same quantized graphs (by the
verdict rule, with the int8 model's float64 evaluation as arbiter, ONNX Runtime's rounding decisions taken and
judged: rounding.py), and against its fp32 parent.

Free-running against ONNX Runtime int8: our engine decoding on its own roundings, fed ONNX Runtime's tokens; max
|Δlogits| shows what a rounding flip does when nothing is shared.

Against the parent, both decoded teacher-forced on the parent's own greedy tokens (PyTorch's generate(), recorded):
max |Δlogits| over every step and row, and how many rows' greedy decodes (ours, int8, 40 new tokens) equal the
parent's recorded ones token for token.

Usage: python tools/int8_agreement.py [NAME ...]
"""
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import minitransformer as mt
from minitransformer.reference import OnnxReference
from minitransformer.verify import compare

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def parent_agreement(model, parent, recorded):
    """-> (max |logits int8 - logits fp32|, tokens where both argmaxes agree, tokens, rows whose whole greedy decode
    equals the parent's), teacher-forced on the parent's greedy ids up to each row's eos."""
    ids, mask, greedy = recorded["input_ids"], recorded["attention_mask"], recorded["greedy_ids"]
    ours, theirs = model.forward(ids, mask, greedy[:, :-1]), parent.forward(ids, mask, greedy[:, :-1])
    live = greedy[:, 1:] != model.generation_config["pad_token_id"]  # positions that predict a real token
    delta = float(np.abs(ours - theirs)[live].max())
    agree = int((ours.argmax(-1) == theirs.argmax(-1))[live].sum())
    decoded = model.generate(ids, mask, max_new_tokens=greedy.shape[1] - 1, num_beams=1)
    same = sum(np.array_equal(a, b) for a, b in zip(decoded, greedy))
    return delta, agree, int(live.sum()), same, len(greedy)


def ort_delta(model, onnx_dir, ids, mask, n_steps=40):
    """max |our int8 logits - ONNX Runtime's int8 logits| over the split loop, both fed ONNX Runtime's tokens, each
    rounding on its own."""
    reference = OnnxReference(onnx_dir, quantized=True)
    loop = reference.decoder("split", reference.encode(ids, mask), mask)
    state = model.start(model.encode(ids, mask), mask, n_steps)
    tokens = np.full((ids.shape[0], 1), model.config["decoder_start_token_id"], dtype=np.int64)
    worst = 0.0
    for _ in range(n_steps):
        theirs, _ = loop.step(tokens)
        worst = max(worst, float(np.abs(model.decode_step(state, tokens) - theirs).max()))
        tokens = theirs[:, -1].argmax(axis=-1)[:, None]
    return worst


def main(names):
    names = names or sorted(p.name for p in FIXTURES.iterdir() if (p / "encoder_model_quantized.onnx").exists())
    print("| fixture | recipe | ORT int8: steps within the rule | least margin: outputs | least margin: quantizer "
          "inputs | flips taken | free-running max abs Δlogits vs ORT int8 | max abs Δlogits vs fp32 parent "
          "| argmax agrees with the parent | greedy rows equal to the parent's |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        recipe = json.loads((FIXTURES / name / "quantized_from.json").read_text())
        parent_dir = FIXTURES / recipe["parent"]
        recorded = load_file(str(parent_dir / "torch_outputs.safetensors"))
        model, parent = mt.load(str(FIXTURES / name)), mt.load(str(parent_dir))
        layouts = [layout for layout, graph in (("split", "decoder_model_quantized.onnx"),
                                                ("merged", "decoder_model_merged_quantized.onnx"))
                   if (FIXTURES / name / graph).exists()]
        comparison = compare(model, str(FIXTURES / name), recorded["input_ids"], recorded["attention_mask"], 40, layouts)
        within = sum(r.ok for r in comparison.steps)
        quantizer_inputs = [j for _, _, j in comparison.quantizer_judgements()]
        outputs = [comparison.encoder] + [j for report in comparison.steps for j in report.outputs]
        flips = comparison.encoder_followed + sum(r.followed for r in comparison.steps)
        to_ort = ort_delta(model, str(FIXTURES / name), recorded["input_ids"], recorded["attention_mask"])
        delta, agree, tokens, same, rows = parent_agreement(model, parent, recorded)
        kind = f"{recipe['tool']}, {'per channel' if recipe['per_channel'] else 'per tensor'}, {recipe['weight_type']}"
        print(f"| `{name}` | {kind} | {within}/{len(comparison.steps)} | {min(j.margin for j in outputs):.3g} "
              f"| {min(j.margin for j in quantizer_inputs):.3g} | {flips} | {to_ort:.2g} | {delta:.2g} "
              f"| {agree}/{tokens} | {same}/{rows} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
