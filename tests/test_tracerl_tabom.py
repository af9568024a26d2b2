"""TraceRL and TABOM: trace-step slicing, the entropy ranking hinge and GAE by hand; smoke on `tiny`."""
import math

import pytest
import torch

from dlm_bench.errors import UserError
from dlm_bench.likelihood import ScoredBatch
from dlm_bench.methods import Rollouts, get_method, make_config
from dlm_bench.methods.tabom import draw_cuts, entropy_ranking_loss, td_masks
from dlm_bench.methods.tracerl import collapse_steps, gae, population_zscore

# row 0: one token per step, out of order; row 1: two tokens per step, steps 0, 4, 9 (gaps), 6 valid
STEP_MAP = torch.tensor([[0, 3, 1, 2, 5, 4, 7, 6],
                         [4, 0, 9, 4, 0, 9, 11, 11]])
LENGTHS = [8, 6]


def _rollouts(dlm, step_map, lengths, rewards, G=None, seed=0):
    chars = [dlm.tokenizer.convert_tokens_to_ids(c) for c in "0123456789"]
    g = torch.Generator().manual_seed(seed)
    N, W = step_map.shape
    comps = [[chars[int(i)] for i in torch.randint(len(chars), (W,), generator=g)] for _ in range(N)]
    G = G or N
    prompts = [dlm.prompt_ids(p) for p in ("1+2=", "7*3=")[: (N + G - 1) // G] for _ in range(G)]
    batch = ScoredBatch.build(dlm, prompts, comps, lengths=lengths)
    return Rollouts(batch, torch.tensor(rewards, dtype=torch.float32),
                    torch.arange(N // G).repeat_interleave(G), step_map, seed=seed)


def _samples(method, ro, tiny):
    with torch.no_grad():
        method.prepare(ro, tiny, None)
    c = ro.cache
    return {(int(r), int(k)): (m.nonzero().flatten().tolist(), t.nonzero().flatten().tolist())
            for r, k, m, t in zip(c.rows, c.k, c.masks, c.targets)}


# ----------------------------------------------------------------------------- trace slicing

def test_collapse_is_dense_rank_then_shrink():
    valid = torch.tensor([[True] * 8, [True] * 6 + [False] * 2])
    assert collapse_steps(STEP_MAP, valid, 1).tolist() == [[0, 3, 1, 2, 5, 4, 7, 6], [1, 0, 2, 1, 0, 2, -1, -1]]
    assert collapse_steps(STEP_MAP, valid, 2).tolist() == [[0, 1, 0, 1, 2, 2, 3, 3], [0, 0, 1, 0, 0, 1, -1, -1]]
    assert collapse_steps(STEP_MAP, valid, 8).tolist() == [[0] * 8, [0] * 6 + [-1, -1]]


@pytest.mark.parametrize("shrink", [1, 2, 8])
def test_trace_samples_through_the_method(tiny, shrink):
    cls = get_method("tracerl")
    m = cls(make_config(cls, {"shrink": shrink, "group_filter": None}), policy=tiny)
    ro = _rollouts(tiny, STEP_MAP, LENGTHS, [1.0, 0.0], G=2)
    got = _samples(m, ro, tiny)
    if shrink == 1:
        # row 0: sample k masks the positions decoded at step >= k; the loss is on the one decoded at k
        pos_of_step = {int(s): i for i, s in enumerate(STEP_MAP[0])}
        for k in range(8):
            masked = sorted(i for i, s in enumerate(STEP_MAP[0].tolist()) if s >= k)
            assert got[(0, k)] == (masked, [pos_of_step[k]])
        # row 1: distinct steps 0, 4, 9 become trace steps 0, 1, 2; positions 6, 7 are not valid
        assert got[(1, 0)] == ([0, 1, 2, 3, 4, 5], [1, 4])
        assert got[(1, 1)] == ([0, 2, 3, 5], [0, 3])
        assert got[(1, 2)] == ([2, 5], [2, 5])
        assert len(got) == 11
    elif shrink == 2:
        assert got[(0, 0)] == (list(range(8)), [0, 2])          # steps 0, 1
        assert got[(0, 1)] == ([1, 3, 4, 5, 6, 7], [1, 3])      # steps 2, 3
        assert got[(0, 2)] == ([4, 5, 6, 7], [4, 5])            # steps 4, 5
        assert got[(0, 3)] == ([6, 7], [6, 7])                  # steps 6, 7
        assert got[(1, 0)] == ([0, 1, 2, 3, 4, 5], [0, 1, 3, 4])  # steps 0 and 4 merge
        assert got[(1, 1)] == ([2, 5], [2, 5])
        assert len(got) == 6
    else:
        assert got == {(0, 0): (list(range(8)), list(range(8))), (1, 0): ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5])}
    # every valid token is a loss position in exactly one sample
    c = ro.cache
    cover = torch.zeros_like(STEP_MAP).index_add(0, c.rows, c.targets.long())
    assert cover.tolist() == [[1] * 8, [1] * 6 + [0, 0]]


def test_population_zscore_and_group_filter(tiny):
    r = torch.tensor([1., 0., 0., 0., 1., 1., 1., 1.])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    z = population_zscore(r, g)
    std = math.sqrt(0.25 * 0.75)                                # population std of (1, 0, 0, 0)
    assert z[:4].tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std])
    assert z[4:].tolist() == [0.0] * 4                           # constant group
    cls = get_method("tracerl")
    m = cls(make_config(cls, {"shrink": 8, "truncated_reward": None}), policy=tiny)   # default filter [0.2, 0.8]
    sm = torch.arange(8).repeat(8, 1)
    ro = _rollouts(tiny, sm, [8] * 8, r.tolist(), G=4)
    with torch.no_grad():
        m.prepare(ro, tiny, None)
    assert ro.cache.weight.tolist() == [1.0] * 4 + [0.0] * 4   # all-correct group dropped
    assert m.loss_count(ro) == 4.0


