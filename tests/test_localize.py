"""verify says where: the first module whose output fails the verdict rule, per graph file and step."""
import json

import pytest

import alter
from minitransformer.cli import main
from minitransformer.localize import localize

from conftest import FIXTURES, MODEL_FIXTURES, record_worst


def localized(capsys, model_dir, *extra):
    """-> (exit status, the --json report) of `verify --localize`."""
    status = main(["verify", str(model_dir), "--steps", "6", "--localize", "--json", *extra])
    return status, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_clean_exports_report_no_divergence_and_every_module_is_found(name, load_fixture, capsys):
    status, report = localized(capsys, FIXTURES / name)
    assert status == 0 and report["first_divergence"] is None
    model, path, torch_out = load_fixture(name)
    tokens = [torch_out["greedy_ids"][:, step:step + 1] for step in range(4)]
    divergences = localize(model, str(path), torch_out["input_ids"], torch_out["attention_mask"],
                           {"split": tokens, "merged": tokens})
    # the encoder, then per layout and step: every module our engine recorded has its boundary in the graph
    assert [d.file for d in divergences[:3]] == ["encoder_model.onnx", "decoder_model.onnx",
                                                  "decoder_with_past_model.onnx"]
    assert len(divergences) == 1 + 2 * len(tokens)
    for d in divergences:
        assert d.module is None and d.n_boundaries == d.n_modules >= 9, d


ALTERED = {  # what, fixture, the change, (file, first step, module) expected, the cause lint names beside it
    "epsilon in one layer of decoder_with_past_model.onnx only": (
        "marian-opus", lambda d: alter.set_epsilon(
            d / "decoder_with_past_model.onnx", "/model/decoder/layers.3/final_layer_norm/LayerNormalization", 1e-3),
        ("decoder_with_past_model.onnx", 1, "model.decoder.layers.3.final_layer_norm"),
        "decoder_with_past_model.onnx: /model/decoder/layers.3/final_layer_norm has epsilon 0.001, config.json "
        "implies 1e-05"),
    "scale constant in one encoder layer's self-attention": (
        "marian-opus", lambda d: alter.scale_constant_operand(d / "encoder_model.onnx", "/layers.2/self_attn/Mul", 1.02),
        ("encoder_model.onnx", None, "model.encoder.layers.2.self_attn"),
        "encoder_model.onnx: /layers.2/self_attn has attention scale 0.255, config.json implies 0.25"),
    "a residual Add's sublayer operand dropped": (
        "marian-opus", lambda d: alter.drop_operand(d / "decoder_model.onnx", "/model/decoder/layers.2/Add"),
        ("decoder_model.onnx", 0, "model.decoder.layers.2.self_attn_layer_norm"), None),
    "a constant in the merged decoder's with-past branch only": (
        "marian-opus", lambda d: alter.scale_constant_operand(
            d / "decoder_model_merged.onnx", "/model/decoder/layers.1/self_attn/Mul", 1.02, branch="with_past"),
        ("decoder_model_merged.onnx (with-past branch)", 1, "model.decoder.layers.1.self_attn"),
        "decoder_model_merged.onnx (with-past branch): /model/decoder/layers.1/self_attn has attention scale 0.255, "
        "config.json implies 0.25"),
    "T5: an RMS-norm epsilon in decoder_with_past_model.onnx, named as T5 names it": (
        "t5-v1", lambda d: alter.scale_constant_operand(
            d / "decoder_with_past_model.onnx", "/decoder/block.1/layer.2/layer_norm/Add", 1000),
        ("decoder_with_past_model.onnx", 1, "decoder.block.1.layer.2.layer_norm"),
        "decoder_with_past_model.onnx: /decoder/block.1/layer.2/layer_norm has epsilon 0.001, config.json implies "
        "1e-06"),
    "mBART (pre-norm): a residual Add's operand dropped in the no-past branch": (
        "mbart-tiny", lambda d: alter.drop_operand(
            d / "decoder_model_merged.onnx", "/model/decoder/layers.1/Add", branch="no_past"),
        ("decoder_model_merged.onnx (no-past branch)", 0, "model.decoder.layers.1.encoder_attn_layer_norm"), None),
}


