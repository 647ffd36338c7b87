"""Attention you can look at: one layer's attention probabilities over the pieces of a translation, as a heatmap.

The matrix is the model's own: generate() picks the target, then one teacher-forced forward pass over it records
every attention map through the observer (`Model.forward(output_attentions=True)`). Row t of a decoder map is
the step that produced target piece t (its query is the token before it), as in HF generate()'s per-step
`cross_attentions`. matplotlib is imported only to draw (the `plot` extra).
"""
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from .errors import ModelError

KINDS = {"cross": "decoder_cross", "self": "decoder_self", "encoder": "encoder"}


@dataclass
class AttentionMap:
    matrix: np.ndarray   # [n_query, n_key]: each row sums to 1
    rows: list           # query pieces (target pieces; source pieces for the encoder)
    columns: list        # key pieces (source pieces; for self-attention the decoder's input pieces)
    kind: str            # cross | self | encoder
    layer: int
    head: str            # "mean" or the head's index


def attention_map(model, input_ids, output_ids, piece, kind="cross", layer=None, head="mean"):
    """One source's map. input_ids [n_src]; output_ids [1 + n_new] as generate() returns them (decoder start first,
    padding after eos dropped by the caller); piece: token id -> label."""
    if kind not in KINDS:
        raise ModelError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    n_layer = model.spec.n_layer_encoder if kind == "encoder" else model.spec.n_layer_decoder
    layer = n_layer - 1 if layer is None else layer
    if not -n_layer <= layer < n_layer:
        raise ModelError(f"--layer {layer}: the {'encoder' if kind == 'encoder' else 'decoder'} has {n_layer} "
                         f"layers (0 to {n_layer - 1})")
    layer %= n_layer
    n_head = model.spec.n_head_encoder if kind == "encoder" else model.spec.n_head_decoder
    if head != "mean" and not (isinstance(head, int) and 0 <= head < n_head):
        raise ModelError(f"--head {head}: expected mean or a head index 0 to {n_head - 1}")
    source = np.asarray(input_ids, dtype=np.int64)[None]           # [1, n_src]
    decoder_inputs = np.asarray(output_ids, dtype=np.int64)[None, :-1]  # [1, n_new]: each step's query token
    _, maps = model.forward(source, np.ones_like(source), decoder_inputs, output_attentions=True)
    probs = maps[KINDS[kind]][layer][0]                            # [n_head, n_query, n_key]
    matrix = probs.mean(axis=0) if head == "mean" else probs[head]
    source_pieces = [piece(t) for t in source[0]]
    target_pieces = [piece(t) for t in output_ids[1:]]
    rows, columns = {"cross": (target_pieces, source_pieces), "encoder": (source_pieces, source_pieces),
                     "self": (target_pieces, [piece(t) for t in decoder_inputs[0]])}[kind]
    return AttentionMap(matrix, rows, columns, kind, layer, str(head))


def piece_labeller(tokenizer):  # -> token id -> label
    """The tokenizer's piece for an id (OPUS-MT's vocab.json, or tokenizer.json's vocabulary); the id itself when
    there is no tokenizer or no piece."""
    pieces = getattr(tokenizer, "pieces", None)    # MarianTokenizer: id -> piece
    backend = getattr(tokenizer, "backend", None)  # FastTokenizer: the tokenizers library's Tokenizer

    def piece(token_id):
        token_id = int(token_id)
        found = pieces.get(token_id) if pieces is not None else (
            backend.id_to_token(token_id) if backend is not None else None)
        return str(token_id) if found is None else found

    return piece


def draw(attention, title, path):
    """The heatmap as a PNG: key pieces along x, query pieces along y, a colour bar; written whole or not at all."""
    try:
        import matplotlib
    except ImportError:
        raise ModelError("the attention heatmap needs matplotlib: pip install 'minitransformer[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    n_rows, n_columns = attention.matrix.shape
    figure, axes = plt.subplots(figsize=(max(4.0, 1.5 + 0.42 * n_columns), max(3.0, 1.5 + 0.38 * n_rows)))
    image = axes.imshow(attention.matrix, cmap="viridis", vmin=0.0, aspect="auto")
    axes.set_xticks(range(n_columns), attention.columns, rotation=60, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(n_rows), attention.rows)
    query, key = {"cross": ("target", "source"), "self": ("target", "target so far"),
                  "encoder": ("source", "source")}[attention.kind]
    axes.set_xlabel(f"{key} (keys)")
    axes.set_ylabel(f"{query} (queries)")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, label="attention probability")
    figure.tight_layout()
    staged = None
    try:
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(path)), suffix=".png",
                                         delete=False) as f:
            staged = f.name
            figure.savefig(f, format="png", dpi=110)
        os.replace(staged, path)
        staged = None
    except OSError as e:
        raise ModelError(f"{path}: cannot write the heatmap ({e.strerror or e})") from None
    finally:
        plt.close(figure)
        if staged is not None and os.path.exists(staged):
            os.unlink(staged)
