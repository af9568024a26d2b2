"""diffu-GRPO, the RL stage of d1 (arXiv 2504.12216, "d1: Scaling Reasoning in Diffusion Large
Language Models via Reinforcement Learning"; code github.com/dllm-reasoning/d1 @ 837888f,
`diffu-grpo/diffu_grpo_trainer.py`, recipe `diffu-grpo/slurm_scripts/train.yaml`).

Log-probabilities by the one-step mean-field estimate (`forward_process`, `_get_per_token_logps`;
here `likelihood.one_step_logprobs`, under the same scoring-row and output-head bounds as every
method): every completion position is masked, each real prompt token is masked independently with
probability p = `p_mask_prompt` (`likelihood.prompt_masks`), and one forward gives, for every
scored completion position k,

    log pi(y_k | x) ~ log p_theta(y_k | x~, all-mask completion)        (x~: the masked prompt)

Inner update j of a rollout batch draws a fresh prompt mask (d1: a seed per iteration,
`mask_seeds = randint(0, 2**12, (num_iterations,))`) shared by the current, old and reference
scores. The loss (`compute_loss`) is token-level GRPO with a k3 KL to the reference:

    rho_k = exp(logp_k - logp_old_k),   A_i = r_i - mean_group(r)   (no std division)
    l_k = -min(rho_k A_i, clip(rho_k, 1 - eps, 1 + eps) A_i) + beta (exp(d_k) - d_k - 1),  d_k = ref_k - logp_k
    loss = sum_{i,k in C_i} l_k / sum_i |C_i|

C_i = the completion up to and including its first stop token (d1's `completion_mask`; `positions:
window` scores the whole window as ESPO/JustGRPO). With one update the old log-probs are the current
ones detached (ratio 1), as d1 does.

Differences from d1, all deliberate: the reference is frozen (d1 re-syncs it every 64 steps with
trl's `sync_ref_model`; see shared/reference/methods.md §8.5); the prompt mask covers only real
prompt tokens (d1 passes no attention mask, so its left padding can be masked too); the seeds derive
from `rollouts.seed` and j. The token mean runs over the whole rollout batch (d1: over each device's
micro-batch of 6, then averaged over 2 accumulation steps); `loss_count` keeps that exact under
micro-batching.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob, mask_seed
from dlm_bench.likelihood import ScoredBatch, one_step_logprobs, prompt_masks
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.methods.profile import Profile
from dlm_bench.methods.losses import group_advantages, token_grpo_loss

D1 = "d1 diffu-grpo/slurm_scripts/train.yaml"


def completion_positions(dlm, batch: ScoredBatch, mode: str) -> torch.Tensor:
    """[N, G] bool: the scored positions. "to_eos": up to and including the first stop token (d1's
    completion_mask, `sequence_indices <= eos_idx`); "window": every valid position."""
    if mode == "window":
        return batch.valid
    stops = torch.tensor(sorted({dlm.eos_id, *dlm.stop_ids}), device=batch.completion.device)
    is_stop = torch.isin(batch.completion, stops) & batch.valid
    G = batch.completion.shape[1]
    first = torch.where(is_stop.any(-1), is_stop.int().argmax(-1), torch.full_like(batch.lengths, G))
    return (torch.arange(G, device=first.device)[None, :] <= first[:, None]) & batch.valid


@dataclass(kw_only=True)
class DiffuGRPOCache(MethodCache):
    adv: torch.Tensor                      # [N] centred group advantages
    positions: torch.Tensor                # [N, G] scored positions
    prompt_masks: list[torch.Tensor]       # per inner update [N, P]: prompt tokens masked
    old_logp: list[torch.Tensor] | None = None   # per update [N, G]: rollout-time scores (only when mu > 1)
    ref_logp: list[torch.Tensor] | None = None   # per update [N, G]: reference scores (only when beta != 0)


@dataclass
class DiffuGRPOConfig(MethodConfig):
    """d1's recipe (slurm_scripts/train.yaml over diffu_grpo_config.py defaults)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(3e-6, f"{D1}:34 learning_rate"),
        lr_schedule=("constant_with_warmup", f"{D1}:35 lr_scheduler_type"),
        warmup_ratio=(0.0001, f"{D1}:32 warmup_ratio"),
        weight_decay=(0.1, f"{D1}:25 weight_decay"),
        adam_betas=((0.9, 0.99), f"{D1}:23-24 adam_beta1/2"),
        max_grad_norm=(0.2, f"{D1}:26 max_grad_norm"),
        train_steps=(None, f"{D1}:38 num_train_epochs 10, stopped early (d1 issues #11, #25); here one pass"),
        inner_updates=(12, f"{D1}:70 num_iterations 12 (mu)"),
        minibatches=(1, "d1 (trl GRPOTrainer): one optimizer step per generation batch"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(6, f"{D1}:37 num_generations"),
        batch_prompts=(16, f"{D1}:41-42 6 completions/device x grad-accum 2 x 8 GPUs / G 6"),
        temperature=(0.9, "d1 diffu_grpo_config.py:193 temperature default 0.9 (not set in train.yaml)"),
        gen_length=(256, f"{D1}:60 max_completion_length"),
        steps=(128, f"{D1}:63 diffusion_steps"),
        block_length=(32, f"{D1}:62 block_length"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(128, f"{D1}:10 lora_r (4-bit base not reproduced)"),
        alpha=(64, f"{D1}:11 lora_alpha"),
        dropout=(0.05, f"{D1}:12 lora_dropout"),
        targets=("q,k,v,o,gate,up,down", "diffu_grpo_train.py:95 target_modules q_proj..gate_proj, mapped per architecture "
                       "(the literal names match only q,k,v,up on LLaDA: lora_targets.py)"))
    beta: float = knob(0.04, "k3 KL coefficient (0: no reference forward)", source=f"{D1}:68 beta", low=0.0)
    epsilon: float = knob(0.5, "symmetric token-level PPO clip", source=f"{D1}:69 epsilon", low=0.0)
    p_mask_prompt: float = knob(0.15, "probability of masking each prompt token in the one-step estimate",
                                source=f"{D1}:67 p_mask_prompt", low=0.0, high=1.0)
    positions: str = knob("to_eos", "scored positions: 'to_eos' (through the first stop token) | 'window'",
                          choices=("to_eos", "window"),
                          source="d1 diffu_grpo_trainer.py:441-445 completion_mask up to the first EOS")


@register_method
class DiffuGRPO(Method):
    name = "diffu_grpo"
    Config = DiffuGRPOConfig
    profile = Profile(family="sequence-ELBO RL", reference="frozen (d1 re-syncs it every 64 steps)",
                      estimator="one-step mean-field: the whole completion masked, prompt p = 0.15",
                      forwards=1, forwards_note="one forward per completion")
    needs_reference = True

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        c = rollouts.cache = DiffuGRPOCache(
            adv=group_advantages(rollouts.rewards, rollouts.groups, "center"),
            positions=completion_positions(policy, batch, cfg.positions),
            prompt_masks=[prompt_masks(batch, cfg.p_mask_prompt, mask_seed(rollouts.seed, j))[0]
                          for j in range(max(1, cfg.optim.inner_updates))])
        with torch.no_grad():
            if self.updates_per_batch > 1:     # the policy moves within the batch: keep the rollout-time scores
                c.old_logp = [one_step_logprobs(policy, batch, m, c.positions).detach() for m in c.prompt_masks]
            if cfg.beta != 0.0:
                c.ref_logp = [one_step_logprobs(ref, batch, m, c.positions).detach() for m in c.prompt_masks]

    def loss_count(self, rollouts: Rollouts) -> float:
        """d1's loss is a token mean: its terms are the scored positions of these rows."""
        c = rollouts.cache
        return float(c.positions.sum()) if isinstance(c, DiffuGRPOCache) else float(rollouts.batch.valid.sum())

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg, batch = self.config, rollouts.batch
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        pos = c.positions
        logp = one_step_logprobs(policy, batch, c.prompt_masks[j], pos)
        old = c.old_logp[j] if c.old_logp is not None else logp.detach()
        ref_lp = c.ref_logp[j].to(logp.dtype) if c.ref_logp is not None else None
        loss, stats = token_grpo_loss(logp, old.to(logp.dtype), ref_lp, c.adv.to(logp.device, logp.dtype), pos,
                                      cfg.epsilon, cfg.beta)
        stats.update(inner_iter=j, reward_mean=float(rollouts.rewards.float().mean()))
        return loss, stats
