"""Recipe details that change the numbers a user gets (issue 17): TraceRL's fresh AdamW per RL step,
TABOM's offline base-model trajectories, ESPO's row-stratified mask sizes, per-architecture LoRA
targets, and the tilt TraFL reports."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dlm_bench.errors import UserError
from dlm_bench.training.loop import TrainConfig, train

TINY = dict(group_size=2, batch_prompts=2, gen_length=8, steps=8, block_length=8, lr=1e-3)


def _adam_steps(out: Path) -> set[int]:
    from dlm_bench.training import checkpoint
    _, state = checkpoint.load_state(out)
    return {int(s["step"]) for s in state["optimizer"]["state"].values()}


@pytest.mark.parametrize("reset", [False, True])
def test_fresh_adamw_per_rl_step(tiny_dir, tmp_path, varied_rewards, reset):
    """Two RL steps of two minibatch updates each: one optimizer for the run has made 4 Adam steps,
    a fresh one per RL step (TraceRL's default) only the last step's 2."""
    over = dict(TINY, group_filter=None, minibatches=2, reset_each_step=reset)
    train(TrainConfig(method="tracerl", model=tiny_dir, out=str(tmp_path / "r"), train_steps=2, overrides=over,
                      device="cpu"), progress=False)
    assert _adam_steps(tmp_path / "r") == ({2} if reset else {4})


def test_tracerl_recipe_resets_the_optimizer():
    from dlm_bench.methods import get_method
    assert get_method("tracerl").Config().optim.reset_each_step is True
    assert get_method("espo").Config().optim.reset_each_step is False


# ----------------------------------------------------------------------------- TABOM's trajectories

def _two_problems(monkeypatch):
    from dlm_bench.tasks.testbed import Testbed
    real = Testbed.load
    monkeypatch.setattr(Testbed, "load", lambda self, split: real(self, split)[:2])


def _records(out: Path) -> dict:
    from dlm_bench.runs.store import read_jsonl
    return {(r["problem_id"], r["sample"]): r for r in read_jsonl(out / "trajectories" / "trajectories.jsonl")}


def test_offline_trajectories_come_from_the_base_model_once(tiny_dir, tmp_path, monkeypatch):
    """Three steps over a two-problem split: two problems x G trajectories are stored once, each equal to
    a fresh decode of the base model with its own seed (pads at their own step), and the steps replay
    them (no forward passes spent on rollouts)."""
    from dlm_bench.config import derive_seed
    from dlm_bench.models import load_model
    from dlm_bench.sampler import SamplerConfig, make_generators, sample
    from dlm_bench.tasks import get_task
    _two_problems(monkeypatch)
    out = tmp_path / "r"
    train(TrainConfig(method="tabom", model=tiny_dir, out=str(out), train_steps=3, overrides=TINY, seed=5,
                      device="cpu"), progress=False)
    recs = _records(out)
    assert sorted(recs) == [(p, j) for p in ("0", "1") for j in (0, 1)]
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["nfe"] == 0 for r in rows)
    base, task = load_model(tiny_dir, device="cpu"), get_task("testbed")
    problems = task.load("train")
    scfg = SamplerConfig(gen_length=8, block_length=8, steps=8, temperature=1.0, stop_at_eos=False)
    keys = sorted(recs)
    comps = sample(base, [base.prompt_ids(task.prompt(problems[int(p)])) for p, _ in keys], scfg,
                   make_generators([derive_seed(5, 0x7AB, int(p), j) for p, j in keys], "cpu"))
    for k, c in zip(keys, comps):
        assert recs[k]["tokens"] == c.tokens and recs[k]["step_map"] == c.step_map
        assert len(set(c.step_map)) == 8          # every position, pads included, at its own step


def test_offline_collection_resumes_and_refuses_a_gap_after_training(tiny_dir, tmp_path, monkeypatch):
    _two_problems(monkeypatch)
    full, cut = tmp_path / "full", tmp_path / "cut"
    cfg = dict(method="tabom", model=tiny_dir, train_steps=1, overrides=TINY, device="cpu")
    train(TrainConfig(out=str(full), **cfg), progress=False)
    # a run killed while collecting: no checkpoint, half the records and a torn line
    f = cut / "trajectories" / "trajectories.jsonl"
    f.parent.mkdir(parents=True)
    lines = (full / "trajectories" / "trajectories.jsonl").read_text().splitlines(keepends=True)
    f.write_text("".join(lines[:2]) + lines[2][:20])
    train(TrainConfig(out=str(cut), **cfg), progress=False)
    assert _records(cut) == _records(full)
    # trajectories lost from a run that has trained: they cannot be re-made from the moved policy
    f.write_text("".join(lines[:1]))
    with pytest.raises(UserError, match="must come from the base model"):
        train(TrainConfig(out=str(cut), **{**cfg, "train_steps": 2}), progress=False)


def test_tabom_recipe_defaults_and_code_margin():
    from dlm_bench.methods import get_method
    tabom = get_method("tabom")
    c = tabom.Config()
    assert (c.rollout.source, c.optim.epochs, c.lora.targets, c.rank_margin) == ("offline", 5, "q,v", 0.2)
    assert c.optim.warmup_steps == 50
    assert tabom.pad_steps
    assert tabom.config_for("humaneval").rank_margin == 0.3
    assert tabom.config_for("gsm8k").rank_margin == 0.2
    assert tabom.config_for("mbpp", {"rank_margin": 0.1}).rank_margin == 0.1      # overrides win


def test_epochs_set_the_number_of_steps(monkeypatch):
    from dlm_bench.training.loop import plan
    _two_problems(monkeypatch)
    p = plan(TrainConfig(method="tabom", model="unused", out="unused", overrides=dict(TINY, batch_prompts=1)))
    assert p.steps == 5 * 2                     # 5 epochs of 2 one-prompt steps
    p = plan(TrainConfig(method="tabom", model="unused", out="unused", overrides=dict(TINY, epochs=2)))
    assert p.steps == 2


# ----------------------------------------------------------------------------- ESPO's mask sizes

def test_espo_sizes_are_stratified_across_rows():
    """b = L + 1 rows of one length: each draw's sizes are a permutation of {0..L} (ESPO's linspace over
    the batch), while each row's size stays uniform on {0..L} over seeds (unbiased)."""
    from dlm_bench.likelihood import draw_masks
    L = 5
    valid = torch.ones(L + 1, L, dtype=torch.bool)
    counts = torch.zeros(L + 1, L + 1)
    for s in range(600):
        d = draw_masks(valid, 4, torch.Generator().manual_seed(s), "espo")
        for first in (0, 2):                         # the first mask of each pair
            sizes = d.masks[first].sum(-1)
            assert sorted(sizes.tolist()) == list(range(L + 1))
            counts[torch.arange(L + 1), sizes] += 1
    freq = counts / counts.sum(1, keepdim=True)
    assert (freq - 1 / (L + 1)).abs().max() < 0.06       # 1200 draws per row: 4.5 sigma
    d = draw_masks(valid, 2, torch.Generator().manual_seed(0), "espo_independent")
    assert d.masks.shape == (2, L + 1, L)               # the per-row option is still there


