"""The lm-eval `dlm` model on the tiny DLM, called directly with lm_eval Instance objects (offline)."""
from __future__ import annotations

import math

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (optional extra `lmeval`)")

from lm_eval.api.instance import Instance  # noqa: E402

from dlm_bench.lm_eval_adapter import DLMEvalHarness, cut_at  # noqa: E402

GEN = {"until": ["\n\n"], "temperature": 1.0, "do_sample": True, "max_gen_toks": 16}


def _lm(tiny, seed=7):
    return DLMEvalHarness(dlm=tiny, gen_length=16, block_length=8, steps=8, seed=seed, mc_num=4,
                          greedy_check=True, batch_size=3)


def _gen_requests(repeats, gen=GEN, docs=("Q: 1+1=", "Q: 2+3=")):
    reqs = []
    for doc_id, ctx in enumerate(docs):
        inst = Instance("generate_until", {}, (ctx, dict(gen)), 0, metadata=("toy", doc_id, repeats))
        reqs += [inst] * repeats  # lm-eval sends the same Instance once per repeat
    return reqs


def test_registered():
    from lm_eval.api.registry import get_model
    assert get_model("dlm") is DLMEvalHarness


def test_repeats_differ_and_seed_reproduces(tiny):
    out = _lm(tiny).generate_until(_gen_requests(3))
    assert len(out) == 6 and all(isinstance(s, str) for s in out)
    assert len(set(out[:3])) > 1, "repeats at T > 0 must not be identical"
    again = _lm(tiny).generate_until(_gen_requests(3))
    assert again == out, "the same seed must reproduce the same outputs"
    other = _lm(tiny, seed=8).generate_until(_gen_requests(3))
    assert other != out
    # batch-invariant: one request at a time (first document only) gives the same texts
    one = DLMEvalHarness(dlm=tiny, gen_length=16, block_length=8, steps=8, seed=7, mc_num=4, batch_size=1)
    assert one.generate_until(_gen_requests(3, docs=("Q: 1+1=",))) == out[:3]


def test_greedy_ignores_seed(tiny):
    greedy = dict(GEN, temperature=0.0, do_sample=False)
    a = _lm(tiny, seed=1).generate_until(_gen_requests(3, greedy, docs=("Q: 1+1=",)))
    b = _lm(tiny, seed=2).generate_until(_gen_requests(3, greedy, docs=("Q: 1+1=",)))
    assert a == b and len(set(a)) == 1


def test_until_cuts():
    assert cut_at("abc\n\ndef", ["\n\n"]) == "abc"
    assert cut_at("abcXYdef", ["Y", "X"]) == "abc"
    assert cut_at("abc", "") == "abc"


def test_loglikelihood_finite_and_deterministic(tiny):
    reqs = [Instance("loglikelihood", {}, ("Q: 1+1=", " 2"), 0, metadata=("toy", 0, 1)),
            Instance("loglikelihood", {}, ("Q: 1+1=", " 3 apples"), 1, metadata=("toy", 0, 1))]
    a = _lm(tiny).loglikelihood(reqs)
    b = _lm(tiny).loglikelihood(reqs)
    assert a == b
    for ll, greedy in a:
        assert math.isfinite(ll) and ll < 0 and isinstance(greedy, bool)
    assert a[1][0] < a[0][0]  # a longer continuation of random tokens is less likely


def test_rolling_not_supported(tiny):
    with pytest.raises(NotImplementedError, match="ELBO"):
        _lm(tiny).loglikelihood_rolling([])
