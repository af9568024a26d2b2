"""Block KV cache (dlm_bench/models/kv_cache.py) on the built-in tiny model: the plumbing is exact where it
must be (block-start logits; a window pass before anything changed), the approximation stays inside
blocks, batch invariance holds, and the default leaves every config hash as it was."""
from types import SimpleNamespace

import pytest
import torch

from dlm_bench.errors import UserError
from dlm_bench.evaluate import SweepConfig, cell_config, sampling_hash, stable_hash
from dlm_bench.models.kv_cache import BlockCache, check_model_dir
from dlm_bench.sampler import SamplerConfig, make_generators, sample

QUESTIONS = ["What is 2+3?", "x", "A longer prompt with several words in it to force padding.", "7*8"]
MODES = ["prefix", "dual"]


def _batch(dlm, prompts, gen):
    x, att = dlm.pad_left([p + [dlm.mask_id] * gen for p in prompts])
    return x, att


# --------------------------------------------------------------------------- hashes

def test_default_config_hash_is_the_pre_cache_hash():
    """Computed by the code before the cache existed (commit 05bd739): sweep seeds derive from it."""
    task = SimpleNamespace(name="testbed", prompt_template="v1", grader_id=lambda: "g1")
    cfg = SweepConfig(model="m", method="base", task="testbed", block_length=32)
    cc = cell_config(cfg, task, "test", {"name": "m", "hash": "abc"}, 0.6, 256)
    assert "cache" not in cc["sampler"]
    assert (stable_hash(cc), sampling_hash(cc)) == ("6d22be2dc43f6589", "039bf6f5d518d9c9")
    for mode in MODES:
        cached = SweepConfig(model="m", method="base", task="testbed", block_length=32, cache=mode)
        cc2 = cell_config(cached, task, "test", {"name": "m", "hash": "abc"}, 0.6, 256)
        assert cc2["sampler"]["cache"] == mode and sampling_hash(cc2) != sampling_hash(cc)


def test_bad_cache_settings_are_user_errors():
    with pytest.raises(UserError):
        SamplerConfig(cache="full").resolved()
    with pytest.raises(UserError):
        SamplerConfig(cache="dual", cfg_scale=1.0).resolved()


def test_unsupported_architecture_is_refused(tmp_path, tiny):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="cannot cache"):
        check_model_dir(str(tmp_path), "dual")
    check_model_dir(str(tmp_path), "none")          # the default never asks
    other = SimpleNamespace(**{**vars(tiny), "extra": {"model_type": "bert"}})
    with pytest.raises(UserError, match="cannot cache"):
        BlockCache(other, "prefix")


