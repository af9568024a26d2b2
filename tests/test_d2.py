"""d2-StepMerge and d2-AnyOrder: the loss by hand on tiny, segments from the rollout's step map, the
recipes, micro-batching, two LoRA updates on tiny LLaDA and Dream, and 20 updates on the CPU testbed. The
trajectory likelihood itself is checked against hand-built forwards and the exact left-to-right
log-probability in tests/test_likelihood_draws.py; the loss is d1's (its toy: tests/test_diffu_grpo.py)."""
import math

import pytest
import torch

from dlm_bench.errors import UserError
from dlm_bench.methods import get_method, make_config
from dlm_bench.methods import losses
from dlm_bench.likelihood import masked_token_logprobs, one_step_logprobs
from real_lora import two_lora_updates
from test_diffu_grpo import assert_reward_not_worse, run_on_testbed, same_update
from test_methods import _rollouts
from test_real_models import real_dirs  # noqa: F401  (fixture)


def test_loss_by_hand(tiny, ref_model):
    """theta == old == ref: ratio 1, k3 0, loss -sum_k A_i / #positions (centred A); the segments come from
    the step map, and with one segment the scores are d1's one-step estimate."""
    cls = get_method("d2_stepmerge")
    m = cls(make_config(cls, {"inner_updates": 2, "positions": "window", "segments": 3, "steps": 6}), policy=tiny)
    ro = _rollouts(tiny, seed=5)                         # step maps: a random permutation of 0..W-1 per row
    with torch.no_grad():
        m.prepare(ro, tiny, ref_model)
        loss, st = m.loss(ro, tiny, ref_model)
    adv = losses.group_advantages(ro.rewards, ro.groups, "center")
    valid = ro.batch.valid
    assert st["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and st["kl_k3"] == pytest.approx(0.0, abs=1e-9)
    assert loss.item() == pytest.approx(float(-(adv[:, None] * valid).sum() / valid.sum()), abs=1e-6)
    assert ro.cache.segments.tolist() == torch.div(ro.step_map, 2, rounding_mode="floor").clamp(max=2).tolist()
    assert not torch.equal(ro.cache.prompt_masks[0], ro.cache.prompt_masks[1])
    one = cls(make_config(cls, {"segments": 1, "p_mask_prompt": 0.0}), policy=tiny)
    ro1 = _rollouts(tiny, seed=5)
    with torch.no_grad():
        one.prepare(ro1, tiny, ref_model)
        none = torch.zeros_like(ro1.batch.prompt_mask, dtype=torch.bool)
        # d1's own scorer with every completion position masked (rows shorter than the window keep their
        # end-of-text fill visible, as every estimator of the harness does)
        d1 = masked_token_logprobs(tiny, ro1.batch, ro1.batch.valid[None], prompt_masked=none[None])[0] * ro1.cache.positions
        assert torch.allclose(ro1.cache.ref_logp[0], d1, atol=1e-5)
        full = ro1.batch.valid.all(-1)                               # rows filling the window: d1 exactly
        assert full.any() and torch.allclose(ro1.cache.ref_logp[0][full],
                                             (one_step_logprobs(tiny, ro1.batch, none) * ro1.cache.positions)[full],
                                             atol=1e-5)


def test_recipe_and_flags():
    sm, ao = get_method("d2_stepmerge"), get_method("d2_anyorder")
    c = sm.Config()
    assert (c.segments, c.inner_updates, c.lr, c.group_size, c.p_mask_prompt) == (8, 12, 3e-6, 6, 0.15)
    assert sm.config_for("countdown").segments == 16 and sm.config_for("sudoku").temperature == 0.3
    a = ao.Config()
    assert (a.inner_updates, a.lr, a.group_size, a.rollout.steps * 2) == (2, 1e-6, 8, a.rollout.gen_length)
    assert not hasattr(a, "p_mask_prompt") or a.p_mask_prompt == 0
    assert sm.needs_trajectory and ao.needs_trajectory and sm.needs_reference
    with pytest.raises(UserError, match="segments must be >= 1"):
        make_config(sm, {"segments": 0})


def test_anyorder_scores_each_step_at_its_own_state(tiny, ref_model):
    """AnyOrder = one segment per decoding step: with a left-to-right step map the scores are the exact
    left-to-right log-probabilities."""
    from dlm_bench.likelihood import left_to_right_logprob
    cls = get_method("d2_anyorder")
    ro = _rollouts(tiny, seed=2)
    N, W = ro.batch.completion.shape
    ro.step_map = torch.arange(W)[None].expand(N, -1).clone()
    m = cls(make_config(cls, {"steps": W, "gen_length": W, "block_length": W, "positions": "window"}), policy=tiny)
    with torch.no_grad():
        m.prepare(ro, ref_model, ref_model)
        exact = left_to_right_logprob(ref_model, ro.batch, per_token=True)
    assert torch.allclose(ro.cache.ref_logp[0], exact, atol=1e-5)


@pytest.mark.parametrize("method,extra", [("d2_stepmerge", dict(inner_updates=2, segments=4)),
                                          ("d2_anyorder", dict(inner_updates=1, beta=0.0, bounded=False))])
def test_micro_batch_of_one_matches_whole_batch(method, extra, tiny_dir, tmp_path, varied_rewards):
    same_update(tiny_dir, tmp_path, method, extra)


@pytest.mark.parametrize("method", ["d2_stepmerge", "d2_anyorder"])
def test_two_lora_updates_on_tiny_llada_and_dream(method, real_dirs, tmp_path, varied_rewards):
    two_lora_updates(method, real_dirs, tmp_path, **({"segments": 2} if method == "d2_stepmerge" else {}))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["d2_stepmerge", "d2_anyorder"])
def test_twenty_updates_on_the_testbed(method, tmp_path):
    res = run_on_testbed(method, tmp_path, rollout_steps=10, inner=2,
                         **({"segments": 4} if method == "d2_stepmerge" else {}))
    print(f"\n{method} testbed: before {res['before']:.3f} after {res['after']:.3f} step rewards {res['step_rewards']}")
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in res["rows"])
    assert_reward_not_worse(res)
