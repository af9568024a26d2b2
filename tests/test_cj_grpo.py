"""CJ-GRPO: the samples are the rollout's own intermediate states (checked against the sampler's step
recorder), the loss by hand, the recipe, micro-batching and two LoRA updates on tiny LLaDA and Dream.
The decoder it pairs with (ascending steps, EOSER) is checked against the fetched reference code in
tests/test_decoders.py. The tabular toy has no decoding steps, so there is no toy check: on one step
per sequence CJ-GRPO is GRPO with centred rewards (its toy: tests/test_diffu_grpo.py)."""
import pytest
import torch

from dlm_bench.methods import get_method, make_config
from dlm_bench.methods import losses
from dlm_bench.sampler import SamplerConfig, make_generators, sample
from dlm_bench.likelihood import ScoredBatch
from dlm_bench.methods import Rollouts
from real_lora import two_lora_updates
from test_diffu_grpo import assert_reward_not_worse, run_on_testbed, same_update
from test_methods import _rollouts
from test_real_models import real_dirs  # noqa: F401  (fixture)


def expected_loss(ro) -> float:
    """mean over groups of mean over decoding steps k of sum_i -A_i |T_ik| / sum_i |T_ik|, on-policy."""
    adv = losses.group_advantages(ro.rewards.double(), ro.groups, "center")
    per_group = []
    for g in ro.groups.unique():
        rows = (ro.groups == g).nonzero(as_tuple=True)[0].tolist()
        terms = []
        for k in range(int(ro.step_map.max()) + 1):
            n = {i: int(((ro.step_map[i] == k) & ro.batch.valid[i]).sum()) for i in rows}
            if sum(n.values()):
                terms.append(sum(-float(adv[i]) * n[i] for i in rows) / sum(n.values()))
        per_group.append(sum(terms) / len(terms))
    return sum(per_group) / len(per_group)


def test_loss_by_hand(tiny, ref_model):
    """theta == old == ref: every ratio 1, k3 0; the per-step, per-group normalisation by hand."""
    cls = get_method("cj_grpo")
    m = cls(make_config(cls, {"inner_updates": 2}), policy=tiny)
    ro = _rollouts(tiny, seed=3)
    with torch.no_grad():
        m.prepare(ro, tiny, ref_model)
        loss, st = m.loss(ro, tiny, ref_model)
    assert st["kl_k3"] == pytest.approx(0.0, abs=1e-9)
    assert loss.item() == pytest.approx(expected_loss(ro), abs=1e-6)
    # each group's sample weights sum to one, so the loop's count is the number of groups
    assert m.loss_count(ro) == pytest.approx(ro.groups.unique().numel())


def test_samples_are_the_rollout_states(tiny):
    """Decode with the harness sampler (2 tokens per step), recording the window before every step: each
    (row, step) sample's input mask is exactly the masked positions of that recorded window, and its
    targets the positions the step committed."""
    W, S = 8, 4
    scfg = SamplerConfig(gen_length=W, steps=S, block_length=W, temperature=1.0, stop_at_eos=False)
    prompts = [tiny.prompt_ids(p) for p in ("1+2=", "7*3=") for _ in range(2)]
    seen = {}

    def record(v):
        for r, s, before, after in zip(v.rows.tolist(), v.steps.tolist(), v.before, v.after):
            seen[(r, s)] = (before == tiny.mask_id, (before == tiny.mask_id) & (after != tiny.mask_id))
    comps = sample(tiny, prompts, scfg, make_generators(range(4), "cpu"), recorder=record)
    batch = ScoredBatch.build(tiny, prompts, [c.tokens for c in comps])
    ro = Rollouts(batch, torch.tensor([1., 0., 0., 1.]), torch.tensor([0, 0, 1, 1]),
                  torch.tensor([c.step_map for c in comps]), seed=0)
    cls = get_method("cj_grpo")
    m = cls(make_config(cls, {"beta": 0.0}), policy=tiny)
    with torch.no_grad():
        m.prepare(ro, tiny, None)
    c = ro.cache
    assert len(c.rows) == 4 * S                       # every step reveals W / S = 2 tokens: one sample each
    for r, masks, targets in zip(c.rows.tolist(), c.masks, c.targets):
        k = int(ro.step_map[r][targets].max())
        want_masks, want_targets = seen[(r, k)]
        assert torch.equal(masks, want_masks & batch.valid[r]) and torch.equal(targets, want_targets)
        assert int(targets.sum()) == W // S


def test_reference_and_flags():
    cls = get_method("cj_grpo")
    c = cls.Config()
    assert (c.lr, c.group_size, c.epsilon, c.beta, c.inner_updates, c.max_grad_norm) == (3e-6, 6, 0.5, 0.04, 12, 0.2)
    assert cls.config_for("countdown").inner_updates == 8 and cls.config_for("gsm8k").inner_updates == 12
    assert cls.needs_reference and cls.pad_steps and cls.needs_trajectory
    assert not cls(make_config(cls, {"beta": 0.0})).needs_reference
    assert cls.profile.family == "trajectory RL"


def test_micro_batch_of_one_matches_whole_batch(tiny_dir, tmp_path, varied_rewards):
    same_update(tiny_dir, tmp_path, "cj_grpo", dict(inner_updates=2, steps=4))


def test_two_lora_updates_on_tiny_llada_and_dream(real_dirs, tmp_path, varied_rewards):
    two_lora_updates("cj_grpo", real_dirs, tmp_path)


@pytest.mark.slow
def test_twenty_updates_on_the_testbed(tmp_path):
    res = run_on_testbed("cj_grpo", tmp_path, rollout_steps=10, inner=2)
    print(f"\ncj_grpo testbed: before {res['before']:.3f} after {res['after']:.3f} step rewards {res['step_rewards']}")
    assert_reward_not_worse(res)
