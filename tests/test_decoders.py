"""The decoders of dlm_bench.decoders (ascending schedule, EOSER, RCR), partial decodes and step
recorders, against plain re-derivations of the reference functions written from reading them:

- RCR: autonomousvision/mdpo (e6ae439) `src/mdlm_generation_utils.py::diffusion_generate(rcr=True)`;
- EOSER and the ascending schedule: yjyddq/EOSER-ASS-RL (5affb4e) `eval/generate.py::eoser_generate`,
  `ass_generate`, `eoser_ass_generate` (block_num=1).

`test_fetched_reference_code` runs the published functions themselves from a temporary copy when
$DLM_BENCH_REFERENCE_CODE names a folder holding those two checkouts (OWNER+NAME/ folders), and skips
otherwise; the re-derivations below are checked against it there.
"""
import dataclasses
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dlm_bench.decoders import ascending_schedule, eos_factor
from dlm_bench.errors import UserError
from dlm_bench.models import DLM
from dlm_bench.sampler import Partial, SamplerConfig, make_generators, sample

QUESTIONS = ["What is 2+3?", "Name a colour.", "x", "Write 12 digits of pi", "Hello", "7*8"]


class _Mixed(DLM):
    """End-of-text likely at every second column and 'a' at the others (counted from the end, so left
    padding moves nothing), with confidences close enough that EOSER's factor changes which is committed
    first (on the random model alone end-of-text is either unlikely or the candidate everywhere, and
    scaling every candidate alike changes nothing)."""

    def logits(self, input_ids, attention_mask=None):
        out = super().logits(input_ids, attention_mask)
        odd = (torch.arange(out.shape[1]) - out.shape[1]) % 2 == 1
        out[:, odd, self.eos_id] += 6.0
        out[:, ~odd, self.tokenizer.convert_tokens_to_ids("a")] += 6.0
        return out


@pytest.fixture(scope="module")
def biased(tiny):
    return _Mixed(**vars(tiny))


# ----------------------------------------------------------------------------- re-derived references

