"""Post-training objectives: hand-computed losses, an exact tabular toy, and smoke runs on `tiny`."""
import dataclasses
import math

import pytest
import torch

from dlm_bench.errors import UserError
from dlm_bench.likelihood import ScoredBatch
from dlm_bench.methods import Rollouts, get_method, make_config, method_names
from dlm_bench.methods import losses, toy as T

SEEDS = (0, 1, 2)


# ----------------------------------------------------------------------------- hand numbers

def test_group_advantages_by_hand():
    # two groups, interleaved rows: A = rows 0,2,5 rewards (1, 0, 0); B = rows 1,3,4,6 rewards (2, 1, 0, 1)
    groups = torch.tensor([0, 5, 0, 5, 5, 0, 5])
    r = torch.tensor([1., 2., 0., 1., 0., 0., 1.], dtype=torch.float64)
    sa, sb = math.sqrt(1 / 3), math.sqrt(2 / 3)          # ddof-1 stds
    z = [2 / 3 / (sa + 1e-4), 1 / (sb + 1e-4), -1 / 3 / (sa + 1e-4), 0, -1 / (sb + 1e-4), -1 / 3 / (sa + 1e-4), 0]
    assert losses.group_advantages(r, groups, "zscore").tolist() == pytest.approx(z)
    # leave-one-out: r_i - mean of the others
    assert losses.group_advantages(r, groups, "rloo").tolist() == pytest.approx([1, 4 / 3, -.5, 0, -4 / 3, -.5, 0])
    assert losses.group_advantages(r, groups, "center").tolist() == pytest.approx([2 / 3, 1, -1 / 3, 0, -1, -1 / 3, 0])
    assert losses.group_advantages(r, groups, "none").tolist() == r.tolist()
    # a singleton group has no baseline to compare with: zero advantage, no nan
    assert losses.group_advantages(torch.tensor([3.]), torch.tensor([0]), "zscore").tolist() == [0.0]
    assert losses.group_advantages(torch.tensor([3.]), torch.tensor([0]), "rloo").tolist() == [0.0]


def test_sequence_clipped_surrogate_by_hand():
    ratio = torch.tensor([1.5, 0.5, 0.5, 1.5], dtype=torch.float64)
    adv = torch.tensor([1., 1., -1., -1.], dtype=torch.float64)
    old = torch.zeros(4, dtype=torch.float64)
    logp = ratio.log().requires_grad_(True)
    loss, st = losses.clipped_pg(logp, old, adv, 0.2)
    # rows: clipped to 1.2 (A>0) | unclipped 0.5 | clipped to 0.8 (A<0) | unclipped 1.5 (A<0)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8 + 1.5) / 4)
    loss.backward()
    # gradient -A rho / N where the clip does not bind, 0 where it does
    assert logp.grad.tolist() == pytest.approx([0, -0.125, 0, 0.375])
    assert st["clip_frac"] == 0.5 and st["clip_high_frac"] == 0.25 and st["clip_low_frac"] == 0.25


def test_token_level_justgrpo_normalisation_by_hand():
    # 3 rows, window 3; on-policy ratio 1: loss = -sum_i A_i |valid_i| / (window * #nonzero A)
    valid = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -2.0, 0.0])
    logp = torch.full((3, 3), -1.0, requires_grad=True)
    loss, _ = losses.clipped_pg(logp, logp.detach(), adv, 0.2, valid=valid, reduce="justgrpo")
    assert loss.item() == pytest.approx(-(1 * 2 - 2 * 3) / (3 * 2))
    loss.backward()
    assert torch.allclose(logp.grad, -adv[:, None] / 6 * valid)
    assert (logp.grad[0][valid[0]] < 0).all() and (logp.grad[1] > 0).all() and (logp.grad[2] == 0).all()
    # the paper's formula instead averages each row over its own tokens, then over rows
    loss2, _ = losses.clipped_pg(logp, logp.detach(), adv, 0.2, valid=valid, reduce="seq_mean")
    assert loss2.item() == pytest.approx((-1 + 2 - 0) / 3)