# --------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("mode", MODES)
def test_block_start_is_exact_and_an_unchanged_window_reproduces_it(tiny, mode):
    """start() gives dlm.logits; a window pass right after it (nothing decoded yet, so no key is
    stale) gives the same block logits, also for a subset of rows and with left padding."""
    prompts = [tiny.prompt_ids(q) for q in QUESTIONS]
    x, att = _batch(tiny, prompts, 16)
    P = x.shape[1] - 16
    for lo in (P, P + 8):
        cache = BlockCache(tiny, mode)
        with torch.no_grad():
            full = tiny.logits(x, att)
            started = cache.start(x, att, lo, lo + 8)
            assert torch.equal(started, full)
            win = cache.block_logits(x, att, torch.arange(4))
            assert torch.allclose(win, full[:, lo:lo + 8], atol=1e-5)
            some = torch.tensor([1, 3])
            assert torch.allclose(cache.block_logits(x[some], att[some], some), full[some, lo:lo + 8], atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("threshold", [None, 0.05])
def test_first_step_of_every_block_matches_no_cache(tiny, mode, threshold, monkeypatch):
    """During real decoding, each block's first step sees exactly the logits cache=none computes on
    the same sequence; later steps differ from them (that is the approximation)."""
    seen = []
    start = BlockCache.start

    def checked(self, x, att, lo, hi):
        out = start(self, x, att, lo, hi)
        seen.append(torch.equal(out, self.dlm.logits(x, att)))
        return out

    monkeypatch.setattr(BlockCache, "start", checked)
    cfg = SamplerConfig(gen_length=16, block_length=4, steps=8, temperature=0.7, threshold=threshold,
                        stop_at_eos=False, cache=mode)
    prompts = [tiny.prompt_ids(q) for q in QUESTIONS]
    sample(tiny, prompts, cfg, make_generators(range(4), "cpu"))
    assert len(seen) == 4 and all(seen)


def test_later_steps_are_approximate(tiny):
    """A window pass after tokens were decoded differs from the full pass (stale keys): the test
    would pass vacuously if the cache secretly recomputed everything."""
    prompts = [tiny.prompt_ids(q) for q in QUESTIONS]
    x, att = _batch(tiny, prompts, 16)
    P = x.shape[1] - 16
    cache = BlockCache(tiny, "dual")
    with torch.no_grad():
        cache.start(x, att, P, P + 8)
        x[:, P:P + 4] = 40                      # decode half the block
        win = cache.block_logits(x, att, torch.arange(4))
        full = tiny.logits(x, att)[:, P:P + 8]
    assert not torch.allclose(win, full, atol=1e-4)


# --------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("threshold", [None, 0.05])
def test_batch_invariant_with_cache(tiny, mode, threshold):
    cfg = SamplerConfig(gen_length=16, block_length=4, steps=8, temperature=1.0, threshold=threshold,
                        cache=mode)
    prompts = [tiny.prompt_ids(q) for q in QUESTIONS]
    seeds = [7, 8, 9, 10]
    batched = sample(tiny, prompts, cfg, make_generators(seeds, "cpu"))
    alone = [sample(tiny, [p], cfg, make_generators([s], "cpu"))[0] for p, s in zip(prompts, seeds)]
    assert [c.tokens for c in batched] == [c.tokens for c in alone]
    assert [c.step_map for c in batched] == [c.step_map for c in alone]
    assert [c.nfe for c in batched] == [c.nfe for c in alone]


def test_one_block_dual_equals_prefix(tiny):
    """With a single block there is nothing after it: prefix and dual are the same computation."""
    prompts = [tiny.prompt_ids(q) for q in QUESTIONS]
    out = {m: sample(tiny, prompts, SamplerConfig(gen_length=8, block_length=8, steps=8, temperature=0.9,
                                                  stop_at_eos=False, cache=m), make_generators(range(4), "cpu"))
           for m in MODES}
    assert [c.tokens for c in out["prefix"]] == [c.tokens for c in out["dual"]]


def test_cached_sweep_records_carry_the_mode(tiny_dir, tmp_path):
    from dlm_bench.cli import main
    import json
    argv = ["passk", "--model", tiny_dir, "--method", "m", "--task", "testbed", "--n", "2", "--k", "1",
            "--temps", "0.7", "--lengths", "8", "--block-length", "4", "--limit", "2", "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "none")]) == 0
    assert main(argv + ["--out", str(tmp_path / "dual"), "--cache", "dual", "--threshold", "0.9"]) == 0
    none, dual = (json.loads((tmp_path / d / "results.json").read_text())["cells"][0] for d in ("none", "dual"))
    assert "cache" not in none["config"]["sampler"]
    assert dual["config"]["sampler"]["cache"] == "dual" and dual["config"]["sampler"]["threshold"] == 0.9
    assert dual["config_hash"] != none["config_hash"]


def test_cli_refuses_an_uncacheable_model_in_one_line(tmp_path, capsys):
    from dlm_bench.cli import main
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    assert main(["sample", str(tmp_path / "m"), str(tmp_path / "p.jsonl"), "--cache", "dual"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot cache" in err[0]
