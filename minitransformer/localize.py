"""Where an export diverges: the first module, in execution order, whose output fails the verdict rule.

Both sides record the same module boundaries (the list in `observe.py`: embedding, each attention, feed-forward
and norm, the final norm, lm_head), under the family's Hugging Face module names:
- ours, with a `Recorder` passed down the one compute path, once in float32 and once in float64;
- ONNX Runtime's, from a copy of each graph held in memory whose module-boundary values are made extra graph
  outputs. optimum names every node by its module scope (`/model/decoder/layers.3/final_layer_norm/...`;
  the encoder graph drops the `model.encoder.` prefix: `/layers.2/self_attn/...`), and a module's output is the
  value its last node hands out of the scope. In decoder_model_merged.onnx the boundaries sit inside the `If`
  branches: both branches gain the outputs, and so do the `If` node and the graph.

Each graph file is localized on its own: every decoder is fed the same encoder output (the float64 one, rounded to
float32 for the float32 engines), the tokens the verdict pass fed, and our float32 cache as its past, so a fault in
one file does not show up as a divergence in the next.
"""
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import onnx

from .extract import load_graph
from .lint import BRANCHES, where
from .observe import Recorder
from .reference import OnnxReference
from .verdict import FACTOR, judge
from .verify import cache_array



def _scope(module, encoder_file):  # "model.encoder.layers.2.self_attn" -> "/layers.2/self_attn/"
    if encoder_file:
        module = module.removeprefix("model.encoder.").removeprefix("encoder.")
    parts = []
    for part in module.split("."):  # an index stays on its list's name: layers.2, block.1, layer.0
        if part.isdigit() and parts:
            parts[-1] += "." + part
        else:
            parts.append(part)
    return "/" + "/".join(parts) + "/"


def _embedding_output(graph):
    """The token embedding after its scale and the position vectors: from the token embedding's Gather
    (`embed_tokens`, or `shared` when tied), along the Mul and Add nodes outside any layer, to the last of them."""
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.name.endswith(("embed_tokens/Gather",
                                                                                     "shared/Gather"))]
    if not gathers:
        return None
    value = gathers[0].output[0]
    while True:
        nxt = [n for n in consumers.get(value, []) if n.op_type in ("Mul", "Add")
               and not any(part in n.name for part in ("/layers.", "/block.", "layernorm_embedding", "layer_norm"))]
        if not nxt:
            return value
        value = nxt[0].output[0]


def boundary_tensors(graph, modules, encoder_file):
    """{module name: the graph's tensor holding its output} for the modules found in `graph`'s node scopes."""
    graph_outputs = {o.name for o in graph.output}
    node_order = list(graph.node)
    found = {}
    for module in modules:
        if module == "lm_head":
            if "logits" in graph_outputs:
                found[module] = "logits"
            continue
        if module.endswith(".embed_tokens"):
            value = _embedding_output(graph)
            if value is not None:
                found[module] = value
            continue
        scope = _scope(module, encoder_file)
        inside = [n for n in node_order if n.name.startswith(scope)]
        produced_inside = {o for n in inside for o in n.output}
        leaving = set()
        for node in node_order:
            if not node.name.startswith(scope):
                leaving.update(i for i in node.input if i in produced_inside)
        leaving.update(o for o in graph_outputs if o in produced_inside and not o.startswith("present"))
        for node in reversed(inside):
            out = [o for o in node.output if o in leaving]
            if out:
                found[module] = out[0]
                break
    return found


def _add_outputs(graph, tensors):  # tensors {module: tensor name} -> [output names] in the same order
    existing = {o.name for o in graph.output}
    for tensor in tensors:
        if tensor not in existing:
            graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
            existing.add(tensor)


def instrument(path, modules, encoder_file):
    """-> (serialized model with the boundaries as extra outputs, {module: output name}); a merged decoder's
    boundaries come out of its `If` node under `localize:<module>`."""
    model = onnx.load(path)
    ifs = [n for n in model.graph.node if n.op_type == "If"]
    if not ifs:
        tensors = boundary_tensors(model.graph, modules, encoder_file)
        _add_outputs(model.graph, tensors.values())
        return model.SerializeToString(), tensors
    (if_node,) = ifs
    branches = {a.name: a.g for a in if_node.attribute if a.name in BRANCHES}
    per_branch = {name: boundary_tensors(g, modules, encoder_file) for name, g in branches.items()}
    common = [m for m in modules if all(m in found for found in per_branch.values())]
    for name, g in branches.items():
        for module in common:  # branch outputs must be fresh names: an Identity hands each boundary out
            out = f"localize:{module}:{name}"
            g.node.append(onnx.helper.make_node("Identity", [per_branch[name][module]], [out]))
            g.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    tensors = {module: f"localize:{module}" for module in common}
    if_node.output.extend(tensors.values())
    _add_outputs(model.graph, tensors.values())
    return model.SerializeToString(), tensors


