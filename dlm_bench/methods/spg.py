"""SPG, Sandwiched Policy Gradient (arXiv 2510.09541, "SPG: Sandwiched Policy Gradient for Masked
Diffusion Language Models"; code github.com/facebookresearch/SPG @ a1c7120, `spg/spg_trainer.py`,
recipe `spg/slurm_scripts/train.yaml` + `spg/slurm_scripts/spg_mix/gsm_base_spg_mix_beta1.5_weight0.5.sbatch`).

REINFORCE on a bound of log pi chosen by the sign of the advantage, A_i = r_i - mean_group(r):

    J = sum_i len_i A_i s_i / sum_i len_i,   s_i = ELBO_i   if A_i > 0   (a lower bound: pushing it up is safe)
                                             s_i = U_i      otherwise   (an upper bound: pushing it down is safe)

so J lower-bounds the length-weighted advantage-weighted log-likelihood. With m masks M_j of the
scored positions C (|C| = len), t_j = |M_j| / len and p_ij = p_theta(y_i | x~_j, y with M_j masked):

    ELBO = (1/m) sum_j (1/|M_j|) sum_{i in M_j} log p_ij                      (`_get_per_seq_logps`)
    EUBO = (1/|S|) sum_{i in S} (1/beta) log q_i,  q_i = (1/m) sum_j 1[i in M_j] p_ij^beta / t_j,  S = {i: q_i > 0}
    MIX  = omega EUBO + (1 - omega) ELBO                                       (default, omega = 0.5, beta = 1.5)

The log of an MC mean makes the EUBO estimate biased (as in the paper). p_ij come from
`likelihood.masked_token_logprobs` at the masked scored positions (the row and head bounds of every
method). Masks are SPG's `block_random` (`forward_process`; `likelihood.block_random_masks`): per
draw a random block b of the scored span; blocks before it stay clean, later ones are fully masked,
and inside b a count ~ U{max(1, floor(n min_t))..floor(n max_t)} of its n scored positions is masked
at random; every other clean token (prompt and earlier blocks) is then masked with probability
p_mask_prompt = 0.15, and positions after C are always masked. The m = num_t draws of a row take
distinct blocks (a random permutation of the window's blocks, modulo the row's own block count).
Inner update j (mu = 4) draws fresh masks. No KL, no ratio (--beta 0.0).

Reconstructed / differs: when num_t exceeds the window's block count (short test windows) the
permutation is cycled (SPG asserts instead); a window not divisible by the block length gets a short
last block (SPG asserts); prompt masking covers only real prompt tokens (SPG's also hits left
padding). The reward mask is A > 0 as in the code (`reward_mask = advantages > 0`; the paper writes
A >= 0, which only differs on rows with A = 0, whose term is zero anyway).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_bench.config import LoraConfig, MethodConfig, OptimConfig, RolloutConfig, block, knob, mask_seed
from dlm_bench.likelihood import block_random_masks, masked_token_logprobs
from dlm_bench.methods.fidelity import Deviation
from dlm_bench.methods import Method, MethodCache, Rollouts, register_method
from dlm_bench.methods.profile import Profile
from dlm_bench.methods.diffu_grpo import completion_positions
from dlm_bench.methods.losses import group_advantages

Y = "SPG spg/slurm_scripts/train.yaml"
SB = "SPG spg_mix/gsm_base_spg_mix_beta1.5_weight0.5.sbatch"


def spg_scores(lp: torch.Tensor, masked: torch.Tensor, scored: torch.Tensor, beta: float, omega: float,
               negative: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ELBO [N], negative-advantage bound [N]) from per-draw log-probs lp [m, N, G] and the masks;
    `negative`: 'mix' (omega EUBO + (1 - omega) ELBO), 'eubo', 'elbo' or 'zero'."""
    M = (masked & scored[None]).to(lp.dtype)
    n_j = M.sum(-1)                                                        # [m, N]
    elbo = ((lp * M).sum(-1) / n_j.clamp(min=1)).mean(0)
    if negative in ("elbo", "zero"):
        return elbo, elbo if negative == "elbo" else torch.zeros_like(elbo)
    t = n_j / scored.sum(-1).clamp(min=1).to(lp.dtype)[None]
    q = (torch.exp(beta * lp) * M / t.clamp(min=1e-8)[..., None]).mean(0)     # [N, G]
    S = q > 0
    log_q = torch.where(S, q, torch.ones_like(q)).log()                     # q = 0 tokens leave the mean
    eubo = (log_q * S).sum(-1) / S.sum(-1).clamp(min=1) / beta
    return elbo, eubo if negative == "eubo" else omega * eubo + (1 - omega) * elbo


