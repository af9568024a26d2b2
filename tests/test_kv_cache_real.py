"""Block KV cache on tiny random-weight LLaDA (both attention-mask variants) and Dream built from the
real remote code in ../shared/models: LLaDA through wrapped attention methods, Dream through its own
past_key_values protocol. Same exactness and batch-invariance checks as on the built-in model."""
import pytest
import torch

from dlm_bench.models.kv_cache import BlockCache
from dlm_bench.models import load_model
from dlm_bench.sampler import SamplerConfig, make_generators, sample
from shared_files import real_model_snapshot

LLADA, LLADA_FIX, DREAM = "llada-8b-instruct", "llada-8b-instruct-maskfix", "dream-v0-instruct-7b"
ALL = (LLADA, LLADA_FIX, DREAM)
QUESTIONS = ["What is 2+3?", "Name a colour, then explain why it is your favourite one.", "x"]
MODES = ["prefix", "dual"]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from dlm_bench.models.random_init import build_tiny
    root = tmp_path_factory.mktemp("real-kv")
    out = {}
    for name in ALL:
        out[name + ":dir"] = str(build_tiny(real_model_snapshot(name), root / name, seed=1))
        dlm = load_model(out[name + ":dir"], device="cpu")
        with torch.no_grad():   # a random head over ~150k tokens is nearly flat; peak it so confidences differ
            dlm.model.get_output_embeddings().weight.mul_(30.0)
        out[name] = dlm
    return out


def _prompts(dlm, padded: bool):
    prompts = [dlm.prompt_ids(q) for q in QUESTIONS]
    if padded and dlm.honours_padding:
        return prompts
    return [prompts[0]] * 3       # the old LLaDA is never padded in a cached pass: equal lengths


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode", MODES)
def test_block_start_exact_and_unchanged_window_reproduces_it(real, name, mode):
    dlm = real[name]
    prompts = _prompts(dlm, padded=True)
    x, att = dlm.pad_left([p + [dlm.mask_id] * 8 for p in prompts])
    lo = x.shape[1] - 8
    cache = BlockCache(dlm, mode)
    with torch.no_grad():
        full = dlm.logits(x, att)
        assert torch.equal(cache.start(x, att, lo, lo + 4), full)
        scale = full.abs().max()
        win = cache.block_logits(x, att, torch.arange(3))
        assert (win - full[:, lo:lo + 4]).abs().max() <= 1e-4 * scale
        one = torch.tensor([2])
        assert (cache.block_logits(x[one], att[one], one) - full[one, lo:lo + 4]).abs().max() <= 1e-4 * scale
        x[:, lo:lo + 2] = dlm.eos_id            # decode part of the block: stored keys are now stale
        assert not torch.allclose(cache.block_logits(x, att, torch.arange(3)), dlm.logits(x, att)[:, lo:lo + 4],
                                  atol=1e-4 * float(scale))


@pytest.mark.parametrize("name", [LLADA, LLADA_FIX])
def test_wrapped_llada_attention_is_the_original_outside_cached_passes(real, name):
    dlm = load_model(real[name + ":dir"], device="cpu")
    x = torch.tensor([dlm.prompt_ids("What is 2+3?") + [dlm.mask_id] * 6])
    with torch.no_grad():
        before = dlm.logits(x)
        BlockCache(dlm, "dual")                  # wraps every block's attention method
        assert torch.equal(dlm.logits(x), before)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode", MODES)
def test_first_step_of_every_block_matches_no_cache(real, name, mode, monkeypatch):
    seen = []
    start = BlockCache.start

    def checked(self, x, att, lo, hi):
        out = start(self, x, att, lo, hi)
        seen.append(torch.equal(out, self.dlm.logits(x, att)))
        return out

    monkeypatch.setattr(BlockCache, "start", checked)
    dlm = real[name]
    cfg = SamplerConfig(gen_length=8, block_length=4, steps=4, temperature=0.8, stop_at_eos=False, cache=mode)
    sample(dlm, _prompts(dlm, padded=True), cfg, make_generators([1, 2, 3], "cpu"))
    assert len(seen) == 2 and all(seen)    # one start per block


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode", MODES)
def test_batch_invariant_with_left_padding(real, name, mode):
    """Different prompt lengths in one batch, as each alone; the LLaDA code that ignores the attention
    mask decodes each prompt length on its own when caching, so it holds there too."""
    dlm = real[name]
    cfg = SamplerConfig(gen_length=8, block_length=4, steps=8, temperature=0.9, threshold=0.5, cache=mode)
    prompts = [dlm.prompt_ids(q) for q in QUESTIONS]
    seeds = [11, 12, 13]
    batched = sample(dlm, prompts, cfg, make_generators(seeds, "cpu"))
    alone = [sample(dlm, [p], cfg, make_generators([s], "cpu"))[0] for p, s in zip(prompts, seeds)]
    assert [c.tokens for c in batched] == [c.tokens for c in alone]
    assert [c.nfe for c in batched] == [c.nfe for c in alone]
