"""EGSPO-SA: returns and step selection by hand, the selected steps and their samples against an
independent recording of the same decode, the loss by hand, micro-batching and two LoRA updates on tiny
LLaDA and Dream. No toy check: the tabular toy has no denoising steps to select."""
import pytest
import torch

from dlm_bench.errors import UserError
from dlm_bench.methods import get_method, make_config
from dlm_bench.methods import losses
from dlm_bench.methods.egspo import select_steps
from dlm_bench.sampler import SamplerConfig, make_generators, sample
from real_lora import two_lora_updates
from test_diffu_grpo import assert_reward_not_worse, run_on_testbed, same_update
from test_real_models import real_dirs  # noqa: F401  (fixture)
from traced_rollouts import traced_rollouts

SMALL = dict(gen_length=6, steps=6, block_length=6, group_size=3, selected_steps=4)


def test_returns_and_selection_by_hand():
    final = torch.tensor([1.0, 0.0])
    step_r = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # R = r + lam (r - r_t), / (1 + lam)
    assert losses.egspo_returns(final, step_r, 0.5, False).tolist() == [[1.5, 1.0], [-0.5, 0.0]]
    assert losses.egspo_returns(final, step_r, 0.5, True).reshape(-1).tolist() == pytest.approx([1.0, 2 / 3, -1 / 3, 0.0])
    ent = torch.tensor([[0.1, 0.9, -float("inf"), 0.5, 0.2, 0.3, 0.0, 0.4]])
    assert sorted(select_steps(ent, 3, "high_entropy")[0].tolist()) == [1, 3, 7]
    assert select_steps(ent, 4, "uniform")[0].tolist() == [0, 3, 6, 7]       # linspace(0, S-2, k-1) and the last


def entropies(tiny, ro, scfg):
    """The same decode again, with this test's own recorder: each step's mean predictive entropy over the
    tokens it committed."""
    N, S = ro.rewards.numel(), scfg.steps
    ent = torch.full((N, S), -float("inf"), dtype=torch.float64)

    def record(v):
        for r, s, before, after, logits in zip(v.rows.tolist(), v.steps.tolist(), v.before, v.after, v.logits):
            new = (before == tiny.mask_id) & (after != tiny.mask_id)
            if new.any():
                ent[r, s] = float(torch.distributions.Categorical(logits=logits[new].double()).entropy().mean())
    prompts = [row[m.bool()].tolist() for row, m in zip(ro.batch.prompt_ids, ro.batch.prompt_mask)]
    sample(tiny, prompts, scfg, make_generators([i for i in range(N)], "cpu"), recorder=record)
    return ent


def test_samples_and_advantages(tiny, ref_model):
    cls = get_method("egspo")
    m = cls(make_config(cls, SMALL), policy=tiny)
    ro = traced_rollouts(m, tiny, seed=0)
    scfg = SamplerConfig(gen_length=6, steps=6, block_length=6, temperature=1.0, stop_at_eos=False)
    ent = entropies(tiny, ro, scfg)
    steps = ro.trace["steps"]
    assert steps.shape == (6, 4)
    for r in range(6):
        assert sorted(steps[r].tolist()) == sorted(ent[r].topk(4).indices.tolist())
    with torch.no_grad():
        m.prepare(ro, tiny, ref_model)
    c = ro.cache
    ret = (ro.rewards[:, None] + 0.5 * (ro.rewards[:, None] - ro.trace["step_rewards"])) / 1.5
    for r, slot, masks, targets, adv in zip(c.rows.tolist(), c.slot.tolist(), c.masks, c.targets, c.adv.tolist()):
        s = int(steps[r, slot])
        assert torch.equal(masks, ro.step_map[r] >= s) and torch.equal(targets, ro.step_map[r] == s)
        same = (ro.groups == ro.groups[r]).nonzero(as_tuple=True)[0]
        assert adv == pytest.approx(float(ret[r, slot] - ret[same, slot].mean()), abs=1e-6)


def test_loss_by_hand(tiny, ref_model):
    """theta == old == ref: ratio 1, k3 0; update j trains slot j (4 slots, 4 updates) and its loss is
    -mean(A of slot j) / (tokens per step)."""
    cls = get_method("egspo")
    m = cls(make_config(cls, dict(SMALL, gen_length=6, steps=3, block_length=6, selected_steps=2,
                                  inner_updates=2)), policy=tiny)
    ro = traced_rollouts(m, tiny, seed=3)
    with torch.no_grad():
        m.prepare(ro, tiny, ref_model)
        for j in range(2):
            loss, st = m.loss(ro, tiny, ref_model)
            c = ro.cache
            want = -c.adv[c.slot == j].double().mean() / 2                  # 6 tokens / 3 steps
            assert st["inner_iter"] == j and st["kl_k3"] == pytest.approx(0.0, abs=1e-9)
            assert loss.item() == pytest.approx(float(want), abs=1e-6)


def test_recipe_and_flags():
    cls = get_method("egspo")
    c = cls.Config()
    assert (c.lr, c.group_size, c.selected_steps, c.inner_updates, c.lam, c.epsilon, c.epsilon_high, c.beta) == \
        (3e-5, 8, 8, 4, 0.5, 0.2, 0.5, 0.04)
    with pytest.raises(UserError, match="multiple of inner_updates"):
        cls(make_config(cls, {"selected_steps": 6}))
    with pytest.raises(UserError, match="exceeds"):
        cls(make_config(cls, {"selected_steps": 8, "steps": 4, "inner_updates": 1}))
    assert cls.profile.family == "trajectory RL"


def test_micro_batch_of_one_matches_whole_batch(tiny_dir, tmp_path, varied_rewards):
    same_update(tiny_dir, tmp_path, "egspo", dict(inner_updates=2, selected_steps=4))


def test_two_lora_updates_on_tiny_llada_and_dream(real_dirs, tmp_path, varied_rewards):
    two_lora_updates("egspo", real_dirs, tmp_path, selected_steps=2)


@pytest.mark.slow
def test_twenty_updates_on_the_testbed(tmp_path):
    res = run_on_testbed("egspo", tmp_path, rollout_steps=10, inner=2, selected_steps=4)
    print(f"\negspo testbed: before {res['before']:.3f} after {res['after']:.3f} step rewards {res['step_rewards']}")
    assert_reward_not_worse(res)