# ----------------------------------------------------------------------------- LoRA targets

def test_lora_target_names_per_architecture():
    from dlm_bench.models.lora_targets import resolve
    assert resolve("all-linear", "llada") == "all-linear"
    rx = resolve("q,k,v,o,gate,up,down", "llada")
    import re
    blocks = [f"model.transformer.blocks.3.{m}" for m in ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj",
                                                           "up_proj", "ff_out", "att_proj")]
    hit = [b.rsplit(".", 1)[1] for b in blocks if re.fullmatch(rx, b)]
    assert hit == ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]
    assert not re.fullmatch(rx, "model.transformer.ff_out")          # LLaDA's output head
    assert resolve("q_proj,v_proj", "llada") == ["q_proj", "v_proj"]   # literal names pass through
    with pytest.raises(ValueError, match="no name map"):
        resolve("q,v", "bert")


def _adapted(model) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}


def test_lora_targets_on_the_tiny_model(tiny_dir):
    from dlm_bench.models import LoraSpec, load_model
    dlm = load_model(tiny_dir, device="cpu", lora=LoraSpec(r=2, alpha=2, target_modules="q,v"))
    assert _adapted(dlm.model) == {"qkv"}
    dlm = load_model(tiny_dir, device="cpu", lora=LoraSpec(r=2, alpha=2, target_modules="o,down"))
    assert _adapted(dlm.model) == {"out", "down"}