@dataclass
class Divergence:
    """The first module of one graph file and step whose output fails the rule (module None: none fails)."""
    file: str
    step: object                # decoder step, or None for the encoder
    module: object              # HF module name, or None when every boundary agrees
    judgement: object           # that module's Judgement (None when none fails)
    n_boundaries: int           # boundaries compared in this file and step
    n_modules: int              # module outputs our engine recorded: all of them have a boundary in the graph


def _graph_of(layout, step):  # -> (the graph file the ONNX Runtime loop runs at this step, its label in reports)
    if layout == "split":
        file_name = "decoder_model.onnx" if step == 0 else "decoder_with_past_model.onnx"
        return file_name, file_name
    return "decoder_model_merged.onnx", where("decoder_model_merged.onnx", "no_past" if step == 0 else "with_past")


def _recorder():  # module outputs only: one encode or one decode step, so each module's list holds one value
    return Recorder(probs=False)


def _first_divergence(file, step, recorders, ort_values, tensors, factor):
    ours, exact = recorders
    compared, n_modules = 0, sum(kind == "output" for kind, _ in exact.order)
    for kind, module in exact.order:
        if kind != "output" or module not in tensors:
            continue
        judgement = judge(module, ort_values[tensors[module]], exact.outputs[module][0], ours.outputs[module][0],
                          factor)
        compared += 1
        if not judgement.ok:
            return Divergence(file, step, module, judgement, compared, n_modules)
    return Divergence(file, step, None, None, compared, n_modules)


class LocalizingReference(OnnxReference):
    """ONNX Runtime over the instrumented graphs: `last_outputs` holds every output of the last run."""

    def __init__(self, onnx_dir, modules, threads=None):
        super().__init__(onnx_dir, threads=threads)
        self.modules = modules
        self.tensors = {}

    def graph(self, path, file_name):
        encoder_file = file_name == "encoder_model.onnx"
        serialized, self.tensors[file_name] = instrument(path, self.modules[encoder_file], encoder_file)
        return serialized


def has_scopes(onnx_dir):
    """Whether the decoder graph's node names carry module scopes (optimum's do; other exporters' may not)."""
    graph, _ = load_graph(os.path.join(onnx_dir, "decoder_model.onnx"))  # memory-mapped: the weights stay unread
    return any("/layers." in n.name or "/block." in n.name for n in graph.graph.node)


def localize(model, onnx_dir, input_ids, attention_mask, tokens_by_layout, factor=FACTOR, threads=None):
    """-> [Divergence] per graph file and step, in execution order; `tokens_by_layout` {layout: [tokens per step]}
    are the tokens the verdict pass fed, [n_batch, 1] each."""
    exact_model = model.astype(np.float64)
    recorders = _recorder(), _recorder()
    exact_hidden = exact_model.encode(input_ids, attention_mask, observer=recorders[1])
    model.encode(input_ids, attention_mask, observer=recorders[0])
    encoder_modules = [m for kind, m in recorders[1].order if kind == "output"]
    probe = _recorder()
    state = exact_model.start(exact_hidden, attention_mask, 1)
    exact_model.decode_step(state, next(iter(tokens_by_layout.values()))[0], observer=probe)
    decoder_modules = [m for kind, m in probe.order if kind == "output"]
    reference = LocalizingReference(onnx_dir, {True: encoder_modules, False: decoder_modules}, threads)
    reference.encode(input_ids, attention_mask)
    encoder_outputs = reference.last_outputs
    found = [_first_divergence("encoder_model.onnx", None, recorders, encoder_outputs,
                               reference.tensors["encoder_model.onnx"], factor)]
    hidden32 = exact_hidden.astype(np.float32)  # every decoder file fed the same encoder output
    for layout, steps in tokens_by_layout.items():
        loop = reference.decoder(layout, hidden32, attention_mask)
        state = model.start(hidden32, attention_mask, len(steps))
        exact_state = exact_model.start(exact_hidden, attention_mask, len(steps))
        for step, tokens in enumerate(steps):
            recorders = _recorder(), _recorder()
            loop.step(tokens)
            model.decode_step(state, tokens, observer=recorders[0])
            exact_model.decode_step(exact_state, tokens, observer=recorders[1])
            file_name, label = _graph_of(layout, step)
            found.append(_first_divergence(label, step, recorders, loop.last_outputs, reference.tensors[file_name],
                                           factor))
            # the next step's graph reads our cache, not the one this graph wrote: each file is judged on its own
            loop.past = {name: np.ascontiguousarray(cache_array(state, name.replace("past_key_values", "present")))
                         for name in loop.past}
    return found


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def first_divergence(divergences):
    """The earliest divergence (the encoder first, then by step) as a dict for --json, or None."""
    failing = [d for d in divergences if d.module is not None]
    if not failing:
        return None
    d = min(failing, key=lambda d: -1 if d.step is None else d.step)
    return {"file": d.file, "step": d.step, "module": d.module, "ort_deviation": d.judgement.deviation,
            "ours_deviation": d.judgement.yardstick, "threshold": d.judgement.threshold}


