"""The oracle: ONNX Runtime running the export's own graphs in the correct incremental loop.

Two decoder layouts, as optimum writes them:
- "split": decoder_model.onnx for the first step, then decoder_with_past_model.onnx fed the previous
  step's present.* outputs (the loop the old engine got wrong: it never fed them back);
- "merged": decoder_model_merged.onnx, `use_cache_branch` False on the first step and True after; its
  present.N.encoder.* are empty placeholders once the cache branch runs, so step 0's are kept.
Graph optimizations are off by default: ONNX Runtime's fusions move the numbers.
"""
import os
import re

import numpy as np

from .errors import ModelError
from .extract import graph_file_name

LAYOUTS = ("split", "merged")
_PRESENT = re.compile(r"present\.(\d+)\.(decoder|encoder)\.(key|value)")


def _session(path, optimize, threads, name=None):
    """A session over a graph file, or over a serialized graph (`path` bytes, `name` its file for messages)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("onnxruntime is not installed: pip install 'minitransformer[crosscheck]'") from None
    name = name or path
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime raises its own Fail/InvalidGraph types
        raise ModelError(f"{name}: ONNX Runtime cannot load it ({str(e)[:300]})") from None


class OnnxReference:
    """ONNX Runtime sessions over one export dir, created on first use."""

    def __init__(self, onnx_dir, optimize=False, threads=None, quantized=False):
        self.onnx_dir = onnx_dir
        self.optimize = optimize
        self.threads = threads
        self.quantized = quantized  # run the `*_quantized.onnx` graphs
        self._sessions = {}

    def session(self, file_name):
        """The session of an fp32 graph name, or of its `_quantized` twin when this reference is quantized."""
        if file_name not in self._sessions:
            path = os.path.join(self.onnx_dir, graph_file_name(file_name, self.quantized))
            if not os.path.exists(path):
                raise ModelError(f"{path}: file not found")
            self._sessions[file_name] = _session(self.graph(path, file_name), self.optimize, self.threads, name=path)
        return self._sessions[file_name]

    def graph(self, path, file_name):
        """What ONNX Runtime loads for a graph file: the file itself; a subclass hands over an instrumented copy
        (serialized) and keeps what it learnt about it under `file_name`."""
        return path

    def encode(self, input_ids, attention_mask):  # [n_batch, n_src] -> [n_batch, n_src, d_model]
        feeds = {"input_ids": np.asarray(input_ids, np.int64), "attention_mask": np.asarray(attention_mask, np.int64)}
        self.last_outputs = run(self.session("encoder_model.onnx"), feeds)  # every output, extra ones included
        return self.last_outputs["last_hidden_state"]

    def decoder(self, layout, encoder_hidden, attention_mask):
        if layout not in LAYOUTS:
            raise ModelError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        return OnnxDecoderLoop(self, layout, encoder_hidden, attention_mask)


def run(session, feeds):
    """Run with only the inputs the graph declares; -> {output name: array}."""
    names = {i.name for i in session.get_inputs()}
    missing = names - set(feeds)
    if missing:
        raise ModelError(f"the ONNX graph wants input(s) {', '.join(sorted(missing))} that the loop cannot provide")
    outputs = session.run(None, {name: value for name, value in feeds.items() if name in names})
    return {o.name: value for o, value in zip(session.get_outputs(), outputs)}


class OnnxDecoderLoop:
    """One source batch decoded step by step; `step` returns logits and the present.* arrays."""

    def __init__(self, reference, layout, encoder_hidden, attention_mask):
        self.reference = reference
        self.layout = layout
        self.encoder_hidden = np.asarray(encoder_hidden, np.float32)
        self.encoder_attention_mask = np.asarray(attention_mask, np.int64)
        self.past = None  # {"past_key_values.N.decoder.key": array, ...} after the first step

    def _empty_past(self):
        """Placeholders for the merged graph's first step (the branch that ignores them)."""
        session = self.reference.session("decoder_model_merged.onnx")
        n_batch, n_src = self.encoder_attention_mask.shape
        feeds = {}
        for graph_input in session.get_inputs():
            if graph_input.name.startswith("past_key_values."):
                _, n_head, _, d_head = graph_input.shape
                length = n_src if ".encoder." in graph_input.name else 0
                feeds[graph_input.name] = np.zeros((n_batch, n_head, length, d_head), np.float32)
        return feeds

    def step(self, input_ids):
        # input_ids [n_batch, n_tgt] -> logits [n_batch, n_tgt, n_vocab], {present name: array}
        feeds = {"input_ids": np.asarray(input_ids, np.int64), "encoder_attention_mask": self.encoder_attention_mask,
                 "encoder_hidden_states": self.encoder_hidden}
        first = self.past is None
        if self.layout == "split":
            file_name = "decoder_model.onnx" if first else "decoder_with_past_model.onnx"
        else:
            file_name = "decoder_model_merged.onnx"
            feeds["use_cache_branch"] = np.array([not first])
            feeds.update(self._empty_past() if first else self.past)
        if not first:
            feeds.update(self.past)
        outputs = self.last_outputs = run(self.reference.session(file_name), feeds)
        presents = {name: value for name, value in outputs.items() if _PRESENT.fullmatch(name)}
        if not first:  # the cross-attention K/V of the first step stay; later ones are absent or placeholders
            presents.update({name.replace("past_key_values", "present"): value
                             for name, value in self.past.items() if ".encoder." in name})
        self.past = {name.replace("present", "past_key_values"): value for name, value in presents.items()}
        return outputs["logits"], presents

    def reorder(self, row_index):
        """Beam search: row i continues the hypothesis of row row_index[i]."""
        self.past = {name: value[row_index] for name, value in self.past.items()}


class OnnxStepper:
    """The ONNX Runtime loop as `generate.search` sees an engine."""

    def __init__(self, loop):
        self.loop = loop

    def step(self, input_ids):  # [n_rows, 1] -> logits [n_rows, n_vocab]
        return self.loop.step(input_ids)[0][:, -1]

    def reorder(self, row_index):
        self.loop.reorder(row_index)


def reference_generate(reference, settings, input_ids, attention_mask, layout="split"):
    """generate() with every number from ONNX Runtime: the same search, the export's own graphs."""
    from .generate import search
    encoder_hidden = reference.encode(input_ids, attention_mask)

    def start(rows_per_source):
        return OnnxStepper(reference.decoder(layout, np.repeat(encoder_hidden, rows_per_source, axis=0),
                                             np.repeat(attention_mask, rows_per_source, axis=0)))

    return search(start, encoder_hidden.shape[0], settings).sequences