def spg_loss(elbo: torch.Tensor, upper: torch.Tensor, adv: torch.Tensor, lengths: torch.Tensor):
    """-sum_i len_i A_i s_i / sum_i len_i with s = ELBO where A > 0, else the upper bound."""
    s = torch.where(adv > 0, elbo, upper)
    w = lengths.to(s.dtype)
    loss = -(w * adv.to(s.dtype) * s).sum() / w.sum().clamp(min=1)
    return loss, {"loss": float(loss.detach()), "elbo_mean": float(elbo.detach().mean()),
                  "bound_gap": float((upper - elbo).detach().mean())}


@dataclass(kw_only=True)
class SPGCache(MethodCache):
    adv: torch.Tensor                      # [N] centred group advantages
    positions: torch.Tensor                # [N, G] scored positions
    # per inner update: (prompt masks [N, m, P], completion masks [N, m, G]), rows first so they slice
    masks: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SPGConfig(MethodConfig):
    """SPG w/ Mixture, GSM8K (spg/slurm_scripts/train.yaml + the spg_mix sbatch flags)."""
    optim: OptimConfig = block(
        OptimConfig,
        lr=(3e-6, f"{Y}:34 learning_rate"),
        lr_schedule=("constant_with_warmup", f"{Y}:35 lr_scheduler_type"),
        warmup_ratio=(0.0001, f"{Y}:32 warmup_ratio"),
        weight_decay=(0.1, f"{Y}:25 weight_decay"),
        adam_betas=((0.9, 0.99), f"{Y}:23-24 adam_beta1/2"),
        max_grad_norm=(0.2, f"{Y}:26 max_grad_norm"),
        train_steps=(None, "paper: 6000 steps (GSM8K); here one pass unless set"),
        inner_updates=(4, f"{SB}:28 NUM_ITER=4"),
        minibatches=(1, "SPG (trl GRPOTrainer base): one optimizer step per generation batch"))
    rollout: RolloutConfig = block(
        RolloutConfig,
        group_size=(6, f"{SB}:44 --num_generations 6"),
        batch_prompts=(16, f"{SB}:45-46 6/device x grad-accum 2 x 8 GPUs (:9) / G 6"),
        temperature=(0.9, "SPG spg/diffu_grpo_config.py:186 temperature default 0.9"),
        gen_length=(256, f"{Y}:60 max_completion_length"),
        steps=(128, f"{Y}:63 diffusion_steps"),
        block_length=(32, f"{Y}:62 block_length"))
    lora: LoraConfig = block(
        LoraConfig,
        r=(128, f"{Y}:10 lora_r (4-bit base not reproduced)"),
        alpha=(64, f"{Y}:11 lora_alpha"),
        dropout=(0.05, f"{Y}:12 lora_dropout"),
        targets=("q,k,v,o,gate,up,down", "not checked; d1's q_proj..gate_proj, whose trainer SPG builds on"))
    negative_bound: str = knob("mix", "bound for A <= 0 rows: 'mix' | 'eubo' | 'elbo' | 'zero'",
                               choices=("mix", "eubo", "elbo", "zero"), source=f"{SB}:48 --logp_estimation mix")
    eubo_beta: float = knob(1.5, "Renyi order beta of the EUBO (>= 1)", source=f"{SB}:50 --eubo_beta 1.5",
                            low=1.0)
    mix_weight: float = knob(0.5, "omega: weight of the EUBO in the mixture", source=f"{SB}:49 --mix_weight 0.5",
                             low=0.0, high=1.0)
    num_t: int = knob(2, "masked forwards (block_random draws) per bound", source=f"{SB}:41 --num_t 2", low=1)
    min_t: float = knob(0.0, "least masked fraction inside the chosen block", source=f"{SB}:42 --min_t 0",
                        low=0.0, high=1.0)
    max_t: float = knob(1.0, "largest masked fraction inside the chosen block", source=f"{SB}:43 --max_t 1",
                        low=0.0, high=1.0)
    p_mask_prompt: float = knob(0.15, "probability of masking each clean token (prompt, earlier blocks)",
                                source=f"{Y}:67 p_mask_prompt, :73 use_mask_prompt", low=0.0, high=1.0)
    mask_block_length: int = knob(0, "block size of the block_random masks (0: rollout.block_length)",
                                  source="SPG forward_process uses args.block_length", low=0)
    positions: str = knob("to_eos", "scored positions: 'to_eos' (through the first stop token) | 'window'",
                          choices=("to_eos", "window"),
                          source="SPG spg_trainer.py:648 completion_mask up to the first EOS")


