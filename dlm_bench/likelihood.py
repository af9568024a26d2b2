"""Sequence-level scores of completions y given prompts x under a masked diffusion LM.

- `elbo`: Monte-Carlo ELBO of log p(y|x) with the random-order estimator (l ~ U{1..L} positions
  masked, weight L/l; LLaDA `get_log_likelihood.py`), from independent or coupled mask draws
  (`draw_masks`).
- `normalized_logprob`: the per-token surrogate ELBO/L (for independent draws this is exactly the
  1/l-weighted mean of the masked log-probabilities).
- `left_to_right_logprob`: the exact log-probability of decoding y one token at a time, in order.
- `trajectory_logprobs`: per-token log-probabilities along a recorded decoding trajectory (TraceRL).

Masks are drawn once by `draw_masks` and passed in, so policy, old policy and reference score the
same masked inputs (common random numbers). Scores carry gradients; wrap reference calls in
`torch.no_grad()`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ScoredBatch:
    """Prompts (left-padded) followed by completion windows of equal width G."""
    prompt_ids: torch.Tensor      # [B, P]
    prompt_mask: torch.Tensor     # [B, P] 1 = real token
    completion: torch.Tensor      # [B, G]
    valid: torch.Tensor           # [B, G] bool: positions that belong to the completion

    @property
    def lengths(self) -> torch.Tensor:
        return self.valid.sum(-1)

    @classmethod
    def build(cls, dlm, prompts: list[list[int]], completions: list[list[int]], lengths=None) -> "ScoredBatch":
        ids, mask = dlm.pad_left(prompts)
        G = max(len(c) for c in completions)
        comp = torch.full((len(completions), G), dlm.eos_id, dtype=torch.long)
        valid = torch.zeros((len(completions), G), dtype=torch.bool)
        for i, c in enumerate(completions):
            n = len(c) if lengths is None else int(lengths[i])
            comp[i, :len(c)] = torch.tensor(c, dtype=torch.long)
            valid[i, :n] = True
        return cls(ids, mask, comp.to(ids.device), valid.to(ids.device))

    def index(self, rows) -> "ScoredBatch":
        return ScoredBatch(self.prompt_ids[rows], self.prompt_mask[rows], self.completion[rows], self.valid[rows])


@dataclass
class MaskDraw:
    masks: torch.Tensor           # [K, B, G] bool: completion positions masked in draw k
    weights: torch.Tensor         # [K, B] weight of the summed masked log-probs
    coupled: bool                 # draws come in pairs (2j, 2j+1)


SCHEMES = ("paired", "independent", "espo", "stratified", "stratified_paired")


def draw_masks(valid: torch.Tensor, n: int, gen: torch.Generator, scheme: str = "paired") -> MaskDraw:
    """n mask draws per row. Every scheme is unbiased for the same ELBO.

    - "independent": l ~ U{1..L}, a uniform subset of size l, weight L/l (LLaDA).
    - "paired" (default): n/2 coupled pairs. Sizes are stratified (l and l + L/2 mod L, as LLaDA's
      systematic draw) and positions complementary: the first l of one random order, then the last
      l' of the same order (an exact complement when l + l' = L). Each half is marginally an
      independent-scheme draw, so the pair is unbiased and negatively correlated.
    - "espo": ESPO's exact complement: l ~ U{0..L} with weight (L+1)/l, the complement with weight
      (L+1)/(L-l). Faithful to ML-GSAI/ESPO; at short L its l = 0 and l = L draws make it far noisier
      (measured in docs/likelihood.md).
    - "stratified": the n sizes of a row spread evenly over {1..L}, as LLaDA's reference spreads
      them over its MC batch, but without its rounding: one u ~ U[0, 1) per row and
      l_k = floor(L (u + k) / n) + 1 for k = 0..n-1; each l_k has its own uniform subset, weight L/l_k.
      Draw k alone is not uniform, but the n draws together are: averaged over k, P(l_k = l) = 1/L
      for every l and any n (the reference's torch.round gives unequal counts when L/n is not an
      integer), so their mean is unbiased; any n >= 1, not coupled.
    - "stratified_paired": the same n stratified sizes, drawn as n/2 position-coupled pairs: pair k
      masks the first l_k and the last l_{k+n/2} positions of one random order (disjoint whenever
      l_k + l_{k+n/2} <= L). Each mask is marginally a uniform subset of its size, so the mean is
      unbiased; with n = 2 and even L it has the distribution of "paired".
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown mask scheme {scheme!r}; choose from {SCHEMES}")
    if scheme in ("paired", "espo", "stratified_paired") and n % 2:
        raise ValueError(f"scheme {scheme!r} draws pairs: n must be even")
    L = valid.sum(-1).to(torch.float64)
    Li = valid.sum(-1).long().cpu()
    Lc = Li.clamp(min=1)
    masks, weights = [], []
    if scheme in ("stratified", "stratified_paired"):
        u = torch.rand(Li.shape, generator=gen, dtype=torch.float64)      # one offset per row
        sizes = [(torch.floor(Lc.to(torch.float64) * (u + k) / n).long() + 1).clamp(max=Lc) for k in range(n)]
        paired = scheme == "stratified_paired"
        for k in range(n // 2 if paired else n):
            keys = torch.rand(valid.shape, generator=gen, device="cpu").to(valid.device)
            ranks = keys.masked_fill(~valid, 2.0).argsort(-1).argsort(-1)
            masks.append(ranks < sizes[k].to(valid.device)[:, None])
            weights.append(L / sizes[k].to(L.device, torch.float64))
            if paired:
                l2 = sizes[k + n // 2]
                masks.append((ranks >= (Li - l2).to(valid.device)[:, None]) & valid)
                weights.append(L / l2.to(L.device, torch.float64))
        return MaskDraw(torch.stack(masks), torch.stack(weights), paired)
    for _ in range(n if scheme == "independent" else n // 2):
        u = torch.rand(Li.shape, generator=gen, dtype=torch.float64)
        keys = torch.rand(valid.shape, generator=gen, device="cpu").to(valid.device)
        ranks = keys.masked_fill(~valid, 2.0).argsort(-1).argsort(-1)  # a random order of valid positions
        if scheme == "espo":
            l = torch.floor(u * (Li + 1)).long().clamp(max=Li)             # U{0..L}
            m = ranks < l.to(valid.device)[:, None]
            lf = l.to(L.device, torch.float64)
            masks += [m, valid & ~m]
            weights += [torch.where(lf > 0, (L + 1) / lf.clamp(min=1), 0.0),
                        torch.where(L - lf > 0, (L + 1) / (L - lf).clamp(min=1), 0.0)]
            continue
        l1 = (torch.floor(u * Lc).long() + 1).clamp(max=Lc)                # U{1..L}
        masks.append(ranks < l1.to(valid.device)[:, None])
        weights.append(L / l1.to(L.device, torch.float64))
        if scheme == "paired":
            l2 = (l1 - 1 + Lc // 2) % Lc + 1
            masks.append((ranks >= (Li - l2).to(valid.device)[:, None]) & valid)
            weights.append(L / l2.to(L.device, torch.float64))
    return MaskDraw(torch.stack(masks), torch.stack(weights), scheme != "independent")


def masked_token_logprobs(dlm, batch: ScoredBatch, masks: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """log p(y_i | x, y with `masks` masked) at every position: [K, B, G] (zero where unmasked)."""
    K, B, G = masks.shape
    x = torch.cat([batch.prompt_ids.repeat(K, 1),
                   torch.where(masks.reshape(K * B, G), dlm.mask_id, batch.completion.repeat(K, 1))], dim=1)
    att = torch.cat([batch.prompt_mask.repeat(K, 1), torch.ones((K * B, G), dtype=batch.prompt_mask.dtype,
                                                                device=x.device)], dim=1)
    P = batch.prompt_ids.shape[1]
    out = []
    for s in range(0, K * B, chunk):
        logits = dlm.logits(x[s:s + chunk], att[s:s + chunk])[:, P:]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))   # bf16 up, float64 kept
        lp = torch.gather(F.log_softmax(logits, -1), -1, batch.completion.repeat(K, 1)[s:s + chunk, :, None])
        out.append(lp.squeeze(-1))
    return torch.cat(out).reshape(K, B, G) * masks


def elbo_samples(dlm, batch: ScoredBatch, draw: MaskDraw, chunk: int = 64) -> torch.Tensor:
    """Per-draw ELBO estimates [K, B]; a coupled pair's mean is one estimate."""
    lp = masked_token_logprobs(dlm, batch, draw.masks, chunk)
    return draw.weights.to(lp.dtype) * lp.sum(-1)


def elbo(dlm, batch: ScoredBatch, draw: MaskDraw, chunk: int = 64) -> torch.Tensor:
    """Monte-Carlo ELBO of log p(y|x) per row: [B]."""
    return elbo_samples(dlm, batch, draw, chunk).mean(0)


def normalized_logprob(dlm, batch: ScoredBatch, draw: MaskDraw, chunk: int = 64) -> torch.Tensor:
    """Per-token surrogate ELBO / L per row: [B]."""
    return elbo(dlm, batch, draw, chunk) / batch.lengths.clamp(min=1).to(torch.float32)


def left_to_right_logprob(dlm, batch: ScoredBatch, chunk: int = 64, per_token: bool = False) -> torch.Tensor:
    """Exact log p of decoding y left to right: token i given x, y_<i and masks after it. [B] or [B, G]."""
    B, G = batch.completion.shape
    pos = torch.arange(G, device=batch.completion.device)
    masks = (pos[None, :] >= pos[:, None])                      # row i masks positions >= i
    masks = masks[:, None, :].expand(G, B, G) & batch.valid[None]
    lp = masked_token_logprobs(dlm, batch, masks, chunk)        # [G, B, G]
    token_lp = lp[pos, :, pos].T                                # [B, G]: token i scored in draw i
    token_lp = token_lp * batch.valid
    return token_lp if per_token else token_lp.sum(-1)


def trace_steps(step_map: torch.Tensor, shrink: int = 1) -> torch.Tensor:
    """Merge every `shrink` consecutive decoding steps into one trace step (TraceRL's shrinkage s)."""
    return torch.div(step_map, shrink, rounding_mode="floor")


def trajectory_inputs(trace: torch.Tensor, valid: torch.Tensor):
    """For each (row, trace step k): the mask (tokens of step >= k) and the loss positions (step == k).

    Returns (rows [N], masks [N, G], targets [N, G]) over every trace step present in each row.
    """
    rows, masks, targets = [], [], []
    for b in range(trace.shape[0]):
        for k in torch.unique(trace[b][valid[b]]).tolist():
            rows.append(b)
            masks.append((trace[b] >= k) & valid[b])
            targets.append((trace[b] == k) & valid[b])
    return torch.tensor(rows, dtype=torch.long), torch.stack(masks), torch.stack(targets)


def trajectory_logprobs(dlm, batch: ScoredBatch, step_map: torch.Tensor, shrink: int = 1,
                        chunk: int = 64) -> torch.Tensor:
    """Per-token log-probs [B, G], each token scored at its own trace step's input."""
    trace = trace_steps(step_map.to(batch.completion.device), shrink)
    rows, masks, targets = trajectory_inputs(trace, batch.valid)
    sub = batch.index(rows.to(batch.completion.device))
    lp = masked_token_logprobs(dlm, sub, masks[None].to(batch.valid.device), chunk)[0] * targets
    out = torch.zeros(batch.completion.shape, dtype=lp.dtype, device=lp.device)
    return out.index_add(0, rows.to(lp.device), lp)