# ----------------------------------------------------------------------------- ranking loss

def test_entropy_ranking_loss_by_hand():
    H = torch.tensor([[1.0, 0.5, 2.0], [0.3, 0.1, 0.2]])
    steps = torch.tensor([[0, 1, 2], [0, 1, 2]])
    row0 = torch.tensor([[True, True, True], [False, False, False]])
    # pairs (earlier, later): (0,1): 0.2 + 1.0 - 0.5 = 0.7; (0,2): 0.2 + 1 - 2 < 0; (1,2): 0.2 + 0.5 - 2 < 0
    loss, rows = entropy_ranking_loss(H, steps, window=32, margin=0.2, valid=row0)
    assert rows == 1 and float(loss) == pytest.approx(0.7 / 3)
    loss, _ = entropy_ranking_loss(H, steps, window=2, margin=0.2, valid=row0)      # (0,2) out of window
    assert float(loss) == pytest.approx(0.7 / 2)
    loss, _ = entropy_ranking_loss(H, steps, window=32, margin=0.0, valid=row0)
    assert float(loss) == pytest.approx(0.5 / 3)
    # sign: entropies rising with the decoding step cost nothing at margin 0, falling ones do
    up, _ = entropy_ranking_loss(torch.tensor([[0.5, 1.0, 2.0]]), steps[:1], 32, 0.0, row0[:1])
    down, _ = entropy_ranking_loss(torch.tensor([[2.0, 1.0, 0.5]]), steps[:1], 32, 0.0, row0[:1])
    assert float(up) == 0.0 and float(down) == pytest.approx((1.0 + 1.5 + 0.5) / 3)
    # order follows the step map, not the position; two rows average per row
    loss, rows = entropy_ranking_loss(H, torch.tensor([[2, 1, 0], [0, 1, 2]]), 32, 0.0, torch.ones(2, 3, dtype=torch.bool))
    # row 0 decodes position 2 first, then 1, then 0: pairs (2,1), (2,0), (1,0)
    r0 = (max(0, 2.0 - 0.5) + max(0, 2.0 - 1.0) + max(0, 0.5 - 1.0)) / 3
    r1 = (max(0, 0.3 - 0.1) + max(0, 0.3 - 0.2) + max(0, 0.1 - 0.2)) / 3
    assert rows == 2 and float(loss) == pytest.approx((r0 + r1) / 2)
    # ties are not ranked; no pair at all gives 0 with a graph
    Hg = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss, rows = entropy_ranking_loss(Hg, torch.tensor([[3, 3]]), 32, 0.2, torch.ones(1, 2, dtype=torch.bool))
    assert rows == 0 and float(loss.detach()) == 0.0 and loss.requires_grad


