"""BGPO, Boundary-Guided Policy Optimization (arXiv 2510.11683, "Boundary-Guided Policy Optimization for
Memory-efficient RL of Diffusion Large Language Models"; THU-KEG/BGPO, no snapshot here, re-implemented in
DARE: github.com/yjyddq/DARE @ 83ae8a3 `verl/workers/actor/llada_dp_actor_bgpo.py`,
`verl/trainer/ppo/dllm_core_algos.py::compute_policy_loss_bgpo`, recipe `recipe/llada/run_bgpo_llada_8b_instruct.sh`).

Many Monte-Carlo draws of the ELBO (16) at the memory of one. Draw k of row i gives the single-draw score
l_ik = (L / l_k) sum_{masked} log p(y | x, y_masked) / W (DARE divides by the window W) and x_ik = l_ik -
l_ik(old); the objective is linear in each draw (`losses.bgpo_loss`):

    ratio_ik = 1 + x_ik if A_i > 0 else exp(x_ik);   J = mean_k mean_i clipped(ratio_ik A_i)

a lower bound of the PPO objective on the mean score that equals it, value and gradient, on-policy. DARE
back-propagates each draw on its own; here the draws run through `likelihood.bounded_token_logprobs`,
which keeps one draw's activations at a time (the same gradient, one extra forward per draw).
Advantages are verl's GRPO z-score (eps 1e-6); the clip is 0.2 with the dual clip c = 3 for A < 0; no KL,
no reference; one optimizer update per rollout batch (verl `ppo_epochs` 1, one mini-batch), so x = 0 at
every update and the bound is tight. Masks: 16 per row with stratified sizes (LLaDA's `linspace` over
the draws, here without its rounding bias: `stratified`), shared by the current and old scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, ScoreConfig, block, knob, mask_seed
from dlm_bench.likelihood import MaskDraw, bounded_token_logprobs, draw_masks, masked_token_logprobs
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods.losses import bgpo_loss, group_advantages
from dlm_bench.methods.profile import Profile

R = "DARE recipe/llada/run_bgpo_llada_8b_instruct.sh"
V = "DARE verl/trainer/config/ppo_trainer.yaml"


@dataclass(kw_only=True)
class BGPOCache(MethodCache):
    adv: torch.Tensor                          # [N] group z-scores
    draws: list[MaskDraw]                      # per inner update: the ELBO masks (current and old)
    old: list[torch.Tensor] | None = None      # per update [N, K]: rollout-time per-draw scores (mu > 1)


@dataclass
class BGPOConfig(MethodConfig):
    """DARE's BGPO recipe for LLaDA-8B-Instruct on math (MATH + GSM8K train sets); `BGPO.recipe(task)`
    gives code, Countdown and Sudoku."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(5e-7, f"{R}:141 lr"),
        lr_schedule=("constant", f"{V}:72 warmup_style constant"),
        warmup_ratio=(0.0, f"{V}:69 lr_warmup_steps_ratio 0"),
        weight_decay=(0.01, f"{R}:179 optim.weight_decay"),
        adam_betas=((0.9, 0.999), "DARE verl/workers/dllm_fsdp_workers.py:563 AdamW betas default"),
        max_grad_norm=(1.0, f"{V}:49 grad_clip"),
        train_steps=(700, "THU-KEG/BGPO README: 700 steps on math"),
        inner_updates=(1, f"{V}:61 ppo_epochs 1"),
        minibatches=(1, f"{R}:182 ppo_mini_batch_size = train_batch_size: one update per batch"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(8, f"{R}:140 n_rollout"),
        batch_prompts=(16, f"{R}:139 batch_size"),
        temperature=(0.6, f"{R}:143 train_temperature"),
        gen_length=(512, f"{R}:91 max_response_length (math)"),
        steps=(256, f"{R}:92 num_diffusion_steps = max_response_length / 2"),
        block_length=(32, f"{R}:148 block_length"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(0, "DARE trains every weight (FSDP2, no LoRA in the recipe)"),
        alpha=(0, "full fine-tuning"),
        dropout=(0.0, "full fine-tuning"))
    scoring: ScoreConfig = block(
        ScoreConfig,
        num_masks=(16, f"{R}:149-150 mc_num = n_l = 16: one mask per timestep"),
        mask_scheme=("stratified", "DARE _forward_process_bgpo: LLaDA's linspace of mask counts over the "
                                   "draws (rounded; here unbiased)"))
    epsilon: float = knob(0.2, "PPO clip of each draw's ratio (both sides)", source=f"{V}:51-53 clip_ratio",
                          low=0.0)
    dual_clip: float = knob(3.0, "dual clip: a draw's loss with A < 0 is at most -A c", low=1.0, low_open=True,
                            source=f"{V}:54 clip_ratio_c")
    bounded: bool = knob(True, "recompute each draw's forward in the backward, one draw's activations alive "
                               "at a time (False: every draw in one graph, one forward fewer per draw)",
                         source="BGPO's point: memory flat in the number of draws (DARE backwards each draw)")


# Per-task overrides of the math recipe (recipe/llada/run_bgpo_llada_8b_instruct.sh; steps: THU-KEG/BGPO README)
RECIPES: dict[str, dict] = {
    "countdown": dict(gen_length=256, steps=128, train_steps=560),
    "sudoku": dict(gen_length=256, steps=128, train_steps=400),
    "code": dict(gen_length=512, steps=512, train_steps=None, epochs=5),
}
TASK_RECIPE = {"humaneval": "code", "mbpp": "code", "livecodebench": "code"}


def draw_scores(dlm, rollouts: Rollouts, draw: MaskDraw, bounded: bool) -> torch.Tensor:
    """[N, K] single-draw ELBOs divided by the window (DARE `_forward_micro_batch`: loss_per_sample / W)."""
    score = bounded_token_logprobs if bounded else masked_token_logprobs
    lp = score(dlm, rollouts.batch, draw.masks)
    return (draw.weights.to(lp.dtype) * lp.sum(-1)).T / rollouts.batch.completion.shape[1]


@register_method
class BGPO(Method):
    name = "bgpo"
    Config = BGPOConfig
    profile = Profile(family="sequence-ELBO RL", reference="none",
                      estimator="random-order ELBO, 16 stratified draws, one linear term per draw",
                      forwards=1, forwards_note="1 of the 16 draws at a time")
    fidelity = (
        Deviation("one backward per Monte-Carlo draw (gradient accumulation over draws)",
                  "the draws are checkpointed one at a time in one backward (`bounded`): the same gradient and "
                  "memory bound, one extra forward per draw", "kept",
                  "tests/test_likelihood_draws.py::test_bounded_draws_give_the_same_gradient_with_memory_flat_in_the_number_of_draws"),
        Deviation("ratio for A > 0: exp(log(1 + x)), NaN when x <= -1", "1 + x (equal wherever DARE's is defined)",
                  "kept", "tests/test_bgpo.py::test_loss_by_hand"),
        Deviation("token-mean of the sequence score over each dynamic-size micro-batch (token budget 5120), "
                  "scaled by its share of the mini-batch", "mean over the rollout batch's rows (every window is "
                  "equally long, so DARE's token mean is a row mean up to its micro-batch grouping)", "kept",
                  "tests/test_bgpo.py::test_micro_batch_of_one_matches_whole_batch"),
    )

    @classmethod
    def recipe(cls, task: str) -> dict:
        return RECIPES.get(TASK_RECIPE.get(task, task), {})

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg = self.config
        draws = [draw_masks(rollouts.batch.valid, cfg.scoring.num_masks,
                            torch.Generator().manual_seed(mask_seed(rollouts.seed, j)), cfg.scoring.mask_scheme)
                 for j in range(max(1, cfg.optim.inner_updates))]
        c = rollouts.cache = BGPOCache(adv=group_advantages(rollouts.rewards, rollouts.groups, "zscore", eps=1e-6),
                                       draws=draws)
        if self.updates_per_batch > 1:
            with torch.no_grad():
                c.old = [draw_scores(policy, rollouts, d, False).detach() for d in draws]

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg = self.config
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        score = draw_scores(policy, rollouts, c.draws[j], cfg.bounded)
        old = c.old[j].to(score.dtype) if c.old is not None else score.detach()
        loss, stats = bgpo_loss(score.T, old.T, c.adv.to(score.device), cfg.epsilon, cfg.epsilon, cfg.dual_clip)
        stats.update(inner_iter=j, reward_mean=float(rollouts.rewards.float().mean()),
                     elbo_per_token=float(score.detach().mean()))
        return loss, stats
