"""JustGRPO (arXiv 2601.15165, "The Flexibility Trap"; code github.com/LeapLabTHU/JustGRPO).

During RL the diffusion LM is treated as an autoregressive policy: rollouts decode one token per step
left to right (`generate(..., block_length=1)`), and the policy's log-prob of token k is the exact
log p(o_k | x, o_<k, masks after k) (`grpo.py::logprob_loss`; here `left_to_right_logprob`). Plain
GRPO on top: group z-scored advantages, token-level clipped ratio, no KL, no reference.

Faithful details (grpo.py / train.py): advantages (r - mean) / (std + 1e-4) over the group of 16
(8 generations x 2 repeats); ratio exp(logp - logp.detach()), i.e. one on-policy update, so the clip
never binds; the per-token losses are summed over every position of the window (EOS padding
included: the loop decides which positions are `valid`) and scaled by 1 / gen_length /
#(samples with nonzero advantage). The code also never divides by its 8 gradient-accumulation steps,
a constant factor that only interacts with the 1.0 gradient clip; it is not reproduced.

Cost: left-to-right scoring needs one forward per completion position (gen_length per sample), as in
the reference, which backpropagates position by position to bound memory; here the loss is one
graph (the contract returns a tensor), so on an 8B model use small micro-batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import CODE_REWARD_HELP, CODE_REWARDS, LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob
from dlm_bench.likelihood import left_to_right_logprob
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.methods.profile import Profile
from dlm_bench.methods.losses import clipped_pg, group_advantages


@dataclass
class JustGRPOConfig(MethodConfig):
    """Defaults are the paper's (Table 3) and agree with LeapLabTHU/JustGRPO train.py / grpo.py."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(5e-6, "Table 3; train.py learning_rate (constant, AdamW)"),
        lr_schedule=("constant", "train.py: no scheduler"),
        warmup_ratio=(0.0, "train.py: no warmup"),
        weight_decay=(0.0, "train.py weight_decay"),
        adam_betas=((0.9, 0.999), "train.py AdamW betas"),
        max_grad_norm=(1.0, "train.py max_grad_norm"),
        train_steps=(125, "Table 3 / train.py total_steps (all datasets)"),
        inner_updates=(1, "Table 3 'policy updates per batch: 1' (ratio = 1 on-policy)"),
        minibatches=(1, "train.py: one optimizer step per global batch"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(16, "num_generations 8 x repeat_times 2 (train.py); Table 3 'G 16'"),
        batch_prompts=(64, "1 per GPU x grad_accum 8 x 8 GPUs; Table 3 'global batch 64'"),
        temperature=(1.0, "grpo.py sample(temperature=1.0); logprob_loss divides by the same"),
        gen_length=(256, "train.py gen_length"),
        steps=(256, "train.py gen_steps: one token per step"),
        block_length=(1, "grpo.py: block_length=1, pure left-to-right rollout"))
    lora: LoraConfig = block(LoraConfig, r=(0, "full-parameter fine-tuning (Table 3)"),
                             alpha=(0, "unused without LoRA"), dropout=(0.0, "unused without LoRA"))
    code_reward: str = knob("justgrpo", CODE_REWARD_HELP, choices=CODE_REWARDS,
                            source="train.py:98-106 --dataset code: data/code.py:61-81 reward_code, format "
                                   "reward + pass rate (local_sandbox.py)")
    epsilon: float = knob(0.2, "symmetric PPO clip", source="grpo.py logprob_loss(eps=0.2)", low=0.0)
    adv_eps: float = knob(1e-4, "added to the group std of the advantages",
                          source="grpo.py compute_group_advantages: std + 1e-4", low=0.0)
    loss_norm: str = knob("justgrpo", "'justgrpo': / window / #nonzero-advantage samples (code); "
                          "'seq_mean': the paper's (1/G) sum_i (1/|o_i|) sum_k; 'token_mean'",
                          choices=("justgrpo", "seq_mean", "token_mean"), source="grpo.py")