def _rcr_reference(model, prompt, steps, gen_length, block_length, mask_id):
    """MDPO's diffusion_generate with rcr=True at temperature 0 (conf_alg 'llada', no top-p/top-k), one
    row: returns the final window and the window before every step."""
    P = prompt.shape[1]
    x = torch.full((1, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    per_block = steps // (gen_length // block_length)
    running = torch.zeros(x.shape, dtype=torch.float32)
    inputs = []
    for b in range(gen_length // block_length):
        end = P + (b + 1) * block_length
        n = block_length          # the maskgit 'linear' schedule: equal to LLaDA's when steps divide it
        counts = [n * (i + 1) // per_block - n * i // per_block for i in range(per_block)]
        for i in range(per_block):
            masked = x == mask_id
            inputs.append(x[0, P:].clone())
            conf, x0 = F.softmax(model(x), dim=-1).max(-1)
            conf[:, end:] = -float("inf")
            x0 = torch.where(masked, x0, x)
            conf = torch.where(masked, conf, torch.tensor(-float("inf")))
            pick = torch.topk(conf[0], k=sum(counts[i:])).indices
            x[0, pick] = x0[0, pick]
            running[0, pick] = conf[0, pick]
            if i != per_block - 1:
                candidates = torch.where(running[0] == 0.0, 1.0, running[0])
                again = torch.topk(candidates, k=sum(counts[i + 1:]), largest=False).indices
                if len(again) == 0:
                    break
                x[0, again] = mask_id
    return x[0, P:].tolist(), inputs


def _eoser_reference(model, prompt, steps, gen_length, block_length, temperature, gamma, ascending, eos_id,
                     mask_id):
    """EOSER-ASS-RL's eoser_generate (uniform schedule, gamma None: its plain `generate`) and
    eoser_ass_generate / ass_generate with block_num=1 (ascending), float32 Gumbel noise from the
    global RNG, one row."""
    P = prompt.shape[1]
    x = torch.full((1, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    blocks = 1 if ascending else gen_length // block_length
    per_block = steps // blocks
    for b in range(blocks):
        end = P + (b + 1) * (gen_length // blocks)
        n = gen_length // blocks
        counts = ([2 ** i for i in range(per_block - 1)] + [n - (2 ** (per_block - 1) - 1)] if ascending else
                  [n // per_block + (1 if i < n % per_block else 0) for i in range(per_block)])
        for i in range(per_block):
            masked = x == mask_id
            logits = model(x)
            if temperature > 0:
                noised = logits.to(torch.float32).exp() / (-torch.log(torch.rand_like(logits))) ** temperature
            else:
                noised = logits
            x0 = torch.argmax(noised, dim=-1)
            p = torch.gather(F.softmax(logits, dim=-1), -1, x0[..., None]).squeeze(-1)
            if gamma is not None:
                t = (2 ** (i + 1) - 1) / 2 ** steps if ascending else min(max(i, 0), steps - 1) / (steps - 1)
                p = torch.where(x0 == eos_id, p * (gamma + (1 - gamma) * t), p)
            p[:, end:] = -float("inf")
            x0 = torch.where(masked, x0, x)
            conf = torch.where(masked, p, torch.tensor(-float("inf")))
            if counts[i] > 0:
                pick = torch.topk(conf[0], k=counts[i]).indices
                x[0, pick] = x0[0, pick]
    return x[0, P:].tolist()


# ----------------------------------------------------------------------------- hand numbers and settings

def test_schedules_and_eos_factor_by_hand():
    assert ascending_schedule(16, 4) == [1, 2, 4, 9]
    assert ascending_schedule(256, 8) == [1, 2, 4, 8, 16, 32, 64, 129]
    assert ascending_schedule(8, 4) == [1, 2, 4, 1]
    assert eos_factor(None, 0, 8, False) == 1.0 and eos_factor(0.4, 3, 1, False) == 1.0
    assert eos_factor(0.4, 0, 5, False) == pytest.approx(0.4) and eos_factor(0.4, 4, 5, False) == pytest.approx(1.0)
    assert eos_factor(0.4, 2, 5, False) == pytest.approx(0.4 + 0.6 * 0.5)
    assert eos_factor(0.01, 0, 3, True) == pytest.approx(0.01 + 0.99 / 8)        # t = (2 - 1) / 2^3
    assert eos_factor(0.01, 2, 3, True) == pytest.approx(0.01 + 0.99 * 7 / 8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(gen_length=16, block_length=16, steps=6, schedule="ascending"), "at most 5 steps"),
    (dict(schedule="geometric"), "schedule"),
    (dict(eos_gamma=1.5), "eos_gamma"),
    (dict(eos_gamma=0.4, remasking="random"), "low_confidence"),
    (dict(rcr=True, threshold=0.9), "threshold"),
    (dict(schedule="ascending", gen_length=16, block_length=16, steps=4, threshold=0.9), "threshold"),
    (dict(rcr=True, cache="prefix"), "rcr"),
])
def test_bad_decoder_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        SamplerConfig(**kwargs).resolved()


def test_decoders_enter_the_hash_only_when_set():
    base = SamplerConfig().hashed()
    assert not {"schedule", "eos_gamma", "rcr"} & set(base)
    on = SamplerConfig(schedule="ascending", eos_gamma=0.01, rcr=True).hashed()
    assert (on["schedule"], on["eos_gamma"], on["rcr"]) == ("ascending", 0.01, True)
    assert {k: v for k, v in on.items() if k not in ("schedule", "eos_gamma", "rcr")} == base


# ----------------------------------------------------------------------------- against the references

@pytest.mark.parametrize("gen_length, block_length, steps", [(16, 16, 8), (16, 16, 16), (16, 8, 8), (24, 8, 12),
                                                             (16, 4, 8)])
def test_rcr_matches_mdpo_at_zero_temperature(tiny, gen_length, block_length, steps):
    """Token for token and state for state (the window before every step), with several blocks too,
    where the reference re-masks tokens of earlier blocks."""
    cfg = SamplerConfig(gen_length=gen_length, block_length=block_length, steps=steps, rcr=True, stop_at_eos=False)
    for q in QUESTIONS[:3]:
        prompt = tiny.prompt_ids(q)
        seen = []
        ours = sample(tiny, [prompt], cfg, make_generators([0], "cpu"), recorder=seen.append)[0]
        want, inputs = _rcr_reference(lambda x: tiny.logits(x), torch.tensor([prompt]), steps, gen_length,
                                      block_length, tiny.mask_id)
        assert ours.tokens == want
        assert [v.before[0].tolist() for v in seen] == [i.tolist() for i in inputs]


def test_rcr_revises_tokens_and_differs_from_plain_decoding(tiny):
    cfg = SamplerConfig(gen_length=16, block_length=16, steps=8, stop_at_eos=False)
    revised = differs = 0
    for q in QUESTIONS:
        prompt = tiny.prompt_ids(q)
        seen = []
        plain = sample(tiny, [prompt], cfg, make_generators([0], "cpu"))[0]
        rcr = sample(tiny, [prompt], dataclasses.replace(cfg, rcr=True), make_generators([0], "cpu"),
                     recorder=seen.append)[0]
        differs += plain.tokens != rcr.tokens
        revised += any(((v.before != tiny.mask_id) & (v.after == tiny.mask_id)).any() for v in seen)
        assert -1 not in rcr.step_map and rcr.nfe == 8
    assert differs and revised


@pytest.mark.parametrize("temperature", [0.0, 0.9])
@pytest.mark.parametrize("decoding", ["eoser", "ass", "eoser-ass"])
def test_eoser_and_ascending_match_the_reference(tiny, biased, temperature, decoding):
    ascending, gamma = decoding != "eoser", (None if decoding == "ass" else (0.01 if decoding == "eoser-ass" else 0.4))
    shapes = [(16, 16, 4), (24, 24, 4), (8, 8, 3)] if ascending else [(16, 16, 8), (16, 8, 8), (24, 8, 12)]
    for dlm in (tiny, biased):
        for gl, bl, steps in shapes:
            cfg = SamplerConfig(gen_length=gl, block_length=bl, steps=steps, temperature=temperature,
                                schedule="ascending" if ascending else "uniform", eos_gamma=gamma,
                                noise_dtype="float32", stop_at_eos=False)
            for seed, q in enumerate(QUESTIONS[:2]):
                prompt = dlm.prompt_ids(q)
                ours = sample(dlm, [prompt], cfg, make_generators([seed], "cpu"))[0].tokens
                torch.manual_seed(seed)
                want = _eoser_reference(lambda x: dlm.logits(x), torch.tensor([prompt]), steps, gl, bl, temperature,
                                        gamma, ascending, dlm.eos_id, dlm.mask_id)
                assert ours == want, (gl, bl, steps, q)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_eoser_commits_end_of_text_later(biased, temperature):
    """Non-vacuous: with end-of-text and 'a' equally likely, plain decoding commits the end-of-text
    tokens early; EOSER (factor 0.4 rising to 1) commits them after the others."""
    cfg = SamplerConfig(gen_length=16, block_length=16, steps=16, temperature=temperature, stop_at_eos=False)
    for seed, q in enumerate(QUESTIONS):
        prompt = biased.prompt_ids(q)
        mean_step = {}
        for gamma in (None, 0.4):
            c = sample(biased, [prompt], dataclasses.replace(cfg, eos_gamma=gamma), make_generators([seed], "cpu"))[0]
            steps = [s for t, s in zip(c.tokens, c.step_map) if t == biased.eos_id]
            mean_step[gamma] = sum(steps) / len(steps)
        assert mean_step[None] < 8 <= mean_step[0.4]


def test_decoders_are_batch_invariant_and_rcr_never_stops_early(biased):
    prompts = [biased.prompt_ids(q) for q in QUESTIONS]
    seeds = list(range(6))
    for extra in (dict(rcr=True), dict(schedule="ascending", steps=4, eos_gamma=0.01), dict(eos_gamma=0.4)):
        cfg = SamplerConfig(**{**dict(gen_length=16, block_length=16, steps=8, temperature=0.9), **extra})
        batched = sample(biased, prompts, cfg, make_generators(seeds, "cpu"))
        alone = [sample(biased, [p], cfg, make_generators([s], "cpu"))[0] for p, s in zip(prompts, seeds)]
        assert [c.tokens for c in batched] == [c.tokens for c in alone]
        full = sample(biased, prompts, dataclasses.replace(cfg, stop_at_eos=False), make_generators(seeds, "cpu"))
        assert [c.text for c in batched] == [c.text for c in full]
        if cfg.rcr:      # a committed token can be re-masked until the last step: no row stops early
            assert [c.tokens for c in batched] == [c.tokens for c in full] and {c.nfe for c in batched} == {8}


# ----------------------------------------------------------------------------- partial decodes, recorders

def test_partial_decodes_continue_exactly(tiny):
    """Decoding steps [0, a) and then [a, S) from the left state, with the same generators, is the whole
    decode (d-TreeRPO's branches resume this way)."""
    cfg = SamplerConfig(gen_length=16, block_length=8, steps=8, temperature=0.9, stop_at_eos=False)
    prompts = [tiny.prompt_ids(q) for q in QUESTIONS[:3]]
    whole = sample(tiny, prompts, cfg, make_generators([1, 2, 3], "cpu"))
    for a in (2, 4, 5):
        gens = make_generators([1, 2, 3], "cpu")
        head = sample(tiny, prompts, cfg, gens, until=a)
        assert all(max(c.step_map) == a - 1 and tiny.mask_id in c.tokens for c in head)
        part = Partial(torch.tensor([c.tokens for c in head]), torch.tensor([c.step_map for c in head]), a)
        tail = sample(tiny, prompts, cfg, gens, resume=part)
        assert [c.tokens for c in tail] == [c.tokens for c in whole]
        assert [c.step_map for c in tail] == [c.step_map for c in whole]


def test_recorder_sees_every_step_consistently_with_the_step_map(tiny):
    cfg = SamplerConfig(gen_length=12, block_length=4, steps=6, temperature=0.7, stop_at_eos=False)
    seen = []
    comps = sample(tiny, [tiny.prompt_ids(q) for q in QUESTIONS[:2]], cfg, make_generators([5, 6], "cpu"),
                   recorder=seen.append)
    assert len(seen) == 6 and [int(v.steps[0]) for v in seen] == list(range(6))
    for v in seen:
        for r in range(2):
            sm, toks = torch.tensor(comps[r].step_map), torch.tensor(comps[r].tokens)
            t = int(v.steps[r])
            want_before = torch.where(sm < t, toks, tiny.mask_id)
            assert torch.equal(v.before[r], want_before)
            assert torch.equal(v.after[r], torch.where(sm <= t, toks, tiny.mask_id))
            committed = (v.after[r] != v.before[r])[v.cols]
            assert torch.equal(v.candidates[r][committed], toks[v.cols][committed])
    with pytest.raises(UserError, match="fixed schedule"):
        sample(tiny, [tiny.prompt_ids("q")], dataclasses.replace(cfg, cache="prefix"), make_generators([0], "cpu"),
               recorder=seen.append)


# ----------------------------------------------------------------------------- the command line

def test_passk_and_sample_take_the_decoders():
    import argparse
    from dlm_bench.commands.passk import add_decoding_arguments
    from dlm_bench.evaluate import SweepConfig
    p = argparse.ArgumentParser()
    add_decoding_arguments(p)
    a = p.parse_args(["--schedule", "ascending", "--eos-gamma", "0.01", "--rcr"])
    assert (a.schedule, a.eos_gamma, a.rcr) == ("ascending", 0.01, True)
    d = p.parse_args([])
    assert (d.schedule, d.eos_gamma, d.rcr) == ("uniform", None, False)
    sweep = SweepConfig(model="m", method="base", task="testbed", lengths=(16,), block_length=16, steps=4,
                        schedule="ascending", eos_gamma=0.01)
    assert sweep.sampler(0.6, 16).hashed()["schedule"] == "ascending"
    with pytest.raises(UserError, match="at most"):
        SweepConfig(model="m", method="base", task="testbed", lengths=(16,), block_length=16,
                    schedule="ascending").validated()


# ----------------------------------------------------------------------------- the published code itself

REFERENCE_CODE = os.environ.get("DLM_BENCH_REFERENCE_CODE")


def _load(tmp_path, repo: str, rel: str, name: str):
    """Import a reference module from a temporary copy of its checkout (never from the repository)."""
    src = Path(REFERENCE_CODE) / repo
    if not (src / rel).is_file():
        pytest.skip(f"{src / rel} not found")
    dst = tmp_path / repo
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.pdf", "*.csv", "*.jsonl", "*.png", "*.jpg"))
    sys.path.insert(0, str(dst))
    try:
        spec = importlib.util.spec_from_file_location(name, dst / rel)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(dst))
    return mod


class _HF(torch.nn.Module):
    """A DLM as a Hugging Face model: model(x, attention_mask=...).logits, .dtype, .device."""

    def __init__(self, dlm):
        super().__init__()
        self.dlm = dlm
        self.dtype, self.device = next(dlm.model.parameters()).dtype, torch.device("cpu")

    def forward(self, x, attention_mask=None):
        return type("Out", (), {"logits": self.dlm.logits(x, attention_mask)})()


@pytest.mark.skipif(not REFERENCE_CODE, reason="$DLM_BENCH_REFERENCE_CODE (fetched reference checkouts) not set")
def test_fetched_reference_code(tiny, biased, tmp_path, monkeypatch):
    import torch.distributed as dist
    monkeypatch.setattr(dist, "get_rank", lambda: 0)       # the reference's progress bars ask for a rank
    mdpo = _load(tmp_path, "autonomousvision+mdpo", "src/mdlm_generation_utils.py", "mdpo_generation")
    eoser = _load(tmp_path, "yjyddq+EOSER-ASS-RL", "eval/generate.py", "eoser_generation")
    for q in QUESTIONS[:3]:
        prompt = torch.tensor([tiny.prompt_ids(q)])
        for gl, bl, steps in [(16, 16, 8), (24, 8, 12), (16, 4, 8)]:
            out, _, _, inputs = mdpo.diffusion_generate(_HF(tiny), prompt, mask_id=tiny.mask_id, steps=steps,
                                                        gen_length=gl, block_length=bl, conf_alg="llada", rcr=True)
            cfg = SamplerConfig(gen_length=gl, block_length=bl, steps=steps, rcr=True, stop_at_eos=False)
            assert sample(tiny, [prompt[0].tolist()], cfg, make_generators([0], "cpu"))[0].tokens == out[0].tolist()
            mine, my_inputs = _rcr_reference(lambda x: tiny.logits(x), prompt, steps, gl, bl, tiny.mask_id)
            assert mine == out[0].tolist() and all(torch.equal(a, b[0]) for a, b in zip(my_inputs, inputs))
    for dlm in (tiny, biased):
        model = _HF(dlm)
        for seed, q in enumerate(QUESTIONS[:2]):
            prompt = torch.tensor([dlm.prompt_ids(q)])
            for temperature in (0.0, 0.9):
                torch.manual_seed(seed)
                want = eoser.eoser_generate(model, prompt, dlm.tokenizer, steps=8, gen_length=16, block_length=8,
                                            temperature=temperature, mask_id=dlm.mask_id, eos_min_gamma=0.4)
                torch.manual_seed(seed)
                mine = _eoser_reference(lambda x: dlm.logits(x), prompt, 8, 16, 8, temperature, 0.4, False,
                                        dlm.eos_id, dlm.mask_id)
                assert mine == want[0, prompt.shape[1]:].tolist()
                torch.manual_seed(seed)
                want = eoser.eoser_ass_generate(model, prompt, dlm.tokenizer, steps=4, gen_length=16, block_num=1,
                                                temperature=temperature, mask_id=dlm.mask_id, eos_min_gamma=0.01)
                torch.manual_seed(seed)
                mine = _eoser_reference(lambda x: dlm.logits(x), prompt, 4, 16, 16, temperature, 0.01, True,
                                        dlm.eos_id, dlm.mask_id)
                assert mine == want[0, prompt.shape[1]:].tolist()
