"""The sampler against a literal re-implementation of LLaDA's published generate()."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import llada_reference as ref
from dlm_bench.errors import UserError
from dlm_bench.models import DLM
from dlm_bench.sampler import SamplerConfig, make_generators, sample, transfer_schedule

QUESTIONS = ["What is 2+3?", "Name a colour.", "x", "Write 12 digits of pi, then stop here please.",
             "Hello", "7*8", "Count to five: 1 2 3", "?", "Why is the sky blue?", "abc abc abc",
             "Sum 1..10", "A longer prompt with several words in it to force padding.", "z z",
             "The answer is", "Solve x+1=2", "Last"]


def _reference(dlm, prompt, seed, cfg, cfg_scale=0.0):
    torch.manual_seed(seed)
    out = ref.generate(lambda x, am: dlm.logits(x, am), torch.tensor([prompt]), steps=cfg.steps,
                       gen_length=cfg.gen_length, block_length=cfg.block_length, temperature=cfg.temperature,
                       remasking=cfg.remasking, cfg_scale=cfg_scale, mask_id=dlm.mask_id)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_token_identical_to_reference(tiny, temperature, remasking, blocks):
    cfg = SamplerConfig(gen_length=16, block_length=16 // blocks, steps=8, temperature=temperature,
                        remasking=remasking, stop_at_eos=False)
    for seed, q in enumerate(QUESTIONS[:3]):
        prompt = tiny.prompt_ids(q)
        ours = sample(tiny, [prompt], cfg, make_generators([seed], "cpu"))[0]
        assert ours.tokens == _reference(tiny, prompt, seed, cfg)


def test_classifier_free_guidance_matches_reference(tiny):
    cfg = SamplerConfig(gen_length=8, block_length=8, steps=8, temperature=0.8, cfg_scale=1.5, stop_at_eos=False)
    prompt = tiny.prompt_ids("guided")
    ours = sample(tiny, [prompt], cfg, make_generators([5], "cpu"))[0]
    assert ours.tokens == _reference(tiny, prompt, 5, cfg, cfg_scale=1.5)
    assert ours.nfe == 16  # two forward passes per step


def test_batch_size_does_not_change_completions(tiny):
    cfg = SamplerConfig(gen_length=16, block_length=8, steps=16, temperature=1.0)
    prompts = [tiny.prompt_ids(q) for q in QUESTIONS]
    seeds = list(range(100, 116))
    batched = sample(tiny, prompts, cfg, make_generators(seeds, "cpu"))
    single = [sample(tiny, [p], cfg, make_generators([s], "cpu"))[0] for p, s in zip(prompts, seeds)]
    assert [c.tokens for c in batched] == [c.tokens for c in single]
    assert [c.step_map for c in batched] == [c.step_map for c in single]
    assert [c.nfe for c in batched] == [c.nfe for c in single]


class _EosBiased(DLM):
    """The tiny model with end-of-text made likely, so that rows finish early."""

    def logits(self, input_ids, attention_mask=None):
        out = super().logits(input_ids, attention_mask)
        out[..., self.eos_id] += 4.0
        return out


def test_early_stop_keeps_the_text_of_the_full_run(tiny):
    tiny = _EosBiased(**vars(tiny))
    full = SamplerConfig(gen_length=32, block_length=8, steps=32, temperature=1.5, stop_at_eos=False)
    early = SamplerConfig(**{**full.__dict__, "stop_at_eos": True})
    prompts = [tiny.prompt_ids(q) for q in QUESTIONS]
    a = sample(tiny, prompts, full, make_generators(range(16), "cpu"))
    b = sample(tiny, prompts, early, make_generators(range(16), "cpu"))
    assert [c.text for c in a] == [c.text for c in b]
    stopped = [y for x, y in zip(a, b) if y.nfe < x.nfe]
    assert stopped, "no row stopped early; the test needs an end-of-text token"
    for c in stopped:  # positions still masked at the stop become end-of-text padding
        assert tiny.mask_id not in c.tokens and -1 not in c.step_map
        assert c.tokens[c.length] == tiny.eos_id


def test_schedule_and_trajectory(tiny):
    assert transfer_schedule(10, 4) == [3, 3, 2, 2]
    cfg = SamplerConfig(gen_length=12, block_length=6, steps=8, temperature=0.5, stop_at_eos=False)
    c = sample(tiny, [tiny.prompt_ids("q")], cfg, make_generators([0], "cpu"))[0]
    counts = [c.step_map.count(s) for s in range(8)]
    assert counts == [2, 2, 1, 1, 2, 2, 1, 1]
    assert max(c.step_map[:6]) < min(c.step_map[6:])  # semi-autoregressive blocks
    assert c.nfe == 8


def test_left_to_right_order(tiny):
    cfg = SamplerConfig(gen_length=10, steps=10, block_length=10, order="left_to_right", temperature=1.0,
                        stop_at_eos=False)
    c = sample(tiny, [tiny.prompt_ids("q")], cfg, make_generators([3], "cpu"))[0]
    assert c.step_map == list(range(10))
    assert c.nfe == 10


def test_threshold_decoding_commits_several_tokens_per_step(tiny):
    cfg = SamplerConfig(gen_length=16, block_length=16, steps=16, temperature=0.0, threshold=0.01,
                        stop_at_eos=False)
    c = sample(tiny, [tiny.prompt_ids("q")], cfg, make_generators([3], "cpu"))[0]
    assert -1 not in c.step_map and c.nfe < 16 and c.nfe == max(c.step_map) + 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(gen_length=-4), "gen_length"),
    (dict(gen_length=10, block_length=4), "does not divide"),
    (dict(gen_length=16, block_length=4, steps=6), "not divisible"),
    (dict(remasking="sometimes"), "remasking"),
    (dict(temperature=-1.0), "temperature"),
])
def test_bad_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        SamplerConfig(**kwargs).resolved()


# ------------------------------------------------------------ more steps per block than tokens

@pytest.mark.parametrize("temperature, remasking", [(0.8, "low_confidence"), (0.0, "random"), (1.2, "random")])
@pytest.mark.parametrize("blocks, factor", [(1, 2), (2, 2), (2, 3), (3, 2), (3, 3)])
def test_steps_beyond_block_length_match_reference(tiny, temperature, remasking, blocks, factor):
    """The reference's last steps of a block reveal nothing but still draw random numbers; the next
    block must start from the same random state (and a no-op step costs no forward pass here)."""
    cfg = SamplerConfig(gen_length=4 * blocks, block_length=4, steps=4 * blocks * factor,
                        temperature=temperature, remasking=remasking, stop_at_eos=False)
    for seed, q in enumerate(QUESTIONS[:2]):
        prompt = tiny.prompt_ids(q)
        ours = sample(tiny, [prompt], cfg, make_generators([seed], "cpu"))[0]
        want = _reference(tiny, prompt, seed, cfg)
        assert ours.tokens == want
        assert ours.nfe == cfg.gen_length and sorted(set(ours.step_map)) == list(range(cfg.gen_length))
        early = sample(tiny, [prompt], dataclasses.replace(cfg, stop_at_eos=True), make_generators([seed], "cpu"))[0]
        assert early.text == tiny.completion_text(want)


def test_steps_beyond_block_length_are_batch_invariant_and_stop_early_correctly(tiny):
    tiny = _EosBiased(**vars(tiny))
    cfg = SamplerConfig(gen_length=12, block_length=4, steps=24, temperature=1.5, remasking="random")
    prompts = [tiny.prompt_ids(q) for q in QUESTIONS[:8]]
    seeds = list(range(20, 28))
    batched = sample(tiny, prompts, cfg, make_generators(seeds, "cpu"))
    alone = [sample(tiny, [p], cfg, make_generators([s], "cpu"))[0] for p, s in zip(prompts, seeds)]
    assert [c.tokens for c in batched] == [c.tokens for c in alone]
    assert [c.step_map for c in batched] == [c.step_map for c in alone]
    want = [tiny.completion_text(_reference(tiny, p, s, cfg)) for p, s in zip(prompts, seeds)]
    assert [c.text for c in batched] == want
    assert any(c.nfe < cfg.gen_length for c in batched), "no row stopped early; the test needs end-of-text"


# ------------------------------------------------------------ end-of-text / end-of-turn flags

class _EndBiased(DLM):
    """The tiny model with end-of-text and end-of-turn made likely, so that the flags matter."""
    eos_bias, eot_bias = 4.0, 3.0

    def logits(self, input_ids, attention_mask=None):
        out = super().logits(input_ids, attention_mask)
        out[..., self.eos_id] += self.eos_bias
        if self.eot_id is not None:
            out[..., self.eot_id] += self.eot_bias
        return out


class _SlightlyEndBiased(_EndBiased):
    """Likely enough to be chosen at some positions only (with a strong bias, all are end-of-text)."""
    eos_bias, eot_bias = 0.5, -0.5


@pytest.mark.parametrize("temperature", [0.0, 0.9])
@pytest.mark.parametrize("with_eot", [True, False])
@pytest.mark.parametrize("logits_eos_inf", [False, True])
def test_confidence_eos_eot_inf_matches_reference(tiny, temperature, with_eot, logits_eos_inf):
    """LLaDA's chained assignment zeroes the end-of-turn confidence, and at T = 0 (where the noised
    logits are the logits themselves) the end-of-text confidence too. Without an end-of-turn token
    the sampler suppresses end-of-text in its place, i.e. the reference with eot_id = eos_id."""
    eot = tiny.tokenizer.convert_tokens_to_ids("<|eot|>")
    dlm = _EndBiased(**{**vars(tiny), "eot_id": eot if with_eot else None})
    cfg = SamplerConfig(gen_length=12, block_length=4, steps=12, temperature=temperature,
                        confidence_eos_eot_inf=True, logits_eos_inf=logits_eos_inf, stop_at_eos=False)
    special = {dlm.eos_id, eot if with_eot else dlm.eos_id}
    for seed, q in enumerate(QUESTIONS[:3]):
        prompt = dlm.prompt_ids(q)
        ours = sample(dlm, [prompt], cfg, make_generators([seed], "cpu"))[0]
        torch.manual_seed(seed)
        want = ref.generate(lambda x, am: dlm.logits(x, am), torch.tensor([prompt]), steps=cfg.steps,
                            gen_length=cfg.gen_length, block_length=cfg.block_length, temperature=temperature,
                            mask_id=dlm.mask_id, logits_eos_inf=logits_eos_inf, confidence_eos_eot_inf=True,
                            eos_id=dlm.eos_id, eot_id=eot if with_eot else dlm.eos_id)
        assert ours.tokens == want[0, len(prompt):].tolist()
        if temperature == 0:  # both have zero confidence, so in each block they are committed last
            for lo in range(0, cfg.gen_length, cfg.block_length):
                toks, steps = ours.tokens[lo:lo + 4], ours.step_map[lo:lo + 4]
                ends = [s for t, s in zip(toks, steps) if t in special]
                rest = [s for t, s in zip(toks, steps) if t not in special]
                assert not ends or not rest or max(rest) <= min(ends)


def test_confidence_eos_eot_inf_at_zero_temperature_suppresses_end_of_text(tiny):
    """Non-vacuous: at T = 0, suppressing only end-of-turn (the old behaviour; the reference with
    its end-of-text id pointed at end-of-turn) decodes differently from the published code."""
    eot = tiny.tokenizer.convert_tokens_to_ids("<|eot|>")
    dlm = _SlightlyEndBiased(**{**vars(tiny), "eot_id": eot})
    cfg = SamplerConfig(gen_length=8, block_length=8, steps=8, confidence_eos_eot_inf=True, stop_at_eos=False)
    differs = 0
    for q in QUESTIONS[:8]:
        prompt = dlm.prompt_ids(q)
        ours = sample(dlm, [prompt], cfg, make_generators([0], "cpu"))[0].tokens
        run = {e: ref.generate(lambda x, am: dlm.logits(x, am), torch.tensor([prompt]), steps=8, gen_length=8,
                               block_length=8, mask_id=dlm.mask_id, confidence_eos_eot_inf=True, eos_id=e,
                               eot_id=eot)[0, len(prompt):].tolist() for e in (dlm.eos_id, eot)}
        assert ours == run[dlm.eos_id]
        differs += run[eot] != run[dlm.eos_id]
    assert differs, "suppressing end-of-text changed nothing; the test needs a likelier end-of-text"


# ------------------------------------------------------------ rollout noise precision (ESPO)

def _espo_generate(model, prompt, steps, gen_length, block_length, temperature, dtype, mask_id,
                   remasking="low_confidence"):
    """ESPO's rollout sampler (ML-GSAI/ESPO b5f2dac, espo/espo_trainer.py: generate and
    add_gumbel_noise, dtype = model.dtype), written out plainly for one row on the global RNG."""
    P = prompt.shape[1]
    x = torch.full((1, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    per_block = max(1, steps // (gen_length // block_length))
    for end in range(P + block_length, P + gen_length + 1, block_length):
        n = int((x[:, end - block_length:end] == mask_id).sum())
        counts = [n // per_block + (1 if i < n % per_block else 0) for i in range(per_block)]
        for count in counts:
            masked = x == mask_id
            logits = model(x, None)
            if temperature == 0.0:
                noised = logits
            else:
                cast = logits.to(dtype)
                gumbel = (-torch.log(torch.rand_like(cast, dtype=dtype))) ** temperature
                noised = cast.exp() / gumbel
            x0 = torch.argmax(noised, dim=-1)
            if remasking == "low_confidence":
                x0_p = torch.gather(F.softmax(logits.to(dtype), dim=-1), -1, x0[..., None]).squeeze(-1)
            else:
                x0_p = torch.rand(x0.shape)
            x0_p[:, end:] = -float("inf")
            x0 = torch.where(masked, x0, x)
            confidence = torch.where(masked, x0_p, -float("inf"))
            if count > 0:
                chosen = torch.topk(confidence[0], k=count).indices
                x[0, chosen] = x0[0, chosen]
    return x[0, P:].tolist()


@pytest.fixture(scope="module")
def tiny_bf16(tiny):
    return DLM(**{**vars(tiny), "model": copy.deepcopy(tiny.model).to(torch.bfloat16)})


@pytest.mark.parametrize("model_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("noise_dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_noise_dtype_matches_espo(tiny, tiny_bf16, model_dtype, noise_dtype, temperature):
    dlm = tiny_bf16 if model_dtype == "bfloat16" else tiny
    cfg = SamplerConfig(gen_length=8, block_length=4, steps=8, temperature=temperature,
                        noise_dtype=noise_dtype, stop_at_eos=False)
    for seed, q in enumerate(QUESTIONS[:3]):
        prompt = dlm.prompt_ids(q)
        ours = sample(dlm, [prompt], cfg, make_generators([seed], "cpu"))[0].tokens
        torch.manual_seed(seed)
        want = _espo_generate(lambda x, am: dlm.logits(x, am), torch.tensor([prompt]), cfg.steps, cfg.gen_length,
                              cfg.block_length, temperature, getattr(torch, noise_dtype), dlm.mask_id)
        assert ours == want


def test_noise_dtype_with_steps_beyond_block_length_matches_espo(tiny):
    cfg = SamplerConfig(gen_length=8, block_length=4, steps=16, temperature=0.9, noise_dtype="bfloat16",
                        stop_at_eos=False)
    for seed, q in enumerate(QUESTIONS[:2]):
        prompt = tiny.prompt_ids(q)
        ours = sample(tiny, [prompt], cfg, make_generators([seed], "cpu"))[0].tokens
        torch.manual_seed(seed)
        assert ours == _espo_generate(lambda x, am: tiny.logits(x, am), torch.tensor([prompt]), 16, 8, 4, 0.9,
                                      torch.bfloat16, tiny.mask_id)


def test_bfloat16_noise_changes_completions_and_is_batch_invariant(tiny):
    cfg = SamplerConfig(gen_length=16, block_length=8, steps=16, temperature=1.0)
    low = dataclasses.replace(cfg, noise_dtype="bfloat16")
    prompts = [tiny.prompt_ids(q) for q in QUESTIONS[:8]]
    seeds = list(range(8))
    default = sample(tiny, prompts, cfg, make_generators(seeds, "cpu"))
    batched = sample(tiny, prompts, low, make_generators(seeds, "cpu"))
    assert [c.tokens for c in batched] != [c.tokens for c in default]   # a different random stream
    alone = [sample(tiny, [p], low, make_generators([s], "cpu"))[0] for p, s in zip(prompts, seeds)]
    assert [c.tokens for c in batched] == [c.tokens for c in alone]


def test_noise_dtype_is_validated_and_hashed_only_when_set():
    assert "noise_dtype" not in SamplerConfig().hashed()
    assert SamplerConfig(noise_dtype="bfloat16").hashed()["noise_dtype"] == "bfloat16"
    with pytest.raises(UserError, match="noise_dtype"):
        SamplerConfig(noise_dtype="float16").resolved()


def test_sweep_noise_dtype_enters_the_cell_hash_only_when_set():
    from types import SimpleNamespace
    from dlm_bench.commands.passk import add_decoding_arguments
    from dlm_bench.evaluate import SweepConfig, cell_config, sampling_hash
    import argparse
    task = SimpleNamespace(name="testbed", prompt_template="v1", grader_id=lambda: "g1")
    cells = {d: cell_config(SweepConfig(model="m", method="base", task="testbed", noise_dtype=d), task, "test",
                            {"name": "m", "hash": "abc"}, 0.6, 256) for d in ("float64", "bfloat16")}
    assert "noise_dtype" not in cells["float64"]["sampler"]
    assert cells["bfloat16"]["sampler"]["noise_dtype"] == "bfloat16"
    assert sampling_hash(cells["bfloat16"]) != sampling_hash(cells["float64"])
    p = argparse.ArgumentParser()
    add_decoding_arguments(p)
    assert p.parse_args([]).noise_dtype == "float64"
    assert p.parse_args(["--noise-dtype", "bfloat16"]).noise_dtype == "bfloat16"
