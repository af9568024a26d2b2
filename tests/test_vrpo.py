"""VRPO (LLaDA 1.5): pairs and the DPO loss by hand, DPO's known fixed point on the exact toy, the shared
(antithetic) masks on tiny, the pairs file through the CLI, micro-batching with whole pairs, two LoRA
updates on tiny LLaDA and Dream, and 20 updates on the CPU testbed."""
import json
import math
from pathlib import Path

import pytest
import torch

from dlm_bench.cli import main
from dlm_bench.errors import UserError
from dlm_bench.likelihood import draw_masks, elbo
from dlm_bench.methods import get_method, make_config
from dlm_bench.methods import losses, toy as T
from real_lora import two_lora_updates
from test_diffu_grpo import assert_reward_not_worse, run_on_testbed
from test_methods import _rollouts
from test_micro_batch import _close, _run
from test_real_models import real_dirs  # noqa: F401  (fixture)
from test_train import TINY, weights


# ----------------------------------------------------------------------------- the loss by hand

def test_pairs_and_dpo_loss_by_hand():
    # group 0: rewards (1, 0, 1) -> pairs (0 > 1), (2 > 1); group 7: (0, 0) -> none; group 3: (0.5, 1) -> (5 > 4)
    groups = torch.tensor([0, 0, 0, 7, 7, 3, 3])
    rewards = torch.tensor([1., 0., 1., 0., 0., 0.5, 1.])
    w, l = losses.preference_pairs(rewards, groups)
    assert sorted(zip(w.tolist(), l.tolist())) == [(0, 1), (2, 1), (6, 5)]
    s = torch.tensor([-3.0, -5.0, -4.0], dtype=torch.float64, requires_grad=True)     # B_theta of rows w0, l, w2
    ref = torch.tensor([-3.5, -4.0, -4.0], dtype=torch.float64)
    loss, st = losses.dpo_loss(s[[0, 2]], s[[1, 1]], ref[[0, 2]], ref[[1, 1]], beta=0.5)
    m = [(-3.0 + 3.5) - (-5.0 + 4.0), (-4.0 + 4.0) - (-5.0 + 4.0)]            # 1.5, 1.0
    assert st["margin_mean"] == pytest.approx(sum(m) / 2)
    assert loss.item() == pytest.approx(sum(math.log1p(math.exp(-0.5 * x)) for x in m) / 2)
    loss.backward()
    sig = [1 / (1 + math.exp(0.5 * x)) for x in m]                               # d/dmargin = -beta sigma(-beta m)
    assert s.grad.tolist() == pytest.approx([-0.5 * sig[0] / 2, 0.5 * (sig[0] + sig[1]) / 2, -0.5 * sig[1] / 2])
    empty, st = losses.dpo_loss(s[:0], s[:0], ref[:0], ref[:0], 0.5)
    assert empty.item() == 0.0 and empty.requires_grad and st["pairs"] == 0


# ----------------------------------------------------------------------------- exact toy

def test_toy_dpo_converges_to_the_bradley_terry_tilt():
    """DPO's known fixed point: with pairs over the whole support labelled by a Bradley-Terry model of
    reward r (P(y1 > y2) = sigmoid(r1 - r2)), the minimiser of the expected loss on exact scores
    (B = log p) is pi* = pi_ref e^{r / beta} / Z, for every beta (the loss only sees differences)."""
    torch.set_num_threads(1)
    toy = T.make_toy()
    S = len(toy.seqs)

    def train(beta, seed, steps=2000, pairs=512, lr=80.0, decay=0.02):
        gen = torch.Generator().manual_seed(seed)
        theta = toy.ref_logp.clone().requires_grad_(True)
        for t in range(steps):
            i, j = torch.randint(S, (pairs,), generator=gen), torch.randint(S, (pairs,), generator=gen)
            first = torch.rand(pairs, generator=gen, dtype=torch.float64) < torch.sigmoid(toy.reward[i] - toy.reward[j])
            w, l = torch.where(first, i, j), torch.where(first, j, i)
            lp = torch.log_softmax(theta, 0)
            loss, _ = losses.dpo_loss(lp[w], lp[l], toy.ref_logp[w], toy.ref_logp[l], beta)
            g, = torch.autograd.grad(loss, theta)
            with torch.no_grad():
                theta -= lr / (1 + decay * t) * g
        return torch.log_softmax(theta.detach(), 0)

    for beta, seed in ((0.5, 0), (1.0, 1)):
        lp = train(beta, seed)
        assert T.tv(lp, toy.target_logp(1 / beta)) < 0.03                      # from 0.34 (beta 0.5), 0.13 (1.0)
        assert T.tv(lp, toy.target_logp(1 / beta)) < T.tv(lp, toy.target_logp(2 / beta)) / 3
    torch.set_num_threads(2)


# ----------------------------------------------------------------------------- on tiny

