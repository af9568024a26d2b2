"""Block-diffusion families through their real remote code: TraDo (SDAR) and LLaDA2.0-mini (MoE), as tiny
random-weight models built from the hub snapshots in ../shared/models, under whatever transformers is
installed (`make test` and `make test-compat` run both lines).

Known answers come from the families' own samplers, run beside ours on the same weights
(tests/block_references.py imports them from the snapshot files): dLLM-RL's `block_diffusion_generate`
for TraDo, and LLaDA2's hub `generate()` and dllm's LLaDA2 sampler.
"""
from __future__ import annotations

import copy
import json
import math
import sys

import pytest
import torch

import block_references as refs
from lora_helpers import lora_folder
from dlm_bench.cli import main
from dlm_bench.errors import UserError
from dlm_bench.models import DLM, load_model
from dlm_bench.sampler import SamplerConfig, make_generators, sample
from shared_files import real_model_snapshot, tiny_real_models

TRADO, LLADA2 = "trado-8b-instruct", "llada2-mini"
BOTH = (TRADO, LLADA2)
QUESTIONS = ["What is 2+3?", "x", "Name a colour, then explain why it is your favourite one."]


@pytest.fixture(scope="session")
def block_dirs(tmp_path_factory):
    return tiny_real_models(tmp_path_factory.mktemp("block"), BOTH)


@pytest.fixture(scope="session")
def block(block_dirs):
    """The tiny models, with the output head scaled up: a random head over 150k tokens is nearly flat
    (confidences tie to 1e-9), which would make the comparisons depend on rounding, not on the code."""
    out = {}
    for name, d in block_dirs.items():
        dlm = load_model(d, device="cpu")
        with torch.no_grad():
            dlm.model.get_output_embeddings().weight.mul_(30.0)
        out[name] = dlm
    return out


def test_load_reads_the_family_facts_from_the_real_files(block):
    trado, llada2 = block[TRADO], block[LLADA2]
    assert (trado.mask_id, trado.eos_id, trado.block_size) == (151669, 151643, 4)     # config.json
    assert sorted(trado.stops()) == [151643, 151645]                                    # + <|im_end|>
    assert (llada2.mask_id, llada2.eos_id, sorted(llada2.stops())) == (156895, 156892, [156892])
    assert llada2.block_size == 32                                                      # generate()'s default
    for dlm in (trado, llada2):
        assert dlm.family.block_causal and not dlm.shift_logits and dlm.honours_padding
        assert type(dlm.model).__name__.endswith(("ForCausalLM", "ModelLM"))            # the LM class, not AutoModel
    assert llada2.family.moe and not trado.family.moe


def test_flash_attn_stand_in_is_recorded_and_removed(block):
    import importlib.util
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed: its own kernels run")
    assert block[TRADO].extra["fallbacks"] == ["flash_attn.flash_attn_func (plain torch)",
                                               "flash_attn.rms_norm_fn (plain torch)"]
    assert "fallbacks" not in block[LLADA2].extra
    assert "flash_attn" not in sys.modules         # present only while the remote module was imported


def test_flash_attn_stand_in_computes_what_flash_attn_does():
    from dlm_bench.models.flash_fallback import flash_attn_func, rms_norm_fn
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 5, 16, generator=g), torch.randn(16, generator=g)
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    assert torch.allclose(rms_norm_fn(x, w, eps=1e-6), expected, atol=1e-6)
    q, k, v = (torch.randn(2, n, h, 8, generator=g) for n, h in ((3, 4), (5, 2), (5, 2)))
    out = flash_attn_func(q, k, v, causal=True)
    kk, vv = (t.repeat_interleave(2, dim=2) for t in (k, v))           # grouped keys serve 2 query heads
    for i in range(3):                                                  # bottom-right: query i sees keys <= i + 2
        w_ = torch.einsum("bhd,bkhd->bhk", q[:, i], kk[:, :i + 3]) / 8 ** 0.5
        expect = torch.einsum("bhk,bkhd->bhd", w_.softmax(-1), vv[:, :i + 3])
        assert torch.allclose(out[:, i], expect, atol=1e-5)


