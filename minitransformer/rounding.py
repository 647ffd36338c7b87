"""Verifying an int8 export: every engine takes ONNX Runtime's rounding decisions, and every decision is judged.

A quantized graph rounds its activations: DynamicQuantizeLinear maps x to round(x / scale) + zero point. A float32
engine that computes x correctly still differs from float64 by rounding, and where x / scale lies within that
rounding of a .5 boundary, the two round to neighbouring integers: one element moves by a whole quantization step
and the layers after carry it (logits move by 0.03-0.3 on the fixtures). Which way such an element goes is decided
by float32 noise, not by the export being right or wrong, so comparing the outputs alone cannot tell the two apart.

So `verify` on an int8 export decides rounding the way it decides tokens: ONNX Runtime's choice is fed to all
three engines, and the choice itself is judged.
- ONNX Runtime runs copies of the quantized graphs in which every DynamicQuantizeLinear hands out its float input
  and its integers (`expose_quantizers`; in the merged decoder through the `If` node).
- Our float32 engine and its float64 evaluation quantize under `quant.following(Follower(...))`: each of their
  quantizations is matched to ONNX Runtime's quantizer of the same size whose input is nearest to theirs, and takes
  its integers and zero point (keeping its own scale, a float).
- `judge_quantizers` then checks every decision taken: ONNX Runtime's integers must be exactly what
  DynamicQuantizeLinear makes of ONNX Runtime's input (our bit-exact emulation, `quant.dynamic_quantize`), and that
  input must pass the verdict rule against the float64 evaluation's input to the same quantizer, with our float32
  engine's as the yardstick. A decision can only be taken from a float input that is right to rounding; a wrong
  export fails at the first quantizer whose input it computes wrong, which also localizes the fault.
"""
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from .quant import dynamic_quantize
from .reference import OnnxReference
from .verdict import Judgement, judge, rms

# A quantizer's input is often a dequantized product, acc * (a_scale * b_scale): every element shares the float32
# rounding of that scale: each operand's (max - min) and / 255 (2 each), their product and the final multiply, 6 in
# all. One evaluation can get that shared rounding almost exact by chance (ours did: 0.5 of one unit where ONNX
# Runtime had 6), so the rule's floor for quantizer inputs counts all six.
SCALE_ROUNDINGS = 6
BRANCH_MARK = "rounding:branch"  # which branch of the merged decoder ran: 1 with past (then_branch), 0 without
_PARTS = (("x", TensorProto.FLOAT), ("q", TensorProto.UINT8), ("scale", TensorProto.FLOAT),
          ("zero", TensorProto.UINT8))


@dataclass
class OrtQuantizer:
    """One DynamicQuantizeLinear as ONNX Runtime ran it: its float input and its outputs."""
    name: str          # the input's tensor name, e.g. /model/decoder/layers.2/final_layer_norm/..._output_0
    x: np.ndarray      # float32 [...]
    q: np.ndarray      # uint8 [...]
    scale: np.ndarray  # float32 []
    zero: np.ndarray   # uint8 []


def _hand_out(graph, nodes, prefix):
    """Identity nodes copying each node's input and outputs to `prefix{i}:{part}`; -> their value infos."""
    infos = []
    for i, node in enumerate(nodes):
        for source, (part, elem_type) in zip([node.input[0], *node.output], _PARTS):
            out = f"{prefix}{i}:{part}"
            graph.node.append(helper.make_node("Identity", [source], [out]))
            infos.append(helper.make_tensor_value_info(out, elem_type, None))
    return infos


def _empty(graph, prefix, start, stop):
    """Empty constants in the slots one branch lacks (both branches of an If must give the same outputs)."""
    infos = []
    for i in range(start, stop):
        for part, elem_type in _PARTS:
            out = f"{prefix}{i}:{part}"
            dtype = np.float32 if elem_type == TensorProto.FLOAT else np.uint8
            graph.node.append(helper.make_node("Constant", [], [out],
                                               value=onnx.numpy_helper.from_array(np.zeros(0, dtype))))
            infos.append(helper.make_tensor_value_info(out, elem_type, None))
    return infos


