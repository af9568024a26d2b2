"""wd1 (arXiv 2507.08838, "wd1: Weighted Policy Optimization for Reasoning in Diffusion Language
Models"; code github.com/xiaohangt/wd1 @ 0898985, `wd1/trainers/rev_grpo_trainer.py::compute_loss`,
recipe `wd1/train.yaml` + `run/wll_NP_gsm8k.sh`, trainer type `wll_d1_neg`).

A ratio-free weighted log-likelihood: no old policy, no reference, no clip. With group advantages
A_i = r_i - mean_group(r) (no std division) and the d1 one-step sequence log-likelihood
l_theta(y_i) = sum_{k in C_i} log p_theta(y_k | x~, all-mask completion) (`likelihood.one_step_logprobs`),

    w+_i = softmax_group(A)_i,   w-_i = softmax_group(-A)_i
    loss_group = -sum_i w+_i l_theta(y_i) + sum_i w-_i l_theta(y_i)

pulls up the likelihood of the better completions and pushes down the worse ones (the paper's
energy-guided target plus negative-sample unlearning). The batch loss is the mean over prompts of
the per-group sums (the loop's groups all have G rows); it is written as a mean over rows of
G_i (w-_i - w+_i) l_i, so the default `loss_count` (rows) keeps it exact under micro-batching.

Reconstructed: wd1 takes the softmax over each device's batch dimension, which in its recipe (6
completions per device, G = 6, trl's grouped sampler) is exactly one group; here it is the group
wherever the group lives. trl averages the two accumulated micro-batches (one group each), hence the
mean over groups. As in d1, each of the mu = 12 inner updates draws a fresh prompt mask (p = 0.15),
and C_i runs through the first stop token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob, mask_seed
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.likelihood import one_step_logprobs, prompt_masks
from dlm_bench.methods.profile import Profile
from dlm_bench.methods.diffu_grpo import completion_positions
from dlm_bench.methods.losses import group_advantages

W = "wd1 wd1/train.yaml"


def group_softmax(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """softmax of x within each row's group: [N], each group sums to 1."""
    _, inv = torch.unique(groups.to(x.device), return_inverse=True)
    top = torch.full((int(inv.max()) + 1,), -torch.inf, dtype=x.dtype, device=x.device)
    top = top.scatter_reduce(0, inv, x, "amax")
    e = torch.exp(x - top[inv])
    return e / torch.zeros_like(top).index_add(0, inv, e)[inv]


def wd1_weights(adv: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Per-row coefficient G_i (softmax(-A)_i - softmax(A)_i) of l_i, over whole groups."""
    _, inv, size = torch.unique(groups.to(adv.device), return_inverse=True, return_counts=True)
    return size[inv].to(adv.dtype) * (group_softmax(-adv, groups) - group_softmax(adv, groups))


def wd1_loss(seq_logp: torch.Tensor, coef: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """mean_i coef_i l_i = mean over groups of sum_i (w-_i - w+_i) l_i (`wd1_weights` for coef)."""
    loss = (coef.to(seq_logp.device, seq_logp.dtype) * seq_logp).mean()
    return loss, {"loss": float(loss.detach()), "coef_abs_mean": float(coef.abs().mean())}


@dataclass(kw_only=True)
class WD1Cache(MethodCache):
    coef: torch.Tensor                     # [N] G_i (w-_i - w+_i), from whole groups
    positions: torch.Tensor                # [N, G] scored positions
    prompt_masks: list[torch.Tensor]       # per inner update [N, P]: prompt tokens masked


@dataclass
class WD1Config(MethodConfig):
    """wd1's GSM8K recipe: wd1/train.yaml (d1's values) with run/wll_NP_gsm8k.sh."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(3e-6, f"{W}:34 learning_rate"),
        lr_schedule=("constant_with_warmup", f"{W}:35 lr_scheduler_type"),
        warmup_ratio=(0.0001, f"{W}:32 warmup_ratio"),
        weight_decay=(0.1, f"{W}:25 weight_decay"),
        adam_betas=((0.9, 0.99), f"{W}:23-24 adam_beta1/2"),
        max_grad_norm=(0.2, f"{W}:26 max_grad_norm"),
        train_steps=(None, f"{W} num_train_epochs 10; here one pass"),
        inner_updates=(12, "wd1 run/wll_NP_gsm8k.sh:22 NUM_ITER=12"),
        minibatches=(1, "wd1 (trl GRPOTrainer base): one optimizer step per generation batch"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(6, f"{W}:37 num_generations"),
        batch_prompts=(8, f"{W}:43-44 6/device x grad-accum 2 x 4 GPUs (run/wll_NP_gsm8k.sh:26) / G 6"),
        temperature=(0.9, "wd1 wd1/trainers/diffu_grpo_config.py:225 temperature default 0.9"),
        gen_length=(256, f"{W}:62 max_completion_length"),
        steps=(128, f"{W}:65 diffusion_steps"),
        block_length=(32, f"{W}:64 block_length"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(128, f"{W}:10 lora_r (4-bit base not reproduced)"),
        alpha=(64, f"{W}:11 lora_alpha"),
        dropout=(0.05, f"{W}:12 lora_dropout"),
        targets=("q,k,v,o,gate,up,down", "not checked; d1's q_proj..gate_proj, whose trainer wd1 builds on"))
    p_mask_prompt: float = knob(0.15, "probability of masking each prompt token in the one-step estimate",
                                source=f"{W}:69 p_mask_prompt", low=0.0, high=1.0)
    positions: str = knob("to_eos", "scored positions: 'to_eos' (through the first stop token) | 'window'",
                          choices=("to_eos", "window"),
                          source="wd1 rev_grpo_trainer.py:547 completion_mask up to the first EOS")


@register_method
class WD1(Method):
    name = "wd1"
    Config = WD1Config
    profile = Profile(family="sequence-ELBO RL", reference="none",
                      estimator="one-step mean-field (d1's), ratio-free weighted likelihood",
                      forwards=1, forwards_note="one forward per completion")

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        adv = group_advantages(rollouts.rewards, rollouts.groups, "center")
        rollouts.cache = WD1Cache(
            coef=wd1_weights(adv, rollouts.groups),           # whole groups, before any micro-batch split
            positions=completion_positions(policy, batch, cfg.positions),
            prompt_masks=[prompt_masks(batch, cfg.p_mask_prompt, mask_seed(rollouts.seed, j))[0]
                          for j in range(max(1, cfg.optim.inner_updates))])

    def loss(self, rollouts: Rollouts, policy, ref):
        batch = rollouts.batch
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        seq = one_step_logprobs(policy, batch, c.prompt_masks[j], c.positions).sum(-1)
        loss, stats = wd1_loss(seq, c.coef)
        stats.update(inner_iter=j, reward_mean=float(rollouts.rewards.float().mean()),
                     seq_logp=float(seq.detach().mean()))
        return loss, stats
