"""Quantized fixtures: the committed fp32 exports shrunk to int8 the two ways users do it.

Each row of QUANTIZED quantizes every graph of one fixture export (tests/fixtures/<parent>/) into a NEW
directory tests/fixtures/<parent>-<suffix>/ that holds only `*_quantized.onnx` graphs, config.json,
generation_config.json and `quantized_from.json` (the parent and the recipe), never the fp32 graphs:
- "ortq": optimum's ORTQuantizer with AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=...),
  the recipe optimum's docs give for OPUS-MT; it quantizes every MatMul, the attention products included,
  and the Gather of every embedding table;
- "dynamic": onnxruntime.quantization.quantize_dynamic(per_channel=..., weight_type=...) with its defaults;
  it quantizes the MatMuls with a constant weight and the embedding Gathers.

Usage: python tools/make_quantized.py [--only NAME] [--demo]   (--demo also writes weights/numbers-en-de-int8)
"""
import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = ROOT / "tests" / "fixtures"
GRAPHS = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx")
COPIED = ("config.json", "generation_config.json", "source.spm", "target.spm", "vocab.json", "tokenizer_config.json",
          "special_tokens_map.json", "tokenizer.json", "input_domain.json")

# (parent fixture, suffix, tool, per_channel, weight type): every family per tensor and per channel by
# ORTQuantizer, plus quantize_dynamic's int8 and uint8 weights on a Marian with an untied head
QUANTIZED = [
    *[(parent, f"int8-{kind}", "ortq", kind == "channel", "int8")
      for parent in ("marian-opus", "bart-tiny", "mbart-tiny", "m2m100-tiny", "t5-v1", "flan-t5-tiny")
      for kind in ("tensor", "channel")],
    ("marian-untied", "int8-tensor", "ortq", False, "int8"),
    ("marian-untied", "dynamic-int8", "dynamic", False, "int8"),
    ("marian-untied", "dynamic-uint8-channel", "dynamic", True, "uint8"),
]


def quantize_graph(source_dir, file_name, out_dir, tool, per_channel, weight_type):
    """Write out_dir/<stem>_quantized.onnx from source_dir/file_name."""
    target = Path(out_dir) / file_name.replace(".onnx", "_quantized.onnx")
    if tool == "ortq":
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
        config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=per_channel)
        ORTQuantizer.from_pretrained(source_dir, file_name=file_name).quantize(save_dir=out_dir,
                                                                               quantization_config=config)
        for extra in ("ort_config.json", "config.json"):  # optimum writes these beside; the copies below win
            (Path(out_dir) / extra).unlink(missing_ok=True)
    else:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(Path(source_dir) / file_name, target, per_channel=per_channel,
                         weight_type=QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8)
    assert target.exists(), target


def quantize_export(source_dir, out_dir, tool, per_channel, weight_type):
    """Quantize every graph of one export into out_dir (staged beside it, renamed in at the end)."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        for file_name in GRAPHS:
            # quantize_dynamic leaves the merged decoder's embedding Gathers (inside its If branches) in float,
            # so that graph computes differently from the split decoders: a dir holding both cannot be one model
            if tool == "dynamic" and file_name == "decoder_model_merged.onnx":
                continue
            if (source_dir / file_name).exists():
                quantize_graph(str(source_dir), file_name, str(staging), tool, per_channel, weight_type)
        for name in COPIED:
            if (source_dir / name).exists():
                shutil.copyfile(source_dir / name, staging / name)
        recipe = {"parent": os.path.relpath(source_dir, out_dir.parent), "tool": tool, "per_channel": per_channel,
                  "weight_type": weight_type}
        if tool == "ortq":
            recipe["config"] = "AutoQuantizationConfig.avx512_vnni(is_static=False)"
        (staging / "quantized_from.json").write_text(json.dumps(recipe, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.chmod(0o755)  # mkdtemp made it owner-only
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="make only the fixture of this name (e.g. marian-opus-int8-tensor)")
    parser.add_argument("--demo", action="store_true", help="also quantize weights/numbers-en-de")
    args = parser.parse_args()
    for parent, suffix, tool, per_channel, weight_type in QUANTIZED:
        name = f"{parent}-{suffix}"
        if args.only and args.only != name:
            continue
        quantize_export(FIXTURES_DIR / parent, FIXTURES_DIR / name, tool, per_channel, weight_type)
        print(f"{name}: {tool}, per_channel={per_channel}, {weight_type}")
    if args.demo:
        quantize_export(ROOT / "weights" / "numbers-en-de", ROOT / "weights" / "numbers-en-de-int8", "ortq", False,
                        "int8")
        print("weights/numbers-en-de-int8: ortq, per tensor")


if __name__ == "__main__":
    main()
