"""diffu-GRPO (d1): the one-step estimator and its masks, the k3 KL, the loss by hand, the exact toy,
micro-batching, and 20 updates on the CPU testbed."""
import json
import math
from pathlib import Path

import pytest
import torch

from dlm_bench.likelihood import ScoredBatch
from dlm_bench.methods import get_method, make_config
from dlm_bench.methods import losses, toy as T
from dlm_bench.methods.diffu_grpo import completion_positions, one_step_logprobs, prompt_masks
from dlm_bench.methods.losses import k3
from test_methods import _rollouts
from test_micro_batch import _close, _run
from test_train import TINY, weights

ROOT = Path(__file__).resolve().parents[1]
TESTBED_BASE = ROOT / "checkpoints" / "testbed-base"


# ----------------------------------------------------------------------------- pieces by hand

def test_k3_by_hand_and_its_expectation_is_the_exact_kl():
    logp = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64)
    ref = torch.tensor([-1.0, -1.0, -1.5], dtype=torch.float64)
    assert k3(logp, ref).tolist() == pytest.approx([0.0, math.e - 2, math.exp(-1) + 1 - 1])
    assert (k3(logp, ref) >= 0).all()
    # E_pi[k3] = sum_y pi (ref/pi - log(ref/pi) - 1) = KL(pi || ref), exactly, on the enumerable toy
    toy = T.make_toy()
    pi = torch.log_softmax(toy.ref_logp + torch.randn(len(toy.seqs), generator=torch.Generator().manual_seed(0),
                                                      dtype=torch.float64), 0)
    assert float((pi.exp() * k3(pi, toy.ref_logp)).sum()) == pytest.approx(T.kl(pi, toy.ref_logp), rel=1e-12)


def test_positions_run_through_the_first_stop_token(tiny):
    eos = tiny.eos_id
    ch = [tiny.tokenizer.convert_tokens_to_ids(c) for c in "12"]
    batch = ScoredBatch.build(tiny, [[5], [5], [5]], [[ch[0], eos, ch[1], eos], [ch[0], ch[1], ch[0], ch[1]],
                                                     [eos, eos, eos, eos]])
    pos = completion_positions(tiny, batch, "to_eos")
    assert pos.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert torch.equal(completion_positions(tiny, batch, "window"), batch.valid)


def test_prompt_masks_cover_only_real_prompt_tokens_and_are_seeded(tiny):
    batch = ScoredBatch.build(tiny, [[5, 6, 7, 8, 9] * 20, [5, 6]], [[7, 7], [7, 7]])
    m = prompt_masks(batch, 0.3, seed=11, draws=50)
    assert not (m & ~batch.prompt_mask.bool()[None]).any()                  # pads never masked
    frac = float(m[:, 0].float().mean())
    assert abs(frac - 0.3) < 4 * math.sqrt(0.3 * 0.7 / m[:, 0].numel())
    assert torch.equal(m, prompt_masks(batch, 0.3, seed=11, draws=50))
    assert not torch.equal(m, prompt_masks(batch, 0.3, seed=12, draws=50))
    assert not prompt_masks(batch, 0.0, seed=11).any()


def test_one_step_estimate_masks_the_whole_completion(tiny):
    """Each position's log-prob cannot depend on the completion tokens (all masked): two batches with
    the same prompt and different completions give each target the same distribution."""
    p = tiny.prompt_ids("1+2=")
    ids = [tiny.tokenizer.convert_tokens_to_ids(c) for c in "3456"]
    a = ScoredBatch.build(tiny, [p], [ids])
    b = ScoredBatch.build(tiny, [p], [ids[::-1]])
    none = torch.zeros_like(a.prompt_mask, dtype=torch.bool)
    with torch.no_grad():
        la, lb = one_step_logprobs(tiny, a, none), one_step_logprobs(tiny, b, none)
        logits = tiny.logits(torch.cat([a.prompt_ids, torch.full_like(a.completion, tiny.mask_id)], 1))[:, -4:]
    ref = torch.log_softmax(logits.float(), -1)
    assert torch.allclose(la[0], ref[0, torch.arange(4), a.completion[0]], atol=1e-5)
    assert torch.allclose(lb[0], ref[0, torch.arange(4), b.completion[0]], atol=1e-5)


