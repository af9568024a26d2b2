"""DMPO, Distribution Matching Policy Optimization (arXiv 2510.08233, "Enhancing Reasoning for Diffusion
LLMs via Distribution Matching Policy Optimization", Zhu, Guo, Choi et al.; code
github.com/yuchen-zhu-zyc/DMPO @ 96af1a4, `DMPO/dmpo_trainer.py` (`compute_log_prob_elbo`,
`_generate_and_score_completions`, `compute_loss` with loss "wdce"), recipe `DMPO/dmpo_train_config.yaml`
with the overrides of `DMPO/run_dmpo.sh`).

The policy is fitted to the reward-tilted target p*(y|x) ~ p_ref(y|x) exp(r(x, y) / alpha) by a weighted
denoising cross-entropy: with G rollouts y_i of a prompt from the current policy p_cur,

    w_i = softmax_group( log p_ref(y_i) - log p_cur(y_i) + r_i / alpha )    (self-normalised p* / p_cur)
    A_i = w_i - softmax_group( log p_ref(y_i) - log p_cur(y_i) - r_i / alpha )   (the recipe's
                                                                          `advantage_centering_neg`)
    loss = mean over groups of sum_i A_i CE_i,   CE_i = mean_k (1/m_k) sum_{j in M_k} -log p_theta(y_ij | y_i with M_k masked)

Both log-probabilities are ELBO estimates computed once per rollout batch with the same masks (4
replicates); each update draws fresh masks for CE (4 replicates). A mask puts each window position in
independently with probability lambda ~ U[0.1, 0.9], and replicates come in complementary pairs
(`loss_antithetic`, `loss_mask_prob_clamp`). The reference model is the base (the recipe's LoRA
adapter disabled); the whole window is scored, end-of-text padding included (`loss_mask_non_eos`,
`log_rnd_omit_eos` off), so rollouts decode every pad at its own step (`pad_steps`).

With an unbiased baseline (`centering="mean"`, or none) the fixed point is p* exactly (checked on the
exact tabular toy); the recipe's negative-weight baseline is not a baseline of the score function and
moves the fixed point: on the toy it drives the mass onto the correct answers and sharpens it there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob, mask_seed
from dlm_bench.likelihood import masked_token_logprobs
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods.losses import dmpo_weights
from dlm_bench.methods.profile import Profile

Y = "DMPO DMPO/dmpo_train_config.yaml"
SH = "DMPO DMPO/run_dmpo.sh"


@dataclass
class DMPOConfig(MethodConfig):
    """DMPO (dmpo_train_config.yaml with run_dmpo.sh's flags)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(1e-6, f"{Y}:31 learning_rate"),
        lr_schedule=("constant_with_warmup", f"{Y}:32 lr_scheduler_type"),
        warmup_ratio=(0.0001, f"{Y}:29 warmup_ratio"),
        weight_decay=(0.1, f"{Y}:22 weight_decay"),
        adam_betas=((0.9, 0.99), f"{Y}:20-21 adam_beta1/2"),
        max_grad_norm=(0.2, f"{Y}:23 max_grad_norm"),
        train_steps=(None, f"{Y}:35 num_train_epochs 10; here one pass unless set"),
        inner_updates=(8, f"{SH}:63 --num_iterations 8"),
        minibatches=(1, "trl GRPOTrainer: one optimizer step per generation batch"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(16, f"{SH}:62 --num_generations 16"),
        batch_prompts=(4, f"{SH}:64 4 completions/device x 8 GPUs (accelerate.yaml) x grad-accum 2 ({Y}:39) / G 16"),
        temperature=(0.2, f"{SH}:73 --temperature 0.2"),
        gen_length=(256, "trl GRPOConfig max_completion_length default (not set by the recipe)"),
        steps=(128, f"{Y}:87 sampler_steps"),
        block_length=(32, f"{Y}:78 block_length"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(128, f"{Y}:8 lora_r (4-bit base not reproduced)"),
        alpha=(64, f"{Y}:9 lora_alpha"),
        dropout=(0.05, f"{Y}:10 lora_dropout"),
        targets=("q,k,v,o,gate,up,down", "dmpo_train.py:110 target_modules q_proj..gate_proj, mapped per "
                                          "architecture (lora_targets.py)"))
    alpha: float = knob(0.04, "temperature of the target p* ~ p_ref exp(r / alpha)", source=f"{Y}:54 alpha",
                        low=0.0, low_open=True)
    centering: str = knob("negative", "baseline subtracted from the weights: 'negative' (the weights of "
                                      "exp(-r / alpha)) | 'mean' (1 / G, unbiased) | 'none'",
                          choices=("negative", "mean", "none"),
                          source=f"{Y}:107-109 advantage_centering, advantage_centering_neg")
    centering_strength: float = knob(1.0, "multiplier of the baseline", source=f"{Y}:110 centering_strength",
                                     low=0.0)
    replicates: int = knob(4, "masked forwards per cross-entropy estimate (complementary pairs)",
                           source=f"{Y}:58-59 num_replicates, loss_antithetic", low=2)
    rnd_replicates: int = knob(4, "masked forwards per ELBO of log p_ref - log p_cur (complementary pairs)",
                               source=f"{Y}:63-64 compute_ref_log_prob_elbo_size", low=2)
    mask_low: float = knob(0.1, "least masking probability lambda", source=f"{Y}:60 loss_mask_prob_clamp [0.1, 0.9]",
                           low=0.0, high=1.0)
    mask_high: float = knob(0.9, "largest masking probability lambda", source=f"{Y}:60 loss_mask_prob_clamp",
                            low=0.0, high=1.0)


def bernoulli_pairs(shape: tuple[int, int], n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    """[n, N, G] masks: n/2 draws that put each position in with probability lambda ~ U[low, high] (one
    lambda per row and draw), then their complements (DMPO's antithetic masks)."""
    N, G = shape
    lam = low + (high - low) * torch.rand((n // 2, N, 1), generator=gen)
    m = torch.rand((n // 2, N, G), generator=gen) < lam
    return torch.cat([m, ~m])


def denoising_ce(dlm, batch, masks: torch.Tensor) -> torch.Tensor:
    """[N] mean over the draws of (1/m) sum_{masked j} -log p(y_j | y with the draw masked)."""
    lp = masked_token_logprobs(dlm, batch, masks.to(batch.completion.device))
    m = masks.sum(-1).clamp(min=1).to(lp.dtype).to(lp.device)
    return (-lp.sum(-1) / m).mean(0)


def elbo_logprob(dlm, batch, masks: torch.Tensor) -> torch.Tensor:
    """[N] ELBO of log p(y): sum over positions of the mean over draws of (L / m) log p at masked positions."""
    lp = masked_token_logprobs(dlm, batch, masks.to(batch.completion.device))
    m = masks.sum(-1).clamp(min=1).to(lp.dtype).to(lp.device)
    return (masks.shape[-1] / m * lp.sum(-1)).mean(0)


@dataclass(kw_only=True)
class DMPOCache(MethodCache):
    adv: torch.Tensor                      # [N] A_i = w_i - baseline
    masks: list[torch.Tensor]              # per inner update: [N, replicates, G], rows first so they slice
    group_size: torch.Tensor               # [N] rows in the row's group: mean_i G_i A_i CE_i = the mean group sum
    log_rnd: torch.Tensor                  # [N] ELBO estimate of log p_ref(y) - log p_cur(y)


@register_method
class DMPO(Method):
    name = "dmpo"
    Config = DMPOConfig
    profile = Profile(family="distribution matching", reference="frozen (the recipe: the base, adapter disabled)",
                      estimator="weighted denoising cross-entropy, 4 antithetic Bernoulli(lambda) masks",
                      forwards=4, forwards_note="4 masked forwards per completion in one backward")
    needs_reference = True
    pad_steps = True
    fidelity = (
        Deviation("rollouts by Fast-dLLM's prefix cache (use_fast_sampler fast_dllm, sampler pd_cache_prefix)",
                  "exact decoding by default; --set sampler.cache=prefix uses the harness's Fast-dLLM cache",
                  "option", "tests/test_kv_cache.py::test_first_step_of_every_block_matches_no_cache"),
        Deviation("reference log-probs: the base with the adapter disabled (sync_ref_model does not move it)",
                  "a frozen copy of the base model", "fixed", "tests/test_dmpo.py::test_method_loss_on_tiny"),
        Deviation("loss summed over each device's rows, averaged over 8 GPUs and 2 accumulation steps "
                  "(0.25 x the mean group sum at the recipe's shape)", "the mean over groups of the group sum "
                  "(Adam is scale-free; the 0.2 gradient clip sees a 4x larger norm)", "kept",
                  "tests/test_dmpo.py::test_method_loss_on_tiny"),
        Deviation("ada_coeff (an ESS-tuned step size) and the 'ddo' loss", "not reproduced (off in the recipe)",
                  "kept", "tests/test_dmpo.py::test_toy_fixed_point_is_the_tilted_reference"),
        Deviation("the recipe's negative-weight centering", "the default; 'mean' (1/G) is the unbiased baseline "
                  "whose fixed point is p*", "option", "tests/test_dmpo.py::test_toy_fixed_point_is_the_tilted_reference"),
    )

    @classmethod
    def target(cls, config) -> str | None:
        if config.centering == "negative":
            return (f"none: the negative-weight baseline moves the fixed point off p* ~ pi_ref exp(r / {config.alpha:g}) "
                    f"(on the exact toy it sharpens onto the correct answers); centering='mean' reaches p*")
        return f"p*(y|x) ~ pi_ref(y|x) exp(r / {config.alpha:g})"

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        N, G = batch.completion.shape
        gen = torch.Generator().manual_seed(mask_seed(rollouts.seed, 0x4D))
        masks = bernoulli_pairs((N, G), cfg.rnd_replicates, cfg.mask_low, cfg.mask_high, gen) & batch.valid.cpu()[None]
        with torch.no_grad():
            log_rnd = elbo_logprob(ref, batch, masks) - elbo_logprob(policy, batch, masks)
        dev = batch.completion.device
        adv = dmpo_weights(log_rnd.to(dev), rollouts.rewards.to(dev), rollouts.groups.to(dev), cfg.alpha,
                           cfg.centering, cfg.centering_strength)
        draws = []
        for j in range(max(1, cfg.optim.inner_updates)):
            g = torch.Generator().manual_seed(mask_seed(rollouts.seed, j))
            m = bernoulli_pairs((N, G), cfg.replicates, cfg.mask_low, cfg.mask_high, g) & batch.valid.cpu()[None]
            draws.append(m.transpose(0, 1).contiguous())
        sizes = torch.unique(rollouts.groups, return_inverse=True, return_counts=True)
        rollouts.cache = DMPOCache(adv=adv, masks=draws, group_size=sizes[2][sizes[1]].to(dev), log_rnd=log_rnd.to(dev))

    def loss(self, rollouts: Rollouts, policy, ref):
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        ce = denoising_ce(policy, rollouts.batch, c.masks[j].transpose(0, 1))
        adv = c.adv.to(ce.device, ce.dtype)
        loss = (c.group_size.to(ce.dtype) * adv * ce).mean()
        return loss, {"loss": float(loss.detach()), "inner_iter": j, "ce_mean": float(ce.detach().mean()),
                      "adv_abs_mean": float(adv.abs().mean()), "log_rnd_mean": float(c.log_rnd.mean()),
                      "reward_mean": float(rollouts.rewards.float().mean())}
