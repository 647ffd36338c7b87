"""verify --lint: each graph's constants against config.json, statically (minitransformer/lint.py).

Clean exports give no finding, and the lint demonstrably looked: per graph file (and merged-decoder branch) it
checked as many epsilons, attention scales, activations and position offsets as the Spec says the model has.
Each deliberately altered constant is named by file, branch, module and value.
"""
import json
from collections import Counter
from pathlib import Path

import pytest

import alter
from conftest import FIXTURES, MODEL_FIXTURES
from minitransformer.cli import DEMO_MODEL, main
from minitransformer.extract import read_json
from minitransformer.families import spec_from_config
from minitransformer.lint import lint, lint_report

QUANTIZED_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if (p / "encoder_model_quantized.onnx").exists())


def config_of(path):
    return read_json(str(path / "config.json"))


def expected_checks(spec, decoder):
    """What a graph of one stack holds, by the Spec: norms, attentions, feed-forwards, one position lookup."""
    n_layer = spec.n_layer_decoder if decoder else spec.n_layer_encoder
    norms = n_layer * (3 if decoder else 2) + spec.layernorm_embedding + spec.final_layer_norm
    return {"epsilon": norms, "attention scale": n_layer * (2 if decoder else 1), "activation": n_layer,
            "position offset": 0 if spec.positions == "relative" else 1, "embedding scale": 1}


@pytest.mark.parametrize("path", [FIXTURES / name for name in MODEL_FIXTURES + QUANTIZED_FIXTURES]
                         + sorted(Path(DEMO_MODEL).parent.glob("numbers-en-de*")), ids=lambda p: p.name)
def test_a_clean_export_has_no_finding_and_every_constant_was_checked(path):
    config = config_of(path)
    spec = spec_from_config(config)
    report = lint_report(str(path), config)
    assert report.findings == []
    graphs = {(f, branch) for f, branch, _ in report.checked}
    assert len(graphs) == len(report.files) + sum(f.startswith("decoder_model_merged") for f in report.files)
    for file_name, branch in graphs:
        checked = Counter({what: n for (f, b, what), n in report.checked.items() if (f, b) == (file_name, branch)})
        wanted = expected_checks(spec, decoder=file_name.startswith("decoder"))
        assert {what: checked[what] for what in wanted} == wanted, (file_name, branch)


def only_finding(path):
    findings = lint(str(path), config_of(path))
    assert len(findings) == 1, [f.message for f in findings]
    return findings[0]


def test_an_epsilon_in_one_layer_of_decoder_with_past_only(fixture_copy, capsys):
    target = fixture_copy("marian-opus")
    alter.set_epsilon(target / "decoder_with_past_model.onnx",
                      "/model/decoder/layers.3/final_layer_norm/LayerNormalization", 1e-3)
    finding = only_finding(target)
    assert (finding.file, finding.branch, finding.module, finding.boundary, finding.what) == (
        "decoder_with_past_model.onnx", None, "model.decoder.layers.3.final_layer_norm",
        "model.decoder.layers.3.final_layer_norm", "epsilon")
    assert finding.message == ("decoder_with_past_model.onnx: /model/decoder/layers.3/final_layer_norm has epsilon "
                               "0.001, config.json implies 1e-05")
    assert main(["verify", str(target), "--lint"]) == 1
    assert capsys.readouterr().out == finding.message + "\n"


def test_a_scale_constant_in_one_encoder_self_attention(fixture_copy):
    target = fixture_copy("marian-opus")
    alter.scale_constant_operand(target / "encoder_model.onnx", "/layers.2/self_attn/Mul", 1.02)
    finding = only_finding(target)
    assert (finding.file, finding.module, finding.what) == ("encoder_model.onnx", "model.encoder.layers.2.self_attn",
                                                            "attention scale")
    assert finding.found == pytest.approx(0.25 * 1.02, rel=1e-6) and finding.expected == 0.25  # d_head 16
    assert finding.message == ("encoder_model.onnx: /layers.2/self_attn has attention scale 0.255, "
                               "config.json implies 0.25")


def test_a_constant_inside_the_merged_decoders_with_past_branch_only(fixture_copy):
    target = fixture_copy("marian-opus")
    alter.scale_constant_operand(target / "decoder_model_merged.onnx", "/model/decoder/layers.1/self_attn/Mul", 1.02,
                                 branch="with_past")
    finding = only_finding(target)
    assert (finding.file, finding.branch, finding.module) == ("decoder_model_merged.onnx", "with_past",
                                                              "model.decoder.layers.1.self_attn")
    assert finding.message == ("decoder_model_merged.onnx (with-past branch): /model/decoder/layers.1/self_attn has "
                               "attention scale 0.255, config.json implies 0.25")


def test_a_t5_rms_norm_epsilon(fixture_copy):
    target = fixture_copy("t5-v1")
    alter.scale_constant_operand(target / "decoder_with_past_model.onnx", "/decoder/block.1/layer.2/layer_norm/Add",
                                 1000)
    finding = only_finding(target)
    assert (finding.file, finding.module, finding.node) == ("decoder_with_past_model.onnx",
                                                            "decoder.block.1.layer.2.layer_norm",
                                                            "/decoder/block.1/layer.2/layer_norm/Add")
    assert finding.message == ("decoder_with_past_model.onnx: /decoder/block.1/layer.2/layer_norm has epsilon 0.001, "
                               "config.json implies 1e-06")


