"""VRPO, Variance-Reduced Preference Optimization (arXiv 2505.19223, "LLaDA 1.5: Variance-Reduced Preference
Optimization for Large Language Diffusion Models"; the authors' training code is closed, DARE re-implements it:
github.com/yjyddq/DARE @ 83ae8a3 `verl/workers/actor/llada_dp_actor_vrpo.py`, `verl/trainer/dpo/`,
`verl/trainer/ppo/dllm_core_algos.py::compute_dpo_loss`, recipe `recipe/llada/run_vrpo_llada_8b_instruct.sh`).

DPO with ELBO estimates B in place of log-likelihoods (`losses.dpo_loss`), per preference pair (y_w, y_l):

    loss = -log sigmoid(beta ((B_theta(y_w) - B_ref(y_w)) - (B_theta(y_l) - B_ref(y_l))))

and the paper's three variance reductions: (1) a budget of n masked forwards per ELBO; (2) all of it on
timesteps, one mask per timestep (n_time = n, n_mask = 1: `stratified` sizes, one random subset each);
(3) antithetic sampling: policy and reference score the same masked inputs. DARE divides each ELBO by
the window (`score_scale` "window", with beta 0.2); the paper's B is the raw ELBO ("sequence").

Pairs come from a pairs file (`dlm-bench train vrpo --pairs FILE.jsonl`, the recipe's UltraFeedback
pairs; `dlm_bench.training.pairs`) or from graded rollouts: inside each prompt's group every completion
with a higher reward than another forms a pair (correct over incorrect), the loss averaging over all
pairs of the batch; a group whose rewards are all equal forms none. A backward chunk must hold whole
groups (`micro_batch_size` a multiple of `group_size`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, ScoreConfig, block, knob, mask_seed
from dlm_bench.errors import UserError
from dlm_bench.likelihood import MaskDraw, draw_masks, elbo
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods.losses import dpo_loss, preference_pairs
from dlm_bench.methods.profile import Profile

R = "DARE recipe/llada/run_vrpo_llada_8b_instruct.sh"
Y = "DARE verl/trainer/config/dpo_trainer.yaml"


@dataclass(kw_only=True)
class VRPOCache(MethodCache):
    draws: list[MaskDraw]                      # per inner update: masks shared by policy and reference
    ref: list[torch.Tensor]                    # per update [N]: reference scores


@dataclass
class VRPOConfig(MethodConfig):
    """DARE's VRPO recipe for LLaDA-8B-Instruct on UltraFeedback pairs (over verl's dpo_trainer.yaml)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(5e-7, f"{R}:105 lr"),
        lr_schedule=("constant", f"{Y}:67 warmup_style constant"),
        warmup_ratio=(0.0, f"{Y}:64 lr_warmup_steps_ratio 0"),
        weight_decay=(0.01, f"{R}:143 optim.weight_decay"),
        adam_betas=((0.9, 0.999), "DARE verl/workers/dllm_fsdp_workers.py:563 AdamW betas default"),
        max_grad_norm=(1.0, f"{Y}:53 grad_clip"),
        train_steps=(None, f"{R}:79 total_epoch 10 on UltraFeedback; here one pass unless set"),
        inner_updates=(1, f"{Y}:56 ppo_epochs 1"),
        minibatches=(2, f"{R}:109 ppo_mini_batch_size 8 GPUs x 4 x 2 = 64 rows = 32 pairs: 2 updates per 64 pairs"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(2, "DARE's preference data: one (chosen, rejected) pair per prompt"),
        batch_prompts=(64, f"{R}:104 batch_size (pairs)"),
        temperature=(0.6, "graded rollouts have no recipe: DARE's RL sampling temperature (run_bgpo_llada_8b_instruct.sh:143)"),
        gen_length=(512, f"{R}:77 max_response_length"),
        steps=(256, f"{R}:78 num_diffusion_steps = max_response_length / 2 (used only for graded rollouts)"),
        block_length=(32, f"{R}:112 block_length"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(0, "DARE trains every weight (FSDP2, no LoRA in the recipe)"),
        alpha=(0, "full fine-tuning"),
        dropout=(0.0, "full fine-tuning"))
    scoring: ScoreConfig = block(
        ScoreConfig,
        num_masks=(4, f"{R}:113-114 mc_num = n_l = 4: n_time = n, n_mask = 1 (the paper's optimal allocation)"),
        mask_scheme=("stratified", "DARE _forward_process_vrpo: LLaDA's linspace of mask counts over the draws "
                                   "(rounded; here unbiased)"))
    beta: float = knob(0.2, "DPO temperature on the score differences", source=f"{R}:116 beta", low=0.0,
                       low_open=True)
    score_scale: str = knob("window", "'window': ELBO / gen_length (DARE) | 'sequence': the raw ELBO (the paper's B)",
                            choices=("window", "sequence"),
                            source="DARE llada_dp_actor_vrpo.py:127 log_likelihood / response_length")


@register_method
class VRPO(Method):
    name = "vrpo"
    Config = VRPOConfig
    needs_reference = True
    profile = Profile(family="preference", reference="frozen (shares every mask with the policy)",
                      estimator="random-order ELBO, 4 stratified draws, one mask per timestep",
                      forwards=4, forwards_note="4 draws; a pair's two completions share one backward")
    fidelity = (
        Deviation("each ELBO divided by the fixed window (beta 0.2 on ELBO / 512)",
                  "the same by default; the paper's raw ELBO with score_scale=sequence", "option",
                  "tests/test_vrpo.py::test_scores_and_antithetic_masks"),
        Deviation("pairs from a preference dataset only", "a pairs file (--pairs) or graded rollouts: every "
                  "higher-reward over lower-reward completion of a group", "kept",
                  "tests/test_vrpo.py::test_pairs_file_trains_and_refuses_bad_lines"),
        Deviation("mask sizes: LLaDA's rounded linspace over the 4 draws (biased when L/4 is not an integer)",
                  "`stratified` (unbiased, the same stratification)", "fixed",
                  "tests/test_mask_schemes.py::test_stratified_elbo_is_unbiased_against_enumeration"),
    )

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        draws = [draw_masks(batch.valid, cfg.scoring.num_masks,
                            torch.Generator().manual_seed(mask_seed(rollouts.seed, j)), cfg.scoring.mask_scheme)
                 for j in range(max(1, cfg.optim.inner_updates))]
        with torch.no_grad():
            refs = [self._score(ref, batch, d).detach() for d in draws]
        rollouts.cache = VRPOCache(draws=draws, ref=refs)

    def _score(self, dlm, batch, draw: MaskDraw) -> torch.Tensor:
        e = elbo(dlm, batch, draw)
        return e / self.config.rollout.gen_length if self.config.score_scale == "window" else e

    def select(self, rollouts: Rollouts, idx: torch.Tensor) -> Rollouts:
        """Rows `idx`; a pair's two rows must be in the same backward chunk, so whole groups only."""
        g = rollouts.groups
        if not torch.equal(torch.isin(g, g[idx]).nonzero(as_tuple=True)[0].sort().values, idx.sort().values):
            raise UserError("vrpo: a preference pair must sit in one backward chunk; set micro_batch_size to a "
                            "multiple of group_size")
        return rollouts.rows(idx)

    def loss_count(self, rollouts: Rollouts) -> float:
        """The loss is a mean over the preference pairs of these rows."""
        return float(preference_pairs(rollouts.rewards, rollouts.groups)[0].numel())

    def loss(self, rollouts: Rollouts, policy, ref):
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        s = self._score(policy, rollouts.batch, c.draws[j])
        w, l = preference_pairs(rollouts.rewards, rollouts.groups)
        r = c.ref[j].to(s.device, s.dtype)
        loss, stats = dpo_loss(s[w], s[l], r[w], r[l], self.config.beta)
        stats.update(inner_iter=j, reward_mean=float(rollouts.rewards.float().mean()),
                     score_gap=float((s.detach() - r).mean()))
        return loss, stats