@pytest.mark.parametrize("what", ALTERED)
def test_an_altered_export_is_located_to_its_module(what, fixture_copy, capsys):
    name, change, (file, step, module), cause = ALTERED[what]
    target = fixture_copy(name)
    change(target)
    status = main(["verify", str(target), "--steps", "6"])
    text = capsys.readouterr().out
    assert status == 1
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if " diverges (" in line)
    assert lines[at].startswith(f"{file}{'' if step is None else f', step {step}'}: {module} diverges (ONNX Runtime ")
    assert lines[at].split("; ")[1].startswith("everything before it agrees")
    causes = [line for line in lines if line.startswith("  cause: ")]
    assert causes == ([] if cause is None else [f"  cause: {cause}"]) and (cause is None or lines[at + 1] == causes[0])
    status, report = localized(capsys, target)
    first = report["first_divergence"]
    assert status == 1 and (first["file"], first["step"], first["module"]) == (file, step, module)
    assert first["ort_deviation"] > first["threshold"]
    record_worst(name, f"localized, deviation / threshold: {what[:28]}", first["ort_deviation"] / first["threshold"])
    others = [line for line in text.splitlines() if line.startswith(("encoder_model", "decoder_")) and file not in line]
    assert others and all(": no divergence; " in line for line in others)  # the other files are clean


def test_a_weight_altered_in_one_decoder_file_is_located_with_onnx_from_a_clean_extracted_dir(
        fixture_copy, tmp_path, capsys):
    extracted = tmp_path / "extracted"
    assert main(["extract", str(FIXTURES / "marian-opus"), str(extracted)]) == 0
    other = fixture_copy("marian-opus")
    alter.scale_weight(other / "decoder_with_past_model.onnx", "/model/decoder/layers.2/fc1/MatMul", 1.01)
    capsys.readouterr()
    status = main(["verify", str(extracted), "--onnx", str(other), "--steps", "6"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 1
    at = next(i for i, line in enumerate(lines) if " diverges (" in line)
    assert lines[at].startswith("decoder_with_past_model.onnx, step 1: model.decoder.layers.2.fc2 diverges")
    assert lines[at + 1].startswith("  cause: decoder_with_past_model.onnx: weight model.decoder.layers.2.fc1.weight ")
    assert sum("cause:" in line for line in lines) == 1  # the only weight that differs


def test_a_graph_without_module_scopes_keeps_the_step_report(fixture_copy, tmp_path, capsys):
    """Another exporter's graphs (no scoped node names) can only be compared with --onnx: our weights come from an
    extracted dir, as extraction names weights by those scopes."""
    extracted = tmp_path / "extracted"
    assert main(["extract", str(FIXTURES / "marian-opus"), str(extracted)]) == 0
    target = fixture_copy("marian-opus")
    for file_name in ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"):
        alter.strip_node_names(target / file_name)
    capsys.readouterr()
    assert main(["verify", str(extracted), "--onnx", str(target), "--steps", "3", "--localize", "--layout",
                 "split"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("carry no module scopes" in line for line in lines) == 1 and lines[-1].startswith("OK:")


def test_the_markdown_report(fixture_copy, tmp_path, capsys):
    target = fixture_copy("marian-opus")
    alter.set_epsilon(target / "decoder_with_past_model.onnx",
                      "/model/decoder/layers.3/final_layer_norm/LayerNormalization", 1e-3)
    report = tmp_path / "report.md"
    assert main(["verify", str(target), "--steps", "4", "--report", str(report)]) == 1
    text = report.read_text()
    assert text.startswith("# minitransformer verify: MISMATCH")
    assert text.count("| `decoder_with_past_model.onnx` | `") == 1 and "## The rule" in text
    assert "- decoder_with_past_model.onnx, step 1: model.decoder.layers.3.final_layer_norm diverges" in text
    assert not list(tmp_path.glob("*.partial"))
