"""Deliberately altered copies of an export, made inside the tests: each a real, small export bug.

Every function edits one graph file of a copied export dir in place and returns a one-line description.
`branch` picks a subgraph of decoder_model_merged.onnx's `If` node: "with_past" (use_cache_branch true,
optimum's then_branch) or "no_past" (else_branch).
"""
import onnx
from onnx import numpy_helper

BRANCH_ATTRIBUTE = {"with_past": "then_branch", "no_past": "else_branch"}


def _graph(model, branch):
    if branch is None:
        return model.graph
    (if_node,) = [n for n in model.graph.node if n.op_type == "If"]
    return next(a.g for a in if_node.attribute if a.name == BRANCH_ATTRIBUTE[branch])


def _node(graph, name, file_name):
    found = [n for n in graph.node if n.name == name]
    assert len(found) == 1, f"{file_name}: no single node named {name}"
    return found[0]


def _edit(path, branch, change):
    model = onnx.load(str(path))
    change(_graph(model, branch))
    onnx.save(model, str(path))


def set_epsilon(path, node_name, epsilon, branch=None):
    """The epsilon attribute of one LayerNormalization node (or an RMS norm's Add constant) becomes `epsilon`."""
    def change(graph):
        node = _node(graph, node_name, path.name)
        (attribute,) = [a for a in node.attribute if a.name == "epsilon"]
        attribute.f = epsilon
    _edit(path, branch, change)


def scale_constant_operand(path, consumer_name, factor, branch=None):
    """The Constant feeding node `consumer_name` (an attention scale Mul, a norm's epsilon Add...) is multiplied by
    `factor`."""
    def change(graph):
        consumer = _node(graph, consumer_name, path.name)
        producers = {output: n for n in graph.node for output in n.output}
        (constant,) = [producers[i] for i in consumer.input if i in producers and producers[i].op_type == "Constant"]
        (attribute,) = [a for a in constant.attribute if a.name == "value"]
        value = numpy_helper.to_array(attribute.t)
        attribute.t.CopyFrom(numpy_helper.from_array((value * factor).astype(value.dtype), attribute.t.name))
    _edit(path, branch, change)


def replace_op(path, node_name, op_type, branch=None):
    """Node `node_name` computes `op_type` instead, on the same inputs (a Sigmoid becomes a Tanh...)."""
    def change(graph):
        _node(graph, node_name, path.name).op_type = op_type
    _edit(path, branch, change)


def drop_operand(path, node_name, branch=None):
    """A residual `Add` whose second operand is replaced by its first: x + x instead of x + sublayer(x)."""
    def change(graph):
        node = _node(graph, node_name, path.name)
        node.input[1] = node.input[0]
    _edit(path, branch, change)


def scale_weight(path, consumer_name, factor, branch=None):
    """The initializer a node reads as its second input (a linear layer's weight) is multiplied by `factor`."""
    def change(graph):
        consumer = _node(graph, consumer_name, path.name)
        (initializer,) = [i for i in graph.initializer if i.name == consumer.input[1]]
        value = numpy_helper.to_array(initializer)
        initializer.CopyFrom(numpy_helper.from_array((value * factor).astype(value.dtype), initializer.name))
    _edit(path, branch, change)


def strip_node_names(path):
    """Every node of the graph loses its name, as some exporters write them."""
    def change(graph):
        for node in graph.node:
            node.name = ""
    _edit(path, None, change)
