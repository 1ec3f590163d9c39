"""Continuous batching: one decode batch that requests join and leave at every step, so a short answer never waits
for a long one that started earlier.

The batch keeps one key/value cache (transformers' DynamicCache, its layers keeping spare columns so that a step does
not copy it: ftcore/serving/kv_cache.py) for all its rows, left-padded to a common length, and a 2-D attention mask
that marks each row's real tokens. A joining request is prefilled on its own (its prompt
through the model once, with the rows that join at the same step), then its cache is padded on the left and
concatenated to the batch's; a finished row's cache rows are dropped (`batch_select_indices`), and columns no row uses
any more are cut from the left. Positions come from each row's mask, so a row's rotary positions are those it would
have alone: a greedy row's answer equals `model.generate` on its prompt alone (tests/ftcore/test_decoding.py).

Why not transformers' continuous batching manager (`model.init_continuous_batching`): measured on this project's
2-core CPU with a Llama of 116M parameters, 16 requests of 4 to 128 new tokens, it answered 1.07x the tokens per
second of one static `generate` batch (0.67x with a 5M model), it has no per-request adapter (PEFT's
`adapter_names`) or seed, and it sizes its paged cache from the free memory unless told otherwise. This loop, in a
closed loop of 64 requests 16 at a time, answered 1.59x (116M) and 1.31x (5M) the static batches' tokens per second
(spike scripts; bench/serve_load.py will measure the server).

Rows of different adapters on one base share the batch: each forward pass routes every row through its own adapter
(PEFT's mixed-batch `adapter_names`). Every row samples with its own settings (greedy, or temperature and top_p)
from its own seeded generator, so its answer does not depend on the rows beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# PEFT's name for "no adapter" in a mixed batch's adapter_names.
BASE = "__base__"


@dataclass
class Row:
    """One request in the batch: its prompt's ids, how it samples, and the tokens generated so far."""

    key: object  # the caller's handle (a request id)
    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    adapter: str | None = None  # the PEFT adapter it is answered with; None: the base model
    stop_ids: frozenset[int] = frozenset()  # tokens that end the answer (not kept in it); empty: vLLM's ignore_eos
    min_tokens: int = 0  # vLLM's min_tokens: no stop token before this many tokens
    tokens: list[int] = field(default_factory=list)
    generator: object = None
    stopped: bool = False  # its last token was a stop token

    @property
    def finished(self) -> bool:
        return self.stopped or len(self.tokens) >= self.max_new_tokens