def test_scores_and_antithetic_masks(tiny, ref_model):
    """Shared masks: at theta == ref every margin is exactly 0 (loss log 2, no estimator noise); scoring
    the policy with masks of its own instead leaves a nonzero margin. One mask per timestep: the 4 draws
    of a row have 4 different sizes spread over 1..L."""
    cls = get_method("vrpo")
    m = cls(make_config(cls, {"num_masks": 4}), policy=tiny)
    ro = _rollouts(tiny, seed=4)
    with torch.no_grad():
        m.prepare(ro, tiny, ref_model)
        loss, st = m.loss(ro, tiny, ref_model)
        assert st["pairs"] == 4 and st["margin_mean"] == pytest.approx(0.0, abs=1e-9)
        assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
        other = draw_masks(ro.batch.valid, 4, torch.Generator().manual_seed(99), "stratified")
        s = elbo(tiny, ro.batch, other) / m.config.rollout.gen_length
        w, l = losses.preference_pairs(ro.rewards, ro.groups)
        r = ro.cache.ref[0]
        _, st2 = losses.dpo_loss(s[w], s[l], r[w], r[l], 0.2)
        assert abs(st2["margin_mean"]) > 1e-4
        seq = cls(make_config(cls, {"num_masks": 4, "score_scale": "sequence"}), policy=tiny)
        ro2 = _rollouts(tiny, seed=4)
        seq.prepare(ro2, tiny, ref_model)
        assert torch.allclose(ro2.cache.ref[0], r * m.config.rollout.gen_length)
    sizes = ro.cache.draws[0].masks.sum(-1)                  # [4, N]
    assert all(len(set(sizes[:, i].tolist())) == min(4, int(ro.batch.valid[i].sum())) for i in range(sizes.shape[1]))


def test_pairs_need_whole_groups_per_backward(tiny, ref_model):
    cls = get_method("vrpo")
    m = cls(make_config(cls, {}), policy=tiny)
    ro = _rollouts(tiny, seed=1)
    with torch.no_grad():
        m.prepare(ro, tiny, ref_model)
    assert m.select(ro, torch.arange(3)).rewards.numel() == 3           # group 0 is rows 0..2
    with pytest.raises(UserError, match="multiple of group_size"):
        m.select(ro, torch.arange(2))
    assert m.loss_count(ro) == 4.0                     # rewards (1, 0, 1 | 0, 0, 1): (0>1), (2>1), (5>3), (5>4)


def test_micro_batch_of_whole_groups_matches_whole_batch(tiny_dir, tmp_path, varied_rewards):
    over = dict(TINY, lr=1e-3, group_size=4, batch_prompts=2, minibatches=2, num_masks=2)
    a, la = _run("vrpo", dict(over, _model=tiny_dir), tmp_path / "pairs", 4)
    b, lb = _run("vrpo", dict(over, _model=tiny_dir), tmp_path / "all", 10_000)
    for ra, rb in zip(la, lb):
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-5)
    _close(a, b, weights(Path(tiny_dir)))


def test_pairs_file_trains_and_refuses_bad_lines(tiny_dir, tmp_path, capsys):
    good = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a, b in ((1, 2), (3, 4), (2, 5))]
    rows.append({"prompt": [{"role": "user", "content": "9-3="}], "chosen": "6", "rejected": "no"})
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    out = tmp_path / "run"
    argv = ["train", "vrpo", "--pairs", str(good), "--model", tiny_dir, "--out", str(out), "--train-steps", "2",
            "--set", "batch_prompts=2", "--set", "gen_length=4", "--set", "block_length=4", "--set", "steps=4",
            "--set", "num_masks=2", "--set", "lr=1e-3", "--no-progress"]
    assert main(argv) == 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(r["pairs"] == 1 and r["reward_mean"] == 0.5 and r["grad_norm"] > 0 for r in log)
    assert json.loads((out / "config.json").read_text())["train"]["pairs"] == str(good)
    from dlm_bench.models import load_model
    from dlm_bench.training.pairs import PairsFile, trajectories
    dlm = load_model(tiny_dir, device="cpu")
    probs = PairsFile(str(good)).load()
    traj = trajectories(dlm, probs, 4)
    assert (traj[(0, 0)].scored, traj[(0, 1)].reward, traj[(3, 1)].scored) == (1, 0.0, 2)   # "3"; "no"
    assert traj[(0, 0)].tokens[1:] == [dlm.eos_id] * 3                                   # padded, not scored
    bad = {"notjson": "{", "keys": json.dumps({"prompt": "x", "chosen": "y"}),
           "empty": json.dumps({"prompt": "x", "chosen": "", "rejected": "z"}),
           "long": json.dumps({"prompt": "x", "chosen": "123456789", "rejected": "z"})}
    for what, line in bad.items():
        f = tmp_path / f"{what}.jsonl"
        f.write_text(line + "\n")
        assert main(argv[:3] + [str(f)] + argv[4:6] + ["--out", str(tmp_path / what)] + argv[8:]) == 2, what
        err = capsys.readouterr().err
        assert "line 1" in err and "Traceback" not in err, (what, err)
    assert main(argv + ["--task", "gsm8k"]) == 2 and "leave --task out" in capsys.readouterr().err
    assert main(["train", "tracerl", "--pairs", str(good), "--model", tiny_dir, "--out", str(tmp_path / "t")]) == 2
    assert "decoding steps" in capsys.readouterr().err


def test_two_lora_updates_on_tiny_llada_and_dream(real_dirs, tmp_path, varied_rewards):
    two_lora_updates("vrpo", real_dirs, tmp_path, num_masks=2)


@pytest.mark.slow
def test_twenty_updates_on_the_testbed(tmp_path):
    """10 rollout batches x 2 minibatches; pairs from the graded groups of 8."""
    res = run_on_testbed("vrpo", tmp_path, rollout_steps=10, inner=1, num_masks=4)
    print(f"\nvrpo testbed: before {res['before']:.3f} after {res['after']:.3f} step rewards {res['step_rewards']}")
    assert_reward_not_worse(res)
