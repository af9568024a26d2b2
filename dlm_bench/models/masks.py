"""Attention masks and position ids for left-padded batches, in the form each family takes
(`Family.padding`, `Family.attention` in `models/families.py`).

- `positions(att)`: absolute positions of a left-padded batch; padding does not shift them.
- `padded_inputs`: a full-attention model's mask for a padded batch (2-D, or Dream's 4-D keys-only).
- `block_causal(...)`: the block-diffusion mask [B, 1, Q, K]: a query sees the keys of its own block
  and of every earlier block, never padding. Blocks are counted from each row's first real token
  (block of position p = p // block_size), so a left-padded row sees exactly what it sees unpadded.
  Pad queries see themselves only, so no row of the mask is empty (an empty row is NaN in SDPA and
  reaches real rows through the values).
- `block_scoring`: the block-diffusion training layout (clean sequence + noised copy) for scores.
- `as_form`: the boolean mask in the form the model takes: bool (SDAR) or additive 0 / -inf in the
  model's dtype (LLaDA2, whose 2-D masks with a 0 become causal: `models/MANIFEST.md`).
"""
from __future__ import annotations

import torch


def positions(att: torch.Tensor) -> torch.Tensor:
    """Positions of a left-padded batch [B, T] (0 at each row's first real token; pads get 0)."""
    return (att.long().cumsum(-1) - 1).clamp(min=0)


def padded_inputs(att: torch.Tensor, padding: str, takes_position_ids: bool) -> dict:
    """Model keyword arguments for a padded batch of a full-attention model."""
    if padding == "4d_bool":
        # Keys only: Dream's own query-and-key mask leaves pad rows with nothing to attend to,
        # which SDPA turns into NaN that then reaches every row through the values.
        am = att.bool()
        return {"attention_mask": am[:, None, None, :].expand(-1, 1, am.shape[1], -1),
                "position_ids": positions(att)}
    kw = {"attention_mask": att}
    if takes_position_ids:          # left padding must not shift absolute positions
        kw["position_ids"] = positions(att)
    return kw


def block_causal(q_pos: torch.Tensor, q_real: torch.Tensor, k_pos: torch.Tensor, k_real: torch.Tensor,
                 block_size: int) -> torch.Tensor:
    """[B, 1, Q, K] bool: query (position q_pos, real q_real) sees key k when k is real and its block
    is not after the query's; a pad query sees only keys at its own column (give it the same
    column in both: `full_block_causal`), a window pass's pad queries see nothing they could spoil."""
    qb = (q_pos // block_size)[:, :, None]
    kb = (k_pos // block_size)[:, None, :]
    see = (kb <= qb) & k_real[:, None, :].bool() & q_real[:, :, None].bool()
    return see[:, None]


def full_block_causal(att: torch.Tensor, block_size: int) -> torch.Tensor:
    """The block-causal mask of a whole left-padded batch [B, T] -> [B, 1, T, T]; pad queries see themselves."""
    pos = positions(att)
    see = block_causal(pos, att, pos, att, block_size)
    eye = torch.eye(att.shape[1], dtype=torch.bool, device=att.device)
    return see | (eye & ~att.bool()[:, :, None])[:, None]


def as_form(mask: torch.Tensor, padding: str, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask in the family's form: itself, or additive (0 visible, -inf hidden) in `dtype`."""
    if padding == "4d_additive":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask


def block_causal_inputs(att: torch.Tensor | None, shape, block_size: int, padding: str, dtype,
                        device) -> dict:
    """Model keyword arguments for a whole-sequence forward of a block-causal model: its 4-D mask and
    explicit position ids (never the model's own default, which is not block-causal)."""
    if att is None:
        att = torch.ones(shape, dtype=torch.long, device=device)
    return {"attention_mask": as_form(full_block_causal(att, block_size), padding, dtype),
            "position_ids": positions(att)}




def block_scoring(att: torch.Tensor, start: int, copy_from: int, block_size: int):
    """The block-diffusion training layout (SDAR/TraDo's, dLLM-RL `train/rl_trado.py`; dFactory's for LLaDA2):
    the clean sequence [B, T] (left-padded; the answer from column `start`) followed by a noised copy of
    its columns [copy_from, T). Every noised query sees the clean blocks before its own and the noised
    columns of its own block, so one forward scores each block given the clean earlier blocks and its
    noised self.

    Blocks are counted as in `full_block_causal` (from each row's first real token, as the sampler
    decodes), so a block can hold the prompt's last tokens and the first answer tokens; the copy starts
    early enough (`copy_from` <= start - (block_size - 1)) to hold those prompt tokens, which also see the
    noised answer tokens of their block. Copied columns of blocks without answer tokens, and pads, see
    only themselves. Returns ([B, 1, T + C, T + C] bool, position ids [B, T + C]), C = T - copy_from."""
    B, T = att.shape
    real = att.bool()
    pos = positions(att)
    blk = pos // block_size
    cb = blk[:, copy_from:]                                           # blocks of the copied columns
    live = real[:, copy_from:] & (cb >= blk[:, start:start + 1])      # ... that hold answer tokens
    clean_keys = real[:, None, :] & (blk[:, None, :] < cb[:, :, None]) & live[:, :, None]
    own_block = (cb[:, None, :] == cb[:, :, None]) & live[:, None, :] & live[:, :, None]
    C = T - copy_from
    lone = torch.eye(C, dtype=torch.bool, device=att.device)[None] & ~live[:, :, None]
    top = torch.cat([full_block_causal(att, block_size)[:, 0], att.new_zeros((B, T, C), dtype=torch.bool)], -1)
    bottom = torch.cat([clean_keys, own_block | lone], -1)
    return torch.cat([top, bottom], 1)[:, None], torch.cat([pos, pos[:, copy_from:]], 1)
