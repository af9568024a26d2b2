"""What the trajectory methods (CJ-GRPO, MDPO, EGSPO, d-TreeRPO) share: training samples that are
(rollout, decoding step) pairs rather than rollouts, and the states a decode passed through.

A `SampleCache` holds one entry per sample with the rollout row it belongs to (`rows`); micro-batches
take a row's samples with it (`select_samples`), so group statistics computed in `prepare` on the
whole batch stay whole-batch. The state before decoding step t of a completion is its window with
every token decoded at step >= t masked (`state_masks`): that is the rollout's own intermediate state
when every token was decoded once (no `rcr`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.likelihood import ScoredBatch, masked_token_logprobs
from dlm_bench.methods import MethodCache, Rollouts
from dlm_bench.sampler import make_generators, sample


@dataclass(kw_only=True)
class SampleCache(MethodCache):
    """Base of a per-sample cache: every tensor field is [R, ...], sample r belonging to rollout row rows[r]."""
    rows: torch.Tensor                     # [R]


def select_samples(rollouts: Rollouts, idx: torch.Tensor) -> Rollouts:
    """Rows `idx` of a prepared batch with their samples (rows renumbered), for a micro-batch backward."""
    c = rollouts.cache
    if not isinstance(c, SampleCache):
        return rollouts.rows(idx)
    idx = idx.to(c.rows.device)
    keep = torch.isin(c.rows, idx)
    new_row = torch.full((rollouts.rewards.numel(),), -1, dtype=torch.long, device=idx.device)
    new_row[idx] = torch.arange(len(idx), device=idx.device)
    sub = c.take(keep.nonzero(as_tuple=True)[0], len(c.rows), rows=new_row[c.rows[keep]])
    return rollouts.rows(idx, sub)


def state_masks(step_map: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor, first: torch.Tensor,
                last: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For samples (rows[r], steps first[r] .. last[r]-1): (input masks [R, G]: positions not yet decoded
    before step first[r]; targets [R, G]: positions decoded in [first, last), last = first + 1 by default)."""
    sm, ok = step_map[rows], valid[rows].bool()
    last = first + 1 if last is None else last
    undecoded = ((sm >= first[:, None]) | (sm < 0)) & ok
    targets = (sm >= first[:, None]) & (sm < last[:, None]) & ok
    return undecoded, targets


def sample_logprobs(dlm, batch: ScoredBatch, rows: torch.Tensor, completions: torch.Tensor, masks: torch.Tensor,
                    targets: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """[R, G] log-probs of each sample's target tokens (0 elsewhere): sample r is prompt rows[r] followed by
    completions[r] with masks[r] masked."""
    sub = ScoredBatch(batch.prompt_ids[rows], batch.prompt_mask[rows], completions, batch.valid[rows])
    return masked_token_logprobs(dlm, sub, masks[None], chunk, scored=targets[None])[0]


def sample_recorded(dlm, prompts: list[list[int]], scfg, seeds: list[int], chunk: int, recorder) -> list:
    """Row i decoded with a generator seeded by seeds[i], `chunk` rows per sampler call, every step shown to
    `recorder`, whose `offset` is set to the chunk's first row so that it indexes rows globally."""
    comps = []
    for s in range(0, len(prompts), chunk):
        recorder.offset = s
        comps += sample(dlm, prompts[s:s + chunk], scfg, make_generators(seeds[s:s + chunk], dlm.device),
                        recorder=recorder)
    return comps
