"""Int8 exports (tests/fixtures/*-int8-*, *-dynamic-*, made by tools/make_quantized.py from the fp32 fixtures):
loading, extraction against the fp32 parent's PyTorch weights, the integer arithmetic bit for bit against
ONNX Runtime's own operands, and the step-by-step comparison with ONNX Runtime running the same graphs."""
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from safetensors.numpy import load_file

import minitransformer as mt
from minitransformer.cli import main
from minitransformer.errors import ModelError
from minitransformer.extract import extract, write_extracted
from minitransformer.families import spec_from_config, tie_groups
from minitransformer import kernels, quant
from minitransformer.quant import dynamic_quantize, integer_product, matmul_integer
from minitransformer.rounding import Follower, OrtQuantizer, judge_quantizers
from minitransformer.verify import compare
from minitransformer.families import canonical_names
from minitransformer.weights import LINEAR_MODULES, expected_shapes, resolve_ties, to_canonical

import alter
from conftest import FIXTURES, record_worst

QUANTIZED_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if (p / "encoder_model_quantized.onnx").exists())
N_STEPS = 24


def _recipe(name):
    return json.loads((FIXTURES / name / "quantized_from.json").read_text())


def _parent(name):
    return FIXTURES / _recipe(name)["parent"]


def _sources(name):
    recorded = load_file(str(_parent(name) / "torch_outputs.safetensors"))
    return recorded["input_ids"], recorded["attention_mask"]


@pytest.fixture(scope="module")
def quantized_model():
    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = mt.load(str(FIXTURES / name))
        return cache[name]
    return load


def test_the_quantized_fixtures_cover_every_family_per_tensor_and_per_channel():
    seen = {(json.loads((_parent(n) / "config.json").read_text())["model_type"], _recipe(n)["per_channel"])
            for n in QUANTIZED_FIXTURES}
    assert seen >= {(family, per_channel) for family in ("marian", "bart", "mbart", "m2m_100", "t5")
                    for per_channel in (False, True)}
    assert {_recipe(n)["weight_type"] for n in QUANTIZED_FIXTURES} == {"int8", "uint8"}
    assert {_recipe(n)["tool"] for n in QUANTIZED_FIXTURES} == {"ortq", "dynamic"}


def test_a_dir_with_both_kinds_needs_a_choice(tmp_path):
    target = tmp_path / "both"
    shutil.copytree(FIXTURES / "marian-opus-int8-tensor", target)
    for graph in (FIXTURES / "marian-opus").glob("*.onnx"):
        shutil.copyfile(graph, target / graph.name)
    with pytest.raises(ModelError, match="both fp32 and quantized graphs.*quantized=True"):
        mt.load(str(target))
    assert mt.load(str(target), quantized=True).quantized
    assert not mt.load(str(target), quantized=False).quantized
    with pytest.raises(ModelError, match="no fp32 graphs"):
        mt.load(str(FIXTURES / "marian-opus-int8-tensor"), quantized=False)


def test_the_command_line_asks_for_the_choice_in_one_line(tmp_path, capsys):
    target = tmp_path / "both"
    shutil.copytree(FIXTURES / "marian-opus-int8-tensor", target)
    for graph in (FIXTURES / "marian-opus").glob("*.onnx"):
        shutil.copyfile(graph, target / graph.name)
    args = ["generate", str(target), "--input-ids", "5 17 9 0", "--max-new-tokens", "6"]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--quantized" in error and str(target) in error
    for flag, source in (("--quantized", "marian-opus-int8-tensor"), ("--no-quantized", "marian-opus")):
        assert main(args + [flag]) == 0
        assert main(["generate", str(FIXTURES / source)] + args[2:]) == 0
        both, alone = capsys.readouterr().out.splitlines()
        assert both == alone


@pytest.mark.parametrize("name", ["marian-opus-int8-tensor", "t5-v1-int8-channel", "marian-untied-dynamic-uint8-channel",
                                  "bart-tiny-int8-tensor"])