@dataclass
class Cause:
    """A visible reason for a divergence: a lint finding, or a weight that differs from the model's."""
    file: str           # a graph file, or one branch of the merged decoder: "decoder_model_merged.onnx (...)"
    module: str         # the module boundary it changes first
    message: str
    whole_layer: bool   # a weight: shown beside any diverging module of its layer (its sublayer's output)

    def explains(self, divergence):
        if self.file not in (divergence.file, divergence.file.split(" (")[0]):
            return False
        return self.module == divergence.module or self.whole_layer and _same_layer(self.module, divergence.module)


def lint_causes(onnx_dir, spec):
    """[Cause] for every constant of the graphs that config.json does not imply (`lint.py`)."""
    from .lint import lint
    return [Cause(f.where, f.boundary, f.message, False) for f in lint(onnx_dir, spec)]


def report_lines(divergences, causes=()):
    """One line per graph file and run of steps that share their verdict; each `Cause` that explains a diverging
    module is printed beside it."""
    lines, runs = [], []
    for d in divergences:  # consecutive steps of one file with the same first module make one run
        if runs and runs[-1][-1].file == d.file and runs[-1][-1].module == d.module and d.step is not None:
            runs[-1].append(d)
        else:
            runs.append([d])
    for run in runs:
        d = run[0]
        where = d.file if d.step is None else f"{d.file}, step {d.step}"
        more = ""
        if len(run) > 1:
            later = f"step {run[-1].step}" if len(run) == 2 else f"steps {d.step + 1}-{run[-1].step}"
            more = f" (and {later}: the same)"
        if d.module is None:
            unmatched = d.n_modules - d.n_boundaries
            lines.append(f"{where}: no divergence; all {d.n_boundaries} module outputs agree{more}"
                         + (f" ({unmatched} module(s) not found in the graph)" if unmatched else ""))
            continue
        j = d.judgement
        lines.append(f"{where}: {d.module} diverges (ONNX Runtime {j.deviation:.2g} from float64, threshold "
                     f"{j.threshold:.2g}); everything before it agrees{more}")
        lines += [f"  cause: {cause.message}" for cause in causes if cause.explains(d)]
    return lines


def _same_layer(a, b):  # "model.decoder.layers.2.fc1" and "model.decoder.layers.2.fc2" -> True
    def layer(name):
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part in ("layers", "block") and parts[i + 1].isdigit():
                return ".".join(parts[:i + 2])
        return name
    return layer(a) == layer(b)


def weight_differences(model, onnx_dir):
    """[Cause] for every weight of another export's graphs that differs from `model`'s."""
    from .extract import graph_files, graph_weights
    from .families import canonical_names, encoder_root
    from .weights import expected_shapes
    common_of = {canonical: common for common, canonical in
                 canonical_names(model.spec, expected_shapes(model.spec)).items()}
    differences = []
    for file_name in graph_files(onnx_dir):
        root = encoder_root(model.spec) if file_name == "encoder_model.onnx" else ""
        graph, initializers = load_graph(os.path.join(onnx_dir, file_name))
        found, _ = graph_weights(graph, file_name, root, initializers)
        for place in found:
            ours = model.tensors.get(common_of.get(place.name, ""))
            if ours is None or ours.shape != place.value.shape:
                continue
            delta = float(np.abs(ours - place.value).max())
            if delta > 0:
                module = place.name.rsplit(".", 1)[0]
                differences.append(Cause(file_name, module, f"{file_name}: weight {place.name} (initializer "
                                         f"{place.initializer}, read by {place.node}) differs from the model's by "
                                         f"up to {delta:.3g}", True))
    return differences
