"""MDPO, Masked Diffusion Policy Optimization (arXiv 2508.13148, "MDPO: Overcoming the Training-Inference
Divide of Masked Diffusion Language Models", He, Renz, Cao, Geiger; code github.com/autonomousvision/mdpo
@ e6ae439, `src/open_r1/mdpo/mdpo_trainer.py` (`_generate_and_score_completions`,
`split_into_micro_batches`, `compute_loss`) and `src/mdlm_generation_utils.py::diffusion_generate`; the
README's training command with `recipes/LLaDA-Instruct/mdpo/config_demo.yaml`).

RL over the intermediate denoising steps. Every step t of a rollout predicts the whole window (x0_t:
the candidates at the masked positions, the decoded tokens kept) and each prediction is rewarded,
r_t. The step advantages are the reward gain plus the mean later reward, z-scored over the group step
by step (`losses.mdpo_step_advantages`). Per rollout the `train_steps_per_rollout` steps of largest
|A_t| are trained: input = the state before step t, targets = the prediction x0_t at the positions
masked in it, each token weighted by the decoder's confidence (with `sampler.rcr`, the running
confidence: MDPO's Running-Confidence Remasking, a sampler option in this harness):

    l(t) = sum_j c_j [-min(rho_j A_t, clip(rho_j) A_t) L / n_t + beta (log ref_j - log pi_j)^2 / 2] / n_t

summed over the row's trained steps and averaged over rows (n_t: positions masked in the input, L: the
window). One update per rollout batch (mu = 1: rho = 1), k2 KL against the frozen reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob
from dlm_bench.errors import UserError
from dlm_bench.methods import Method, Rollouts, Sampled, register_method
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods.losses import mdpo_loss, mdpo_step_advantages
from dlm_bench.methods.profile import Profile
from dlm_bench.methods.trajectory import SampleCache, sample_logprobs, sample_recorded, select_samples

R = "mdpo README.md training command"
C = "mdpo recipes/LLaDA-Instruct/mdpo/config_demo.yaml"


@dataclass
class MDPOConfig(MethodConfig):
    """MDPO's paper run (the README command over config_demo.yaml and mdpo_config.py)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(7e-7, f"{R}:39 --learning_rate"),
        lr_schedule=("constant", f"{C}:47 lr_scheduler_type"),
        warmup_ratio=(0.1, f"{C}:67 warmup_ratio"),
        weight_decay=(0.0, "HF TrainingArguments default (not set)"),
        adam_betas=((0.9, 0.999), "HF TrainingArguments default (not set)"),
        max_grad_norm=(1.0, "HF TrainingArguments default (not set)"),
        train_steps=(None, f"{C}:50 num_train_epochs 1 (over 40000 samples, {R}:49)"),
        inner_updates=(1, "mdpo_config.py num_iterations 1"),
        minibatches=(1, f"{R}:40 one optimizer step per 16 accumulated prompts"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(8, f"{R}:38 --num_generations N = the GPU count; zero2.yaml num_processes 8"),
        batch_prompts=(16, f"{R}:40 --gradient_accumulation_steps 16, one prompt's group per accumulation step"),
        temperature=(0.4, f"{R}:41 --temperature"),
        gen_length=(512, f"{R}:44 --max_completion_length"),
        steps=(128, f"{R}:47 --diffusion_steps"),
        block_length=(512, f"{R}:43 --block_length"))
    lora: LoraConfig = block(LoraConfig, r=(0, f"{C}:17 lora: false (full fine-tuning)"))
    beta: float = knob(0.02, "k2 KL coefficient against the reference (0: no reference forward)",
                       source=f"{R}:42 --beta", low=0.0)
    epsilon: float = knob(0.2, "token-level PPO clip", source="mdpo_config.py epsilon 0.2", low=0.0)
    train_steps_per_rollout: int = knob(8, "decoding steps trained per rollout (largest |advantage|)",
                                        source=f"{R}:45 --sample_train_steps", low=1)


@dataclass(kw_only=True)
class MDPOCache(SampleCache):
    """One sample per (rollout, trained step)."""
    preds: torch.Tensor                    # [R, G] the step's prediction x0_t (the targets)
    masks: torch.Tensor                    # [R, G] positions masked in the step's input
    weights: torch.Tensor                  # [R, G] the decoder's confidences
    adv: torch.Tensor                      # [R]
    old: torch.Tensor | None = None        # [R, G] rollout-time log-probs (several updates per batch)
    ref: torch.Tensor | None = None        # [R, G] reference log-probs (beta > 0)


class _Trajectory:
    """Recorder of MDPO's rollouts: per step the input window, the prediction of the whole window and the
    confidence of each predicted token (outside the step's columns: the greedy prediction and its
    probability)."""

    def __init__(self, n: int, steps: int, width: int, mask_id: int, rcr: bool):
        self.rcr = rcr      # MDPO records the running confidence then: 0 where nothing was committed yet
        self.inputs = torch.full((n, steps, width), mask_id, dtype=torch.long)
        self.preds = torch.full((n, steps, width), mask_id, dtype=torch.long)
        self.conf = torch.zeros((n, steps, width), dtype=torch.float32)
        self.offset, self.mask_id = 0, mask_id

    def __call__(self, v) -> None:
        rows, steps = (v.rows + self.offset).cpu(), v.steps.cpu()
        masked = v.before == self.mask_id
        top = v.logits.max(-1)
        pred = torch.where(masked, top.indices, v.before)
        conf = torch.zeros_like(top.values, dtype=torch.float32) if self.rcr else \
            torch.exp(top.values.float() - torch.logsumexp(v.logits.float(), -1))
        pred[:, v.cols] = torch.where(masked[:, v.cols], v.candidates, v.before[:, v.cols])
        conf[:, v.cols] = v.scores.to(conf.dtype)
        self.inputs[rows, steps], self.preds[rows, steps], self.conf[rows, steps] = v.before.cpu(), pred.cpu(), \
            conf.float().cpu()


