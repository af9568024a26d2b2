"""Every score the methods put into a loss, and the one function that builds a masked input.

Inputs: `masked_input` is the only place a model input "prompt + completion window with a mask
applied" is built (ELBO draws, TraceRL's trace steps, TaBoM's time-delay cuts, d1's one-step and
SPG's block masks, which also mask prompt tokens, pre-training), and `scoring_input` the one every
score runs on. It dispatches on the family's attention pattern, so no method needs a special case:
full attention scores the masked sequence itself; a block-diffusion model (TraDo/SDAR, LLaDA2) scores
a noised copy of the answer's blocks appended to the clean sequence, every block conditioned on the
clean blocks before it and its own noised self (SDAR/TraDo training, dLLM-RL `train/rl_trado.py`;
docs/likelihood.md "Block-diffusion models"). `answer_blocks` tells which answer positions share a
block: positions in different blocks never see each other's noise, so one input can score a step of
every block at once (TraceRL's rounds, the left-to-right order).

Scores (which method uses which: docs/likelihood.md):
- `elbo` / `elbo_samples`: Monte-Carlo ELBO of log p(y|x) with the random-order estimator (l ~ U{1..L}
  positions masked, weight L/l; LLaDA `get_log_likelihood.py`), from the mask draws of `draw_masks`;
- `normalized_logprob`: the per-token surrogate ELBO/L;
- `left_to_right_logprob`: the exact log-probability of decoding y one token at a time, in order;
- `trace_logprobs`: per-token log-probs of each (trajectory, trace step) sample of `trace_samples`;
- `one_step_logprobs`: d1's one-step estimate (the whole completion masked, the prompt masked at
  random by `prompt_masks`; diffu-GRPO, wd1);
- `coupled_token_logprobs`: coupled-GRPO's per-token estimate from an all-masked and a complementary pair;
- `segment_token_logprobs`: d2's step-merged trajectory likelihood (`step_segments`);
- `block_elbo`: EBPO's block-level ELBO for full-attention models (`block_draws`);
- `bounded_token_logprobs`: any draws with one draw's activations alive in the backward (BGPO, EBPO, d2);
- `masked_token_logprobs` (optionally with entropies): the per-position log-probs all of the above
  sum, TaBoM's cross-entropy on its time-delay masks (`draw_cuts`, `td_masks`) and SPG's bounds on
  its block masks (`block_random_masks`). Its forwards take at most `dlm.score_rows` rows, and the
  output head runs at the scored positions only where the model allows (docs/memory.md).

Masks are drawn once and passed in, so policy, old policy and reference score the same masked inputs
(common random numbers). Scores carry gradients; wrap reference calls in `torch.no_grad()`.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F

from dlm_bench.models import masks as attention_masks


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


SCHEMES = ("paired", "independent", "espo", "espo_independent", "stratified", "stratified_paired")


def draw_masks(valid: torch.Tensor, n: int, gen: torch.Generator, scheme: str = "stratified_paired") -> MaskDraw:
    """n mask draws per row. Every scheme is unbiased for the same ELBO.

    - "independent": l ~ U{1..L}, a uniform subset of size l, weight L/l (LLaDA).
    - "paired": n/2 coupled pairs. Sizes are stratified (l and l + L/2 mod L, as LLaDA's
      systematic draw) and positions complementary: the first l of one random order, then the last
      l' of the same order (an exact complement when l + l' = L). Each half is marginally an
      independent-scheme draw, so the pair is unbiased and negatively correlated.
    - "espo": ESPO's exact complement: l ~ U{0..L} with weight (L+1)/l, the complement with weight
      (L+1)/(L-l). Faithful to ML-GSAI/ESPO: the sizes are stratified across the rows (one offset u per
      draw, row i of b gets floor((L+1) frac(u + i/b)), ESPO's `linspace` from a random offset, which
      rounds; the floor keeps each row's size exactly uniform). At short L its l = 0 and l = L draws
      make it far noisier (measured in docs/likelihood.md). "espo_independent": the same with an
      offset of its own per row (this harness's "espo" before it followed the recipe).
    - "stratified": the n sizes of a row spread evenly over {1..L}, as LLaDA's reference spreads
      them over its MC batch, but without its rounding: one u ~ U[0, 1) per row and
      l_k = floor(L (u + k) / n) + 1 for k = 0..n-1; each l_k has its own uniform subset, weight L/l_k.
      Draw k alone is not uniform, but the n draws together are: averaged over k, P(l_k = l) = 1/L
      for every l and any n (the reference's torch.round gives unequal counts when L/n is not an
      integer), so their mean is unbiased; any n >= 1, not coupled.
    - "stratified_paired" (default: the lowest variance, docs/likelihood.md): the same n stratified sizes, drawn as n/2 position-coupled pairs: pair k
      masks the first l_k and the last l_{k+n/2} positions of one random order (disjoint whenever
      l_k + l_{k+n/2} <= L). Each mask is marginally a uniform subset of its size, so the mean is
      unbiased; with n = 2 and even L it has the distribution of "paired".
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown mask scheme {scheme!r}; choose from {SCHEMES}")
    if scheme in ("paired", "espo", "espo_independent", "stratified_paired") and n % 2:
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
        if scheme == "espo":        # one offset per draw, spread over the rows (ESPO's linspace over the batch)
            u0 = torch.rand(1, generator=gen, dtype=torch.float64)
            u = torch.frac(u0 + torch.arange(len(Li), dtype=torch.float64) / max(1, len(Li)))
        else:
            u = torch.rand(Li.shape, generator=gen, dtype=torch.float64)
        keys = torch.rand(valid.shape, generator=gen, device="cpu").to(valid.device)
        ranks = keys.masked_fill(~valid, 2.0).argsort(-1).argsort(-1)  # a random order of valid positions
        if scheme in ("espo", "espo_independent"):
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


def masked_input(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion: torch.Tensor,
                 mask: torch.Tensor, mask_id: int, prompt_masked: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The model input for prompts [N, P] (left-padded) followed by completion windows [N, G] with the
    positions in `mask` [N, G] replaced by the mask token. The prompt is masked only where
    `prompt_masked` [N, P] says (d1's and SPG's random prompt masking; default: never).
    Returns (input ids [N, P + G], attention mask [N, P + G])."""
    if prompt_masked is not None:
        prompt_ids = torch.where(prompt_masked.to(prompt_ids.device), mask_id, prompt_ids)
    x = torch.cat([prompt_ids, torch.where(mask.to(completion.device), mask_id, completion)], dim=1)
    att = torch.cat([prompt_mask, torch.ones(completion.shape, dtype=prompt_mask.dtype, device=x.device)], dim=1)
    return x, att


@dataclass
class ScoringInput:
    """What one scoring forward takes: ids [N, W], a 2-D mask of real columns or a 4-D who-sees-whom mask
    [N, 1, W, W] with its position ids, and the column of the first answer position's score."""
    ids: torch.Tensor
    mask: torch.Tensor
    position_ids: torch.Tensor | None
    start: int

    @property
    def model_kw(self) -> dict:
        """What a forward takes besides ids and mask: the positions of a 4-D mask (none for a 2-D one)."""
        return {} if self.position_ids is None else {"position_ids": self.position_ids}

    def rows(self, sl: slice) -> "ScoringInput":
        pos = None if self.position_ids is None else self.position_ids[sl]
        return ScoringInput(self.ids[sl], self.mask[sl], pos, self.start)


def scoring_input(dlm, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion: torch.Tensor,
                  mask: torch.Tensor, prompt_masked: torch.Tensor | None = None) -> ScoringInput:
    """The input that scores completion windows [N, G] with `mask` [N, G] masked (and the prompt tokens in
    `prompt_masked` [N, P], d1's prompt masking). Full attention: `masked_input`, scores at columns P..P+G.
    Block-causal: the clean sequence, then a noised copy of the columns from P - (block - 1) on (the
    prompt's tail can share a block with the first answer tokens), with `models.masks.block_scoring`'s
    mask; scores at the copy's answer columns. The clean part carries the prompt noise too. A row's last
    block ends with the window (the sampler decodes it whole: docs/likelihood.md)."""
    x, att = masked_input(prompt_ids, prompt_mask, completion, mask, dlm.mask_id, prompt_masked)
    P, G = prompt_ids.shape[1], completion.shape[1]
    if not dlm.family.block_causal:
        return ScoringInput(x, att, None, P)
    lo = max(0, P - (dlm.block_size - 1))
    see, pos = attention_masks.block_scoring(att, P, lo, dlm.block_size)
    clean = torch.cat([x[:, :P], completion.to(x.device)], 1)
    return ScoringInput(torch.cat([clean, x[:, lo:]], 1), see, pos, P + G + (P - lo))


def answer_blocks(dlm, batch: "ScoredBatch") -> torch.Tensor | None:
    """Block index [B, G] of every answer position of a block-causal model (blocks counted from each row's
    first prompt token, as it decodes and as `scoring_input` scores); None under full attention."""
    if not dlm.family.block_causal:
        return None
    G = batch.completion.shape[1]
    plen = batch.prompt_mask.long().sum(-1, keepdim=True)
    return (plen + torch.arange(G, device=plen.device)[None, :]) // dlm.block_size


class Guided:
    """A model with unsupervised classifier-free guidance on its logits, for likelihoods (LLaDA's
    `get_log_likelihood.py`, `get_logits`): the unconditional copy masks the first `prompt_len`
    columns' real prompt tokens, and logits = uncond + (scale + 1) (cond - uncond). The head-only
    scoring path is off: guidance needs the full logits of both passes."""

    def __init__(self, dlm, prompt_len: int, scale: float):
        self._dlm, self._P, self._scale = dlm, int(prompt_len), float(scale)

    def __getattr__(self, name):
        return getattr(self._dlm, name)

    def logits_head(self):
        return None

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids=None) -> torch.Tensor:
        if position_ids is not None:
            raise ValueError("classifier-free guidance is for full-attention models (2-D masks)")
        from dlm_bench.sampler import guided_logits       # the sampler's CFG, on scoring inputs
        att = torch.ones_like(x) if attention_mask is None else attention_mask
        return guided_logits(self._dlm, x, att, self._P, self._scale)


def masked_token_logprobs(dlm, batch: ScoredBatch, masks: torch.Tensor, chunk: int = 64,
                          entropy: bool = False, prompt_masked: torch.Tensor | None = None,
                          scored: torch.Tensor | None = None):
    """log p(y_i | x, y with `masks` masked) at every scored position: [K, B, G] (zero elsewhere).
    With `entropy`, also the predictive entropy there: ([K, B, G], [K, B, G]). `prompt_masked`
    [K, B, P] masks those prompt tokens too; `scored` [K, B, G] (default: `masks`) are the positions
    scored, e.g. a masked window's positions before its end-of-text.

    Forward passes take `chunk` rows at a time (at most `dlm.score_rows`). Where the model allows
    (`dlm.logits_head()`), the head is applied only at the scored positions (`_head_scores`);
    otherwise each chunk's full logits are upcast for the log-softmax (the tiny model's default,
    bit-identical to earlier releases)."""
    K, B, G = masks.shape
    flat = masks.reshape(K * B, G)
    keep = flat if scored is None else scored.reshape(K * B, G)
    pm = None if prompt_masked is None else prompt_masked.reshape(K * B, -1)
    inp = scoring_input(dlm, batch.prompt_ids.repeat(K, 1), batch.prompt_mask.repeat(K, 1),
                        batch.completion.repeat(K, 1), flat, pm)
    targets = batch.completion.repeat(K, 1)
    chunk = min(chunk, dlm.score_rows) if dlm.score_rows else chunk
    head = dlm.logits_head()
    out, ents = [], []
    for s in range(0, K * B, chunk):
        part = inp.rows(slice(s, s + chunk))
        if head is not None:
            lp, ent = _gathered(dlm, head, part, keep[s:s + chunk], targets[s:s + chunk], entropy)
            out.append(lp)
            ents.append(ent)
            continue
        logits = dlm.logits(part.ids, part.mask, **part.model_kw)[:, part.start:part.start + G]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))   # bf16 up, float64 kept
        logp = F.log_softmax(logits, -1)
        out.append(torch.gather(logp, -1, targets[s:s + chunk, :, None]).squeeze(-1))
        if entropy:
            ents.append(-(logp.exp() * logp).sum(-1))
    keep = keep.reshape(K, B, G)
    lp = torch.cat(out).reshape(K, B, G) * keep
    return (lp, torch.cat(ents).reshape(K, B, G) * keep) if entropy else lp