@pytest.mark.parametrize("name", BOTH)
def test_left_padded_rows_equal_unpadded_ones(block, name):
    """The harness's 4-D block-causal mask and positions: a left-padded row gives its unpadded logits.
    The models' own handling does not (LLaDA2 makes a 2-D mask with zeros causal; SDAR builds no mask)."""
    dlm = block[name]
    rows = [dlm.prompt_ids(q) for q in QUESTIONS]
    x, att = dlm.pad_left(rows)
    with torch.no_grad():
        padded = dlm.logits(x, att)
        raw = dlm.model(input_ids=x, attention_mask=att).logits
        for i, r in enumerate(rows):
            alone = dlm.logits(torch.tensor([r]))[0]
            assert torch.allclose(padded[i, -len(r):], alone, atol=1e-4)
        short = min(range(len(rows)), key=lambda i: len(rows[i]))
        assert not torch.allclose(raw[short, -len(rows[short]):], padded[short, -len(rows[short]):], atol=1e-3)


@pytest.mark.parametrize("strategy,threshold", [("low_confidence_static", None), ("low_confidence_dynamic", 0.3),
                                                ("low_confidence_dynamic", 0.9), ("sequential", None)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_trado_matches_dllm_rl_block_diffusion_generate(block, strategy, threshold, temperature):
    """Batch 1, block 4, 4 steps per block (TraDo's README setting), three prompt lengths (the prompt
    ends inside a block): ours vs the reference calling the same model, same seed. The reference has
    no greedy mode (it divides the logits by T)."""
    dlm = block[TRADO]
    generate = refs.trado_generate(real_model_snapshot(TRADO))
    cfg = SamplerConfig(gen_length=16, block_length=4, steps=16, temperature=temperature, stop_at_eos=False,
                        remasking="sequential" if strategy == "sequential" else "low_confidence", threshold=threshold)
    for seed, q in enumerate(QUESTIONS):
        prompt = dlm.prompt_ids(q)
        ours = sample(dlm, [prompt], cfg, make_generators([seed], "cpu"))[0]
        torch.manual_seed(seed)
        theirs = generate(dlm.model, {"input_ids": torch.tensor([prompt])}, dlm.mask_id, gen_length=16,
                          block_length=4, denoising_steps=4, temperature=temperature,
                          remasking_strategy=strategy, confidence_threshold=threshold or 0.9)
        assert ours.tokens == theirs[0, len(prompt):len(prompt) + 16].tolist()
        _blocks_in_order(ours, len(prompt), 4)


def _blocks_in_order(completion, prompt_len: int, bl: int):
    """Every window token was unmasked at some step, and every token of a block before any of the next."""
    sm = completion.step_map
    assert min(sm) >= 0 and max(sm) < completion.nfe
    block = [(prompt_len + t) // bl for t in range(len(sm))]
    for b in sorted(set(block))[:-1]:
        assert max(s for s, k in zip(sm, block) if k == b) < min(s for s, k in zip(sm, block) if k == b + 1)


@pytest.mark.parametrize("threshold", [None, 0.3])
@pytest.mark.parametrize("steps_per_block", [8, 3])
def test_llada2_greedy_matches_dllm_sampler(block, threshold, steps_per_block):
    """T = 0 (argmax, confidence = its probability), with threshold decoding and without (a threshold
    above 1 never fires: the top-k of the schedule), two blocks of 8."""
    dlm = block[LLADA2]
    sampler = refs.dllm_llada2_sampler(real_model_snapshot(LLADA2))
    cfg = SamplerConfig(gen_length=16, block_length=8, steps=2 * steps_per_block, temperature=0.0,
                        stop_at_eos=False, threshold=threshold)
    for q in QUESTIONS:
        prompt = dlm.prompt_ids(q)
        ours = sample(dlm, [prompt], cfg, make_generators([0], "cpu"))[0]
        config = sampler.LLaDA2SamplerConfig(max_new_tokens=16, block_size=8, steps_per_block=steps_per_block,
                                             temperature=0.0, threshold=2.0 if threshold is None else threshold)
        with refs.float_masks(dlm.model):
            theirs = sampler.LLaDA2Sampler(model=dlm.model, tokenizer=dlm.tokenizer).sample([prompt], config)
        assert ours.tokens == theirs[0, len(prompt):len(prompt) + 16].tolist()
        _blocks_in_order(ours, len(prompt), 8)


def _eos_prone(dlm, prompt):
    """A copy whose end-of-text row of the head is that of the token it decodes first, made slightly
    more likely, so completions stop early and the stop rule is exercised."""
    first = sample(dlm, [prompt], SamplerConfig(gen_length=8, block_length=8, steps=8, stop_at_eos=False),
                   make_generators([0], "cpu"))[0].tokens[0]
    other = DLM(**{**vars(dlm), "model": copy.deepcopy(dlm.model)})
    with torch.no_grad():
        head = other.model.get_output_embeddings().weight
        head[dlm.eos_id] = head[first] * 1.02
    return other


@pytest.mark.parametrize("temperature,threshold", [(1.0, 0.3), (0.7, 0.95), (0.7, None)])
def test_llada2_matches_its_hub_generate(block, temperature, threshold):
    """The hub sampler (no cache: it re-runs the whole prefix each step; stops after the block holding
    end-of-text and returns the answer up to it), at T > 0 from the same seed."""
    base = block[LLADA2]
    for seed, q in enumerate(QUESTIONS):
        prompt = base.prompt_ids(q)
        for dlm in (base, _eos_prone(base, prompt)):
            cfg = SamplerConfig(gen_length=16, block_length=8, steps=8, temperature=temperature, threshold=threshold)
            ours = sample(dlm, [prompt], cfg, make_generators([seed], "cpu"))[0]
            torch.manual_seed(seed)
            with refs.float_masks(dlm.model):
                theirs = dlm.model.generate(inputs=torch.tensor([prompt]), temperature=temperature, block_length=8,
                                            steps=4, gen_length=16, threshold=2.0 if threshold is None else threshold,
                                            eos_id=dlm.eos_id, mask_id=dlm.mask_id)[0].tolist()
            assert ours.tokens[:len(theirs)] == theirs
            if dlm is not base:
                assert dlm.eos_id in theirs, "the eos-prone copy never stopped: the stop rule went untested"
                assert ours.text == dlm.tokenizer.decode(theirs[:-1], skip_special_tokens=True)
                block_end = ((len(prompt) + len(theirs) - 1) // 8 + 1) * 8 - len(prompt)
                assert all(t == dlm.eos_id for t in ours.tokens[block_end:])     # later blocks: not decoded


@pytest.mark.parametrize("name", BOTH)
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_batch_invariant_with_mixed_prompt_lengths(block, name, threshold):
    """Prompts of different lengths (whole blocks of left padding, different offsets inside a block)
    give in one batch what each gives alone, stop rule included."""
    dlm = block[name]
    bl = 4 if name == TRADO else 8
    cfg = SamplerConfig(gen_length=16, block_length=bl, steps=16, temperature=0.9, threshold=threshold)
    prompts = [dlm.prompt_ids(q) for q in QUESTIONS]
    assert len({len(p) % bl for p in prompts}) > 1 and len({len(p) // bl for p in prompts}) > 1
    seeds = [11, 12, 13]
    batched = sample(dlm, prompts, cfg, make_generators(seeds, "cpu"))
    alone = [sample(dlm, [p], cfg, make_generators([s], "cpu"))[0] for p, s in zip(prompts, seeds)]
    assert [(c.tokens, c.step_map, c.nfe) for c in batched] == [(c.tokens, c.step_map, c.nfe) for c in alone]
    distinct = sample(dlm, [prompts[0]] * 2, cfg, make_generators([1, 2], "cpu"))
    assert distinct[0].tokens != distinct[1].tokens, "per-row seeds must give distinct samples"


def test_one_token_blocks_are_batch_invariant_on_trado(block):
    """Blocks of one token: SDAR runs one-token cached passes through flash_attn_func (here the plain-torch
    stand-in), which takes no padding mask. (order=left_to_right decodes inside the model's blocks instead:
    tests/test_block_training.py.)"""
    dlm = block[TRADO]
    cfg = SamplerConfig(gen_length=6, block_length=1, steps=6, temperature=0.9, stop_at_eos=False)
    prompts = [dlm.prompt_ids(q) for q in QUESTIONS]
    batched = sample(dlm, prompts, cfg, make_generators([1, 2, 3], "cpu"))
    alone = [sample(dlm, [p], cfg, make_generators([s], "cpu"))[0] for p, s in zip(prompts, [1, 2, 3])]
    assert [c.tokens for c in batched] == [c.tokens for c in alone]
    assert all(c.step_map == list(range(6)) and c.nfe == 6 for c in batched)


def test_sample_command_batch_of_three_equals_batch_of_one(block_dirs, tmp_path):
    """`dlm-bench sample` on a tiny LLaDA2, mixed prompt lengths: --batch-size 3 equals --batch-size 1."""
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS))
    outs = []
    for bs in (3, 1):
        out = tmp_path / f"out{bs}.jsonl"
        argv = ["sample", block_dirs[LLADA2], str(src), "-o", str(out), "--gen-length", "16", "--block-length", "8",
                "--temperature", "0.8", "--threshold", "0.5", "--batch-size", str(bs), "--device", "cpu"]
        assert main(argv) == 0
        outs.append([json.loads(r) for r in out.read_text().splitlines()])
    assert outs[0] == outs[1] and len(outs[0]) == 3


@pytest.mark.parametrize("setting,message", [({"cache": "prefix"}, "cached exactly"),
                                             ({"remasking": "random"}, "remasking=random"),
                                             ({"cfg_scale": 1.0}, "cfg_scale"),
                                             ({"rcr": True}, "not available for block-diffusion"),
                                             ({"eos_gamma": 0.4}, "not available for block-diffusion"),
                                             ({"schedule": "ascending", "block_length": 8, "steps": 3},
                                              "not available for block-diffusion")])
def test_settings_that_do_not_apply_are_refused(block, setting, message):
    cfg = SamplerConfig(**{"gen_length": 8, "block_length": 4, "steps": 8, **setting})
    with pytest.raises(UserError, match=message):
        sample(block[TRADO], [[1, 2, 3]], cfg, make_generators([0], "cpu"))


def test_sequential_is_refused_on_full_attention(tiny):
    with pytest.raises(UserError, match="sequential"):
        sample(tiny, [[5, 6]], SamplerConfig(gen_length=8, block_length=4, steps=8, remasking="sequential"),
               make_generators([0], "cpu"))


def test_cache_flag_is_refused_in_one_line(block_dirs, tmp_path, capsys):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"prompt": "hi"}) + "\n")
    assert main(["sample", block_dirs[TRADO], str(src), "--cache", "dual", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cached exactly" in err and len(err.splitlines()) == 1 and "Traceback" not in err


# --------------------------------------------------------------------------- commands on both families

@pytest.fixture(scope="session")
def block_loras(block_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("block-lora")
    return {name: lora_folder(d, root / name) for name, d in block_dirs.items()}


def _passk(model, out, block_length):
    argv = ["passk", "--model", str(model), "--method", "base", "--task", "testbed", "--n", "2", "--k", "1,2",
            "--temps", "0.7", "--lengths", "8", "--block-length", str(block_length), "--threshold", "0.9",
            "--limit", "2", "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("name", BOTH)
def test_passk_info_merge_on_a_lora_output(block_dirs, block_loras, tmp_path, capsys, name):
    """The adapter folder as a user passes it: info, passk (records written, base found from the
    adapter config), merge (the merged model computes what the adapter does)."""
    lora = block_loras[name]
    assert main(["info", lora]) == 0
    out = capsys.readouterr().out
    assert "block-causal" in out and "LoRA base" in out
    results = _passk(lora, tmp_path / "passk", 4 if name == TRADO else 8)
    runtime = results["model_runtime"]
    assert runtime["adapter"] == lora and runtime["base_model"] == block_dirs[name]
    gens = [json.loads(r) for r in (tmp_path / "passk" / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 4 and all(len(g["tokens"]) == 8 for g in gens)
    merged = tmp_path / "merged"
    assert main(["merge", lora, str(merged)]) == 0
    a, b = load_model(lora, device="cpu"), load_model(str(merged), device="cpu")
    base = load_model(block_dirs[name], device="cpu")
    x = torch.tensor([a.prompt_ids("What is 2+3?") + [a.mask_id] * 4])
    with torch.no_grad():
        assert torch.allclose(a.logits(x), b.logits(x), atol=1e-5)
        assert not torch.allclose(a.logits(x), base.logits(x), atol=1e-3), "the adapter changed nothing"


def test_report_over_both_families(block_dirs, tmp_path):
    for name in BOTH:
        _passk(block_dirs[name], tmp_path / "runs" / name, 4 if name == TRADO else 8)
    assert main(["report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "report"),
                 "--formats", "png"]) == 0
    assert (tmp_path / "report" / "report.md").is_file()


def test_lm_eval_generate_until_and_loglikelihood(block_loras):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from dlm_bench.lm_eval_adapter import DLMEvalHarness
    lm = DLMEvalHarness(pretrained=block_loras[LLADA2], device="cpu", gen_length=8, block_length=8, steps=8)
    inst = Instance("generate_until", {}, ("Q: 1+1=", {"until": ["\n\n"], "max_gen_toks": 8}), 0,
                    metadata=("toy", 0, 1))
    (text,) = lm.generate_until([inst])
    assert isinstance(text, str)
    ll = Instance("loglikelihood", {}, ("Q: 1+1=", " 2"), 0, metadata=("toy", 0, 1))
    ((score, _),) = lm.loglikelihood([ll])        # the block-diffusion ELBO (likelihood.scoring_input)
    assert math.isfinite(score) and score < 0
