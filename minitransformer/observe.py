"""One optional observer of the compute path, called at named module boundaries.

`Model.encode`, `Model.decode_step` and `Model.forward` take `observer=`; None (the default) costs nothing.
An observer sees, under the family's own Hugging Face module names (`model.decoder.layers.3.self_attn`,
T5: `decoder.block.3.layer.0.SelfAttention`), in execution order:

| boundary | value | name (BART-like; T5 in `families.module_name`) |
|---|---|---|
| embedding: tokens × embed_scale + positions | [n_batch, n, d_model] | `model.{stack}.embed_tokens` |
| layernorm_embedding (BART, mBART) | same | `model.{stack}.layernorm_embedding` |
| each attention sublayer's output (after out_proj) | same | `model.{stack}.layers.{i}.self_attn`, `.encoder_attn` |
| each norm, where it sits (pre or post) | same | `model.{stack}.layers.{i}.self_attn_layer_norm`, ... |
| each feed-forward sublayer's output (after fc2) | same | `model.{stack}.layers.{i}.fc2` |
| the stack's final norm (mBART, M2M100, T5) | same | `model.{stack}.layer_norm` |
| lm_head (scaled, bias added: the logits) | [n_batch, n, n_vocab] | `lm_head` |

With `wants_probs`, attention probabilities [n_batch, n_head, n_tgt, n_k] go to `probs(name, p)` under the
attention module's name; they are computed by the readable numpy attention (`attention.attention_probs`), so
`wants_probs = False` keeps the numba kernel and changes no number.
"""
from collections import defaultdict

from .families import module_name


class Observer:
    """Subclass and override `output` and/or `probs`; the defaults ignore what they are given."""

    wants_probs = False  # True: attention probabilities are computed and passed to `probs`

    def output(self, name, value):
        """A module boundary's output, under the family's module name."""

    def probs(self, name, probs):
        """An attention module's probabilities [n_batch, n_head, n_tgt, n_k]."""


class Recorder(Observer):
    """Keeps every value it is shown: outputs[name] and attentions[name] are lists, one entry per call."""

    def __init__(self, probs=True, keep_outputs=True):
        self.wants_probs = probs
        self.keep_outputs = keep_outputs
        self.outputs = defaultdict(list)     # module name -> [value per call]
        self.attentions = defaultdict(list)  # attention module name -> [probabilities per call]
        self.order = []                      # (kind, name) in call order: "output" or "probs"

    def output(self, name, value):
        if self.keep_outputs:
            self.outputs[name].append(value)
            self.order.append(("output", name))

    def probs(self, name, probs):
        self.attentions[name].append(probs)
        self.order.append(("probs", name))


class Named:
    """Wraps an observer: the compute path speaks common slot names, the observer hears the family's names."""

    def __init__(self, observer, spec):
        self.observer, self.spec = observer, spec
        self.wants_probs = observer.wants_probs
        self._names = {}

    def _name(self, common):
        if common not in self._names:
            self._names[common] = module_name(self.spec, common)
        return self._names[common]

    def output(self, common, value):
        self.observer.output(self._name(common), value)

    def probs(self, common, probs):
        self.observer.probs(self._name(common), probs)


def named(observer, spec):
    """None stays None (nothing observed, nothing paid); an observer learns the family's names."""
    return None if observer is None else Named(observer, spec)