@dataclass(kw_only=True)
class JustGRPOCache(MethodCache):
    adv: torch.Tensor                          # [N] group z-scored advantages
    old_logp: torch.Tensor | None = None       # [N, G] rollout-time per-token log-probs (only when reused)


@register_method
class JustGRPO(Method):
    name = "justgrpo"
    Config = JustGRPOConfig
    profile = Profile(family="trajectory RL", reference="none",
                      estimator="exact left-to-right log-probability of its left-to-right rollouts",
                      forwards=256, forwards_note="one forward per position in one graph (the reference "
                                                  "backpropagates position by position)")
    fidelity = (
        Deviation("per accumulation step: sum / (gen_length x #nonzero-advantage samples of the step), 8 steps "
                  "summed without dividing by 8", "one normaliser over the whole batch: the reference's gradient "
                  "is this one times the number of informative prompts per window, a per-batch factor that "
                  "meets the 1.0 clip and Adam's running moments", "kept",
                  "tests/test_recipes.py::test_justgrpo_normaliser_is_a_per_batch_factor"),
        Deviation("code reward: format score + pass rate, 1 s per case, blocklisted imports score 0; the format "
                  "is checked on prompt + completion", "code_reward 'justgrpo' on code tasks, the format checked "
                  "on the completion (our prompts contain a fence, which would always score 0)", "fixed",
                  "tests/test_code_rewards.py::test_recipe_differences_blocklist_and_timeouts"),
        Deviation("full-attention LLaDA: one token per step, left to right, every later position masked",
                  "block-diffusion models (TraDo/SDAR, LLaDA2): the same order as their `sequential` decoding, one "
                  "token per step inside each block; token i is scored given the clean earlier blocks, y_<i of its "
                  "block and masks after it (later blocks are unseen under block-causal attention), one forward "
                  "per offset inside a block", "kept",
                  "tests/test_block_training.py::test_left_to_right_on_a_block_model_is_the_product_of_truncated_forwards"),
    )
    rollout_order = "left_to_right"

    def _advantages(self, rollouts: Rollouts) -> torch.Tensor:
        c = rollouts.cache
        if isinstance(c, JustGRPOCache):
            return c.adv
        return group_advantages(rollouts.rewards, rollouts.groups, "zscore", eps=self.config.adv_eps)

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        c = rollouts.cache = JustGRPOCache(adv=self._advantages(rollouts))
        if self.updates_per_batch > 1:       # reuse needs the rollout-time per-token log-probs
            with torch.no_grad():
                c.old_logp = left_to_right_logprob(policy, rollouts.batch, per_token=True)

    def loss_count(self, rollouts: Rollouts) -> float:
        """The terms each normaliser divides by, counted on these rows (micro-batching stays exact)."""
        if self.config.loss_norm == "justgrpo":      # sum / (window * #rows with nonzero advantage)
            return float((self._advantages(rollouts) != 0).sum())
        if self.config.loss_norm == "token_mean":
            return float(rollouts.batch.valid.sum())
        return float(rollouts.rewards.numel())

    def loss(self, rollouts: Rollouts, policy, ref):
        batch, cfg = rollouts.batch, self.config
        c = self.prepared(rollouts, policy, ref)
        adv = c.adv.to(batch.completion.device)
        logp = left_to_right_logprob(policy, batch, per_token=True)         # [N, G], exact AR order
        old = logp.detach() if c.old_logp is None else c.old_logp           # on-policy: ratio 1
        loss, stats = clipped_pg(logp, old, adv.to(logp.dtype), cfg.epsilon, cfg.epsilon,
                                 valid=batch.valid, reduce=cfg.loss_norm, width=batch.completion.shape[1])
        stats.update(loss=float(loss.detach()), reward_mean=float(rollouts.rewards.float().mean()),
                     nonzero_adv_frac=float((adv != 0).float().mean()),
                     logp_per_token=float((logp.detach() * batch.valid).sum() / batch.valid.sum().clamp(min=1)))
        return loss, stats