def test_loss_by_hand(tiny, ref_model):
    """Token-level clip and k3, summed over the scored positions of the batch / their number."""
    cls = get_method("diffu_grpo")
    m = cls(make_config(cls, {"inner_updates": 2, "positions": "window"}), policy=tiny)
    ro = _rollouts(tiny, seed=5)
    with torch.no_grad():
        m.prepare(ro, tiny, ref_model)
        loss, st = m.loss(ro, tiny, ref_model)           # theta == old == ref: ratio 1, KL 0
    adv = losses.group_advantages(ro.rewards, ro.groups, "center")
    assert st["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and st["kl_k3"] == pytest.approx(0.0, abs=1e-9)
    valid = ro.batch.valid
    assert loss.item() == pytest.approx(float(-(adv[:, None] * valid).sum() / valid.sum()), abs=1e-6)
    assert m.loss_count(ro) == float(valid.sum())
    assert not torch.equal(ro.cache.prompt_masks[0], ro.cache.prompt_masks[1])   # fresh mask per update


# ----------------------------------------------------------------------------- exact toy

def diffu_grpo_objective(beta: float, eps: float = 0.5) -> T.Objective:
    """The method's loss at sequence level on exact log-probs: clipped ratio, centred advantage, k3."""
    def f(b, logp, log_z):
        adv = losses.group_advantages(b.rewards, b.groups, "center").to(logp.dtype)
        loss, st = losses.clipped_pg(logp, b.old_logp, adv, eps)
        return loss + beta * k3(logp, b.ref_logp).mean(), st
    return f


@pytest.mark.parametrize("seed", (0, 1))
def test_toy_mass_moves_to_the_correct_set_and_k3_holds_its_shape(seed):
    """With mu = 2 (the ratio and clip act) and no KL, the correct set's mass goes to ~1 and the mass
    inside it piles up (GRPO's mode seeking); the k3 term keeps the within-correct law nearer the
    reference, monotonically in beta."""
    torch.set_num_threads(1)
    toy = T.make_toy()
    ref_in = T.within(toy.ref_logp, toy.correct)
    kw = dict(steps=150, groups=16, G=8, lr=1.0, inner=2, seed=seed)
    runs = {b: T.train(toy, diffu_grpo_objective(b), **kw) for b in (0.0, 0.04, 1.0)}
    torch.set_num_threads(2)
    mass = {b: float(lp.exp()[toy.correct].sum()) for b, lp in runs.items()}
    kl_in = {b: T.kl(T.within(lp, toy.correct), ref_in) for b, lp in runs.items()}
    assert mass[0.0] > 0.9                                    # from 0.094 under the reference
    assert kl_in[0.0] > kl_in[0.04] > kl_in[1.0]
    assert T.kl(runs[1.0], toy.ref_logp) < T.kl(runs[0.0], toy.ref_logp)


# ----------------------------------------------------------------------------- loop integration

def same_update(tiny_dir, tmp_path, method, extra, tol=1e-5):
    """tests/test_micro_batch.py's check (micro_batch_size 1 vs the whole batch, float64): the same
    gradient norms and weights. Its `loss` comparison is left out: the loop averages the logged
    stats over rows, which for a loss normalised by tokens (loss_count != rows) is not the batch's
    loss even when the update is identical."""
    over = dict(TINY, lr=1e-3, **extra)
    a, la = _run(method, dict(over, _model=tiny_dir), tmp_path / "one", 1)
    b, lb = _run(method, dict(over, _model=tiny_dir), tmp_path / "all", 10_000)
    assert len(la) == len(lb) == 2
    for ra, rb in zip(la, lb):
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=tol), (ra, rb)
    _close(a, b, weights(Path(tiny_dir)), tol)


@pytest.mark.parametrize("extra", [dict(inner_updates=2), dict(inner_updates=1, positions="window", beta=0.0)])
def test_micro_batch_of_one_matches_whole_batch(extra, tiny_dir, tmp_path, varied_rewards):
    same_update(tiny_dir, tmp_path, "diffu_grpo", extra)


DEMO = dict(lr=1e-4, group_size=8, batch_prompts=4, temperature=1.0, gen_length=12, steps=12, block_length=12,
            lora_r=0, lr_schedule="constant", warmup_ratio=0.0)


def run_on_testbed(method: str, tmp_path, rollout_steps: int, inner: int, **extra) -> dict:
    """`rollout_steps` x `inner` optimizer updates of `method` on the testbed from the committed base;
    returns the per-step rewards and the reward of the same sampling before and after (8 train
    prompts x 8 samples, fixed seeds, T = 1)."""
    from dlm_bench.models import load_model
    from dlm_bench.sampler import SamplerConfig, sample
    from dlm_bench.tasks import get_task
    from dlm_bench.training.loop import TrainConfig, train
    out = tmp_path / method
    ckpt = train(TrainConfig(method=method, model=str(TESTBED_BASE), out=str(out), train_steps=rollout_steps,
                             overrides=dict(DEMO, inner_updates=inner, **extra), device="cpu", save_every=0,
                             micro_batch_size=64), progress=False)
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    task = get_task("testbed")
    probs = task.load("train")[:8]
    scfg = SamplerConfig(gen_length=12, steps=12, block_length=12, temperature=1.0)

    def reward(model_dir):
        dlm = load_model(str(model_dir), device="cpu")
        prompts = [dlm.prompt_ids(task.prompt(p)) for p in probs for _ in range(8)]
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(len(prompts))]
        comps = sample(dlm, prompts, scfg, generators=gens)
        return sum(task.rewards([p for p in probs for _ in range(8)], [c.text for c in comps])) / len(prompts)

    return {"step_rewards": [r["reward_mean"] for r in rows], "before": reward(TESTBED_BASE), "after": reward(ckpt),
            "rows": rows}


def assert_reward_not_worse(res: dict) -> None:
    """Why not "the reward rises": 20 updates at the demo's lr move the reward of 64 seeded samples
    by less than its sampling noise (sd ~ 0.06 at p ~ 0.3; diffu_grpo measured 0.312 -> 0.297), so a
    rise cannot be asserted without a run far longer than a test. What is asserted: the update did
    not break the policy (no drop beyond 3 sd of the difference) and the run logged finite numbers."""
    p = max(res["before"], 1 / 64)
    sd = math.sqrt(2 * p * (1 - p) / 64)
    assert res["after"] >= res["before"] - 3 * sd, res
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in res["rows"])


@pytest.mark.slow
def test_twenty_updates_on_the_testbed(tmp_path):
    """5 rollout batches x mu 4 = 20 updates at the demo's CPU settings. The reward is the fraction
    of correct answers of the same 64 seeded samples before and after."""
    res = run_on_testbed("diffu_grpo", tmp_path, rollout_steps=5, inner=4)
    print(f"\ndiffu_grpo testbed: before {res['before']:.3f} after {res['after']:.3f} "
          f"step rewards {res['step_rewards']}")
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in res["rows"])
    assert_reward_not_worse(res)