def test_an_extracted_int8_dir_is_the_same_model(name, tmp_path, quantized_model):
    """model.safetensors keeps the integers, scales and zero points (a separately quantized tied head too) and
    the attention kind; the reloaded model gives the same logits bit for bit."""
    write_extracted(str(FIXTURES / name), str(tmp_path / "out"))
    stored = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert any(v.dtype == np.int8 or v.dtype == np.uint8 for v in stored.values())
    assert all(k.removesuffix("_scale") in stored for k in stored if k.endswith("_scale"))
    from_onnx, from_dir = quantized_model(name), mt.load(str(tmp_path / "out"))
    assert from_dir.quantized and from_dir.integer_attention == from_onnx.integer_attention
    input_ids, attention_mask = _sources(name)
    decoder_input_ids = np.array([[from_onnx.config["decoder_start_token_id"], 5, 7, 9]] * input_ids.shape[0])
    assert (from_onnx.forward(input_ids, attention_mask, decoder_input_ids).tobytes()
            == from_dir.forward(input_ids, attention_mask, decoder_input_ids).tobytes())


@pytest.mark.parametrize("name", QUANTIZED_FIXTURES)
def test_extraction_names_every_integer_weight_as_the_fp32_parent_does(name):
    """Each dequantized weight lies within half a quantization step of the parent's PyTorch weight of the same
    canonical name: a weight read under the wrong name, transposed, or with the wrong scale cannot pass."""
    config, _, tensors, manifest = extract(str(FIXTURES / name))
    spec = spec_from_config(config)
    tensors = resolve_ties(to_canonical(tensors, spec), tie_groups(config))
    parent = load_file(str(_parent(name) / "torch_state_dict.safetensors"))
    names = canonical_names(spec, expected_shapes(spec))
    linear = {names[common] for common in names if common.split(".")[-2:-1] in [[m] for m in LINEAR_MODULES]
              and common.endswith(".weight") and common != "lm_head.weight"}
    integer = {key for key, value in tensors.items() if value.dtype.kind in "iu" and not key.endswith("_zero_point")}
    assert linear <= integer  # every linear layer but a tied head (read as a table) is integer
    for key in integer:
        value, scale, zero = tensors[key], tensors[key + "_scale"], tensors[key + "_zero_point"]
        assert zero.dtype == value.dtype and scale.dtype == np.float32
        rows = (-1, 1) if scale.ndim else ()
        step = scale.reshape(rows).astype(np.float64)
        dequantized = (value.astype(np.float64) - zero.reshape(rows)) * step
        # round to nearest leaves at most half a step; 0.505 covers the float32 rounding of the scale
        assert np.all(np.abs(dequantized - parent[key].astype(np.float64)) <= 0.505 * step), key
    for key, entry in manifest["tensors"].items():
        if entry["dtype"] in ("int8", "uint8"):
            assert all(s["node"].endswith(("MatMul_quant", "DequantizeLinear")) for s in entry["sources"]), key


