"""EBPO on LLaDA and Dream: the loss by hand (log-domain clip, no overflow), the refusal of block models,
micro-batching, two LoRA updates on tiny LLaDA and Dream, and 20 updates on the CPU testbed. The block
ELBO: tests/test_likelihood_draws.py; the memory-bounded replay: the same file's bounded-draws test."""
import math
from types import SimpleNamespace

import pytest
import torch

from dlm_bench.errors import UserError
from dlm_bench.likelihood import block_elbo
from dlm_bench.methods import get_method, make_config
from dlm_bench.methods import losses
from real_lora import two_lora_updates
from test_diffu_grpo import assert_reward_not_worse, run_on_testbed, same_update
from test_methods import _rollouts
from test_real_models import real_dirs  # noqa: F401  (fixture)


def test_loss_by_hand(tiny):
    e = torch.tensor([-10.0, -20.0, -5.0, 900.0], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([-10.5, -19.0, -5.0, -100.0], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 2.0, 1.0], dtype=torch.float64)
    loss, st = losses.ebpo_loss(e, old, adv, 0.2, 0.2)
    # rho = e^{0.5} -> clipped at 1.2 (A > 0); e^{-1} -> clipped at 0.8 (A < 0); 1; e^{1000}: clipped, finite
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.0 - 1.2) / 4)
    assert st["clip_frac"] == pytest.approx(0.75)
    loss.backward()
    assert torch.isfinite(e.grad).all() and e.grad.tolist() == pytest.approx([0.0, 0.0, -2 / 4, 0.0])
    ppo, _ = losses.clipped_pg(e.detach()[:3].requires_grad_(), old[:3], adv[:3], 0.2)   # equal where finite
    assert ppo.item() == pytest.approx((-1.2 + 0.8 - 2.0) / 3)
    cls = get_method("ebpo")
    m = cls(make_config(cls, {"timesteps": 2, "block_length": 4}), policy=tiny)
    ro = _rollouts(tiny, seed=3)
    with torch.no_grad():
        m.prepare(ro, tiny, None)
        loss, st = m.loss(ro, tiny, None)
        e = block_elbo(tiny, ro.batch, ro.cache.draws[0])
    adv = losses.group_advantages(ro.rewards, ro.groups, "zscore", eps=1e-6)
    assert st["log_ratio_mean"] == 0.0 and loss.item() == pytest.approx(float(-adv.mean()), abs=1e-6)
    W = ro.batch.completion.shape[1]
    assert ro.cache.draws[0].inputs.shape[0] == 2 * math.ceil(W / 4) and torch.isfinite(e).all()


def test_block_models_refuse_other_elbo_blocks(tiny):
    """A block model's ELBO blocks are its own; a different mask_block_length is refused in one line."""
    cls = get_method("ebpo")
    fam = SimpleNamespace(block_causal=True, name="sdar")
    with pytest.raises(UserError, match="block size 4"):
        cls(make_config(cls, {"mask_block_length": 8}), policy=SimpleNamespace(family=fam, block_size=4))
    cls(make_config(cls, {"mask_block_length": 4}), policy=SimpleNamespace(family=fam, block_size=4))
    cls(make_config(cls, {"mask_block_length": 8}), policy=tiny)


@pytest.mark.parametrize("extra", [dict(inner_updates=2, timesteps=2, block_length=4),
                                   dict(inner_updates=1, timesteps=1, block_length=8, bounded=False)])
def test_micro_batch_of_one_matches_whole_batch(extra, tiny_dir, tmp_path, varied_rewards):
    same_update(tiny_dir, tmp_path, "ebpo", extra)


def test_two_lora_updates_on_tiny_llada_and_dream(real_dirs, tmp_path, varied_rewards):
    two_lora_updates("ebpo", real_dirs, tmp_path, timesteps=2, block_length=4, steps=8)


@pytest.mark.slow
def test_twenty_updates_on_the_testbed(tmp_path):
    res = run_on_testbed("ebpo", tmp_path, rollout_steps=20, inner=1, timesteps=4, block_length=4, steps=12)
    print(f"\nebpo testbed: before {res['before']:.3f} after {res['after']:.3f} step rewards {res['step_rewards']}")
    assert_reward_not_worse(res)