def test_espo_loss_by_hand():
    # groups (0, 0, 1, 1), rewards (1, 0, 1, 1) -> RLOO advantages (1, -1, 0, 0)
    adv = losses.group_advantages(torch.tensor([1., 0., 1., 1.], dtype=torch.float64), torch.tensor([0, 0, 1, 1]), "rloo")
    assert adv.tolist() == [1, -1, 0, 0]
    e = torch.tensor([-10., -12., -9., -11.], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([-10.5, -11., -9., -11.], dtype=torch.float64)
    ref = torch.tensor([-11., -12., -10., -10.], dtype=torch.float64)
    L = torch.tensor([5, 4, 5, 5])
    loss, st = losses.espo_loss(e, old, ref, adv, L, beta=0.1, eps_low=0.2)
    # row 0: rho = e^{0.5/5}, unclipped; row 1: rho = e^{-1/4} < 0.8 with A < 0 -> clipped at 0.8
    pg = (-math.exp(0.1) + 0.8) / 4
    kl = (0.5 / 5 + 0 + 0.5 / 5 + 0.5 / 5) / 4           # 1/2 (e - ref)^2 / L, averaged
    assert st["pg_loss"] == pytest.approx(pg) and st["kl_k2"] == pytest.approx(kl)
    assert loss.item() == pytest.approx(pg + 0.1 * kl)
    loss.backward()
    g = [-math.exp(0.1) / 5 / 4 + 0.1 * 1 / 5 / 4, 0.0, 0.1 * 1 / 5 / 4, -0.1 * 1 / 5 / 4]
    assert e.grad.tolist() == pytest.approx(g)
    assert e.grad[0] < 0 and e.grad[2] > 0 and e.grad[3] < 0       # reward pull up, KL pull to ref


def test_trafl_residual_by_hand():
    groups = torch.tensor([0, 0, 1, 1])
    r_t = losses.group_advantages(torch.tensor([1., 0., 1., 1.]), groups, "center")
    assert r_t.tolist() == [0.5, -0.5, 0, 0]
    s = torch.tensor([-1., -2., -1.5, -1.], requires_grad=True)
    s_ref = torch.tensor([-1.5, -1.5, -1., -1.])
    z = torch.tensor([0.2, -0.1], requires_grad=True)
    delta = losses.tb_residual(z[groups], s, s_ref, r_t, beta=2.0)
    assert delta.tolist() == pytest.approx([-0.3, 0.7, -0.6, -0.1])
    loss, st = losses.tb_loss(delta, z[groups], s, s_ref)
    assert loss.item() == pytest.approx(0.95 / 4)
    loss.backward()
    assert s.grad.tolist() == pytest.approx([-0.15, 0.35, -0.3, -0.05])   # 2 delta / N
    assert z.grad.tolist() == pytest.approx([0.2, -0.35])                   # summed over each group
    # per-token tilt: beta r~ / L
    d2 = losses.tb_residual(0.0, s.detach(), s_ref, r_t, 2.0, 1 / torch.tensor([2., 4., 1., 1.]))
    assert d2.tolist() == pytest.approx([0.5 - 0.5, -0.5 + 0.25, -0.5, 0.0])


# ----------------------------------------------------------------------------- exact toy

@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)                 # the toy is tiny: threads only add overhead
    yield T.make_toy()
    torch.set_num_threads(2)


@pytest.mark.parametrize("seed", SEEDS)
def test_trafl_toy_converges_to_the_tilted_reference(toy, seed):
    """Sequence-level scores (exact log-probs): the TB fixed point is p* = pi_ref e^{beta r} / Z.

    A per-token score (log p / L) with one prompt-level log Z cannot zero the residual for every y
    when lengths differ (it would need log Z / L(y)), so its fixed point is not p*: see the last check.
    """
    beta, G = 2.0, 4
    kw = dict(steps=800, groups=32, G=G, lr=2.0, z_lr=0.5, seed=seed, decay=0.01)
    raw = T.train(toy, T.trafl_objective(beta, "none"), **kw)
    assert T.tv(raw, toy.target_logp(beta)) < 0.02
    # group-centred reward: the sample's own reward sits in the mean, so the tilt is beta (1 - 1/G)
    cen = T.train(toy, T.trafl_objective(beta, "group"), **kw)
    assert T.tv(cen, toy.target_logp(beta * (1 - 1 / G))) < 0.02
    assert T.tv(cen, toy.target_logp(beta)) > 0.05
    # mass moved onto the correct set, and the within-correct proportions are the reference's
    assert raw.exp()[toy.correct].sum() > 3 * toy.ref_logp.exp()[toy.correct].sum()
    assert T.kl(T.within(raw, toy.correct), T.within(toy.ref_logp, toy.correct)) < 1e-3
    if seed == 0:
        tok = T.train(toy, T.trafl_objective(beta, "none", per_token=True), **kw)
        assert T.tv(tok, toy.target_logp(beta)) > 0.05


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_sharpens_inside_the_correct_set_and_espo_kl_holds_it(toy, seed):
    ref_in = T.within(toy.ref_logp, toy.correct)
    kw = dict(groups=16, G=8, lr=1.0, seed=seed)

    def within_kl(lp):
        return T.kl(T.within(lp, toy.correct), ref_in)

    grpo = T.train(toy, T.grpo_objective(), steps=300, **kw)      # JustGRPO: one update per batch
    assert grpo.exp()[toy.correct].sum() > 0.95                    # from 0.094 under the reference
    kl_grpo = within_kl(grpo)
    assert kl_grpo > 0.5                                           # mass piles on the likeliest answer
    # ESPO with mu = 2 (ratio and clip active), same number of updates; KL(beta) falls with beta
    kls = [within_kl(T.train(toy, T.espo_objective(b), steps=150, inner=2, **kw)) for b in (0.0, 0.1, 1.0)]
    assert kl_grpo > kls[1] + 0.02
    assert kls[0] > kls[1] + 0.02 > kls[2] + 0.5


