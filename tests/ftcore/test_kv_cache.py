"""The decode batch's cache layers (ftcore/serving/kv_cache.py): a step writes its column in place, and whatever
rows join, leave or lose leading columns, the keys and values are those a plain concatenation would hold."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ftcore.serving.kv_cache import SPARE, SpareLayer


def states(rows: int, columns: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, columns, 4, generator=g), torch.randn(rows, 2, columns, 8, generator=g)  # MLA-like


def stacked(top: torch.Tensor, bottom: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([F.pad(t, (0, 0, width - t.shape[2], 0)) for t in (top, bottom)])


@torch.inference_mode()  # as the decode batch runs: views keep no `_base` there
def test_a_step_writes_its_column_in_place_until_the_spare_columns_run_out():
    layer, keys, values = SpareLayer(), *states(3, 5, 0)
    layer.update(keys, values)
    buffer = layer._keys.data_ptr()
    for step in range(SPARE + 1):
        k, v = states(3, 1, step + 1)
        out_keys, out_values = layer.update(k, v)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        assert torch.equal(out_keys, keys) and torch.equal(out_values, values)
        assert (layer._keys.data_ptr() == buffer) == (step < SPARE), step  # one new buffer, when the spare is used up


def test_rows_that_leave_join_and_lose_leading_columns_keep_their_states():
    layer, keys, values = SpareLayer(), *states(4, 6, 0)
    layer.update(keys, values)
    for step in range(1, 90):
        k, v = states(len(keys), 1, step)
        layer.update(k, v)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        if step % 7 == 0:  # a row leaves
            keep = torch.tensor([i for i in range(len(keys)) if i != step % len(keys)])
            layer.batch_select_indices(keep)
            keys, values = keys[keep], values[keep]
        if step % 11 == 0:  # rows join, prefilled on their own, both padded on the left to the longer
            other, (k2, v2) = SpareLayer(), states(2, 40, step)
            other.update(k2, v2)
            width = max(keys.shape[2], 40)
            layer.stack(other, width)
            keys, values = stacked(keys, k2, width), stacked(values, v2, width)
        if step % 13 == 0:  # columns no row uses are cut from the left (DecodeBatch._keep)
            layer.keys, layer.values = layer.keys[:, :, 3:], layer.values[:, :, 3:]
            keys, values = keys[:, :, 3:], values[:, :, 3:]
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values), step
