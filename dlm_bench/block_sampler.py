"""Block-diffusion decoding (SDAR/TraDo, LLaDA2): blocks denoised in order against a cache of the
finished ones. `sampler.sample` dispatches here for families with block-causal attention.

The references, whose tokens this reproduces at batch 1 (tests/test_block_models.py runs them side by side):
- TraDo/SDAR: Gen-Verse/dLLM-RL `generate.py::block_diffusion_generate` (= JetAstra/SDAR's);
- LLaDA2: `LLaDA2MoeModelLM.generate` in the hub's modelling file, and ZHZisZZ/dllm's LLaDA2 sampler.
Both place the prompt at position 0 and cut the sequence into blocks from there: the prompt's whole
blocks are prefilled, and the first block to decode holds the prompt's last tokens and the first
masks. A block's step samples every position of the block, then commits masked positions:

| setting                                   | strategy                                   | reference name           |
|-------------------------------------------|--------------------------------------------|--------------------------|
| `remasking=low_confidence`, no threshold  | the k most confident (k from the schedule) | `low_confidence_static`  |
| `remasking=low_confidence`, `threshold=t` | all above t, at least the k most confident | `low_confidence_dynamic`; LLaDA2's threshold decoding |
| `remasking=sequential`                    | the next k masked positions, left to right | `sequential`             |

k = the schedule's count for this step: `block_length` tokens spread evenly over the block's steps
(`steps / (gen_length / block_length)`), the remainder first. Candidates: argmax of the softmax at
T = 0 (dllm's LLaDA2 sampler), else a multinomial draw from softmax(logits / T); the confidence is the
candidate's probability under that distribution.

Differences from the references, none at their default settings:
- Every row has its own generator (`make_generators`), consumed as the reference consumes the global
  RNG at batch 1; rows are laid out so that blocks are counted from each row's own first token (left
  padding is a whole number of blocks), so a row decodes the same in any batch.
- k never exceeds the masked positions left: TraDo's code then picks positions that are not masked
  and overwrites them (prompt tokens in the first block) with fresh samples. This needs fewer steps
  per block than tokens (`steps < gen_length`) and either the threshold or a prompt ending inside a
  block; LLaDA2's code clamps k as here.
- The answer window is `gen_length` tokens. The references decode the last block to its end
  (up to `block_length - 1` tokens more); LLaDA2's returns only `gen_length`, as here.
- LLaDA2's hub `generate(temperature=0)` does not decode greedily: it draws from softmax(logits)
  (it only divides by T when T > 0), which is `temperature=1` here.
- A row stops after a finished block holds a stop token (as both references stop); the rest of its
  window is filled with end-of-text. Records: the step at which each token was unmasked (`step_map`)
  and the denoising passes (`nfe`; the prefill and the one pass that stores a finished block's keys
  are not counted, as each touches a block once).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlm_bench.errors import UserError
from dlm_bench.models import kv_cache
from dlm_bench.models.block_kv import FinishedBlocks, block_forward


def check(cfg, family) -> None:
    """Refuse, in one line, settings that do not apply to block-diffusion decoding."""
    name = family.name
    if cfg.cache != "none":
        raise UserError(kv_cache.refusal(cfg.cache, family.model_types[0]))
    if cfg.remasking == "random":
        raise UserError(f"remasking=random: block-diffusion decoding ({name}) has low_confidence "
                        f"(with or without --threshold) and sequential")
    for flag, value, default in (("cfg_scale", cfg.cfg_scale, 0.0), ("noise_dtype", cfg.noise_dtype, "float64"),
                                 ("confidence_eos_eot_inf", cfg.confidence_eos_eot_inf, False)):
        if value != default:
            raise UserError(f"{flag}={value}: not available for block-diffusion models ({name}); its samplers "
                            f"draw by multinomial without guidance")


def transfer_counts(block_length: int, steps: int) -> list[int]:
    """Tokens to commit at each step of a block (the references' `get_num_transfer_tokens`)."""
    base, rem = divmod(block_length, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


@dataclass
class Layout:
    """The batch laid out for decoding: blocks are counted from each row's first real column."""
    x: torch.Tensor          # [B, W] pads, prompts, then mask tokens
    att: torch.Tensor        # [B, W] 1 at real columns
    start: list[int]         # first column of each row's answer window
    first: int               # index of the first block that holds masks (the same for every row)
    blocks: list[int]        # blocks each row decodes


def layout(dlm, prompts: list[list[int]], gen_length: int, bl: int) -> Layout:
    """Row i has len(p) // bl whole prompt blocks, left-padded by whole blocks to the longest; its first
    block to decode holds the rest of its prompt, then masks (as at batch 1 in the references)."""
    whole = [len(p) // bl for p in prompts]
    first = max(whole)
    blocks = [math.ceil((len(p) % bl + gen_length) / bl) for p in prompts]
    width = (first + max(blocks)) * bl
    x = torch.full((len(prompts), width), dlm.mask_id, dtype=torch.long)
    att = torch.ones_like(x)
    start = []
    for i, p in enumerate(prompts):
        pad = (first - whole[i]) * bl
        x[i, :pad], att[i, :pad] = dlm.pad_id, 0
        x[i, pad:pad + len(p)] = torch.tensor(p, dtype=torch.long)
        start.append(pad + len(p))
    return Layout(x.to(dlm.device), att.to(dlm.device), start, first, blocks)


@dataclass
class Records:
    step_map: torch.Tensor   # [B, W] step (per row, 0-based) at which each column was committed; -1 never
    nfe: torch.Tensor        # [B] denoising passes per row
    steps: torch.Tensor      # [B] denoising steps each row has taken
    done: torch.Tensor       # [B] stopped at a stop token


def propose(logits: torch.Tensor, temperature: float, gens) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates [n, L] and their probabilities: argmax at T = 0, else one multinomial draw per
    position from softmax(logits / T), row j from gens[j]."""
    if temperature == 0:
        probs = F.softmax(logits, dim=-1)
        x0 = probs.argmax(-1)
    else:
        probs = F.softmax(logits / temperature, dim=-1)
        x0 = torch.stack([torch.multinomial(probs[j], num_samples=1, generator=g).squeeze(-1)
                          for j, g in enumerate(gens)])
    return x0, torch.gather(probs, -1, x0[..., None]).squeeze(-1)


def transfer(prob: torch.Tensor, masked: torch.Tensor, k: int, cfg) -> torch.Tensor:
    """Which positions of one row's block [L] to commit this step (see the module's table)."""
    out = torch.zeros_like(masked)
    n = int(masked.sum())
    if cfg.remasking == "sequential":
        first = int(masked.nonzero()[0])
        out[first:first + k] = True
        return out & masked
    conf = torch.where(masked, prob, torch.full_like(prob, -torch.inf))
    if cfg.threshold is not None:
        high = conf > cfg.threshold
        if int(high.sum()) >= k:
            return high
    out[torch.topk(conf, k=min(k, n)).indices] = True
    return out


_NOTED: set = set()


def note_block_length(dlm, block_length: int) -> None:
    """Say once when a model decodes with blocks of another size than its own (allowed: TraceRL adapts
    block sizes, and the references take any block length)."""
    key = (dlm.path, block_length)
    if dlm.block_size and block_length != dlm.block_size and key not in _NOTED:
        _NOTED.add(key)
        print(f"note: {dlm.family.name} model {dlm.path} has block size {dlm.block_size}; decoding with "
              f"block_length {block_length} (--block-length {dlm.block_size} for its own)", file=sys.stderr)


@torch.no_grad()
def decode(dlm, prompts: list[list[int]], cfg, gens, progress=None):
    """Tokens [B, gen_length], step map [B, gen_length] and NFE [B] of a resolved SamplerConfig."""
    note_block_length(dlm, cfg.block_length)
    lengths = [len(p) for p in prompts]
    if cfg.block_length == 1 and dlm.family.kv_cache == "store_kv" and len(set(lengths)) > 1:
        # SDAR runs one-token passes over a cache through flash_attn_func, which takes no mask: rows
        # of one prompt length (no padding) decode together.
        out = [torch.zeros((len(prompts), cfg.gen_length), dtype=torch.long) for _ in range(2)]
        out.append(torch.zeros(len(prompts), dtype=torch.long))
        for n in sorted(set(lengths)):
            idx = [i for i, m in enumerate(lengths) if m == n]
            for whole, part in zip(out, decode(dlm, [prompts[i] for i in idx], cfg, [gens[i] for i in idx], progress)):
                whole[idx] = part
        return tuple(out)
    return decode_batch(dlm, prompts, cfg, gens, progress)


def decode_batch(dlm, prompts: list[list[int]], cfg, gens, progress=None):
    """`decode` for a batch whose rows can share passes (left padding by whole blocks)."""
    bl, G = cfg.block_length, cfg.gen_length
    lay = layout(dlm, prompts, G, bl)
    B, W = lay.x.shape
    dev = lay.x.device
    rec = Records(torch.full((B, W), -1, dtype=torch.long, device=dev), torch.zeros(B, dtype=torch.long, device=dev),
                  torch.zeros(B, dtype=torch.long, device=dev), torch.zeros(B, dtype=torch.bool, device=dev))
    cache = FinishedBlocks(B, W)
    if lay.first:               # the prompts' whole blocks
        cols = lay.first * bl
        block_forward(dlm, cache, lay.x[:, :cols], lay.att[:, :cols], slice(None), 0, bl, store=True)
    counts = transfer_counts(bl, cfg.steps // (G // bl))
    done_steps = 0
    for b in range(max(lay.blocks)):
        lo = (lay.first + b) * bl
        rows = torch.tensor([i for i in range(B) if not rec.done[i] and b < lay.blocks[i]], dtype=torch.long,
                            device=dev)
        if not rows.numel():
            break
        done_steps = denoise_block(dlm, cache, lay, rows, lo, counts, cfg, gens, rec, done_steps, progress)
        which = slice(None) if rows.numel() == B else rows
        block_forward(dlm, cache, lay.x[rows, lo:lo + bl], lay.att[rows, :lo + bl], which, lo, bl, store=True)
        if cfg.stop_at_eos:
            stop_finished(dlm, lay, rows, lo + bl, G, rec)
    window = torch.stack([torch.arange(s, s + G, device=dev) for s in lay.start])
    return (lay.x.gather(1, window).cpu(), rec.step_map.gather(1, window).cpu(), rec.nfe.cpu())


def denoise_block(dlm, cache, lay, rows, lo, counts, cfg, gens, rec, total, progress) -> int:
    """Denoise columns [lo, lo + block) of `rows` until none is masked; returns the running step count."""
    bl, mask_id, B = cfg.block_length, dlm.mask_id, lay.x.shape[0]
    for k in counts:
        act = rows[(lay.x[rows, lo:lo + bl] == mask_id).any(-1)]
        if not act.numel():
            break
        which = slice(None) if act.numel() == B else act
        logits = block_forward(dlm, cache, lay.x[act, lo:lo + bl], lay.att[act, :lo + bl], which, lo, bl,
                               store=False)
        if cfg.logits_eos_inf:
            logits[..., dlm.eos_id] = -torch.inf
        x0, prob = propose(logits, cfg.temperature, [gens[i] for i in act.tolist()])
        for j, i in enumerate(act.tolist()):
            current = lay.x[i, lo:lo + bl]
            commit = transfer(prob[j], current == mask_id, k, cfg)
            lay.x[i, lo:lo + bl] = torch.where(commit, x0[j], current)
            rec.step_map[i, lo:lo + bl] = torch.where(commit, rec.steps[i], rec.step_map[i, lo:lo + bl])
        rec.nfe[act] += 1
        rec.steps[act] += 1
        total += 1
        if progress is not None:
            progress(total)
    return total


def stop_finished(dlm, lay, rows, hi: int, gen_length: int, rec) -> None:
    """Rows whose answer so far holds a stop token are done: their undecoded window becomes end-of-text."""
    stops = torch.tensor(sorted(dlm.stops()), device=lay.x.device)
    for i in rows.tolist():
        s = lay.start[i]
        if bool(torch.isin(lay.x[i, s:hi], stops).any()):
            rec.done[i] = True
            win = lay.x[i, s:s + gen_length]
            undecided = win == dlm.mask_id
            lay.x[i, s:s + gen_length] = torch.where(undecided, dlm.eos_id, win)
            sm = rec.step_map[i, s:s + gen_length]
            rec.step_map[i, s:s + gen_length] = torch.where(undecided, rec.steps[i], sm)
