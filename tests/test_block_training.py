"""Training on the block-diffusion families (TraDo/SDAR, LLaDA2 MoE), tiny random-weight models of their real
code built from ../shared/models (the fixtures of tests/test_block_models.py).

Every score runs on `likelihood.scoring_input`: the clean sequence followed by a noised copy of the answer's
blocks under a 4-D block-causal mask, so each block is scored given the clean blocks before it and its own
noised self (SDAR/TraDo training). Checked here against a plain forward of the truncated sequence (clean
prefix, then the noised block, with the block-causal mask built in the test), then through the training
loop: every trainable method runs 2 LoRA updates on both families, and TraceRL on TraDo goes through the
CLI as a user types it, followed by `passk` on its adapter folder."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from dlm_bench.cli import main
from dlm_bench.errors import UserError
from dlm_bench.likelihood import (ScoredBatch, answer_blocks, collapse_steps, left_to_right_logprob,
                                  masked_token_logprobs)
from dlm_bench.methods import method_names
from dlm_bench.models import load_model
from test_block_models import BOTH, LLADA2, QUESTIONS, TRADO, block, block_dirs  # noqa: F401  (fixtures)

LORA = dict(group_size=2, batch_prompts=2, gen_length=8, steps=8, block_length=4, lr=1e-3, lr_schedule="constant",
            warmup_ratio=0.0, inner_updates=1, minibatches=1, lora_r=4, lora_alpha=8, lora_dropout=0.0)
# These record or branch their rollouts through sampler options the block sampler does not have (partial
# decodes, step recorders); on block-diffusion models they stop in one line instead of training.
REFUSED = ("mdpo", "egspo", "dtreerpo")
TRAINABLE = [m for m in method_names() if m not in ("base", *REFUSED)]


def _batch(dlm, G: int = 8, seed: int = 0) -> ScoredBatch:
    g = torch.Generator().manual_seed(seed)
    prompts = [dlm.prompt_ids(q) for q in QUESTIONS]
    comps = [torch.randint(100, 1000, (G,), generator=g).tolist() for _ in prompts]
    return ScoredBatch.build(dlm, prompts, comps)


def _truncated_forward_logprob(dlm, prompt: list[int], noised: list[int], completion: list[int], i: int) -> float:
    """log p(completion[i]) from one forward on prompt + answer up to the end of i's block: answer blocks
    before it clean, its own block as `noised`; the mask (query sees keys of its block and earlier ones,
    blocks counted from the prompt's first token) and the positions are built here, not by dlm-bench."""
    bs, P = dlm.block_size, len(prompt)
    end = ((P + i) // bs + 1) * bs
    seq = (prompt + [noised[j] if (P + j) // bs == (P + i) // bs else completion[j]
                     for j in range(len(completion))])[:end]
    T = len(seq)
    blk = torch.arange(T) // bs
    see = (blk[None, :] <= blk[:, None])[None, None]
    if dlm.family.padding == "4d_additive":
        see = torch.zeros(see.shape).masked_fill(~see, torch.finfo(torch.float32).min)
    with torch.no_grad():
        logits = dlm.model(input_ids=torch.tensor([seq]), attention_mask=see,
                           position_ids=torch.arange(T)[None]).logits[0, P + i]
    return float(F.log_softmax(logits.float(), -1)[completion[i]])


@pytest.mark.parametrize("name", BOTH)
def test_block_scores_equal_a_forward_on_the_truncated_sequence(block, name):
    """Every masked position's score from the batched clean + noised-copy layout (left-padded rows of three
    prompt lengths, so blocks straddle prompt and answer) equals a forward on that row alone, cut after
    the position's block: the earlier blocks clean, the block itself noised."""
    dlm = dataclasses.replace(block[name], block_size=4)
    batch = _batch(dlm)
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(batch.completion.shape, generator=g) < 0.5
    masks[:, 0] = True
    with torch.no_grad():
        lp = masked_token_logprobs(dlm, batch, masks[None])[0]
    checked = 0
    for b, q in enumerate(QUESTIONS):
        prompt, comp = dlm.prompt_ids(q), batch.completion[b].tolist()
        noised = [dlm.mask_id if m else t for m, t in zip(masks[b].tolist(), comp)]
        for i in masks[b].nonzero().flatten().tolist():
            assert lp[b, i].item() == pytest.approx(_truncated_forward_logprob(dlm, prompt, noised, comp, i), abs=1e-4)
            checked += 1
    assert checked > 10 and (lp[~masks] == 0).all()


def test_left_to_right_on_a_block_model_is_the_product_of_truncated_forwards(block):
    """JustGRPO's score on a block model: token i given the clean earlier blocks, y_<i of its own block and
    masks after it, i.e. the model's `sequential` decoding one token per step."""
    dlm = dataclasses.replace(block[TRADO], block_size=4)
    batch = _batch(dlm, G=6, seed=3)
    with torch.no_grad():
        per = left_to_right_logprob(dlm, batch, per_token=True)
    for b, q in enumerate(QUESTIONS):
        prompt, comp = dlm.prompt_ids(q), batch.completion[b].tolist()
        for i in range(len(comp)):
            noised = [dlm.mask_id if j >= i else t for j, t in enumerate(comp)]
            assert per[b, i].item() == pytest.approx(_truncated_forward_logprob(dlm, prompt, noised, comp, i), abs=1e-4)


@pytest.mark.parametrize("name", BOTH)
def test_left_to_right_rollouts_decode_in_order(block, name):
    """JustGRPO's rollout order on a block model: its `sequential` decoding, one token per step, in order."""
    from dlm_bench.sampler import SamplerConfig, make_generators, sample
    dlm = block[name]
    cfg = SamplerConfig(gen_length=8, block_length=4, steps=8, order="left_to_right", stop_at_eos=False)
    prompts = [dlm.prompt_ids(q) for q in QUESTIONS]
    for c in sample(dlm, prompts, cfg, make_generators([0, 1, 2], "cpu")):
        assert c.step_map == list(range(8))


def test_trace_steps_count_within_each_block():
    """TraceRL on a block model ranks decoding steps per block (dLLM-RL rl_trado.py's rounds): two blocks
    decoded at global steps (0, 2 | 5, 5) and (1 | 3, 4, 6) give trace steps (0, 1 | 0, 0) and (0 | 0, 1, 2)."""
    steps = torch.tensor([[0, 2, 5, 5], [1, 3, 4, 6]])
    blocks = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert collapse_steps(steps, torch.ones_like(steps), 1, blocks).tolist() == [[0, 1, 0, 0], [0, 0, 1, 2]]


def test_answer_blocks_follow_the_prompt(block):
    dlm = dataclasses.replace(block[TRADO], block_size=4)
    batch = _batch(dlm, G=4)
    for b, q in enumerate(QUESTIONS):
        P = len(dlm.prompt_ids(q))
        assert answer_blocks(dlm, batch)[b].tolist() == [(P + i) // 4 for i in range(4)]


def test_ebpo_block_draws_are_the_model_blocks(block):
    """EBPO on a block model: per (timestep, block) draw, the targets lie in one of the model's blocks
    (counted from the prompt), the input masks them and every later answer position; the merged draws
    EBPO uses (one forward per timestep, as DARE) give the same composite ELBO as one forward per block."""
    from dlm_bench.likelihood import block_draws, block_elbo
    from dlm_bench.methods import Rollouts, get_method, make_config
    dlm = dataclasses.replace(block[TRADO], block_size=4)
    batch = _batch(dlm, G=7)
    blocks = answer_blocks(dlm, batch)
    rel = blocks - blocks[:, :1]
    d = block_draws(batch.valid, 4, 2, torch.Generator().manual_seed(0), rel)
    for k in range(d.targets.shape[0]):
        for b in range(3):
            tgt = d.targets[k, b]
            if tgt.any():
                own = blocks[b][tgt].unique()
                assert len(own) == 1 and torch.equal(d.inputs[k, b], tgt | (blocks[b] > own))
    merged = block_draws(batch.valid, 4, 2, torch.Generator().manual_seed(0), rel, merged=True)
    assert merged.inputs.shape[0] == 2 and torch.equal(merged.targets.sum(0), d.targets.sum(0))
    cls = get_method("ebpo")
    m = cls(make_config(cls, {"timesteps": 2, "block_length": 4}), policy=dlm)
    ro = Rollouts(batch, torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0, 0, 0]), None, seed=0)
    with torch.no_grad():
        m.prepare(ro, dlm, None)
        assert ro.cache.draws[0].inputs.shape[0] == 2
        assert torch.allclose(block_elbo(dlm, batch, merged), block_elbo(dlm, batch, d), atol=1e-4)


@pytest.mark.parametrize("name", BOTH)
def test_canonical_lora_targets_are_peft_all_linear(block_dirs, name):
    """The canonical q,k,v,o,gate,up,down adapt exactly the modules PEFT's own "all-linear" picks (DARE's
    LLaDA2 LoRA recipe): on LLaDA2 attention, dense MLP, shared expert and all routed experts; the router
    weight and the output head never."""
    from dlm_bench.models import LoraSpec

    def adapted(targets):
        dlm = load_model(block_dirs[name], device="cpu", lora=LoraSpec(r=2, alpha=4, dropout=0.0, target_modules=targets))
        return {n.rsplit(".lora_A", 1)[0] for n, _ in dlm.model.named_modules() if n.endswith("lora_A")}
    ours = adapted("q,k,v,o,gate,up,down")
    assert ours == adapted("all-linear")
    if name == LLADA2:
        assert any(".shared_experts." in n for n in ours) and any(".experts.7." in n for n in ours)
        assert not any(n.endswith("mlp.gate") or "lm_head" in n for n in ours)


def _log(out) -> list[dict]:
    return [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]


def _changed(base_dir: str, ckpt) -> bool:
    base, trained = load_model(base_dir, device="cpu"), load_model(str(ckpt), device="cpu")
    x = torch.tensor([base.prompt_ids("What is 2+3?") + [base.mask_id] * 4])
    with torch.no_grad():
        return not torch.allclose(base.logits(x), trained.logits(x))


def test_tracerl_lora_on_trado_then_passk_on_its_adapter(block_dirs, tmp_path, varied_rewards, capsys):
    """As a user types it: `train tracerl` (TraDo's block 4, one step per token, trace steps per block,
    a value model) for 2 updates with LoRA, then `passk` on the adapter folder it wrote."""
    sets = {**LORA, "shrink": 1, "group_filter": None, "truncated_reward": None, "value_model": True}
    argv = ["train", "tracerl", "--task", "testbed", "--model", block_dirs[TRADO], "--out", str(tmp_path / "run"),
            "--train-steps", "2", "--device", "cpu", "--no-progress"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert main(argv) == 0
    rows = _log(tmp_path / "run")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows), rows
    assert all(r["samples_per_row"] > 1 for r in rows), "one step per token: several trace steps per block"
    ckpt = tmp_path / "run" / "checkpoint"
    assert (ckpt / "adapter_config.json").is_file() and _changed(block_dirs[TRADO], ckpt)
    capsys.readouterr()
    out = tmp_path / "passk"
    assert main(["passk", "--model", str(ckpt), "--method", "tracerl", "--task", "testbed", "--n", "2", "--k", "1,2",
                 "--temps", "0.7", "--lengths", "8", "--block-length", "4", "--threshold", "0.9", "--limit", "2",
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model_runtime"]["adapter"] == str(ckpt)
    assert results["model_runtime"]["base_model"] == block_dirs[TRADO]
    assert len((out / "generations.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize("name", BOTH)
@pytest.mark.parametrize("method", TRAINABLE)
def test_two_lora_updates_on_both_block_families(block_dirs, tmp_path, varied_rewards, method, name):
    """Every trainable method: 2 LoRA updates at block 4 (LLaDA2's own is 32: the rollouts' block length is
    the one scored), finite, with a gradient, and an adapter that changes the model."""
    from dlm_bench.training.loop import TrainConfig, train
    over = dict(LORA, group_filter=None, truncated_reward=None) if method == "tracerl" else dict(LORA)
    ckpt = train(TrainConfig(method=method, model=block_dirs[name], out=str(tmp_path / "run"), train_steps=2,
                             task="testbed", overrides=over, device="cpu"), progress=False)
    rows = _log(tmp_path / "run")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows), rows
    assert (ckpt / "adapter_config.json").is_file() and _changed(block_dirs[name], ckpt)


@pytest.mark.parametrize("method", REFUSED)
def test_methods_that_record_rollouts_refuse_block_families_in_one_line(block_dirs, tmp_path, method):
    from dlm_bench.training.loop import TrainConfig, train
    with pytest.raises(UserError, match="not available for block-diffusion models"):
        train(TrainConfig(method=method, model=block_dirs[TRADO], out=str(tmp_path / "run"), train_steps=1,
                          task="testbed", overrides=dict(LORA, group_size=4), device="cpu"), progress=False)


def test_full_fine_tuning_at_a_larger_block_records_it(block_dirs, tmp_path, varied_rewards, capsys):
    """The mechanism of TraceRL's block-size adaptation (not its result): a block-4 TraDo trained with
    rollouts of block 8 is scored with blocks of 8, says so, and its checkpoint decodes with 8 by default."""
    from dlm_bench.training.loop import TrainConfig, train
    over = dict(LORA, lora_r=0, block_length=8, lr=1e-4, group_filter=None, truncated_reward=None)
    ckpt = train(TrainConfig(method="tracerl", model=block_dirs[TRADO], out=str(tmp_path / "run"), train_steps=1,
                             task="testbed", overrides=over, device="cpu"), progress=False)
    assert "block length 8" in capsys.readouterr().err
    assert json.loads((ckpt / "config.json").read_text())["block_size"] == 8
    assert load_model(str(ckpt), device="cpu").block_size == 8
