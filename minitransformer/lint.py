"""The static check: each graph's own constants against what config.json implies (issue 9, item 3).

`lint(onnx_dir, spec_or_config)` reads every graph file present (the encoder, `decoder_model`,
`decoder_with_past_model`, both `If` branches of `decoder_model_merged`, fp32 and `*_quantized`) with the onnx
package only, no ONNX Runtime, and checks what optimum's node-name scopes let it find:

- epsilon: in each norm scope (`.../final_layer_norm`, T5 `.../layer.2/layer_norm`), a node's `epsilon`
  attribute, or the constant added to a ReduceMean (T5's RMS norm, a decomposed LayerNorm) -> `norm_eps`;
- attention scale: in each attention scope (the one holding a Softmax), the product of the constants multiplying
  q and kᵀ on their way into the scores MatMul (transformers 4.57 scales each by sqrt(scale); T5 neither)
  -> `scale_for_attention()`;
- activation: in each feed-forward's activation scope (`.../activation_fn`, T5 `.../DenseReluDense`), the op
  pattern, and T5's gate Mul -> `activation`, `gated_ffn`;
- position offset: the integer constants added to the positions that index the position table (BART, mBART:
  + 2; Marian: a Range from 0; M2M100: + padding_idx) -> `position_offset`, M2M100 `pad_token_id`; M2M100's
  `Equal(ids, padding_idx)` and its sinusoid table constant (`ops.padded_sinusoids`) too;
- embedding scale: the constant multiplying the token embedding -> `embed_scale`.

Each float constant is compared with the exact value to float32 rounding: it was rounded to float32 once when
exported (a scale split into two constants: once each), so it may differ by `roundings x 2^-24` relative; the
check allows 10 times that. A changed constant (epsilon 1e-3 for 1e-5, a scale x 1.02) is far outside.

A Finding's `module` is the Hugging Face module its node belongs to; `boundary` is the module boundary whose
output it changes first, as `observe.py` (and the localization) name them: the norm or attention itself, the
feed-forward's output (`...layers.3.fc2`, T5 `...DenseReluDense`) for an activation, the embedding
(`...embed_tokens`) for positions.
"""
import math
import os
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ModelError
from .extract import DECODER_FILES, ENCODER_FILE, graph_file_name, load_graph
from .families import encoder_root, spec_from_config
from .onnxfile import ParsedInitializer
from .ops import padded_sinusoids
from .spec import Spec

ROUNDING = 2.0 ** -24  # float32 unit roundoff
MARGIN = 10            # the tolerance is MARGIN x the rounding the exporter's float32 constants carry
BRANCHES = {"then_branch": "with_past", "else_branch": "no_past"}  # optimum's If on use_cache_branch
_LAYER_SCOPE = re.compile(r"/(layers|block)\.\d+/")
_FEED_FORWARD = re.compile(r".*?/(activation_fn|DenseReluDense)(?=/|$)")  # an activation's scope, T5: the whole ffn

# ops that compute an activation, and the pattern each activation's scope holds: (activation ops, other ops needed)
ACTIVATION_OPS = {"Sigmoid", "Erf", "Tanh", "Relu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Softplus", "Elu",
                  "LeakyRelu", "HardSigmoid", "HardSwish", "Mish", "Selu", "Celu", "PRelu", "ThresholdedRelu"}
PATTERNS = {  # as the exporter writes HF's ACT2FN modules
    "swish": ({"Sigmoid"}, {"Mul"}),           # x * sigmoid(x)
    "gelu": ({"Erf"}, set()),                  # 0.5 x (1 + erf(x / sqrt 2))
    "gelu_new": ({"Tanh"}, {"Pow"}),           # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    "relu": ({"Relu"}, set()),
}
PATTERNS["silu"] = PATTERNS["swish"]