class DecodeBatch:
    """The rows being answered and their shared cache. Not thread-safe: one thread steps it."""

    def __init__(self, model, pad_id: int = 0):
        self.model, self.pad_id = model, pad_id
        self.routes_adapters = False  # every forward pass names each row's adapter, even when all are the base's
        self.rows: list[Row] = []
        self.cache = None
        self.mask = None  # long tensor [rows, columns]: 1 where the cache holds a row's real token

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, rows: list[Row]) -> list[tuple[Row, int]]:
        """Prefill `rows` together and add them to the batch; returns each one's first token (a row may finish at
        once: it is not added then)."""
        import torch

        if not rows:
            return []
        width = max(len(r.prompt) for r in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(r.prompt)) + r.prompt for r in rows])
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows])
        cache = self._empty_cache()
        with torch.inference_mode():
            out = self._forward(rows, input_ids=ids, attention_mask=mask,
                                position_ids=(mask.cumsum(-1) - 1).clamp(min=0), past_key_values=cache, use_cache=True)
        for r in rows:
            if r.seed is not None:
                r.generator = torch.Generator().manual_seed(r.seed)
        firsts = self._choose(out.logits[:, -1], rows)
        self._merge(out.past_key_values, mask)
        self.rows += rows
        return self._leave_finished(firsts)

    def step(self) -> list[tuple[Row, int]]:
        """One token for every row; rows that finish with it leave the batch."""
        import torch
        import torch.nn.functional as F

        if not self.rows:
            return []
        last = torch.tensor([[r.tokens[-1]] for r in self.rows])
        self.mask = F.pad(self.mask, (0, 1), value=1)
        with torch.inference_mode():
            out = self._forward(self.rows, input_ids=last, attention_mask=self.mask,
                                position_ids=self.mask.sum(-1, keepdim=True) - 1, past_key_values=self.cache,
                                use_cache=True)
        self.cache = out.past_key_values
        return self._leave_finished(self._choose(out.logits[:, -1], self.rows))

    def _forward(self, rows: list[Row], **inputs):
        """The model on `rows`, each through its own adapter where the model routes adapters or a row names one.
        Rows of several adapters share the pass through PEFT's mixed-batch routing (`adapter_names`, one per row);
        when all name the same one, that adapter is made the active one instead, and when all are the base's the
        adapters are switched off: PEFT's per-row routing costs a quarter more time per step (measured on a 20M
        Llama, 16 rows). A model that merely carries its own trained adapter (a prompt-tuned one, say) runs as it
        is."""
        if not (self.routes_adapters or any(r.adapter for r in rows)):
            return self.model(**inputs)
        names = [r.adapter or BASE for r in rows]
        if len(set(names)) > 1:
            return self.model(**inputs, adapter_names=names)
        if names[0] == BASE:
            with self.model.disable_adapter():
                return self.model(**inputs)
        if self.model.active_adapter != names[0]:
            self.model.set_adapter(names[0])
        return self.model(**inputs)

    def cancel(self, key) -> None:
        """Drop the row of `key` (its client went away) at once."""
        self._keep([i for i, r in enumerate(self.rows) if r.key != key])

    def _choose(self, logits, rows: list[Row]) -> list[tuple[Row, int]]:
        """Each row's next token: greedy, or sampled with its temperature and top_p from its own generator."""
        import torch

        chosen = []
        for row, scores in zip(rows, logits.float(), strict=True):
            if len(row.tokens) < row.min_tokens and row.stop_ids:
                scores = scores.index_fill(0, torch.tensor(sorted(row.stop_ids)), float("-inf"))
            if row.temperature <= 0:
                token = int(scores.argmax())
            else:
                probs = torch.softmax(scores / row.temperature, -1)
                if row.top_p < 1:
                    ordered, order = probs.sort(descending=True)
                    outside = ordered.cumsum(-1) - ordered > row.top_p  # keep the smallest set reaching top_p
                    probs = probs.scatter(0, order, ordered.masked_fill(outside, 0))
                token = int(torch.multinomial(probs, 1, generator=row.generator))
            if token in row.stop_ids:
                row.stopped = True
            else:
                row.tokens.append(token)
            chosen.append((row, token))
        return chosen

    def _leave_finished(self, chosen: list[tuple[Row, int]]) -> list[tuple[Row, int]]:
        self._keep([i for i, r in enumerate(self.rows) if not r.finished])
        return chosen

    def _keep(self, indices: list[int]) -> None:
        """Keep only the rows at `indices`, and cut the cache columns none of them uses."""
        import torch

        if len(indices) == len(self.rows):
            return
        if not indices:
            self.rows, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(indices, dtype=torch.long)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.rows = [self.rows[i] for i in indices]
        unused = int((self.mask.sum(0) == 0).long().cumprod(0).sum())  # leading columns every row pads
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def _merge(self, cache, mask) -> None:
        """Add a prefilled cache (and its mask) below the batch's, both padded on the left to one length."""
        import torch
        import torch.nn.functional as F

        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        self.mask = torch.cat([F.pad(self.mask, (width - self.mask.shape[1], 0)),
                               F.pad(mask, (width - mask.shape[1], 0))])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.stack(theirs, width)

    def _empty_cache(self):
        from ftcore.serving.kv_cache import decode_cache

        return decode_cache(self.model.config)
