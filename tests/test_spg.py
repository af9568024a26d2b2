"""SPG: block_random masks, the ELBO/EUBO/mixture scores by hand, the sandwich on the exact toy,
micro-batching, and 20 updates on the CPU testbed."""
import math

import pytest
import torch

from dlm_bench.likelihood import ScoredBatch
from dlm_bench.methods import get_method, make_config
from dlm_bench.methods import losses, toy as T
from dlm_bench.methods.spg import block_random_masks, spg_loss, spg_scores
from test_diffu_grpo import assert_reward_not_worse, run_on_testbed, same_update


def test_block_random_masks(tiny):
    G, B = 12, 4
    comps = [[7] * G, [7] * G]
    batch = ScoredBatch.build(tiny, [[5, 6, 7], [5]], comps)
    scored = torch.zeros(2, G, dtype=torch.bool)
    scored[0], scored[1, :6] = True, True                      # row 1: 6 scored positions (2 blocks)
    for seed in range(20):
        pm, cm = block_random_masks(batch, scored, B, 2, 0.0, 0.0, 1.0, seed)
        assert not pm.any()                                    # p = 0: no clean token masked
        for i in range(2):
            L = int(scored[i].sum())
            starts = []
            for j in range(2):
                m = cm[j, i]
                assert m[~scored[i]].all()                     # outside the scored span: always masked
                first = int(m.nonzero().min())
                start = first // B * B
                starts.append(start)
                assert not m[:start].any() and m[start + B:].all()   # clean before, masked after the block
                assert 1 <= int(m[start:min(start + B, L)].sum()) <= min(B, L - start)
            if i == 0:
                assert starts[0] != starts[1]                  # distinct blocks while the window has enough
    pm, cm = block_random_masks(batch, scored, B, 2, 1.0, 0.0, 1.0, 0)
    assert torch.equal(pm[:, :, -1], torch.ones(2, 2, dtype=torch.bool))
    assert not pm[:, 1, :-1].any()                             # row 1's left padding is never masked
    assert torch.equal(cm, block_random_masks(batch, scored, B, 2, 1.0, 0.0, 1.0, 0)[1])


def test_scores_by_hand():
    # one row, 3 scored positions, two draws masking {0, 1} and {2}: t = 2/3 and 1/3
    lp = torch.log(torch.tensor([[[0.5, 0.25, 0.9]], [[0.4, 0.8, 0.2]]], dtype=torch.float64))
    M = torch.tensor([[[True, True, False]], [[False, False, True]]])
    scored = torch.ones(1, 3, dtype=torch.bool)
    elbo, eubo = spg_scores(lp, M, scored, beta=2.0, omega=0.5, negative="eubo")
    assert elbo.item() == pytest.approx(((math.log(0.5) + math.log(0.25)) / 2 + math.log(0.2)) / 2)
    q = [0.5 ** 2 / (2 / 3) / 2, 0.25 ** 2 / (2 / 3) / 2, 0.2 ** 2 / (1 / 3) / 2]
    assert eubo.item() == pytest.approx(sum(math.log(x) for x in q) / 3 / 2)
    _, mix = spg_scores(lp, M, scored, 2.0, 0.25, "mix")
    assert mix.item() == pytest.approx(0.25 * eubo.item() + 0.75 * elbo.item())
    # the loss picks the ELBO for A > 0 and the upper bound otherwise, weighted by length
    e = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    u = torch.tensor([-0.5, -1.0], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([0.5, -0.5], dtype=torch.float64)
    loss, _ = spg_loss(e, u, adv, torch.tensor([2, 6]))
    assert loss.item() == pytest.approx(-(2 * 0.5 * -1.0 + 6 * -0.5 * -1.0) / 8)
    loss.backward()
    assert e.grad.tolist() == pytest.approx([-2 * 0.5 / 8, 0.0]) and u.grad.tolist() == pytest.approx([0.0, 6 * 0.5 / 8])


def spg_objective(gap_low: float, gap_high: float) -> T.Objective:
    """SPG on the toy with bounds log p - gap_low <= log p <= log p + gap_high (constant gaps per sequence)."""
    def f(b, logp, log_z):
        adv = losses.group_advantages(b.rewards, b.groups, "center").to(logp.dtype)
        gaps = 0.1 * b.lengths
        return spg_loss(logp - gap_low * gaps, logp + gap_high * gaps, adv, b.lengths)
    return f


def test_toy_sandwich_lower_bounds_the_objective_and_mass_rises_monotonically():
    """J_SPG <= J (the advantage- and length-weighted log-likelihood) whenever ELBO <= log p <= EUBO,
    with equality for exact bounds; training raises the correct set's mass monotonically."""
    torch.set_num_threads(1)
    toy = T.make_toy()
    idx = torch.multinomial(toy.ref_logp.exp(), 64, replacement=True, generator=torch.Generator().manual_seed(0))
    b = T.ToyBatch(idx, torch.arange(8).repeat_interleave(8), toy.reward[idx], toy.lengths[idx],
                   toy.ref_logp[idx], toy.ref_logp[idx])
    exact, _ = spg_objective(0.0, 0.0)(b, toy.ref_logp[idx], None)
    sandwich, _ = spg_objective(1.0, 1.0)(b, toy.ref_logp[idx], None)
    wrong_side, _ = spg_objective(-1.0, -1.0)(b, toy.ref_logp[idx], None)      # bounds on the wrong sides
    assert -sandwich.item() < -exact.item() < -wrong_side.item()
    kw = dict(groups=16, G=8, lr=1.0, inner=2, seed=0)
    masses = [float(T.train(toy, spg_objective(1.0, 1.0), steps=s, **kw).exp()[toy.correct].sum()) for s in (20, 60, 150)]
    torch.set_num_threads(2)
    m_ref = float(toy.ref_logp.exp()[toy.correct].sum())
    assert m_ref < masses[0] < masses[1] < masses[2] and masses[2] > 0.9


def test_recipe_and_flags(tiny):
    cls = get_method("spg")
    assert not cls.needs_reference and cls.config_for("sudoku").eubo_beta == 1.0
    assert cls.config_for("gsm8k") == cls.Config()
    with pytest.raises(Exception, match="eubo_beta must be >= 1"):
        make_config(cls, {"eubo_beta": 0.5})


@pytest.mark.parametrize("extra", [dict(inner_updates=2), dict(inner_updates=1, negative_bound="eubo",
                                                               positions="window", mask_block_length=4)])
def test_micro_batch_of_one_matches_whole_batch(extra, tiny_dir, tmp_path, varied_rewards):
    same_update(tiny_dir, tmp_path, "spg", extra)


@pytest.mark.slow
def test_twenty_updates_on_the_testbed(tmp_path):
    res = run_on_testbed("spg", tmp_path, rollout_steps=5, inner=4)
    print(f"\nspg testbed: before {res['before']:.3f} after {res['after']:.3f} step rewards {res['step_rewards']}")
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in res["rows"])
    assert_reward_not_worse(res)
