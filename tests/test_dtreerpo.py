"""d-TreeRPO: the tree advantages by hand, tree rollouts (siblings share their parent's state; a tree does
not depend on batching), the loss by hand with the self-distillation term checked against a
position-by-position computation from the parent state's full distribution, micro-batching and two LoRA
updates on tiny LLaDA and Dream. No toy check: the tabular toy has no intermediate states to branch from."""
import math

import pytest
import torch

from dlm_bench.errors import UserError
from dlm_bench.methods import get_method, make_config
from dlm_bench.methods import losses
from dlm_bench.methods.dtreerpo import segment_bounds
from real_lora import two_lora_updates
from test_diffu_grpo import assert_reward_not_worse, run_on_testbed, same_update
from test_real_models import real_dirs  # noqa: F401  (fixture)
from traced_rollouts import traced_rollouts

SMALL = dict(gen_length=6, steps=6, block_length=6, group_size=4, tree_samples=2, branch=2, contraction=2)


def test_tree_advantages_by_hand():
    # one prompt, 2 x 2 leaves with rewards (1, 0 | 1, 1): depth-1 values 0.5, 1 -> advantages -0.5, 0.5;
    # depth 2: (1, 0) -> 1, -1 under the first node, (1, 1) -> 0, 0 under the second
    d1, d2 = losses.tree_advantages(torch.tensor([[1.0, 0.0, 1.0, 1.0]]), [2, 2])
    assert d1.tolist() == [[-0.5, 0.5]] and d2.tolist() == [[1.0, -1.0, 0.0, 0.0]]
    # 3 siblings: value minus the mean of the other two
    (a,) = losses.tree_advantages(torch.tensor([[3.0, 0.0, 0.0]]), [3])
    assert a.tolist() == [[3.0, -1.5, -1.5]]
    assert segment_bounds(128, 2) == [0, 64, 128] and segment_bounds(6, 4) == [0, 1, 3, 4, 6]


def test_tree_rollouts(tiny):
    cls = get_method("dtreerpo")
    m = cls(make_config(cls, SMALL), policy=tiny)
    ro = traced_rollouts(m, tiny, seed=1)
    one = traced_rollouts(m, tiny, seed=1, chunk=1)
    assert torch.equal(ro.batch.completion, one.batch.completion) and torch.equal(ro.step_map, one.step_map)
    for leaf in range(8):
        assert sorted(ro.step_map[leaf].tolist()) == list(range(6))       # every step decodes one token
    for a, b in ((0, 1), (2, 3), (4, 5), (6, 7)):                          # siblings: the same first segment
        first = ro.step_map[a] < 3
        assert torch.equal(first, ro.step_map[b] < 3)
        assert torch.equal(ro.batch.completion[a][first], ro.batch.completion[b][first])
    with pytest.raises(UserError, match="set group_size=4"):
        cls(make_config(cls, dict(SMALL, group_size=3)))
    with pytest.raises(UserError, match="multiple of 2"):
        cls(make_config(cls, dict(SMALL, group_size=3, tree_samples=None)))


def distill_by_positions(tiny, ro, prompt, nodes, tau):
    """The reference's loop: for each position the children with positive advantage decoded, q over their
    tokens weighted by softmax(A / tau), KL(q || p(. | parent state)) from the parent's full distribution."""
    c = ro.cache
    kls = []
    for parent in c.parent.unique().tolist():
        idx = [i for i in nodes if int(c.parent[i]) == parent]
        pos = [i for i in idx if c.adv[i] > 0]
        if len(idx) <= 1 or not pos:
            continue
        w = torch.softmax(torch.tensor([float(c.adv[i]) for i in pos], dtype=torch.float64) / tau, 0)
        state = torch.where(c.masks[pos[0]], tiny.mask_id, c.completion[pos[0]])
        with torch.no_grad():
            logp = torch.log_softmax(tiny.logits(torch.tensor([prompt + state.tolist()])).double(), -1)[0, len(prompt):]
        for j in range(c.masks.shape[1]):
            q = {}
            for k, i in enumerate(pos):
                if c.targets[i, j]:
                    tok = int(c.completion[i, j])
                    q[tok] = q.get(tok, 0.0) + float(w[k])
            if q:
                z = sum(q.values())
                kls.append(sum(v / z * (math.log(v / z) - float(logp[j, t])) for t, v in q.items()))
    return sum(kls), len(kls)


def test_loss_by_hand(tiny, ref_model):
    """theta == old == ref: ratio 1, k3 0, so the policy term is -mean over nodes of A (nodes that decoded a
    token); the self-distillation term at half the horizon is lambda(t) x the mean KL over (parent,
    position) pairs, computed here from the parent state's full distribution."""
    cls = get_method("dtreerpo")
    m = cls(make_config(cls, dict(SMALL, distill_horizon=10)), policy=tiny)
    ro = traced_rollouts(m, tiny, seed=2, prompts=("1+2=",))
    ro.rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])                        # advantages as in the by-hand test
    with torch.no_grad():
        m.prepare(ro, tiny, ref_model)
        base, st = m.loss(ro, tiny, ref_model)
        m.after_update(5, tiny, ref_model)
        lam, tau = m.schedule()
        full, st2 = m.loss(ro, tiny, ref_model)
    c = ro.cache
    assert c.adv.tolist() == [-0.5, 0.5, 1.0, -1.0, 0.0, 0.0]
    has = c.targets.any(-1).double()
    assert st["kl_k3"] == pytest.approx(0.0, abs=1e-9) and st["distill_lambda"] == 0.0
    assert base.item() == pytest.approx(float(-(c.adv.double() * has).mean()), abs=1e-6)
    assert lam == pytest.approx(3e-3 * (math.exp(1.0) - 1) / (math.exp(2.0) - 1))
    assert tau == pytest.approx(2.0 * 0.5 ** 0.7)
    kl_sum, pairs = distill_by_positions(tiny, ro, tiny.prompt_ids("1+2="), range(6), tau)
    assert pairs == c.n_pairs > 0
    assert (full - base).item() == pytest.approx(lam * kl_sum / pairs, rel=1e-4)


def test_recipe_and_flags():
    cls = get_method("dtreerpo")
    c = cls.Config()
    assert (c.lr, c.group_size, c.tree_samples, c.branch, c.contraction, c.inner_updates, c.epsilon, c.beta) == \
        (3e-5, 16, None, 4, 2, 12, 0.4, 0.01)
    assert cls(make_config(cls, {})).branching() == [4, 4]                # tree_samples None: 16 / 4
    assert cls(make_config(cls, {"group_size": 8})).branching() == [2, 4]
    assert cls.profile.family == "trajectory RL"


def test_micro_batch_of_one_matches_whole_batch(tiny_dir, tmp_path, varied_rewards):
    """With distill_horizon 1 the second update carries the full self-distillation term (lambda_max)."""
    same_update(tiny_dir, tmp_path, "dtreerpo", dict(inner_updates=2, tree_samples=2, branch=2, distill_horizon=1,
                                                     distill_lambda_max=0.5))


def test_two_lora_updates_on_tiny_llada_and_dream(real_dirs, tmp_path, varied_rewards):
    two_lora_updates("dtreerpo", real_dirs, tmp_path, tree_samples=1, branch=2)


@pytest.mark.slow
def test_twenty_updates_on_the_testbed(tmp_path):
    res = run_on_testbed("dtreerpo", tmp_path, rollout_steps=10, inner=2)
    print(f"\ndtreerpo testbed: before {res['before']:.3f} after {res['after']:.3f} step rewards {res['step_rewards']}")
    assert_reward_not_worse(res)