# ----------------------------------------------------------------------------- smoke on tiny

def _rollouts(dlm, seed=0, prompts=("1+2=", "7*3="), G=3):
    g = torch.Generator().manual_seed(seed)
    chars = [dlm.tokenizer.convert_tokens_to_ids(c) for c in "0123456789+-*= "]
    p_ids, comps = [], []
    for p in prompts:
        for _ in range(G):
            n = int(torch.randint(3, 7, (), generator=g))
            comps.append([chars[int(i)] for i in torch.randint(len(chars), (n,), generator=g)])
            p_ids.append(dlm.prompt_ids(p))
    batch = ScoredBatch.build(dlm, p_ids, comps)
    N, W = batch.completion.shape
    step_map = torch.stack([torch.randperm(W, generator=g) for _ in range(N)])
    rewards = torch.tensor([1., 0., 1., 0., 0., 1.])[:N]
    return Rollouts(batch, rewards, torch.arange(len(prompts)).repeat_interleave(G), step_map, seed=seed)


def _no_grad_tensors(obj):
    if isinstance(obj, torch.Tensor):
        return not obj.requires_grad
    if isinstance(obj, (list, tuple)):
        return all(_no_grad_tensors(o) for o in obj)
    if dataclasses.is_dataclass(obj):
        return all(_no_grad_tensors(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return True


@pytest.mark.parametrize("name", method_names())
def test_each_method_runs_on_tiny(tiny, ref_model, name):
    cls = get_method(name)
    method = cls(make_config(cls, {}), policy=tiny)
    ro = _rollouts(tiny)
    with torch.no_grad():
        method.prepare(ro, tiny, ref_model if cls.needs_reference else None)
    if not cls.trains:
        with pytest.raises(RuntimeError):
            method.loss(ro, tiny, ref_model)
        return
    assert _no_grad_tensors(ro.cache)                                 # old/ref scores carry no graph
    for p in tiny.model.parameters():
        p.grad = None
    try:
        loss, stats = method.loss(ro, tiny, ref_model if cls.needs_reference else None)
        assert torch.isfinite(loss) and loss.requires_grad
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats.values())
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny.model.parameters())
        assert all(p.grad is None for p in ref_model.model.parameters())
        for group in method.param_groups():
            assert all(p.grad is not None for p in group["params"][-2:])   # the head's output layer learns
    finally:
        for p in tiny.model.parameters():
            p.grad = None