def where(file, branch=None):  # ("decoder_model_merged.onnx", "with_past") -> "decoder_model_merged.onnx (with-past branch)"
    return file + (f" ({branch.replace('_', '-')} branch)" if branch else "")


@dataclass(frozen=True)
class Finding:
    """One constant (or op pattern) that is not what config.json implies."""
    file: str          # graph file name, "decoder_with_past_model.onnx"
    branch: str | None  # the merged decoder's If branch: "with_past" or "no_past"; None elsewhere
    node: str          # ONNX node name, "/model/decoder/layers.3/final_layer_norm/LayerNormalization"
    module: str        # HF module the node belongs to, "model.decoder.layers.3.final_layer_norm"
    boundary: str      # the module boundary whose output it changes first (observe.py's names)
    what: str          # "epsilon", "attention scale", "activation", "position offset", ...
    found: object
    expected: object

    @property
    def where(self):  # "decoder_model_merged.onnx (with-past branch)"
        return where(self.file, self.branch)

    @property
    def scope(self):  # "/model/decoder/layers.3/final_layer_norm"
        return self.node.rsplit("/", 1)[0]

    @property
    def message(self):
        if not self.node:  # a graph lint cannot read
            return f"{self.where}: {self.what}"
        return f"{self.where}: {self.scope} has {self.what} {_show(self.found)}, config.json implies " \
               f"{_show(self.expected)}"

    def to_json(self):
        def plain(value):  # JSON has no infinities or NaN
            return _show(value) if isinstance(value, float) and not math.isfinite(value) else value
        return {"file": self.file, "branch": self.branch, "node": self.node, "module": self.module,
                "boundary": self.boundary, "what": self.what, "found": plain(self.found),
                "expected": plain(self.expected), "message": self.message}


@dataclass
class Report:
    findings: list     # [Finding]
    files: list        # graph file names read
    checked: Counter   # (file, branch, what) -> how many constants were checked


def _show(value):
    return f"{value:.7g}" if isinstance(value, float) else str(value)


def agrees(found, exact, roundings=1):
    """A float32 constant that is `exact` rounded to float32 `roundings` times (products of rounded constants add
    their roundings), within MARGIN times that rounding."""
    return abs(found - exact) <= MARGIN * roundings * ROUNDING * abs(exact)


def lint(onnx_dir, spec_or_config, quantized=None):
    """Every finding in the graph files of `onnx_dir`, in file order (see the module docstring)."""
    return lint_report(onnx_dir, spec_or_config, quantized).findings


def lint_files(onnx_dir, quantized=None):
    """The graph files present, fp32 then quantized (None: both kinds), in optimum's order: encoder, decoder,
    with past, merged."""
    if not os.path.isdir(onnx_dir):
        raise ModelError(f"{onnx_dir}: not a directory")
    kinds = (False, True) if quantized is None else (quantized,)
    names = [graph_file_name(f, kind) for kind in kinds for f in (ENCODER_FILE,) + DECODER_FILES]
    present = [f for f in names if os.path.exists(os.path.join(onnx_dir, f))]
    if not present:
        raise ModelError(f"{onnx_dir}: no ONNX graph files (expected {', '.join(names[:4])})")
    return present


def lint_report(onnx_dir, spec_or_config, quantized=None):  # -> Report: the findings and what was checked
    spec = spec_or_config if isinstance(spec_or_config, Spec) else spec_from_config(spec_or_config)
    files = lint_files(onnx_dir, quantized)
    findings, checked = [], Counter()
    for file_name in files:
        model, outer = load_graph(os.path.join(onnx_dir, file_name))  # outer: the memory-mapped initializers
        root = encoder_root(spec) if file_name.startswith("encoder") else ""
        branches = [(BRANCHES[a.name], a.g) for n in model.graph.node if n.op_type == "If" for a in n.attribute
                    if a.type == onnx.AttributeProto.GRAPH and a.name in BRANCHES]
        for branch, graph in branches or [(None, model.graph)]:
            graph_lint = GraphLint(graph, outer, spec, file_name, branch, root)
            findings += graph_lint.run()
            checked.update({(file_name, branch, what): n for what, n in graph_lint.checked.items()})
    return Report(findings, files, checked)


