"""The exact KV cache of a block-diffusion model: keys and values of finished blocks only.

In a block-causal model a finished block's keys depend only on itself and the blocks before it, so
they never go stale (unlike Fast-dLLM's approximate cache for full attention, `kv_cache.py`): a
block's denoising passes run the model over that block alone, attending to the stored keys, and once
the block is decoded one more pass over it stores its keys (as dLLM-RL's and SDAR's samplers do).

`FinishedBlocks` is a transformers `Cache` that both families' remote code accepts unchanged
(the family's `kv_cache` protocol, `models/families.py`):
- `store_kv` (SDAR/TraDo): the attention appends through `update()` only when the forward gets
  `store_kv=True`; otherwise it reads `len(cache)` and `cache[layer]` and concatenates itself;
- `update` (LLaDA2): the attention calls `update()` on every forward; the cache stores only while
  `storing` is set and otherwise returns the stored keys with the new ones appended.
Rows are the sampler's batch rows; a pass over a subset of them sets `rows` (finished rows drop out).
All rows store the same columns at the same time, so one length serves the batch.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from dlm_bench.models import masks


class FinishedBlocks(Cache):
    """Per layer, keys/values [rows, kv_heads, columns, dim] of the finished columns [0, length)."""

    def __init__(self, batch: int, width: int):     # noqa: D107  (Cache's own state is not used)
        self.batch, self.width = batch, width
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.length = 0             # finished columns stored (the same for every row)
        self.rows: torch.Tensor | slice = slice(None)
        self.storing = False

    def __len__(self) -> int:
        return len(self.keys) if self.length else 0

    def __getitem__(self, layer_idx: int):
        r = self.rows
        return self.keys[layer_idx][r, :, :self.length], self.values[layer_idx][r, :, :self.length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, key_states, value_states, layer_idx: int, *_, **__):
        """The running rows' stored keys followed by these (which are kept when storing)."""
        n = key_states.shape[2]
        if self.storing:
            if layer_idx not in self.keys:
                shape = (self.batch, key_states.shape[1], self.width)
                self.keys[layer_idx] = key_states.new_zeros(shape + key_states.shape[3:])
                self.values[layer_idx] = value_states.new_zeros(shape + value_states.shape[3:])
            self.keys[layer_idx][self.rows, :, self.length:self.length + n] = key_states
            self.values[layer_idx][self.rows, :, self.length:self.length + n] = value_states
            return self.keys[layer_idx][self.rows, :, :self.length + n], \
                self.values[layer_idx][self.rows, :, :self.length + n]
        if not self.length:
            return key_states, value_states
        keys, values = self[layer_idx]
        return torch.cat([keys, key_states], dim=2), torch.cat([values, value_states], dim=2)


def block_forward(dlm, cache: FinishedBlocks, ids: torch.Tensor, att: torch.Tensor, rows, lo: int,
                  block_size: int, store: bool) -> torch.Tensor:
    """Logits of columns [lo, lo + n) of rows `rows` (ids: those rows' columns), attending to the
    stored columns [0, lo) block-causally; `att` [rows, lo + n] marks real columns. With `store`,
    their keys are kept. Pad queries (a prefill over left padding) see only themselves."""
    if cache.length != lo:
        raise ValueError(f"blocks are stored in order: {cache.length} columns are stored, not {lo}")
    n = ids.shape[1]
    pos = masks.positions(att)
    see = masks.block_causal(pos[:, lo:], att[:, lo:], pos, att, block_size)
    pad_q = ~att[:, lo:].bool()
    if bool(pad_q.any()):
        eye = torch.zeros_like(see[:, 0])
        eye[:, :, lo:] = torch.eye(n, dtype=torch.bool, device=ids.device)
        see = see | (eye & pad_q[:, :, None])[:, None]
    kw = {"attention_mask": masks.as_form(see, dlm.family.padding, next(dlm.model.parameters()).dtype),
          "position_ids": pos[:, lo:], "past_key_values": cache, "use_cache": True}
    if dlm.family.kv_cache == "store_kv":
        kw["store_kv"] = store
    cache.rows, cache.storing = rows, store
    try:
        logits = dlm.model(input_ids=ids, **kw).logits
    finally:
        cache.storing = False
    if store:
        cache.length += n
    return logits
