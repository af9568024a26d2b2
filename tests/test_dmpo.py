"""DMPO: the weights by hand, the fixed point on the exact toy (the reward-tilted reference with an
unbiased baseline; the recipe's negative-weight centering moves off it), the method's loss on tiny,
micro-batching and two LoRA updates on tiny LLaDA and Dream."""
import math

import pytest
import torch

from dlm_bench.errors import UserError
from dlm_bench.likelihood import masked_token_logprobs
from dlm_bench.methods import get_method, make_config
from dlm_bench.methods import losses, toy as T
from dlm_bench.methods.dmpo import bernoulli_pairs
from real_lora import two_lora_updates
from test_diffu_grpo import assert_reward_not_worse, run_on_testbed, same_update
from test_methods import _rollouts
from test_real_models import real_dirs  # noqa: F401  (fixture)


def test_weights_by_hand():
    # one group of 3: log_rnd (0, ln 2, 0), rewards (1, 0, 0), alpha 0.5
    log_rnd = torch.tensor([0.0, math.log(2), 0.0])
    r, g = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 0])
    e2 = math.exp(2)
    w = [e2 / (e2 + 3), 2 / (e2 + 3), 1 / (e2 + 3)]                      # softmax(log_rnd + r / alpha)
    neg = [math.exp(-2) / (math.exp(-2) + 3), 2 / (math.exp(-2) + 3), 1 / (math.exp(-2) + 3)]
    assert losses.dmpo_weights(log_rnd, r, g, 0.5, "none").tolist() == pytest.approx(w)
    assert losses.dmpo_weights(log_rnd, r, g, 0.5, "mean").tolist() == pytest.approx([x - 1 / 3 for x in w])
    assert losses.dmpo_weights(log_rnd, r, g, 0.5, "negative").tolist() == pytest.approx([a - b for a, b in zip(w, neg)])
    assert losses.dmpo_weights(log_rnd, r, g, 0.5, "negative", 0.5).tolist() == \
        pytest.approx([a - b / 2 for a, b in zip(w, neg)])
    # groups are separate softmaxes
    two = losses.dmpo_weights(torch.zeros(4), torch.tensor([1., 0., 1., 1.]), torch.tensor([0, 0, 1, 1]), 1.0, "none")
    assert two.tolist() == pytest.approx([math.e / (math.e + 1), 1 / (math.e + 1), 0.5, 0.5])


def toy_objective(alpha: float, centering: str, G: int):
    """DMPO on exact sequence log-probs: log_rnd = log p_ref - log p_old exactly, CE = -log p_theta."""
    def f(b, logp, log_z):
        adv = losses.dmpo_weights(b.ref_logp - b.old_logp, b.rewards, b.groups, alpha, centering).to(logp.dtype)
        return G * (adv * (-logp)).mean(), {}
    return f


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_toy_fixed_point_is_the_tilted_reference(alpha):
    """With the unbiased (1/G) baseline the weighted cross-entropy is minimised at p* ~ pi_ref exp(r / alpha):
    300 SGD steps of 16 groups x 16 from the reference land within TV 0.05 of p* (the reference is 0.13 / 0.34
    away; what remains is the self-normalised weights' finite-G bias and sampling noise). The recipe's
    negative-weight centering is not a baseline: it pushes nearly all the mass onto the correct set, far
    from p*."""
    torch.set_num_threads(1)
    toy = T.make_toy()
    target = toy.target_logp(1 / alpha)
    mean = T.train(toy, toy_objective(alpha, "mean", 16), steps=300, groups=16, G=16, lr=1.0, seed=0, decay=0.02)
    neg = T.train(toy, toy_objective(alpha, "negative", 16), steps=300, groups=16, G=16, lr=1.0, seed=0, decay=0.02)
    torch.set_num_threads(2)
    assert T.tv(toy.ref_logp, target) > 0.1
    assert T.tv(mean, target) < 0.05
    assert float(neg.exp()[toy.correct].sum()) > 0.9 and T.tv(neg, target) > 0.5


def test_method_loss_on_tiny(tiny, ref_model):
    """theta == ref: the ELBO log-ratio is exactly 0 (shared masks), so A = softmax(r / alpha) - softmax(-r / alpha)
    per group, and the loss is G x the row mean of A_i CE_i with CE the denoising cross-entropy of the
    update's masks. Masks come in complementary pairs within the valid window."""
    cls = get_method("dmpo")
    m = cls(make_config(cls, {"alpha": 0.5}), policy=tiny)
    ro = _rollouts(tiny, seed=4)
    with torch.no_grad():
        m.prepare(ro, tiny, ref_model)
        loss, st = m.loss(ro, tiny, ref_model)
        c = ro.cache
        assert c.log_rnd.abs().max().item() < 1e-5
        adv = losses.dmpo_weights(torch.zeros(6), ro.rewards, ro.groups, 0.5, "negative")
        assert c.adv.tolist() == pytest.approx(adv.tolist(), abs=1e-6)
        masks = c.masks[0].transpose(0, 1)                                   # [replicates, N, G]
        valid = ro.batch.valid
        assert torch.equal(masks[:2] | masks[2:], valid.expand(2, -1, -1)) and not (masks[:2] & masks[2:]).any()
        lp = masked_token_logprobs(tiny, ro.batch, masks)
        ce = (-lp.sum(-1) / masks.sum(-1).clamp(min=1)).mean(0)
    assert loss.item() == pytest.approx(float(3 * (adv * ce).mean()), rel=1e-5)


def test_bernoulli_pairs_rates():
    m = bernoulli_pairs((200, 2000), 4, 0.1, 0.9, torch.Generator().manual_seed(0))
    assert torch.equal(m[:2], ~m[2:])
    rate = m[:2].float().mean(-1)                                        # one lambda per row and draw
    assert 0.07 < rate.min() < 0.15 and 0.85 < rate.max() < 0.93 and abs(rate.mean().item() - 0.5) < 0.05


def test_recipe_and_flags():
    cls = get_method("dmpo")
    c = cls.Config()
    assert (c.lr, c.alpha, c.group_size, c.inner_updates, c.temperature, c.centering) == \
        (1e-6, 0.04, 16, 8, 0.2, "negative")
    assert cls.profile.family == "distribution matching"
    assert "moves the fixed point" in cls.target(c) and "p*" in cls.target(make_config(cls, {"centering": "mean"}))
    with pytest.raises(UserError):
        make_config(cls, {"centering": "bogus"})


def test_micro_batch_of_one_matches_whole_batch(tiny_dir, tmp_path, varied_rewards):
    same_update(tiny_dir, tmp_path, "dmpo", dict(inner_updates=2, replicates=2, rnd_replicates=2, alpha=0.5))


def test_two_lora_updates_on_tiny_llada_and_dream(real_dirs, tmp_path, varied_rewards):
    two_lora_updates("dmpo", real_dirs, tmp_path, replicates=2, rnd_replicates=2, alpha=0.5)


@pytest.mark.slow
def test_twenty_updates_on_the_testbed(tmp_path):
    res = run_on_testbed("dmpo", tmp_path, rollout_steps=10, inner=2)
    print(f"\ndmpo testbed: before {res['before']:.3f} after {res['after']:.3f} step rewards {res['step_rewards']}")
    assert_reward_not_worse(res)