@register_method
class MDPO(Method):
    name = "mdpo"
    Config = MDPOConfig
    profile = Profile(family="trajectory RL", reference="frozen (k2 KL)",
                      estimator="one-step: each trained step's whole-window prediction given the state before it, "
                                "confidence-weighted",
                      forwards=8, forwards_note="8 trained steps per rollout in one backward")
    needs_reference = True
    pad_steps = True
    fidelity = (
        Deviation("log-probs of the logits divided by the rollout temperature (DARE's port does not divide)",
                  "log-probs at temperature 1", "kept", "tests/test_mdpo.py::test_loss_by_hand"),
        Deviation("diffusion_generate samples x0 from softmax(logits / T) and weights by that tempered probability",
                  "the harness sampler: Gumbel-max at T, the untempered probability as confidence (the same at T = 0)",
                  "kept", "tests/test_decoders.py::test_rcr_matches_mdpo_at_zero_temperature"),
        Deviation("predictions beyond the current block are sampled", "greedy there (the recipe decodes one block)",
                  "kept", "tests/test_mdpo.py::test_recorded_states_and_predictions"),
        Deviation("its schedule is maskgit's 'linear' (differs from LLaDA's when a block's length is not a multiple "
                  "of its steps)", "LLaDA's schedule (the recipe's 512 tokens / 128 steps are the same)", "kept",
                  "tests/test_decoders.py::test_rcr_matches_mdpo_at_zero_temperature"),
        Deviation("incremental training on over-denoising prompts (od_path, mixture_data block lengths)",
                  "not reproduced: every train prompt, one block length", "kept",
                  "tests/test_mdpo.py::test_recorded_states_and_predictions"),
        Deviation("the reference is the initial model (trl create_reference_model)", "a frozen copy of the base",
                  "fixed", "tests/test_mdpo.py::test_loss_by_hand"),
    )

    def __init__(self, config=None, policy=None):
        super().__init__(config, policy)
        r = self.config.rollout
        if r.gen_length % r.block_length == 0 and r.steps // max(1, r.gen_length // r.block_length) > r.block_length:
            raise UserError("mdpo rewards every step's prediction: steps per block must not exceed block_length")
        self.needs_reference = self.config.beta != 0.0

    def sample_rollouts(self, dlm, prompts, scfg, seeds, score, chunk) -> Sampled:
        N, S = len(prompts), scfg.resolved().steps
        rec = _Trajectory(N, S, scfg.gen_length, dlm.mask_id, scfg.rcr)
        comps = sample_recorded(dlm, prompts, scfg, seeds, chunk, rec)
        texts = [dlm.completion_text(p.tolist()) for p in rec.preds.reshape(N * S, -1)]
        step_r = torch.tensor(score([i for i in range(N) for _ in range(S)], texts)).reshape(N, S)
        return Sampled(comps, score(list(range(N)), [c.text for c in comps]),
                       {"inputs": rec.inputs, "preds": rec.preds, "conf": rec.conf, "step_rewards": step_r})

    def select(self, rollouts: Rollouts, idx: torch.Tensor) -> Rollouts:
        return select_samples(rollouts, idx)

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch, t = self.config, rollouts.batch, rollouts.trace
        dev, mask_id = batch.completion.device, policy.mask_id
        adv = mdpo_step_advantages(t["step_rewards"], rollouts.groups.cpu())
        k = min(cfg.train_steps_per_rollout, adv.shape[1])
        steps = torch.topk(adv.abs(), k=k, dim=1).indices
        rows = torch.arange(adv.shape[0]).repeat_interleave(k)
        st = steps.reshape(-1)
        masks = (t["inputs"][rows, st] == mask_id) & batch.valid.cpu()[rows]
        c = rollouts.cache = MDPOCache(rows=rows.to(dev), preds=t["preds"][rows, st].to(dev), masks=masks.to(dev),
                                       weights=t["conf"][rows, st].to(dev), adv=adv[rows, st].float().to(dev))
        with torch.no_grad():
            if self.updates_per_batch > 1:
                c.old = self._logp(policy, rollouts).detach()
            if cfg.beta != 0.0:
                c.ref = self._logp(ref, rollouts).detach()

    def _logp(self, dlm, rollouts: Rollouts) -> torch.Tensor:
        c = rollouts.cache
        return sample_logprobs(dlm, rollouts.batch, c.rows, c.preds, c.masks, c.masks)

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg = self.config
        c = self.prepared(rollouts, policy, ref)
        logp = self._logp(policy, rollouts)
        old = c.old if c.old is not None else logp.detach()
        loss, stats = mdpo_loss(logp, old.to(logp.dtype), None if c.ref is None else c.ref.to(logp.dtype),
                                c.adv, c.masks, c.weights, cfg.beta, cfg.epsilon, rollouts.batch.completion.shape[1],
                                rollouts.rewards.numel())
        stats.update(reward_mean=float(rollouts.rewards.float().mean()))
        return loss, stats
