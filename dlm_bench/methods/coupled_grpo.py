"""coupled-GRPO, the RL stage of DiffuCoder (arXiv 2506.20639, "DiffuCoder: Understanding and Improving
Masked Diffusion Models for Code Generation"; code github.com/apple/ml-diffucoder @ f735e01,
`src/open_r1/coupled_grpo.py`, recipe `recipes/config_coupled_code.yaml`).

d1's token-level GRPO with a coupled per-token likelihood: inner update j draws one t ~ U(0.2, 0.8) and
a Bernoulli(t) mask M of the completion (`forward_process`), and each token's log-probability is

    log pi(y_k | x) ~ (log p(y_k | x, all masked) + w_k log p(y_k | x, y with M or its complement masked)) / 2

with w_k = 1/t if k is in M, else 1/(1 - t): the complementary pair scores every token exactly once
(`likelihood.coupled_token_logprobs`). Three forwards per completion; the prompt is never masked. The
same masks serve the current, old and reference scores. The loss (`compute_loss`, trl's GRPO) is

    l_k = -min(rho_k A_i, clip(rho_k, 1 - eps, 1 + eps) A_i) + beta (exp(d_k) - d_k - 1),  d_k = ref_k - logp_k
    loss = sum_{i, k in C_i} l_k / sum_i |C_i|

with leave-one-out advantages A_i = r_i - mean_{j != i} r_j (hard-coded `leave_one_out = True`, no std
scaling) and C_i the completion through its first end-of-turn token. With one update the old scores are
the current ones detached (ratio 1), as trl does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob, mask_seed
from dlm_bench.errors import UserError
from dlm_bench.likelihood import coupled_masks, coupled_token_logprobs
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.methods.diffu_grpo import completion_positions
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods.losses import group_advantages, token_grpo_loss
from dlm_bench.methods.profile import Profile

DC = "DiffuCoder recipes/config_coupled_code.yaml"
DC_CODE = "DiffuCoder src/open_r1/coupled_grpo.py"


@dataclass(kw_only=True)
class CoupledGRPOCache(MethodCache):
    adv: torch.Tensor                      # [N] leave-one-out advantages
    positions: torch.Tensor                # [N, G] scored positions
    masks: list[torch.Tensor]              # per inner update [N, 3, G]: all, M, complement (rows first)
    t: list[float]                         # per inner update: the mask ratio of M
    old_logp: list[torch.Tensor] | None = None   # per update [N, G] (only when the policy moves in a batch)
    ref_logp: list[torch.Tensor] | None = None   # per update [N, G] (only when beta != 0)


@dataclass
class CoupledGRPOConfig(MethodConfig):
    """DiffuCoder's coupled-GRPO recipe (config_coupled_code.yaml; full fine-tuning of DiffuCoder-7B)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(1e-6, f"{DC}:28 learning_rate"),
        lr_schedule=("cosine", f"{DC}:38-40 cosine_with_min_lr, min_lr_rate 0.1 (here: cosine to 0)"),
        warmup_ratio=(0.0001, f"{DC}:69 warmup_ratio"),
        weight_decay=(0.1, f"{DC}:31 weight_decay"),
        adam_betas=((0.9, 0.99), f"{DC}:29-30 adam_beta1/2"),
        max_grad_norm=(0.2, f"{DC}:32 max_grad_norm"),
        train_steps=(None, f"{DC}:41 num_train_epochs 1: one pass"),
        inner_updates=(2, f"{DC}:20 num_iterations"),
        minibatches=(1, "trl GRPOTrainer: one optimizer step per generation batch and iteration"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(10, f"{DC}:19 num_generations"),
        batch_prompts=(8, f"{DC}:22-23 5 completions/device x grad-accum 2 x 8 GPUs (run.sh) / G 10"),
        temperature=(1.0, f"{DC}:53 generation_temperature"),
        gen_length=(256, f"{DC}:48 max_completion_length"),
        steps=(256, f"{DC}:51 diffusion_steps"),
        block_length=(256, f"{DC_CODE}:419-431 Dream diffusion_generate: one block over the window"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(0, "DiffuCoder src/open_r1/grpo.py:117 get_peft_config: no use_peft in the recipe, full fine-tuning"),
        alpha=(0, "full fine-tuning"),
        dropout=(0.0, "full fine-tuning"))
    beta: float = knob(0.01, "k3 KL coefficient (0: no reference forward)", source=f"{DC}:13 beta", low=0.0)
    epsilon: float = knob(0.5, "symmetric token-level PPO clip", source=f"{DC}:14 epsilon (trl: low = high)",
                          low=0.0)
    mask_ratio_low: float = knob(0.2, "t ~ U(low, high): the mask ratio of the partial draw", low=0.0, high=1.0,
                                 low_open=True, source=f"{DC_CODE}:259 random.uniform(0.2, 0.8)")
    mask_ratio_high: float = knob(0.8, "upper end of the mask ratio's range", low=0.0, high=1.0,
                                  source=f"{DC_CODE}:259 random.uniform(0.2, 0.8)")
    scale_rewards: bool = knob(False, "divide the leave-one-out advantages by the group's reward std",
                               source=f"{DC}:15 scale_rewards: false")
    positions: str = knob("to_eos", "scored positions: 'to_eos' (through the first stop token) | 'window' "
                                    "(DARE's LLaDA/Dream port scores the whole window)",
                          choices=("to_eos", "window"), source=f"{DC_CODE}:446-452 completion_mask through <|im_end|>")


@register_method
class CoupledGRPO(Method):
    name = "coupled_grpo"
    Config = CoupledGRPOConfig
    needs_reference = True
    profile = Profile(
        family="sequence-ELBO RL", reference="frozen (DiffuCoder soft-syncs it every 64 steps)",
        estimator="coupled per-token: all-masked + complementary Bernoulli(t) pair, t ~ U(0.2, 0.8)",
        forwards=3, forwards_note="3 forwards per completion (all-masked, M, complement) in one backward")
    fidelity = (
        Deviation("rollouts: Dream's diffusion_generate, alg 'entropy', top_p 0.95, one block",
                  "the harness's LLaDA sampler (low-confidence remasking) over one block of the window, "
                  "so every method shares one decoder", "kept", "tests/test_coupled_grpo.py::test_recipe_and_flags"),
        Deviation("cosine_with_min_lr: the LR decays to 0.1 x peak", "cosine to 0 (the harness's schedules)",
                  "kept", "tests/test_coupled_grpo.py::test_recipe_and_flags"),
        Deviation("trl re-syncs the reference every 64 steps (sync_ref_model, alpha 0.6)",
                  "the reference is frozen, as for d1 (shared/reference/methods.md 8.5)", "kept",
                  "tests/test_coupled_grpo.py::test_loss_by_hand"),
        Deviation("one t per device micro-batch of 5 completions; with num_iterations > 1 the Bernoulli draws "
                  "repeat across gradient-accumulation chunks (`accumulate=True`)",
                  "one t per prepared micro-batch (a prompt's group) and inner update; fresh draws per row",
                  "kept", "tests/test_likelihood_draws.py::test_coupled_pair_scores_each_position_once_against_hand_built_forwards"),
        Deviation("token mean over each device's micro-batch, averaged over accumulation steps",
                  "token mean over the whole rollout batch (`loss_count`, exact under micro-batching)", "kept",
                  "tests/test_coupled_grpo.py::test_micro_batch_of_one_matches_whole_batch"),
    )

    def __init__(self, config=None, policy=None):
        super().__init__(config, policy)
        if self.config.mask_ratio_low >= self.config.mask_ratio_high:
            raise UserError(f"coupled_grpo: mask_ratio_low ({self.config.mask_ratio_low}) must be below "
                            f"mask_ratio_high ({self.config.mask_ratio_high})")

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        masks, ts = [], []
        for j in range(max(1, cfg.optim.inner_updates)):
            m, t = coupled_masks(batch.valid, torch.Generator().manual_seed(mask_seed(rollouts.seed, j)),
                                 cfg.mask_ratio_low, cfg.mask_ratio_high)
            masks.append(m.transpose(0, 1).contiguous())          # rows first, so micro-batches slice them
            ts.append(t)
        c = rollouts.cache = CoupledGRPOCache(
            adv=group_advantages(rollouts.rewards, rollouts.groups, "rloo", scale=cfg.scale_rewards),
            positions=completion_positions(policy, batch, cfg.positions), masks=masks, t=ts)
        with torch.no_grad():
            if self.updates_per_batch > 1:
                c.old_logp = [self._logp(policy, rollouts, j).detach() for j in range(len(masks))]
            if cfg.beta != 0.0:
                c.ref_logp = [self._logp(ref, rollouts, j).detach() for j in range(len(masks))]

    @staticmethod
    def _logp(dlm, rollouts: Rollouts, j: int) -> torch.Tensor:
        c = rollouts.cache
        return coupled_token_logprobs(dlm, rollouts.batch, c.masks[j].transpose(0, 1), c.t[j])

    def loss_count(self, rollouts: Rollouts) -> float:
        """A token mean: its terms are the scored positions of these rows."""
        c = rollouts.cache
        return float(c.positions.sum()) if isinstance(c, CoupledGRPOCache) else float(rollouts.batch.valid.sum())

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg = self.config
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        pos = c.positions
        logp = self._logp(policy, rollouts, j)
        old = c.old_logp[j] if c.old_logp is not None else logp.detach()
        ref_lp = c.ref_logp[j].to(logp.dtype) if c.ref_logp is not None else None
        loss, stats = token_grpo_loss(logp, old.to(logp.dtype), ref_lp, c.adv.to(logp.device, logp.dtype), pos,
                                      cfg.epsilon, cfg.beta)
        stats.update(inner_iter=j, reward_mean=float(rollouts.rewards.float().mean()), mask_ratio=c.t[j])
        return loss, stats