def _scope(node_name):  # "/model/decoder/layers.3/final_layer_norm/LayerNormalization" -> ".../final_layer_norm"
    return node_name.rsplit("/", 1)[0] if node_name.startswith("/") else ""


class GraphLint:
    """The checks over one graph (or one If branch, which sees the outer graph's initializers)."""

    def __init__(self, graph, outer_initializers, spec, file_name, branch, root):
        self.graph, self.spec, self.file, self.branch, self.root = graph, spec, file_name, branch, root
        self.initializers = {**outer_initializers, **{init.name: ParsedInitializer(init, "") for init in
                                                      graph.initializer}}  # name -> initializer with to_array()
        self.producers = {output: node for node in graph.node for output in node.output}
        self.consumers = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.by_scope = {}
        for node in graph.node:
            self.by_scope.setdefault(_scope(node.name), []).append(node)
        self.findings, self.checked = [], Counter()

    def run(self):
        if not any(_LAYER_SCOPE.search(node.name) for node in self.graph.node):
            self.findings.append(Finding(self.file, self.branch, "", "", "", "its node names carry no module scopes "
                                         "(not an optimum export?): its constants are not checked", None, None))
            return self.findings
        feed_forwards = set()
        for scope, nodes in self.by_scope.items():  # scopes in the order the graph first uses them
            last = scope.rsplit("/", 1)[-1]
            feed_forward = _FEED_FORWARD.match(scope)
            if feed_forward and feed_forward.group(0) not in feed_forwards:
                feed_forwards.add(feed_forward.group(0))
                self._activation(feed_forward.group(0))
            if "norm" in last:
                self._epsilon(scope, nodes)
            if any(n.op_type == "Softmax" for n in nodes):
                self._attention_scale(scope, nodes)
            if last == "embed_positions":
                self._positions(scope, nodes)
            if last in ("embed_tokens", "shared"):
                self._embed_scale(nodes)
        return self.findings

    # --- names ---
    def module(self, scope):  # "/layers.2/self_attn" -> "model.encoder.layers.2.self_attn" in the encoder graph
        return self.root + scope.strip("/").replace("/", ".")

    def _check(self, what, node, found, expected, ok, boundary=None):
        self.checked[what] += 1
        if not ok:
            module = self.module(_scope(node.name))
            self.findings.append(Finding(self.file, self.branch, node.name, module, boundary or module, what,
                                         found, expected))

    # --- constants ---
    def constant(self, name):
        """The value of a Constant node's output or an initializer (through Identity), else None."""
        producer = self.producers.get(name)
        while producer is not None and producer.op_type == "Identity":
            name = producer.input[0]
            producer = self.producers.get(name)
        if producer is not None:
            if producer.op_type != "Constant":
                return None
            attribute = next((a for a in producer.attribute if a.name == "value"), None)
            return None if attribute is None else numpy_helper.to_array(attribute.t)
        initializer = self.initializers.get(name)
        return None if initializer is None else initializer.to_array()

    def scalar(self, name):
        """A one-element constant as a Python int or float, else None (a weight is never converted)."""
        initializer = self.initializers.get(name)
        if initializer is not None and math.prod(initializer.dims) != 1:
            return None
        value = self.constant(name)
        return None if value is None or value.size != 1 else value.reshape(()).item()

    def constant_operand(self, node):  # a binary node with one scalar constant operand -> (value, other input)
        if len(node.input) != 2:
            return None, None
        for slot in (0, 1):
            value = self.scalar(node.input[slot])
            if value is not None:
                return value, node.input[1 - slot]
        return None, None

    # --- the checks ---
    def _epsilon(self, scope, nodes):
        """The epsilon attribute of a fused norm, or the constant added to a ReduceMean (RMS or decomposed norm)."""
        expected = self.spec.norm_eps
        for node in nodes:
            attribute = next((a for a in node.attribute if a.name == "epsilon"), None)
            if attribute is not None:
                self._check("epsilon", node, attribute.f, expected, agrees(attribute.f, expected))
            elif node.op_type == "Add":
                value, other = self.constant_operand(node)
                producer = self.producers.get(other)
                if isinstance(value, float) and producer is not None and producer.op_type == "ReduceMean":
                    self._check("epsilon", node, value, expected, agrees(value, expected))

    def _scale_chain(self, name):
        """The constants multiplying (or dividing) `name` on its way back to the projection that made it:
        -> (product, [(node, constant)]). Shape ops and quantization pass the values through."""
        product, factors = 1.0, []
        while (node := self.producers.get(name)) is not None:
            if node.op_type in ("Transpose", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Identity",
                                "DynamicQuantizeLinear"):
                name = node.input[0]
                continue
            if node.op_type not in ("Mul", "Div"):
                break
            value, other = self.constant_operand(node)
            if not isinstance(value, float) or (node.op_type == "Div" and node.input[0] != other):
                break
            product *= value if node.op_type == "Mul" else 1.0 / value
            factors.append((node, value))
            name = other
        return product, factors

    def _scores_matmul(self, scope, nodes):
        """The MatMul of q and kᵀ: the nearest MatMul of this scope (not of its projections) before the Softmax."""
        softmax = next(n for n in nodes if n.op_type == "Softmax")
        frontier, seen = [softmax], set()
        while frontier:
            node = frontier.pop(0)
            for name in node.input:
                producer = self.producers.get(name)
                if producer is None or producer.name in seen or _scope(producer.name) != scope:
                    continue
                if producer.op_type in ("MatMul", "MatMulInteger"):
                    return producer
                seen.add(producer.name)
                frontier.append(producer)
        return None

    def _attention_scale(self, scope, nodes):
        matmul = self._scores_matmul(scope, nodes)
        if matmul is None:
            return
        chains = [self._scale_chain(name) for name in matmul.input[:2]]
        found = chains[0][0] * chains[1][0]
        factors = [factor for _, chain in chains for factor in chain]
        node = factors[0][0] if factors else matmul
        expected = self.spec.scale_for_attention()
        self._check("attention scale", node, found, expected, agrees(found, expected, roundings=max(1, len(factors))))

    def _activation(self, scope):
        """The op pattern of the activation (and, T5, the gate Mul) in one feed-forward."""
        inside = [n for s, nodes in self.by_scope.items() if s == scope or s.startswith(scope + "/act")
                  for n in nodes]
        activation_ops = {n.op_type for n in inside if n.op_type in ACTIVATION_OPS}
        if not activation_ops:
            return
        ops = {n.op_type for n in inside}
        name = next((a for a, (act, needed) in PATTERNS.items() if act == activation_ops and needed <= ops), None)
        found = name if name is not None else ", ".join(sorted(activation_ops | (ops & {"Mul", "Pow"})))
        expected = self.spec.activation
        node = next(n for n in inside if n.op_type in ACTIVATION_OPS)
        parent = self.module(scope).rsplit(".", 1)[0]
        boundary = self.module(scope) if scope.endswith("DenseReluDense") else parent + ".fc2"
        same = name is not None and PATTERNS[name] == PATTERNS[expected]
        act, needed = PATTERNS[expected]
        self._check("activation", node, found, f"{expected} ({', '.join(sorted(act | needed))})", same, boundary)
        if scope.endswith("DenseReluDense"):
            gate = [n for n in self.by_scope.get(scope, [])  # act(x W_gate) * (x W_up)
                    if n.op_type == "Mul" and self.constant_operand(n)[0] is None]
            self._check("gated feed-forward", gate[0] if gate else node, bool(gate), self.spec.gated_ffn,
                        bool(gate) == self.spec.gated_ffn, boundary)

    def _position_offset(self, name):
        """The integer constants added to the positions `name` holds, back to where they are counted (a Range's
        start, M2M100's cumulative sum): -> (offset, the Add node holding it or None)."""
        offset, where = 0, None
        while (node := self.producers.get(name)) is not None:
            if node.op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Identity"):
                name = node.input[0]
            elif node.op_type == "Range":
                start = self.scalar(node.input[0])
                return offset + (start if isinstance(start, int) else 0), where or node
            elif node.op_type in ("Add", "Sub"):
                value, other = self.constant_operand(node)
                if not isinstance(value, int) or (node.op_type == "Sub" and node.input[0] != other):
                    break
                offset += value if node.op_type == "Add" else -value
                where, name = where or node, other
            else:
                break
        return offset, where

    def _positions(self, scope, nodes):
        spec = self.spec
        boundary = self.module(scope).rsplit(".", 1)[0] + ".embed_tokens"
        for gather in (n for n in nodes if n.op_type == "Gather"):
            weight = self.initializers.get(gather.input[0])  # a learned or stored table: BART, mBART, Marian
            table_constant = None if weight is not None else self.constant(gather.input[0])  # M2M100's sinusoids
            shape = list(weight.dims) if weight is not None else getattr(table_constant, "shape", ())
            if len(shape) != 2:
                continue  # a Gather of a shape, not of the table
            offset, where = self._position_offset(gather.input[1])
            expected = spec.pad_token_id if spec.positions == "sinusoid_padded" else spec.position_offset
            self._check("position offset", where or gather, offset, expected, offset == expected, boundary)
            if spec.positions == "sinusoid_padded" and table_constant is not None:
                self._sinusoids(gather, table_constant, boundary)
        if spec.positions == "sinusoid_padded":
            for equal in (n for n in nodes if n.op_type == "Equal"):
                value, _ = self.constant_operand(equal)
                if isinstance(value, int):
                    self._check("padding id", equal, value, spec.pad_token_id, value == spec.pad_token_id, boundary)

    def _sinusoids(self, gather, table, boundary):  # table [n_pos, d_model]
        """M2M100's table against ops.padded_sinusoids. Both compute angle = p * exp(k * -ln(10000) / (half - 1))
        in float32: the angle carries (|k ln(10000) / (half - 1)| <= ln 10000, plus exp's and the product's
        roundings) x p x 2^-24, and sin, cos add one rounding each; MARGIN x that bounds the difference."""
        n_pos, dim = table.shape
        exact = padded_sinusoids(np.arange(n_pos)[None, :], dim, self.spec.pad_token_id)[0]
        deviation = float(np.abs(table.astype(np.float64) - exact).max())
        bound = MARGIN * ((n_pos - 1) * (math.log(10000) + 3) + 2) * ROUNDING
        self._check("position table", gather, f"sinusoids off by up to {deviation:.3g}",
                    f"the sinusoids of padding_idx {self.spec.pad_token_id} (within {bound:.2g})",
                    deviation <= bound, boundary)

    def _embed_scale(self, nodes):
        """The constant multiplying the token embedding (none: 1)."""
        for gather in (n for n in nodes if n.op_type == "Gather"):
            output = gather.output[0]
            users = self.consumers.get(output, [])
            if len(users) == 1 and users[0].op_type == "DequantizeLinear":  # a quantized embedding
                users = self.consumers.get(users[0].output[0], [])
            muls = [n for n in users if n.op_type == "Mul"]
            value = self.constant_operand(muls[0])[0] if muls else 1.0
            if not isinstance(value, float):
                continue
            expected = self.spec.embed_scale
            self._check("embedding scale", muls[0] if muls else gather, value, expected, agrees(value, expected),
                        self.module(_scope(gather.name)))