def _exposed(graph_path, extra_outputs):
    """An ONNX Runtime session over the graph with `extra_outputs` [(name, elem_type)] added as graph outputs."""
    model = onnx.load(str(graph_path))
    for output_name, elem_type in extra_outputs:
        model.graph.output.append(helper.make_tensor_value_info(output_name, elem_type, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return model, ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", QUANTIZED_FIXTURES)
@pytest.mark.parametrize("graph", ["encoder_model_quantized.onnx", "decoder_model_quantized.onnx"])
def test_every_quantize_and_integer_product_equals_onnxruntime_bit_for_bit(name, graph, quantized_model):
    """Each DynamicQuantizeLinear fed ONNX Runtime's own float input, and each MatMulInteger fed ONNX Runtime's
    own quantized operands with our extracted weight (found by the manifest's node), give its outputs exactly."""
    model = quantized_model(name)
    graph_model = onnx.load(str(FIXTURES / name / graph))
    dqls = [n for n in graph_model.graph.node if n.op_type == "DynamicQuantizeLinear"]
    products = [n for n in graph_model.graph.node if n.op_type == "MatMulInteger"]
    extra = [(n.input[0], TensorProto.FLOAT) for n in dqls]
    extra += [(out, t) for n in dqls for out, t in zip(n.output, (TensorProto.UINT8, TensorProto.FLOAT,
                                                                    TensorProto.UINT8))]
    extra += [(n.output[0], TensorProto.INT32) for n in products]
    _, session = _exposed(FIXTURES / name / graph, dict(extra).items())
    input_ids, attention_mask = _sources(name)
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    if graph.startswith("decoder"):
        hidden = model.encode(input_ids, attention_mask)
        start = model.generation_config.get("decoder_start_token_id", model.config.get("decoder_start_token_id"))
        feeds = {"input_ids": np.array([[start, 5, 7, 9]] * input_ids.shape[0], dtype=np.int64),
                 "encoder_attention_mask": attention_mask, "encoder_hidden_states": hidden}
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for node in dqls:
        q, scale, zero = dynamic_quantize(values[node.input[0]])
        assert q.tobytes() == values[node.output[0]].tobytes(), node.name
        assert scale.tobytes() == values[node.output[1]].tobytes() and zero == values[node.output[2]], node.name
    weights_by_node = {source["node"]: key for key, entry in model.manifest["tensors"].items()
                       for source in entry["sources"] if not key.endswith(("_scale", "_zero_point"))}
    canonical = to_canonical(model.tensors, model.spec)
    n_weight = 0
    for node in products:
        a, a_zero = values[node.input[0]], values[node.input[2]]
        if node.name in weights_by_node:   # a linear layer: our extracted integers, HF layout [d_out, d_in]
            key = weights_by_node[node.name]
            weight = canonical[key]
            ours = matmul_integer(a, a_zero, weight.weight, weight.zero_point)
            n_weight += 1
        else:                              # an attention product: both operands quantized on the fly
            ours = integer_product(a, a_zero, values[node.input[1]], values[node.input[3]])
        assert ours.dtype == np.int32 and ours.tobytes() == values[node.output[0]].tobytes(), node.name
    assert n_weight == len({n.name for n in products if n.name in weights_by_node}) > 0
    record_worst(name, f"integer products compared ({graph[:7]})", len(products))


def _layouts(name):
    return [layout for layout, graph in (("split", "decoder_model_quantized.onnx"),
                                         ("merged", "decoder_model_merged_quantized.onnx"))
            if (FIXTURES / name / graph).exists()]


@pytest.mark.parametrize("name", QUANTIZED_FIXTURES)
def test_every_step_against_onnxruntime_int8_by_the_verdict_rule(name, quantized_model):
    """Step by step against ONNX Runtime running the same quantized graphs, both decoder layouts when shipped:
    the logits, every present and every quantizer input within the verdict rule, the int8 model's float64
    evaluation the arbiter. ONNX Runtime's rounding decisions are fed to our engines (rounding.py); without that
    six of these fixtures fail, a float32 ulp having put a quantizer input on the other side of a .5 boundary."""
    model = quantized_model(name)
    input_ids, attention_mask = _sources(name)
    layouts = _layouts(name)
    comparison = compare(model, str(FIXTURES / name), input_ids, attention_mask, N_STEPS, layouts)
    assert len(comparison.steps) == N_STEPS * len(layouts)
    n_quantizers = len(onnx.load(str(FIXTURES / name / "encoder_model_quantized.onnx")).graph.node)
    assert 0 < len(comparison.encoder_quantizers) <= n_quantizers
    assert all(report.quantizers for report in comparison.steps)
    outputs = [comparison.encoder] + [j for report in comparison.steps for j in report.outputs]
    record_worst(name, "int8 outputs: least margin", min(j.margin for j in outputs), worst=min)
    record_worst(name, "int8 quantizer inputs: least margin",
                 min(j.margin for _, _, j in comparison.quantizer_judgements()), worst=min)
    record_worst(name, "int8 roundings followed",
                 comparison.encoder_followed + sum(r.followed for r in comparison.steps))
    assert comparison.ok, comparison.worst()
    for report in comparison.steps:
        assert "differ" not in report.our_tokens, report


ALTERED_INT8 = {  # fixture, alteration, the module scope the first failing quantizer input must be in
    "the weight scale of one encoder linear x 1.01 (per channel)": (
        "bart-tiny-int8-channel", lambda d: alter.scale_weight(
            d / "encoder_model_quantized.onnx", "/layers.0/fc2/MatMul_quant_scales_mul", 1.01),
        "/layers.0/final_layer_norm/"),  # fc2's output reaches the next quantizer through the residual and norm
    "epsilon 1e-5 -> 1e-3 in one layer of decoder_with_past_model_quantized.onnx": (
        "marian-opus-int8-tensor", lambda d: alter.set_epsilon(
            d / "decoder_with_past_model_quantized.onnx", "/model/decoder/layers.3/final_layer_norm/LayerNormalization",
            1e-3), "/model/decoder/layers.3/final_layer_norm/"),
    "an attention scale x 1.02 in the merged decoder's with-past branch": (
        "marian-opus-int8-tensor", lambda d: alter.scale_constant_operand(
            d / "decoder_model_merged_quantized.onnx", "/model/decoder/layers.1/self_attn/Mul", 1.02,
            branch="with_past"), "/model/decoder/layers.1/self_attn/"),
    "T5 RMS-norm epsilon 1e-6 -> 1e-3 in one layer of decoder_with_past_model_quantized.onnx": (
        "t5-v1-int8-channel", lambda d: alter.scale_constant_operand(
            d / "decoder_with_past_model_quantized.onnx", "/decoder/block.1/layer.2/layer_norm/Add", 1000),
        "/decoder/block.1/layer.2/layer_norm/"),
}


@pytest.mark.parametrize("what", ALTERED_INT8)
def test_every_altered_int8_export_fails_at_the_quantizer_it_alters(what, quantized_model, fixture_copy):
    """The clean model against an altered copy of its quantized graphs: the verdict fails, and the first quantizer
    input (in execution order) outside the rule lies in the altered module: ONNX Runtime's rounding decisions are
    only ever taken from inputs that are right to rounding."""
    name, change, scope = ALTERED_INT8[what]
    target = fixture_copy(name)
    change(target)
    input_ids, attention_mask = _sources(name)
    comparison = compare(quantized_model(name), str(target), input_ids, attention_mask, 6, _layouts(name))
    assert not comparison.ok
    layout, step, first = next(item for item in comparison.quantizer_judgements() if not item[2].ok)
    assert scope in first.name, (layout, step, first)
    record_worst(name, f"altered int8, first failing quantizer dev / threshold: {what[:30]}",
                 first.deviation / first.threshold)


def test_verify_names_the_first_quantizer_input_outside_the_rule(fixture_copy, capsys, tmp_path):
    """The command line on a clean int8 model against an altered export: exit 1, one localization line naming the
    altered norm's output, the same in --report."""
    name = "marian-opus-int8-tensor"
    target = fixture_copy(name)
    alter.set_epsilon(target / "decoder_with_past_model_quantized.onnx",
                      "/model/decoder/layers.3/final_layer_norm/LayerNormalization", 1e-3)
    report = tmp_path / "report.md"
    assert main(["verify", str(FIXTURES / name), "--onnx", str(target), "--steps", "3", "--layout", "split",
                 "--report", str(report)]) == 1
    out = capsys.readouterr().out
    (line,) = [l for l in out.splitlines() if "diverges" in l]
    assert line.startswith("/model/decoder/layers.3/final_layer_norm/LayerNormalization_output_0 (split, step 1)")
    assert line in report.read_text()
    assert main(["verify", str(FIXTURES / name), "--onnx", str(target), "--steps", "3", "--layout", "split",
                 "--json"]) == 1
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    first = result["first_divergence"]
    assert (first["step"], first["ok"]) == (1, False) and "layers.3/final_layer_norm" in first["name"]
    steps = result["results"]
    assert [s["quantizers"]["failing"] > 0 for s in steps] == [False, True, True]
    assert all(s["quantizers"]["judged"] > 0 for s in steps) and result["encoder_quantizers"]["failing"] == 0
    assert main(["verify", str(FIXTURES / name), "--steps", "2", "--localize"]) == 0
    assert "none: all" in capsys.readouterr().out


def test_onnxruntime_integers_that_are_not_its_quantizers_fail():
    """A decision is taken only when ONNX Runtime's integers are DynamicQuantizeLinear of its own input: one integer
    moved by one step (not a rounding flip of that input) fails, the untouched quantizer passes."""
    rng = np.random.default_rng(0)
    x_exact = rng.normal(0, 1, (3, 5, 8))
    x_ours = (x_exact.astype(np.float32)).astype(np.float32)
    q, scale, zero = dynamic_quantize(x_ours)
    moved = q.copy()
    moved[0, 0, 0] += 1 if moved[0, 0, 0] < 255 else -1
    for integers, ok in ((q, True), (moved, False)):
        quantizers = [OrtQuantizer("x", x_ours, integers, scale, zero)]
        followers = Follower(quantizers), Follower(quantizers)
        with quant.following(followers[0]):
            dynamic_quantize(x_ours)
        with quant.following(followers[1]):
            taken, _, _ = dynamic_quantize(x_exact)
        assert taken.tobytes() == integers.tobytes()
        (judgement,) = judge_quantizers(quantizers, followers[1], followers[0], 50.0)
        assert judgement.ok == ok, judgement


@pytest.mark.parametrize("range_in_numpy", [False, True])
def test_dynamic_quantize_equals_onnxruntime_on_both_range_paths(range_in_numpy, monkeypatch):
    """DynamicQuantizeLinear with the range from numba's loop and from numpy's min/max (large activations), against
    ONNX Runtime's node run live: ranges on both sides of 0, one-signed, all zero, values on .5 boundaries."""
    monkeypatch.setattr(quant, "NUMPY_RANGE_MIN", 0 if range_in_numpy else 1 << 62)
    graph = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zero"])], "dql",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(n, t, None) for n, t in
                               (("q", TensorProto.UINT8), ("scale", TensorProto.FLOAT), ("zero", TensorProto.UINT8))])
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
                                   .SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    cases = [rng.standard_normal((3, 700)), rng.standard_normal((32, 2048)) * 7 + 2, rng.random(513),
             -rng.random((2, 64)), np.zeros((4, 16)), np.arange(-255, 256) / 2.0]
    cases += [rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3) + rng.uniform(-2, 2) for n in range(1, 2000, 37)]
    for x in (c.astype(np.float32) for c in cases):
        q, scale, zero = dynamic_quantize(x)
        theirs = session.run(None, {"x": x})
        assert q.tobytes() == theirs[0].tobytes() and scale.tobytes() == theirs[1].tobytes() and zero == theirs[2]


