"""The decode batch's key/value cache: transformers' DynamicCache with layers that keep spare columns.

transformers' DynamicLayer appends a step's keys and values with `torch.cat`, which copies the whole cache of every
layer at every step. A `SpareLayer` keeps its keys and values as views of buffers with spare columns on the right: a
step writes its column in place, and only joining rows, leaving rows and a full buffer copy it. Measured with
16 rows of a 100M Llama, 200 steps from short prompts, a step took 1.04x as long with DynamicLayer
(`bench/serve_traffic.py --suite step`, docs/benchmarks.md).
"""

from __future__ import annotations

from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# Spare columns a buffer gets each time it is (re)allocated: one copy per this many steps at most.
SPARE = 64


class SpareLayer(DynamicLayer):
    """A full-attention layer of the decode batch: `keys`/`values` are views of `_keys`/`_values`, [rows, heads,
    columns + spare, head size]; a view's first column is where its buffer's used columns start (cut from the left by
    `DecodeBatch` with plain slicing, which stays a view)."""

    _keys = _values = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if not self._has_room(new):
            self._rebuffer(self._filled(self.keys), self._filled(self.values), incoming=(key_states, value_states))
        start, end = self._start(), self._start() + self.keys.shape[-2]
        self._keys[:, :, end:end + new] = key_states
        self._values[:, :, end:end + new] = value_states
        self.keys, self.values = self._keys[:, :, start:end + new], self._values[:, :, start:end + new]
        return self.keys, self.values

    def batch_select_indices(self, indices) -> None:
        """Keep the rows at `indices`, with the buffer's spare columns."""
        if not self._views_buffers():
            return super().batch_select_indices(indices)
        start, end = self._start(), self._start() + self.keys.shape[-2]
        self._keys, self._values = self._keys[indices], self._values[indices]
        self.keys, self.values = self._keys[:, :, start:end], self._values[:, :, start:end]

    def stack(self, other: SpareLayer, width: int) -> None:
        """Put `other`'s rows below this layer's, both padded on the left to `width` columns: one copy into a new
        buffer."""
        self._rebuffer(self.keys, self.values, below=(other.keys, other.values), width=width)

    def _has_room(self, new: int) -> bool:
        return self._views_buffers() and self._start() + self.keys.shape[-2] + new <= self._keys.shape[-2]

    def _views_buffers(self) -> bool:
        """Whether `keys` is still a slice of `_keys`'s columns (`Tensor._base` is not kept under inference_mode)."""
        return (self._keys is not None and self.keys.dim() == 4 and self.keys.shape[0] == self._keys.shape[0]
                and self.keys.untyped_storage().data_ptr() == self._keys.untyped_storage().data_ptr())

    def _start(self) -> int:
        return self.keys.storage_offset() // self.keys.stride(2)

    @staticmethod
    def _filled(states):
        return states if states is not None and states.dim() == 4 else None  # not the empty tensor of a new layer

    def _rebuffer(self, keys, values, below=(None, None), width: int | None = None, incoming=(None, None)) -> None:
        """New buffers holding `keys`/`values` (and the rows `below`) right-aligned to `width` columns (default: the
        columns they have), with room for the `incoming` columns and SPARE more."""
        if width is None:
            width = max((p.shape[2] for p in (keys, below[0]) if p is not None), default=0)
        self._keys = self._buffer(keys, below[0], width, incoming[0])
        self._values = self._buffer(values, below[1], width, incoming[1])
        self.keys, self.values = self._keys[:, :, :width], self._values[:, :, :width]

    @staticmethod
    def _buffer(top, bottom, width: int, incoming):
        parts = [p for p in (top, bottom) if p is not None]
        like = parts[0] if parts else incoming
        rows = sum(p.shape[0] for p in parts) if parts else incoming.shape[0]
        extra = incoming.shape[2] if incoming is not None else 0
        buffer = like.new_zeros(rows, like.shape[1], width + extra + SPARE, like.shape[3])
        row = 0
        for part in parts:
            buffer[row:row + part.shape[0], :, width - part.shape[2]:width] = part
            row += part.shape[0]
        return buffer


def decode_cache(config) -> DynamicCache:
    """A DynamicCache for `config` whose full-attention layers keep spare columns."""
    cache = DynamicCache(config=config)
    cache.layers = [SpareLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def keeps_full_cache(config) -> bool:
    """Whether every layer of `config`'s model keeps a full-attention cache, as a decode batch needs."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)
