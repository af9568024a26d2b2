"""Rollouts of a method that records its sampling (MDPO, EGSPO) or branches it (d-TreeRPO): made by the
method's own `sample_rollouts` on a tiny model, as the training loop makes them, with a reward that
depends on the text so groups differ."""
from __future__ import annotations

import torch

from dlm_bench.likelihood import ScoredBatch
from dlm_bench.methods import Method, Rollouts
from dlm_bench.sampler import SamplerConfig


def parity_reward(text: str) -> float:
    return float(sum(map(ord, text)) % 2)


def overrides_sampling(cls) -> bool:
    return cls.sample_rollouts is not Method.sample_rollouts


def traced_rollouts(method, dlm, seed: int = 0, prompts=("1+2=", "7*3="), chunk: int = 64,
                    reward=parity_reward) -> Rollouts:
    """G = the method's group size completions per prompt, decoded with its rollout settings at T = 1."""
    r, G = method.config.rollout, method.config.rollout.group_size
    scfg = SamplerConfig(gen_length=r.gen_length, steps=r.steps, block_length=r.block_length, temperature=1.0,
                         **({"stop_at_eos": False} if method.pad_steps else {}))
    pids = [dlm.prompt_ids(p) for p in prompts for _ in range(G)]
    seeds = [seed * 1000 + i for i in range(len(pids))]
    got = method.sample_rollouts(dlm, pids, scfg, seeds, lambda rows, texts: [reward(t) for t in texts], chunk)
    batch = ScoredBatch.build(dlm, pids, [c.tokens for c in got.completions])
    return Rollouts(batch, torch.tensor(got.rewards, dtype=torch.float32),
                    torch.arange(len(prompts)).repeat_interleave(G),
                    torch.tensor([c.step_map for c in got.completions], dtype=torch.long), seed=seed, trace=got.trace)