@pytest.mark.parametrize("name,canonical,literal", [
    ("llada-8b-instruct", {"q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"},
     {"q_proj", "k_proj", "v_proj", "up_proj"}),
    ("dream-v0-instruct-7b", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
     {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
])
def test_recipe_targets_on_the_real_architectures(tmp_path, name, canonical, literal):
    """ESPO's and d1's seven projections: mapped, all seven are adapted on LLaDA and Dream; the recipes'
    literal module names reach only four of LLaDA's (what the reference code trains)."""
    from dlm_bench.models import LoraSpec, load_model
    from dlm_bench.models.random_init import build_tiny
    from shared_files import real_model_snapshot
    d = str(build_tiny(real_model_snapshot(name), tmp_path / name, seed=1))
    lora = LoraSpec(r=2, alpha=2, target_modules="q,k,v,o,gate,up,down")
    model = load_model(d, device="cpu", lora=lora).model
    assert _adapted(model) == canonical
    assert "ff_out" not in {n for n, m in model.named_modules() if hasattr(m, "lora_A") and ".blocks." not in n}
    names = "q_proj,k_proj,v_proj,o_proj,up_proj,down_proj,gate_proj"
    assert _adapted(load_model(d, device="cpu", lora=LoraSpec(r=2, alpha=2, target_modules=names)).model) == literal


# ----------------------------------------------------------------------------- TraFL's tilt

def test_trafl_reports_the_tilt_it_applies(capsys):
    from dlm_bench.cli import main
    from dlm_bench.methods import get_method, make_config
    trafl = get_method("trafl")
    assert "exp(12.5 r)" in trafl.target(trafl.Config())                      # 15 x (1 - 1/6)
    assert "exp(15 r)" in trafl.target(make_config(trafl, {"reward_centering": "none"}))
    assert "grows with the length" in trafl.target(make_config(trafl, {"tilt_per_token": False}))
    assert main(["methods", "-v", "trafl"]) == 0
    assert "target: p*(y|x) ~ pi_ref(y|x) exp(12.5 r)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- ESPO's reference sync

def _state(out: Path):
    from dlm_bench.training import checkpoint
    return checkpoint.load_state(out)[1]


def test_espo_soft_syncs_a_full_copy_reference_and_resumes_it(tiny_dir, tmp_path, varied_rewards):
    """Full fine-tuning with ref_sync_every 1, alpha 0.5: after one update the reference is the mean of
    the base and the updated policy (trl's mixup); killed after step 1 and resumed, two steps end with
    the same policy and reference as two steps in one go."""
    from safetensors.torch import load_file
    from dlm_bench.models import load_model
    over = dict(TINY, lora_r=0, lora_alpha=0, lora_dropout=0.0, ref_sync_every=1, ref_sync_alpha=0.5,
                inner_updates=1, beta=0.1, lr=1e-2, lr_schedule="constant")
    cfg = dict(method="espo", model=tiny_dir, overrides=over, device="cpu")
    train(TrainConfig(out=str(tmp_path / "one"), train_steps=1, **cfg), progress=False)
    base = load_model(tiny_dir, device="cpu").model.state_dict()
    policy = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    ref = _state(tmp_path / "one")["reference"]
    moved = 0
    assert set(policy) <= set(ref)
    for name, r in ref.items():
        if name in policy and r.is_floating_point():
            assert torch.allclose(r, 0.5 * base[name] + 0.5 * policy[name], atol=1e-6), name
            moved += int(not torch.equal(policy[name], base[name]))
    assert moved > 0
    train(TrainConfig(out=str(tmp_path / "one"), train_steps=2, **cfg), progress=False)
    train(TrainConfig(out=str(tmp_path / "two"), train_steps=2, **cfg), progress=False)
    a, b = _state(tmp_path / "one")["reference"], _state(tmp_path / "two")["reference"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    pa = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    pb = load_file(str(tmp_path / "two" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_espo_reference_stays_frozen_under_lora_and_when_off(tiny_dir, tmp_path, varied_rewards):
    over = dict(TINY, ref_sync_every=1, inner_updates=1, beta=0.1, lora_r=4, lora_alpha=4)
    train(TrainConfig(method="espo", model=tiny_dir, out=str(tmp_path / "lora"), train_steps=1, overrides=over,
                      device="cpu"), progress=False)
    assert _state(tmp_path / "lora")["reference"] is None
    over = dict(TINY, ref_sync_every=0, inner_updates=1, beta=0.1, lora_r=0, lora_alpha=0, lora_dropout=0.0)
    train(TrainConfig(method="espo", model=tiny_dir, out=str(tmp_path / "off"), train_steps=1, overrides=over,
                      device="cpu"), progress=False)
    assert _state(tmp_path / "off")["reference"] is None


# ----------------------------------------------------------------------------- TraceRL's KL, JustGRPO's normaliser

def test_tracerl_kl_is_summed_over_each_steps_tokens():
    """Two samples with 1 and 3 loss positions: the summed KL is each sample's k3 total (weighted mean
    over samples), the averaged one divides each by its count."""
    from dlm_bench.methods.tracerl import tracerl_loss
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.1]])
    anchor = torch.tensor([[-1.2, -1.0, -0.1], [-0.2, -0.9, -1.5]])
    t = torch.tensor([[True, False, False], [True, True, True]])
    d = anchor - logp
    per = ((torch.exp(d) - d - 1) * t).sum(-1)                 # k3, written out
    adv = torch.zeros(2)
    _, summed = tracerl_loss(logp, logp.detach(), anchor, adv, t, 1.0, 0.2, kl_sum=True)
    _, mean = tracerl_loss(logp, logp.detach(), anchor, adv, t, 1.0, 0.2, kl_sum=False)
    assert summed["kl_k3"] == pytest.approx(float(per.mean()))
    assert mean["kl_k3"] == pytest.approx(float((per / torch.tensor([1.0, 3.0])).mean()))
    from dlm_bench.methods import get_method
    assert get_method("tracerl").Config().kl_sum is True


def test_justgrpo_normaliser_is_a_per_batch_factor(tiny):
    """The reference normalises each accumulation step (one prompt's group) by its own count and sums
    the steps; here one normaliser covers the batch. With binary rewards both informative groups count
    all their samples, so the reference's loss is m = 2 times this one; a constant group adds nothing."""
    from dlm_bench.likelihood import ScoredBatch
    from dlm_bench.methods import Rollouts, get_method, make_config
    cls = get_method("justgrpo")
    m = cls(make_config(cls, {"group_size": 2}), policy=tiny)
    p = [tiny.prompt_ids("1+2=")] * 6
    comps = [[tiny.tokenizer.convert_tokens_to_ids(c) for c in s] for s in ("3", "4", "12", "33", "1", "2")]
    batch = ScoredBatch.build(tiny, p, comps, lengths=[len(c) for c in comps])
    ro = Rollouts(batch=batch, rewards=torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
                  groups=torch.tensor([0, 0, 1, 1, 2, 2]), step_map=torch.zeros(6, batch.completion.shape[1]),
                  seed=0)
    with torch.no_grad():
        m.prepare(ro, tiny, None)
        whole, _ = m.loss(ro, tiny, None)
        per_step = sum(m.loss(m.select(ro, torch.tensor(ix)), tiny, None)[0] for ix in ([0, 1], [2, 3]))
        constant, _ = m.loss(m.select(ro, torch.tensor([4, 5])), tiny, None)
    assert float(constant) == 0.0
    assert float(per_step) == pytest.approx(2 * float(whole), rel=1e-5)


def test_policy_weights_are_not_quantised(tiny_dir):
    from dlm_bench.models import LoraSpec, load_model
    dlm = load_model(tiny_dir, device="cpu", lora=LoraSpec(r=2, alpha=2, target_modules="q,k,v,o,gate,up,down"))
    assert {p.dtype for p in dlm.model.parameters()} == {torch.float32}
