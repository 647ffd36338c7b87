"""The decoder's state between steps: self-attention K/V appended step by step, cross-attention K/V once.

Laid out as ONNX Runtime's `present.N.decoder.key` is, [n_batch, n_head, n_past + n_tgt, d_head] per
layer, so a cache view can be compared with ONNX Runtime's arrays directly, or fed back to it.
The cache only stores; it never does math.
"""
import numpy as np


class KVCache:
    """Append-only (no ring): slot t holds the keys and values of target position t.

    `capacity` slots are allocated up front; an append past them reallocates to twice the length needed
    and copies the filled slots, so a huge generation limit costs memory only for the tokens produced."""

    def __init__(self, n_layer, n_batch, n_head, capacity, d_head, dtype=np.float32):
        shape = (n_layer, n_batch, n_head, max(1, capacity), d_head)
        self.key = np.zeros(shape, dtype=dtype)    # [n_layer, n_batch, n_head, capacity, d_head]
        self.value = np.zeros(shape, dtype=dtype)  # [n_layer, n_batch, n_head, capacity, d_head]
        self.n_past = 0  # positions committed by finished steps

    @property
    def capacity(self):
        return self.key.shape[3]

    def _grow(self, end):
        """Reallocate to 2 * end slots; every slot written so far keeps its contents."""
        shape = self.key.shape[:3] + (2 * end,) + self.key.shape[4:]
        filled = slice(0, self.capacity)
        for name in ("key", "value"):
            grown = np.zeros(shape, dtype=self.key.dtype)  # [n_layer, n_batch, n_head, 2 * end, d_head]
            grown[:, :, :, filled] = getattr(self, name)
            setattr(self, name, grown)

    def append(self, layer, k, v):
        # k, v [n_batch, n_head, n_tgt, d_head] -> slots [n_past, n_past + n_tgt) of `layer`;
        # returns that layer's keys and values so far, [n_batch, n_head, n_past + n_tgt, d_head] each
        end = self.n_past + k.shape[2]
        if end > self.capacity:
            self._grow(end)
        self.key[layer, :, :, self.n_past:end] = k
        self.value[layer, :, :, self.n_past:end] = v
        return self.key[layer, :, :, :end], self.value[layer, :, :, :end]

    def commit(self, n_tgt):
        """Called once per step, after every layer appended its n_tgt new positions."""
        self.n_past += n_tgt

    def view(self, layer):  # -> key, value [n_batch, n_head, n_past, d_head]
        return self.key[layer, :, :, :self.n_past], self.value[layer, :, :, :self.n_past]

    def reorder(self, batch_index):
        """Beam search: row i continues the hypothesis of row batch_index[i]. In place: only the rows whose
        origin changed are written, and only their filled slots; their sources are read out first."""
        batch_index = np.asarray(batch_index)
        moved = np.flatnonzero(batch_index != np.arange(len(batch_index)))
        if moved.size == 0:
            return
        filled = slice(0, self.n_past)
        for cache in (self.key, self.value):  # [n_layer, n_moved, n_head, n_past, d_head] copied, then written
            cache[:, moved, :, filled] = cache[:, batch_index[moved], :, filled]


class CrossKV:
    """Cross-attention keys and values: computed once from the encoder output, read at every step."""

    def __init__(self, key, value):
        self.key = key      # [n_layer, n_batch, n_head, n_src, d_head]
        self.value = value  # [n_layer, n_batch, n_head, n_src, d_head]

    def view(self, layer):
        return self.key[layer], self.value[layer]
