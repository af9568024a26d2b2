"""CJ-GRPO, Consistency Trajectory GRPO (arXiv 2509.23924, "Taming Masked Diffusion Language Models via
Consistency Trajectory Reinforcement Learning with Fewer Decoding Step"; code github.com/yjyddq/EOSER-ASS-RL
@ 5affb4e, `cj-grpo/cj_grpo_trainer_semiar.py` (`reversed_process`, `_get_per_token_logps`,
`compute_loss`; the eoser/ass trainers share the loss), recipe `cj-grpo/slurm_scripts/train.yaml` and
`gsm_run.sh`; DARE re-implements it in `llada_dp_actor_cj_grpo.py`).

The policy is optimised on exactly the states its rollout passed through. For every decoding step k of
a completion the input is the window before step k (every token decoded at step >= k masked again,
the prompt never) and the targets are the tokens step k decoded:

    loss = mean_k [ sum_{i, j in T_ik} ( -min(rho A_i, clip(rho, 1 - eps, 1 + eps) A_i) + beta k3 ) / sum_i |T_ik| ]

rho = pi_theta / pi_old per token, A_i = r_i - mean_group(r) (no std division), k3 against the
reference (the base model: the recipe's LoRA adapter disabled), eps 0.5, beta 0.04, mu = 12 updates per
rollout batch against the rollout-time log-probs. Step k's token sum is normalised over the rows of one
group (the reference's per-device batch is one group of 6), then the steps are averaged, then the
groups. Rollouts decode every end-of-text pad at its own step (`pad_steps`) as the reference does, so
the training states are the rollout states after end-of-text too.

Decoding: the recipe's default `decoding: semi-ar` is LLaDA's sampler with blocks of 128. Its run
scripts pass `--decoding eoser-ass` (ascending step sizes with EOSER), which is a sampler option here:
`--set sampler.schedule=ascending --set sampler.eos_gamma=0.01` with steps = log2(gen_length) and one block
(docs/sampler.md; the scripts' own gen_length/steps fail the reference's `gen_length >= 2**steps` assert).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob
from dlm_bench.likelihood import trace_samples
from dlm_bench.methods import Method, Rollouts, register_method
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods.losses import group_advantages
from dlm_bench.methods.profile import Profile
from dlm_bench.methods.tracerl import tracerl_loss
from dlm_bench.methods.trajectory import SampleCache, sample_logprobs, select_samples

Y = "EOSER-ASS-RL cj-grpo/slurm_scripts/train.yaml"
GSM = "EOSER-ASS-RL cj-grpo/slurm_scripts/gsm_run.sh"


@dataclass
class CJGRPOConfig(MethodConfig):
    """CJ-GRPO on GSM8K (train.yaml, with gsm_run.sh's inner updates)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(3e-6, f"{Y}:35 learning_rate"),
        lr_schedule=("constant_with_warmup", f"{Y}:36 lr_scheduler_type"),
        warmup_ratio=(0.0001, f"{Y}:33 warmup_ratio"),
        weight_decay=(0.1, f"{Y}:26 weight_decay"),
        adam_betas=((0.9, 0.99), f"{Y}:24-25 adam_beta1/2"),
        max_grad_norm=(0.2, f"{Y}:27 max_grad_norm"),
        train_steps=(None, f"{Y}:39 num_train_epochs 10; here one pass unless set"),
        inner_updates=(12, f"{GSM}:29 NUM_ITER=12 (gsm8k, math; 8 for countdown, sudoku)"),
        minibatches=(1, "trl GRPOTrainer: one optimizer step per generation batch"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(6, f"{Y}:38 num_generations"),
        batch_prompts=(16, f"{Y}:42-43 6 completions/device x grad-accum 2 x 8 GPUs (accelerate.yaml) / G 6"),
        temperature=(1.0, f"{Y}:73 temperature"),
        gen_length=(256, f"{Y}:61 max_completion_length"),
        steps=(128, f"{Y}:65 diffusion_steps"),
        block_length=(128, f"{Y}:63 block_length (decoding: semi-ar)"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(128, f"{Y}:11 lora_r (4-bit base not reproduced)"),
        alpha=(64, f"{Y}:12 lora_alpha"),
        dropout=(0.05, f"{Y}:13 lora_dropout"),
        targets=("q,k,v,o,gate,up,down", "cj_grpo_train.py:115 target_modules q_proj..gate_proj, mapped per "
                                          "architecture (lora_targets.py)"))
    beta: float = knob(0.04, "k3 KL coefficient against the reference (0: no reference forward)",
                       source=f"{Y}:70 beta", low=0.0)
    epsilon: float = knob(0.5, "symmetric token-level PPO clip", source=f"{Y}:71 epsilon", low=0.0)


RECIPES = {"countdown": {"inner_updates": 8}, "sudoku": {"inner_updates": 8}}   # countdown_run.sh, sudoku_run.sh


@dataclass(kw_only=True)
class CJGRPOCache(SampleCache):
    """One sample per (rollout, decoding step)."""
    masks: torch.Tensor                    # [R, G] positions masked in the step's input
    targets: torch.Tensor                  # [R, G] the tokens the step decoded
    weight: torch.Tensor                   # [R] |T_ik| / sum_i |T_ik| / steps: each group's weights sum to 1
    adv: torch.Tensor                      # [R] the row's centred reward
    old: torch.Tensor | None = None        # [R, G] rollout-time log-probs (several updates per batch)
    ref: torch.Tensor | None = None        # [R, G] reference log-probs (beta > 0)


def step_weights(rows: torch.Tensor, steps: torch.Tensor, counts: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Weight of each (row, step) sample: its token count over the count of the same step in its group,
    over the group's number of steps; each group's weights sum to 1."""
    g = groups[rows]
    pairs, inv = torch.unique(torch.stack([g, steps], 1), dim=0, return_inverse=True)
    per_pair = torch.zeros(len(pairs), dtype=counts.dtype, device=counts.device).index_add(0, inv, counts)
    gs, ginv = torch.unique(pairs[:, 0], return_inverse=True)
    n_steps = torch.bincount(ginv)[torch.searchsorted(gs, g)]
    return counts / per_pair[inv].clamp(min=1) / n_steps.to(counts.dtype)


@register_method
class CJGRPO(Method):
    name = "cj_grpo"
    Config = CJGRPOConfig
    profile = Profile(family="trajectory RL", reference="frozen (the recipe: the base, adapter disabled)",
                      estimator="exact trajectory: every decoding step's tokens at the rollout's own state",
                      forwards=128, forwards_note="every one of the 128 decoding steps in one backward")
    needs_reference = True
    needs_trajectory = True
    pad_steps = True
    fidelity = (
        Deviation("KL reference: the base with the LoRA adapter disabled (sync_ref_model has no effect on it)",
                  "a frozen copy of the base model", "fixed", "tests/test_cj_grpo.py::test_reference_and_flags"),
        Deviation("run scripts pass --decoding eoser-ass (ascending steps, EOSER)", "train.yaml's semi-ar is the "
                  "default; eoser-ass is sampler.schedule=ascending + sampler.eos_gamma=0.01", "option",
                  "tests/test_decoders.py::test_eoser_and_ascending_match_the_reference"),
        Deviation("eoser_ass_generate with block_num > 1 (blocks of 2^k tokens, one step each)", "equal blocks, each "
                  "with the ascending schedule (block_num = 1 is the same decode)", "kept",
                  "tests/test_decoders.py::test_eoser_and_ascending_match_the_reference"),
        Deviation("each step's tokens averaged over the device's micro-batch (one group of 6), then over the steps "
                  "and the 2 accumulation steps", "the same per group: weights |T_ik| / sum_i |T_ik| / steps, "
                  "then the mean over groups", "fixed", "tests/test_cj_grpo.py::test_loss_by_hand"),
        Deviation("a step that reveals no token (more steps than tokens) divides 0 by 0", "such steps have no "
                  "sample", "kept", "tests/test_cj_grpo.py::test_samples_are_the_rollout_states"),
    )

    @classmethod
    def recipe(cls, task: str) -> dict:
        return RECIPES.get(task, {})

    def __init__(self, config=None, policy=None):
        super().__init__(config, policy)
        self.needs_reference = self.config.beta != 0.0

    def select(self, rollouts: Rollouts, idx: torch.Tensor) -> Rollouts:
        return select_samples(rollouts, idx)

    def loss_count(self, rollouts: Rollouts) -> float:
        c = rollouts.cache
        return float(c.weight.sum()) if isinstance(c, CJGRPOCache) else float(rollouts.rewards.numel())

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        dev = batch.completion.device
        rows, _, masks, targets = trace_samples(rollouts.step_map.cpu(), batch.valid.cpu(), 1)
        rows, masks, targets = rows.to(dev), masks.to(dev), targets.to(dev)
        steps = (rollouts.step_map.to(dev)[rows] * targets).amax(-1)
        counts = targets.sum(-1).to(torch.float64)
        weight = step_weights(rows, steps, counts, rollouts.groups.to(dev))
        adv = group_advantages(rollouts.rewards.to(dev), rollouts.groups.to(dev), "center")[rows]
        c = rollouts.cache = CJGRPOCache(rows=rows, masks=masks, targets=targets, weight=weight, adv=adv)
        with torch.no_grad():
            if self.updates_per_batch > 1:
                c.old = self._logp(policy, rollouts).detach()
            if cfg.beta != 0.0:
                c.ref = self._logp(ref, rollouts).detach()

    def _logp(self, dlm, rollouts: Rollouts) -> torch.Tensor:
        c, batch = rollouts.cache, rollouts.batch
        return sample_logprobs(dlm, batch, c.rows, batch.completion[c.rows], c.masks, c.targets)

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg = self.config
        c = self.prepared(rollouts, policy, ref)
        logp = self._logp(policy, rollouts)
        old = c.old if c.old is not None else logp.detach()
        loss, stats = tracerl_loss(logp, old.to(logp.dtype), None if c.ref is None else c.ref.to(logp.dtype),
                                   c.adv.to(logp.dtype), c.targets, cfg.beta, cfg.epsilon, c.weight)
        stats.update(samples_per_row=float(len(c.rows) / max(1, rollouts.rewards.numel())),
                     reward_mean=float(rollouts.rewards.float().mean()))
        return loss, stats