# Per-task flags of the spg_mix sbatch scripts that differ from GSM8K.
RECIPES = {"sudoku": dict(eubo_beta=1.0, temperature=0.3)}   # sudoku_new_base_spg_mix_beta1.0_weight0.5


@register_method
class SPG(Method):
    name = "spg"
    Config = SPGConfig
    profile = Profile(family="sequence-ELBO RL", reference="none",
                      estimator="ELBO for A > 0, EUBO mixture for A <= 0, block-random masks",
                      forwards=2, forwards_note="num_t = 2 block-random forwards per completion")
    fidelity = (
        Deviation("num_t mask blocks per window", "capped at the window's block count on short windows", "kept",
                  "tests/test_spg.py::test_block_random_masks"),
    )

    @classmethod
    def recipe(cls, task: str) -> dict:
        return RECIPES.get(task, {})

    def prepare(self, rollouts: Rollouts, policy, ref) -> None:
        cfg, batch = self.config, rollouts.batch
        pos = completion_positions(policy, batch, cfg.positions)
        bl = cfg.mask_block_length or cfg.rollout.block_length
        draws = [block_random_masks(batch, pos, bl, cfg.num_t, cfg.p_mask_prompt, cfg.min_t, cfg.max_t,
                                    mask_seed(rollouts.seed, j)) for j in range(max(1, cfg.optim.inner_updates))]
        rollouts.cache = SPGCache(adv=group_advantages(rollouts.rewards, rollouts.groups, "center"), positions=pos,
                                  masks=[(p.transpose(0, 1).contiguous(), m.transpose(0, 1).contiguous())
                                         for p, m in draws])

    def loss_count(self, rollouts: Rollouts) -> float:
        """SPG's loss is weighted by completion length: its normaliser is the scored positions."""
        return float(rollouts.cache.positions.sum())

    def loss(self, rollouts: Rollouts, policy, ref):
        cfg, batch = self.config, rollouts.batch
        j = self.next_update(rollouts, policy, ref)
        c = rollouts.cache
        pm, cm = (t.transpose(0, 1) for t in c.masks[j])
        pos = c.positions
        lp = masked_token_logprobs(policy, batch, cm, prompt_masked=pm, scored=cm & pos[None])
        elbo, upper = spg_scores(lp, cm, pos, cfg.eubo_beta, cfg.mix_weight, cfg.negative_bound)
        loss, stats = spg_loss(elbo, upper, c.adv.to(lp.device), pos.sum(-1))
        stats.update(inner_iter=j, reward_mean=float(rollouts.rewards.float().mean()),
                     masked_frac=float(((cm & pos[None]).sum() / pos.sum().clamp(min=1) / cm.shape[0])))
        return loss, stats
