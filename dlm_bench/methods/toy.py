"""An exact, enumerable toy policy for checking the objectives in `losses.py` end to end.

The "model" is a tabular softmax over all 120 sequences of length 1..4 over a 3-token vocabulary, so
every log-probability, KL and total variation is exact. The reference is a fixed random softmax
(seed 0) and six sequences, spread over the reference's probability ranks and over lengths, are
correct (reward 1, else 0). Training samples G completions per group on-policy every step (the
same way the real loop does) and feeds exact sequence log-probs to the loss functions.

The tabular policy has no token structure, so token-level objectives run at sequence level: with one
on-policy update JustGRPO's token-level surrogate summed over tokens and divided by the fixed window
has the same gradient as the sequence-level one up to a constant.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch

from dlm_bench.methods import losses

VOCAB, MAX_LEN = 3, 4
CORRECT_RANKS = (1, 6, 15, 30, 55, 90)   # reference-probability ranks of the correct sequences


@dataclass
class Toy:
    seqs: list[tuple[int, ...]]
    lengths: torch.Tensor      # [S] float64
    ref_logp: torch.Tensor     # [S] exact log pi_ref
    reward: torch.Tensor       # [S] 1.0 on the correct set
    correct: torch.Tensor      # [S] bool

    def target_logp(self, beta: float) -> torch.Tensor:
        """log p*(y) with p* proportional to pi_ref(y) exp(beta r(y)), the TB fixed point."""
        return torch.log_softmax(self.ref_logp + beta * self.reward, 0)


def make_toy() -> Toy:
    seqs = [s for n in range(1, MAX_LEN + 1) for s in itertools.product(range(VOCAB), repeat=n)]
    gen = torch.Generator().manual_seed(0)
    ref_logp = torch.log_softmax(torch.randn(len(seqs), generator=gen, dtype=torch.float64), 0)
    order = ref_logp.argsort(descending=True)
    correct = torch.zeros(len(seqs), dtype=torch.bool)
    correct[order[list(CORRECT_RANKS)]] = True
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.float64)
    return Toy(seqs, lengths, ref_logp, correct.double(), correct)


def tv(logp: torch.Tensor, logq: torch.Tensor) -> float:
    return float(0.5 * (logp.exp() - logq.exp()).abs().sum())


def kl(logp: torch.Tensor, logq: torch.Tensor) -> float:
    """KL(p || q) in nats."""
    p = logp.exp()
    return float((p * (logp - logq)).sum())


def within(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log-probs renormalised on `mask` (the distribution inside the correct set)."""
    return logp[mask] - torch.logsumexp(logp[mask], 0)


@dataclass
class ToyBatch:
    idx: torch.Tensor          # [N] sequence index of each rollout
    groups: torch.Tensor       # [N]
    rewards: torch.Tensor
    lengths: torch.Tensor
    old_logp: torch.Tensor     # exact log-prob under the rollout-time policy
    ref_logp: torch.Tensor


Objective = Callable[[ToyBatch, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]


def train(toy: Toy, objective: Objective, *, steps: int, groups: int, G: int, lr: float,
          z_lr: float = 0.0, inner: int = 1, seed: int = 0, decay: float = 0.0) -> torch.Tensor:
    """SGD on the table's logits, starting at the reference; returns the final exact log-probs.

    Plain SGD (not Adam) so the update is the objective's own gradient field: Adam's per-coordinate
    normalisation would itself flatten or sharpen the within-correct proportions. `decay` anneals
    the step size as lr / (1 + decay * t) so sampling noise averages out near a fixed point.
    """
    gen = torch.Generator().manual_seed(seed)
    theta = toy.ref_logp.clone().requires_grad_(True)
    log_z = torch.zeros((), dtype=torch.float64, requires_grad=True)
    group_ids = torch.arange(groups).repeat_interleave(G)
    for t in range(steps):
        scale = 1.0 / (1 + decay * t)
        with torch.no_grad():
            logp_all = torch.log_softmax(theta, 0)
            idx = torch.multinomial(logp_all.exp(), groups * G, replacement=True, generator=gen)
        batch = ToyBatch(idx, group_ids, toy.reward[idx], toy.lengths[idx], logp_all[idx], toy.ref_logp[idx])
        for _ in range(inner):
            logp = torch.log_softmax(theta, 0)[idx]
            loss, _ = objective(batch, logp, log_z)
            g_theta, g_z = torch.autograd.grad(loss, (theta, log_z), allow_unused=True)
            with torch.no_grad():
                theta -= lr * scale * g_theta
                if g_z is not None:
                    log_z -= z_lr * scale * g_z
    return torch.log_softmax(theta.detach(), 0)


# Each method's objective on the toy, built from the same loss functions the methods use.

def trafl_objective(beta: float, centring: str = "group", per_token: bool = False,
                    tilt_per_token: bool = True) -> Objective:
    """TB residual on exact log-probs; `per_token` scores log p / L (and, with `tilt_per_token`,
    divides the tilt by L too), as TraFL's per-token surrogate does."""
    kind = "center" if centring == "group" else "none"

    def f(b: ToyBatch, logp, log_z):
        r_tilde = losses.group_advantages(b.rewards, b.groups, kind).to(logp.dtype)
        norm = 1.0 / b.lengths if per_token else 1.0
        tilt = norm if (per_token and tilt_per_token) else 1.0
        delta = losses.tb_residual(log_z, logp * norm, b.ref_logp * norm, r_tilde, beta, tilt)
        return losses.tb_loss(delta, log_z, logp * norm, b.ref_logp * norm)
    return f


def grpo_objective(eps: float = 0.2) -> Objective:
    def f(b: ToyBatch, logp, log_z):
        adv = losses.group_advantages(b.rewards, b.groups, "zscore").to(logp.dtype)
        return losses.clipped_pg(logp, b.old_logp, adv, eps)
    return f


def espo_objective(beta: float, eps: float = 0.2) -> Objective:
    def f(b: ToyBatch, logp, log_z):
        adv = losses.group_advantages(b.rewards, b.groups, "rloo").to(logp.dtype)
        return losses.espo_loss(logp, b.old_logp, b.ref_logp, adv, b.lengths, beta, eps)
    return f
