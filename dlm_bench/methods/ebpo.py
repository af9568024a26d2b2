"""EBPO, ELBO-based Block-level Policy Optimization (the RL stage of LLaDA2.1, arXiv 2602.08676, "LLaDA2.1:
Speeding Up Text Diffusion via Token Editing"; the authors' code is closed, DARE re-implements it for the
block-diffusion models SDAR and LLaDA2.x: github.com/yjyddq/DARE @ 83ae8a3 `verl/workers/actor/ebpo_actor_mixin.py`,
`verl/trainer/ppo/dllm_core_algos.py` (`_forward_process_ebpo`, `compute_ebpo_composite_elbo`,
`compute_policy_loss_ebpo`), recipe `recipe/llada2_mini/run_ebpo_llada2_mini.sh`).

PPO with one ratio per sequence on a block-level ELBO, clipped once (`losses.ebpo_loss`, computed in the log
domain so an unnormalised ELBO difference cannot overflow):

    rho_i = exp(B_theta(y_i) - B_old(y_i)),   B(y) = mean over n timesteps of sum over blocks b of ELBO_b(t)
    loss  = -mean_i min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i)

with verl's GRPO z-scored advantages (eps 1e-6), no KL and no reference, one update per rollout batch.
ELBO_b at timestep t is block b's masked log-likelihood given the blocks before it (`likelihood.block_draws`:
DARE's per-block noise levels, stratified over the n x blocks cells of a row). The n timesteps are
replayed one at a time in the backward (`bounded`: DARE's `ebpo_actor_mixin` does the same, a no-grad pass
then one draw at a time), so memory does not grow with n.

On the block models EBPO was made for (TraDo/SDAR, LLaDA2.x) the blocks are the model's own, counted from
the prompt's first token as DARE's (`block_origin` global), and each block is scored given the clean
blocks before it and its noised self (`likelihood.scoring_input`), all blocks of a timestep in one
forward as DARE's (`block_draws(merged=True)`). On LLaDA and Dream, which DARE does not run, they attend to the whole window, so block b's
context is built by masking every later block (as LLaDA's semi-autoregressive sampler sees it while it
decodes block b). The recipe is DARE's LLaDA2.0-mini one; the window and steps are DARE's LLaDA math
recipe (512 tokens, 256 steps), as LLaDA2's 2048-token window is not LLaDA's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob, mask_seed
from dlm_bench.errors import UserError
from dlm_bench.likelihood import BlockDraw, answer_blocks, block_draws, block_elbo
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods.losses import ebpo_loss, group_advantages
from dlm_bench.methods.profile import Profile

R = "DARE recipe/llada2_mini/run_ebpo_llada2_mini.sh"
RL = "DARE recipe/llada/run_bgpo_llada_8b_instruct.sh"
V = "DARE verl/trainer/config/ppo_trainer.yaml"


@dataclass(kw_only=True)
class EBPOCache(MethodCache):
    adv: torch.Tensor                        # [N] group z-scores
    draws: list[BlockDraw]                   # per inner update: the block draws (current and old)
    old: list[torch.Tensor] | None = None    # per update [N]: rollout-time composite ELBOs (mu > 1)

    def take(self, idx: torch.Tensor, n: int, **given):
        """Rows `idx`; a BlockDraw keeps its draw axis first."""
        draws = [BlockDraw(d.inputs[:, idx], d.targets[:, idx], d.weights[:, idx], d.timesteps) for d in self.draws]
        return super().take(idx, n, draws=draws, **given)


@dataclass
class EBPOConfig(MethodConfig):
    """DARE's EBPO recipe for LLaDA2.0-mini, on LLaDA's window (see the module doc)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(5e-7, f"{R}:128 lr"),
        lr_schedule=("constant", f"{V}:72 warmup_style constant"),
        warmup_ratio=(0.0, f"{V}:69 lr_warmup_steps_ratio 0"),
        weight_decay=(0.01, f"{R}:180 optim.weight_decay"),
        adam_betas=((0.9, 0.999), "DARE verl/workers/dllm_fsdp_workers.py:563 AdamW betas default"),
        max_grad_norm=(1.0, f"{V}:49 grad_clip"),
        train_steps=(None, "one pass over the train split"),
        inner_updates=(1, f"{V}:61 ppo_epochs 1"),
        minibatches=(1, f"{R}:182 ppo_mini_batch_size = train_batch_size: one update per batch"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(8, f"{R}:127 n_rollout"),
        batch_prompts=(16, f"{R}:126 batch_size"),
        temperature=(0.6, f"{R}:130 train_temperature"),
        gen_length=(512, f"{RL}:91 max_response_length (math; LLaDA2's recipe uses 2048)"),
        steps=(256, f"{RL}:92 num_diffusion_steps = max_response_length / 2"),
        block_length=(32, f"{R}:132 block_length"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(0, "DARE trains every weight (FSDP2, no LoRA in the recipe)"),
        alpha=(0, "full fine-tuning"),
        dropout=(0.0, "full fine-tuning"))
    timesteps: int = knob(16, "n: noise levels per block in the composite ELBO (a forward per block each)",
                          source=f"{R}:133-134 mc_num = n_l = 16", low=1)
    epsilon: float = knob(0.2, "PPO clip of the sequence ratio (both sides)", source=f"{V}:51-53 clip_ratio",
                          low=0.0, high=1.0)
    mask_block_length: int = knob(0, "block length of the ELBO's blocks (0: rollout.block_length)", low=0,
                                  source="DARE dllm_fsdp_workers.py:1193-1201: actor and rollout block lengths must match")
    bounded: bool = knob(True, "replay the timesteps one at a time in the backward (memory flat in n x blocks)",
                         source="DARE ebpo_actor_mixin.py:173-245: no-grad pass, then one draw at a time")


@register_method
class EBPO(Method):
    name = "ebpo"
    Config = EBPOConfig
    profile = Profile(family="sequence-ELBO RL", reference="none",
                      estimator="block-level ELBO: 16 timesteps x every block, blocks before clean, after masked",
                      forwards=1, forwards_note="1 of 16 x 16 block forwards at a time")
    fidelity = (
        Deviation("block-diffusion models only (SDAR, LLaDA2.x): all blocks of a timestep in one block-causal "
                  "forward", "block models: the same; LLaDA and Dream as well: one forward per block and "
                  "timestep, later blocks masked", "kept",
                  "tests/test_block_training.py::test_ebpo_block_draws_are_the_model_blocks"),
        Deviation("block ids from the sequence start, prompt included (`block_origin` global)",
                  "block models: the same; LLaDA and Dream: blocks of the completion window, as LLaDA's sampler "
                  "decodes them", "kept",
                  "tests/test_likelihood_draws.py::test_block_elbo_block_of_one_is_left_to_right_and_unbiased_against_enumeration"),
        Deviation("only the tokens before the padding are scored (attention mask)", "the whole window, "
                  "end-of-text padding included, as DARE's LLaDA rollouts (response mask all ones)", "kept",
                  "tests/test_ebpo.py::test_loss_by_hand"),
    )

    def __init__(self, config=None, policy=None):
        super().__init__(config, policy)
        family = getattr(policy, "family", None)
        bl = self.config.mask_block_length
        if family is not None and family.block_causal and bl not in (0, policy.block_size):
            raise UserError(f"ebpo: mask_block_length {bl} differs from the {family.name} model's block size "
                            f"{policy.block_size}: its ELBO blocks are the model's (set rollout block_length instead)")

    def _draws(self, rollouts: Rollouts, policy, j: int) -> BlockDraw:
        cfg = self.config
        bl = cfg.mask_block_length or cfg.rollout.block_length
        gen = torch.Generator().manual_seed(mask_seed(rollouts.seed, j))
        blocks = answer_blocks(policy, rollouts.batch)
        block_of = None if blocks is None else blocks - blocks[:, :1]
        return block_draws(rollouts.batch.valid, bl, cfg.timesteps, gen, block_of, merged=blocks is not None)

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        draws = [self._draws(rollouts, policy, j) for j in range(max(1, self.config.optim.inner_updates))]
        c = rollouts.cache = EBPOCache(adv=group_advantages(rollouts.rewards, rollouts.groups, "zscore", eps=1e-6),
                                       draws=draws)
        if self.updates_per_batch > 1:
            with torch.no_grad():
                c.old = [block_elbo(policy, rollouts.batch, d).detach() for d in draws]

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg = self.config
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        e = block_elbo(policy, rollouts.batch, c.draws[j], bounded=cfg.bounded)
        old = c.old[j].to(e.dtype) if c.old is not None else e.detach()
        loss, stats = ebpo_loss(e, old, c.adv.to(e.device), cfg.epsilon, cfg.epsilon)
        stats.update(inner_iter=j, reward_mean=float(rollouts.rewards.float().mean()),
                     elbo_per_token=float((e.detach() / rollouts.batch.lengths.clamp(min=1)).mean()))
        return loss, stats
