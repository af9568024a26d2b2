"""ESPO (arXiv 2512.03759, "Principled RL for Diffusion LLMs Emerges from a Sequence-Level
Perspective"; code github.com/ML-GSAI/ESPO, `espo/espo_trainer.py`, `recipes/`).

The whole completion is one action and its ELBO stands in for log pi(y|x):
  rho = exp((ELBO_theta - ELBO_old) / L), clipped at 1 +- eps;
  loss = -mean_i min(rho_i A_i, clip(rho_i) A_i) + beta * mean_i 1/2 (ELBO_theta - ELBO_ref)^2 / L
with leave-one-out advantages A_i = r_i - mean_{j != i} r_j and no std scaling (`scale_rewards:
false`). ELBOs use ESPO's coupled draws (mask l ~ U{0..L} tokens with weight (L+1)/l, then the exact
complement with weight (L+1)/(L-l); `_get_elbo(reduce_var=True)`), `num_mc` = 2 pairs per estimate.

Masks, as in `_generate_and_score_completions`: one seed per (inner iteration j, MC sample), drawn
once per rollout batch. The old and reference ELBOs for every j are computed up front with those
seeds (`_get_elbo_by_chunk`), and update j re-scores the policy with the same seed, so theta, old and
ref see identical masked inputs. With a single update the old ELBO is the current one detached.
Here the seeds derive from `rollouts.seed` and j.

Rollout precision: the recipe draws in bf16 (its `generate` casts the logits to `model.dtype`, bf16,
then draws the Gumbel noise and computes the confidence softmax in it; espo_trainer.py:284, 240-245,
335); the harness default is float64 (LLaDA's generate.py); set `--set sampler.noise_dtype=bfloat16`
(`sampler: {noise_dtype: bfloat16}` in YAML) for the recipe's precision (docs/sampler.md).

Not copied: `sync_ref_model` (ESPO refreshes the reference every 64 steps; the benchmark's reference
is frozen); the prompt is never masked in ESPO either.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import (CODE_REWARD_HELP, CODE_REWARDS, LoraConfig, MethodConfig, OptimConfig, RolloutConfig,
                              ScoreConfig, block, knob, mask_seed)
from dlm_bench.likelihood import MaskDraw, draw_masks, elbo
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.methods.profile import Profile
from dlm_bench.methods.losses import espo_loss, group_advantages
from dlm_bench.distributed import is_sharded
from dlm_bench.models.adapter import AdapterDisabled


def iteration_draws(rollouts: Rollouts, j: int, n: int, scheme: str) -> MaskDraw:
    """The masks of inner update j: a pure function of (rollouts.seed, j), shared by policy/old/ref."""
    gen = torch.Generator().manual_seed(mask_seed(rollouts.seed, j))
    return draw_masks(rollouts.batch.valid, n, gen, scheme)


@dataclass(kw_only=True)
class ESPOCache(MethodCache):
    adv: torch.Tensor                          # [N] leave-one-out advantages
    draws: list[MaskDraw]                      # per inner update: the masks of policy, old and reference
    elbo_old: list[torch.Tensor] | None = None   # per update [N]: rollout-time ELBOs (only when mu > 1)
    elbo_ref: list[torch.Tensor] | None = None   # per update [N]: reference ELBOs (only when beta != 0)


@dataclass
class ESPOConfig(MethodConfig):
    """Defaults are ESPO's GSM8K recipe (recipes/run_gsm8k_llada.sh over recipes/train.yaml);
    `ESPO.recipe(task)` gives the other tasks' recipes (RECIPES below)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(3e-6, "run_*_llada.sh --learning_rate 3e-6"),
        lr_schedule=("constant_with_warmup", "run_*_llada.sh --lr_scheduler_type"),
        warmup_ratio=(0.001, "run_*_llada.sh --warmup_ratio"),
        weight_decay=(0.01, "run_*_llada.sh --weight_decay"),
        adam_betas=((0.9, 0.99), "train.yaml adam_beta1/2"),
        max_grad_norm=(0.2, "run_*_llada.sh --max_grad_norm"),
        train_steps=(None, "train.yaml num_train_epochs 1: one pass over the train split"),
        inner_updates=(8, "--num_iterations 8 (mu)"),
        minibatches=(1, "trl GRPOTrainer: each iteration is one optimizer step over the generation batch"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(6, "--num_generations 6 (GSM8K)"),
        batch_prompts=(16, "3 completions/device x grad-accum 4 x 8 GPUs / G 6 = 16 prompts"),
        temperature=(1.0, "train.yaml generation_temperature"),
        gen_length=(256, "train.yaml max_completion_length"),
        steps=(256, "--diffusion_steps 256 (GSM8K, MATH, code; 128 Countdown/Sudoku)"),
        block_length=(32, "espo_trainer.py generate(block_length=32), hard-coded"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(128, "train.yaml lora_r (0 = full fine-tuning, as the code recipe)"),
        alpha=(64, "train.yaml lora_alpha"),
        dropout=(0.05, "train.yaml lora_dropout"),
        targets=("q,k,v,o,gate,up,down", "train.yaml lora_target_modules q,k,v,o,up,down,gate (_proj), mapped per "
                       "architecture (the literal names match only q,k,v,up on LLaDA: lora_targets.py)"))
    scoring: ScoreConfig = block(
        ScoreConfig,
        num_masks=(4, "--num_mc 2: two coupled pairs per ELBO, 4 masked forwards"),
        mask_scheme=("espo", "_get_elbo(reduce_var=True): l ~ U{0..L} + exact complement"))
    code_reward: str = knob("espo", CODE_REWARD_HELP, choices=CODE_REWARDS,
                            source="run_code_llada.sh --dataset_name code: espo/rewards.py:422-431 code_format_reward "
                                   "+ code_reward, summed with unit weights (espo_trainer.py:691)")
    beta: float = knob(1e-3, "k2 KL coefficient", source="--beta 1e-3 (GSM8K)", low=0.0)
    epsilon_low: float = knob(0.2, "lower PPO clip of the sequence ratio",
                              source="train.yaml epsilon", low=0.0)
    epsilon_high: float = knob(0.2, "upper PPO clip", source="trl: epsilon_high defaults to epsilon", low=0.0)
    scale_rewards: bool = knob(False, "divide advantages by the group's reward std",
                               source="train.yaml scale_rewards: false (RLOO without std)")

    # ESPO's recipe counts coupled pairs: --set num_mc=N means N pairs = 2N masked forwards
    ref_sync_every: int = knob(64, "full fine-tuning: every N optimizer updates the reference moves to "
                                   "alpha x policy + (1 - alpha) x reference (0: frozen; under LoRA the reference "
                                   "is the adapter-disabled base and never moves, as in trl)", low=0,
                               source="train.yaml sync_ref_model True, ref_model_sync_steps 64")
    ref_sync_alpha: float = knob(0.6, "mixing weight of the policy in a reference sync", low=0.0, high=1.0,
                                 source="trl GRPOConfig ref_model_mixup_alpha default 0.6 (train.yaml does not set it)")
    ALIASES = {"num_mc": ("scoring.num_masks", 2)}


# Per-task overrides of the GSM8K defaults, from recipes/run_{task}_llada.sh (+ train.yaml for code).
RECIPES: dict[str, dict] = {
    "gsm8k": {},
    "math": dict(group_size=16),      # 2 x 16 x 8 / 16 = 16 prompts
    "countdown": dict(beta=3e-3, epsilon_low=0.0, epsilon_high=0.0, steps=128),   # --epsilon 0 (sic)
    "sudoku": dict(beta=1e-2, steps=128),
    # code: full fine-tune (--use_peft false), lr and weight decay from train.yaml, 1 x 20 x 8 / 10 = 16
    "code": dict(group_size=10, beta=1e-2, lr=1e-6, weight_decay=0.1, max_grad_norm=0.8,
                 lora_r=0, lora_alpha=0, lora_dropout=0.0),
}
TASK_RECIPE = {"math500": "math", "minerva": "math", "humaneval": "code", "mbpp": "code",
               "livecodebench": "code"}


@register_method
class ESPO(Method):
    name = "espo"
    Config = ESPOConfig
    profile = Profile(family="sequence-ELBO RL",
                      reference="frozen LoRA base; full fine-tuning: soft-synced every 64 updates",
                      estimator="random-order ELBO, 2 coupled pairs (ESPO's exact complement)",
                      forwards=4, forwards_note="4 masked forwards per completion")
    fidelity = (
        Deviation("rollouts draw the Gumbel noise and the confidence softmax in bf16 (espo_trainer.py)",
                  "float64 by default (LLaDA's reference); the recipe's precision with "
                  "--set sampler.noise_dtype=bfloat16", "option", "tests/test_sampler.py::test_noise_dtype_matches_espo"),
        Deviation("mask sizes stratified across the batch rows (linspace from one random offset, rounded)",
                  "scheme 'espo': one offset per draw spread over the rows, floored (each row exactly uniform); "
                  "'espo_independent' kept", "option", "tests/test_recipes.py::test_espo_sizes_are_stratified_across_rows"),
        Deviation("full fine-tuning soft-syncs the reference every 64 steps (trl, alpha 0.6)",
                  "ref_sync_every 64, ref_sync_alpha 0.6; the moved reference is checkpointed", "fixed",
                  "tests/test_recipes.py::test_espo_soft_syncs_a_full_copy_reference_and_resumes_it"),
        Deviation("code reward: format score (1 / 0.5 / 0) + fraction of test cases passed (rewards.py)",
                  "code_reward 'espo' on code tasks (binary everywhere else, and for evaluation); a pass is "
                  "the harness's verdict per test case, not 'ran without an exception'", "fixed",
                  "tests/test_code_rewards.py::test_mbpp_partial_pass_rate"),
    )
    needs_reference = True

    @classmethod
    def recipe(cls, task: str) -> dict:
        """ESPO's recipe for `task` (GSM8K's for tasks it has none for)."""
        return RECIPES.get(TASK_RECIPE.get(task, task), {})

    def after_update(self, opt_step: int, policy, ref) -> None:
        """trl's SyncRefModelCallback: a soft copy of the policy into a full-copy reference."""
        every, a = self.config.ref_sync_every, self.config.ref_sync_alpha
        if not every or opt_step % every or ref is None:      # most updates: nothing to do
            return
        from dlm_bench.errors import UserError
        if isinstance(ref, AdapterDisabled):                   # LoRA: the base itself, never moved
            return
        if is_sharded(policy.model):
            raise UserError("espo: the reference sync is not implemented under FSDP; use --set parallel=ddp "
                            "or ref_sync_every=0")
        with torch.no_grad():
            for r, p in zip(ref.model.parameters(), policy.model.parameters()):
                r.mul_(1.0 - a).add_(p.detach().to(r.dtype), alpha=a)
        self.reference_moved = True

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        adv = group_advantages(rollouts.rewards, rollouts.groups, "rloo", scale=cfg.scale_rewards)
        draws = [iteration_draws(rollouts, j, cfg.scoring.num_masks, cfg.scoring.mask_scheme)
                 for j in range(max(1, cfg.optim.inner_updates))]
        c = rollouts.cache = ESPOCache(adv=adv, draws=draws)
        with torch.no_grad():
            if self.updates_per_batch > 1:
                c.elbo_old = [elbo(policy, batch, d).detach() for d in draws]
            if cfg.beta != 0.0:
                c.elbo_ref = [elbo(ref, batch, d).detach() for d in draws]

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg, batch = self.config, rollouts.batch
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        e = elbo(policy, batch, c.draws[j])
        old = c.elbo_old[j] if c.elbo_old is not None else e.detach()
        e_ref = c.elbo_ref[j] if c.elbo_ref is not None else None
        adv = c.adv.to(e.device, e.dtype)
        loss, stats = espo_loss(e, old, e_ref, adv, batch.lengths, cfg.beta, cfg.epsilon_low, cfg.epsilon_high)
        stats.update(inner_iter=j, reward_mean=float(rollouts.rewards.float().mean()),
                     elbo_per_token=float((e.detach() / batch.lengths.clamp(min=1)).mean()))
        return loss, stats