@pytest.mark.parametrize("instruction", ["portable"] + (["vnni"] if quant.INT8_DOT == "vnni" else []))
@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("weight_type", [np.int8, np.uint8])
@pytest.mark.parametrize("n_rows, d_in, d_out", [(1, 300, 600), (3, 300, 590), (7, 301, 600), (8, 302, 590),
                                                  (12, 303, 600), (17, 300, 590), (600, 300, 600)])
def test_the_integer_kernel_equals_exact_integer_arithmetic(weight_type, n_rows, d_in, d_out, threaded, instruction,
                                                            monkeypatch):
    """Serial and threaded kernels, both dot-product instructions this CPU has (vpdpbusd and the portable code),
    every row-blocking remainder (passes of 8, 4, 2, 1 rows), an even and an odd number of output blocks (passes
    over two blocks, and one), a last block of 8 or 14 of 16 outputs, inputs padded to a multiple of 4, zero points
    per tensor and per row, extreme values: against int64 numpy."""
    monkeypatch.setattr(quant, "INT8_DOT", instruction)
    monkeypatch.setattr(kernels, "SHARE_CHUNK_BYTES", 1 if threaded else 1 << 62)
    monkeypatch.setattr(kernels, "THREADS_ASKED", 2)  # threads shared out even on a busy machine
    rng = np.random.default_rng(n_rows)
    info = np.iinfo(weight_type)
    weight = rng.integers(info.min, int(info.max) + 1, (d_out, d_in)).astype(weight_type)
    weight[0] = info.max
    weight[1] = info.min
    a = rng.integers(0, 256, (n_rows, d_in)).astype(np.uint8)
    a[0] = 255
    for zero in (weight_type(0), weight_type(7) if weight_type == np.uint8 else weight_type(-3),
                 rng.integers(0, 100, d_out).astype(weight_type)):
        got = matmul_integer(a, np.uint8(200), weight, zero)
        exact = (a.astype(np.int64) - 200) @ (weight.astype(np.int64) - np.asarray(zero, np.int64).reshape(-1, 1)).T
        assert got.dtype == np.int32 and np.array_equal(got, exact)


