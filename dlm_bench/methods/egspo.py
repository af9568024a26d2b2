"""EGSPO-SA, entropy-guided stepwise policy optimisation with stepwise advantages (arXiv 2603.12554,
"Reinforcement Learning for Diffusion LLMs with Entropy-Guided Step Selection and Stepwise Advantages",
Kunde, Doudi et al.; code github.com/vishnutez/egspo-dllm-rl @ a7d618b, `egspo/egspo_trainer.py`
(`generate`, `_generate_and_score_completions`, `_get_per_token_logps_unbiased`, `compute_loss`),
recipe `egspo/train.sh` over `egspo/slurm_scripts/train.yaml`).

Decoding is a Markov decision process over denoising steps; its policy gradient is a sum over steps of
log pi(step t's tokens | state before t) times an advantage of that step. Per rollout:
- step selection: the K steps whose decoded tokens had the highest mean predictive entropy when they
  were committed (`high_entropy`);
- stepwise advantage: r(x_0) - r(x_0|t), where x_0|t is the one-step greedy prediction of the whole
  window from the state before step t (the decoded tokens kept) and r the task reward; the return of
  slot k is R_k = (r + lambda (r - r(x_0|t_k))) / (1 + lambda) and its advantage R_k minus the mean of
  the group's returns in the same slot k (no std division);
- loss of a slot: -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A) + beta k3, rho = exp of the summed
  log-prob of the step's tokens minus the rollout-time one, k3 on the same summed log-probs against the
  reference (the base), averaged over rows and divided by the tokens per step (gen_length / steps).
The K slots are spread over the inner updates (the recipe: 8 slots, gradient accumulation 2, so 4
updates of 2 slots each per rollout batch). Rollouts decode every step (`pad_steps`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob
from dlm_bench.errors import UserError
from dlm_bench.methods import Method, Rollouts, Sampled, register_method
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods.losses import clipped_pg, egspo_returns, group_mean, k3
from dlm_bench.methods.profile import Profile
from dlm_bench.methods.trajectory import (SampleCache, sample_logprobs, sample_recorded, select_samples,
                                         state_masks)

Y = "egspo-dllm-rl egspo/slurm_scripts/train.yaml"
SH = "egspo-dllm-rl egspo/train.sh"


@dataclass
class EGSPOConfig(MethodConfig):
    """EGSPO-SA (train.sh over slurm_scripts/train.yaml)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(3e-5, f"{SH}:33 LEARNING_RATE"),
        lr_schedule=("constant_with_warmup", f"{Y}:35 lr_scheduler_type"),
        warmup_ratio=(0.0001, f"{Y}:32 warmup_ratio"),
        weight_decay=(0.1, f"{Y}:25 weight_decay"),
        adam_betas=((0.9, 0.99), f"{Y}:23-24 adam_beta1/2"),
        max_grad_norm=(0.2, f"{Y}:26 max_grad_norm"),
        train_steps=(None, f"{Y}:37 num_train_epochs 50; here one pass unless set"),
        inner_updates=(4, f"{SH}:31-32 8 slots (LOGPS_EVAL_NUM_STEPS) reused over 8 micro-steps, "
                          f"GRAD_ACCUMULATION_STEPS 2: 4 updates per rollout batch"),
        minibatches=(1, "one generation batch per update"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(8, f"{SH}:29 NUM_GENERATIONS"),
        batch_prompts=(6, f"{SH}:30 6 completions/device x 8 GPUs (accelerate_a100.yaml) / G 8"),
        temperature=(0.9, f"{SH}:38 TEMPERATURE"),
        gen_length=(256, f"{Y}:64 max_completion_length"),
        steps=(128, f"{Y}:67 diffusion_steps"),
        block_length=(32, f"{Y}:66 block_length"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(128, f"{Y}:10 lora_r (4-bit base not reproduced)"),
        alpha=(64, f"{Y}:11 lora_alpha"),
        dropout=(0.05, f"{Y}:12 lora_dropout"),
        targets=("q,k,v,o,gate,up,down", "egspo_train.py:139 target_modules q_proj..gate_proj, mapped per "
                                          "architecture (lora_targets.py)"))
    selected_steps: int = knob(8, "K: denoising steps trained per rollout (highest mean entropy)",
                               source=f"{SH}:32 LOGPS_EVAL_NUM_STEPS", low=1)
    step_selection: str = knob("high_entropy", "'high_entropy' | 'uniform' (evenly spaced, the last step included)",
                               choices=("high_entropy", "uniform"), source=f"{SH}:35 LOGPS_EVAL_TIME_STEPS_MODE")
    lam: float = knob(0.5, "lambda1: weight of the stepwise advantage r(x_0) - r(x_0|t) in the return",
                      source=f"{SH}:39 LAMBDA1", low=0.0)
    normalize_returns: bool = knob(True, "divide the returns by 1 + lambda1", source=f"{SH}:40 NORMALIZE_RETURNS")
    epsilon: float = knob(0.2, "lower PPO clip (ratio >= 1 - epsilon)", source=f"{SH}:36 EPSILON", low=0.0)
    epsilon_high: float = knob(0.5, "upper PPO clip (ratio <= 1 + epsilon_high)", source=f"{SH}:37 EPSILON_HIGH",
                               low=0.0)
    beta: float = knob(0.04, "k3 KL coefficient on the step log-probs (0: no reference forward)",
                       source=f"{Y}:71 beta", low=0.0)


@dataclass(kw_only=True)
class EGSPOCache(SampleCache):
    """One sample per (rollout, selected step); slot k of every row is the k-th entry of its selection."""
    slot: torch.Tensor                     # [R]
    masks: torch.Tensor                    # [R, G] positions not yet decoded before the step
    targets: torch.Tensor                  # [R, G] the tokens the step decoded
    adv: torch.Tensor                      # [R]
    old: torch.Tensor                      # [R] rollout-time summed log-prob of the step's tokens
    ref: torch.Tensor | None = None        # [R] the reference's (beta > 0)


class _Steps:
    """Recorder of the rollouts: each step's mean entropy over the tokens it committed, and its greedy
    one-step prediction of the whole window (decoded tokens kept)."""

    def __init__(self, n: int, steps: int, width: int, mask_id: int):
        self.entropy = torch.full((n, steps), -torch.inf, dtype=torch.float64)
        self.greedy = torch.full((n, steps, width), mask_id, dtype=torch.long)
        self.offset, self.mask_id = 0, mask_id

    def __call__(self, v) -> None:
        rows, steps = (v.rows + self.offset).cpu(), v.steps.cpu()
        masked = v.before == self.mask_id
        self.greedy[rows, steps] = torch.where(masked, v.logits.argmax(-1), v.before).cpu()
        committed = masked & (v.after != self.mask_id)
        ent = torch.special.entr(torch.softmax(v.logits.float(), -1)).sum(-1)     # 0 log 0 = 0 (-inf logits)
        mean = (ent * committed).sum(-1) / committed.sum(-1).clamp(min=1)
        self.entropy[rows, steps] = torch.where(committed.any(-1), mean, -torch.inf).double().cpu()


def select_steps(entropy: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """[N, k] steps per row: the k of highest entropy, or k evenly spaced with the last included."""
    if mode == "high_entropy":
        return torch.topk(entropy, k=k, dim=-1).indices
    S = entropy.shape[1]
    head = torch.linspace(0, S - 2, k - 1).long() if k > 1 else torch.zeros(0, dtype=torch.long)
    return torch.cat([head, torch.tensor([S - 1])]).expand(entropy.shape[0], k).clone()


@register_method
class EGSPO(Method):
    name = "egspo"
    Config = EGSPOConfig
    profile = Profile(family="trajectory RL", reference="frozen (the recipe: the base, adapter disabled)",
                      estimator="step log-probability: a selected step's tokens at its rollout state (8 of 128 "
                                "steps by entropy)",
                      forwards=2, forwards_note="2 of the 8 selected steps per update")
    needs_reference = True
    needs_trajectory = True
    pad_steps = True
    fidelity = (
        Deviation("old log-probs taken from the rollout's own forward passes", "recomputed once per rollout batch "
                  "(eval mode, no dropout) on the same states", "kept", "tests/test_egspo.py::test_samples_and_advantages"),
        Deviation("update u uses slots ((2u+1) mod 8, (2u+2) mod 8) (its step counter is advanced before the loss)",
                  "update u uses slots 2u, 2u+1", "kept", "tests/test_egspo.py::test_loss_by_hand"),
        Deviation("KL reference: the base with the adapter disabled", "a frozen copy of the base model", "fixed",
                  "tests/test_egspo.py::test_loss_by_hand"),
        Deviation("terminate_at_last_non_eos, exact KL, 'merge' and 'final' prediction modes", "not reproduced "
                  "(off in the recipe)", "kept", "tests/test_egspo.py::test_samples_and_advantages"),
    )

    def __init__(self, config=None, policy=None):
        super().__init__(config, policy)
        cfg = self.config
        if cfg.selected_steps % cfg.optim.inner_updates:
            raise UserError(f"egspo: selected_steps {cfg.selected_steps} must be a multiple of inner_updates "
                            f"{cfg.optim.inner_updates} (each update trains as many slots)")
        if cfg.selected_steps > cfg.rollout.steps:
            raise UserError(f"egspo: selected_steps {cfg.selected_steps} exceeds the {cfg.rollout.steps} decoding steps")
        self.needs_reference = cfg.beta != 0.0

    def sample_rollouts(self, dlm, prompts, scfg, seeds, score, chunk) -> Sampled:
        cfg, N = self.config, len(prompts)
        rec = _Steps(N, scfg.resolved().steps, scfg.gen_length, dlm.mask_id)
        comps = sample_recorded(dlm, prompts, scfg, seeds, chunk, rec)
        steps = select_steps(rec.entropy, cfg.selected_steps, cfg.step_selection)
        greedy = rec.greedy[torch.arange(N)[:, None], steps]                       # [N, K, G]
        rows = [i for i in range(N) for _ in range(steps.shape[1])]
        step_r = score(rows, [dlm.completion_text(g.tolist()) for g in greedy.reshape(-1, greedy.shape[-1])])
        final = score(list(range(N)), [c.text for c in comps])
        return Sampled(comps, final, {"steps": steps, "step_rewards": torch.tensor(step_r).reshape(steps.shape)})

    def select(self, rollouts: Rollouts, idx: torch.Tensor) -> Rollouts:
        return select_samples(rollouts, idx)

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch, t = self.config, rollouts.batch, rollouts.trace
        dev = batch.completion.device
        steps, step_r = t["steps"].to(dev), t["step_rewards"].to(dev)
        N, K = steps.shape
        ret = egspo_returns(rollouts.rewards.to(dev), step_r, cfg.lam, cfg.normalize_returns)
        groups = rollouts.groups.to(dev)
        adv = torch.stack([ret[:, k] - group_mean(ret[:, k], groups) for k in range(K)], 1)
        rows = torch.arange(N, device=dev).repeat_interleave(K)
        masks, targets = state_masks(rollouts.step_map.to(dev), batch.valid, rows, steps.reshape(-1))
        c = rollouts.cache = EGSPOCache(rows=rows, slot=torch.arange(K, device=dev).repeat(N), masks=masks,
                                        targets=targets, adv=adv.reshape(-1), old=torch.zeros(N * K, device=dev))
        with torch.no_grad():
            c.old = self._logp(policy, rollouts).detach()
            if cfg.beta != 0.0:
                c.ref = self._logp(ref, rollouts).detach()

    def _logp(self, dlm, rollouts: Rollouts, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Summed log-prob of each sample's step tokens, [R] (or of the samples `keep`)."""
        c, batch = rollouts.cache, rollouts.batch
        i = torch.arange(len(c.rows), device=c.rows.device) if keep is None else keep
        rows = c.rows[i]
        return sample_logprobs(dlm, batch, rows, batch.completion[rows], c.masks[i], c.targets[i]).sum(-1)

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg = self.config
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        per = cfg.selected_steps // cfg.optim.inner_updates
        keep = ((c.slot >= j * per) & (c.slot < (j + 1) * per)).nonzero(as_tuple=True)[0]
        logp = self._logp(policy, rollouts, keep)
        adv = c.adv[keep].to(logp.dtype)
        loss, stats = clipped_pg(logp, c.old[keep].to(logp.dtype), adv, cfg.epsilon, cfg.epsilon_high)
        if c.ref is not None:
            kl = k3(logp, c.ref[keep].to(logp.dtype)).mean()
            loss = loss + cfg.beta * kl
            stats["kl_k3"] = float(kl.detach())
        loss = loss / max(1, cfg.rollout.gen_length // cfg.rollout.steps)
        stats.update(loss=float(loss.detach()), inner_iter=j, reward_mean=float(rollouts.rewards.float().mean()))
        return loss, stats