def test_td_cut_masks_by_hand():
    steps = torch.tensor([[0, 3, 1, 2, 5, 4, 7, 6]])
    valid = torch.ones(1, 8, dtype=torch.bool)
    masked, sup = td_masks(steps, valid, torch.tensor([3]), window=2)
    assert masked[0].nonzero().flatten().tolist() == [1, 4, 5, 6, 7]       # decoded at step >= 3
    assert sup[0].nonzero().flatten().tolist() == [1, 5]                   # steps 3, 4
    _, sup_all = td_masks(steps, valid, torch.tensor([3]), window=0)
    assert torch.equal(sup_all, masked)
    cuts = torch.stack([draw_cuts(steps, valid, 2, torch.Generator().manual_seed(s)) for s in range(200)])
    assert set(cuts.flatten().tolist()) == set(range(6))                    # U{0 .. 7 - 2}


# ----------------------------------------------------------------------------- GAE

def test_gae_by_hand():
    r = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.6, 0.8], [0.3, 0.4, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv, ret = gae(r, v, gamma=0.9, lam=0.5, mask=mask)
    # row 0: d2 = 1 - 0.8 = 0.2; d1 = 0.9*0.8 - 0.6 = 0.12, A1 = 0.12 + 0.45*0.2 = 0.21;
    #        d0 = 0.9*0.6 - 0.5 = 0.04, A0 = 0.04 + 0.45*0.21 = 0.1345
    assert adv[0].tolist() == pytest.approx([0.1345, 0.21, 0.2])
    assert ret[0].tolist() == pytest.approx([0.6345, 0.81, 1.0])
    # row 1 ends at step 1: d1 = 1 - 0.4 = 0.6; d0 = 0.9*0.4 - 0.3 = 0.06, A0 = 0.06 + 0.45*0.6 = 0.33
    assert adv[1].tolist() == pytest.approx([0.33, 0.6, 0.0])
    adv1, ret1 = gae(r, v, 1.0, 1.0, mask)                       # gamma = lam = 1: A = R - V (Monte Carlo)
    assert adv1[0].tolist() == pytest.approx([0.5, 0.4, 0.2]) and ret1[1].tolist() == pytest.approx([1.0, 1.0, 0.0])
    adv0, _ = gae(r, v, 0.9, 0.0, mask)                          # lam = 0: one-step TD errors
    assert adv0[0].tolist() == pytest.approx([0.04, 0.12, 0.2])


# ----------------------------------------------------------------------------- smoke on tiny

def _smoke_rollouts(dlm, seed=0, G=3, W=8):
    g = torch.Generator().manual_seed(seed)
    N = 2 * G
    step_map = torch.stack([torch.randperm(W, generator=g) for _ in range(N)])   # one token per step
    step_map[1] = torch.div(step_map[1], 2, rounding_mode="floor")               # two tokens per step
    lengths = [int(torch.randint(4, W + 1, (), generator=g)) for _ in range(N)]
    return _rollouts(dlm, step_map, lengths, [1., 0., 1., 0., 0., 1.][:N], G=G, seed=seed)


@pytest.mark.parametrize("name,opts", [
    # the smoke completions have no end-of-text: keep their rewards (truncated_reward None)
    ("tracerl", {"shrink": 2, "truncated_reward": None}),
    ("tracerl", {"shrink": 1, "kl_anchor": "reference", "inner_updates": 2, "truncated_reward": None}),
    ("tracerl", {"shrink": 2, "value_model": True, "gamma": 0.9, "lam": 0.95, "truncated_reward": None}),
    ("tabom", {}),
    ("tabom", {"supervision_window": 3, "rank_window": 3, "ce_weighting": "llada", "filter_correct": True}),
])
def test_smoke_loss_has_policy_gradients(tiny, ref_model, name, opts):
    cls = get_method(name)
    m = cls(make_config(cls, opts), policy=tiny)
    ref = ref_model if m.needs_reference else None
    ro = _smoke_rollouts(tiny)
    with torch.no_grad():
        m.prepare(ro, tiny, ref)
    assert m.loss_count(ro) > 0
    for p in list(tiny.model.parameters()) + list(m.extra_modules.parameters()):
        p.grad = None
    try:
        loss, stats = m.loss(ro, tiny, ref)
        assert torch.isfinite(loss) and loss.requires_grad
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats.values())
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny.model.parameters())
        assert all(p.grad is None for p in ref_model.model.parameters())
        if opts.get("value_model"):
            assert stats["value_loss"] > 0
            head = m.extra_modules["value_head"]
            assert head.net[-1].weight.grad is not None and head.net[-1].weight.grad.abs().sum() > 0
            assert m.param_groups()[0]["lr"] == m.config.value_lr
        if opts.get("inner_updates") == 2:       # theta == old == ref at the first update
            assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
            assert stats["kl_k3"] == pytest.approx(0.0, abs=1e-6)
        if name == "tabom":
            assert stats["rank_rows"] > 0 and stats["ce_loss"] > 0
    finally:
        for p in list(tiny.model.parameters()) + list(m.extra_modules.parameters()):
            p.grad = None


