"""coupled-GRPO (DiffuCoder): the loss by hand on tiny, the recipe, micro-batching, two LoRA updates on
tiny LLaDA and Dream, and 20 updates on the CPU testbed. The coupled estimator itself is checked against
hand-built forwards in tests/test_likelihood_draws.py; the loss is d1's (its toy: tests/test_diffu_grpo.py)."""
import math

import pytest
import torch

from dlm_bench.errors import UserError
from dlm_bench.methods import get_method, make_config
from dlm_bench.methods import losses
from real_lora import two_lora_updates
from test_diffu_grpo import assert_reward_not_worse, run_on_testbed, same_update
from test_methods import _rollouts
from test_real_models import real_dirs  # noqa: F401  (fixture)


def test_loss_by_hand(tiny, ref_model):
    """theta == old == ref: ratio 1 and k3 0, so the loss is -sum_k A_i / #positions with leave-one-out A;
    each inner update draws fresh masks and its own t in [0.2, 0.8]."""
    cls = get_method("coupled_grpo")
    m = cls(make_config(cls, {"inner_updates": 2, "positions": "window"}), policy=tiny)
    ro = _rollouts(tiny, seed=5)
    with torch.no_grad():
        m.prepare(ro, tiny, ref_model)
        loss, st = m.loss(ro, tiny, ref_model)
    adv = losses.group_advantages(ro.rewards, ro.groups, "rloo")
    valid = ro.batch.valid
    assert st["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and st["kl_k3"] == pytest.approx(0.0, abs=1e-9)
    assert loss.item() == pytest.approx(float(-(adv[:, None] * valid).sum() / valid.sum()), abs=1e-6)
    assert m.loss_count(ro) == float(valid.sum())
    c = ro.cache
    assert not torch.equal(c.masks[0], c.masks[1]) and all(0.2 <= t <= 0.8 for t in c.t) and c.t[0] != c.t[1]
    assert torch.equal(c.masks[0][:, 0], valid)                       # draw 0: the whole completion


def test_recipe_and_flags():
    cls = get_method("coupled_grpo")
    cfg = cls.Config()
    assert (cfg.lr, cfg.group_size, cfg.inner_updates, cfg.beta, cfg.epsilon, cfg.lora_r) == (1e-6, 10, 2, 0.01, 0.5, 0)
    assert cfg.rollout.block_length == cfg.rollout.gen_length == 256       # Dream's one-block generation
    assert cfg.optim.lr_schedule == "cosine"                               # kept: trl's min_lr_rate 0.1 is not offered
    assert cls.needs_reference and not cls.needs_trajectory
    with pytest.raises(UserError, match="mask_ratio_low"):
        cls(make_config(cls, {"mask_ratio_low": 0.8, "mask_ratio_high": 0.5}))


@pytest.mark.parametrize("extra", [dict(inner_updates=2), dict(inner_updates=1, positions="window", beta=0.0)])
def test_micro_batch_of_one_matches_whole_batch(extra, tiny_dir, tmp_path, varied_rewards):
    same_update(tiny_dir, tmp_path, "coupled_grpo", dict(extra, block_length=8))


def test_two_lora_updates_on_tiny_llada_and_dream(real_dirs, tmp_path, varied_rewards):
    two_lora_updates("coupled_grpo", real_dirs, tmp_path)


@pytest.mark.slow
def test_twenty_updates_on_the_testbed(tmp_path):
    res = run_on_testbed("coupled_grpo", tmp_path, rollout_steps=10, inner=2)
    print(f"\ncoupled_grpo testbed: before {res['before']:.3f} after {res['after']:.3f} "
          f"step rewards {res['step_rewards']}")
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in res["rows"])
    assert_reward_not_worse(res)