@pytest.mark.parametrize("instruction", ["portable"] + (["vnni"] if quant.INT8_DOT == "vnni" else []))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_quantized_linear_is_the_graphs_cast_mul_and_add_bit_for_bit(dtype, instruction, monkeypatch):
    """QuantizedWeight.matmul, whose kernel writes the dequantized outputs, against the graph's ops in numpy:
    DynamicQuantizeLinear, MatMulInteger, Cast, Mul by x_scale * W_scale, Add of the bias; per-tensor and
    per-channel scales, with and without a bias, a decode step's rows and an encoder's."""
    monkeypatch.setattr(quant, "INT8_DOT", instruction)
    rng = np.random.default_rng(11)
    weight = rng.integers(-128, 128, (70, 52)).astype(np.int8)
    for scale in (np.float32(0.003), rng.uniform(1e-3, 1e-2, 70).astype(np.float32)):
        zero = np.zeros(np.shape(scale), dtype=np.int8)
        linear = quant.QuantizedWeight(weight, np.asarray(scale), zero).astype(dtype)
        for n_rows in (1, 19):
            x = rng.standard_normal((n_rows, 52)).astype(dtype)
            for bias in (None, rng.standard_normal(70).astype(dtype)):
                x_q, x_scale, x_zero = dynamic_quantize(x)
                graph = matmul_integer(x_q, x_zero, weight, np.int8(0)).astype(dtype) * (x_scale * linear.scales)
                graph = graph if bias is None else graph + bias
                got = linear.matmul(x, bias)
                assert got.dtype == dtype and got.tobytes() == graph.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_products_equal_exact_integers_and_the_graphs_cast_and_mul(dtype):
    """integer_product over broadcast leading dims against int64 numpy, and with a multiplier: that product Cast to
    the multiplier's dtype and multiplied, bit for bit (the graph's Cast and Mul after MatMulInteger)."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (2, 3, 5, 7)).astype(np.uint8)
    b = rng.integers(0, 256, (1, 3, 7, 4)).astype(np.uint8)
    exact = (a.astype(np.int64) - 9) @ (b.astype(np.int64) - 250)
    integers = integer_product(a, np.uint8(9), b, np.uint8(250))
    assert integers.dtype == np.int32 and np.array_equal(integers, exact)
    multiplier = dtype(rng.uniform(1e-5, 1e-3))
    scaled = integer_product(a, np.uint8(9), b, np.uint8(250), multiplier)
    assert scaled.dtype == dtype and scaled.tobytes() == (exact.astype(dtype) * multiplier).tobytes()


def test_the_quantized_demo_translates_as_onnxruntime_int8_does():
    """weights/numbers-en-de-int8 on held-out numbers: exact German, and the same greedy ids as ONNX Runtime's loop
    over the same quantized graphs (the full 1200 are in the README; 60 here keep the suite short)."""
    import csv

    from minitransformer.generate import resolve_settings
    from minitransformer.reference import OnnxReference, reference_generate
    from minitransformer.tokenizer import Tokenizer
    from minitransformer.translate import translate_texts
    demo = FIXTURES.parent.parent / "weights" / "numbers-en-de-int8"
    with open(demo.parent / "numbers-en-de" / "heldout.tsv", encoding="utf-8") as f:
        heldout = list(csv.DictReader(f, delimiter="\t"))[::20]
    model, tokenizer = mt.load(str(demo)), Tokenizer.from_dir(demo)
    assert model.quantized and model.integer_attention
    translations, outputs = translate_texts(model, tokenizer, [r["english"] for r in heldout], batch_size=60,
                                            num_beams=1)
    assert sum(t == r["german"] for t, r in zip(translations, heldout)) >= 0.99 * len(heldout)
    source_ids = [[int(t) for t in r["source_ids"].split()] for r in heldout]
    width = max(map(len, source_ids))
    input_ids = np.array([ids + [model.spec.pad_token_id] * (width - len(ids)) for ids in source_ids])
    attention_mask = np.array([[1] * len(ids) + [0] * (width - len(ids)) for ids in source_ids])
    settings = resolve_settings(model, {"num_beams": 1})
    theirs = reference_generate(OnnxReference(str(demo), quantized=True), settings, input_ids, attention_mask)
    ours = model.generate(input_ids, attention_mask, num_beams=1)
    np.testing.assert_array_equal(ours, theirs)


def test_quantize_dynamic_on_a_tied_head_reads_the_dequantized_embedding(tmp_path):
    """quantize_dynamic leaves a tied head as a float MatMul over DequantizeLinear(Transpose(the uint8 embedding)):
    lm_head.weight is those dequantized float32 values, and the model verifies against ONNX Runtime by the rule."""
    from onnxruntime.quantization import quantize_dynamic
    source = FIXTURES / "marian-opus"
    for graph in ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"):
        quantize_dynamic(source / graph, tmp_path / graph.replace(".onnx", "_quantized.onnx"))
    for name in ("config.json", "generation_config.json"):
        shutil.copyfile(source / name, tmp_path / name)
    config, _, tensors, manifest = extract(str(tmp_path))
    table = "model.decoder.embed_tokens.weight"
    head, integers = tensors["lm_head.weight"], tensors[table]
    assert head.dtype == np.float32 and integers.dtype == np.uint8
    dequantized = (integers.astype(np.float32) - tensors[table + "_zero_point"].astype(np.float32)) \
        * tensors[table + "_scale"]
    assert head.tobytes() == dequantized.tobytes()
    assert {s["transform"] for s in manifest["tensors"]["lm_head.weight"]["sources"]} == {"dequantize"}
    model = mt.load(str(tmp_path))
    input_ids, attention_mask = _sources("marian-opus-int8-tensor")
    comparison = compare(model, str(tmp_path), input_ids, attention_mask, 8, ("split",))
    for report in comparison.steps:
        assert "differ" not in report.our_tokens, report
    quantize_dynamic(source / "decoder_model_merged.onnx", tmp_path / "decoder_model_merged_quantized.onnx")
    with pytest.raises(ModelError, match="differs between .*leave decoder_model_merged_quantized.onnx out"):
        mt.load(str(tmp_path))



def test_the_attention_product_kernel_equals_exact_integer_arithmetic():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 3, 5, 64)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 3, 64, 7)).astype(np.uint8)
    a[0, 0, 0], b[0, 0, :, 0] = 255, 255
    got = integer_product(a, np.uint8(9), b, np.uint8(250))
    exact = (a.astype(np.int64) - 9) @ (b.astype(np.int64) - 250)
    assert got.dtype == np.int32 and np.array_equal(got, exact)