def test_reference_need_follows_the_settings():
    tr = get_method("tracerl")
    assert get_method("tabom").needs_trajectory and tr.needs_trajectory
    assert not tr().needs_reference and tr(make_config(tr, {"kl_anchor": "reference"})).needs_reference
    assert not tr(make_config(tr, {"kl_anchor": "reference", "beta": 0.0})).needs_reference
    with pytest.raises(UserError, match="kl_anchor must be one of old, reference"):
        make_config(tr, {"kl_anchor": "bogus"})


def test_pads_after_the_first_end_of_text_are_not_trained_and_truncation_fails(tiny):
    cls = get_method("tracerl")
    m = cls(make_config(cls, {"shrink": 1, "group_filter": None}), policy=tiny)
    ro = _rollouts(tiny, torch.arange(8).repeat(2, 1), [8, 8], [1.0, 1.0], G=2)
    eos = tiny.eos_id
    ro.batch.completion[0, 3:] = eos                      # row 0 ends at position 3; row 1 never ends
    with torch.no_grad():
        m.prepare(ro, tiny, None)
    c = ro.cache
    trained = torch.zeros(2, 8, dtype=torch.long).index_add(0, c.rows, c.targets.long())
    assert trained.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8]   # the first end-of-text is the stop decision
    # row 1 is truncated: reward 0, so the group (1, 0) has advantages (+1, -1)
    assert c.adv[c.rows == 0].unique().tolist() == [1.0] and c.adv[c.rows == 1].unique().tolist() == [-1.0]


@pytest.mark.parametrize("schedule", [dict(minibatches=1), dict(minibatches=2), dict(inner_updates=2)])
def test_ppo_clip_and_kl_act_after_the_first_update(schedule, tiny_dir, tmp_path, varied_rewards):
    """One rollout batch, several optimizer steps against the rollout policy: from the second step on
    the ratio leaves 1 and the KL to the old policy is positive; a second pass over the same rows
    (inner_updates 2) makes the clip bind. With a single update both stay exactly 0."""
    from dlm_bench.training.loop import TrainConfig, train
    import json
    over = dict(group_size=4, batch_prompts=2, gen_length=8, steps=8, block_length=8, lr=5e-2, group_filter=None,
                truncated_reward=None, max_grad_norm=None, **schedule)
    train(TrainConfig(method="tracerl", model=tiny_dir, out=str(tmp_path / "r"), train_steps=1, overrides=over,
                      device="cpu"), progress=False)
    row = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[-1])
    if schedule.get("minibatches") == 1:                 # on-policy: ratio 1, KL to the rollout policy 0
        assert row["clip_frac"] == 0.0 and row["kl_k3"] == 0.0 and row["ratio_mean"] == pytest.approx(1.0)
    else:                                                # the later updates see a moved policy
        assert row["kl_k3"] > 0.0 and row["ratio_mean"] != pytest.approx(1.0, abs=1e-4)
    if "inner_updates" in schedule:
        assert row["clip_frac"] > 0.0
