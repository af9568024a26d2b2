"""BGPO: the per-draw loss by hand, the bound (a lower bound of the PPO objective on the mean score, equal in
value and gradient on-policy), the exact toy, micro-batching, two LoRA updates on tiny LLaDA and Dream, and
20 updates on the CPU testbed. The memory bound itself: tests/test_likelihood_draws.py."""
import math

import pytest
import torch

from dlm_bench.methods import get_method, make_config
from dlm_bench.methods import losses, toy as T
from real_lora import two_lora_updates
from test_diffu_grpo import assert_reward_not_worse, run_on_testbed, same_update
from test_methods import _rollouts
from test_real_models import real_dirs  # noqa: F401  (fixture)


def test_loss_by_hand():
    # 2 draws x 3 rows; A = (1, -1, 2); x = score - old
    x = torch.tensor([[0.1, 0.5, -1.5], [-0.3, -0.6, 0.1]], dtype=torch.float64)
    score = x.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    loss, st = losses.bgpo_loss(score, torch.zeros_like(x), adv, 0.2, 0.2, 3.0)
    # A > 0: ratio 1 + x, clipped above at 1.2 only (row 2, draw 0: 1 - 1.5 = -0.5, finite where DARE's
    # log(1 + x) is NaN); A < 0: ratio e^x, clipped below at 0.8 (row 1, draw 1: e^-0.6 = 0.55 -> 0.8)
    per = [[-1.1, math.exp(0.5), 1.0], [-0.7, 0.8, -2.2]]
    assert loss.item() == pytest.approx(sum(map(sum, per)) / 6)
    loss.backward()
    g = [[-1 / 6, math.exp(0.5) / 6, -2 / 6], [-1 / 6, 0.0, -2 / 6]]      # zero where the clip binds
    assert torch.allclose(score.grad, torch.tensor(g, dtype=torch.float64))
    # the dual clip: A < 0 and a huge ratio -> loss capped at -A c
    big, _ = losses.bgpo_loss(torch.tensor([[5.0]]), torch.zeros(1, 1), torch.tensor([-1.0]), 0.2, 0.2, 3.0)
    assert big.item() == pytest.approx(3.0)


def test_the_bound_is_below_the_mean_score_objective_and_tight_on_policy():
    """Unclipped, J_bgpo = mean_k A r(x_k) <= A e^{mean_k x_k} for any draws (Jensen / 1 + x <= e^x); at
    x = 0 (on-policy, shared masks) value and gradient equal those of the mean-score objective."""
    gen = torch.Generator().manual_seed(0)
    huge = 1e9
    for _ in range(200):
        x = torch.randn(16, 5, generator=gen, dtype=torch.float64)
        adv = torch.randn(5, generator=gen, dtype=torch.float64)
        bound, _ = losses.bgpo_loss(x, torch.zeros_like(x), adv, huge, huge, huge)
        exact = (-adv * torch.exp(x.mean(0))).mean()
        assert bound.item() >= exact.item() - 1e-12                 # a loss: above means the objective is below
    score = torch.randn(16, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    adv = torch.randn(5, generator=gen, dtype=torch.float64)
    bound, _ = losses.bgpo_loss(score, score.detach(), adv, 0.2, 0.2, 3.0)
    ppo, _ = losses.clipped_pg(score.mean(0), score.detach().mean(0), adv, 0.2)
    gb, = torch.autograd.grad(bound, score)
    gp, = torch.autograd.grad(ppo, score)
    assert bound.item() == pytest.approx(ppo.item()) and torch.allclose(gb, gp)


def test_toy_mass_moves_to_the_correct_set():
    """BGPO on the exact toy (16 draws, each the exact log-prob plus zero-mean draw noise, mu = 2 so the
    second update is off-policy): the correct set's mass rises from 0.094 to near 1."""
    torch.set_num_threads(1)
    toy = T.make_toy()
    noise = torch.Generator().manual_seed(1)

    def objective(b, logp, log_z):
        eps = 0.3 * torch.randn(16, len(logp), generator=noise, dtype=logp.dtype)
        adv = losses.group_advantages(b.rewards, b.groups, "zscore", eps=1e-6).to(logp.dtype)
        return losses.bgpo_loss(logp[None] + eps, b.old_logp[None] + eps, adv, 0.2, 0.2, 3.0)

    lp = T.train(toy, objective, steps=150, groups=16, G=8, lr=1.0, inner=2, seed=0)
    torch.set_num_threads(2)
    assert float(lp.exp()[toy.correct].sum()) > 0.9


def test_recipe_and_flags(tiny):
    cls = get_method("bgpo")
    cfg = cls.Config()
    assert (cfg.lr, cfg.group_size, cfg.batch_prompts, cfg.temperature, cfg.scoring.num_masks) == (5e-7, 8, 16, 0.6, 16)
    assert cls.config_for("countdown").gen_length == 256 and cls.config_for("humaneval").epochs == 5
    assert not cls.needs_reference
    m = cls(make_config(cls, {"num_masks": 4}), policy=tiny)
    ro = _rollouts(tiny, seed=2)
    with torch.no_grad():
        m.prepare(ro, tiny, None)
        loss, st = m.loss(ro, tiny, None)                   # on-policy: every ratio is 1
    adv = losses.group_advantages(ro.rewards, ro.groups, "zscore", eps=1e-6)
    assert st["ratio_mean"] == pytest.approx(1.0) and loss.item() == pytest.approx(float(-adv.mean()), abs=1e-6)
    assert ro.cache.draws[0].masks.shape[0] == 4


@pytest.mark.parametrize("extra", [dict(inner_updates=2, num_masks=4), dict(inner_updates=1, num_masks=2, bounded=False)])
def test_micro_batch_of_one_matches_whole_batch(extra, tiny_dir, tmp_path, varied_rewards):
    same_update(tiny_dir, tmp_path, "bgpo", extra)


def test_two_lora_updates_on_tiny_llada_and_dream(real_dirs, tmp_path, varied_rewards):
    two_lora_updates("bgpo", real_dirs, tmp_path, num_masks=4)


@pytest.mark.slow
def test_twenty_updates_on_the_testbed(tmp_path):
    res = run_on_testbed("bgpo", tmp_path, rollout_steps=20, inner=1, num_masks=8)
    print(f"\nbgpo testbed: before {res['before']:.3f} after {res['after']:.3f} step rewards {res['step_rewards']}")
    assert_reward_not_worse(res)