def expose_quantizers(path):
    """-> (serialized graph whose every DynamicQuantizeLinear hands out its input and outputs, slots): slots
    {None: [input names] of the main graph, 0 / 1: [input names] of the merged decoder's no-past / with-past
    branch}, in graph order."""
    model = onnx.load(path)
    graph = model.graph
    main = [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    slots = {None: [n.input[0] for n in main]}
    graph.output.extend(_hand_out(graph, main, "rounding:"))
    ifs = [n for n in graph.node if n.op_type == "If"]
    if ifs:
        (if_node,) = ifs
        branches = {a.name: a.g for a in if_node.attribute if a.type == onnx.AttributeProto.GRAPH}
        nodes = {name: [n for n in g.node if n.op_type == "DynamicQuantizeLinear"] for name, g in branches.items()}
        width = max(len(found) for found in nodes.values())
        for name, g in branches.items():
            infos = _hand_out(g, nodes[name], "rounding:branch:") + _empty(g, "rounding:branch:", len(nodes[name]),
                                                                           width)
            mark = np.array(int(name == "then_branch"), np.int64)
            g.node.append(helper.make_node("Constant", [], [BRANCH_MARK], value=onnx.numpy_helper.from_array(mark)))
            infos.append(helper.make_tensor_value_info(BRANCH_MARK, TensorProto.INT64, None))
            g.output.extend(infos)
        if_node.output.extend(info.name for info in infos)  # the same names and types come out of the If
        graph.output.extend(infos)
        slots[0] = [n.input[0] for n in nodes["else_branch"]]
        slots[1] = [n.input[0] for n in nodes["then_branch"]]
    return model.SerializeToString(), slots


def quantizers_run(outputs, slots):
    """[OrtQuantizer] of one run, from its outputs {name: array} and the graph's `slots`."""
    found = [OrtQuantizer(name, *(outputs[f"rounding:{i}:{part}"] for part, _ in _PARTS))
             for i, name in enumerate(slots[None])]
    if BRANCH_MARK in outputs:
        found += [OrtQuantizer(name, *(outputs[f"rounding:branch:{i}:{part}"] for part, _ in _PARTS))
                  for i, name in enumerate(slots[int(outputs[BRANCH_MARK])])]
    return found


class Follower:
    """Given to `quant.following`: each quantization our engine makes takes the integers of ONNX Runtime's
    quantizer that matches it, and is recorded for `judge_quantizers`."""

    def __init__(self, quantizers):
        self.quantizers = quantizers  # [OrtQuantizer] of the same encode or decode step
        self.calls = []               # [(index into quantizers or None, our input x)] in call order
        self.followed = 0             # elements whose integer differed from our own rounding

    def _match(self, x):  # -> the index of the same-size quantizer whose input is nearest to x, or None
        sizes = [i for i, o in enumerate(self.quantizers) if o.x.size == x.size]
        return min(sizes, key=lambda i: rms(self.quantizers[i].x.reshape(x.shape) - x), default=None)

    def quantize(self, x, q, scale, zero):  # our input and our own result -> the result to use
        index = self._match(x)
        self.calls.append((index, np.array(x)))
        if index is None:
            return q, scale, zero
        theirs = self.quantizers[index]
        their_q = theirs.q.reshape(x.shape)
        ours_centred = q.astype(np.int16) - np.int16(zero)
        self.followed += int(np.count_nonzero(ours_centred != their_q.astype(np.int16) - np.int16(theirs.zero)))
        return their_q, scale, np.uint8(theirs.zero)


def judge_quantizers(quantizers, exact, ours, factor):
    """-> [Judgement] of every ONNX Runtime quantizer the float64 evaluation (`exact`, a Follower) took integers
    from, in its call order: ONNX Runtime's input against float64's, with ours (`ours`, a Follower) as the
    yardstick; a quantizer whose integers are not DynamicQuantizeLinear of its own input fails outright."""
    our_inputs = {}
    for index, x in ours.calls:
        our_inputs.setdefault(index, x)
    judged, judgements = set(), []
    for index, x_exact in exact.calls:
        if index is None or index in judged:
            continue
        judged.add(index)
        theirs = quantizers[index]
        name = f"quantizer input {theirs.name}"
        q, scale, zero = dynamic_quantize(theirs.x)
        if q.tobytes() != theirs.q.tobytes() or scale != theirs.scale or zero != theirs.zero:
            judgements.append(Judgement(f"{name}: ONNX Runtime's integers are not DynamicQuantizeLinear of its input",
                                        float("inf"), float("nan"), 0.0, rms(x_exact), factor, SCALE_ROUNDINGS))
            continue
        judgements.append(judge(name, theirs.x.reshape(x_exact.shape), x_exact, our_inputs.get(index, np.empty(0)),
                                factor, SCALE_ROUNDINGS))
    return judgements


class RoundingReference(OnnxReference):
    """ONNX Runtime over the quantized graphs with their quantizers exposed; `quantizers(outputs)` are those of
    the run that gave `outputs` (the last one)."""

    def __init__(self, onnx_dir, threads=None):
        super().__init__(onnx_dir, threads=threads, quantized=True)
        self.slots = {}  # {fp32 graph file name: slots of its quantized twin}

    def graph(self, path, file_name):
        serialized, self.slots[file_name] = expose_quantizers(path)
        return serialized

    def session(self, file_name):  # the graph the loop runs now: `quantizers` reads its slots
        self.last_file = file_name
        return super().session(file_name)

    def quantizers(self, outputs):
        return quantizers_run(outputs, self.slots[self.last_file])
