"""MDPO: the step advantages and the loss by hand, the recorded intermediate states and predictions
against the rollout's step map, micro-batching and two LoRA updates on tiny LLaDA and Dream. Its
decoder, running-confidence remasking, is checked against the fetched reference in
tests/test_decoders.py. No toy check: the tabular toy has no denoising steps to reward."""
import pytest
import torch

from dlm_bench.methods import get_method, make_config
from dlm_bench.methods import losses
from real_lora import two_lora_updates
from test_diffu_grpo import assert_reward_not_worse, run_on_testbed, same_update
from test_real_models import real_dirs  # noqa: F401  (fixture)
from traced_rollouts import traced_rollouts

SMALL = dict(gen_length=6, steps=6, block_length=6, group_size=3, train_steps_per_rollout=2)


def test_step_advantages_by_hand():
    # one group of two rollouts, 3 steps; raw_t = (r_t - r_{t-1}) + 1 + mean(r_{t+1..}), last: + r_last
    r = torch.tensor([[0., 1., 1.], [1., 0., 0.]])
    raw = [[0 + 1 + 1.0, 1 + 1 + 1.0, 0 + 1 + 1.0], [1 + 1 + 0.0, -1 + 1 + 0.0, 0 + 1 + 0.0]]
    a = losses.mdpo_step_advantages(r, torch.tensor([0, 0]))
    for t in range(3):
        x = torch.tensor([raw[0][t], raw[1][t]], dtype=torch.float64)
        want = (x - x.mean()) / (x.std() + 1e-4)
        assert a[:, t].tolist() == pytest.approx(want.tolist())


def test_loss_by_hand():
    # 2 samples x 3 positions; sample 0 has 2 masked positions, sample 1 one; window L = 3
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.5, -2.0, -0.5], [-0.3, -1.0, -1.0]], dtype=torch.float64)
    ref = old - 0.1
    targets = torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    w = torch.tensor([[0.5, 1.0, 1.0], [1.0, 0.25, 1.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss, st = losses.mdpo_loss(logp, old, ref, adv, targets, w, beta=0.1, eps=0.2, window=3, rows=2)
    e = 1e-4
    rho0 = torch.exp(torch.tensor(0.5)).item()                    # clipped at 1.2 for A > 0
    s0 = (0.5 * (-1.2 * 1.0 * 3 / (2 + e) + 0.1 * 0.5 * (-1.6 + 1.0) ** 2)
          + 1.0 * (-1.0 * 1.0 * 3 / (2 + e) + 0.1 * 0.5 * 0.1 ** 2)) / (2 + e)
    s1 = 0.25 * (2.0 * 3 / (1 + e) + 0.1 * 0.5 * 0.1 ** 2) / (1 + e)
    assert rho0 > 1.2 and loss.item() == pytest.approx((s0 + s1) / 2)


def test_on_policy_method_loss(tiny, ref_model):
    """theta == ref at the first update: ratio 1 and k2 0, so the loss is sum_r sum_j c_j (-A_r L / n_r) / n_r
    over the samples, per row."""
    cls = get_method("mdpo")
    m = cls(make_config(cls, SMALL), policy=tiny)
    ro = traced_rollouts(m, tiny, seed=1)
    with torch.no_grad():
        m.prepare(ro, tiny, ref_model)
        loss, st = m.loss(ro, tiny, ref_model)
    c = ro.cache
    n = c.masks.sum(-1).double()
    L = ro.batch.completion.shape[1]
    per = (c.weights.double() * c.masks).sum(-1) * (-c.adv.double() * L / (n + 1e-4)) / (n + 1e-4)
    assert st["kl_k2"] == pytest.approx(0.0, abs=1e-12)
    assert loss.item() == pytest.approx(float(per.sum() / ro.rewards.numel()), rel=1e-5, abs=1e-7)
    # the trained steps are each row's largest |A_t|
    adv = losses.mdpo_step_advantages(ro.trace["step_rewards"], ro.groups)
    top = adv.abs().topk(2, dim=1).values
    assert sorted(c.adv.abs().double().tolist()) == pytest.approx(sorted(top.reshape(-1).tolist()), abs=1e-6)


def test_recorded_states_and_predictions(tiny):
    """The recorded input of step t masks exactly the positions decoded at steps >= t; the prediction keeps
    the decoded tokens, holds the final token where step t decoded one, and the last step's prediction
    is the completion (one block, no rcr), so its reward is the completion's."""
    cls = get_method("mdpo")
    m = cls(make_config(cls, SMALL), policy=tiny)
    ro = traced_rollouts(m, tiny, seed=2)
    t, S = ro.trace, SMALL["steps"]
    for r in range(ro.rewards.numel()):
        sm, final = ro.step_map[r], ro.batch.completion[r]
        for s in range(S):
            masked = t["inputs"][r, s] == tiny.mask_id
            assert torch.equal(masked, sm >= s)
            assert torch.equal(t["preds"][r, s][~masked], final[~masked])
            assert torch.equal(t["preds"][r, s][sm == s], final[sm == s])
            assert ((t["conf"][r, s] > 0) & (t["conf"][r, s] <= 1))[masked].all()
        assert torch.equal(t["preds"][r, S - 1], final)
    assert t["step_rewards"][:, -1].tolist() == ro.rewards.tolist()


def test_recipe_and_flags():
    cls = get_method("mdpo")
    c = cls.Config()
    assert (c.lr, c.beta, c.epsilon, c.train_steps_per_rollout, c.temperature, c.steps, c.lora_r) == \
        (7e-7, 0.02, 0.2, 8, 0.4, 128, 0)
    assert cls.needs_reference and not cls(make_config(cls, {"beta": 0.0})).needs_reference
    assert cls.profile.family == "trajectory RL"


def test_micro_batch_of_one_matches_whole_batch(tiny_dir, tmp_path, varied_rewards):
    same_update(tiny_dir, tmp_path, "mdpo", dict(inner_updates=2, train_steps_per_rollout=3))


def test_two_lora_updates_on_tiny_llada_and_dream(real_dirs, tmp_path, varied_rewards):
    two_lora_updates("mdpo", real_dirs, tmp_path, train_steps_per_rollout=2)


@pytest.mark.slow
def test_twenty_updates_on_the_testbed(tmp_path):
    res = run_on_testbed("mdpo", tmp_path, rollout_steps=20, inner=1)
    print(f"\nmdpo testbed: before {res['before']:.3f} after {res['after']:.3f} step rewards {res['step_rewards']}")
    assert_reward_not_worse(res)