HEAD_CHUNK_BYTES = 64 * 2 ** 20   # fp32 logits per head application (126k vocab: 132 positions), recomputed in backward


def _gathered(dlm, head, part: ScoringInput, mask, targets, entropy: bool):
    """Log-probs (and entropies) [n, G] at the positions `mask` of one forward chunk, from the last
    hidden states at those positions only (a shifted model scores token i from state i - 1)."""
    h = dlm.hidden(part.ids, part.mask, **part.model_kw)
    rows, cols = mask.nonzero(as_tuple=True)
    src = (part.start + cols - 1).clamp(min=0) if dlm.shift_logits else part.start + cols
    states, tgt = h[rows, src], targets[rows, cols]
    n = max(1, HEAD_CHUNK_BYTES // (4 * dlm.model.get_output_embeddings().weight.shape[0]))
    parts = [_head_scores(head, states[i:i + n], tgt[i:i + n], entropy) for i in range(0, len(tgt), n)]
    dtype = torch.promote_types(h.dtype, torch.float32)
    lp_vals = torch.cat([p[0] for p in parts]) if parts else h.new_zeros(0, dtype=dtype)
    lp = torch.zeros(mask.shape, dtype=dtype, device=h.device).index_put((rows, cols), lp_vals)
    if not entropy:
        return lp, None
    ent_vals = torch.cat([p[1] for p in parts]) if parts else h.new_zeros(0, dtype=dtype)
    return lp, torch.zeros(mask.shape, dtype=dtype, device=h.device).index_put((rows, cols), ent_vals)


def _head_scores(head, states, tgt, entropy: bool):
    """Head + log-softmax on [n, H] states. Under autograd the [n, V] logits are recomputed in the
    backward pass (torch checkpoint), so only the states are kept between forward and backward."""
    def score(st):
        logits = head(st)
        logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
        lp = torch.gather(logp, -1, tgt[:, None]).squeeze(-1)
        return (lp, -(logp.exp() * logp).sum(-1)) if entropy else (lp, lp)
    if torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint
        return checkpoint(score, states, use_reentrant=False)
    return score(states)


def elbo_samples(dlm, batch: ScoredBatch, draw: MaskDraw, chunk: int = 64) -> torch.Tensor:
    """Per-draw ELBO estimates [K, B]; a coupled pair's mean is one estimate."""
    lp = masked_token_logprobs(dlm, batch, draw.masks, chunk)
    return draw.weights.to(lp.dtype) * lp.sum(-1)


def elbo(dlm, batch: ScoredBatch, draw: MaskDraw, chunk: int = 64) -> torch.Tensor:
    """Monte-Carlo ELBO of log p(y|x) per row: [B]."""
    return elbo_samples(dlm, batch, draw, chunk).mean(0)


def normalized_logprob(dlm, batch: ScoredBatch, draw: MaskDraw, chunk: int = 64) -> torch.Tensor:
    """Per-token surrogate ELBO / L per row: [B] (TraFL's default score)."""
    e = elbo(dlm, batch, draw, chunk)
    return e / batch.lengths.clamp(min=1).to(e.dtype)


def left_to_right_logprob(dlm, batch: ScoredBatch, chunk: int = 64, per_token: bool = False) -> torch.Tensor:
    """Exact log p of decoding y left to right: token i given x, y_<i and masks after it. [B] or [B, G].
    Draw r masks the positions from the r-th on of every independent group of positions (the whole
    answer under full attention: G draws; each block of a block-causal model: one draw per block offset,
    which is its `sequential` decoding with one token per step)."""
    B, G = batch.completion.shape
    pos = torch.arange(G, device=batch.completion.device)[None, :].expand(B, G)
    blocks = answer_blocks(dlm, batch)
    order = pos if blocks is None else pos - _first_of_group(blocks)
    R = int(order.max()) + 1 if G else 0
    rounds = torch.arange(R, device=pos.device)[:, None, None]
    masks = (order[None] >= rounds) & batch.valid[None]          # [R, B, G]
    lp = masked_token_logprobs(dlm, batch, masks, chunk)
    token_lp = (lp * (order[None] == rounds)).sum(0) * batch.valid
    return token_lp if per_token else token_lp.sum(-1)


def _first_of_group(groups: torch.Tensor) -> torch.Tensor:
    """[B, G]: the column of the first position with the same (non-decreasing) group id in each row."""
    G = groups.shape[1]
    new = torch.ones_like(groups, dtype=torch.bool)
    new[:, 1:] = groups[:, 1:] != groups[:, :-1]
    cols = torch.arange(G, device=groups.device)[None, :].expand_as(groups)
    return torch.where(new, cols, torch.zeros_like(cols)).cummax(-1).values


# ----------------------------------------------------------------------------- bounded draws, coupled pairs, block ELBO

def bounded_token_logprobs(dlm, batch: ScoredBatch, masks: torch.Tensor, chunk: int = 64,
                           prompt_masked: torch.Tensor | None = None, scored: torch.Tensor | None = None):
    """`masked_token_logprobs` [K, B, G] with at most one draw's activations alive in the backward.

    Under autograd each draw's forward runs inside `torch.utils.checkpoint` (non-reentrant): the
    forward keeps only its inputs and the backward recomputes the draws one at a time, so memory does
    not grow with K. Values and gradients equal the plain call's (tests/test_bgpo.py), for any loss of
    the draws; the price is one more forward per draw. This is BGPO's memory bound (DARE backwards each
    Monte-Carlo draw on its own, `llada_dp_actor_bgpo.update_policy`) and EBPO's replay (DARE
    `ebpo_actor_mixin`: a no-grad pass over all draws, then one draw at a time with the loss's
    gradient); without autograd it is the plain call."""
    if not torch.is_grad_enabled():
        return masked_token_logprobs(dlm, batch, masks, chunk, prompt_masked=prompt_masked, scored=scored)
    from torch.utils.checkpoint import checkpoint

    def one(k: int) -> torch.Tensor:
        pm = None if prompt_masked is None else prompt_masked[k:k + 1]
        sc = None if scored is None else scored[k:k + 1]
        return masked_token_logprobs(dlm, batch, masks[k:k + 1], chunk, prompt_masked=pm, scored=sc)[0]
    return torch.stack([checkpoint(one, k, use_reentrant=False) for k in range(masks.shape[0])])


def coupled_masks(valid: torch.Tensor, gen: torch.Generator, low: float = 0.2, high: float = 0.8):
    """coupled-GRPO's draws (apple/ml-diffucoder `coupled_grpo.py` `forward_process`): one t ~ U(low, high)
    for the rows drawn together; draw 0 masks every valid position, draw 1 each valid position
    independently with probability t, draw 2 exactly the valid positions draw 1 left clean.
    Returns (masks [3, B, G], t)."""
    t = low + (high - low) * float(torch.rand((), generator=gen, dtype=torch.float64))
    u = torch.rand(valid.shape, generator=gen, dtype=torch.float64).to(valid.device)
    part = (u < t) & valid
    return torch.stack([valid, part, valid & ~part]), t


def coupled_token_logprobs(dlm, batch: ScoredBatch, masks: torch.Tensor, t: float, chunk: int = 64) -> torch.Tensor:
    """coupled-GRPO's per-token estimate [B, G] (DiffuCoder `selective_log_softmax`):
    (log p(y_i | x, all masked) + w_i log p(y_i | x, y with the partial draw that masks i masked)) / 2,
    w_i = 1/t under draw 1 and 1/(1 - t) under draw 2: each valid position is scored exactly once by
    the pair (zero outside the valid positions)."""
    lp = masked_token_logprobs(dlm, batch, masks, chunk)
    return (lp[0] + lp[1] / t + lp[2] / (1 - t)) / 2


@dataclass
class BlockDraw:
    """EBPO draws: draw j * blocks + b is timestep j of block b (merged: draw j holds every block)."""
    inputs: torch.Tensor          # [K, B, G] positions masked in the model input
    targets: torch.Tensor         # [K, B, G] positions scored (the masked ones of block b)
    weights: torch.Tensor         # [K, B] block length / masked count (0 for an empty block); merged: [K, B, G]
    timesteps: int                # n; K = n * blocks (merged: K = n)


def block_draws(valid: torch.Tensor, block_length: int, n: int, gen: torch.Generator,
                block_of: torch.Tensor | None = None, merged: bool = False) -> BlockDraw:
    """EBPO's block-level ELBO (LLaDA2.1 report, Eq. 4; DARE `_forward_process_ebpo`) for a model that
    attends to the whole window (LLaDA, Dream), decoded in semi-autoregressive blocks: the draw of block b
    at timestep j keeps the blocks before b clean, masks every later valid position (they are still
    masked when LLaDA's sampler decodes block b) and l = min(floor(t len_b) + 1, len_b) random positions
    of block b, weight len_b / l. A block-causal model gets all blocks of a timestep from one forward; a
    full-attention one needs a forward per block. The n * blocks levels t of a row are stratified as
    DARE's: t = frac(u + (j * blocks + b) / (n * blocks)) from one u ~ U[0, 1), so each block's t is
    uniform and its l uniform on {1..len_b}: the sum over blocks is unbiased for sum_b ELBO(y_b | x, y_<b).
    `block_of` [B, G]: each position's block, counted from 0 in every row (a block-causal model's blocks,
    which start at the prompt: `answer_blocks`); default: blocks of `block_length` from the window start.
    `merged` (block-causal models, whose blocks never see each other's noise): the blocks of a timestep in
    one draw with per-position weights, one forward per timestep as DARE's, the same draws and values."""
    B, G = valid.shape
    if block_of is None:
        block_of = (torch.arange(G, device=valid.device) // block_length)[None]
    nb = int(block_of.max()) + 1 if G else 0
    u = torch.rand(B, generator=gen, dtype=torch.float64)
    inputs, targets, weights = [], [], []
    for j in range(n):
        for b in range(nb):
            t = torch.frac(u + (j * nb + b) / (n * nb))
            in_b = valid & (block_of == b)
            len_b = in_b.sum(-1).cpu()
            size = torch.minimum(torch.floor(t * len_b).long() + 1, len_b)
            keys = torch.rand((B, G), generator=gen).to(valid.device)
            ranks = keys.masked_fill(~in_b, 2.0).argsort(-1).argsort(-1)
            tgt = ranks < size.to(valid.device)[:, None]
            inputs.append(tgt | (valid & (block_of > b)))
            targets.append(tgt)
            weights.append(torch.where(size > 0, len_b / size.clamp(min=1), 0.0).to(torch.float64))
    inputs, targets, weights = torch.stack(inputs), torch.stack(targets), torch.stack(weights).to(valid.device)
    if merged:
        targets = targets.reshape(n, nb, B, G)
        weights = (weights.reshape(n, nb, B)[..., None] * targets).sum(1)
        targets = inputs = targets.any(1)
    return BlockDraw(inputs, targets, weights, n)


def block_elbo(dlm, batch: ScoredBatch, draw: BlockDraw, chunk: int = 64, bounded: bool = False) -> torch.Tensor:
    """EBPO's composite ELBO per row [B]: the mean over timesteps of the sum over blocks of each block's
    weighted masked log-likelihood (DARE `compute_ebpo_composite_elbo` with uniform timestep weights).
    `bounded`: one draw's activations alive at a time (`bounded_token_logprobs`)."""
    score = bounded_token_logprobs if bounded else masked_token_logprobs
    lp = score(dlm, batch, draw.inputs, chunk, scored=draw.targets)
    w = draw.weights.to(lp.dtype)
    per = (w * lp).sum(-1) if w.dim() == 3 else w * lp.sum(-1)         # [K, B]
    return per.reshape(draw.timesteps, -1, per.shape[-1]).sum(1).mean(0)


# ----------------------------------------------------------------------------- decoding trajectories

def collapse_steps(step_map: torch.Tensor, valid: torch.Tensor, shrink: int = 1,
                   blocks: torch.Tensor | None = None) -> torch.Tensor:
    """Trace step of every token: the dense rank of its decoding step among the row's distinct steps,
    // shrink (TraceRL's shrinkage s; dLLM-RL `collapse_k_unique`). With `blocks` [B, G] (a block-causal
    model, `answer_blocks`), ranks count within each block instead (dLLM-RL `rl_trado.py` collapses and
    ranks per block: its "rounds"). Trace steps are 0..K-1; -1 where not valid or never decoded (step < 0)."""
    if shrink < 1:
        raise ValueError(f"shrink must be >= 1, got {shrink}")
    ok = valid.bool() & (step_map >= 0)
    out = torch.full_like(step_map, -1)
    span = int(step_map.max()) + 2 if step_map.numel() else 1
    key = step_map if blocks is None else blocks.to(step_map) * span + step_map
    for b in range(step_map.shape[0]):
        if ok[b].any():
            uniq = torch.unique(key[b][ok[b]])
            rank = torch.searchsorted(uniq, key[b].contiguous())
            if blocks is not None:       # minus the rank of the block's first step
                first = torch.searchsorted(uniq, torch.div(uniq, span, rounding_mode="floor") * span)
                rank = rank - first[rank.clamp(max=len(uniq) - 1)]
            out[b] = torch.where(ok[b], torch.div(rank, shrink, rounding_mode="floor"), out[b])
    return out


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


def trace_samples(step_map: torch.Tensor, valid: torch.Tensor, shrink: int, blocks: torch.Tensor | None = None):
    """TraceRL's (trajectory, trace step) samples: (rows [R], step index k [R], masks [R, G], targets [R, G]).
    masks: tokens of trace step >= k (the input masks them again); targets: tokens of step k. With
    `blocks` (block-causal), step k of every block at once: each block is scored given the clean blocks
    before it, so sample k holds the k-th step of each block (dLLM-RL `rl_trado.py` `one_round_vectorized`)."""
    trace = collapse_steps(step_map, valid, shrink, blocks)
    ok = trace >= 0
    rows, masks, targets = trajectory_inputs(trace, ok)
    k = torch.stack([trace[r][t].max() for r, t in zip(rows.tolist(), targets)]) if len(rows) else rows
    return rows, k, masks, targets


def trace_logprobs(dlm, batch: ScoredBatch, rows: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor,
                   chunk: int = 64) -> torch.Tensor:
    """Log-probs [R, G] of each sample's target tokens (zero elsewhere), given its own masked input:
    sample r is row rows[r] of `batch` with masks[r] masked."""
    sub = batch.index(rows)
    return masked_token_logprobs(dlm, sub, masks[None], chunk)[0] * targets


def step_segments(step_map: torch.Tensor, steps: int, n: int) -> torch.Tensor:
    """d2-StepMerge's segment of every window token [B, G]: the decoding steps 0..steps-1 cut into n
    segments where d2 cuts them (kuleshov-group/d2 `d2StepMergeTrainer.generate`: a new segment starts
    after step int(k * steps / n), k = 1..n-1); -1 where the token was never decoded (step < 0)."""
    bounds = torch.tensor([int(k * (steps / n)) for k in range(1, n)], dtype=torch.long, device=step_map.device)
    seg = torch.searchsorted(bounds, step_map.contiguous(), right=True)
    return torch.where(step_map >= 0, seg, torch.full_like(seg, -1))


def segment_token_logprobs(dlm, batch: ScoredBatch, seg: torch.Tensor, n: int, scored: torch.Tensor,
                           prompt_masked: torch.Tensor | None = None, chunk: int = 64,
                           bounded: bool = True) -> torch.Tensor:
    """Each scored token's log-probability at the state its segment started from [B, G] (zero elsewhere):
    log p(y_i | x, the tokens of earlier segments, every other valid token masked), d2's trajectory likelihood
    (`_get_per_token_logps`: the trajectory state at the segment's start is the input, the segment's tokens
    the targets). n segments of one step each give the exact log-probability of the decoding order
    (`left_to_right_logprob` when that order is left to right). One forward per segment that holds a
    scored token; `prompt_masked` [B, P] masks prompt tokens in all of them (d2's p_mask_prompt);
    `bounded`: one segment's activations alive at a time (`bounded_token_logprobs`)."""
    k = torch.arange(n, device=seg.device)[:, None, None]
    targets = (seg[None] == k) & scored[None]
    used = targets.flatten(1).any(1).nonzero().flatten()
    if used.numel() == 0:
        return torch.zeros(seg.shape, device=seg.device)
    inputs = (((seg[None] >= k) | (seg[None] < 0)) & batch.valid[None])[used]
    pm = None if prompt_masked is None else prompt_masked[None].expand(len(used), -1, -1)
    score = bounded_token_logprobs if bounded else masked_token_logprobs
    return score(dlm, batch, inputs, chunk, prompt_masked=pm, scored=targets[used]).sum(0)


# ----------------------------------------------------------------------------- time-delay masks (TaBoM)

def draw_cuts(step_map: torch.Tensor, valid: torch.Tensor, window: int, gen: torch.Generator) -> torch.Tensor:
    """c ~ U{0 .. max(s_max - window, 0)} per row (TaBoM train_tabom.py `random.randint(0, s_max - M)`)."""
    ok = valid.bool() & (step_map >= 0)
    s_max = torch.where(ok, step_map, torch.full_like(step_map, -1)).max(-1).values.clamp(min=0)
    upper = (s_max - window).clamp(min=0).cpu()
    u = torch.rand(upper.shape, generator=gen, dtype=torch.float64)
    return torch.floor(u * (upper + 1)).long().clamp(max=upper).to(step_map.device)


def td_masks(step_map: torch.Tensor, valid: torch.Tensor, cut: torch.Tensor, window: int):
    """The time-delay masks for cuts [B]: (input masks = decoded at step >= cut, supervised = masked
    and decoded before cut + window; window 0 = every masked token)."""
    ok = valid.bool() & (step_map >= 0)
    masked = ok & (step_map >= cut[:, None])
    sup = masked & (step_map < cut[:, None] + window) if window > 0 else masked
    return masked, sup


# ----------------------------------------------------------------------------- one-step and block masks (d1, SPG)

def prompt_masks(batch: ScoredBatch, p: float, seed: int, draws: int = 1) -> torch.Tensor:
    """[draws, N, P] bool: each real prompt token masked independently with probability p (CPU
    generator seeded by `seed`, so the masks do not depend on device or batching)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand((draws, *batch.prompt_ids.shape), generator=gen).to(batch.prompt_ids.device)
    return (u < p) & batch.prompt_mask.bool()[None]


def one_step_logprobs(dlm, batch: ScoredBatch, prompt_mask: torch.Tensor, scored: torch.Tensor | None = None,
                      chunk: int = 64) -> torch.Tensor:
    """d1's one-step mean-field estimate [N, G]: log p(y_k | x with `prompt_mask` [N, P] masked, the
    whole completion masked) at the positions `scored` [N, G] (default: all; zero elsewhere)."""
    every = torch.ones_like(batch.completion, dtype=torch.bool)[None]
    return masked_token_logprobs(dlm, batch, every, chunk, prompt_masked=prompt_mask[None],
                                 scored=None if scored is None else scored[None])[0]


def block_random_masks(batch: ScoredBatch, scored: torch.Tensor, block_len: int, m: int, p_clean: float,
                       min_t: float, max_t: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SPG's block_random masks (`forward_process`): (prompt masks [m, N, P], completion masks [m, N, G]),
    from a CPU generator seeded by `seed`. Per draw j of row i a block of the scored span (the j-th of a
    random permutation of the window's blocks, modulo the row's own block count): blocks before it
    stay clean, later positions are masked, and inside it k ~ U{max(1, floor(n min_t))..floor(n max_t)}
    of its n positions; clean tokens (prompt, earlier blocks) are then masked with probability
    `p_clean`, positions outside `scored` always."""
    gen = torch.Generator().manual_seed(seed)
    N, G = batch.completion.shape
    nb = math.ceil(G / block_len)
    lens = scored.sum(-1).cpu().tolist()
    comp = torch.zeros(m, N, G, dtype=torch.bool)
    clean = torch.zeros(m, N, G, dtype=torch.bool)       # the blocks before the chosen one
    for i in range(N):
        if lens[i] == 0:
            continue
        own = math.ceil(lens[i] / block_len)
        order = torch.randperm(nb, generator=gen)
        for j in range(m):
            start = int(order[j % nb]) % own * block_len
            n = min(block_len, lens[i] - start)
            lo, hi = max(int(n * min_t), 1), min(int(n * max_t), n)
            k = int(torch.randint(lo, hi + 1, (), generator=gen))
            comp[j, i, start + n:] = True                  # every later position
            comp[j, i, start + torch.randperm(n, generator=gen)[:k]] = True
            clean[j, i, :start] = True
    u_p = torch.rand((m, *batch.prompt_ids.shape), generator=gen)
    u_c = torch.rand((m, N, G), generator=gen)
    dev = batch.completion.device
    # clean tokens masked with probability p; positions outside the scored span always masked
    comp = comp.to(dev) | (clean & (u_c < p_clean)).to(dev) | ~scored[None]
    prompt = (u_p.to(dev) < p_clean) & batch.prompt_mask.bool()[None]
    return prompt, comp
