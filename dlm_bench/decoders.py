"""Decoding rules beyond LLaDA's, each a `SamplerConfig` setting that any method (and `sample`/`passk`)
can use: how many tokens a step reveals (`schedule`), how end-of-text candidates are held back early
(`eos_gamma`, EOSER) and running-confidence remasking (`rcr`). `dlm_bench.sampler` applies them.

- `uniform` (LLaDA `generate.py` `get_num_transfer_tokens`): a block's tokens spread evenly over its
  steps, the remainder first.
- `ascending` (CJ-GRPO's ascending step sizes, yjyddq/EOSER-ASS-RL `get_num_transfer_tokens_ass`,
  one block): step i reveals 2^i tokens and the last step the rest, so a window of 2^S tokens takes S
  steps.
- EOSER (EOSER-ASS-RL `eval/generate.py` `sampling` / `ass_sampling`): the confidence of a candidate
  that is end-of-text is multiplied by a factor rising linearly from gamma to 1 over the steps
  (uniform schedule), or as (2^(i+1) - 1) / 2^S (ascending schedule), so end-of-text is committed late.
- RCR (MDPO, autonomousvision/mdpo `src/mdlm_generation_utils.py` `diffusion_generate(rcr=True)`): a
  step commits every masked position up to the end of the current block, records each committed
  token's confidence (its running confidence), and then masks again the committed tokens of lowest
  running confidence, as many as the schedule still has to reveal; a token can thus be revised until
  the block's (and, as in the reference, the whole decode's) last step.
"""
from __future__ import annotations

import torch

SCHEDULES = ("uniform", "ascending")


def transfer_schedule(n_masked: int, steps: int) -> list[int]:
    """Tokens to reveal at each step of a block: as even as possible, the remainder first (LLaDA)."""
    base, rem = divmod(n_masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def ascending_schedule(n_tokens: int, steps: int) -> list[int]:
    """2^i tokens at step i, the rest at the last step (EOSER-ASS-RL, one block)."""
    head = [2 ** i for i in range(steps - 1)]
    return head + [n_tokens - sum(head)]


def block_schedule(kind: str, n_tokens: int, steps: int) -> list[int]:
    return ascending_schedule(n_tokens, steps) if kind == "ascending" else transfer_schedule(n_tokens, steps)


def max_ascending_steps(n_tokens: int) -> int:
    """Most steps an ascending schedule can give a block of n tokens with every step revealing one or
    more: 2^(S-1) - 1 tokens before the last step leave at least one, i.e. n >= 2^(S-1)."""
    return n_tokens.bit_length()


def eos_factor(gamma: float | None, step: int, steps: int, ascending: bool) -> float:
    """EOSER's multiplier of an end-of-text candidate's confidence at `step` of `steps` (1: none).

    Uniform schedule: gamma + (1 - gamma) t with t = step / (steps - 1), where, as the reference's
    `eoser_generate` computes it, `step` counts within the block and `steps` is the whole decode's (with
    several blocks the factor restarts at every block). Ascending: t = (2^(step+1) - 1) / 2^steps."""
    if gamma is None or steps <= 1:
        return 1.0
    if ascending:
        t = (2 ** (step + 1) - 1) / 2 ** steps
    else:
        t = min(max(step, 0), steps - 1) / (steps - 1)
    return gamma + (1.0 - gamma) * t


def lowest(running: torch.Tensor, n: int) -> torch.Tensor:
    """[rows, C] bool: each row's n positions of lowest running confidence (RCR's re-masking);
    positions that are not candidates hold +inf."""
    out = torch.zeros_like(running, dtype=torch.bool)
    if n > 0:
        out.scatter_(1, torch.topk(running, k=n, dim=-1, largest=False).indices, True)
    return out