def test_shared_masks_make_old_and_ref_match_an_identical_policy(tiny, ref_model):
    """Coupled masks: at the first update theta == old == ref, so ESPO's ratio is exactly 1 and
    TraFL's score gap exactly 0 (with independent masks both would be noisy)."""
    espo_cls = get_method("espo")
    espo = espo_cls(make_config(espo_cls, {"inner_updates": 2}), policy=tiny)
    ro = _rollouts(tiny, seed=3)
    with torch.no_grad():
        espo.prepare(ro, tiny, ref_model)
        _, st = espo.loss(ro, tiny, ref_model)
        assert st["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and st["kl_k2"] == pytest.approx(0.0, abs=1e-6)
        _, st = espo.loss(ro, tiny, ref_model)                    # second inner update: new masks
        assert st["inner_iter"] == 1 and st["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    d0, d1 = ro.cache.draws
    assert not torch.equal(d0.masks, d1.masks)
    trafl_cls = get_method("trafl")
    for opts in ({}, {"z_param": "vargrad"}, {"z_features": "reference", "score": "sequence"}):
        m = trafl_cls(make_config(trafl_cls, opts), policy=tiny)
        ro = _rollouts(tiny, seed=4)
        with torch.no_grad():
            m.prepare(ro, tiny, ref_model)
            _, st = m.loss(ro, tiny, ref_model)
        assert st["kl_est"] == pytest.approx(0.0, abs=1e-6)


def test_configs_and_recipes():
    # recipe values: against the published tables in tests/test_paper_defaults.py; here, how they apply
    espo = get_method("espo")
    code = espo.config_for("humaneval", {"inner_updates": 2, "group_size": 3})
    assert (code.inner_updates, code.group_size) == (2, 3)                    # an override beats the recipe
    assert code.lr == espo.config_for("humaneval").lr != espo.Config().lr      # the rest of the recipe stays
    assert espo.config_for("gsm8k") == espo.Config()                          # GSM8K's recipe is the default
    assert get_method("justgrpo").rollout_order == "left_to_right"
    assert get_method("trafl").Config().z_lr > get_method("trafl").Config().lr
    with pytest.raises(UserError, match="score must be one of per_token, sequence"):
        make_config(get_method("trafl"), {"score": "bogus"})


# ----------------------------------------------------------------------------- method internals typed

def test_method_code_reads_block_fields_not_flat_aliases():
    """Inside a method, `cfg.optim.inner_updates`, never the user-facing alias `cfg.inner_updates`:
    every `cfg.X` / `config.X` / `self.config.X` in a method's module that names a flat alias of its
    config (dlm_bench.config.aliases) is listed."""
    import ast
    import inspect
    from dlm_bench.config import aliases
    found = []
    for name in method_names():
        cls = get_method(name)
        if not dataclasses.is_dataclass(cls.Config):
            continue
        flat = set(aliases(cls.Config))
        tree = ast.parse(inspect.getsource(inspect.getmodule(cls)))
        found += [f"{name}:{node.lineno} {ast.unparse(node)}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and node.attr in flat
                  and ast.unparse(node.value) in ("cfg", "config", "self.config")]
    assert not found, found


def test_caches_slice_by_their_fields_and_plain_dicts_still_work(tiny, ref_model):
    """`select` gives a chunk its rows of every per-row field (tensors, mask draws, lists of them) and
    the counter as it is; a plugin's plain-dict cache is sliced key by key; what has no row axis is
    refused with a clear error."""
    from dlm_bench.methods import MethodCache, slice_rows
    from dlm_bench.methods.espo import ESPOCache
    cls = get_method("espo")
    m = cls(make_config(cls, {"inner_updates": 2}), policy=tiny)
    ro = _rollouts(tiny, seed=1)
    with torch.no_grad():
        m.prepare(ro, tiny, ref_model)
    c = ro.cache
    assert isinstance(c, ESPOCache) and isinstance(c, MethodCache) and c.iter == 0
    idx = torch.tensor([4, 1])
    sub = m.select(ro, idx).cache
    assert isinstance(sub, ESPOCache) and sub is not c and sub.iter == 0
    assert torch.equal(sub.adv, c.adv[idx])
    assert torch.equal(sub.draws[1].masks, c.draws[1].masks[:, idx])
    assert torch.equal(sub.draws[0].weights, c.draws[0].weights[:, idx])
    assert all(torch.equal(a, b[idx]) for a, b in zip(sub.elbo_ref, c.elbo_ref))
    ro.cache = {"adv": c.adv, "draws": c.draws, "iter": 3, "note": "x"}
    d = ro.rows(idx).cache
    assert d["iter"] == 3 and d["note"] == "x" and torch.equal(d["adv"], c.adv[idx])
    assert torch.equal(d["draws"][0].masks, c.draws[0].masks[:, idx])
    with pytest.raises(ValueError, match="cannot split cache entry of type Tensor"):
        slice_rows(torch.zeros(2, 3), idx, 6)                 # per prompt, not per row
    with pytest.raises(ValueError, match="cannot split cache entry of type object"):
        slice_rows(object(), idx, 6)