def test_t5_scales_no_attention_and_a_scale_there_is_named(fixture_copy):
    """T5's q·kᵀ has no Mul at all (scale 1); a Mul by 0.5 put on its query path is found."""
    import onnx
    from onnx import helper
    target = fixture_copy("t5-v1")
    path = target / "encoder_model.onnx"
    model = onnx.load(str(path))
    scores = next(n for n in model.graph.node if n.name == "/block.1/layer.0/SelfAttention/MatMul")
    scaled = "/block.1/layer.0/SelfAttention/q_scaled"
    model.graph.node.extend([
        helper.make_node("Constant", [], [scaled + "_c"], name="/block.1/layer.0/SelfAttention/Constant_q",
                         value=helper.make_tensor("c", onnx.TensorProto.FLOAT, [], [0.5])),
        helper.make_node("Mul", [scores.input[0], scaled + "_c"], [scaled],
                         name="/block.1/layer.0/SelfAttention/Mul_q")])
    scores.input[0] = scaled
    onnx.save(model, str(path))  # a node appended after its consumer: lint reads names, not order
    finding = only_finding(target)
    assert finding.message == ("encoder_model.onnx: /block.1/layer.0/SelfAttention has attention scale 0.5, "
                               "config.json implies 1")
    assert finding.module == "encoder.block.1.layer.0.SelfAttention"


@pytest.mark.parametrize("name, file_name, node, op_type, module, boundary, message", [
    ("marian-opus", "decoder_model.onnx", "/model/decoder/layers.4/activation_fn/Sigmoid", "Tanh",
     "model.decoder.layers.4.activation_fn", "model.decoder.layers.4.fc2",
     "decoder_model.onnx: /model/decoder/layers.4/activation_fn has activation Mul, Tanh, config.json implies "
     "swish (Mul, Sigmoid)"),
    ("t5-v1", "encoder_model.onnx", "/block.2/layer.1/DenseReluDense/act/Relu", "Tanh",
     "encoder.block.2.layer.1.DenseReluDense.act", "encoder.block.2.layer.1.DenseReluDense",
     "encoder_model.onnx: /block.2/layer.1/DenseReluDense/act has activation Tanh, config.json implies relu (Relu)"),
])
def test_a_changed_activation(fixture_copy, name, file_name, node, op_type, module, boundary, message):
    target = fixture_copy(name)
    alter.replace_op(target / file_name, node, op_type)
    finding = only_finding(target)
    assert (finding.file, finding.node, finding.module, finding.boundary) == (file_name, node, module, boundary)
    assert finding.message == message


@pytest.mark.parametrize("name, file_name, node, factor, message", [
    ("bart-tiny", "decoder_model.onnx", "/model/decoder/embed_positions/Add", 1.5,
     "decoder_model.onnx: /model/decoder/embed_positions has position offset 3, config.json implies 2"),
    ("m2m100-tiny", "encoder_model.onnx", "/embed_positions/Add", 2,  # positions count from padding_idx 1
     "encoder_model.onnx: /embed_positions has position offset 2, config.json implies 1"),
])
def test_a_changed_position_offset(fixture_copy, name, file_name, node, factor, message):
    target = fixture_copy(name)
    alter.scale_constant_operand(target / file_name, node, factor)
    finding = only_finding(target)
    assert finding.message == message and finding.boundary == finding.module.rsplit(".", 1)[0] + ".embed_tokens"


def test_a_graph_without_module_scopes_is_said_in_one_line(fixture_copy):
    target = fixture_copy("marian-opus")
    alter.strip_node_names(target / "decoder_with_past_model.onnx")
    assert [f.message for f in lint(str(target), config_of(target))] == [
        "decoder_with_past_model.onnx: its node names carry no module scopes (not an optimum export?): its constants "
        "are not checked"]


def test_cli_lint_clean_json_onnx_and_bad_input(fixture_copy, tmp_path, capsys):
    clean = FIXTURES / "marian-opus"
    assert main(["verify", str(clean), "--lint"]) == 0
    assert capsys.readouterr().out == "lint: no findings in 4 graph files\n"
    altered = fixture_copy("marian-opus")
    alter.scale_constant_operand(altered / "encoder_model.onnx", "/layers.2/self_attn/Mul", 1.02)
    (altered / "config.json").unlink()  # --onnx: the graphs from there, config.json from MODEL_DIR
    assert main(["verify", str(clean), "--onnx", str(altered), "--lint", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["command"], report["model"]["dir"], report["onnx_dir"], report["ok"]) == (
        "verify", str(clean), str(altered), False)
    (result,) = report["results"]
    assert (result["file"], result["module"], result["what"], result["expected"]) == (
        "encoder_model.onnx", "model.encoder.layers.2.self_attn", "attention scale", 0.25)
    assert main(["verify", str(tmp_path), "--lint"]) == 2
    assert capsys.readouterr().err.strip() == f"minitransformer: error: {tmp_path / 'config.json'}: file not found"
